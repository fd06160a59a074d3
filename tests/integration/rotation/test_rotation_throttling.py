"""A fleet renewing at once against the emulator's S1 limits: the limits bite, every
rotation still completes and none fails."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from local.device import contract
from local.emulator import FleetEmulator
from local.emulator.http import serve
from local.stack import StaticToken
from shared.adapters.iothub import IotHubRegistry
from shared.clock import ManualClock
from shared.domain.errors import ThrottledError
from shared.domain.messages import parse_rotate_message
from shared.domain.model import CertificateStatus, DeviceIdentity, RotationState, Trigger
from shared.domain.rotation import RotationService
from tests.integration.rotation.stack import START, Stack, StackOptions


@pytest.fixture(
    params=[
        # ~200 devices: the fleet side over REST, the storage in memory (Azurite's
        # per-request latency would dominate the run and hide nothing more)
        pytest.param(200, id="200-memory", marks=pytest.mark.slow),
        pytest.param(30, id="30-azurite", marks=pytest.mark.azurite),
    ]
)
def fleet_size(request: pytest.FixtureRequest) -> int:
    size: int = request.param
    return size


@pytest.fixture
def stack_options(fleet_size: int) -> StackOptions:
    storage = "memory" if fleet_size > 100 else "azurite"
    return StackOptions("rest", "file", enforce_limits=True, storage=storage)


def test_fleet_renewal_under_s1_limits_completes(stack: Stack, fleet_size: int) -> None:
    assert stack.emulator.tier == "S1"
    began = time.monotonic()
    sim = stack.simulator(fleet_size, authority=stack.services.authority)
    assert sim.start() == fleet_size  # connects are throttled too (100/s): devices wait
    stack.run(sim, stack.all_idle(sim.device_ids), idle_step=5)
    old = {d: contract.thumbprint(a.certificate) for d, a in sim.agents.items()}
    stack.clock.advance(3600)

    service: RotationService = stack.service
    for start in range(0, fleet_size, 100):
        batch = sim.device_ids[start : start + 100]
        result = service.process_batch(
            parse_rotate_message(
                {
                    "kind": "rotate",
                    "deviceIds": batch,
                    "reason": Trigger.EXPIRING.value,
                    "enqueuedAt": contract.format_time(stack.clock.now()),
                }
            )
        )
        assert result.errors == {}
        assert result.started == batch
    stack.run(sim, stack.all_idle(sim.device_ids), max_rounds=20_000, idle_step=5)

    # the limits bit, and every 429 was waited out on the clock for as long as the hub
    # said: none had to be handed back to the host for redelivery
    assert service.retrier.throttled > 0
    assert stack.throttled_deliveries == 0
    states = Counter(stack.record(d).state for d in sim.device_ids)
    assert states == {RotationState.IDLE: fleet_size}
    summary = sim.summary()
    assert summary.renewals_installed == fleet_size
    assert summary.renewals_failed == 0
    assert summary.connected == fleet_size
    assert not [e for e in stack.sink.events if e.event_type == "RotationFailed"]
    completed = [e for e in stack.sink.events if e.event_type == "RotationCompleted"]
    assert len({e.event_id for e in completed}) == fleet_size
    for device_id, agent in sim.agents.items():
        now_thumb = contract.thumbprint(agent.certificate)
        assert now_thumb != old[device_id]
        certs = stack.services.ledger.list_for_device(device_id)
        assert [(c.thumbprint_sha256, c.status) for c in certs] == [
            (now_thumb, CertificateStatus.ACTIVE)
        ]
    print(
        f"throttled {service.retrier.throttled} waits, {stack.throttled_deliveries} redeliveries;"
        f" {time.monotonic() - began:.1f} s"
    )


def test_waiting_the_advertised_retry_after_is_always_enough() -> None:
    """A client that waits exactly what a 429 over REST says finds the capacity there
    (the emulator rounds the milliseconds up, never down to a retry that must fail)."""
    clock = ManualClock(START)
    emulator = FleetEmulator(clock, tier="S1")
    emulator.hub.create_device(DeviceIdentity("dev-1", primary_thumbprint="ab" * 32))
    with serve(emulator) as server:
        registry = IotHubRegistry(
            server.host, StaticToken(), scheme="http", clock=clock, retry_total=0
        )
        waits: list[float] = []
        for n in range(200):  # twin updates: 50/s on S1
            clock.advance(0.0071)  # callers come at odd times: fractional tokens
            try:
                registry.patch_desired("dev-1", {"n": n})
            except ThrottledError as exc:
                waits.append(exc.retry_after)
                clock.sleep(exc.retry_after)
                registry.patch_desired("dev-1", {"n": n})  # must not be throttled again
    assert len(waits) > 40
    assert min(waits) > 0

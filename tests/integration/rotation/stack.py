"""The rotation flow on the real local parts: the stack the integration tests run on.

Each test gets its own stack: Table, Queue and Blob storage on Azurite (unique table
prefix, queue and container), an issuing CA whose key is a file or a SoftHSM2 token,
the fleet emulator reached through the production DPS and IoT Hub adapters over its
loopback REST front end (or in process), one ``ManualClock`` for everything, and the
rotation service built by ``shared.bootstrap.Services``. Emulator events reach the
service the way the functions route them, through ``functions.parsing``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from functions.parsing.common import parse_time
from functions.parsing.hub_events import parse_connection_log, parse_twin_change
from functions.parsing.lifecycle import parse_lifecycle
from local.device import contract
from local.device.agent import DeviceAgent
from local.device.contract import DeviceKey
from local.device.simulator import FleetSimulator
from local.emulator import CONNECTIONS, LIFECYCLE, TWIN_CHANGES, FleetEmulator
from local.emulator.http import RunningServer
from local.stack import drop_run_storage, fleet_ports
from shared.adapters.memory import MemoryEventSink
from shared.bootstrap import Services
from shared.clock import ManualClock
from shared.domain.commands import DeviceConnected
from shared.domain.errors import ThrottledError
from shared.domain.model import ConnectionFailure, RotationRecord, RotationState
from shared.domain.rotation import RotationService
from shared.domain.rotation.reconcile import UnknownDevices
from shared.pki.local_ca import init_pki
from shared.settings import Settings
from tests.support.softhsm import SOFTHSM, softhsm_conf

START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


@dataclass
class StackOptions:
    fleet: str = "rest"  # "rest": production adapters over loopback HTTP; "inproc"
    key: str = "file"  # "file" or "softhsm"
    enforce_limits: bool = False
    validity_days: int = 30
    storage: str = "azurite"  # or "memory" (the in-memory adapters behind the same ports)
    connection_events: str = "immediate"  # or "snapshot": DeviceConnected as IoT Hub sends it


@dataclass
class Stack:
    """Everything one rotation test runs on."""

    clock: ManualClock
    emulator: FleetEmulator
    settings: Settings
    server: RunningServer | None
    sink: MemoryEventSink
    fleet_overrides: dict[str, Any]
    services: Services
    throttled_deliveries: int = 0
    failures_seen: list[ConnectionFailure] = field(default_factory=list)
    routing_errors: list[BaseException] = field(default_factory=list)
    built_services: list[Services] = field(default_factory=list)
    _redeliver: list[tuple[str, Any]] = field(default_factory=list)

    # ----------------------------------------------------------------- wiring

    @property
    def service(self) -> RotationService:
        return self.services.rotation

    def restart(self, **overrides: Any) -> RotationService:
        """A fresh worker: new adapters and a new service over the same tables, queue,
        container, PKI and fleet (what a crashed and restarted function host gets)."""
        self.services = Services(self.settings, **{**self.fleet_overrides, **overrides})
        self.built_services.append(self.services)
        return self.services.rotation

    def record(self, device_id: str) -> RotationRecord:
        rec = self.services.state.get(device_id)
        assert rec is not None, f"no rotation record for {device_id}"
        return rec

    # ----------------------------------------------------------------- event routing

    def _deliver(self, topic: str, event: Any) -> None:
        service = self.service
        if topic == TWIN_CHANGES:
            report = parse_twin_change(json.dumps(event))
            if report is not None:
                service.on_twin_reported(report)
        elif topic == LIFECYCLE:
            parsed = parse_lifecycle(
                event["eventType"],
                event.get("subject"),
                event.get("data"),
                parse_time(event["eventTime"], "eventTime"),
            )
            if parsed is None:
                return
            if isinstance(parsed, DeviceConnected):
                service.on_device_connected(parsed)
            else:
                service.on_device_created(parsed)
        else:
            batch = parse_connection_log(json.dumps(event))
            assert not batch.problems, batch.problems
            unknown = UnknownDevices()
            for failure in batch.failures:
                self.failures_seen.append(failure)
                service.on_connection_failure(failure, unknown)
            if unknown.count:
                service.on_unknown_devices(unknown)

    def pump(self) -> int:
        """Route every queued emulator event to the service as the functions do; an event
        whose handling was throttled is delivered again on the next pump (the triggers'
        retry policy). Returns how many events were handled."""
        pending, self._redeliver = self._redeliver, []
        for topic in (TWIN_CHANGES, LIFECYCLE, CONNECTIONS):
            pending.extend((topic, e) for e in self.emulator.events.drain(topic))
        handled = 0
        for index, (topic, event) in enumerate(pending):
            try:
                self._deliver(topic, event)
            except ThrottledError:
                self.throttled_deliveries += 1
                self._redeliver.extend(pending[index:])
                break
            except BaseException:
                # not checkpointed: the host delivers these again (at least once)
                self._redeliver.extend(pending[index:])
                raise
            handled += 1
        return handled

    def route_connections_at_once(self) -> None:
        """Deliver Connections records the moment the hub writes them (a function that
        is faster than the device's next step); errors are kept in ``routing_errors``."""

        def deliver(_event: Any) -> None:
            for event in self.emulator.events.drain(CONNECTIONS):
                try:
                    self._deliver(CONNECTIONS, event)
                except Exception as exc:  # the emulator would only log it
                    self.routing_errors.append(exc)

        self.emulator.events.subscribe(CONNECTIONS, deliver)

    def run(
        self,
        sim: FleetSimulator,
        until: Callable[[], bool],
        *,
        max_rounds: int = 2000,
        idle_step: float = 60.0,
    ) -> None:
        """Step devices and route events until ``until()``; when nothing is left to do
        now, move the clock to the next due time (at most ``idle_step`` seconds)."""
        for _ in range(max_rounds):
            if until():
                return
            if sim.step_all() or self.pump():
                continue
            due = sim.next_due()
            wait = idle_step if due is None else (due - self.clock.now()).total_seconds()
            self.clock.advance(min(max(wait, 0.001), idle_step))
        raise AssertionError(f"not settled after {max_rounds} rounds")

    def all_idle(self, device_ids: list[str]) -> Callable[[], bool]:
        """True once every record was seen idle (each one read until it is, so a round
        costs one read, not one per device; callers check the final states)."""
        waiting = list(device_ids)

        def check() -> bool:
            while waiting:
                rec = self.services.state.get(waiting[0])
                if rec is None or rec.state is not RotationState.IDLE:
                    return False
                waiting.pop(0)
            return True

        return check

    # ----------------------------------------------------------------- devices

    def issue_initial(self, device_id: str, csr_pem: str) -> str:
        """The first certificate of a device, issued (and recorded) by certroll's issuer."""
        issued = self.services.issuer.issue(
            device_id, csr_pem, request_id="initial", trigger="cli", actor="cli:test"
        )
        return issued.chain_pem

    def simulator(self, n_devices: int, **kwargs: Any) -> FleetSimulator:
        kwargs.setdefault("trust_anchor", self.services.authority.root)
        kwargs.setdefault("id_prefix", f"d{uuid.uuid4().hex[:6]}-")
        source: Any = kwargs.pop("authority", None) or self.issue_initial
        return FleetSimulator(self.emulator, source, n_devices, **kwargs)


def install_out_of_band(agent: DeviceAgent, key: DeviceKey, chain: list[x509.Certificate]) -> None:
    """The device's certificate is replaced on the device itself (a re-flash, a manual
    install): it keeps its DPS registration and next connects with the new certificate.
    The reference agent has no public call for this, so its credentials are set here."""
    agent._key = key
    agent._chain = list(chain)


def new_credentials(
    stack: Stack, device_id: str, request_id: str
) -> tuple[DeviceKey, list[x509.Certificate]]:
    """A fresh device key and a certificate for it issued (and recorded) by certroll."""
    key = contract.generate_key("ec-p256")
    csr = contract.build_csr(device_id, key).public_bytes(Encoding.PEM).decode()
    issued = stack.services.issuer.issue(
        device_id, csr, request_id=request_id, trigger="manual", actor="cli:test"
    )
    return key, x509.load_pem_x509_certificates(issued.chain_pem.encode())


@pytest.fixture
def stack_options() -> StackOptions:
    """Overridden (``pytest.mark.parametrize(..., indirect=True)`` or a local fixture)."""
    return StackOptions()


@pytest.fixture
def stack(
    stack_options: StackOptions,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Stack]:
    opts = stack_options
    storage = request.getfixturevalue("azurite") if opts.storage == "azurite" else opts.storage
    suffix = uuid.uuid4().hex[:12]
    home = tmp_path / "home"
    env = {
        "CERTROLL_HOME": str(home),
        "CERTROLL_STORAGE": storage,
        "CERTROLL_TABLE_PREFIX": f"rot{suffix}",
        "CERTROLL_WORK_QUEUE": f"rot-{suffix}",
        "CERTROLL_PKI_CONTAINER": f"rot-{suffix}",
        "CERTROLL_KEY_BACKEND": "file",
        "CERTROLL_CERT_VALIDITY_DAYS": str(opts.validity_days),
    }
    if opts.key == "softhsm":
        if not SOFTHSM.exists():
            pytest.skip("SoftHSM2 is not installed")
        monkeypatch.setenv("SOFTHSM2_CONF", str(softhsm_conf(tmp_path)))
        env["CERTROLL_KEY_BACKEND"] = "pkcs11"
        env["CERTROLL_PKCS11_TOKEN"] = f"rot-{suffix}"
    settings = Settings.from_env(env)
    blob_url = f"http://127.0.0.1:10000/devstoreaccount1/rot-{suffix}"
    init_pki(home, env["CERTROLL_KEY_BACKEND"], False, blob_url, settings=settings, now=START)

    clock = ManualClock(START)
    emulator = FleetEmulator(
        clock, enforce_limits=opts.enforce_limits, connection_events=opts.connection_events
    )
    fleet = fleet_ports(
        emulator, "http" if opts.fleet == "rest" else "inproc", clock, retry_total=0
    )
    server = fleet.server
    overrides: dict[str, Any] = {
        "clock": clock,
        "enrollments": fleet.enrollments,
        "registry": fleet.registry,
    }
    sink = MemoryEventSink()
    overrides["events"] = sink
    services = Services(settings, **overrides)
    built = Stack(clock, emulator, settings, server, sink, overrides, services)
    built.built_services.append(services)
    try:
        yield built
    finally:
        fleet.close()
        for svc in built.built_services:
            authority = svc.__dict__.get("authority")  # built only when it was used
            close = getattr(getattr(authority, "key", None), "close", None)
            if close is not None:
                close()  # PKCS#11 session
        if opts.storage == "azurite":
            drop_run_storage(settings)

"""A worker dies half-way through a rotation; a fresh service over the same tables picks
the rotation up (advance, the sweep and its queue, or the redelivered event) and it
converges to exactly one issued certificate."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from local.device import contract
from shared.domain.commands import StartRenewal
from shared.domain.messages import parse_rotate_message
from shared.domain.model import CertificateStatus, RotationState, Trigger
from shared.domain.rotation import RotationService
from tests.integration.rotation.stack import Stack

pytestmark = pytest.mark.azurite


class SimulatedCrash(Exception):
    """The worker process dies here."""


class CrashOnce:
    """A port that dies on the first call of ``method`` for which ``when`` holds."""

    def __init__(self, inner: Any, method: str, when: Callable[..., bool]) -> None:
        self._inner = inner
        self._method = method
        self._when = when
        self.fired = False

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name != self._method:
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if not self.fired and self._when(*args, **kwargs):
                self.fired = True
                raise SimulatedCrash(f"{self._method} crashed")
            return attr(*args, **kwargs)

        return call


def _crashing(stack: Stack, point: str) -> tuple[str, CrashOnce]:
    """(the override name, the crashing port) for a crash right after ``point``."""
    if point == "issued":  # signed and in the ledger, the record not yet written
        return "events", CrashOnce(
            stack.sink, "publish", lambda events: events[0].event_type == "CertificateIssued"
        )
    registry = stack.fleet_overrides["registry"]
    if point == "enrolled":  # slots written, the delivery patch never sent
        return "registry", CrashOnce(
            registry,
            "patch_desired",
            lambda device_id, patch, etag=None: (
                "issued" in patch["x509"] and patch["x509"]["issued"] is not None
            ),
        )
    if point == "finishing":  # confirmed, the ledger updated, the idle write never made
        return "registry", CrashOnce(
            registry,
            "patch_desired",
            lambda device_id, patch, etag=None: patch["x509"].get("renewal", "") is None,
        )
    assert point == "delivered"  # certificate delivered, the reprovision call never made
    return "registry", CrashOnce(registry, "invoke_method", lambda *a, **k: True)


def _resume_with_sweep(stack: Stack, service: RotationService, device_id: str) -> None:
    plan = service.sweep()
    assert device_id in plan.stuck
    messages = stack.services.queue.receive(32)
    assert [m["deviceIds"] for m in messages] == [[device_id]]
    result = service.process_batch(parse_rotate_message(messages[0]))
    assert result.advanced == [device_id]
    assert result.errors == {}


@pytest.mark.parametrize(
    ("point", "left_in", "resume"),
    [
        # issue, enroll, deliver and reprovision end in one write: a crash in any of them
        # leaves csr_received; confirm and finish end in one write: a crash leaves
        # reprovision_sent
        ("issued", RotationState.CSR_RECEIVED, "advance"),
        ("enrolled", RotationState.CSR_RECEIVED, "advance"),
        ("delivered", RotationState.CSR_RECEIVED, "sweep"),
        ("issued", RotationState.CSR_RECEIVED, "redelivery"),
        ("finishing", RotationState.REPROVISION_SENT, "advance"),
        ("finishing", RotationState.REPROVISION_SENT, "redelivery"),
    ],
)
def test_fresh_service_resumes_a_half_done_rotation(
    stack: Stack, point: str, left_in: RotationState, resume: str
) -> None:
    sim = stack.simulator(1)
    assert sim.start() == 1
    stack.run(sim, stack.all_idle(sim.device_ids))
    device_id = sim.device_ids[0]
    agent = sim.agents[device_id]
    stack.clock.advance(3600)

    name, port = _crashing(stack, point)
    stack.restart(**{name: port})
    started = stack.service.start_renewal(StartRenewal(device_id, Trigger.MANUAL, "cli:test"))
    request_id = started.request_id
    assert request_id
    with pytest.raises(SimulatedCrash):
        stack.run(sim, lambda: False)
    assert port.fired
    left = stack.record(device_id)
    assert left.state is left_in
    assert left.request_id == request_id
    issued = [
        c for c in stack.services.ledger.list_for_device(device_id) if c.request_id == request_id
    ]
    assert len(issued) == 1
    expected = CertificateStatus.ACTIVE if point == "finishing" else CertificateStatus.ISSUED
    assert issued[0].status is expected

    # a new worker: new adapters over the same Azurite tables and queue, same fleet
    stack.clock.advance(600)
    service = stack.restart()
    if resume == "advance":
        service.advance(device_id)
    elif resume == "sweep":
        _resume_with_sweep(stack, service, device_id)
    stack.run(sim, stack.all_idle([device_id]), idle_step=60)

    rec = stack.record(device_id)
    certs = stack.services.ledger.list_for_device(device_id)
    new = [c for c in certs if c.request_id == request_id]
    assert len(new) == 1
    assert new[0].serial == issued[0].serial
    assert new[0].status is CertificateStatus.ACTIVE
    assert [c.status for c in certs] == [CertificateStatus.SUPERSEDED, CertificateStatus.ACTIVE]
    assert rec.current_serial == new[0].serial
    assert contract.thumbprint(agent.certificate) == new[0].thumbprint_sha256
    assert agent.renewal_outcome(request_id) == "installed"
    signed = [
        e
        for e in stack.services.audit.list(device_id, 200)
        if e.action == "issue" and e.outcome == "ok" and e.request_id == request_id
    ]
    assert len(signed) == 1
    enr = stack.services.enrollments.get_individual(device_id)
    held = {s.thumbprint_sha256 for s in (enr.primary, enr.secondary) if s is not None}
    assert held == {new[0].thumbprint_sha256}
    completed = {
        e.event_id
        for e in stack.sink.events
        if e.event_type == "RotationCompleted" and e.data["requestId"] == request_id
    }
    assert completed == {f"{request_id}/completed"}
    # resumed within the hour, not by the next daily sweep
    assert rec.updated_at is not None
    assert left.updated_at is not None
    assert (rec.updated_at - left.updated_at).total_seconds() < 3600

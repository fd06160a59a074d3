"""Storage calls per rotation, counted on the in-memory stores (docs/performance.md,
"Round trips to storage per rotation"). Every call counted here is a request to Table
storage in Azure; a change that adds one to the routine rotation fails this test, so the
figure in the docs can only move on purpose."""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from shared.domain.commands import StartRenewal, TwinReported
from shared.domain.model import CertificateStatus, RevocationReason, RotationState, Trigger
from shared.domain.rotation import RotationService
from shared.metrics import CountingMetrics
from shared.observability import DUE_TO_CONFIRMED, ObservedEvents
from shared.ports import Telemetry
from tests.unit.rotation.fakes import Device, World


class Counted:
    """A proxy that counts each public method call of ``target`` as ``label.method``."""

    def __init__(self, target: Any, label: str, calls: Counter[str]) -> None:
        self._target = target
        self._label = label
        self._calls = calls

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr) or name.startswith("_"):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self._calls[f"{self._label}.{name}"] += 1
            return attr(*args, **kwargs)

        return call


class Recorded(Telemetry):
    def __init__(self) -> None:
        self.recorded: list[tuple[str, float]] = []

    def increment(self, name: str, value: int = 1, **dimensions: str) -> None:
        return None

    def record(self, name: str, value: float, **dimensions: str) -> None:
        self.recorded.append((name, value))

    def set_gauge(self, name: str, value: float, **dimensions: str) -> None:
        return None


@dataclasses.dataclass
class Counting:
    world: World
    service: RotationService
    calls: Counter[str]
    telemetry: Recorded


@pytest.fixture
def counting(world: World) -> Counting:
    """The world's storage ports behind counters, seen by the rotation service, the
    issuer and the completion metric alike (as ``shared.bootstrap`` wires them)."""
    calls: Counter[str] = Counter()
    ledger = Counted(world.ledger, "ledger", calls)
    audit = Counted(world.audit, "audit", calls)
    state = Counted(world.state, "state", calls)
    world.issuer.ledger = ledger  # type: ignore[assignment]
    world.issuer.audit = audit  # type: ignore[assignment]
    telemetry = Recorded()
    deps = dataclasses.replace(
        world.deps(),
        ledger=ledger,
        audit=audit,
        state=state,
        events=ObservedEvents(world.events, telemetry, ledger, audit, world.policy),  # type: ignore[arg-type]
        metrics=CountingMetrics(),
    )
    return Counting(world, RotationService(deps), calls, telemetry)


def _rotate(counting: Counting, dev: Device) -> Counter[str]:
    """One expiry-driven rotation: the request, the CSR (issue, enroll, deliver,
    reprovision) and the confirmation (finish); the storage calls it made."""
    svc = counting.service
    svc.on_twin_reported(TwinReported.parse(dev.device_id, dev.section(), twin_version=1))
    counting.calls.clear()
    svc.start_renewal(StartRenewal(dev.device_id, Trigger.EXPIRING, "system:sweep"))
    answer = dev.answer()
    assert answer is not None
    svc.on_twin_reported(TwinReported.parse(dev.device_id, answer))
    done = svc.on_twin_reported(TwinReported.parse(dev.device_id, dev.install()))
    assert done.state is RotationState.IDLE
    return Counter(counting.calls)


def test_a_routine_rotation_makes_these_storage_calls_and_no_more(counting: Counting) -> None:
    dev = counting.world.add_device("dev-1")
    calls = _rotate(counting, dev)
    ledger = {k: v for k, v in calls.items() if k.startswith("ledger.")}
    assert ledger == {
        # issuance: the device's certificates (key rule, idempotent look-up), the
        # revoked-key look-up, the new record
        "ledger.list_for_device": 2,  # and once more at the finish
        "ledger.revoked_with_key": 1,
        "ledger.add": 1,
        # the finish: new active, old superseded, against the listed rows
        "ledger.set_statuses": 1,
    }
    # every revoked certificate is never listed on the rotation path, and the
    # completion metric reads nothing back
    assert "ledger.list_revoked" not in calls
    assert "ledger.get" not in calls
    assert "audit.list" not in calls
    # the record: read and written at the request, read at the CSR and written when it
    # arrives and after the reprovision call, read and written at the confirmation
    assert {k: v for k, v in calls.items() if k.startswith("state.")} == {
        "state.get": 3,
        "state.put": 4,
    }
    # audit: rotation_start, issue, slot_write, rotation_complete
    assert calls["audit.append"] == 4
    # the completion metric was still recorded, from the certificate the finish listed
    assert [name for name, _ in counting.telemetry.recorded] == [DUE_TO_CONFIRMED]


def test_the_completion_metric_reads_the_ledger_only_without_the_listed_record(
    counting: Counting,
) -> None:
    """An event published without the previous certificate in hand (another publisher,
    an older message) still gets its metric, from one ledger read."""
    dev = counting.world.add_device("dev-1")
    _rotate(counting, dev)
    completed = counting.world.events.events[-1]
    assert completed.event_type == "RotationCompleted"
    assert completed.observed["previous_certificate"].serial == completed.data["previousSerial"]
    bare = dataclasses.replace(completed, observed={})
    counting.calls.clear()
    observer = counting.service.deps.events
    observer.publish([bare])
    assert counting.calls == {"ledger.get": 1}
    assert len(counting.telemetry.recorded) == 2
    assert counting.telemetry.recorded[0] == counting.telemetry.recorded[1]
    assert "observed" not in repr(completed)  # in-process only, never in the payload


def test_a_key_revoked_on_another_device_is_found_by_the_look_up(counting: Counting) -> None:
    """The revoked-key look-up is what refuses a key another device's revoked
    certificate carried; the rotation fails with ``csr_rejected``."""
    world = counting.world
    thief = world.add_device("dev-2")
    victim = world.add_device("dev-1")
    stolen = world.ledger.list_for_device("dev-2")[0]
    world.ledger.set_status(stolen.serial, CertificateStatus.REVOKED,
                            reason=RevocationReason.KEY_COMPROMISE)
    svc = counting.service
    svc.on_twin_reported(TwinReported.parse("dev-1", victim.section(), twin_version=1))
    svc.start_renewal(StartRenewal("dev-1", Trigger.EXPIRING, "system:sweep"))
    request_id = victim.renewal_request()
    assert request_id is not None
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev-1")])
    over_revoked_key = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(
        thief.key, hashes.SHA256()
    )
    victim.pending[request_id] = thief.key  # answers with a CSR over the revoked key
    victim.csrs[request_id] = over_revoked_key.public_bytes(serialization.Encoding.PEM).decode()
    answer = victim.answer()
    assert answer is not None
    counting.calls.clear()
    rec = svc.on_twin_reported(TwinReported.parse("dev-1", answer))
    assert counting.calls["ledger.revoked_with_key"] == 1
    assert "ledger.list_revoked" not in counting.calls
    assert rec.state is RotationState.FAILED
    assert rec.last_error is not None
    assert "key_reused" in rec.last_error

"""What an operator reads and what a later pass relies on: a revoked certificate's
reason and the actor of an audit entry in a device's status, the reason a disallowed
device's certificate is refused, and the attempts a bulk reprovision counts."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.domain.commands import (
    Allow,
    DeviceConnected,
    Disallow,
    StartRenewal,
    TwinReported,
)
from shared.domain.errors import ConcurrencyError, InvalidRequestError, NotFoundError
from shared.domain.model import (
    AuditEvent,
    CertificateRecord,
    CertificateSlot,
    CertificateStatus,
    ConnectionFailure,
    IndividualEnrollment,
    RevocationReason,
    RotationRecord,
    RotationState,
    Trigger,
)
from shared.domain.rotation import RotationService
from shared.domain.rotation import transitions as t
from shared.domain.rotation.admissible import refusal
from shared.domain.rotation.reconcile import Reconciler
from shared.domain.rotation.results import DeviceView
from shared.domain.rotation.slots import enrollment_slot_for
from tests.unit.rotation.fakes import World
from tests.unit.rotation.test_flow import _bulk_batch, _rotate, adopt
from tests.unit.rotation.test_sweep_batch_edges import Campaigns

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _cert(**fields: object) -> CertificateRecord:
    base: dict[str, object] = {
        "serial": "2b",
        "device_id": "dev-1",
        "thumbprint_sha256": "bb" * 32,
        "not_before": NOW - timedelta(days=1),
        "not_after": NOW + timedelta(days=30),
        "csr_sha256": "aa" * 32,
        "issuer_key_id": "k1",
        "trigger": "manual",
        "request_id": "r1",
        "status": CertificateStatus.ACTIVE,
        "pem": "PEM",
        "issued_at": NOW - timedelta(days=1),
    }
    base.update(fields)
    return CertificateRecord(**base)  # type: ignore[arg-type]


def test_status_shows_the_revocation_reason_and_the_audit_actor() -> None:
    revoked = _cert(
        status=CertificateStatus.REVOKED,
        revoked_at=NOW,
        revocation_reason=RevocationReason.KEY_COMPROMISE,
    )
    entry = AuditEvent("revoke", "ok", "sec@example.com", device_id="dev-1", at=NOW)
    view = DeviceView("dev-1", None, (revoked, _cert(serial="3c")), None, None, (entry,))
    data = view.to_dict()
    assert [c["revocationReason"] for c in data["certificates"]] == ["keyCompromise", None]
    assert data["audit"][0]["actor"] == "sec@example.com"


def test_a_disallowed_devices_certificate_is_refused_as_disallowed() -> None:
    rec = RotationRecord("dev-1", state=RotationState.DISALLOWED, current_serial="2b")
    assert refusal(_cert(), "dev-1", rec, NOW) == "device_disallowed"


def test_a_bulk_reprovision_counts_one_attempt() -> None:
    rec = RotationRecord("dev-1", state=RotationState.DELIVERED, attempts=2)
    changes = t.reprovision_scheduled(rec, NOW)
    assert changes["attempts"] == 3
    assert changes["state"] is RotationState.REPROVISION_SENT


# --------------------------------------------------------------------------- failures


def test_a_failed_rotation_counts_as_failed_in_its_campaigns(world: World) -> None:
    dev = world.add_device("dev-1")
    campaigns = Campaigns(done=set())
    deps = world.deps()
    deps.campaigns = campaigns
    svc = RotationService(deps)
    adopt(svc, dev)
    svc.start_renewal(StartRenewal("dev-1", Trigger.MANUAL, "op"))
    svc.on_twin_reported(TwinReported.parse("dev-1", dev.fail("DPS said no")))
    assert campaigns.reports == [("dev-1", "failed", None)]


def test_a_device_failure_without_a_code_is_recorded_as_device_failed(world: World) -> None:
    _dev, svc = world.ready()
    started = svc.start_renewal(StartRenewal("dev-1", Trigger.MANUAL, "op"))
    patch = {"renewal": {"requestId": started.request_id, "status": "failed", "error": "no"}}
    world.registry.report("dev-1", {"x509": patch})
    rec = svc.on_twin_reported(TwinReported.parse("dev-1", patch))
    assert rec.state is RotationState.FAILED
    [audit] = [e for e in world.audit.list("dev-1", limit=100) if e.action == "rotation_failed"]
    assert audit.detail["code"] == "device_failed"


# --------------------------------------------------------------------------- reports


def test_a_connection_of_a_device_certroll_does_not_know_changes_nothing(world: World) -> None:
    svc = world.service()
    assert svc.on_device_connected(DeviceConnected("ghost", world.clock.now())) is None
    assert world.state.get("ghost") is None


def test_a_device_reporting_another_devices_certificate_is_refused(world: World) -> None:
    owner, svc = world.ready("dev-1")
    other, _ = world.ready("dev-2")
    before = world.state.get("dev-2")
    svc.on_twin_reported(TwinReported.parse("dev-2", owner.section()))
    [refused] = [
        e for e in world.audit.list("dev-2", limit=100) if e.action == "unexpected_certificate"
    ]
    assert (refused.outcome, refused.detail["issuedTo"]) == ("rejected", "dev-1")
    after = world.state.get("dev-2")
    assert after is not None
    assert before is not None
    assert after.current_serial == before.current_serial == format(other.cert.serial_number, "x")


# --------------------------------------------------------------------------- reconcile


def test_a_disabled_device_on_its_own_certificate_is_audited_with_the_first_200_chars(
    world: World,
) -> None:
    """A device certroll adopted with a certificate it did not issue (no ledger row) is
    known by its record: its 403012 is a disabled device, not an unknown one."""
    dev = world.add_device("dev-1", from_certroll=False)
    svc = world.service()
    adopt(svc, dev)
    assert world.state.get("dev-1") is not None
    words = "device disabled by the operator " * 10
    failure = ConnectionFailure("dev-1", 403012, world.clock.now(), message=words)
    assert svc.on_connection_failure(failure).action == "disabled_device"
    [entry] = [e for e in world.audit.list("dev-1", limit=100) if e.action == "reconcile"]
    assert entry.detail["description"] == words[:200]
    assert len(entry.detail["description"]) == 200


# --------------------------------------------------------------------------- bulk jobs


def test_the_bulk_job_calls_reprovision_with_an_empty_payload(world: World) -> None:
    world.policy = type(world.policy)(bulk_threshold=2, max_concurrent_jobs=5)
    svc, devs = _bulk_batch(world, 2)
    result = _rotate(svc, devs)
    assert result.reprovision_job is not None
    _condition, method, payload = world.registry.jobs[result.reprovision_job]
    assert (method, payload) == ("reprovision", {})
    assert "certroll.reprovision_job_fallback" not in world.metrics.counts


def test_a_fallback_to_direct_methods_is_counted(world: World) -> None:
    world.policy = type(world.policy)(bulk_threshold=2, max_concurrent_jobs=0)
    svc, devs = _bulk_batch(world, 2)
    assert _rotate(svc, devs).reprovision_job is None
    assert world.metrics.counts["certroll.reprovision_job_fallback"] == 1


# --------------------------------------------------------------------------- disallow


def test_disallowing_a_device_nobody_knows_says_so(world: World) -> None:
    svc = world.service()
    with pytest.raises(
        NotFoundError, match=r"^device ghost is not known to certroll, the hub or DPS\Z"
    ):
        svc.disallow(Disallow("ghost", "stolen", "ops"))


def _losing(world: World, loses: Callable[[RotationRecord], bool]) -> None:
    inner = world.state.put

    def put(rec: Any, *args: Any, **kwargs: Any) -> Any:
        if loses(rec):
            raise ConcurrencyError("etag mismatch")
        return inner(rec, *args, **kwargs)

    world.state.put = put  # type: ignore[method-assign]


@pytest.mark.parametrize(
    "loses",
    [
        # step 1: the record marked disallowed (and unfinished)
        lambda rec: rec.state is RotationState.DISALLOWED and rec.last_error is not None,
        # the end: the disallow marked finished
        lambda rec: rec.state is RotationState.DISALLOWED and rec.last_error is None,
    ],
    ids=["marking", "finishing"],
)
def test_a_disallow_whose_record_keeps_changing_names_the_device_and_the_step(
    world: World, caplog: pytest.LogCaptureFixture, loses: Callable[[RotationRecord], bool]
) -> None:
    world.ready()
    svc = world.service()
    _losing(world, loses)
    caplog.set_level(logging.INFO)
    with pytest.raises(
        ConcurrencyError, match=r"^dev-1: the rotation record kept changing during disallow\Z"
    ):
        svc.disallow(Disallow("dev-1", "stolen", "ops"))
    lines = [r.getMessage() for r in caplog.records]
    assert "device dev-1: record changed during disallow; deciding again" in lines


def test_allowing_a_device_that_is_not_disallowed_says_what_state_it_is_in(
    world: World,
) -> None:
    world.ready()
    svc = world.service()
    with pytest.raises(InvalidRequestError) as refused:
        svc.allow(Allow("dev-1", "ops"))
    assert (refused.value.code, refused.value.message) == (
        "not_disallowed",
        "device dev-1 is not disallowed (idle)",
    )


def test_a_connection_while_the_twin_carries_the_request_does_not_write_it_again(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.ready()
    svc = world.service()
    started = svc.start_renewal(StartRenewal("dev-1", Trigger.MANUAL, "op"))
    patches: list[dict[str, Any]] = []
    inner = world.registry.patch_desired

    def patch_desired(device_id: str, patch: dict[str, Any], etag: str | None = None) -> Any:
        patches.append(patch)
        return inner(device_id, patch, etag)

    world.registry.patch_desired = patch_desired  # type: ignore[method-assign]
    caplog.set_level(logging.INFO)
    rec = svc.on_device_connected(DeviceConnected("dev-1", world.clock.now()))
    assert rec is not None
    assert (rec.state, rec.request_id) == (RotationState.CSR_REQUESTED, started.request_id)
    assert patches == []
    assert not [r for r in caplog.records if "written again" in r.getMessage()]


def test_a_reconcile_is_audited_and_logged_with_the_serials_it_let_in(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    dev, svc = world.ready()
    serial = format(dev.cert.serial_number, "x")
    world.registry.devices["dev-1"].primary_thumbprint = "00" * 32  # someone changed it
    caplog.set_level(logging.INFO)
    failure = ConnectionFailure("dev-1", 401003, world.clock.now())
    outcome = svc.on_connection_failure(failure)
    assert outcome.action == "reconciled"
    [entry] = [e for e in world.audit.list("dev-1", limit=100) if e.action == "reconcile"]
    assert (entry.outcome, entry.detail["serials"]) == ("ok", [serial])
    lines = [r.getMessage() for r in caplog.records]
    assert f"device dev-1: reconciled ['{serial}'] ({', '.join(outcome.changed)})" in lines


def test_401s_of_unknown_devices_are_logged_with_a_sample(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    svc = world.service()
    caplog.set_level(logging.INFO)
    svc.on_connection_failure(ConnectionFailure("ghost", 401003, world.clock.now()))
    lines = [r.getMessage() for r in caplog.records]
    assert "401003 for 1 unknown device ids not reconciled (e.g. ghost)" in lines


def test_a_certificate_issued_as_the_device_was_disallowed_is_revoked(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """The disallow lands between the signature and the record's next write: that write
    loses its ETag check, and the certificate the disallow could not see is revoked."""
    dev, svc = world.ready()
    svc.start_renewal(StartRenewal("dev-1", Trigger.MANUAL, "op"))
    inner = world.issuer.issue

    def issue(*args: Any, **kwargs: Any) -> Any:
        issued = inner(*args, **kwargs)
        rec = world.state.get("dev-1")
        assert rec is not None
        world.state.put(dataclasses.replace(rec, state=RotationState.DISALLOWED))
        return issued

    world.issuer.issue = issue  # type: ignore[method-assign]
    caplog.set_level(logging.INFO)
    answer = dev.answer()
    assert answer is not None
    svc.on_twin_reported(TwinReported.parse("dev-1", answer))
    # the record was only marked (nothing revoked yet): both certificates are revoked
    certs = world.ledger.list_for_device("dev-1")
    assert len(certs) == 2
    assert {c.status for c in certs} == {CertificateStatus.REVOKED}
    serials = ", ".join(c.serial for c in certs)
    lines = [r.getMessage() for r in caplog.records]
    assert f"device dev-1: {serials} issued as the device was disallowed; revoked" in lines


def test_the_completion_audit_names_the_slot_the_new_certificate_went_to(world: World) -> None:
    dev, svc = world.ready()
    svc.start_renewal(StartRenewal("dev-1", Trigger.MANUAL, "op"))
    answer = dev.answer()
    assert answer is not None
    waiting = svc.on_twin_reported(TwinReported.parse("dev-1", answer))
    assert waiting.slot == "secondary"  # the device's first certificate is in the primary
    svc.on_twin_reported(TwinReported.parse("dev-1", dev.install()))
    [done] = [e for e in world.audit.list("dev-1", limit=100) if e.action == "rotation_complete"]
    assert done.detail["slot"] == "secondary"


def test_an_allow_whose_record_keeps_changing_logs_each_lost_race(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.ready()
    svc = world.service()
    svc.disallow(Disallow("dev-1", "stolen", "ops"))
    _losing(world, lambda rec: rec.state is RotationState.CSR_REQUESTED)
    caplog.set_level(logging.INFO)
    with pytest.raises(
        ConcurrencyError, match=r"^dev-1: the rotation record kept changing during allow\Z"
    ):
        svc.allow(Allow("dev-1", "ops"))
    lines = [r.getMessage() for r in caplog.records]
    assert "device dev-1: record changed during allow; deciding again" in lines
    rec = world.state.get("dev-1")
    assert rec is not None
    assert rec.state is RotationState.DISALLOWED


# --------------------------------------------------------------------------- slots


def test_with_both_slots_taken_by_other_certificates_the_one_expiring_first_is_replaced() -> None:
    def slot(thumbprint: str, days: int) -> CertificateSlot:
        return CertificateSlot(thumbprint_sha256=thumbprint, not_after=NOW + timedelta(days))

    early_primary = IndividualEnrollment("dev-1", "dev-1", slot("aa", 5), slot("bb", 20))
    early_secondary = IndividualEnrollment("dev-1", "dev-1", slot("aa", 20), slot("bb", 5))
    assert enrollment_slot_for(early_primary, "cc", None) == "primary"
    assert enrollment_slot_for(early_secondary, "cc", None) == "secondary"
    assert enrollment_slot_for(early_primary, "cc", "aa") == "secondary"  # aa is in use


def test_the_disallow_audit_says_what_happened_to_the_enrollment_and_the_hub_identity(
    world: World,
) -> None:
    world.ready()
    svc = world.service()
    svc.disallow(Disallow("dev-1", "stolen", "ops"))
    [entry] = [e for e in world.audit.list("dev-1", limit=100) if e.action == "disallow"]
    assert (entry.outcome, entry.detail["enrollment"], entry.detail["hubIdentity"]) == (
        "ok",
        "disabled",
        "disabled",
    )


def test_a_reconcile_fills_the_empty_slot_and_places_every_certificate_not_held() -> None:
    held_a = _cert(serial="a1", thumbprint_sha256="AA" * 32)
    new_b = _cert(serial="b2", thumbprint_sha256="BB" * 32)
    held = {"a1": {"aa" * 32}, "b2": {"bb" * 32}}
    # an unknown (not retired) thumbprint in the primary: the empty secondary is used
    assert Reconciler._place({"primary": "ff" * 32, "secondary": None}, [new_b], set(), held) == {
        "secondary": new_b
    }
    # the first allowed certificate already held: the next one is still placed
    writes = Reconciler._place(
        {"primary": "aa" * 32, "secondary": None}, [held_a, new_b], set(), held
    )
    assert writes == {"secondary": new_b}

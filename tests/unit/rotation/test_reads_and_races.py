"""Reads a batch saves (an enrollment written in the bulk call is not read again, neither
when the new certificate is placed nor when the old one is emptied; the finish hands the
ledger the certificates it has just read), a withdrawal that disables the enrollment
after a lost race, a reconcile that writes no hub identity, and a repeated disallow
returning the record it found disallowed."""

from __future__ import annotations

import dataclasses
from typing import Any

from shared.domain.commands import Disallow, StartRenewal, TwinReported
from shared.domain.errors import ConcurrencyError
from shared.domain.model import (
    AuthType,
    CertificateRecord,
    CertificateStatus,
    ConnectionFailure,
    IndividualEnrollment,
    ProvisioningStatus,
    RotationState,
    Trigger,
)
from shared.domain.rotation.slots import withdraw_from_enrollment
from tests.unit.rotation.fakes import World, thumb
from tests.unit.rotation.test_batching import _csr_reports, _in_batch, _started


def _count_reads(world: World) -> list[str]:
    reads: list[str] = []
    inner = world.enrollments.get_individual

    def get_individual(registration_id: str) -> IndividualEnrollment:
        reads.append(registration_id)
        return inner(registration_id)

    world.enrollments.get_individual = get_individual  # type: ignore[method-assign]
    return reads


# --------------------------------------------------------------------------- reads saved


def test_an_enrollment_written_in_bulk_is_not_read_again_to_place_the_certificate(
    world: World,
) -> None:
    svc, devices = _started(world, 2)
    reports = _csr_reports(devices)
    reads = _count_reads(world)
    _in_batch(svc, reports)
    assert sorted(reads) == ["dev-00", "dev-01"]  # once each, before the bulk call
    for dev in devices:
        rec = world.state.get(dev.device_id)
        assert rec is not None
        assert rec.slot == "secondary"


def test_an_enrollment_emptied_in_bulk_is_not_read_again_at_the_finish(world: World) -> None:
    svc, devices = _started(world, 2)
    _in_batch(svc, _csr_reports(devices))
    installs = [TwinReported.parse(d.device_id, d.install()) for d in devices]
    reads = _count_reads(world)
    _in_batch(svc, installs)
    assert sorted(reads) == ["dev-00", "dev-01"]
    for dev in devices:
        rec = world.state.get(dev.device_id)
        assert rec is not None
        assert rec.state is RotationState.IDLE


def test_the_finish_hands_the_ledger_the_certificates_it_has_just_read(world: World) -> None:
    dev, svc = world.ready()
    handed: list[list[str]] = []
    inner = world.ledger.set_statuses

    def set_statuses(
        device_id: str,
        changes: dict[str, CertificateStatus],
        listed: list[CertificateRecord] | tuple[()] = (),
    ) -> dict[str, CertificateRecord]:
        handed.append(sorted(c.serial for c in listed))
        return inner(device_id, changes, listed)

    world.ledger.set_statuses = set_statuses  # type: ignore[method-assign]
    svc.start_renewal(StartRenewal("dev-1", Trigger.MANUAL, "op"))
    answer = dev.answer()
    assert answer is not None
    svc.on_twin_reported(TwinReported.parse("dev-1", answer))
    done = svc.on_twin_reported(TwinReported.parse("dev-1", dev.install()))
    assert done.state is RotationState.IDLE
    assert handed
    assert handed[-1] == sorted(c.serial for c in world.ledger.list_for_device("dev-1"))


# --------------------------------------------------------------------------- races


def test_a_withdrawal_meeting_a_changed_enrollment_reads_it_again(world: World) -> None:
    """The only certificate withdrawn and no fallback: the enrollment is disabled, after
    a fresh read when the first write met a newer ETag."""
    dev, svc = world.ready()
    inner = world.enrollments.put_individual
    conflicts: list[str] = []

    def put_individual(enrollment: IndividualEnrollment) -> IndividualEnrollment:
        if not conflicts:
            conflicts.append(enrollment.registration_id)
            raise ConcurrencyError("etag mismatch")
        return inner(enrollment)

    world.enrollments.put_individual = put_individual  # type: ignore[method-assign]
    done = withdraw_from_enrollment(svc.ctx, "dev-1", thumb(dev.cert).upper())
    assert (done, conflicts) == ("disabled", ["dev-1"])
    enr = world.enrollments.individual["dev-1"]
    assert enr.provisioning_status is ProvisioningStatus.DISABLED
    assert withdraw_from_enrollment(svc.ctx, "dev-1", thumb(dev.cert)) == "disabled"


def test_a_repeated_disallow_that_changes_something_returns_the_disallowed_record(
    world: World,
) -> None:
    """The record was already disallowed in full; a repeated disallow recreating a group
    member's deleted enrollment returns it as it stands."""
    world.ready("dev-g", group=True)
    svc = world.service()
    first = svc.disallow(Disallow("dev-g", "stolen", "ops"))
    del world.enrollments.individual["dev-g"]
    again = svc.disallow(Disallow("dev-g", "stolen", "ops"))
    assert again.changed is True
    assert again.record is not None
    assert again.record.state is RotationState.DISALLOWED
    assert again.record.last_error is None
    assert again.record == world.state.get("dev-g")
    assert again.record.etag == first.record.etag


def test_a_reconcile_mid_rotation_that_writes_no_hub_identity_marks_no_hub_clean_up(
    world: World,
) -> None:
    """A CA-authenticated identity holds no thumbprint: the reconcile writes only the
    enrollment, and the record is not marked for a hub clean-up at the finish."""
    dev, svc = world.ready(auth=AuthType.CERTIFICATE_AUTHORITY)
    svc.start_renewal(StartRenewal("dev-1", Trigger.MANUAL, "op"))
    answer = dev.answer()
    assert answer is not None
    sent = svc.on_twin_reported(TwinReported.parse("dev-1", answer))
    assert sent.state is RotationState.REPROVISION_SENT
    assert not sent.hub_cleanup
    hub_writes: list[str] = []
    inner = world.registry.update_device

    def update_device(identity: Any) -> Any:
        hub_writes.append(identity.device_id)
        return inner(identity)

    world.registry.update_device = update_device  # type: ignore[method-assign]
    enr = world.enrollments.individual["dev-1"]
    world.enrollments.individual["dev-1"] = dataclasses.replace(
        enr,
        primary=None if sent.slot == "primary" else enr.primary,
        secondary=None if sent.slot == "secondary" else enr.secondary,
    )
    svc.on_connection_failure(
        ConnectionFailure(device_id="dev-1", code=401003, at=world.clock.now())
    )
    assert hub_writes == []
    [audit] = [
        e
        for e in world.audit.list("dev-1", limit=1000)
        if e.action == "reconcile" and e.outcome == "ok"
    ]
    assert audit.detail["changed"] == [f"enrollment.{sent.slot}"]
    rec = world.state.get("dev-1")
    assert rec is not None
    assert rec.state is RotationState.REPROVISION_SENT
    assert not rec.hub_cleanup

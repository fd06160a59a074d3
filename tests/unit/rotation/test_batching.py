"""Enrollment writes of a batch of twin reports sent as DPS bulk operations
(shared/domain/rotation/batching.py): ten a call, refused items on the single path, and
no certificate delivered before the enrollment write that adds it has landed."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from shared.domain.commands import StartRenewal, TwinReported
from shared.domain.model import CertificateSlot, IndividualEnrollment, RotationState, Trigger
from shared.domain.rotation import RotationService
from shared.domain.rotation.batching import (
    EnrollmentWriteBatch,
    EnrollmentWriteWaits,
    handle_batch,
)
from tests.unit.rotation.fakes import Device, World, thumb


def _watch_deliveries(world: World) -> list[str]:
    """Fails the test when a certificate reaches the desired twin before the device's
    individual enrollment holds it (the zero-downtime rule); lists the devices served."""
    delivered: list[str] = []
    inner = world.registry.patch_desired

    def patch_desired(device_id: str, patch: dict[str, Any], etag: str | None = None) -> Any:
        issued = (patch.get("x509") or {}).get("issued")
        if issued:
            cert_pem = "".join(issued["certificate"])
            from cryptography import x509

            cert = x509.load_pem_x509_certificates(cert_pem.encode())[0]
            enr = world.enrollments.individual.get(device_id)
            if enr is not None:
                held = {s.thumbprint_sha256 for s in (enr.primary, enr.secondary) if s}
                assert thumb(cert) in held, f"{device_id}: delivered before it was enrolled"
            delivered.append(device_id)
        return inner(device_id, patch, etag)

    world.registry.patch_desired = patch_desired  # type: ignore[method-assign]
    return delivered


def _started(world: World, n: int, **kwargs: Any) -> tuple[RotationService, list[Device]]:
    devices = [world.add_device(f"dev-{i:02}", **kwargs) for i in range(n)]
    svc = world.service()
    for dev in devices:
        svc.on_twin_reported(TwinReported.parse(dev.device_id, dev.section(), twin_version=1))
        svc.start_renewal(StartRenewal(dev.device_id, Trigger.MANUAL, "operator@example.com"))
    return svc, devices


def _csr_reports(devices: list[Device]) -> list[TwinReported]:
    reports = []
    for dev in devices:
        answer = dev.answer()
        assert answer is not None
        reports.append(TwinReported.parse(dev.device_id, answer))
    return reports


def _in_batch(svc: RotationService, reports: list[TwinReported]) -> list[Any]:
    return svc.in_enrollment_batch(reports, svc.on_twin_reported)


def test_twenty_five_enrollments_in_three_bulk_calls_each_delivered_after_its_write(
    world: World,
) -> None:
    svc, devices = _started(world, 25)
    delivered = _watch_deliveries(world)
    dps = world.enrollments
    singles, bulks = dps.single_writes, dps.bulk_calls

    _in_batch(svc, _csr_reports(devices))

    assert dps.bulk_calls - bulks == 3  # 10 + 10 + 5
    assert dps.single_writes == singles  # none written one by one
    assert sorted(delivered) == [d.device_id for d in devices]
    for dev in devices:
        rec = world.state.get(dev.device_id)
        assert rec is not None
        assert rec.state is RotationState.REPROVISION_SENT
        enr = dps.individual[dev.device_id]
        assert rec.slot in ("primary", "secondary")
        slot = getattr(enr, rec.slot)
        assert slot is not None
        assert slot.thumbprint_sha256 == rec.new_thumbprint
        assert thumb(dev.cert) in {enr.primary.thumbprint_sha256, enr.secondary.thumbprint_sha256}  # type: ignore[union-attr]

    # the finish: the old slots emptied in bulk too, then the rotation completes
    installs = [TwinReported.parse(d.device_id, d.install()) for d in devices]
    bulks = dps.bulk_calls
    _in_batch(svc, installs)
    assert dps.bulk_calls - bulks == 3
    assert dps.single_writes == singles
    for dev in devices:
        rec = world.state.get(dev.device_id)
        assert rec is not None
        assert rec.state is RotationState.IDLE
        enr = dps.individual[dev.device_id]
        assert enr.secondary is None or enr.primary is None
        held = {s.thumbprint_sha256 for s in (enr.primary, enr.secondary) if s}
        assert held == {thumb(dev.cert)}


def test_a_refused_item_takes_the_single_path_alone(world: World) -> None:
    svc, devices = _started(world, 12)
    delivered = _watch_deliveries(world)
    dps = world.enrollments
    dps.fail_bulk = {"dev-03"}
    singles = dps.single_writes

    _in_batch(svc, _csr_reports(devices))

    assert dps.single_writes - singles == 1  # dev-03 only, after a fresh read
    assert sorted(delivered) == [d.device_id for d in devices]
    rec = world.state.get("dev-03")
    assert rec is not None
    assert rec.state is RotationState.REPROVISION_SENT
    slot = getattr(dps.individual["dev-03"], rec.slot or "")
    assert slot is not None
    assert slot.thumbprint_sha256 == rec.new_thumbprint


def test_an_enrollment_changed_after_its_read_is_read_again_and_written_alone(
    world: World,
) -> None:
    svc, devices = _started(world, 5)
    delivered = _watch_deliveries(world)
    dps = world.enrollments
    reports = _csr_reports(devices)
    singles = dps.single_writes

    changed: list[str] = []

    def handle(report: TwinReported) -> Any:
        try:
            return svc.on_twin_reported(report)
        finally:
            if report.device_id == "dev-04" and not changed:  # after every read, once
                changed.append("dev-02")
                dps.put_individual(dataclasses.replace(dps.individual["dev-02"]))

    svc.in_enrollment_batch(reports, handle)

    # the bulk item of dev-02 met a new ETag (412): one fresh read and write for it; the
    # other four went in the bulk call
    assert dps.single_writes - singles == 2  # the operator's write and dev-02's
    assert sorted(delivered) == [d.device_id for d in devices]
    rec = world.state.get("dev-02")
    assert rec is not None
    slot = getattr(dps.individual["dev-02"], rec.slot or "")
    assert slot is not None
    assert slot.thumbprint_sha256 == rec.new_thumbprint


def test_a_device_reported_twice_in_one_batch_has_one_write_and_one_delivery(
    world: World,
) -> None:
    svc, devices = _started(world, 2)
    delivered = _watch_deliveries(world)
    reports = _csr_reports(devices)
    bulks = world.enrollments.bulk_calls

    _in_batch(svc, [reports[0], reports[0], reports[1]])

    assert world.enrollments.bulk_calls - bulks == 1
    assert sorted(delivered) == ["dev-00", "dev-01"]


def test_group_members_and_single_reports_write_nothing_in_bulk(world: World) -> None:
    svc, devices = _started(world, 3, group=True)
    delivered = _watch_deliveries(world)
    _in_batch(svc, _csr_reports(devices))
    assert world.enrollments.bulk_calls == 0
    assert sorted(delivered) == ["dev-00", "dev-01", "dev-02"]

    svc2, (single,) = _started(World(), 1)
    answer = single.answer()
    assert answer is not None
    svc2.on_twin_reported(TwinReported.parse(single.device_id, answer))
    assert single.world.enrollments.bulk_calls == 0  # outside a batch: one write now
    assert single.delivered() is not None


def test_handle_batch_splits_in_tens_and_hands_refusals_to_the_second_pass() -> None:
    calls: list[list[str]] = []
    seen: list[tuple[str, bool]] = []
    batch_ref: list[EnrollmentWriteBatch] = []

    def handle(rid: str) -> str:
        from shared.domain.rotation.batching import current_batch

        batch = current_batch()
        assert batch is not None
        batch_ref[:] = [batch]
        if rid in batch.landed:
            seen.append((rid, True))
            return "landed"
        if rid in batch.refused:
            seen.append((rid, False))
            return "single"
        batch.stage(IndividualEnrollment(rid, etag="e1"))
        raise AssertionError("stage raises")

    def bulk(call: Any) -> list[tuple[str, int]]:
        calls.append([e.registration_id for e in call])
        return [("r11", 412)] if "r11" in calls[-1] else []

    ids = [f"r{i:02}" for i in range(23)]
    out = handle_batch(ids, handle, bulk)
    assert [len(c) for c in calls] == [10, 10, 3]
    assert [rid for c in calls for rid in c] == ids  # staging order kept
    assert out == ["single" if rid == "r11" else "landed" for rid in ids]
    assert batch_ref[0].refused == {"r11": 412}
    assert not batch_ref[0].staging


def test_stage_refuses_a_write_without_etag_and_outside_the_first_pass() -> None:
    batch = EnrollmentWriteBatch()
    assert not batch.accepts(IndividualEnrollment("a"))
    assert not batch.accepts(IndividualEnrollment("a", etag="*"))
    assert batch.accepts(IndividualEnrollment("a", etag="e"))
    with pytest.raises(EnrollmentWriteWaits):
        batch.stage(IndividualEnrollment("a", etag="e"))
    batch.staging = False
    assert not batch.accepts(IndividualEnrollment("b", etag="e"))


def _crl_serials(world: World) -> set[int]:
    crls = [data for data, _ in world.crl.objects.values() if data.startswith(b"0")]
    return {r.serial_number for data in crls for r in x509.load_der_x509_crl(data)}


def test_a_compromise_finish_stopped_for_the_bulk_write_still_publishes_the_crl(
    world: World,
) -> None:
    """The finish revokes the old certificate in the ledger before its slot write; when
    that write waits for the batch's bulk call, the CRL is published before the wait (the
    second pass finds the certificate revoked already and revokes nothing)."""
    dev = world.add_device("dev-1")
    svc = world.service()
    svc.on_twin_reported(TwinReported.parse("dev-1", dev.section(), twin_version=1))
    old = dev.cert
    svc.start_renewal(StartRenewal("dev-1", Trigger.COMPROMISE, "op"))
    answer = dev.answer()
    assert answer is not None
    svc.on_twin_reported(TwinReported.parse("dev-1", answer))
    # a 401 reconcile put the (still current) old certificate back into a slot
    enr = world.enrollments.individual["dev-1"]
    old_slot = CertificateSlot(
        thumbprint_sha256=thumb(old), pem=old.public_bytes(serialization.Encoding.PEM).decode()
    )
    free = "secondary" if enr.secondary is None else "primary"
    world.enrollments.put_individual(dataclasses.replace(enr, **{free: old_slot}))
    bulks = world.enrollments.bulk_calls

    _in_batch(svc, [TwinReported.parse("dev-1", dev.install())])

    assert world.enrollments.bulk_calls == bulks + 1  # the finish's slot write waited
    assert old.serial_number in _crl_serials(world)

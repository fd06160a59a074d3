"""Disallow, allow, reconcile on 401, the sweep and the queue worker."""

from __future__ import annotations

import copy
import dataclasses
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509

from shared.bootstrap import CRL_NAME
from shared.domain.commands import Allow, Disallow, StartRenewal, Sweep, TwinReported
from shared.domain.errors import InvalidRequestError, NotFoundError
from shared.domain.messages import parse_rotate_message
from shared.domain.model import (
    AuthType,
    CertificateStatus,
    DeviceStatus,
    ProvisioningStatus,
    RevocationReason,
    RotationState,
    Trigger,
)
from shared.domain.rotation import RotationService
from tests.unit.rotation.fakes import Device, World, thumb

DAY = 86400.0


def _ready(world: World, device_id: str = "dev-1", **kw: Any) -> tuple[Device, RotationService]:
    dev = world.add_device(device_id, **kw)
    svc = world.service()
    svc.on_twin_reported(TwinReported.parse(device_id, dev.section()))
    return dev, svc


def _mid_rotation(world: World, svc: RotationService, dev: Device) -> None:
    svc.start_renewal(StartRenewal(dev.device_id, Trigger.MANUAL, "op"))
    answer = dev.answer()
    assert answer is not None
    svc.on_twin_reported(TwinReported.parse(dev.device_id, answer))


# --------------------------------------------------------------------------- disallow


def test_disallow_during_rotation_blocks_everything(world: World) -> None:
    dev, svc = _ready(world)
    _mid_rotation(world, svc, dev)
    in_flight = world.state.get("dev-1")
    assert in_flight is not None
    result = svc.disallow(Disallow("dev-1", "device reported stolen", "sec@example.com"))
    assert result.changed
    assert result.cancelled_request_id == in_flight.request_id
    assert result.enrollment == "disabled"
    assert result.hub_identity == "disabled"
    assert sorted(result.revoked) == sorted(c.serial for c in world.ledger.list_for_device("dev-1"))
    assert len(result.revoked) == 2  # the one in use and the one being rolled out
    rec = world.state.get("dev-1")
    assert rec is not None
    assert rec.state is RotationState.DISALLOWED
    assert rec.disallowed_by == "sec@example.com"
    assert rec.last_error is None
    enr = world.enrollments.individual["dev-1"]
    assert enr.provisioning_status is ProvisioningStatus.DISABLED
    assert world.registry.devices["dev-1"].status is DeviceStatus.DISABLED
    for cert in world.ledger.list_for_device("dev-1"):
        assert cert.status is CertificateStatus.REVOKED
        assert cert.revocation_reason is RevocationReason.KEY_COMPROMISE
    assert world.crl.objects, "CRL published"
    assert world.events.events[-1].event_type == "DeviceDisallowed"
    entry = world.audit.list("dev-1", 1)[0]
    assert (entry.action, entry.outcome, entry.actor) == ("disallow", "ok", "sec@example.com")
    assert entry.detail["reason"] == "device reported stolen"
    # the device finishing its side of the rotation changes nothing now
    svc.on_twin_reported(TwinReported.parse("dev-1", dev.install()))
    after = world.state.get("dev-1")
    assert after is not None
    assert after.state is RotationState.DISALLOWED
    assert world.events.events[-1].event_type == "DeviceDisallowed"


def test_a_disallow_landing_between_csr_and_signature_leaves_no_live_certificate(
    world: World,
) -> None:
    """The rotation holds its CSR_RECEIVED record (it does not read it again to issue);
    a whole disallow runs before it signs, so the disallow cannot list the certificate."""
    dev, svc = _ready(world)
    svc.start_renewal(StartRenewal("dev-1", Trigger.MANUAL, "op"))
    answer = dev.answer()
    assert answer is not None
    real_issue = world.issuer.issue
    raced: list[str] = []

    def issue_after_a_disallow(*args: Any, **kwargs: Any) -> Any:
        if not raced:
            raced.append(world.service().disallow(Disallow("dev-1", "stolen", "sec")).device_id)
        return real_issue(*args, **kwargs)

    world.issuer.issue = issue_after_a_disallow  # type: ignore[method-assign]
    svc.on_twin_reported(TwinReported.parse("dev-1", answer))
    assert raced == ["dev-1"]
    rec = world.state.get("dev-1")
    assert rec is not None
    assert rec.state is RotationState.DISALLOWED
    certs = world.ledger.list_for_device("dev-1")
    assert len(certs) == 2  # the one in use and the one signed in the race
    for cert in certs:
        assert cert.status is CertificateStatus.REVOKED, cert.serial
    crl = x509.load_der_x509_crl(world.crl.fetch(CRL_NAME))
    for cert in certs:
        assert crl.get_revoked_certificate_by_serial_number(int(cert.serial, 16)) is not None


def test_disallow_twice_is_a_noop(world: World) -> None:
    _dev, svc = _ready(world)
    svc.disallow(Disallow("dev-1", "stolen", "sec"))
    events = len(world.events.events)
    crls = copy.deepcopy(world.crl.objects)
    again = svc.disallow(Disallow("dev-1", "stolen", "sec"))
    assert not again.changed
    assert again.revoked == ()
    assert len(world.events.events) == events
    assert world.crl.objects == crls
    entry = world.audit.list("dev-1", 1)[0]
    assert (entry.action, entry.outcome) == ("disallow", "noop")


def test_disallow_group_member_adds_disabled_individual_enrollment(world: World) -> None:
    dev, svc = _ready(world, "dev-g", group=True, auth=AuthType.CERTIFICATE_AUTHORITY)
    result = svc.disallow(Disallow("dev-g", "decommissioned", "ops"))
    assert result.enrollment == "created_disabled"
    enr = world.enrollments.individual["dev-g"]
    assert enr.provisioning_status is ProvisioningStatus.DISABLED
    assert enr.primary is not None
    assert enr.primary.thumbprint_sha256 == thumb(dev.cert)


@pytest.mark.parametrize(
    ("device_id", "reason", "actor", "error"),
    [
        ("ghost", "stolen", "sec", NotFoundError),
        ("dev-1", "  ", "sec", InvalidRequestError),
        ("dev-1", "stolen", "", InvalidRequestError),
    ],
)
def test_disallow_bad_input_changes_nothing(
    world: World, device_id: str, reason: str, actor: str, error: type[Exception]
) -> None:
    _dev, svc = _ready(world)
    before = world.state.get("dev-1")
    with pytest.raises(error):
        svc.disallow(Disallow(device_id, reason, actor))
    assert world.state.get("dev-1") == before
    assert world.registry.devices["dev-1"].status is DeviceStatus.ENABLED


# --------------------------------------------------------------------------- allow


def test_allow_needs_a_disallowed_device(world: World) -> None:
    _dev, svc = _ready(world)
    with pytest.raises(InvalidRequestError, match="not_disallowed"):
        svc.allow(Allow.with_pem("dev-1", "ops"))
    with pytest.raises(NotFoundError):
        svc.allow(Allow.with_pem("ghost", "ops"))


def test_allow_waits_for_new_certificate_before_enabling(world: World) -> None:
    _dev, svc = _ready(world)
    svc.disallow(Disallow("dev-1", "stolen", "sec"))
    rec = svc.allow(Allow.with_pem("dev-1", "ops"))
    assert rec.state is RotationState.CSR_REQUESTED
    assert rec.reason == "allow"
    assert world.registry.twins["dev-1"].desired["x509"]["renewal"]["reason"] == "manual"
    # nothing is enabled before a new certificate is enrolled
    assert world.enrollments.individual["dev-1"].provisioning_status is ProvisioningStatus.DISABLED
    assert world.registry.devices["dev-1"].status is DeviceStatus.DISABLED
    assert (
        svc.allow(Allow.with_pem("dev-1", "ops")).request_id == rec.request_id
    )  # repeat: same request


def test_allow_with_csr_enables_only_the_new_certificate(world: World) -> None:
    dev, svc = _ready(world)
    old = thumb(dev.cert)
    svc.disallow(Disallow("dev-1", "stolen", "sec"))
    csr = dev.new_csr("from-the-bench")
    rec = svc.allow(Allow.with_pem("dev-1", "ops", csr_pem=csr))
    assert rec.state in (RotationState.DELIVERED, RotationState.REPROVISION_SENT)
    new = rec.new_thumbprint
    assert new is not None
    assert new != old
    enr = world.enrollments.individual["dev-1"]
    assert enr.provisioning_status is ProvisioningStatus.ENABLED
    held = {s.thumbprint_sha256 for s in (enr.primary, enr.secondary) if s is not None}
    assert held == {new}
    ident = world.registry.devices["dev-1"]
    assert ident.status is DeviceStatus.ENABLED
    assert {ident.primary_thumbprint, ident.secondary_thumbprint} == {new, None}
    old_rec = world.ledger.find_by_thumbprint(old)
    assert old_rec is not None
    assert old_rec.status is CertificateStatus.REVOKED


def test_allow_rejects_a_bad_csr_without_change(world: World) -> None:
    _dev, svc = _ready(world)
    svc.disallow(Disallow("dev-1", "stolen", "sec"))
    with pytest.raises(InvalidRequestError):
        svc.allow(Allow.with_pem("dev-1", "ops", csr_pem="garbage"))
    rec = world.state.get("dev-1")
    assert rec is not None
    assert rec.state is RotationState.DISALLOWED


def _csr_with(key: Any, device_id: str) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


@pytest.mark.parametrize(
    ("which", "code"),
    [("other-device", "subject_mismatch"), ("revoked-key", "key_reused")],
)
def test_allow_refuses_a_policy_rejected_csr_without_change(
    world: World, which: str, code: str
) -> None:
    from shared.domain.errors import CsrRejectedError

    dev, svc = _ready(world)
    _mid_rotation(world, svc, dev)
    # the delivered certificate (certroll's) is the one whose key the device holds pending
    rec = world.state.get("dev-1")
    assert rec is not None
    assert rec.request_id is not None
    svc.disallow(Disallow("dev-1", "stolen", "sec"))
    before = world.state.get("dev-1")
    certificates = world.ledger.list_for_device("dev-1")
    assert all(c.status is CertificateStatus.REVOKED for c in certificates)
    if which == "other-device":
        csr = _csr_with(dev.pending[rec.request_id], "dev-2")
    else:
        csr = _csr_with(dev.pending[rec.request_id], "dev-1")  # the revoked certificate's key
    with pytest.raises(CsrRejectedError) as refused:
        svc.allow(Allow.with_pem("dev-1", "ops", csr_pem=csr))
    assert refused.value.code == code
    after = world.state.get("dev-1")
    assert after == before
    assert world.ledger.list_for_device("dev-1") == certificates
    assert world.enrollments.individual["dev-1"].provisioning_status is ProvisioningStatus.DISABLED
    assert world.registry.devices["dev-1"].status is DeviceStatus.DISABLED
    assert world.audit.list("dev-1", 1)[0].action == "issue_rejected"


# --------------------------------------------------------------------------- adoption


def test_adopting_a_newer_own_certificate_retires_the_previous(world: World) -> None:
    """The device installed a renewal whose confirmation certroll missed (the record
    failed meanwhile); when it reports the new certificate, the previous one is retired
    everywhere at once instead of staying accepted until the next rotation."""
    dev, svc = _ready(world)
    old_thumb = thumb(dev.cert)
    _mid_rotation(world, svc, dev)
    rec = world.state.get("dev-1")
    assert rec is not None
    assert rec.new_thumbprint is not None
    world.state.put(dataclasses.replace(rec, state=RotationState.FAILED))

    after = svc.on_twin_reported(TwinReported.parse("dev-1", dev.install()))

    new_thumb = thumb(dev.cert)
    assert new_thumb == rec.new_thumbprint != old_thumb
    assert after.state is RotationState.FAILED  # the failed request is the sweep's to restart
    assert after.current_thumbprint == new_thumb
    statuses = {c.thumbprint_sha256: c.status for c in world.ledger.list_for_device("dev-1")}
    assert statuses == {
        old_thumb: CertificateStatus.SUPERSEDED,
        new_thumb: CertificateStatus.ACTIVE,
    }
    enr = world.enrollments.individual["dev-1"]
    held = {s.thumbprint_sha256 for s in (enr.primary, enr.secondary) if s is not None}
    assert held == {new_thumb}
    ident = world.registry.devices["dev-1"]
    assert {ident.primary_thumbprint, ident.secondary_thumbprint} == {new_thumb, None}
    adopted = [e for e in world.audit.list("dev-1", 50) if e.action == "adopt_certificate"]
    assert adopted[0].detail["previousRetired"] is True


def test_adopting_a_first_certificate_retires_nothing(world: World) -> None:
    dev = world.add_device("dev-1")
    svc = world.service()
    svc.on_twin_reported(TwinReported.parse("dev-1", dev.section()))
    adopted = [e for e in world.audit.list("dev-1", 50) if e.action == "adopt_certificate"]
    assert [e.detail["previousRetired"] for e in adopted] == [False]
    statuses = [c.status for c in world.ledger.list_for_device("dev-1")]
    assert CertificateStatus.SUPERSEDED not in statuses


# --------------------------------------------------------------------------- sweep


def _snapshot(world: World) -> str:
    return json.dumps(
        {
            "state": sorted(repr(r) for r in world.state.list()),
            "audit": len(world.audit.list(limit=10_000)),
            "crl": sorted(world.crl.objects),
            "desired": {k: t.desired for k, t in world.registry.twins.items()},
            "events": len(world.events.events),
        },
        default=str,
    )


def test_sweep_plan_categories_and_dry_run_changes_nothing(world: World) -> None:
    _ready(world, "fresh")
    _ready(world, "due")
    _ready(world, "late")
    _ready(world, "stuck")
    failed, svc = _ready(world, "failed")
    world.clock.advance(25 * DAY)
    fresh2 = world.add_device("fresh2")  # born later: not due
    svc.on_twin_reported(TwinReported.parse("fresh2", fresh2.section()))
    svc.start_renewal(StartRenewal("stuck", Trigger.MANUAL, "op"))
    svc.start_renewal(StartRenewal("failed", Trigger.MANUAL, "op"))
    svc.on_twin_reported(TwinReported.parse("failed", failed.fail()))
    world.clock.advance(6 * DAY)  # the first certificates are past notAfter; "stuck" too old
    before = _snapshot(world)
    plan = svc.sweep(Sweep(dry_run=True, batch_size=2))
    assert _snapshot(world) == before
    assert world.queue.receive() == []
    assert plan.crl_url is None
    assert sorted(plan.overdue) == ["due", "fresh", "late"]
    assert plan.expiring == []
    assert plan.stuck == ["stuck"]
    assert plan.failed == ["failed"]
    assert "fresh2" not in plan.device_ids()
    data = plan.to_dict()
    json.dumps(data)
    assert data["counts"]["overdue"] == 3
    assert len(plan.messages) == 3  # 5 devices in batches of 2
    # for real: messages enqueued, CRL published
    real = svc.sweep(Sweep(batch_size=2))
    sent = world.queue.receive(100)
    assert sent == real.messages
    assert sum(len(m["deviceIds"]) for m in sent) == 5
    assert real.crl_url is not None
    assert world.audit.list(limit=1)[0].action == "sweep"
    for message in sent:
        svc.process_batch(parse_rotate_message(message))
    for device_id in ("fresh", "due", "late", "failed"):
        rec = world.state.get(device_id)
        assert rec is not None
        assert rec.state is RotationState.CSR_REQUESTED, device_id


def test_sweep_expiring_is_separate_from_overdue(world: World) -> None:
    _dev, svc = _ready(world)
    world.clock.advance(22 * DAY)  # between the renewal point (20 +- 1.5 days) and expiry
    plan = svc.sweep(Sweep(dry_run=True))
    assert plan.expiring == ["dev-1"]
    assert plan.overdue == []


def test_sweep_warns_about_issuing_ca_expiry(world: World) -> None:
    _dev, svc = _ready(world)
    left = world.authority.certificate.not_valid_after_utc - world.clock.now()
    assert svc.sweep(Sweep(dry_run=True)).ca_expiring == []
    world.clock.advance((left - timedelta(days=10)).total_seconds())
    warned = svc.sweep(Sweep(dry_run=True)).ca_expiring
    assert len(warned) == 1
    assert warned[0]["daysLeft"] <= 10


def test_sweep_finds_silent_devices(world: World) -> None:
    _dev, svc = _ready(world)
    world.registry.twins["dev-1"].reported.pop("x509")
    world.clock.advance(31 * DAY)
    plan = svc.sweep(Sweep(dry_run=True))
    assert plan.silent == ["dev-1"]


@pytest.mark.parametrize(
    "message",
    [
        None,
        "rotate",
        {},
        {"kind": "other", "deviceIds": ["a"]},
        {"kind": "rotate", "deviceIds": []},
        {"kind": "rotate", "deviceIds": "dev-1"},
        {"kind": "rotate", "deviceIds": ["bad id with spaces"]},
        {"kind": "rotate", "deviceIds": ["a"], "reason": "because"},
        {"kind": "rotate", "deviceIds": ["a"], "enqueuedAt": "yesterday"},
    ],
)
def test_process_batch_rejects_garbage(world: World, message: Any) -> None:
    _dev, svc = _ready(world)
    before = _snapshot(world)
    with pytest.raises(InvalidRequestError) as info:
        svc.process_batch(parse_rotate_message(message))
    assert info.value.code == "malformed_message"
    assert _snapshot(world) == before


def test_process_batch_reports_per_device(world: World) -> None:
    _dev, svc = _ready(world)
    _ready(world, "dev-x")
    svc.disallow(Disallow("dev-x", "stolen", "sec"))
    result = svc.process_batch(
        parse_rotate_message(
            {
                "kind": "rotate",
                "deviceIds": ["dev-1", "dev-x", "ghost"],
                "reason": "expiring",
                "enqueuedAt": datetime(2026, 1, 2, tzinfo=UTC).isoformat(),
            }
        )
    )
    assert result.started == ["dev-1"]
    assert result.skipped == {"dev-x": "disallowed"}
    assert list(result.errors) == ["ghost"]
    json.dumps(result.to_dict())

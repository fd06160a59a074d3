"""What the API and the CLI show (the JSON of a device's view, a disallow, a reconcile),
and the edges of disallow, allow and a failed rotation: what each writes and audits."""

from __future__ import annotations

from datetime import timedelta

import pytest

from shared.domain.commands import (
    Allow,
    DeviceCreated,
    Disallow,
    OperatorCsr,
    StartRenewal,
    Status,
    TwinReported,
)
from shared.domain.errors import CsrRejectedError, NotFoundError
from shared.domain.model import (
    AuthType,
    ConnectionFailure,
    ProvisioningStatus,
    RotationState,
    Trigger,
)
from shared.domain.rotation import RotationService
from tests.support.pki import make_csr
from tests.unit.rotation.fakes import Device, World, thumb


def _z(moment: object) -> str:
    return moment.isoformat().replace("+00:00", "Z")  # type: ignore[attr-defined]


def _ready(world: World, device_id: str = "dev-1", **kw: object) -> tuple[Device, RotationService]:
    dev = world.add_device(device_id, **kw)  # type: ignore[arg-type]
    svc = world.service()
    svc.on_twin_reported(TwinReported.parse(device_id, dev.section()))
    return dev, svc


def _mid_rotation(svc: RotationService, dev: Device) -> None:
    svc.start_renewal(StartRenewal(dev.device_id, Trigger.MANUAL, "op"))
    answer = dev.answer()
    assert answer is not None
    svc.on_twin_reported(TwinReported.parse(dev.device_id, answer))


def test_a_device_view_names_every_field_the_api_documents(world: World) -> None:
    dev, svc = _ready(world)
    world.registry.devices["dev-1"].connection_state = "Connected"
    view = svc.status(Status("dev-1")).to_dict()
    assert list(view) == [
        "deviceId",
        "rotation",
        "certificates",
        "enrollment",
        "hubIdentity",
        "audit",
    ]
    rotation = view["rotation"]
    assert "etag" not in rotation
    assert "csr_pem" not in rotation
    assert rotation["current_thumbprint"] == thumb(dev.cert)
    [cert] = view["certificates"]
    ledger = world.ledger.list_for_device("dev-1")[0]
    assert cert == {
        "serial": ledger.serial,
        "thumbprint": ledger.thumbprint_sha256,
        "status": ledger.status.value,
        "notBefore": _z(ledger.not_before),
        "notAfter": _z(ledger.not_after),
        "requestId": "initial",
        "trigger": "cli",
        "issuedAt": _z(ledger.issued_at),
        "revokedAt": None,
        "revocationReason": None,
    }
    slot = world.enrollments.individual["dev-1"].primary
    assert slot is not None
    assert slot.not_after is not None
    assert view["enrollment"] == {
        "registrationId": "dev-1",
        "provisioningStatus": "enabled",
        "primary": {"thumbprint": slot.thumbprint_sha256, "notAfter": _z(slot.not_after)},
        "secondary": None,
    }
    assert view["hubIdentity"] == {
        "status": "enabled",
        "authType": "selfSigned",
        "primaryThumbprint": thumb(dev.cert),
        "secondaryThumbprint": None,
        "connectionState": "Connected",
    }


def test_a_disallow_answers_with_every_field(world: World) -> None:
    dev, svc = _ready(world)
    _mid_rotation(svc, dev)
    request_id = world.state.get("dev-1").request_id  # type: ignore[union-attr]
    result = svc.disallow(Disallow("dev-1", "stolen", "ops"))
    out = result.to_dict()
    assert list(out) == [
        "deviceId",
        "changed",
        "enrollment",
        "hubIdentity",
        "revoked",
        "cancelledRequestId",
        "crlUrl",
        "record",
    ]
    assert (out["deviceId"], out["changed"], out["enrollment"], out["hubIdentity"]) == (
        "dev-1",
        True,
        "disabled",
        "disabled",
    )
    assert out["cancelledRequestId"] == request_id
    assert sorted(out["revoked"]) == sorted(c.serial for c in world.ledger.list_for_device("dev-1"))
    assert out["record"]["state"] == "disallowed"


def test_a_device_without_a_hub_identity_is_disallowed_with_none_to_disable(
    world: World,
) -> None:
    _ready(world)
    svc = world.service()
    del world.registry.devices["dev-1"]
    result = svc.disallow(Disallow("dev-1", "stolen", "ops"))
    assert (result.enrollment, result.hub_identity) == ("disabled", "none")


def test_a_group_member_is_blocked_by_a_disabled_enrollment_holding_both_certificates(
    world: World,
) -> None:
    dev, svc = _ready(world, group=True)
    current = thumb(dev.cert)
    _mid_rotation(svc, dev)
    issued = dev.delivered()
    assert issued is not None
    result = svc.disallow(Disallow("dev-1", "stolen", "ops"))
    assert result.enrollment == "created_disabled"
    enr = world.enrollments.individual["dev-1"]
    assert (enr.registration_id, enr.device_id) == ("dev-1", "dev-1")
    assert enr.provisioning_status is ProvisioningStatus.DISABLED
    assert enr.primary is not None
    assert enr.secondary is not None
    assert (enr.primary.thumbprint_sha256, enr.secondary.thumbprint_sha256) == (
        current,
        thumb(issued),
    )


def test_allowing_an_unknown_device_names_it(world: World) -> None:
    svc = world.service()
    with pytest.raises(NotFoundError, match=r"^device ghost has no rotation record\Z"):
        svc.allow(Allow("ghost", "ops"))


def test_a_refused_allow_csr_is_audited_for_the_operator(world: World) -> None:
    _ready(world)
    svc = world.service()
    svc.disallow(Disallow("dev-1", "stolen", "ops"))
    with pytest.raises(CsrRejectedError):
        svc.allow(Allow("dev-1", "alice", OperatorCsr.parse(make_csr("someone-else").decode())))
    [refusal] = [e for e in world.audit.list("dev-1", limit=100) if e.action == "issue_rejected"]
    assert (refusal.actor, refusal.request_id) == ("alice", "operator")
    rec = world.state.get("dev-1")
    assert rec is not None
    assert rec.state is RotationState.DISALLOWED


def test_an_allow_waits_a_rotation_deadline_for_the_device(world: World) -> None:
    _ready(world)
    svc = world.service()
    svc.disallow(Disallow("dev-1", "stolen", "ops"))
    started = svc.allow(Allow("dev-1", "alice"))
    assert started.state is RotationState.CSR_REQUESTED
    assert started.deadline == world.clock.now() + world.policy.rotation_deadline
    [audit] = [e for e in world.audit.list("dev-1", limit=100) if e.action == "allow"]
    assert (audit.actor, audit.request_id) == ("alice", started.request_id)


def test_a_failed_rotation_is_audited_with_its_state_and_what_was_withdrawn(
    world: World,
) -> None:
    dev, svc = _ready(world)
    _mid_rotation(svc, dev)
    rec = world.state.get("dev-1")
    assert rec is not None
    svc.on_twin_reported(TwinReported.parse("dev-1", dev.fail("no space")))
    [audit] = [e for e in world.audit.list("dev-1", limit=100) if e.action == "rotation_failed"]
    assert audit.outcome == "failed"
    assert audit.request_id == rec.request_id
    assert audit.detail["state"] == rec.state.value
    assert audit.detail["withdrawn"] == [rec.new_serial]
    assert audit.detail["revoked"] == []
    assert world.metrics.counts["certroll.rotation_failed"] == 1


def test_a_reconcile_answers_for_its_device(world: World) -> None:
    dev, svc = _ready(world)
    _mid_rotation(svc, dev)
    world.clock.advance(timedelta(minutes=1).total_seconds())
    world.enrollments.individual["dev-1"].secondary = None
    failure = ConnectionFailure(device_id="dev-1", code=401003, at=world.clock.now())
    outcome = svc.on_connection_failure(failure)
    out = outcome.to_dict()
    assert list(out) == ["deviceId", "code", "action", "changed", "serial"]
    assert (out["deviceId"], out["code"], out["action"]) == ("dev-1", 401003, "reconciled")
    assert out["serial"] in {c.serial for c in world.ledger.list_for_device("dev-1")}
    unknown = svc.on_connection_failure(
        ConnectionFailure(device_id="ghost", code=401003, at=world.clock.now())
    )
    assert (unknown.device_id, unknown.action) == ("ghost", "unknown_device")


def test_a_disallow_names_its_actor_on_the_hub_identity_and_a_second_one_changes_nothing(
    world: World,
) -> None:
    _ready(world)
    svc = world.service()
    svc.disallow(Disallow("dev-1", "stolen", "ops"))
    assert world.registry.devices["dev-1"].status_reason == "disallowed by ops: stolen"
    again = svc.disallow(Disallow("dev-1", "stolen", "ops"))
    assert (again.device_id, again.changed) == ("dev-1", False)
    assert (again.enrollment, again.hub_identity) == ("already_disabled", "already_disabled")


def test_a_created_device_adopts_the_certificate_its_thumbprint_identity_holds(
    world: World,
) -> None:
    dev = world.add_device("dev-1")
    world.add_device("dev-2", auth=AuthType.CERTIFICATE_AUTHORITY)
    svc = world.service()
    rec = svc.on_device_created(DeviceCreated("dev-1"))
    serial = world.ledger.list_for_device("dev-1")[0].serial
    assert (rec.current_serial, rec.current_thumbprint) == (serial, thumb(dev.cert))
    other = svc.on_device_created(DeviceCreated("dev-2"))
    assert other.current_serial is None


def test_a_refused_or_unchanged_reconcile_answers_for_its_device(world: World) -> None:
    _ready(world)
    svc = world.service()
    disabled = svc.on_connection_failure(
        ConnectionFailure(device_id="dev-1", code=403012, at=world.clock.now())
    )
    assert (disabled.device_id, disabled.action) == ("dev-1", "disabled_device")
    same = svc.on_connection_failure(
        ConnectionFailure(device_id="dev-1", code=401003, at=world.clock.now())
    )
    assert (same.device_id, same.action) == ("dev-1", "already_consistent")


def test_a_reconcile_moves_the_current_thumbprint_up_when_the_primary_was_retired(
    world: World,
) -> None:
    dev, svc = _ready(world)
    old = thumb(dev.cert)
    svc.start_renewal(StartRenewal("dev-1", Trigger.MANUAL, "op"))
    answer = dev.answer()
    assert answer is not None
    svc.on_twin_reported(TwinReported.parse("dev-1", answer))
    svc.on_twin_reported(TwinReported.parse("dev-1", dev.install()))
    new = thumb(dev.cert)
    ident = world.registry.devices["dev-1"]
    ident.primary_thumbprint, ident.secondary_thumbprint = old, new  # the retired one first
    outcome = svc.on_connection_failure(
        ConnectionFailure(device_id="dev-1", code=401003, at=world.clock.now())
    )
    assert outcome.action == "reconciled"
    ident = world.registry.devices["dev-1"]
    assert (ident.primary_thumbprint, ident.secondary_thumbprint) == (new, None)

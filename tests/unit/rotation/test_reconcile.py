"""Reconcile on a 401003 from the Connections log, which names the device and nothing else.

The slots end up holding what ``shared.domain.rotation.admissible`` allows -- the current
certificate and the one the open request issued -- and never a retired one.
"""

from __future__ import annotations

import copy
import dataclasses
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import serialization

from shared.domain.commands import Disallow, StartRenewal, TwinReported
from shared.domain.model import (
    CertificateSlot,
    CertificateStatus,
    ConnectionFailure,
    RevocationReason,
    RotationState,
    Trigger,
)
from shared.domain.rotation import RotationService
from shared.domain.rotation.admissible import admissible_certificates, refusal
from shared.domain.rotation.reconcile import UnknownDevices
from tests.unit.rotation.fakes import Device, World, thumb


def _failure(world: World, device_id: str, code: int = 401003) -> ConnectionFailure:
    return ConnectionFailure(device_id=device_id, code=code, at=world.clock.now())


def _ready(world: World, device_id: str = "dev-1") -> tuple[Device, RotationService]:
    dev = world.add_device(device_id)
    svc = world.service()
    svc.on_twin_reported(TwinReported.parse(device_id, dev.section()))
    return dev, svc


def _mid_rotation(svc: RotationService, dev: Device) -> None:
    svc.start_renewal(StartRenewal(dev.device_id, Trigger.MANUAL, "op"))
    answer = dev.answer()
    assert answer is not None
    svc.on_twin_reported(TwinReported.parse(dev.device_id, answer))


def _rotate(svc: RotationService, dev: Device) -> None:
    _mid_rotation(svc, dev)
    svc.on_twin_reported(TwinReported.parse(dev.device_id, dev.install()))


def _held(world: World, device_id: str = "dev-1") -> tuple[set[str], set[str]]:
    enr = world.enrollments.individual[device_id]
    ident = world.registry.devices[device_id]
    dps = {s.thumbprint_sha256 for s in (enr.primary, enr.secondary) if s is not None}
    hub = {t for t in (ident.primary_thumbprint, ident.secondary_thumbprint) if t}
    return {t.lower() for t in dps if t}, {t.lower() for t in hub}


def _reconciles(world: World) -> list[str]:
    return [
        f"{e.outcome}:{e.detail.get('result')}"
        for e in world.audit.list(limit=10_000)
        if e.action == "reconcile"
    ]


def test_the_open_requests_certificate_is_put_back(world: World) -> None:
    dev, svc = _ready(world)
    old = thumb(dev.cert)
    _mid_rotation(svc, dev)
    rec = world.state.get("dev-1")
    assert rec is not None
    assert rec.new_thumbprint is not None
    new = rec.new_thumbprint
    # someone removed the new certificate from DPS and the hub; the device rolled anyway
    enr = world.enrollments.individual["dev-1"]
    world.enrollments.individual["dev-1"] = dataclasses.replace(enr, secondary=None)
    world.registry.devices["dev-1"].secondary_thumbprint = None
    outcome = svc.on_connection_failure(_failure(world, "dev-1"))
    assert outcome.action == "reconciled"
    assert set(outcome.changed) == {"enrollment.secondary", "hub_identity"}
    assert _held(world) == ({old, new}, {old, new})
    # the allowance: a second 401 within the interval is not acted on
    assert svc.on_connection_failure(_failure(world, "dev-1")).action == "rate_limited"
    world.clock.advance(16 * 60)
    assert svc.on_connection_failure(_failure(world, "dev-1")).action == "already_consistent"


def test_a_superseded_certificate_is_never_readmitted(world: World) -> None:
    """After a normal rotation, a connect with the old certificate is refused (401003);
    the reconcile leaves the old thumbprint out of the enrollment and the hub identity."""
    dev, svc = _ready(world)
    old = thumb(dev.cert)
    _rotate(svc, dev)
    new = thumb(dev.cert)
    assert _held(world) == ({new}, {new})
    statuses = {c.thumbprint_sha256: c.status for c in world.ledger.list_for_device("dev-1")}
    assert statuses[old] is CertificateStatus.SUPERSEDED
    outcome = svc.on_connection_failure(_failure(world, "dev-1"))
    assert outcome.action == "already_consistent"
    assert _held(world) == ({new}, {new})


def test_a_restored_old_enrollment_gets_the_current_certificate_back(world: World) -> None:
    """An operator restored the enrollment and hub identity from before the last rotation:
    the device's current certificate goes back in, the superseded one comes out."""
    dev, svc = _ready(world)
    old_cert = dev.cert
    old = thumb(old_cert)
    old_pem = old_cert.public_bytes(serialization.Encoding.PEM).decode()
    _rotate(svc, dev)
    new = thumb(dev.cert)
    enr = world.enrollments.individual["dev-1"]
    world.enrollments.put_individual(
        dataclasses.replace(
            enr, primary=CertificateSlot(thumbprint_sha256=old, pem=old_pem), secondary=None
        )
    )
    ident = world.registry.devices["dev-1"]
    ident.primary_thumbprint, ident.secondary_thumbprint = old, None
    assert _held(world) == ({old}, {old})
    outcome = svc.on_connection_failure(_failure(world, "dev-1"))
    assert outcome.action == "reconciled"
    assert _held(world) == ({new}, {new})
    assert _reconciles(world)[-1] == "ok:reconciled"


def test_a_failed_or_revoked_current_certificate_is_not_written(world: World) -> None:
    _dev, svc = _ready(world)
    serial = world.ledger.list_for_device("dev-1")[0].serial
    world.issuer.revoke(serial, RevocationReason.KEY_COMPROMISE, "test")
    world.enrollments.individual["dev-1"] = dataclasses.replace(
        world.enrollments.individual["dev-1"], primary=None
    )
    outcome = svc.on_connection_failure(_failure(world, "dev-1"))
    assert outcome.action == "no_admissible_certificate"
    assert _held(world)[0] == set()


def test_the_rule_is_an_allow_list(world: World) -> None:
    _ready(world)
    rec = world.state.get("dev-1")
    [cert] = world.ledger.list_for_device("dev-1")
    now = world.clock.now()
    assert refusal(cert, "dev-1", rec, now) is None
    assert refusal(cert, "dev-2", rec, now) == "foreign_certificate"
    assert refusal(cert, "dev-1", None, now) == "no_rotation_record"
    for status in (CertificateStatus.SUPERSEDED, CertificateStatus.REVOKED):
        assert refusal(dataclasses.replace(cert, status=status), "dev-1", rec, now)
    assert refusal(cert, "dev-1", rec, cert.not_after + timedelta(seconds=1))
    assert rec is not None
    other = dataclasses.replace(rec, current_serial="0")
    assert refusal(cert, "dev-1", other, now) == "not_current_nor_requested"
    disallowed = dataclasses.replace(rec, state=RotationState.DISALLOWED)
    assert admissible_certificates("dev-1", disallowed, [cert], now) == []


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("disabled", "disabled_device"),
        ("disallowed", "device_disallowed"),
        ("unknown", "unknown_device"),
    ],
)
def test_refusals_change_nothing(world: World, case: str, expected: str) -> None:
    _dev, svc = _ready(world)
    device_id, code = "dev-1", 401003
    if case == "disabled":
        code = 403012
    elif case == "disallowed":
        svc.disallow(Disallow("dev-1", "stolen", "sec"))
    elif case == "unknown":
        device_id = "never-seen"
    dps = copy.deepcopy(world.enrollments.individual)
    hub = copy.deepcopy(world.registry.devices)
    outcome = svc.on_connection_failure(_failure(world, device_id, code))
    assert outcome.action == expected
    assert outcome.changed == ()
    assert world.enrollments.individual == dps
    assert world.registry.devices == hub
    entry = next(e for e in world.audit.list(limit=100) if e.action == "reconcile")
    assert entry.outcome in ("rejected", "noop")
    assert entry.detail["result"] == expected


def test_refusals_do_not_use_up_the_allowance(world: World) -> None:
    dev, svc = _ready(world)
    _mid_rotation(svc, dev)
    rec = world.state.get("dev-1")
    assert rec is not None
    world.state.put(dataclasses.replace(rec, state=RotationState.DISALLOWED))
    for _ in range(3):
        assert svc.on_connection_failure(_failure(world, "dev-1")).action == "device_disallowed"
    assert svc.on_connection_failure(_failure(world, "dev-1", 403012)).action == "disabled_device"
    current = world.state.get("dev-1")
    assert current is not None
    world.state.put(dataclasses.replace(current, state=rec.state))
    world.enrollments.individual["dev-1"] = dataclasses.replace(
        world.enrollments.individual["dev-1"], secondary=None
    )
    assert svc.on_connection_failure(_failure(world, "dev-1")).action == "reconciled"
    # a refusal repeated within the interval is audited once
    assert _reconciles(world).count("rejected:device_disallowed") == 1


def test_unknown_device_ids_of_a_batch_are_one_audit_entry(world: World) -> None:
    _ready(world)
    svc = world.service()
    unknown = UnknownDevices()
    for i in range(5000):
        outcome = svc.on_connection_failure(_failure(world, f"invented-{i}"), unknown)
        assert outcome.action == "unknown_device"
    assert world.audit.list(limit=100_000) == [
        e for e in world.audit.list(limit=100_000) if e.action != "reconcile"
    ]
    svc.on_unknown_devices(unknown)
    entries = [e for e in world.audit.list(limit=100_000) if e.action == "reconcile"]
    assert len(entries) == 1
    assert entries[0].device_id is None
    assert entries[0].detail["count"] == 5000
    assert len(entries[0].detail["deviceIds"]) == 20


def test_a_slot_the_enrollment_gives_an_unknown_certificate_is_reused(world: World) -> None:
    """Both slots full (the current certificate and one certroll never issued): the
    open request's certificate takes the slot that does not hold an allowed one."""
    dev, svc = _ready(world)
    cur = thumb(dev.cert)
    _mid_rotation(svc, dev)
    rec = world.state.get("dev-1")
    assert rec is not None
    assert rec.new_thumbprint is not None
    enr = world.enrollments.individual["dev-1"]
    world.enrollments.individual["dev-1"] = dataclasses.replace(
        enr, secondary=CertificateSlot(thumbprint_sha256="ab" * 32)
    )
    svc.on_connection_failure(_failure(world, "dev-1"))
    assert _held(world)[0] == {cur, rec.new_thumbprint}

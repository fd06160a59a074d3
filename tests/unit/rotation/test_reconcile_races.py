"""The 401 reconcile against a rotation ending in another worker at the same time.

The reconcile reads the slots, then the ledger, then writes the slots with the ETag it
read; a finish (or a failure's withdrawal) marks the ledger first and the slots after.
So whichever port call of the reconcile the other worker runs before, a certificate the
ledger has retired never ends up back in a slot. Each test runs the other worker before
the reconcile's k-th port call, for every k, and the other way round: the reconcile
before the k-th port call of the finish or the failure.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from shared.domain.commands import StartRenewal, TwinReported
from shared.domain.model import CertificateStatus, ConnectionFailure, Trigger
from shared.domain.rotation import RotationService
from tests.unit.rotation.fakes import Device, Faults, World, thumb


@dataclass
class Between(Faults):
    """Runs ``other`` once, just before the ``at``-th port call."""

    at: int = 0
    other: Callable[[], None] | None = None

    def before(self, name: str) -> None:
        super().before(name)
        if self.calls == self.at and self.other is not None:
            other, self.other = self.other, None
            other()


def _in_flight(world: World, *, drop_new: bool) -> tuple[Device, RotationService, str, str]:
    """dev-1 mid-rotation (the new certificate issued and in the free slots); with
    ``drop_new`` someone took the new one out of DPS and the hub again."""
    dev = world.add_device("dev-1")
    svc = world.service()
    svc.on_twin_reported(TwinReported.parse("dev-1", dev.section()))
    old = thumb(dev.cert)
    svc.start_renewal(StartRenewal("dev-1", Trigger.MANUAL, "op"))
    answer = dev.answer()
    assert answer is not None
    svc.on_twin_reported(TwinReported.parse("dev-1", answer))
    rec = world.state.get("dev-1")
    assert rec is not None
    assert rec.new_thumbprint is not None
    if drop_new:
        enr = world.enrollments.individual["dev-1"]
        old_first = enr.primary is not None and enr.primary.thumbprint_sha256 == old
        keep = enr.primary if old_first else enr.secondary
        world.enrollments.put_individual(dataclasses.replace(enr, primary=keep, secondary=None))
        ident = world.registry.get_device("dev-1")
        world.registry.update_device(
            dataclasses.replace(ident, primary_thumbprint=old, secondary_thumbprint=None)
        )
    return dev, svc, old, rec.new_thumbprint


def _held(world: World) -> tuple[set[str], set[str]]:
    enr = world.enrollments.individual["dev-1"]
    ident = world.registry.devices["dev-1"]
    dps = {s.thumbprint_sha256.lower() for s in (enr.primary, enr.secondary) if s is not None}
    hub = {t.lower() for t in (ident.primary_thumbprint, ident.secondary_thumbprint) if t}
    return dps, hub


def _statuses(world: World) -> dict[str, CertificateStatus]:
    return {c.thumbprint_sha256: c.status for c in world.ledger.list_for_device("dev-1")}


def _reconcile_calls(drop_new: bool) -> int:
    world = World()
    _in_flight(world, drop_new=drop_new)
    faults = Faults()
    world.service(faults).on_connection_failure(
        ConnectionFailure(device_id="dev-1", code=401003, at=world.clock.now())
    )
    return faults.calls


CASES = [(drop, k) for drop in (False, True) for k in range(1, _reconcile_calls(drop) + 2)]


@pytest.mark.parametrize(("drop_new", "at"), CASES)
def test_a_finish_during_the_reconcile_leaves_the_old_certificate_out(
    drop_new: bool, at: int
) -> None:
    world = World()
    dev, other, old, new = _in_flight(world, drop_new=drop_new)
    installed = dev.install()  # registered with the new certificate; report not yet read

    def finish() -> None:
        other.on_twin_reported(TwinReported.parse("dev-1", installed))

    faults = Between(at=at, other=finish)
    world.service(faults).on_connection_failure(
        ConnectionFailure(device_id="dev-1", code=401003, at=world.clock.now())
    )
    if faults.other is not None:  # the reconcile made fewer calls: the finish comes after
        finish()
    assert _statuses(world)[old] is CertificateStatus.SUPERSEDED
    assert _statuses(world)[new] is CertificateStatus.ACTIVE
    assert _held(world) == ({new}, {new})


@pytest.mark.parametrize(("drop_new", "at"), CASES)
def test_a_failure_during_the_reconcile_leaves_the_failed_certificate_out(
    drop_new: bool, at: int
) -> None:
    world = World()
    dev, other, old, new = _in_flight(world, drop_new=drop_new)
    failed = dev.fail()

    def fail() -> None:
        other.on_twin_reported(TwinReported.parse("dev-1", failed))

    faults = Between(at=at, other=fail)
    world.service(faults).on_connection_failure(
        ConnectionFailure(device_id="dev-1", code=401003, at=world.clock.now())
    )
    if faults.other is not None:
        fail()
    assert _statuses(world)[new] is CertificateStatus.FAILED
    assert _statuses(world)[old] is CertificateStatus.ACTIVE
    assert _held(world) == ({old}, {old})


def _ending_calls(drop_new: bool, ending: str) -> int:
    world = World()
    dev, _, _, _ = _in_flight(world, drop_new=drop_new)
    patch = dev.install() if ending == "finish" else dev.fail()
    faults = Faults()
    world.service(faults).on_twin_reported(TwinReported.parse("dev-1", patch))
    return faults.calls


ENDING_CASES = [
    (drop, ending, k)
    for drop in (False, True)
    for ending in ("finish", "failure")
    for k in range(1, _ending_calls(drop, ending) + 1)
]


@pytest.mark.parametrize(("drop_new", "ending", "at"), ENDING_CASES)
def test_a_reconcile_during_the_ending_leaves_only_what_the_ledger_allows(
    drop_new: bool, ending: str, at: int
) -> None:
    world = World()
    dev, _, old, new = _in_flight(world, drop_new=drop_new)
    patch = dev.install() if ending == "finish" else dev.fail()
    reconciler = world.service()

    def reconcile() -> None:
        reconciler.on_connection_failure(
            ConnectionFailure(device_id="dev-1", code=401003, at=world.clock.now())
        )

    faults = Between(at=at, other=reconcile)
    world.service(faults).on_twin_reported(TwinReported.parse("dev-1", patch))
    assert faults.other is None
    kept = new if ending == "finish" else old
    statuses = _statuses(world)
    assert statuses[kept] is CertificateStatus.ACTIVE
    assert statuses[old if kept == new else new] in (
        CertificateStatus.SUPERSEDED,
        CertificateStatus.FAILED,
    )
    assert _held(world) == ({kept}, {kept})

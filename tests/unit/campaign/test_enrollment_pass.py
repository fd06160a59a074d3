"""A campaign's pass over the DPS enrollment query (shared/domain/campaign_enrollments.py)
and the enroll step starting from its copy: no point read while the copy is current, a
refused write and a fresh read when it is stale, a group member known to have none."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

from shared.adapters.memory import MemoryCampaignStore
from shared.domain.campaign_engine import CampaignTracker
from shared.domain.campaign_enrollments import (
    UNFINISHED_RECHECK,
    EnrollmentPass,
    enrollment_from_json,
    enrollment_to_json,
)
from shared.domain.commands import StartRenewal, TwinReported
from shared.domain.model import RotationState, Trigger
from shared.domain.rotation import RotationService
from tests.unit.rotation.fakes import FakeEnrollments, World


class CountingReads(FakeEnrollments):
    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []
        self.queries = 0

    def get_individual(self, registration_id: str):  # type: ignore[no-untyped-def]
        self.reads.append(registration_id)
        return super().get_individual(registration_id)

    def query_individual(self, page_size: int = 100, continuation: str | None = None):  # type: ignore[no-untyped-def]
        self.queries += 1
        return super().query_individual(page_size, continuation)


def _world_with_pass(page_size: int = 2) -> tuple[World, CountingReads, EnrollmentPass]:
    world = World()
    dps = CountingReads()
    world.enrollments = dps
    store = MemoryCampaignStore()
    passer = EnrollmentPass(store, lambda: dps, world.clock, page_size=page_size)
    tracker = CampaignTracker(store, world.clock, world.events, enrollment_pass=passer)
    tracker.active_ids = lambda: ["c1"]  # type: ignore[method-assign]
    world.campaigns = tracker  # type: ignore[attr-defined]
    return world, dps, passer


def _service(world: World) -> RotationService:
    deps = world.deps()
    deps.campaigns = world.campaigns  # type: ignore[attr-defined]
    return RotationService(deps)


def test_the_pass_pages_the_query_and_resumes_after_its_deadline() -> None:
    world, dps, passer = _world_with_pass(page_size=2)
    for i in range(5):
        world.add_device(f"dev-{i}")
    now = world.clock.now()
    assert passer.known(["c1"], "dev-0") is None  # no pass yet: read the enrollment
    assert not passer.run("c1", deadline=now)  # one page, then the deadline
    assert dps.queries == 1
    assert passer.known(["c1"], "dev-0") is None  # an unfinished pass answers nothing
    assert passer.run("c1", deadline=now + timedelta(hours=1))
    assert dps.queries == 3  # 5 enrollments in pages of 2, the first page not read again
    known = passer.known(["c1"], "dev-3")
    assert known is not None
    assert known.enrollment == dps.individual["dev-3"]
    assert known.enrollment.etag == dps.individual["dev-3"].etag  # type: ignore[union-attr]
    absent = passer.known(["c1"], "member-of-a-group")
    assert absent is not None
    assert absent.enrollment is None
    assert passer.run("c1", deadline=now)  # done stays done
    assert dps.queries == 3
    world.clock.advance(passer.max_age.total_seconds() + 1)
    assert passer.known(["c1"], "dev-3") is None  # too old: read the enrollment


def test_json_round_trip_keeps_slots_etag_and_document() -> None:
    world = World()
    world.add_device("dev-1")
    e = world.enrollments.individual["dev-1"]
    e.document = {"registrationId": "dev-1", "initialTwin": {"tags": {"a": 1}}}
    back = enrollment_from_json(enrollment_to_json(e))
    assert back == dataclasses.replace(e, primary=dataclasses.replace(e.primary, pem=None))  # type: ignore[arg-type]
    assert back.document == e.document


def _rotate_to_csr(world: World, svc: RotationService, device_id: str) -> TwinReported:
    dev = world.devices[device_id]
    svc.on_twin_reported(TwinReported.parse(device_id, dev.section(), twin_version=1))
    svc.start_renewal(StartRenewal(device_id, Trigger.MANUAL, "operator@example.com"))
    answer = dev.answer()
    assert answer is not None
    return TwinReported.parse(device_id, answer)


def test_the_enroll_step_writes_from_the_copy_without_reading() -> None:
    world, dps, passer = _world_with_pass()
    world.add_device("dev-1")
    world.add_device("grp-1", group=True)
    passer.run("c1", deadline=world.clock.now() + timedelta(hours=1))
    svc = _service(world)
    reports = [_rotate_to_csr(world, svc, d) for d in ("dev-1", "grp-1")]
    dps.reads.clear()

    svc.in_enrollment_batch(reports, svc.on_twin_reported)

    assert dps.reads == []  # neither the individual nor the group member read
    rec = world.state.get("dev-1")
    assert rec is not None
    assert rec.state is RotationState.REPROVISION_SENT
    slot = getattr(dps.individual["dev-1"], rec.slot or "")
    assert slot is not None
    assert slot.thumbprint_sha256 == rec.new_thumbprint
    grp = world.state.get("grp-1")
    assert grp is not None
    assert grp.slot == "group"
    assert grp.state is RotationState.REPROVISION_SENT


def test_a_stale_copy_is_refused_then_read_and_written_alone() -> None:
    world, dps, passer = _world_with_pass()
    world.add_device("dev-1")
    passer.run("c1", deadline=world.clock.now() + timedelta(hours=1))
    dps.put_individual(dps.get_individual("dev-1"))  # changed after the pass: new ETag
    svc = _service(world)
    report = _rotate_to_csr(world, svc, "dev-1")
    dps.reads.clear()
    singles = dps.single_writes

    svc.in_enrollment_batch([report], svc.on_twin_reported)

    assert dps.reads == ["dev-1"]  # the refused bulk item, read again
    assert dps.single_writes - singles == 1
    rec = world.state.get("dev-1")
    assert rec is not None
    assert rec.state is RotationState.REPROVISION_SENT
    slot = getattr(dps.individual["dev-1"], rec.slot or "")
    assert slot is not None
    assert slot.thumbprint_sha256 == rec.new_thumbprint


def test_an_unfinished_pass_is_read_again_only_after_a_minute() -> None:
    """While a pass runs, every enroll step asks for the copy; the store is read for the
    pass's progress once a minute, not once a device."""
    world, _dps, passer = _world_with_pass(page_size=2)
    for i in range(5):
        world.add_device(f"dev-{i}")
    reads: list[str] = []
    real = passer.store.enrollment_pass

    def counted(campaign_id: str) -> Any:
        reads.append(campaign_id)
        return real(campaign_id)

    passer.store.enrollment_pass = counted  # type: ignore[method-assign]
    assert not passer.run("c1", deadline=world.clock.now())  # one page: unfinished
    reads.clear()
    for i in range(5):
        assert passer.known(["c1"], f"dev-{i}") is None
    assert reads == ["c1"]
    world.clock.advance(UNFINISHED_RECHECK.total_seconds())
    assert passer.known(["c1"], "dev-0") is None
    assert reads == ["c1", "c1"]
    # the pass finishing in this worker is known at once
    assert passer.run("c1", deadline=world.clock.now() + timedelta(hours=1))
    known = passer.known(["c1"], "dev-3")
    assert known is not None
    assert known.enrollment is not None

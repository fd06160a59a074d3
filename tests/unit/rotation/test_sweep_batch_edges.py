"""Edges of the fleet work: the sweep's time budget, its audit record, when a waiting
rotation counts as silent rather than stuck; a campaign's batch; the bulk job's deadline
and audit; the errors that name their device."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from shared.domain.commands import DeviceConnected, Disallow, StartRenewal, Sweep, TwinReported
from shared.domain.errors import ConcurrencyError, NotFoundError
from shared.domain.messages import parse_rotate_message
from shared.domain.model import RegistrationState, RotationState, Trigger
from shared.domain.rotation import RotationService
from shared.domain.rotation.unit_of_work import RecordUnitOfWork
from tests.unit.rotation.fakes import Device, World
from tests.unit.rotation.test_flow import _bulk_batch, _rotate

DAY = 86400.0


def _ready(world: World, device_id: str) -> tuple[Device, RotationService]:
    dev = world.add_device(device_id)
    svc = world.service()
    svc.on_twin_reported(TwinReported.parse(device_id, dev.section()))
    return dev, svc


def _slow_queries(world: World, seconds: float) -> None:
    """Each page of the twin query takes ``seconds`` on the world's clock."""
    inner = world.registry.query_twins

    def query(*args: Any, **kwargs: Any) -> Any:
        world.clock.advance(seconds)
        return inner(*args, **kwargs)

    world.registry.query_twins = query  # type: ignore[method-assign]


def test_a_sweep_past_its_time_budget_hands_the_rest_on_and_says_so(world: World) -> None:
    for name in ("a", "b", "c"):
        _dev, svc = _ready(world, name)
    world.clock.advance(31 * DAY)
    _slow_queries(world, 10)
    plan = svc.sweep(Sweep(page_size=1, time_budget_s=5))
    assert plan.pages == 1
    assert plan.continuation is not None
    sent = world.queue.receive(100)
    assert [m["kind"] for m in sent] == ["rotate", "sweep"]
    assert world.metrics.counts["certroll.sweep_continued"] == 1
    [audit] = [e for e in world.audit.list(limit=100) if e.action == "sweep"]
    assert (audit.detail["pages"], audit.detail["continued"]) == (1, False)


def test_a_dry_run_reads_every_page_whatever_the_budget(world: World) -> None:
    for name in ("a", "b", "c"):
        _dev, svc = _ready(world, name)
    world.clock.advance(31 * DAY)
    _slow_queries(world, 10)
    plan = svc.sweep(Sweep(dry_run=True, page_size=1, time_budget_s=5))
    assert plan.continuation is None
    assert sorted(plan.overdue) == ["a", "b", "c"]
    assert world.queue.receive(100) == []


def test_a_continued_sweep_is_audited_as_continued(world: World) -> None:
    _dev, svc = _ready(world, "a")
    world.clock.advance(31 * DAY)
    svc.sweep(Sweep(continuation="1", started_at=world.clock.now()))
    [audit] = [e for e in world.audit.list(limit=100) if e.action == "sweep"]
    assert audit.detail["continued"] is True


def test_a_rotation_waiting_on_its_device_is_stuck_then_silent_after_seven_deadlines(
    world: World,
) -> None:
    _dev, svc = _ready(world, "dev-1")
    svc.start_renewal(StartRenewal("dev-1", Trigger.MANUAL, "op"))
    deadline = world.policy.rotation_deadline.total_seconds()
    world.clock.advance(6.5 * deadline)
    plan = svc.sweep(Sweep(dry_run=True))
    assert (plan.stuck, plan.silent) == (["dev-1"], [])
    world.clock.advance(deadline)  # 7.5 deadlines without a word from the device
    plan = svc.sweep(Sweep(dry_run=True))
    assert (plan.stuck, plan.silent) == ([], ["dev-1"])


def test_advancing_an_unknown_device_names_it(world: World) -> None:
    svc = world.service()
    with pytest.raises(NotFoundError, match=r"^no rotation record for device ghost\Z"):
        svc.advance("ghost")


def test_a_record_that_keeps_changing_is_named_in_the_error(world: World) -> None:
    _ready(world, "dev-1")
    uow = RecordUnitOfWork(world.state, world.clock, lambda fn, *a, **k: fn(*a, **k))

    def lose(_rec: object) -> None:
        raise ConcurrencyError("changed")

    with pytest.raises(
        ConcurrencyError,
        match=r"^dev-1: the rotation record kept changing during the test\Z",
    ):
        uow.run("dev-1", "the test", lose)


class Campaigns:
    """The campaign outcomes port: which devices are done, and what was reported."""

    def __init__(self, done: set[str]) -> None:
        self.done = done
        self.reports: list[tuple[str, str, str | None]] = []

    def is_done(self, campaign_id: str, device_id: str) -> bool:
        return campaign_id == "c-1" and device_id in self.done

    def report(self, device_id: str, outcome: str, campaign_id: str | None = None) -> None:
        self.reports.append((device_id, outcome, campaign_id))


def test_a_campaign_batch_skips_done_and_disallowed_devices_and_reports_them(
    world: World,
) -> None:
    for name in ("done", "banned", "fresh"):
        _ready(world, name)
    campaigns = Campaigns(done={"done"})
    deps = world.deps()
    deps.campaigns = campaigns
    svc = RotationService(deps)
    svc.disallow(Disallow("banned", "stolen", "ops"))
    result = svc.process_batch(
        parse_rotate_message(
            {
                "kind": "rotate",
                "deviceIds": ["done", "banned", "fresh", "ghost"],
                "reason": "manual",
                "campaignId": "c-1",
            }
        )
    )
    assert result.skipped == {"done": "campaign-done", "banned": "disallowed"}
    assert result.started == ["fresh"]
    assert sorted(campaigns.reports) == [("banned", "skipped", "c-1"), ("ghost", "skipped", "c-1")]
    fresh = world.state.get("fresh")
    assert fresh is not None
    assert fresh.state is RotationState.CSR_REQUESTED
    [start] = [e for e in world.audit.list("fresh", limit=100) if e.action == "rotation_start"]
    assert start.actor == "system:sweep"


def test_the_bulk_job_waits_at_least_an_hour_and_is_audited(world: World) -> None:
    world.policy = type(world.policy)(bulk_threshold=2, confirm_timeout=timedelta(minutes=10))
    svc, devs = _bulk_batch(world, 2)
    start = world.clock.now()
    result = _rotate(svc, devs)
    assert result.reprovision_job is not None
    for dev in devs:
        rec = world.state.get(dev.device_id)
        assert rec is not None
        assert rec.state is RotationState.REPROVISION_SENT
        assert rec.deadline == start + timedelta(hours=1)
    [audit] = [e for e in world.audit.list(limit=1000) if e.action == "reprovision_job"]
    assert (audit.outcome, audit.device_id) == ("ok", "dev-0")
    assert audit.detail == {"jobId": result.reprovision_job, "devices": 2}


def test_a_device_that_registered_again_is_confirmed_by_its_connection(world: World) -> None:
    """No twin report yet: DPS shows a registration after the reprovision and the hub
    identity holds only the new thumbprint, so the connection confirms the rotation."""
    dev, svc = _ready(world, "dev-1")
    svc.start_renewal(StartRenewal("dev-1", Trigger.MANUAL, "op"))
    answer = dev.answer()
    assert answer is not None
    svc.on_twin_reported(TwinReported.parse("dev-1", answer))
    rec = world.state.get("dev-1")
    assert rec is not None
    assert rec.state is RotationState.REPROVISION_SENT
    world.clock.advance(60)
    delivered = dev.delivered()
    assert delivered is not None
    dev.cert = delivered  # the device registers with its new certificate, reports nothing
    dev.registered()
    world.enrollments.registrations["dev-1"] = RegistrationState(
        "dev-1", "assigned", device_id="dev-1", last_updated=world.clock.now()
    )
    done = svc.on_device_connected(DeviceConnected("dev-1", world.clock.now()))
    assert done is not None
    assert done.state is RotationState.IDLE
    assert world.metrics.counts["certroll.rotation_completed"] == 1


def test_the_ca_expiry_warning_names_the_ca(world: World) -> None:
    _dev, svc = _ready(world, "dev-1")
    ca = world.authority.certificate
    world.clock.advance((ca.not_valid_after_utc - world.clock.now()).total_seconds() - DAY)
    [warning] = svc.sweep(Sweep(dry_run=True)).ca_expiring
    assert warning["subject"] == ca.subject.rfc4514_string()
    assert warning["daysLeft"] == 1


def test_a_continued_sweep_lists_as_silent_only_idle_devices_that_stopped_reporting(
    world: World,
) -> None:
    """A continued sweep sees only its last pages: an idle record past notAfter whose twin
    still reports a due certificate was listed by an earlier part, not again as silent."""
    _ready(world, "reports")
    _ready(world, "quiet")
    world.registry.twins["quiet"].reported.pop("x509")
    world.clock.advance(31 * DAY)
    plan = world.service().sweep(
        Sweep(dry_run=True, continuation="5", started_at=world.clock.now())
    )
    assert plan.silent == ["quiet"]

"""The campaign engine on the rotation fakes: a campaign re-issues every selected device
once, pauses and resumes across a restart, aborts on failures, and converges with one
issuance per device after a crash; outcomes are counted once per device."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from shared.adapters.memory import MemoryCampaignStore
from shared.domain import campaign as cm
from shared.domain.budget import Configuration, plan
from shared.domain.campaign import AbortCriteria, Campaign, CampaignState
from shared.domain.campaign_engine import CampaignService, CampaignTracker, EngineSettings
from shared.domain.commands import TwinReported
from shared.domain.errors import ConflictError, InvalidRequestError
from shared.domain.messages import CampaignStep, RotateBatch, parse_work_queue_message
from shared.domain.model import CertificateStatus, RotationState, Trigger
from shared.domain.rotation import RotationService
from tests.unit.rotation.fakes import Crash, Device, World

QUERY = "SELECT * FROM devices"


class Fleet:
    """The world's devices, a rotation service that counts campaign outcomes, and a
    campaign service over one campaign store (``restart`` builds new instances over the
    same rows, as a new process reads the same table)."""

    def __init__(self, world: World, n: int, **settings: Any) -> None:
        self.world = world
        self.devices: dict[str, Device] = {}
        for i in range(n):
            dev = world.add_device(f"dev-{i:03d}")
            self.devices[dev.device_id] = dev
        self.store = MemoryCampaignStore()
        self.settings = EngineSettings(**{"page_size": 10, "batch_size": 5, **settings})
        self.failing: set[str] = set()
        self.restart()
        for dev in self.devices.values():
            self.rotation.on_twin_reported(TwinReported.parse(dev.device_id, dev.section()))

    def restart(self) -> None:
        world = self.world
        self.store = MemoryCampaignStore(self.store.records, self.store.devices)
        self.tracker = CampaignTracker(self.store, world.clock, world.events, world.metrics)
        deps = world.deps()
        deps.campaigns = self.tracker
        self.rotation = RotationService(deps)
        self.campaigns = CampaignService(
            self.store,
            world.registry,
            world.queue,
            world.events,
            world.clock,
            tracker=self.tracker,
            metrics=world.metrics,
            audit=world.audit,
            settings=self.settings,
        )

    def device_answers(self, device_id: str) -> None:
        """The device's side of a rotation: a CSR, then the install (or a failure)."""
        dev = self.devices[device_id]
        if device_id in self.failing:
            if dev.renewal_request() is not None:
                self.rotation.on_twin_reported(TwinReported.parse(device_id, dev.fail()))
            return
        answer = dev.answer()
        if answer is None:
            return
        self.rotation.on_twin_reported(TwinReported.parse(device_id, answer))
        if dev.delivered() is not None:
            self.rotation.on_twin_reported(TwinReported.parse(device_id, dev.install()))

    def drain(self, *, before: Callable[[dict[str, Any]], None] | None = None) -> int:
        """Process the work queue until it is empty; the messages handled."""
        handled = 0
        while True:
            messages = self.world.queue.receive(32)
            if not messages:
                return handled
            for message in messages:
                handled += 1
                if before is not None:
                    before(message)
                work = parse_work_queue_message(message)
                if isinstance(work, CampaignStep):
                    self.campaigns.run(work.campaign_id)
                elif isinstance(work, RotateBatch):
                    result = self.rotation.process_batch(work)
                    for device_id in result.started:
                        self.device_answers(device_id)

    def issued(self, device_id: str) -> int:
        """Certificates issued to the device after its first one."""
        return len(self.world.ledger.list_for_device(device_id)) - 1


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
def fleet(world: World) -> Fleet:
    return Fleet(world, 30)


def _events(world: World, prefix: str = "Campaign") -> list[str]:
    return [e.event_type for e in world.events.events if e.event_type.startswith(prefix)]


def _campaign_actions(fleet: Fleet) -> list[str]:
    return [e.action for e in fleet.world.audit.list(limit=1000) if e.action.startswith("campaign")]


def test_a_campaign_reissues_every_selected_device_once(fleet: Fleet) -> None:
    started = fleet.campaigns.start(QUERY, Trigger.CA_ROLL, "cli:ops", campaign_id="roll-1")
    assert started.state is CampaignState.RUNNING
    assert started.reason == "ca-roll"
    fleet.drain()
    status = fleet.campaigns.status("roll-1")
    assert status.campaign.state is CampaignState.COMPLETED
    assert status.progress.completed == 30
    assert status.progress.fraction == 1.0
    assert status.progress.eta_minutes == 0.0
    assert status.campaign.checkpoint.pages_read == 3  # three pages of 10
    for device_id in fleet.devices:
        assert fleet.issued(device_id) == 1, device_id
        rec = fleet.world.state.get(device_id)
        assert rec is not None
        assert rec.state is RotationState.IDLE
        active = [
            c
            for c in fleet.world.ledger.list_for_device(device_id)
            if c.status is CertificateStatus.ACTIVE
        ]
        assert len(active) == 1
    assert _events(fleet.world) == ["CampaignStarted", "CampaignCompleted"]
    completed = [e for e in fleet.world.events.events if e.event_type == "CampaignCompleted"]
    assert completed[0].data["completed"] == 30
    reasons = {
        e.data.get("reason")
        for e in fleet.world.events.events
        if e.event_type == "RotationCompleted"
    }
    assert reasons == {"ca-roll"}
    assert fleet.world.metrics.counts.get("certroll.campaign_started", 0) >= 1
    assert [
        e.action for e in fleet.world.audit.list(limit=1000) if e.action.startswith("campaign")
    ] == ["campaign_start"]


def test_pause_and_resume_across_a_restart(fleet: Fleet) -> None:
    fleet.settings = EngineSettings(page_size=10, batch_size=5, max_pages_per_run=1)
    fleet.restart()
    fleet.campaigns.start(QUERY, "manual", "cli:ops", campaign_id="re-issue")
    # one run: one page enqueued, the next run queued behind it
    [first] = fleet.world.queue.receive(1)
    fleet.campaigns.run(parse_work_queue_message(first).campaign_id)  # type: ignore[union-attr]
    paused = fleet.campaigns.pause("re-issue", "cli:ops", "change freeze")
    assert paused.state is CampaignState.PAUSED
    assert paused.checkpoint.pages_read == 1
    fleet.drain()  # the page's rotations finish and are counted; the queued run does nothing
    fleet.restart()  # a new process: a new store instance over the same rows
    after = fleet.campaigns.status("re-issue")
    assert after.campaign.state is CampaignState.PAUSED
    assert after.campaign.note == "change freeze"
    assert after.campaign.checkpoint.pages_read == 1
    assert after.progress.completed == 10
    assert sum(fleet.issued(d) for d in fleet.devices) == 10
    fleet.campaigns.resume("re-issue", "cli:ops")
    fleet.drain()
    done = fleet.campaigns.status("re-issue")
    assert done.campaign.state is CampaignState.COMPLETED
    assert done.progress.completed == 30
    assert all(fleet.issued(d) == 1 for d in fleet.devices)
    actions = [
        e.action for e in fleet.world.audit.list(limit=1000) if e.action.startswith("campaign")
    ]
    assert sorted(actions) == ["campaign_pause", "campaign_resume", "campaign_start"]


def test_the_campaign_aborts_when_too_many_rotations_fail(fleet: Fleet) -> None:
    fleet.settings = EngineSettings(page_size=10, batch_size=5, max_pages_per_run=1)
    fleet.restart()
    fleet.failing = {f"dev-{i:03d}" for i in range(0, 30, 2)}  # every other device fails
    fleet.campaigns.start(
        QUERY,
        Trigger.COMPROMISE,
        "cli:ops",
        campaign_id="urgent",
        abort_criteria=AbortCriteria(min_executed=6, failure_percentage=30.0),
    )
    fleet.drain()
    status = fleet.campaigns.status("urgent")
    assert status.campaign.state is CampaignState.ABORTED
    assert "abort criteria" in (status.campaign.note or "")
    assert status.campaign.checkpoint.pages_read == 1  # nothing enqueued after the abort
    assert status.progress.failed == 5
    assert status.progress.completed == 5
    assert _events(fleet.world) == ["CampaignStarted", "CampaignAborted"]
    with pytest.raises(ConflictError):
        fleet.campaigns.resume("urgent", "cli:ops")
    untouched = [d for d in fleet.devices if fleet.world.state.get(d).request_id is None]  # type: ignore[union-attr]
    assert len(untouched) >= 20


def test_a_crash_mid_campaign_converges_with_one_issuance_per_device(fleet: Fleet) -> None:
    # the run crashes after enqueuing its second page, before the checkpoint is written
    real_update = fleet.store.update
    pages = {"n": 0}

    def crashing_update(
        campaign_id: str, change: Callable[[Campaign], Campaign], attempts: int = 8
    ) -> Campaign:
        pages["n"] += 1
        if pages["n"] == 2:
            raise Crash("process died before the checkpoint")
        return real_update(campaign_id, change, attempts)

    fleet.store.update = crashing_update  # type: ignore[method-assign]
    fleet.campaigns.start(QUERY, Trigger.CA_ROLL, "cli:ops", campaign_id="crash")
    with pytest.raises(Crash):
        fleet.drain()
    # the rotations the crashed run enqueued go ahead; then the run is retried
    fleet.drain()
    fleet.store.update = real_update  # type: ignore[method-assign]
    fleet.restart()
    fleet.world.queue.send({"kind": "campaign", "campaignId": "crash"})  # the redelivery
    fleet.drain()
    status = fleet.campaigns.status("crash")
    assert status.campaign.state is CampaignState.COMPLETED
    assert status.campaign.checkpoint.enqueued == 30
    assert status.progress.completed == 30
    assert [fleet.issued(d) for d in fleet.devices] == [1] * 30


def test_an_outcome_is_counted_once_per_device(fleet: Fleet) -> None:
    fleet.campaigns.start(QUERY, "manual", "cli:ops", campaign_id="once")
    [message] = fleet.world.queue.receive(1)
    fleet.campaigns.run("once")
    fleet.world.queue.receive(100)  # the batches are dropped: count by hand
    fleet.tracker.report("dev-001", "completed")
    fleet.tracker.report("dev-001", "completed")  # a redelivered finish
    fleet.tracker.report("dev-001", "failed", "once")
    fleet.tracker.report("not-a-member", "completed")
    c = fleet.campaigns.status("once").campaign
    assert (c.checkpoint.completed, c.checkpoint.failed) == (1, 0)
    assert fleet.tracker.is_done("once", "dev-001")
    assert not fleet.tracker.is_done("once", "dev-002")
    assert message == {"kind": "campaign", "campaignId": "once"}


def test_a_disallowed_device_is_skipped_not_failed(fleet: Fleet) -> None:
    from shared.domain.commands import Disallow

    fleet.rotation.disallow(Disallow("dev-003", "stolen", "sec@example.com"))
    fleet.campaigns.start(QUERY, "manual", "cli:ops", campaign_id="skip")
    fleet.drain()
    p = fleet.campaigns.status("skip").progress
    assert p.state is CampaignState.COMPLETED
    assert (p.completed, p.failed, p.skipped) == (29, 0, 1)


def test_the_pacer_holds_enqueuing_to_the_planned_rate(world: World) -> None:
    fleet = Fleet(world, 30)
    spec = plan(Configuration("S1", 1, 1), 0).pacer()
    fleet.campaigns.pacer_spec = spec
    t0 = world.clock.now()
    fleet.campaigns.start(QUERY, "manual", "cli:ops", campaign_id="paced")
    fleet.campaigns.run("paced")
    minutes = (world.clock.now() - t0).total_seconds() / 60
    burst = min(b.burst / b.cost for b in spec.buckets)
    # 30 rotations, the first burst at once, the rest at the pace
    assert minutes == pytest.approx((30 - int(burst)) / spec.rotations_per_min, rel=0.2)
    assert fleet.campaigns.status("paced").campaign.rate_per_min == spec.rotations_per_min


def test_start_refuses_bad_input(fleet: Fleet) -> None:
    with pytest.raises(InvalidRequestError):
        fleet.campaigns.start(QUERY, "not-a-reason", "cli:ops")
    with pytest.raises(InvalidRequestError):
        fleet.campaigns.start("  ", "manual", "cli:ops")
    with pytest.raises(InvalidRequestError):
        fleet.campaigns.start(QUERY, "manual", " ")
    fleet.campaigns.start(QUERY, "manual", "cli:ops", campaign_id="dup")
    with pytest.raises(ConflictError):
        fleet.campaigns.start(QUERY, "manual", "cli:ops", campaign_id="dup")


def test_the_daily_tick_restarts_a_stalled_campaign(fleet: Fleet) -> None:
    fleet.campaigns.start(QUERY, "manual", "cli:ops", campaign_id="stalled")
    fleet.world.queue.receive(10)  # the message is lost
    assert fleet.campaigns.tick() == []  # not stalled yet
    fleet.world.clock.advance(3600)
    [result] = fleet.campaigns.tick()
    assert result.pages >= 1
    fleet.drain()
    assert fleet.campaigns.status("stalled").campaign.state is CampaignState.COMPLETED
    assert cm.progress(fleet.store.get("stalled")).completed == 30


def test_a_count_lost_to_contention_is_recounted_from_the_device_rows(fleet: Fleet) -> None:
    fleet.campaigns.start(QUERY, "manual", "cli:ops", campaign_id="recount")
    fleet.world.queue.receive(1)
    fleet.campaigns.run("recount")
    fleet.world.queue.receive(100)  # the rotations are not run: outcomes set by hand
    for device_id in fleet.devices:
        # the row is set but the checkpoint's count never landed
        assert fleet.store.record_outcome("recount", device_id, "completed")
    assert fleet.campaigns.status("recount").progress.completed == 0
    [result] = fleet.campaigns.tick()
    assert result.campaign.state is CampaignState.COMPLETED
    assert result.campaign.checkpoint.completed == 30
    assert _events(fleet.world) == ["CampaignStarted", "CampaignCompleted"]

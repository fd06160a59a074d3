"""The daily sweep at scale on the emulator (S1 x1, limits enforced on a manual clock):
20,000 due twins read in pages of 100, the work enqueued as each page arrives, the run
handing on to a ``sweep`` message when it nears its time budget. Every due device is
enqueued exactly once and no run goes past its budget by more than one page's wait."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from functions.worker import _continued_sweep
from local.emulator import FleetEmulator
from shared.domain.commands import Sweep
from shared.domain.messages import SweepStep, format_time, parse_work_queue_message
from shared.domain.rotation import RotationService
from tests.unit.rotation.fakes import World

DEVICES = 20_000
PAGE = 100
BUDGET_S = 120.0


def _rows(world: World, n: int) -> Iterator[tuple[str, str, dict[str, Any]]]:
    now = world.clock.now()
    not_before = format_time(now - timedelta(days=29))
    not_after = format_time(now + timedelta(days=1))
    for i in range(n):
        tp = f"{i:064x}"
        reported = {
            "x509": {
                "thumbprint": tp,
                "serialNumber": f"{i + 1:x}",
                "notBefore": not_before,
                "notAfter": not_after,
            }
        }
        yield f"dev-{i:06d}", tp, reported


@pytest.mark.slow
def test_the_sweep_pages_a_large_fleet_across_runs_within_its_time_budget() -> None:
    world = World()
    emu = FleetEmulator(world.clock, tier="S1", units=1, enforce_limits=True)
    emu.hub.bulk_load(_rows(world, DEVICES))
    emu.hub.bulk_load([("healthy", None, {"x509": {}})])
    svc = RotationService(dataclasses.replace(world.deps(), registry=emu.hub))

    enqueued: list[str] = []
    runs: list[tuple[float, int, int]] = []  # (seconds, pages, devices enqueued by the run)
    command: Sweep | None = Sweep(page_size=PAGE, time_budget_s=BUDGET_S)
    first_run_devices = 0
    while command is not None:
        t0 = world.clock.now()
        plan = svc.sweep(command)
        seconds = (world.clock.now() - t0).total_seconds()
        command = None
        batch = 0
        for message in world.queue.receive(100_000):
            work = parse_work_queue_message(message)
            if isinstance(work, SweepStep):
                assert command is None, "one continuation per run"
                command = _continued_sweep(work)
            else:
                enqueued.extend(work.device_ids)
                batch += len(work.device_ids)
        if not runs:
            first_run_devices = batch
        runs.append((seconds, plan.pages, batch))
        assert (plan.continuation is None) == (command is None)

    assert len(enqueued) == DEVICES
    assert len(set(enqueued)) == DEVICES
    pages_read = DEVICES // PAGE + 1  # the last page holds no due twin
    assert sum(pages for _, pages, _ in runs) == pages_read
    # S1 admits 20 query pages a minute: 200 pages take ~9 minutes, so several runs
    assert len(runs) >= 4
    # work goes out while paging: the first run already enqueued its pages' devices
    assert 0 < first_run_devices < DEVICES
    page_wait = 60.0 / 20
    for seconds, _, _ in runs:
        assert seconds <= BUDGET_S + 2 * page_wait
    spent = emu.limiter.spent
    assert spent["hub.queries"] == pages_read
    assert spent["hub.twin_reads"] == 0  # no point reads: the pages carry the twins


@pytest.mark.slow
def test_a_campaign_pages_a_large_fleet_at_the_planned_pace_within_its_time_budget() -> None:
    from shared.adapters.memory import MemoryCampaignStore
    from shared.domain.budget import Configuration, plan
    from shared.domain.campaign import CampaignState
    from shared.domain.campaign_engine import CampaignService, EngineSettings
    from shared.domain.messages import CampaignStep

    world = World()
    emu = FleetEmulator(world.clock, tier="S3", units=1, enforce_limits=True)
    emu.hub.bulk_load(_rows(world, DEVICES))
    spec = plan(Configuration("S3", 1, 1), DEVICES).pacer()
    budget = timedelta(minutes=7)
    campaigns = CampaignService(
        MemoryCampaignStore(),
        emu.hub,
        world.queue,
        world.events,
        world.clock,
        pacer=spec,
        settings=EngineSettings(page_size=1000, time_budget=budget),
    )
    t0 = world.clock.now()
    campaigns.start("SELECT * FROM devices", "ca-roll", "cli:ops", campaign_id="big")
    enqueued: list[str] = []
    runs = 0
    while True:
        steps = []
        for message in world.queue.receive(100_000):
            work = parse_work_queue_message(message)
            if isinstance(work, CampaignStep):
                steps.append(work.campaign_id)
            else:
                enqueued.extend(work.device_ids)
        if not steps:
            break
        for campaign_id in steps:
            started = world.clock.now()
            campaigns.run(campaign_id)
            runs += 1
            assert world.clock.now() - started <= budget
    c = campaigns.status("big").campaign
    assert c.checkpoint.query_done
    assert c.state is CampaignState.RUNNING  # every device enqueued, outcomes to come
    assert sorted(enqueued) == sorted(set(enqueued))
    assert len(enqueued) == DEVICES
    assert runs >= 2
    minutes = (world.clock.now() - t0).total_seconds() / 60
    # the pace the planner gave, not faster
    assert DEVICES / minutes <= spec.rotations_per_min * 1.05
    assert DEVICES / minutes >= spec.rotations_per_min * 0.9

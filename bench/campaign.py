"""A re-roll campaign on the emulator with Azure's limits enforced, at the planner's pace.

The fleet (simulated reference agents, 30 % of them members of a CA enrollment group)
runs on the in-process emulator with the limits of the hub tier and unit count and of
one DPS instance enforced on the emulator's clock. certroll's functions run in the same
process on in-memory storage: the campaign engine (:mod:`shared.domain.campaign_engine`)
pages the twin query and enqueues rotations paced by the budget planner's buckets; the
work queue, the routed twin changes and the lifecycle events reach the rotation service
as the triggers route them. Time is the emulator's: it moves when the pacer or a
throttled call waits, or when every device and message is idle until a device's next
due time (the clock is a :class:`DrivingClock`: a wait of the campaign engine runs the
rest of the world until the time it waits for).

Figures (emulator clock): rotations per minute from the campaign's start to its last
outcome, the planner's bound for that configuration and the ratio of the two, failures,
devices that were at any moment without a working certificate (the agents' connection
gap), and what one rotation spends on each budget (the emulator's limit buckets count
every admitted operation; signatures are ledger records, storage the calls on the
storage ports).

S3 x1 with 10,000 devices (``CERTROLL_BENCH_CAMPAIGN_100K=1``: 100,000 too) and S1 x1
with 2,000 devices. ``python -m bench campaign``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.common import BenchRow
from functions.parsing.common import parse_time
from functions.parsing.hub_events import parse_twin_change
from functions.parsing.lifecycle import parse_lifecycle
from local.device.simulator import FleetSimulator
from local.emulator import LIFECYCLE, TWIN_CHANGES, FleetEmulator
from shared.adapters.memory import MemoryEventSink
from shared.bootstrap import Services, StorageBundle, memory_storage
from shared.clock import ManualClock
from shared.domain.budget import CAMPAIGN_COST, Budget, Configuration, plan
from shared.domain.campaign import CampaignState
from shared.domain.commands import DeviceConnected
from shared.domain.errors import ThrottledError
from shared.domain.messages import CampaignStep, RotateBatch, parse_work_queue_message
from shared.pki.local_ca import generate_pki
from shared.ports import IssuingAuthority
from shared.settings import Settings

START = datetime(2026, 6, 1, tzinfo=UTC)
QUERY = "SELECT * FROM devices"
EVENT_BATCH = 100  # host.json extensions.eventHubs.maxEventBatchSize


class DrivingClock(ManualClock):
    """A manual clock whose top-level ``sleep`` runs the world until the time slept to
    (nested sleeps, e.g. a throttled call inside a rotation, only move the clock)."""

    def __init__(self, start: datetime) -> None:
        super().__init__(start)
        self.driver: Callable[[datetime], None] | None = None
        self._driving = False

    def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        if self.driver is None or self._driving:
            self.advance(seconds)
            return
        self._driving = True
        try:
            until = self.now() + timedelta(seconds=seconds)
            self.driver(until)
            left = (until - self.now()).total_seconds()
            if left > 0:
                self.advance(left)
        finally:
            self._driving = False


class Counting:
    """Counts the calls made on a port (storage requests, roughly: one per call)."""

    def __init__(self, target: Any, counter: Counter[str], label: str) -> None:
        self._target = target
        self._counter = counter
        self._label = label

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr) or name.startswith("_"):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self._counter[self._label] += 1
            return attr(*args, **kwargs)

        return call


class BulkSizes:
    """The emulated DPS, noting how many enrollments each bulk call carries."""

    def __init__(self, target: Any, sizes: list[int]) -> None:
        self._target = target
        self._sizes = sizes

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)

    def update_individuals_if_match(self, enrollments: Any) -> Any:
        items = list(enrollments)
        self._sizes.append(len(items))
        return self._target.update_individuals_if_match(items)


@dataclasses.dataclass
class CampaignRun:
    devices: int
    tier: str
    units: int
    minutes: float  # emulator clock, campaign start to last outcome
    completed: int
    failed: int
    skipped: int
    bound_per_min: float
    pace_per_min: float
    binding: str
    per_rotation: dict[str, float]
    devices_with_gap: int
    max_gap_seconds: float
    throttled: int
    real_seconds: float
    bulk_calls: int = 0
    bulk_items: int = 0

    @property
    def rate(self) -> float:
        return self.completed / self.minutes if self.minutes > 0 else 0.0

    @property
    def dps_ops_if_bulk_counts_items(self) -> float:
        """DPS service operations a rotation spent had each enrollment of a bulk call
        counted as one operation (the other reading of an undocumented rule)."""
        extra = (self.bulk_items - self.bulk_calls) / max(self.devices, 1)
        return self.per_rotation.get(Budget.DPS_SERVICE_OPS.value, 0.0) + extra

    def bound_if_bulk_counts_items(self) -> tuple[float, str]:
        cost = CAMPAIGN_COST.with_spend(dps_service_ops=self.dps_ops_if_bulk_counts_items)
        p = plan(Configuration(self.tier, self.units, 1), self.devices, cost)
        return p.bound_per_min, p.binding.value


class World:
    """The emulator, the simulated fleet and certroll's functions, stepped together."""

    def __init__(self, devices: int, tier: str, units: int) -> None:
        self.clock = DrivingClock(START)
        self.emulator = FleetEmulator(self.clock, tier=tier, units=units, enforce_limits=True)
        pki = generate_pki(now=START - timedelta(days=1))
        authority = IssuingAuthority(
            certificate=pki.issuing_certificate,
            key=pki.issuing_key,
            key_id="file:bench",
            chain=(pki.issuing_certificate,),
            root=pki.root_certificate,
        )
        self.storage_calls: Counter[str] = Counter()
        base = memory_storage()
        storage = StorageBundle(
            **{
                f.name: Counting(getattr(base, f.name), self.storage_calls, f.name)
                for f in dataclasses.fields(base)
            }
        )
        settings = Settings.from_env(
            {
                "CERTROLL_STORAGE": "memory",
                "CERTROLL_CERT_VALIDITY_DAYS": "30",
                "CERTROLL_HUB_TIER": tier,
                "CERTROLL_HUB_UNITS": str(units),
                "CERTROLL_DPS_INSTANCES": "1",
            }
        )
        self.sink = MemoryEventSink()
        #: the number of enrollments in each bulk call certroll made
        self.bulk_sizes: list[int] = []
        self.dps = BulkSizes(self.emulator.dps, self.bulk_sizes)
        self.services = Services(
            settings,
            storage=storage,
            clock=self.clock,
            enrollments=self.dps,
            registry=self.emulator.hub,
            authority=authority,
            events=self.sink,
        )
        issuer = self.services.issuer

        def issue_initial(device_id: str, csr_pem: str) -> str:
            issued = issuer.issue(
                device_id, csr_pem, request_id="initial", trigger="cli", actor="bench"
            )
            chain: str = issued.chain_pem
            return chain

        self.sim = FleetSimulator(
            self.emulator,
            issue_initial,
            devices,
            group_fraction=0.3,
            seed=7,
            trust_anchor=pki.root_certificate,
            id_prefix="dev-",
        )
        self.campaign_steps: list[str] = []
        self._redeliver: list[tuple[str, Any]] = []
        self._retry: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ the functions

    def _deliver(self, topic: str, event: Any) -> None:
        service = self.services.rotation
        if topic == TWIN_CHANGES:
            report = parse_twin_change(json.dumps(event))
            if report is not None:
                service.on_twin_reported(report)
            return
        parsed = parse_lifecycle(
            event["eventType"],
            event.get("subject"),
            event.get("data"),
            parse_time(event["eventTime"], "eventTime"),
        )
        if isinstance(parsed, DeviceConnected):
            service.on_device_connected(parsed)
        elif parsed is not None:
            service.on_device_created(parsed)

    def pump_events(self) -> int:
        """Deliver what the emulator routed: twin changes in Event Hubs batches of up to
        ``maxEventBatchSize`` (host.json: 100), their enrollment writes sent together as
        the ``twin_changes`` trigger sends them; lifecycle events one at a time (Event
        Grid). A throttled batch is delivered again whole, as the trigger's retry does."""
        pending, self._redeliver = self._redeliver, []
        for topic in (TWIN_CHANGES, LIFECYCLE):
            pending.extend((topic, e) for e in self.emulator.events.drain(topic))
        service = self.services.rotation
        index = 0
        while index < len(pending):
            topic = pending[index][0]
            end = index + 1
            if topic == TWIN_CHANGES:
                while (
                    end < len(pending)
                    and end - index < EVENT_BATCH
                    and (pending[end][0] == TWIN_CHANGES)
                ):
                    end += 1
            chunk = pending[index:end]
            try:
                service.in_enrollment_batch(chunk, lambda item: self._deliver(*item))
            except ThrottledError:
                self._redeliver.extend(pending[index:])
                return index
            index = end
        return len(pending)

    def pump_queue(self) -> int:
        messages = self._retry + self.services.queue.receive(1000)
        self._retry = []
        for message in messages:
            work = parse_work_queue_message(message)
            if isinstance(work, CampaignStep):
                self.campaign_steps.append(work.campaign_id)
            elif isinstance(work, RotateBatch):
                try:
                    self.services.rotation.process_batch(work)
                except ThrottledError:
                    self._retry.append(message)  # redelivered
        return len(messages)

    def step(self) -> int:
        return self.pump_events() + self.pump_queue() + self.sim.step_all()

    def run_until(self, until: datetime) -> None:
        """Everything that is due before ``until`` (the pacer's wait)."""
        for _ in range(1_000_000):
            if self.step():
                continue
            due = self.sim.next_due()
            if due is None or due >= until:
                return
            self.clock.advance(max((due - self.clock.now()).total_seconds(), 0.001))

    def settle(self) -> None:
        for _ in range(10_000):
            if not self.step():
                return


def run_campaign(devices: int, tier: str, units: int) -> CampaignRun:
    real_start = time.perf_counter()
    world = World(devices, tier, units)
    connected = world.sim.start(wait=True, max_rounds=100 * devices)
    if connected != devices:
        raise RuntimeError(f"only {connected} of {devices} devices connected")
    world.settle()
    world.clock.advance(120)  # every bucket full again
    world.settle()

    cfg = Configuration(tier, units, 1)
    planned = plan(cfg, devices, CAMPAIGN_COST)
    campaigns = world.services.campaign_service
    spent_before = world.emulator.limiter.spent_snapshot()
    storage_before = sum(world.storage_calls.values())
    issued_before = sum(1 for _ in world.services.ledger.list_all())
    retrier = world.services.rotation.retrier
    throttled_before = retrier.throttled
    world.clock.driver = world.run_until
    t0 = world.clock.now()
    campaign = campaigns.start(QUERY, "ca-roll", "bench", campaign_id="bench")
    finished_at: datetime | None = None
    for _ in range(10_000_000):
        if world.campaign_steps:
            campaigns.run(world.campaign_steps.pop(0))
            continue
        if world.step():
            continue
        status = campaigns.status(campaign.campaign_id).campaign
        if status.state is not CampaignState.RUNNING:
            finished_at = status.updated_at
            break
        due = world.sim.next_due()
        wait = 60.0 if due is None else max((due - world.clock.now()).total_seconds(), 0.001)
        world.clock.advance(min(wait, 60.0))
        campaigns.tick() if wait >= 60.0 else None
    world.clock.driver = None
    world.settle()
    final = campaigns.status(campaign.campaign_id).campaign
    if finished_at is None:
        raise RuntimeError(f"the campaign did not finish: {final.state}")
    minutes = (finished_at - t0).total_seconds() / 60
    spent_after = world.emulator.limiter.spent_snapshot()
    per_rotation = {
        name: (spent_after[name] - spent_before.get(name, 0.0)) / max(devices, 1)
        for name in spent_after
    }
    issued = sum(1 for _ in world.services.ledger.list_all()) - issued_before
    per_rotation[Budget.SIGNATURES.value] = issued / max(devices, 1)
    per_rotation[Budget.STORAGE_REQUESTS.value] = (
        sum(world.storage_calls.values()) - storage_before
    ) / max(devices, 1)
    now = world.clock.now()
    gaps = [a.timeline.gap_seconds(now) for a in world.sim.agents.values()]
    cp = final.checkpoint
    return CampaignRun(
        devices=devices,
        tier=tier,
        units=units,
        minutes=minutes,
        completed=cp.completed,
        failed=cp.failed,
        skipped=cp.skipped,
        bound_per_min=planned.bound_per_min,
        pace_per_min=planned.pace_per_min,
        binding=planned.binding.value,
        per_rotation=per_rotation,
        devices_with_gap=sum(1 for g in gaps if g > 0),
        max_gap_seconds=max(gaps, default=0.0),
        throttled=retrier.throttled - throttled_before,
        real_seconds=time.perf_counter() - real_start,
        bulk_calls=len(world.bulk_sizes),
        bulk_items=sum(world.bulk_sizes),
    )


def _key(budget: str) -> str:
    return "campaign_ops_per_rotation_" + budget.replace(".", "_")


def run() -> list[BenchRow]:
    sizes = [10_000]
    if os.environ.get("CERTROLL_BENCH_CAMPAIGN_100K") == "1":
        sizes.append(100_000)
    else:
        print("   campaign 100k: skipped (set CERTROLL_BENCH_CAMPAIGN_100K=1)", file=sys.stderr)
    rows: list[BenchRow] = []
    for n in sizes:
        r = run_campaign(n, "S3", 1)
        print(f"   S3x1 {n}: {json.dumps(dataclasses.asdict(r))}", file=sys.stderr)
        suffix = "" if n == sizes[0] else f"_{n // 1000}k"
        rows += [
            BenchRow(f"campaign_devices{suffix}", n, "devices", "devices re-issued (S3 x1, 1 DPS)"),
            BenchRow(
                f"campaign_rotations_per_min{suffix}",
                r.rate,
                "rotations/min",
                "campaign start to last outcome, emulator clock, S3 x1 hub, 1 DPS instance, "
                "limits enforced",
                ">= 900",
            ),
            BenchRow(
                f"campaign_bound_per_min{suffix}",
                r.bound_per_min,
                "rotations/min",
                f"the planner's bound for S3 x1, 1 DPS (binding: {r.binding})",
            ),
            BenchRow(
                f"campaign_pace_vs_bound{suffix}",
                r.rate / r.bound_per_min,
                "ratio",
                "achieved rate / the planner's bound",
                ">= 0.9",
            ),
            BenchRow(f"campaign_failures{suffix}", r.failed, "devices", "rotations failed", "0"),
            BenchRow(
                f"campaign_devices_without_valid_cert_max{suffix}",
                r.devices_with_gap,
                "devices",
                "devices that at any moment wanted a hub connection and had no working "
                "certificate (an upper bound of how many at once)",
                "0",
            ),
            BenchRow(
                f"campaign_throttled{suffix}",
                r.throttled,
                "calls",
                "calls the services answered 429 during the campaign",
            ),
            BenchRow(
                f"campaign_dps_enrollments_per_bulk_call{suffix}",
                r.bulk_items / max(r.bulk_calls, 1),
                "enrollments",
                f"enrollments per DPS bulk call ({r.bulk_calls} calls, at most 10 each)",
            ),
        ]
        item_bound, item_binding = r.bound_if_bulk_counts_items()
        rows += [
            BenchRow(
                f"campaign_ops_per_rotation_dps_service_operations_if_bulk_counts_items{suffix}",
                r.dps_ops_if_bulk_counts_items,
                "ops",
                "DPS service operations a rotation spent had DPS counted each enrollment of "
                "a bulk call (not documented; the emulator counts a call as one)",
            ),
            BenchRow(
                f"campaign_bound_per_min_if_bulk_counts_items{suffix}",
                item_bound,
                "rotations/min",
                f"the planner's bound with that reading (binding: {item_binding})",
            ),
        ]
        if n == sizes[0]:
            planned = {b.value for b in Budget}
            for budget, value in sorted(r.per_rotation.items()):
                if value > 0 or budget in planned:
                    rows.append(
                        BenchRow(
                            _key(budget),
                            value,
                            "ops",
                            f"one rotation's spend on {budget} (S3 x1 campaign, emulator "
                            "buckets; signatures: ledger; storage: port calls)",
                        )
                    )
    s1 = run_campaign(2_000, "S1", 1)
    print(f"   S1x1 2000: {json.dumps(dataclasses.asdict(s1))}", file=sys.stderr)
    rows += [
        BenchRow(
            "campaign_rotations_per_min_s1x1",
            s1.rate,
            "rotations/min",
            "the same campaign over 2,000 devices on an S1 x1 hub, 1 DPS (emulator clock)",
            ">= 250",
        ),
        BenchRow(
            "campaign_bound_per_min_s1x1",
            s1.bound_per_min,
            "rotations/min",
            f"the planner's bound for S1 x1, 1 DPS (binding: {s1.binding})",
        ),
        BenchRow(
            "campaign_pace_vs_bound_s1x1",
            s1.rate / s1.bound_per_min,
            "ratio",
            "achieved rate / the planner's bound (S1 x1)",
        ),
        BenchRow("campaign_failures_s1x1", s1.failed, "devices", "rotations failed", "0"),
        BenchRow(
            "campaign_devices_without_valid_cert_max_s1x1",
            s1.devices_with_gap,
            "devices",
            "devices that at any moment had no working certificate (S1 x1)",
            "0",
        ),
    ]
    return rows


if __name__ == "__main__":  # pragma: no cover
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    tier = sys.argv[2] if len(sys.argv) > 2 else "S3"
    print(json.dumps(dataclasses.asdict(run_campaign(n, tier, 1)), indent=2))

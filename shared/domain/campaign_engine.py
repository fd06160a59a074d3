"""Running re-roll campaigns: start, step, pause, resume, abort, status, and the count of
rotation outcomes.

:class:`CampaignService` is the entry point (``certroll campaign``, the CA roll, the
queue worker, the daily timer). A campaign re-issues every device its twin query
selects, with the rotation reason it was given (``ca-roll``, ``compromise``, ...):

- :meth:`CampaignService.start` writes the campaign (state ``running``, checkpoint at the
  query's first page), publishes ``CampaignStarted`` and enqueues a ``campaign`` message;
- :meth:`CampaignService.run` (the queue worker, on that message) reads one page of the
  query at the checkpoint's continuation token, records the page's devices as members of
  the campaign, enqueues their rotations in ``rotate`` batches carrying the campaign id,
  paced by the budget planner's buckets (:class:`~shared.domain.budget.Pacer`), and
  writes the checkpoint with an ETag check; it goes on page by page until its time budget
  is near, then enqueues the next ``campaign`` message and returns. The daily timer
  (:meth:`CampaignService.tick`) starts a run for a running campaign whose chain of
  messages broke (nothing written for longer than a run takes);
- the rotation reports each member's outcome through :class:`CampaignTracker`: the
  device's row in the campaign moves from ``pending`` to ``completed``/``failed``/
  ``skipped`` once (an If-Match write), and only that write counts it in the checkpoint,
  so a redelivered rotation is never counted twice. The abort criteria are checked on
  every count; the campaign completes when the query is read and every member counted;
- ``CampaignCompleted`` and ``CampaignAborted`` go out through the event sink, and the
  counts through the metrics port (``certroll.campaign_*``).

Crash safety: a page whose checkpoint was not written is read and enqueued again; its
members keep their rows, and the worker skips a device that already has an outcome, so a
device is rotated once per campaign.
"""

from __future__ import annotations

import builtins
import logging
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from shared.domain import campaign as cm
from shared.domain.budget import Pacer, PacerSpec
from shared.domain.campaign import (
    FINAL_STATES,
    AbortCriteria,
    Campaign,
    CampaignState,
    Progress,
)
from shared.domain.campaign_enrollments import EnrollmentPass
from shared.domain.campaign_tracker import Announcer, CampaignTracker, campaign_event
from shared.domain.errors import ConflictError, InvalidRequestError
from shared.domain.messages import campaign_message, rotate_message
from shared.domain.model import Trigger
from shared.domain.retry import Retrier
from shared.metrics import NullMetrics
from shared.ports import (
    AuditLog,
    CampaignStore,
    Clock,
    DeviceRegistry,
    EventSink,
    Metrics,
    WorkQueue,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = ["CampaignService", "CampaignStatus", "CampaignTracker", "EngineSettings", "RunResult"]


@dataclass(frozen=True)
class EngineSettings:
    """How a campaign run pages and batches.

    ``time_budget``: how long one run may enqueue before it hands on to the next message
    (a function may run 10 minutes; the default leaves room for the last page).
    ``stalled_after``: the daily timer starts a run for a running campaign not written
    for this long (its message chain broke)."""

    page_size: int = 1000
    batch_size: int = 100
    time_budget: timedelta = timedelta(minutes=7)
    stalled_after: timedelta = timedelta(minutes=30)
    max_pages_per_run: int | None = None  # None: as many as the time budget allows

    def __post_init__(self) -> None:
        if not 1 <= self.page_size <= 1000:
            raise ValueError("page_size must be 1-1000")
        if not 1 <= self.batch_size <= 1000:
            raise ValueError("batch_size must be 1-1000")
        if self.time_budget <= timedelta(0):
            raise ValueError("time_budget must be positive")


@dataclass(frozen=True)
class CampaignStatus:
    """A campaign and its progress (``certroll campaign status``)."""

    campaign: Campaign
    progress: Progress

    def to_dict(self) -> dict[str, Any]:
        out = self.campaign.to_dict()
        out.pop("etag", None)
        out["progress"] = self.progress.to_dict()
        return out


@dataclass
class RunResult:
    """What one :meth:`CampaignService.run` did."""

    campaign: Campaign
    pages: int = 0
    enqueued: int = 0
    continued: bool = False  # a campaign message was enqueued for the next run
    waited_s: float = 0.0  # time the pacer held the run back

    def to_dict(self) -> dict[str, Any]:
        return {
            "campaignId": self.campaign.campaign_id,
            "state": self.campaign.state.value,
            "pages": self.pages,
            "enqueued": self.enqueued,
            "continued": self.continued,
            "waitedSeconds": round(self.waited_s, 3),
        }


class CampaignService:
    """Start, run, pause, resume, abort and report campaigns (module docstring)."""

    def __init__(
        self,
        store: CampaignStore,
        registry: DeviceRegistry,
        queue: WorkQueue,
        events: EventSink,
        clock: Clock,
        *,
        tracker: CampaignTracker | None = None,
        metrics: Metrics | None = None,
        audit: AuditLog | None = None,
        pacer: PacerSpec | None = None,
        settings: EngineSettings | None = None,
        retrier: Retrier | None = None,
        enrollment_pass: EnrollmentPass | None = None,
    ) -> None:
        #: reads the DPS enrollment query before the first rotation (None: no pass)
        self.enrollment_pass = enrollment_pass
        self.store = store
        self.registry = registry
        self.queue = queue
        self.clock = clock
        self.metrics = metrics or NullMetrics()
        self.tracker = tracker or CampaignTracker(store, clock, events, self.metrics)
        self.pacer_spec = pacer
        self.settings = settings or EngineSettings()
        self.retrier = retrier or Retrier(clock)
        self.announce = Announcer(events, self.metrics, clock, audit)

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return self.retrier.call(fn, *args)

    # ------------------------------------------------------------------ operators

    def start(
        self,
        selection: str,
        reason: Trigger | str,
        actor: str,
        *,
        campaign_id: str | None = None,
        abort_criteria: AbortCriteria | None = None,
        devices_expected: int | None = None,
        run: bool = False,
    ) -> Campaign:
        """Start re-issuing every device the twin query ``selection`` selects, with the
        rotation reason ``reason``. Returns the running campaign; its first step is a
        ``campaign`` message on the work queue (``run=True``: run it here as well).
        InvalidRequestError on a malformed query, reason or id; ConflictError when
        ``campaign_id`` exists."""
        try:
            trigger = Trigger(reason)
        except ValueError:
            raise InvalidRequestError(
                "campaign_reason_invalid",
                f"reason {reason!r} is not one of {[t.value for t in Trigger]}",
            ) from None
        if not actor or not actor.strip():
            raise InvalidRequestError("actor_required", "a campaign needs an actor")
        now = self.clock.now()
        cid = campaign_id or f"{trigger.value}-{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
        rate = self.pacer_spec.rotations_per_min if self.pacer_spec is not None else None
        created = self._call(
            self.store.put,
            cm.new_campaign(
                cid,
                selection,
                trigger.value,
                at=now,
                by=actor.strip(),
                abort_criteria=abort_criteria,
                devices_expected=devices_expected,
                rate_per_min=rate,
            ),
        )
        self.tracker.invalidate()
        self.announce.publish(
            campaign_event(created, "CampaignStarted", now, createdBy=created.created_by)
        )
        self.announce.metric("certroll.campaign_started", reason=trigger.value)
        self.announce.record("campaign_start", created.created_by, created, query=selection)
        self._call(self.queue.send, campaign_message(cid))
        if run:
            return self.run(cid).campaign
        return created

    def pause(self, campaign_id: str, actor: str, note: str | None = None) -> Campaign:
        """Stop enqueuing (rotations already enqueued finish and are counted)."""
        now = self.clock.now()
        c = self.store.update(campaign_id, lambda c: cm.pause(c, at=now, note=note))
        self.announce.record("campaign_pause", actor, c, note=note)
        return c

    def resume(self, campaign_id: str, actor: str) -> Campaign:
        """Go on from the checkpoint (a ``campaign`` message is enqueued)."""
        now = self.clock.now()
        seen: dict[str, CampaignState] = {}

        def change(c: Campaign) -> Campaign:
            seen["before"] = c.state
            return cm.resume(c, at=now)

        c = self.store.update(campaign_id, change)
        self.announce.record("campaign_resume", actor, c)
        self.announce.changed(seen.get("before"), c)
        if c.state is CampaignState.RUNNING:
            self._call(self.queue.send, campaign_message(campaign_id))
        return c

    def abort(self, campaign_id: str, actor: str, note: str) -> Campaign:
        """End the campaign: nothing more is enqueued (final)."""
        now = self.clock.now()
        seen: dict[str, CampaignState] = {}

        def change(c: Campaign) -> Campaign:
            seen["before"] = c.state
            return cm.abort(c, at=now, note=note)

        c = self.store.update(campaign_id, change)
        self.announce.record("campaign_abort", actor, c, note=note)
        self.announce.changed(seen.get("before"), c)
        self.tracker.invalidate()
        return c

    def status(self, campaign_id: str) -> CampaignStatus:
        c = self.store.get(campaign_id)
        return CampaignStatus(c, cm.progress(c))

    def list(self, states: set[CampaignState] | None = None) -> list[CampaignStatus]:
        return [CampaignStatus(c, cm.progress(c)) for c in self.store.list(states)]

    # ------------------------------------------------------------------ the engine

    def run(self, campaign_id: str, time_budget: timedelta | None = None) -> RunResult:
        """One run: pages of the query enqueued at the pacer's rate until the time budget
        is near, then a ``campaign`` message for the next run. Returns at once for a
        campaign that is not running."""
        budget = time_budget or self.settings.time_budget
        started = self.clock.now()
        pacer = self.pacer_spec.build(self.clock) if self.pacer_spec is not None else None
        c = self.store.get(campaign_id)
        result = RunResult(c)
        page_time = self._page_time()
        if (
            self.enrollment_pass is not None
            and c.state is CampaignState.RUNNING
            and not c.checkpoint.query_done
            and not self.enrollment_pass.run(campaign_id, started + budget - page_time)
        ):
            self._call(self.queue.send, campaign_message(campaign_id))  # not done: go on
            result.continued = True
            return result
        while c.state is CampaignState.RUNNING and not c.checkpoint.query_done:
            elapsed = self.clock.now() - started
            limit = self.settings.max_pages_per_run
            if result.pages and (
                elapsed + page_time > budget or (limit is not None and result.pages >= limit)
            ):
                self._call(self.queue.send, campaign_message(campaign_id))
                result.continued = True
                break
            c, enqueued = self._page(c, pacer, result)
            result.enqueued += enqueued
        if c.state is CampaignState.RUNNING and c.checkpoint.query_done:
            c = self._settle(c)
        result.campaign = c
        return result

    def tick(self) -> builtins.list[RunResult]:
        """The daily timer: run each running campaign whose message chain broke."""
        out = []
        now = self.clock.now()
        for c in self.store.list({CampaignState.RUNNING}):
            if c.checkpoint.query_done:
                out.append(RunResult(self._settle(c)))
            elif now - c.updated_at >= self.settings.stalled_after:
                out.append(self.run(c.campaign_id))
        return out

    def _page_time(self) -> timedelta:
        """How long enqueuing one page takes at the pacer's rate."""
        if self.pacer_spec is None or self.pacer_spec.rotations_per_min <= 0:
            return timedelta(0)
        return timedelta(minutes=self.settings.page_size / self.pacer_spec.rotations_per_min)

    def _page(self, c: Campaign, pacer: Pacer | None, result: RunResult) -> tuple[Campaign, int]:
        cp = c.checkpoint
        page = self._call(
            self.registry.query_twins, c.query, self.settings.page_size, cp.continuation
        )
        ids = list(dict.fromkeys(t.device_id for t in page.items))
        self._call(self.store.add_devices, c.campaign_id, ids)
        reason = Trigger(c.reason)
        size = self.settings.batch_size
        for start in range(0, len(ids), size):
            chunk = ids[start : start + size]
            if pacer is not None:
                result.waited_s += self._admit(pacer, len(chunk))
            message = rotate_message(chunk, reason, self.clock.now(), c.campaign_id)
            self._call(self.queue.send, message)
        seen: dict[str, CampaignState] = {}

        def change(current: Campaign) -> Campaign:
            seen["before"] = current.state
            same_page = (
                current.checkpoint.continuation == cp.continuation
                and current.checkpoint.pages_read == cp.pages_read
            )
            if current.state is not CampaignState.RUNNING or not same_page:
                return current  # paused/aborted meanwhile, or another run recorded it
            return cm.record_page(
                current, enqueued=len(ids), continuation=page.continuation, at=self.clock.now()
            )

        try:
            after = self.store.update(c.campaign_id, change, attempts=32)
        except ConflictError:
            after = self.store.get(c.campaign_id)
        result.pages += 1
        self.announce.metric("certroll.campaign_enqueued", len(ids), reason=c.reason)
        self.announce.changed(seen.get("before"), after)
        if after.state in FINAL_STATES:
            self.tracker.invalidate()
        return after, len(ids)

    def _admit(self, pacer: Pacer, rotations: int) -> float:
        """Wait (on the clock) until the pacer admits ``rotations``; the seconds waited."""
        most = min(
            (max(1, math.floor(b.burst / b.cost)) for b in pacer.spec.buckets if b.cost > 0),
            default=rotations,
        )
        waited = 0.0
        left = rotations
        while left > 0:
            n = min(left, most)
            wait = pacer.try_admit(n)
            while wait > 0:
                self.clock.sleep(wait)
                waited += wait
                wait = pacer.try_admit(n)
            left -= n
        return waited

    def _settle(self, c: Campaign) -> Campaign:
        """The query is read but outcomes are missing: recount them from the device rows
        (a count lost to contention); the campaign completes when all are there."""
        cp = c.checkpoint
        if cp.executed >= cp.enqueued:
            return c
        counts = self._call(self.store.count_outcomes, c.campaign_id)
        completed = counts.get(cm.COMPLETED, 0)
        failed = counts.get(cm.FAILED, 0)
        skipped = counts.get(cm.SKIPPED, 0)
        if completed <= cp.completed and failed <= cp.failed and skipped <= cp.skipped:
            return c
        seen: dict[str, CampaignState] = {}

        def change(current: Campaign) -> Campaign:
            seen["before"] = current.state
            k = current.checkpoint
            if current.state is CampaignState.COMPLETED:
                return current
            return cm.record_outcomes(
                current,
                completed=max(0, completed - k.completed),
                failed=max(0, failed - k.failed),
                skipped=max(0, skipped - k.skipped),
                at=self.clock.now(),
            )

        after = self.store.update(c.campaign_id, change, attempts=32)
        self.announce.changed(seen.get("before"), after)
        return after


class EngineReissue:
    """The campaign engine behind the CA roll's re-issue step
    (:class:`shared.domain.ca_roll.CampaignRunner`): a paced, resumable, pausable
    campaign whose first page runs at once."""

    def __init__(self, service: CampaignService) -> None:
        self.service = service

    def start(self, selection: str, reason: Trigger, actor: str) -> str:
        return self.service.start(selection, reason, actor, run=True).campaign_id

    def status(self, campaign_id: str) -> Campaign:
        return self.service.status(campaign_id).campaign

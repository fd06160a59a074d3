"""The rotation's side of campaigns, and how a campaign announces what happens to it.

:class:`CampaignTracker` (:class:`~shared.ports.CampaignOutcomes`) counts a device's
outcome once in each campaign that holds it and hands the enroll step the enrollment a
campaign's pass over the DPS enrollment query read (``campaign_enrollments.py``);
:class:`Announcer` publishes the campaign's events, metrics and audit entries.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from typing import Any

from shared.domain import campaign as cm
from shared.domain.campaign import (
    FINAL_STATES,
    PENDING,
    Campaign,
    CampaignState,
    KnownEnrollment,
)
from shared.domain.campaign_enrollments import EnrollmentPass
from shared.domain.errors import ConcurrencyError
from shared.domain.model import AuditEvent, DomainEvent
from shared.metrics import NullMetrics
from shared.ports import AuditLog, CampaignStore, Clock, EventSink, Metrics

logger = logging.getLogger(__name__)


def campaign_event(c: Campaign, event_type: str, at: datetime, **data: Any) -> DomainEvent:
    cp = c.checkpoint
    return DomainEvent(
        event_type=event_type,
        subject=f"campaigns/{c.campaign_id}",
        data={
            "campaignId": c.campaign_id,
            "reason": c.reason,
            "query": c.query,
            "enqueued": cp.enqueued,
            "completed": cp.completed,
            "failed": cp.failed,
            "skipped": cp.skipped,
            **data,
        },
        event_id=f"{c.campaign_id}/{event_type}",
        at=at,
    )


class Announcer:
    """Events, audit entries and metrics for a campaign's state changes."""

    def __init__(
        self, events: EventSink, metrics: Metrics, clock: Clock, audit: AuditLog | None
    ) -> None:
        self.events = events
        self.metrics = metrics
        self.clock = clock
        self.audit = audit

    def metric(self, name: str, value: int = 1, **dimensions: str) -> None:
        try:
            self.metrics.increment(name, value, **dimensions)
        except Exception:  # metrics never break a campaign
            logger.exception("metric %s not recorded", name)

    def changed(self, before: CampaignState | None, after: Campaign) -> None:
        """Tell what a move from ``before`` to ``after.state`` means."""
        if before is after.state:
            return
        now = self.clock.now()
        if after.state is CampaignState.COMPLETED:
            self.publish(campaign_event(after, "CampaignCompleted", now))
            self.metric("certroll.campaign_completed", reason=after.reason)
        elif after.state is CampaignState.ABORTED:
            self.publish(campaign_event(after, "CampaignAborted", now, note=after.note))
            self.metric("certroll.campaign_aborted", reason=after.reason)

    def publish(self, event: DomainEvent) -> None:
        try:
            self.events.publish([event])
        except Exception:  # the state is written; the event is best effort
            logger.exception("event %s not published", event.event_type)

    def record(self, action: str, actor: str, c: Campaign, **detail: Any) -> None:
        if self.audit is None:
            return
        try:
            self.audit.append(
                AuditEvent(
                    action=action,
                    outcome="ok",
                    actor=actor,
                    detail={"campaignId": c.campaign_id, "state": c.state.value, **detail},
                    at=self.clock.now(),
                )
            )
        except Exception:
            logger.exception("audit %s of campaign %s not written", action, c.campaign_id)


class CampaignTracker:
    """The rotation's side of campaigns (:class:`~shared.ports.CampaignOutcomes`): counts
    a device's outcome once in each campaign that holds it."""

    def __init__(
        self,
        store: CampaignStore,
        clock: Clock,
        events: EventSink,
        metrics: Metrics | None = None,
        *,
        refresh: timedelta = timedelta(seconds=30),
        enrollment_pass: EnrollmentPass | None = None,
    ) -> None:
        self.store = store
        self.enrollment_pass = enrollment_pass
        self.clock = clock
        self.refresh = refresh
        self.announce = Announcer(events, metrics or NullMetrics(), clock, None)
        self._lock = threading.Lock()
        self._active: tuple[datetime, list[str]] | None = None

    def invalidate(self) -> None:
        """Forget the cached list of active campaigns (a campaign started or ended)."""
        with self._lock:
            self._active = None

    def active_ids(self) -> list[str]:
        """Campaigns that still count outcomes (running, paused, aborted), cached."""
        now = self.clock.now()
        with self._lock:
            cached = self._active
        if cached is not None and now - cached[0] < self.refresh:
            return cached[1]
        ids = [
            c.campaign_id
            for c in self.store.list(
                {CampaignState.RUNNING, CampaignState.PAUSED, CampaignState.ABORTED}
            )
        ]
        with self._lock:
            self._active = (now, ids)
        return ids

    def is_done(self, campaign_id: str, device_id: str) -> bool:
        outcome = self.store.device_outcome(campaign_id, device_id)
        return outcome is not None and outcome != PENDING

    def report(self, device_id: str, outcome: str, campaign_id: str | None = None) -> None:
        try:
            ids = [campaign_id] if campaign_id is not None else self.active_ids()
            for cid in ids:
                if self.store.record_outcome(cid, device_id, outcome):
                    self.count(cid, outcome)
        except Exception:
            logger.exception("outcome %s of %s not counted", outcome, device_id)

    def known_enrollment(self, device_id: str) -> KnownEnrollment | None:
        if self.enrollment_pass is None:
            return None
        return self.enrollment_pass.known(self.active_ids(), device_id)

    def count(self, campaign_id: str, outcome: str, n: int = 1) -> Campaign | None:
        """Add ``n`` outcomes to the checkpoint (ETag-checked, retried)."""
        seen: dict[str, CampaignState] = {}

        def change(c: Campaign) -> Campaign:
            seen["before"] = c.state
            if c.state is CampaignState.COMPLETED:
                return c
            return cm.record_outcomes(c, **{outcome: n}, at=self.clock.now())

        try:
            after = self.store.update(campaign_id, change, attempts=32)
        except ConcurrencyError:
            # the outcome row is set; the campaign's next run recounts from the rows
            logger.warning("campaign %s: %s not counted (contention)", campaign_id, outcome)
            return None
        self.announce.metric("certroll.campaign_outcomes", n, outcome=outcome, reason=after.reason)
        self.announce.changed(seen.get("before"), after)
        if after.state in FINAL_STATES:
            self.invalidate()
        return after

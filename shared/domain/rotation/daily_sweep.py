"""The daily sweep: finds the devices whose certificate is due, the stuck and failed
rotations and the silent devices, and enqueues their rotations in batches.

It scales with the fleet: the due twins are read one query page at a time and each
page's work goes onto the queue as the page arrives; when the run nears its time budget
it stops after a page and a ``sweep`` message carries the continuation token to the queue
worker, which runs the sweep on from there (docs/performance.md: 1,000,000 devices)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from shared.domain.commands import Sweep
from shared.domain.errors import InvalidRequestError, NotFoundError
from shared.domain.messages import (
    format_time,
    parse_reported_x509,
    rotate_message,
    sweep_message,
)
from shared.domain.model import AuditEvent, RotationRecord, RotationState, Trigger, Twin
from shared.domain.policy import Renewal
from shared.domain.rotation.context import RotationContext, iso
from shared.domain.rotation.states import IN_FLIGHT, WAITING_ON_DEVICE
from shared.domain.sweep import SweepPlan

logger = logging.getLogger(__name__)


class DailySweep:
    def __init__(self, ctx: RotationContext) -> None:
        self.ctx = ctx

    def sweep(self, command: Sweep) -> SweepPlan:
        """Find what needs work and (unless ``dry_run``) enqueue it; see docs/rotation.md.

        Resumable: the due twins are read a page at a time and each page's work is
        enqueued as it arrives; past ``command.time_budget_s`` the run stops after a page
        and a ``sweep`` message carries the next page's continuation to the queue worker,
        which calls this again with it. The first run also does what needs no paging
        (stuck, failed, CA expiry, the CRL); the last one looks for silent devices."""
        ctx = self.ctx
        clock_start = ctx.now()
        first = command.continuation is None
        now = command.started_at or clock_start
        plan = SweepPlan(at=now, dry_run=command.dry_run)
        policy = ctx.policy
        state = ctx.deps.state
        in_flight = list(ctx.call(lambda: list(state.list(states=set(IN_FLIGHT)))))
        disallowed = {
            r.device_id
            for r in ctx.call(lambda: list(state.list(states={RotationState.DISALLOWED})))
        }
        failed = ctx.call(lambda: list(state.list(states={RotationState.FAILED})))
        busy = {r.device_id for r in in_flight} | disallowed | {r.device_id for r in failed}
        if first:
            self._sweep_records(plan, in_flight, failed, now)
            self._send(plan, plan.device_ids(), command, now)
        seen: set[str] = set()
        query = (
            "SELECT * FROM devices WHERE properties.reported.x509.notAfter < "
            f"'{format_time(policy.sweep_horizon(now))}'"
        )
        continuation = command.continuation
        budget = None if command.dry_run else command.time_budget_s
        while True:
            page = ctx.call(ctx.deps.registry.query_twins, query, command.page_size, continuation)
            plan.pages += 1
            due = self._due(plan, page.items, busy, seen, now)
            self._send(plan, due, command, now)
            continuation = page.continuation
            if not continuation:
                break
            spent = (ctx.now() - clock_start).total_seconds()
            if budget is not None and spent >= budget:
                plan.continuation = continuation
                ctx.call(
                    ctx.deps.queue.send,
                    sweep_message(
                        continuation,
                        now,
                        page_size=command.page_size,
                        batch_size=command.batch_size,
                        time_budget_s=command.time_budget_s,
                    ),
                )
                ctx.metric("certroll.sweep_continued")
                break
        if plan.continuation is None:
            self._silent_idle(plan, seen, in_flight, first, now)
        if command.dry_run:
            return plan
        for item in plan.ca_expiring:
            logger.warning("issuing CA %s expires %s", item["subject"], item["notAfter"])
            ctx.metric("certroll.ca_expiring")
        if first:
            plan.crl_url = ctx.call(ctx.deps.issuer.publish_crl)
        ctx.call(
            ctx.deps.audit.append,
            AuditEvent(
                action="sweep",
                outcome="ok",
                actor="system:sweep",
                detail=plan.to_dict()["counts"] | {"pages": plan.pages, "continued": not first},
                at=clock_start,
            ),
        )
        return plan

    def _send(self, plan: SweepPlan, ids: list[str], command: Sweep, now: datetime) -> None:
        """Batches of ``ids`` into the plan's messages, and onto the queue (not in a dry run)."""
        size = command.batch_size
        for start in range(0, len(ids), size):
            message = rotate_message(ids[start : start + size], Trigger.EXPIRING, now)
            plan.messages.append(message)
            if not command.dry_run:
                self.ctx.call(self.ctx.deps.queue.send, message)

    def _due(
        self, plan: SweepPlan, twins: Sequence[Twin], busy: set[str], seen: set[str], now: datetime
    ) -> list[str]:
        """The devices of one page whose certificate is due or past due (into ``plan``)."""
        policy = self.ctx.policy
        due: list[str] = []
        for twin in twins:
            seen.add(twin.device_id)
            if twin.device_id in busy:
                continue
            section = twin.reported.get("x509") if isinstance(twin.reported, dict) else None
            try:
                report = parse_reported_x509(twin.device_id, section or {})
            except InvalidRequestError as exc:
                plan.problems.append(str(exc))
                continue
            cert = report.certificate
            if cert is None:
                continue
            decision = policy.decide(twin.device_id, cert.not_before, cert.not_after, now)
            if decision is Renewal.OVERDUE:
                plan.overdue.append(twin.device_id)
                due.append(twin.device_id)
            elif decision is Renewal.DUE:
                plan.expiring.append(twin.device_id)
                due.append(twin.device_id)
        return due

    def _sweep_records(
        self,
        plan: SweepPlan,
        in_flight: Sequence[RotationRecord],
        failed: Sequence[RotationRecord],
        now: datetime,
    ) -> None:
        """Stuck and long-silent rotations, failed ones to retry, the CA's expiry."""
        policy = self.ctx.policy
        stale_before = now - policy.rotation_deadline
        silent_before = now - 7 * policy.rotation_deadline
        for rec in in_flight:
            stuck = (rec.updated_at is not None and rec.updated_at < stale_before) or (
                rec.deadline is not None and rec.deadline <= now
            )
            if (
                rec.state in WAITING_ON_DEVICE
                and rec.updated_at is not None
                and (rec.updated_at < silent_before)
            ):
                plan.silent.append(rec.device_id)
            elif stuck:
                plan.stuck.append(rec.device_id)
        plan.failed.extend(r.device_id for r in failed)
        for ca in self.ctx.deps.ca_certificates:
            left = ca.not_valid_after_utc - now
            if left <= policy.ca_warning:
                plan.ca_expiring.append(
                    {
                        "subject": ca.subject.rfc4514_string(),
                        "notAfter": iso(ca.not_valid_after_utc),
                        "daysLeft": max(0, left.days),
                    }
                )

    def _silent_idle(
        self,
        plan: SweepPlan,
        seen: set[str],
        in_flight: Sequence[RotationRecord],
        first: bool,
        now: datetime,
    ) -> None:
        """Idle records past notAfter whose twin no longer reports the certificate. A sweep
        that ran in several parts saw only its last pages: the others' twins are read."""
        ctx = self.ctx
        horizon = ctx.policy.sweep_horizon(now)
        already = set(plan.device_ids())
        found: list[str] = []
        for rec in ctx.call(lambda: list(ctx.deps.state.list(states={RotationState.IDLE}))):
            if rec.device_id in seen or rec.current_not_after is None:
                continue
            if rec.current_not_after > now or rec.device_id in already:
                continue
            if not first and self._reports_due(rec.device_id, horizon):
                continue  # seen by an earlier part of this sweep
            found.append(rec.device_id)
        plan.silent.extend(found)
        self._send(plan, found, Sweep(dry_run=plan.dry_run), now)

    def _reports_due(self, device_id: str, horizon: datetime) -> bool:
        try:
            twin = self.ctx.twin(device_id)
        except NotFoundError:
            return False
        section = twin.reported.get("x509") if isinstance(twin.reported, dict) else None
        try:
            cert = parse_reported_x509(device_id, section or {}).certificate
        except InvalidRequestError:
            return False
        return cert is not None and cert.not_after < horizon

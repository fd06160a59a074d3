"""The fleet-wide work: the daily sweep finds what needs a rotation and enqueues it in
batches; the queue worker starts or resumes each device of a batch, with one bulk hub
job for the reprovision calls of a large batch."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator, Sequence
from datetime import timedelta

from shared.domain.commands import RotateBatch, Sweep
from shared.domain.errors import (
    ConcurrencyError,
    DeviceDisallowedError,
    InvalidRequestError,
    JobQuotaExceededError,
    NotFoundError,
    ThrottledError,
)
from shared.domain.messages import format_time, parse_reported_x509, rotate_message
from shared.domain.model import AuditEvent, JobStatus, RotationRecord, RotationState, Trigger, Twin
from shared.domain.policy import Renewal
from shared.domain.rotation import transitions
from shared.domain.rotation.context import RotationContext, iso
from shared.domain.rotation.driving import Driver
from shared.domain.rotation.renewal import Renewals
from shared.domain.rotation.states import (
    IN_FLIGHT,
    REPROVISION_METHOD,
    WAITING_ON_DEVICE,
    trigger_of,
)
from shared.domain.rotation.unit_of_work import RecordRead
from shared.domain.sweep import BatchResult, SweepPlan

logger = logging.getLogger(__name__)


def _quote(device_id: str) -> str:
    return "'" + device_id.replace("'", "''") + "'"


class FleetWork:
    def __init__(self, ctx: RotationContext, driver: Driver, renewals: Renewals) -> None:
        self.ctx = ctx
        self.driver = driver
        self.renewals = renewals

    # ------------------------------------------------------------------ queue worker

    def process_batch(self, batch: RotateBatch) -> BatchResult:
        """Start or resume the rotation of each listed device."""
        ctx = self.ctx
        result = BatchResult()
        bulk = len(batch.device_ids) >= ctx.policy.bulk_threshold
        throttled: ThrottledError | None = None
        waiting: dict[str, RotationRecord] = {}  # left in delivered for the bulk job
        for device_id in batch.device_ids:
            try:
                rec = ctx.uow.get(device_id)
                if rec is not None and rec.state is RotationState.DISALLOWED:
                    result.skipped[device_id] = "disallowed"
                elif rec is not None and rec.state in IN_FLIGHT:
                    driven = self.driver.run_until_waiting(rec, force=True, defer_reprovision=bulk)
                    if driven.state is RotationState.DELIVERED:
                        waiting[device_id] = driven
                    result.advanced.append(device_id)
                else:
                    reason = batch.reason
                    if rec is not None and rec.state is RotationState.FAILED:
                        reason = trigger_of(rec.reason)
                    started = self.renewals.start(
                        device_id, reason, "system:sweep", read=RecordRead(rec)
                    )
                    if started.state is RotationState.IDLE:
                        result.skipped[device_id] = "idle"
                    else:
                        result.started.append(device_id)
            except ThrottledError as exc:
                throttled = exc
                result.errors[device_id] = f"throttled: {exc}"
            except (NotFoundError, DeviceDisallowedError, ConcurrencyError) as exc:
                result.errors[device_id] = f"{type(exc).__name__}: {exc}"
                logger.warning("device %s: %s", device_id, exc)
        if bulk:
            job = self.reprovision_job(list(waiting.values()))
            result.reprovision_job = job.job_id if job is not None else None
        if throttled is not None:
            # the message is redelivered; finished devices are no-ops the second time
            raise throttled
        return result

    def reprovision_job(self, waiting: Sequence[RotationRecord]) -> JobStatus | None:
        """One hub job calling ``reprovision`` on every device of ``waiting`` (records in
        ``delivered``); the records move to ``reprovision_sent``. None when none waits.

        Never more jobs than the hub's tier runs at once (``policy.max_concurrent_jobs``):
        when the hub already runs that many, or refuses one more (429004, another worker
        won the last place), each device gets its own ``reprovision`` direct method
        instead, so no rotation waits for someone else's job."""
        if not waiting:
            return None
        ctx = self.ctx
        if not self._job_slot_free():
            self._reprovision_each(waiting, "the hub runs as many jobs as its tier allows")
            return None
        job_id = f"certroll-reprovision-{uuid.uuid4().hex}"
        condition = "deviceId IN [" + ",".join(_quote(r.device_id) for r in waiting) + "]"
        try:
            # not retried: waiting out Retry-After does not end someone else's job
            job = ctx.deps.tracer.wrap(ctx.deps.registry.schedule_method_job)(
                job_id, condition, REPROVISION_METHOD, {}
            )
        except JobQuotaExceededError:
            self._reprovision_each(waiting, "the hub refused one more job (429004)")
            return None
        deadline = ctx.now() + max(ctx.policy.confirm_timeout, timedelta(hours=1))
        for rec in waiting:
            try:
                ctx.uow.save(rec, transitions.reprovision_scheduled(rec, deadline))
            except ConcurrencyError:
                logger.info("device %s changed while the job was scheduled", rec.device_id)
        ctx.audit("reprovision_job", "ok", waiting[0].device_id, jobId=job_id, devices=len(waiting))
        return job

    def _job_slot_free(self) -> bool:
        limit = self.ctx.policy.max_concurrent_jobs
        if limit <= 0:
            return False
        try:
            active = self.ctx.call(self.ctx.deps.registry.active_jobs)
        except NotImplementedError:  # a registry that cannot list jobs: let the hub decide
            return True
        return len(active) < limit

    def _reprovision_each(self, waiting: Sequence[RotationRecord], why: str) -> None:
        ctx = self.ctx
        ctx.metric("certroll.reprovision_job_fallback")
        logger.info("reprovision by direct method for %d devices: %s", len(waiting), why)
        for rec in waiting:
            try:
                self.driver.run_until_waiting(rec, force=True)
            except (ThrottledError, NotFoundError, DeviceDisallowedError, ConcurrencyError) as exc:
                # the record stays in delivered; the sweep resumes it after its deadline
                logger.warning("device %s: reprovision left to the sweep: %s", rec.device_id, exc)

    # ------------------------------------------------------------------ sweep

    def _query_all(self, query: str, page_size: int) -> Iterator[Twin]:
        continuation: str | None = None
        while True:
            page = self.ctx.call(self.ctx.deps.registry.query_twins, query, page_size, continuation)
            yield from page.items
            continuation = page.continuation
            if not continuation:
                return

    def sweep(self, command: Sweep) -> SweepPlan:
        """Find what needs work and (unless ``dry_run``) enqueue it; see docs/rotation.md."""
        ctx = self.ctx
        now = ctx.now()
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
        seen: set[str] = set()
        query = (
            "SELECT * FROM devices WHERE properties.reported.x509.notAfter < "
            f"'{format_time(policy.sweep_horizon(now))}'"
        )
        for twin in self._query_all(query, 1000):
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
            elif decision is Renewal.DUE:
                plan.expiring.append(twin.device_id)
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
        for rec in ctx.call(lambda: list(state.list(states={RotationState.IDLE}))):
            if rec.device_id in seen or rec.current_not_after is None:
                continue
            if rec.current_not_after <= now:
                plan.silent.append(rec.device_id)  # the twin no longer reports the certificate
        for ca in ctx.deps.ca_certificates:
            left = ca.not_valid_after_utc - now
            if left <= policy.ca_warning:
                plan.ca_expiring.append(
                    {
                        "subject": ca.subject.rfc4514_string(),
                        "notAfter": iso(ca.not_valid_after_utc),
                        "daysLeft": max(0, left.days),
                    }
                )
        ids = plan.device_ids()
        size = command.batch_size
        for start in range(0, len(ids), size):
            plan.messages.append(rotate_message(ids[start : start + size], Trigger.EXPIRING, now))
        if command.dry_run:
            return plan
        for item in plan.ca_expiring:
            logger.warning("issuing CA %s expires %s", item["subject"], item["notAfter"])
            ctx.metric("certroll.ca_expiring")
        for msg in plan.messages:
            ctx.call(ctx.deps.queue.send, msg)
        plan.crl_url = ctx.call(ctx.deps.issuer.publish_crl)
        ctx.call(
            ctx.deps.audit.append,
            AuditEvent(
                action="sweep",
                outcome="ok",
                actor="system:sweep",
                detail=plan.to_dict()["counts"],
                at=now,
            ),
        )
        return plan

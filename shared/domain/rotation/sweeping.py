"""The fleet-wide work: the daily sweep finds what needs a rotation and enqueues it in
batches; the queue worker starts or resumes each device of a batch, with one bulk hub
job for the reprovision calls of a large batch."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import timedelta

from shared.domain.commands import RotateBatch, Sweep
from shared.domain.errors import (
    CertrollError,
    ConcurrencyError,
    DeviceDisallowedError,
    JobQuotaExceededError,
    NotFoundError,
    ServiceError,
    SigningError,
    ThrottledError,
)
from shared.domain.model import JobStatus, RotationRecord, RotationState, Trigger
from shared.domain.policy import Renewal
from shared.domain.rotation import transitions
from shared.domain.rotation.context import RotationContext
from shared.domain.rotation.daily_sweep import DailySweep
from shared.domain.rotation.driving import Driver
from shared.domain.rotation.renewal import Renewals
from shared.domain.rotation.states import (
    IN_FLIGHT,
    REPROVISION_METHOD,
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
        """Start or resume the rotation of each listed device.

        A campaign's batch (``batch.campaign_id``) skips a device that already has an
        outcome in the campaign (the batch was enqueued again after a crash) and counts
        a device with nothing to do (disallowed, unknown) as ``skipped``. A device that
        fails transiently (throttled, a service error, the signing key) does not stop the
        others: the batch goes on and then raises, so the message comes back for it."""
        ctx = self.ctx
        result = BatchResult()
        bulk = len(batch.device_ids) >= ctx.policy.bulk_threshold
        # transient failures (throttling; a service's 5xx or lost connection; the signing
        # key): the other devices carry on, then one is raised so the message comes back
        throttled: ThrottledError | None = None
        failed: CertrollError | None = None
        waiting: dict[str, RotationRecord] = {}  # left in delivered for the bulk job
        campaign = batch.campaign_id
        for device_id in batch.device_ids:
            try:
                if campaign is not None and self._campaign_done(campaign, device_id):
                    result.skipped[device_id] = "campaign-done"
                    continue
                rec = ctx.uow.get(device_id)
                if rec is not None and rec.state is RotationState.DISALLOWED:
                    result.skipped[device_id] = "disallowed"
                    if campaign is not None:
                        ctx.campaign_outcome(device_id, "skipped", campaign)
                elif rec is not None and rec.state in IN_FLIGHT:
                    driven = self.driver.run_until_waiting(rec, force=True, defer_reprovision=bulk)
                    if driven.state is RotationState.DELIVERED:
                        waiting[device_id] = driven
                    result.advanced.append(device_id)
                elif self._renewed_since(batch, rec):
                    result.skipped[device_id] = "not-due"
                else:
                    reason = batch.reason
                    if rec is not None and rec.state is RotationState.FAILED and campaign is None:
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
            except (ServiceError, SigningError) as exc:
                # one device's transient failure does not hold up the rest of the batch
                failed = failed or exc
                result.errors[device_id] = f"{type(exc).__name__}: {exc}"
                logger.warning("device %s: %s; the message will come back", device_id, exc)
            except (NotFoundError, DeviceDisallowedError, ConcurrencyError) as exc:
                result.errors[device_id] = f"{type(exc).__name__}: {exc}"
                logger.warning("device %s: %s", device_id, exc)
                if campaign is not None and not isinstance(exc, ConcurrencyError):
                    ctx.campaign_outcome(device_id, "skipped", campaign)
        if bulk:
            job = self.reprovision_job(list(waiting.values()))
            result.reprovision_job = job.job_id if job is not None else None
        error = throttled or failed
        if error is not None:
            # the message is redelivered; finished devices are no-ops the second time
            raise error
        return result

    def _renewed_since(self, batch: RotateBatch, rec: RotationRecord | None) -> bool:
        """Whether an ``expiring`` batch from the sweep comes too late for this device: its
        record changed after the batch was enqueued and its current certificate is no
        longer due (a rotation finished in between, through the device's own twin report
        or an earlier delivery of this very message). The queue delivers at least once
        and a message comes back after a crash or a failure, so without this a stale
        message would open a second rotation and issue a second certificate."""
        if batch.campaign_id is not None or batch.reason is not Trigger.EXPIRING:
            return False
        if rec is None or rec.state is not RotationState.IDLE or not rec.current_serial:
            return False
        if batch.enqueued_at is None or rec.updated_at is None:
            return False  # no time to compare with: the message is taken as it is
        if rec.updated_at < batch.enqueued_at:
            return False  # untouched since the sweep found it due: still due
        current = self.ctx.ledger_get(rec.current_serial)
        if current is None:
            return False
        decision = self.ctx.policy.decide(
            rec.device_id, current.not_before, current.not_after, self.ctx.now()
        )
        return decision is Renewal.NOT_DUE

    def _campaign_done(self, campaign_id: str, device_id: str) -> bool:
        campaigns = self.ctx.deps.campaigns
        if campaigns is None:
            return False
        return bool(self.ctx.call(campaigns.is_done, campaign_id, device_id))

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

    def sweep(self, command: Sweep) -> SweepPlan:
        """Find what needs work and (unless ``dry_run``) enqueue it (:mod:`.daily_sweep`)."""
        return DailySweep(self.ctx).sweep(command)

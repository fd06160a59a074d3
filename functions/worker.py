"""Queue trigger: the rotation work queue the sweep and the campaigns fan out to.

Four kinds of message: ``rotate`` (a batch of devices), ``campaign`` (a campaign's next
run, :mod:`shared.domain.campaign_engine`), ``sweep`` (the daily sweep going on from
a twin-query continuation token) and ``ca-roll`` (a CA-roll step an operator queued,
docs/ca-roll.md).

A ``ca-roll`` step the roll refuses for good (out of order, devices left to retire, a
bad option: a 4xx over the API) is not retried: it is audited as ``rejected`` and the
message completes; a transient failure (throttling, a service or key store down) is
raised, so the host retries it and, after ``maxDequeueCount`` tries, poisons it."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import azure.functions as func

from functions._errors import ca_http_error_for
from functions._services import rotation, to_jsonable
from functions.parsing.ca_roll import CaRollWork
from functions.parsing.work_queue import parse_any_work_message
from shared.domain.commands import Sweep
from shared.domain.errors import CertrollError, InvalidRequestError
from shared.domain.messages import CampaignStep, SweepStep
from shared.domain.model import AuditEvent
from shared.domain.rotation import RotationService

if TYPE_CHECKING:
    from shared.domain.campaign_engine import CampaignService

logger = logging.getLogger(__name__)

bp = func.Blueprint()


#: host.json extensions.queues.maxDequeueCount (a test keeps them equal)
MAX_DEQUEUE_COUNT = 5


def _count_poisoned(exc: Exception) -> None:
    """``certroll.work_messages_poisoned{reason}``: the last try of a message failed."""
    try:
        from functions._services import services

        reason = "malformed" if isinstance(exc, InvalidRequestError) else type(exc).__name__
        services().instrumentation.telemetry.increment(
            "certroll.work_messages_poisoned", reason=reason
        )
    except Exception:  # the metric never hides the failure
        logger.exception("rotation_worker: poison metric not recorded")


class MalformedWorkMessage(InvalidRequestError):
    """A work-queue message that can never be processed (it ends in ``<queue>-poison``)."""


def _campaign_service() -> CampaignService:
    from functions._services import services

    return services().campaign_service


def _ca_roll() -> Any:
    from functions._services import services

    return services().ca_roll


def run_ca_roll_step(work: CaRollWork, roll: Any, audit: Any | None = None) -> Any:
    """Run a queued CA-roll step; a refusal that no retry can change is audited and
    answered with ``None`` (the message completes), anything else propagates."""
    try:
        return roll.run(work.step, work.actor, **work.options)
    except CertrollError as exc:
        error = ca_http_error_for(exc)
        if error.status >= 500 or error.status == 429:
            raise
        logger.error(
            "rotation_worker: queued CA-roll step %s by %s refused (%d %s): %s",
            work.step.value,
            work.actor,
            error.status,
            error.code,
            exc,
        )
        if audit is None:
            from functions._services import audit_log

            audit = audit_log()
        audit.append(
            AuditEvent(
                action=f"ca_roll_{work.step.value}",
                outcome="rejected",
                actor=work.actor,
                detail={
                    "status": error.status,
                    "code": error.code,
                    "message": str(exc),
                    "via": "work-queue",
                },
            )
        )
        return None


def _continued_sweep(step: SweepStep) -> Sweep:
    extra: dict[str, Any] = {}
    if step.page_size is not None:
        extra["page_size"] = step.page_size
    if step.batch_size is not None:
        extra["batch_size"] = step.batch_size
    if step.time_budget_s is not None:
        extra["time_budget_s"] = step.time_budget_s
    return Sweep(continuation=step.continuation, started_at=step.started_at, **extra)


def handle_work_message(
    msg: func.QueueMessage,
    service: RotationService,
    campaigns: CampaignService | None = None,
) -> Any:
    """Process one message; a malformed one raises with a readable reason.

    The host retries a message whose function raised up to ``maxDequeueCount`` (host.json)
    times and then moves it to ``<queue>-poison``; the reason is in the log of every try.
    """
    try:
        work = parse_any_work_message(msg.get_body())
        result: Any
        if isinstance(work, CampaignStep):
            result = (campaigns or _campaign_service()).run(work.campaign_id)
        elif isinstance(work, SweepStep):
            result = service.sweep(_continued_sweep(work))
        elif isinstance(work, CaRollWork):
            result = run_ca_roll_step(work, _ca_roll())
        else:
            result = service.process_batch(work)
    except Exception as exc:
        if (msg.dequeue_count or 0) >= MAX_DEQUEUE_COUNT:  # the host poisons it next
            _count_poisoned(exc)
        if not isinstance(exc, InvalidRequestError):
            raise
        logger.error(
            "rotation_worker: message %s (dequeue %s) is malformed: %s",
            msg.id,
            msg.dequeue_count,
            exc.message,
        )
        raise MalformedWorkMessage(
            exc.code, f"work queue message {msg.id}: {exc.message}"
        ) from None
    logger.info("rotation_worker: message %s done: %s", msg.id, to_jsonable(result))
    return result


@bp.queue_trigger(arg_name="msg", queue_name="%CERTROLL_WORK_QUEUE%", connection="CERTROLL_STORAGE")
def rotation_worker(msg: func.QueueMessage) -> None:
    handle_work_message(msg, rotation())

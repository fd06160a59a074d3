"""Queue trigger: the rotation work queue the sweep fans out to."""

from __future__ import annotations

import logging

import azure.functions as func

from functions._services import rotation, to_jsonable
from functions.parsing.work_queue import parse_work_message
from shared.domain.errors import InvalidRequestError
from shared.domain.rotation import RotationService
from shared.domain.sweep import BatchResult

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


def handle_work_message(msg: func.QueueMessage, service: RotationService) -> BatchResult:
    """Process one message; a malformed one raises with a readable reason.

    The host retries a message whose function raised up to ``maxDequeueCount`` (host.json)
    times and then moves it to ``<queue>-poison``; the reason is in the log of every try.
    """
    try:
        batch = parse_work_message(msg.get_body())
        result = service.process_batch(batch)
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

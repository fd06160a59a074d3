"""Event Hubs triggers: routed twin changes and the hub's Connections resource log."""

from __future__ import annotations

import logging
import typing

import azure.functions as func

from functions._errors import PERMANENT_ERRORS, TRANSIENT_ERRORS
from functions._services import rotation, services
from functions.parsing.hub_events import (
    app_properties_for,
    parse_connection_log,
    parse_twin_change,
)
from shared.domain.commands import TwinReported
from shared.domain.errors import InvalidRequestError
from shared.domain.messages import MAX_CSR_BYTES
from shared.domain.rotation import RotationService
from shared.domain.rotation.batching import EnrollmentWriteWaits
from shared.domain.rotation.reconcile import UnknownDevices

logger = logging.getLogger(__name__)

bp = func.Blueprint()

# Retry the whole batch on a transient failure (throttling, ETag race, service outage);
# the rotation service is idempotent, so events already handled are no-ops on retry.
RETRY_STRATEGY = "exponential_backoff"
RETRY_MAX_COUNT = "8"
RETRY_MIN_INTERVAL = "00:00:05"
RETRY_MAX_INTERVAL = "00:05:00"

#: The consumer group infra creates for certroll on both hubs (never ``$Default``, which
#: other readers of the hub's events may share).
CONSUMER_GROUP = "%CERTROLL_EVENTHUB_CONSUMER_GROUP%"

#: The annotation of a ``cardinality="many"`` parameter. The Python worker refuses at load
#: an annotation that is neither a ``type`` nor a ``typing`` generic its bundled
#: ``typing_inspect`` recognises; a PEP 585 ``list[...]`` is neither on Python 3.11, and one
#: refused function stops the whole app from indexing (tests/functions/test_worker_load.py).
EventBatch = typing.List[func.EventHubEvent]  # noqa: UP006


def _as_list(events: func.EventHubEvent | list[func.EventHubEvent]) -> list[func.EventHubEvent]:
    return events if isinstance(events, list) else [events]


def handle_twin_changes(
    events: list[func.EventHubEvent],
    service: RotationService,
    csr_max_bytes: int = MAX_CSR_BYTES,
) -> int:
    """Call ``on_twin_reported`` for every message with a reported ``x509``; returns how
    many. A CSR answer above ``csr_max_bytes`` (the issuing policy's limit) is refused
    at parse, like any malformed message: skipped, never retried."""
    reports = []
    for index, event in enumerate(events):
        seq = event.sequence_number
        try:
            report = parse_twin_change(
                event.get_body(),
                event.iothub_metadata,
                app_properties_for(event.metadata, index),
                csr_max_bytes=csr_max_bytes,
            )
        except InvalidRequestError as exc:
            logger.warning("twin_changes: skipped event %d (sequence %s): %s", index, seq, exc)
            continue
        if report is None:
            logger.debug("twin_changes: event %d (sequence %s) has no reported x509", index, seq)
            continue
        reports.append(report)
    # the reports' individual-enrollment writes go out together, ten per DPS bulk call
    handled = sum(service.in_enrollment_batch(reports, lambda r: _handle_report(r, service)))
    logger.info("twin_changes: %d of %d events handled", handled, len(events))
    return handled


def _handle_report(report: TwinReported, service: RotationService) -> bool:
    """One report; whether it was handled (skipped: False). Transient errors propagate
    (the batch is retried), so does a step waiting for the batch's bulk write."""
    try:
        service.on_twin_reported(report)
    except EnrollmentWriteWaits:
        raise
    except PERMANENT_ERRORS as exc:
        logger.warning(
            "twin_changes: device %s (twin version %s) skipped: %s",
            report.device_id,
            report.twin_version,
            exc,
        )
        return False
    except TRANSIENT_ERRORS:
        logger.exception(
            "twin_changes: device %s (twin version %s) failed transiently; batch retried",
            report.device_id,
            report.twin_version,
        )
        raise
    except Exception:
        logger.exception(
            "twin_changes: device %s (twin version %s) failed; event skipped",
            report.device_id,
            report.twin_version,
        )
        return False
    return True


def handle_connection_logs(events: list[func.EventHubEvent], service: RotationService) -> int:
    """Call ``on_connection_failure`` for every 401003/403012 record; returns how many.

    Refusals for device ids certroll has never seen are written as one audit entry for
    the whole batch (a flood of records for invented ids writes one row, not thousands).
    """
    handled = 0
    unknown = UnknownDevices()
    for index, event in enumerate(events):
        try:
            batch = parse_connection_log(event.get_body(), event.enqueued_time)
        except InvalidRequestError as exc:
            logger.warning(
                "connection_failures: skipped event %d (sequence %s): %s",
                index,
                event.sequence_number,
                exc,
            )
            continue
        for problem in batch.problems:
            logger.warning("connection_failures: event %d: skipped %s", index, problem)
        for failure in batch.failures:
            try:
                service.on_connection_failure(failure, unknown)
            except PERMANENT_ERRORS as exc:
                logger.warning(
                    "connection_failures: device %s (%d) skipped: %s",
                    failure.device_id,
                    failure.code,
                    exc,
                )
                continue
            except TRANSIENT_ERRORS:
                logger.exception(
                    "connection_failures: device %s (%d) failed transiently; batch retried",
                    failure.device_id,
                    failure.code,
                )
                raise
            except Exception:
                logger.exception(
                    "connection_failures: device %s (%d) failed; record skipped",
                    failure.device_id,
                    failure.code,
                )
                continue
            handled += 1
    if unknown.count:
        service.on_unknown_devices(unknown)
    logger.info("connection_failures: %d failed connects handled", handled)
    return handled


@bp.retry(
    strategy=RETRY_STRATEGY,
    max_retry_count=RETRY_MAX_COUNT,
    minimum_interval=RETRY_MIN_INTERVAL,
    maximum_interval=RETRY_MAX_INTERVAL,
)
@bp.event_hub_message_trigger(
    arg_name="events",
    event_hub_name="%CERTROLL_TWIN_EVENTHUB%",
    connection="CERTROLL_EVENTHUB",
    cardinality="many",
    consumer_group=CONSUMER_GROUP,
)
def twin_changes(events: EventBatch) -> None:
    csr_max_bytes = services().settings.int("CERTROLL_CSR_MAX_BYTES")
    handle_twin_changes(_as_list(events), rotation(), csr_max_bytes)


@bp.retry(
    strategy=RETRY_STRATEGY,
    max_retry_count=RETRY_MAX_COUNT,
    minimum_interval=RETRY_MIN_INTERVAL,
    maximum_interval=RETRY_MAX_INTERVAL,
)
@bp.event_hub_message_trigger(
    arg_name="events",
    event_hub_name="%CERTROLL_CONNECTIONS_EVENTHUB%",
    connection="CERTROLL_EVENTHUB",
    cardinality="many",
    consumer_group=CONSUMER_GROUP,
)
def connection_failures(events: EventBatch) -> None:
    handle_connection_logs(_as_list(events), rotation())

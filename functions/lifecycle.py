"""Event Grid trigger: IoT Hub DeviceConnected / DeviceCreated system events."""

from __future__ import annotations

import logging

import azure.functions as func

from functions._errors import PERMANENT_ERRORS
from functions._services import rotation
from functions.parsing.lifecycle import parse_lifecycle
from shared.domain.commands import DeviceConnected
from shared.domain.errors import InvalidRequestError
from shared.domain.rotation import RotationService

logger = logging.getLogger(__name__)

bp = func.Blueprint()


def handle_lifecycle(event: func.EventGridEvent, service: RotationService) -> str | None:
    """Dispatch one event; returns the kind handled (None when ignored or skipped).

    Transient errors propagate: Event Grid redelivers with its own retry schedule.
    """
    try:
        parsed = parse_lifecycle(
            event.event_type, event.subject, event.get_json(), event.event_time
        )
    except InvalidRequestError as exc:
        logger.warning(
            "device_lifecycle: skipped event %s (%s): %s", event.id, event.event_type, exc
        )
        return None
    if parsed is None:
        logger.debug("device_lifecycle: ignored event %s of type %s", event.id, event.event_type)
        return None
    kind = "connected" if isinstance(parsed, DeviceConnected) else "created"
    try:
        if isinstance(parsed, DeviceConnected):
            service.on_device_connected(parsed)
        else:
            service.on_device_created(parsed)
    except PERMANENT_ERRORS as exc:
        logger.warning("device_lifecycle: device %s (%s) skipped: %s", parsed.device_id, kind, exc)
        return None
    logger.info("device_lifecycle: device %s %s", parsed.device_id, kind)
    return kind


@bp.event_grid_trigger(arg_name="event")
def device_lifecycle(event: func.EventGridEvent) -> None:
    handle_lifecycle(event, rotation())

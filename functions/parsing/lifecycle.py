"""Event Grid payloads: IoT Hub DeviceConnected / DeviceCreated system events."""

from __future__ import annotations

from datetime import UTC, datetime

from functions.parsing.common import parse_time
from shared.domain.commands import DeviceConnected, DeviceCreated
from shared.domain.errors import InvalidRequestError
from shared.domain.messages import check_device_id

DEVICE_CONNECTED = "Microsoft.Devices.DeviceConnected"
DEVICE_CREATED = "Microsoft.Devices.DeviceCreated"


def parse_lifecycle(
    event_type: str,
    subject: str | None,
    data: object,
    event_time: datetime | None,
) -> DeviceConnected | DeviceCreated | None:
    """An IoT Hub DeviceConnected / DeviceCreated Event Grid event; None for other types
    and for a module's event (``data.moduleId`` set, or a ``devices/<id>/modules/<m>``
    subject; iot-hub-event-grid.md): a module must not speak for its device."""
    if event_type not in (DEVICE_CONNECTED, DEVICE_CREATED):
        return None
    device_id: object = None
    if isinstance(data, dict):
        if data.get("moduleId"):
            return None  # a module's connection: not the device's (docs/api.md)
        device_id = data.get("deviceId")
    if subject and "/modules/" in subject:
        return None
    if device_id is None and subject and subject.startswith("devices/"):
        device_id = subject.split("/", 2)[1]
    if device_id is None:
        raise InvalidRequestError(
            "malformed_event", f"{event_type} event names no device (data.deviceId or subject)"
        )
    device_id = check_device_id(device_id)
    at = parse_time(event_time, "eventTime") if event_time is not None else datetime.now(UTC)
    if event_type == DEVICE_CREATED:
        return DeviceCreated(device_id)
    return DeviceConnected(device_id, at)

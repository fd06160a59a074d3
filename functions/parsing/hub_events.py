"""Event Hubs payloads: routed TwinChangeEvents and the hub's Connections resource log.

Pure functions: bytes and trigger metadata in, a command from
:mod:`shared.domain.commands` out (``None`` for a payload that is well-formed but not
for certroll), or :class:`InvalidRequestError` with a code and a message.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from functions.parsing.common import load_json, parse_time
from shared.domain.commands import ConnectionFailure, TwinReported
from shared.domain.errors import InvalidRequestError
from shared.domain.messages import MAX_CSR_BYTES, check_device_id

#: TwinChangeEvents ``opType`` values (iot-hub-non-telemetry-event-schema.md): an update
#: body holds ``version`` and the changed sections; a replace body holds the whole twin
#: (``properties.reported`` included), read the same way -- the reported ``x509`` section
#: as it now is.
TWIN_OPERATIONS = frozenset({"updateTwin", "replaceTwin"})

#: Connections-log result types certroll acts on (resultType of a deviceConnect record).
UNAUTHORIZED = 401003  # IoTHubUnauthorized
DEVICE_DISABLED = 403012  # DeviceDisabled
FAILURE_CODES = frozenset({UNAUTHORIZED, DEVICE_DISABLED})


# --------------------------------------------------------------------------- twin changes


def _strip_iothub_prefix(metadata: object) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if not isinstance(metadata, Mapping):  # absent, or a routed message's non-object field
        return out
    for key, value in metadata.items():
        if isinstance(key, str):
            out[key.removeprefix("iothub-")] = value
    return out


def parse_twin_change(
    body: bytes | str,
    iothub_metadata: Mapping[str, Any] | None = None,
    app_properties: Mapping[str, Any] | None = None,
    *,
    csr_max_bytes: int = MAX_CSR_BYTES,
) -> TwinReported | None:
    """Parse one routed TwinChangeEvents message.

    ``body`` is ``{"version": n, "properties": {"reported": {...}}}``. The device id is
    the ``iothub-connection-device-id`` system property (``iothub_metadata``, with or
    without the ``iothub-`` prefix) or the ``deviceId`` application property. Returns None
    for a module twin's change (``iothub-connection-module-id`` or a ``moduleId``
    application property: a module must not speak for its device) and for an ``opType``
    other than ``updateTwin`` / ``replaceTwin``. A ``replaceTwin`` body is the whole twin;
    its ``properties.reported.x509`` is read like an update's. A body
    that is a whole routed message (``{"body", "properties", "systemProperties"}``, as
    the local emulator writes it) is unwrapped first. Returns None when the change does
    not carry a reported ``x509`` section; a section that is not a well-formed
    report raises (``malformed_report``), and so does a CSR answer larger than
    ``csr_max_bytes`` (``csr_too_large``: refused here, never retried).
    """
    doc = load_json(body, "twin change message")
    if not isinstance(doc, dict):
        raise InvalidRequestError("malformed_event", "twin change message is not a JSON object")
    system = _strip_iothub_prefix(iothub_metadata)
    app = dict(app_properties or {})
    if isinstance(doc.get("body"), dict):  # a whole routed message
        # what the body says of itself fills gaps only: the runtime's properties win
        inner = doc.get("systemProperties")
        system = _strip_iothub_prefix(inner if isinstance(inner, Mapping) else None) | system
        if isinstance(doc.get("properties"), dict):
            app = dict(doc["properties"]) | app
        doc = doc["body"]
    module_id = system.get("connection-module-id") or app.get("moduleId")
    if module_id:
        # a module twin (a workload on the device, less trusted than the device itself)
        # carries the parent's device id: it must not speak for the device
        return None
    op_type = app.get("opType")
    if op_type is not None and not isinstance(op_type, str):
        raise InvalidRequestError("malformed_event", "twin change opType is not a string")
    if op_type is not None and op_type not in TWIN_OPERATIONS:
        return None
    device_id = system.get("connection-device-id") or app.get("deviceId")
    if device_id is None:
        raise InvalidRequestError(
            "malformed_event",
            "twin change message names no device (iothub-connection-device-id or deviceId)",
        )
    device_id = check_device_id(device_id)
    properties = doc.get("properties")
    if properties is None:
        return None
    if not isinstance(properties, dict):
        raise InvalidRequestError("malformed_event", f"{device_id}: 'properties' is not an object")
    reported = properties.get("reported")
    if reported is None:
        return None
    if not isinstance(reported, dict):
        raise InvalidRequestError(
            "malformed_event", f"{device_id}: 'properties.reported' is not an object"
        )
    x509 = reported.get("x509")
    if x509 is None:
        return None
    if not isinstance(x509, dict):
        raise InvalidRequestError(
            "malformed_event", f"{device_id}: reported 'x509' is not an object"
        )
    version = doc.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
        raise InvalidRequestError(
            "malformed_event", f"{device_id}: twin 'version' is not an integer: {version!r}"
        )
    return TwinReported.parse(device_id, x509, version, csr_max_bytes=csr_max_bytes)


def app_properties_for(metadata: Mapping[str, Any] | None, index: int) -> dict[str, Any]:
    """The application properties of event ``index`` of a batch from trigger metadata.

    With ``cardinality="many"`` the runtime passes ``PropertiesArray`` (one dict per
    event); with one event per call, ``Properties``.
    """
    if not metadata:
        return {}
    many = metadata.get("PropertiesArray")
    if isinstance(many, str):
        try:
            many = json.loads(many)
        except ValueError:
            many = None
    if isinstance(many, list) and 0 <= index < len(many) and isinstance(many[index], dict):
        return dict(many[index])
    one = metadata.get("Properties")
    if isinstance(one, str):
        try:
            one = json.loads(one)
        except ValueError:
            one = None
    return dict(one) if isinstance(one, dict) else {}


# --------------------------------------------------------------------------- connections log


@dataclass(frozen=True)
class ConnectionLogBatch:
    """What one resource-log envelope held: failures to reconcile and unreadable records."""

    failures: list[ConnectionFailure]
    problems: list[str]
    ignored: int


def parse_connection_record(
    record: object, fallback_time: datetime | None = None
) -> ConnectionFailure | None:
    """One Connections-log record as a :class:`ConnectionFailure`, or None if not one.

    The record is Azure Monitor's resource-log shape (MicrosoftDocs/azure-docs
    ``articles/iot-hub/monitor-iot-hub-reference.md``, "Connections category"): ``time``,
    ``resourceId``, ``operationName``, ``category``, ``level``, ``resultType``,
    ``resultDescription``, ``properties`` (a JSON string with ``deviceId``, ``sdkVersion``,
    ``protocol``, ``authType``, ``maskedIpAddress``), ``location``. Only records with
    category ``Connections``, operation ``deviceConnect`` and result type 401003 or 403012
    count. Nothing in the record names the certificate the device presented, and nothing
    else is read.
    """
    if not isinstance(record, dict):
        raise InvalidRequestError("malformed_event", "log record is not a JSON object")
    if str(record.get("category", "")).lower() != "connections":
        return None
    if str(record.get("operationName", "")).lower() != "deviceconnect":
        return None
    try:
        code = int(str(record.get("resultType", "")).strip())
    except ValueError:
        return None
    if code not in FAILURE_CODES:
        return None
    raw_props = record.get("properties")
    if isinstance(raw_props, str):
        props = load_json(raw_props, "log record 'properties'")
    elif raw_props is None:
        props = {}
    else:
        props = raw_props
    if not isinstance(props, dict):
        raise InvalidRequestError("malformed_event", "log record 'properties' is not an object")
    device_id = props.get("deviceId", record.get("deviceId"))
    if device_id is None:
        raise InvalidRequestError("malformed_event", f"{code} record names no deviceId")
    device_id = check_device_id(device_id)
    if record.get("time") is not None:
        at = parse_time(record["time"], f"{device_id}: record 'time'")
    elif fallback_time is not None:
        at = parse_time(fallback_time, "enqueued time")
    else:
        at = datetime.now(UTC)
    description = record.get("resultDescription")
    return ConnectionFailure(
        device_id=device_id,
        code=code,
        at=at,
        message=description[:200] if isinstance(description, str) else "",
    )


def parse_connection_log(
    body: bytes | str, fallback_time: datetime | None = None
) -> ConnectionLogBatch:
    """Parse one Azure Monitor resource-log envelope ``{"records": [...]}``.

    A malformed envelope raises; a malformed record (wrong types, ``properties`` that is
    not an object, JSON nested too deeply to decode) is reported in ``problems`` and the
    other records still count. Failures are returned one per device and code, the
    latest kept: a device retrying its connect many times in one batch is reconciled once.
    """
    doc = load_json(body, "resource log event")
    if isinstance(doc, dict) and isinstance(doc.get("body"), dict):  # whole routed message
        doc = doc["body"]
    if not isinstance(doc, dict) or not isinstance(doc.get("records"), list):
        raise InvalidRequestError(
            "malformed_event", "resource log event is not an object with a 'records' list"
        )
    failures: list[ConnectionFailure] = []
    problems: list[str] = []
    ignored = 0
    for index, record in enumerate(doc["records"]):
        try:
            failure = parse_connection_record(record, fallback_time)
        except InvalidRequestError as exc:
            problems.append(f"record {index}: {exc}")
            continue
        except (RecursionError, TypeError, ValueError) as exc:
            problems.append(f"record {index}: unreadable ({type(exc).__name__})")
            continue
        if failure is None:
            ignored += 1
        else:
            failures.append(failure)
    latest: dict[tuple[str, int], ConnectionFailure] = {}
    for failure in failures:
        key = (failure.device_id, failure.code)
        if key not in latest or failure.at >= latest[key].at:
            latest[key] = failure
    return ConnectionLogBatch(failures=list(latest.values()), problems=problems, ignored=ignored)

"""Parsing of trigger payloads into small command dataclasses.

Every function here is pure (no I/O, no Azure SDK): it takes the bytes, headers and
properties a trigger received and returns a command, ``None`` for a payload that is
well-formed but not for certroll, or raises :class:`InvalidRequestError` with a code
and a message a person can act on. The triggers in this package stay thin: parse here,
call the rotation service, map its typed errors.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.domain.errors import InvalidRequestError
from shared.domain.messages import check_device_id
from shared.domain.messages import parse_time as parse_iso_time
from shared.domain.model import ConnectionFailure, Trigger
from shared.settings import SETTING_DEFAULTS

_SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")
_SHA256_IN_TEXT = re.compile(r"(?<![0-9a-fA-F])[0-9a-fA-F]{64}(?![0-9a-fA-F])")
_PRESENTED_IN_TEXT = re.compile(
    r"presented[^0-9a-fA-F]{0,40}?(?<![0-9a-fA-F])([0-9a-fA-F]{64})(?![0-9a-fA-F])", re.I
)
_PEM_CSR = re.compile(
    r"\s*-----BEGIN CERTIFICATE REQUEST-----\r?\n"
    r"([A-Za-z0-9+/=\s]+?)"
    r"-----END CERTIFICATE REQUEST-----\s*"
)

#: Connections-log result types certroll acts on.
UNAUTHORIZED = 401003  # IoTHubUnauthorized
DEVICE_DISABLED = 403012  # DeviceDisabled
FAILURE_CODES = frozenset({UNAUTHORIZED, DEVICE_DISABLED})

#: Keys (in the record's ``properties`` or on the record itself) that may name the
#: SHA-256 thumbprint of the certificate the device presented, in the order tried.
THUMBPRINT_KEYS = (
    "thumbprint",
    "presentedThumbprint",
    "certificateThumbprint",
    "clientCertificateThumbprint",
    "x509Thumbprint",
)

DEVICE_CONNECTED = "Microsoft.Devices.DeviceConnected"
DEVICE_CREATED = "Microsoft.Devices.DeviceCreated"

MAX_REASON_LENGTH = 500
#: The default of ``CERTROLL_CSR_MAX_BYTES`` (the API passes the configured value).
DEFAULT_CSR_MAX_BYTES = int(SETTING_DEFAULTS["CERTROLL_CSR_MAX_BYTES"])
#: Reasons an operator may give for ``POST devices/{id}/renew``.
RENEW_REASONS = (Trigger.MANUAL, Trigger.COMPROMISE, Trigger.CA_ROLL, Trigger.EXPIRING)

ROLE_CLAIM_TYPES = frozenset(
    {"roles", "role", "http://schemas.microsoft.com/ws/2008/06/identity/claims/role"}
)
NAME_CLAIM_TYPES = (
    "name",
    "preferred_username",
    "upn",
    "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name",
    "appid",
    "azp",
    "http://schemas.microsoft.com/identity/claims/objectidentifier",
    "oid",
)


# --------------------------------------------------------------------------- common


def load_json(data: bytes | str, what: str) -> Any:
    """Decode UTF-8 JSON, or InvalidRequestError(``malformed_json``) naming ``what``."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return json.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequestError("malformed_json", f"{what} is not UTF-8 JSON: {exc}") from None


def parse_time(value: object, what: str) -> datetime:
    """An ISO 8601 timestamp (or a datetime) as an aware UTC datetime."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return parse_iso_time(value, what)


# --------------------------------------------------------------------------- twin changes


@dataclass(frozen=True)
class TwinReport:
    """A device's reported ``x509`` section from a routed TwinChangeEvents message."""

    device_id: str
    reported_x509: dict[str, Any]
    twin_version: int | None


def _strip_iothub_prefix(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in (metadata or {}).items():
        out[key.removeprefix("iothub-")] = value
    return out


def parse_twin_change(
    body: bytes | str,
    iothub_metadata: Mapping[str, Any] | None = None,
    app_properties: Mapping[str, Any] | None = None,
) -> TwinReport | None:
    """Parse one routed TwinChangeEvents message.

    ``body`` is ``{"version": n, "properties": {"reported": {...}}}``. The device id is
    the ``iothub-connection-device-id`` system property (``iothub_metadata``, with or
    without the ``iothub-`` prefix) or the ``deviceId`` application property. A body
    that is a whole routed message (``{"body", "properties", "systemProperties"}``, as
    the local emulator writes it) is unwrapped first. Returns None when the change does
    not carry a reported ``x509`` section.
    """
    doc = load_json(body, "twin change message")
    if not isinstance(doc, dict):
        raise InvalidRequestError("malformed_event", "twin change message is not a JSON object")
    system = _strip_iothub_prefix(iothub_metadata)
    app = dict(app_properties or {})
    if isinstance(doc.get("body"), dict):  # a whole routed message
        system.update(_strip_iothub_prefix(doc.get("systemProperties")))
        if isinstance(doc.get("properties"), dict):
            app.update(doc["properties"])
        doc = doc["body"]
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
    return TwinReport(device_id=device_id, reported_x509=x509, twin_version=version)


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


def _find_thumbprint(record: Mapping[str, Any], props: Mapping[str, Any]) -> str | None:
    for source in (props, record):
        for key in THUMBPRINT_KEYS:
            value = source.get(key)
            if isinstance(value, str) and _SHA256_HEX.match(value.strip()):
                return value.strip().lower()
    for source in (props, record):
        for key in ("message", "resultDescription", "errorMessage"):
            value = source.get(key)
            if isinstance(value, str):
                presented = _PRESENTED_IN_TEXT.search(value)
                if presented:
                    return presented.group(1).lower()
                match = _SHA256_IN_TEXT.search(value)
                if match:
                    return match.group(0).lower()
    return None


def parse_connection_record(
    record: object, fallback_time: datetime | None = None
) -> ConnectionFailure | None:
    """One Connections-log record as a :class:`ConnectionFailure`, or None if not one.

    Only records with category ``Connections``, operation ``deviceConnect`` and result
    type 401003 or 403012 count. ``properties`` is a JSON string (or an object) with
    ``deviceId``; the presented certificate's SHA-256 thumbprint is taken from a key in
    :data:`THUMBPRINT_KEYS` (in ``properties`` or on the record) or, failing that, from
    a 64-hex-digit run in ``message`` / ``resultDescription`` / ``errorMessage`` (one
    following the word "presented" first).
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
    message = record.get("resultDescription") or props.get("message") or ""
    return ConnectionFailure(
        device_id=device_id,
        code=code,
        at=at,
        thumbprint=_find_thumbprint(record, props),
        message=str(message),
    )


def parse_connection_log(
    body: bytes | str, fallback_time: datetime | None = None
) -> ConnectionLogBatch:
    """Parse one Azure Monitor resource-log envelope ``{"records": [...]}``.

    A malformed envelope raises; a malformed record is reported in ``problems`` and the
    other records still count.
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
        if failure is None:
            ignored += 1
        else:
            failures.append(failure)
    return ConnectionLogBatch(failures=failures, problems=problems, ignored=ignored)


# --------------------------------------------------------------------------- lifecycle


@dataclass(frozen=True)
class LifecycleEvent:
    kind: str  # "connected" | "created"
    device_id: str
    at: datetime


def parse_lifecycle(
    event_type: str,
    subject: str | None,
    data: object,
    event_time: datetime | None,
) -> LifecycleEvent | None:
    """An IoT Hub DeviceConnected / DeviceCreated Event Grid event; None for other types."""
    if event_type == DEVICE_CONNECTED:
        kind = "connected"
    elif event_type == DEVICE_CREATED:
        kind = "created"
    else:
        return None
    device_id: object = None
    if isinstance(data, dict):
        device_id = data.get("deviceId")
    if device_id is None and subject and subject.startswith("devices/"):
        device_id = subject.split("/", 2)[1]
    if device_id is None:
        raise InvalidRequestError(
            "malformed_event", f"{event_type} event names no device (data.deviceId or subject)"
        )
    device_id = check_device_id(device_id)
    at = parse_time(event_time, "eventTime") if event_time is not None else datetime.now(UTC)
    return LifecycleEvent(kind=kind, device_id=device_id, at=at)


# --------------------------------------------------------------------------- work queue


def parse_work_message(body: bytes | str) -> dict[str, Any]:
    """A rotation work-queue message: a JSON object (the service checks its fields)."""
    doc = load_json(body, "work queue message")
    if not isinstance(doc, dict):
        raise InvalidRequestError(
            "malformed_message", f"work queue message is not a JSON object: {type(doc).__name__}"
        )
    return doc


# --------------------------------------------------------------------------- HTTP API


@dataclass(frozen=True)
class Principal:
    """The caller as App Service Authentication describes it."""

    name: str
    roles: frozenset[str]
    auth_type: str = ""


class PrincipalError(Exception):
    """The principal header is absent or unreadable (the caller is not authenticated)."""


def parse_principal(encoded: str | None, name_header: str | None) -> Principal:
    """Decode ``X-MS-CLIENT-PRINCIPAL`` (base64 JSON) and ``X-MS-CLIENT-PRINCIPAL-NAME``.

    Roles are the values of claims whose ``typ`` is ``roles`` (Entra ID app roles),
    the document's ``role_typ`` or the standard role claim URI. The name is the
    ``X-MS-CLIENT-PRINCIPAL-NAME`` header, else the ``name_typ`` claim, else the first
    of :data:`NAME_CLAIM_TYPES` present.
    """
    if not encoded or not encoded.strip():
        raise PrincipalError("no X-MS-CLIENT-PRINCIPAL header")
    text = encoded.strip()
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_")
        doc = json.loads(raw.decode("utf-8"))
    except (binascii.Error, ValueError):
        try:
            raw = base64.b64decode(text + "=" * (-len(text) % 4))
            doc = json.loads(raw.decode("utf-8"))
        except (binascii.Error, ValueError):
            raise PrincipalError("X-MS-CLIENT-PRINCIPAL is not base64 JSON") from None
    if not isinstance(doc, dict):
        raise PrincipalError("X-MS-CLIENT-PRINCIPAL is not a JSON object")
    claims = doc.get("claims") or []
    if not isinstance(claims, list):
        raise PrincipalError("X-MS-CLIENT-PRINCIPAL 'claims' is not a list")
    role_types = set(ROLE_CLAIM_TYPES)
    if isinstance(doc.get("role_typ"), str):
        role_types.add(doc["role_typ"])
    values: dict[str, list[str]] = {}
    for claim in claims:
        if isinstance(claim, dict) and isinstance(claim.get("typ"), str):
            val = claim.get("val")
            if isinstance(val, str):
                values.setdefault(claim["typ"], []).append(val)
    roles = frozenset(v for typ in role_types for v in values.get(typ, []))
    name = (name_header or "").strip()
    if not name:
        name_types = [doc["name_typ"]] if isinstance(doc.get("name_typ"), str) else []
        for typ in (*name_types, *NAME_CLAIM_TYPES):
            if values.get(typ):
                name = values[typ][0].strip()
                if name:
                    break
    if not name:
        raise PrincipalError("the principal has no name")
    return Principal(name=name, roles=roles, auth_type=str(doc.get("auth_typ") or ""))


def _body_object(body: bytes, *, required: bool) -> dict[str, Any]:
    if not body or not body.strip():
        if required:
            raise InvalidRequestError("body_required", "a JSON object body is required")
        return {}
    doc = load_json(body, "request body")
    if not isinstance(doc, dict):
        raise InvalidRequestError("malformed_json", "request body is not a JSON object")
    return doc


def _no_extra(doc: Mapping[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(doc) - allowed)
    if extra:
        raise InvalidRequestError(
            "unknown_field", f"unknown field(s) {', '.join(extra)}; allowed: {sorted(allowed)}"
        )


@dataclass(frozen=True)
class DisallowCommand:
    device_id: str
    reason: str
    actor: str


@dataclass(frozen=True)
class AllowCommand:
    device_id: str
    actor: str
    csr_pem: str | None = None  # a CSR made on the device, brought by the operator


@dataclass(frozen=True)
class RenewCommand:
    device_id: str
    reason: Trigger
    actor: str


def check_reason(value: object) -> str:
    """A disallow reason: a string of 1-500 characters (surrounding blanks dropped)."""
    if not isinstance(value, str):
        raise InvalidRequestError("reason_required", "'reason' must be a string")
    reason = value.strip()
    if not reason:
        raise InvalidRequestError("reason_required", "'reason' must not be empty")
    if len(reason) > MAX_REASON_LENGTH:
        raise InvalidRequestError(
            "reason_too_long", f"'reason' has {len(reason)} characters; at most 500 are allowed"
        )
    return reason


def parse_disallow(device_id: str, body: bytes, actor: str) -> DisallowCommand:
    doc = _body_object(body, required=True)
    _no_extra(doc, {"reason"})
    if "reason" not in doc:
        raise InvalidRequestError("reason_required", "the body must carry 'reason'")
    return DisallowCommand(device_id=device_id, reason=check_reason(doc["reason"]), actor=actor)


def check_csr_text(value: object, max_bytes: int, what: str = "'csr'") -> str:
    """A CSR as the operator API accepts it: one PEM ``CERTIFICATE REQUEST`` block.

    ``value`` must be a string of at most ``max_bytes`` UTF-8 bytes (the issuing policy's
    ``CERTROLL_CSR_MAX_BYTES``) holding exactly one such block and nothing but blanks
    around it. Whether the request meets the issuing policy (key, subject, signature) is
    not decided here. Raises InvalidRequestError ``csr_invalid`` or ``csr_too_large``.
    """
    if not isinstance(value, str):
        raise InvalidRequestError(
            "csr_invalid", f"{what} must be a string holding a PEM certificate request"
        )
    size = len(value.encode("utf-8"))
    if size > max_bytes:
        raise InvalidRequestError(
            "csr_too_large", f"{what} has {size} bytes; at most {max_bytes} are allowed"
        )
    match = _PEM_CSR.fullmatch(value)
    if match is None:
        raise InvalidRequestError(
            "csr_invalid",
            f"{what} is not one PEM block '-----BEGIN CERTIFICATE REQUEST-----' ... "
            "'-----END CERTIFICATE REQUEST-----'",
        )
    try:
        der = base64.b64decode("".join(match.group(1).split()), validate=True)
    except (binascii.Error, ValueError):
        der = b""
    if not der:
        raise InvalidRequestError("csr_invalid", f"{what} does not hold base64 data")
    return value


def parse_allow(
    device_id: str, body: bytes, actor: str, *, csr_max_bytes: int = DEFAULT_CSR_MAX_BYTES
) -> AllowCommand:
    """An empty body, ``{}`` or ``{"csr": "<PEM CSR>"}`` (see :func:`check_csr_text`)."""
    doc = _body_object(body, required=False)
    _no_extra(doc, {"csr"})
    csr = check_csr_text(doc["csr"], csr_max_bytes) if "csr" in doc else None
    return AllowCommand(device_id=device_id, actor=actor, csr_pem=csr)


def parse_renew(device_id: str, body: bytes, actor: str) -> RenewCommand:
    doc = _body_object(body, required=False)
    _no_extra(doc, {"reason"})
    raw = doc.get("reason", Trigger.MANUAL.value)
    allowed = [r.value for r in RENEW_REASONS]
    if raw not in allowed:
        raise InvalidRequestError(
            "reason_invalid", f"'reason' must be one of {allowed}, not {raw!r}"
        )
    return RenewCommand(device_id=device_id, reason=Trigger(raw), actor=actor)

"""Parsing of what reaches the rotation service from outside into small command objects.

Pure functions: they take the JSON data a trigger already decoded and either return a
frozen dataclass or raise :class:`~shared.domain.errors.InvalidRequestError` with a code
and a message that says what is wrong. Nothing is changed anywhere when they raise.

- the reported ``x509`` twin section (docs/device-contract.md): certificate facts, the
  answer to a renewal request (``csr``) and the install result (``renewal``);
- the rotation work-queue message ``{"kind": "rotate", "deviceIds": [...], "reason",
  "enqueuedAt"}`` that the sweep sends and the queue worker processes.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.domain.errors import InvalidRequestError
from shared.domain.model import ReportedCertificate, Trigger

ROTATE_KIND = "rotate"
MAX_BATCH = 1000
MAX_CSR_BYTES = 65536

# matched with fullmatch: ``$`` would let a trailing newline through
_DEVICE_ID = re.compile(r"[A-Za-z0-9\-.%_*?!(),:=@$']{1,128}")
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
_SERIAL_HEX = re.compile(r"[0-9a-fA-F]{1,64}")
_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def check_device_id(value: object, what: str = "device id") -> str:
    if not isinstance(value, str) or not _DEVICE_ID.fullmatch(value):
        shown = value if isinstance(value, str) and len(value) <= 140 else type(value).__name__
        raise InvalidRequestError("device_id_invalid", f"{what} {shown!r} is not a device id")
    return value


def parse_time(value: object, what: str) -> datetime:
    """ISO 8601 (``Z`` or offset, up to 7 fractional digits) as aware UTC."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequestError("malformed_time", f"{what} is not a timestamp: {value!r}")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequestError(
            "malformed_time", f"{what} is not an ISO 8601 timestamp: {value!r}"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def format_time(moment: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ`` (the device contract's time format)."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: certroll speaks UTC only")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def csr_sha256(csr_pem: str) -> str:
    """The CSR key of a request: SHA-256 of the PEM text with line endings normalised."""
    normalised = "\n".join(line.strip() for line in csr_pem.strip().splitlines())
    return hashlib.sha256(normalised.encode("ascii", "replace")).hexdigest()


# --------------------------------------------------------------------------- reported x509


@dataclass(frozen=True)
class CsrAnswer:
    request_id: str
    pem: str
    sha256: str


@dataclass(frozen=True)
class RenewalResult:
    request_id: str
    status: str  # installed | failed
    error: str | None = None
    error_code: str | None = None


@dataclass(frozen=True)
class ReportedX509:
    certificate: ReportedCertificate | None
    csr: CsrAnswer | None
    renewal: RenewalResult | None


def _request_id(value: object, what: str) -> str:
    if not isinstance(value, str) or not _REQUEST_ID.fullmatch(value):
        raise InvalidRequestError("malformed_report", f"{what} {value!r} is not a request id")
    return value


def parse_reported_x509(device_id: str, section: Mapping[str, Any]) -> ReportedX509:
    """The reported ``x509`` section of ``device_id``'s twin.

    Any of the three parts may be absent (a coalesced or partial patch); a part that is
    present must be complete and well-formed. ``None`` values (JSON merge deletes) count
    as absent.
    """
    if not isinstance(section, Mapping):
        raise InvalidRequestError(
            "malformed_report", f"{device_id}: reported x509 is not an object"
        )
    certificate: ReportedCertificate | None = None
    if section.get("thumbprint") is not None:
        thumb = section.get("thumbprint")
        if not isinstance(thumb, str) or not _SHA256_HEX.fullmatch(thumb):
            raise InvalidRequestError(
                "malformed_report",
                f"{device_id}: x509.thumbprint {thumb!r} is not a SHA-256 hex thumbprint",
            )
        serial = section.get("serialNumber")
        if not isinstance(serial, str) or not _SERIAL_HEX.fullmatch(serial):
            raise InvalidRequestError(
                "malformed_report", f"{device_id}: x509.serialNumber {serial!r} is not hex"
            )
        not_before = parse_time(section.get("notBefore"), f"{device_id}: x509.notBefore")
        not_after = parse_time(section.get("notAfter"), f"{device_id}: x509.notAfter")
        if not_after <= not_before:
            raise InvalidRequestError(
                "malformed_report", f"{device_id}: x509.notAfter is not after notBefore"
            )
        certificate = ReportedCertificate(
            thumbprint_sha256=thumb.lower(),
            serial=format(int(serial, 16), "x"),
            not_before=not_before,
            not_after=not_after,
        )
    csr: CsrAnswer | None = None
    raw_csr = section.get("csr")
    if raw_csr is not None:
        if not isinstance(raw_csr, Mapping):
            raise InvalidRequestError("malformed_report", f"{device_id}: x509.csr is not an object")
        request_id = _request_id(raw_csr.get("requestId"), f"{device_id}: x509.csr.requestId")
        pem = raw_csr.get("pem")
        if not isinstance(pem, str) or "BEGIN CERTIFICATE REQUEST" not in pem:
            raise InvalidRequestError(
                "malformed_report", f"{device_id}: x509.csr.pem is not a PEM certificate request"
            )
        if len(pem) > MAX_CSR_BYTES:
            raise InvalidRequestError(
                "malformed_report", f"{device_id}: x509.csr.pem has {len(pem)} characters"
            )
        csr = CsrAnswer(request_id=request_id, pem=pem, sha256=csr_sha256(pem))
    renewal: RenewalResult | None = None
    raw_renewal = section.get("renewal")
    if raw_renewal is not None:
        if not isinstance(raw_renewal, Mapping):
            raise InvalidRequestError(
                "malformed_report", f"{device_id}: x509.renewal is not an object"
            )
        request_id = _request_id(
            raw_renewal.get("requestId"), f"{device_id}: x509.renewal.requestId"
        )
        status = raw_renewal.get("status")
        if status not in ("installed", "failed"):
            raise InvalidRequestError(
                "malformed_report",
                f"{device_id}: x509.renewal.status {status!r} is not installed or failed",
            )
        error = raw_renewal.get("error")
        code = raw_renewal.get("errorCode")
        renewal = RenewalResult(
            request_id=request_id,
            status=str(status),
            error=str(error)[:500] if error is not None else None,
            error_code=str(code)[:100] if code is not None else None,
        )
    return ReportedX509(certificate=certificate, csr=csr, renewal=renewal)


# --------------------------------------------------------------------------- work queue


@dataclass(frozen=True)
class RotateBatch:
    device_ids: tuple[str, ...]
    reason: Trigger
    enqueued_at: datetime | None


def rotate_message(device_ids: list[str], reason: Trigger, enqueued_at: datetime) -> dict[str, Any]:
    return {
        "kind": ROTATE_KIND,
        "deviceIds": list(device_ids),
        "reason": reason.value,
        "enqueuedAt": format_time(enqueued_at),
    }


def parse_rotate_message(message: object) -> RotateBatch:
    """A work-queue message; InvalidRequestError (code ``malformed_message``) otherwise."""
    if not isinstance(message, Mapping):
        raise InvalidRequestError(
            "malformed_message", f"queue message is not an object: {type(message).__name__}"
        )
    kind = message.get("kind")
    if kind != ROTATE_KIND:
        raise InvalidRequestError(
            "malformed_message", f"queue message kind {kind!r} is not {ROTATE_KIND!r}"
        )
    ids = message.get("deviceIds")
    if not isinstance(ids, list) or not ids:
        raise InvalidRequestError(
            "malformed_message", "queue message 'deviceIds' must be a non-empty list"
        )
    if len(ids) > MAX_BATCH:
        raise InvalidRequestError(
            "malformed_message", f"queue message has {len(ids)} device ids; at most {MAX_BATCH}"
        )
    checked: list[str] = []
    for index, value in enumerate(ids):
        try:
            checked.append(check_device_id(value, f"deviceIds[{index}]"))
        except InvalidRequestError as exc:
            raise InvalidRequestError("malformed_message", exc.message) from None
    raw_reason = message.get("reason", Trigger.EXPIRING.value)
    try:
        reason = Trigger(raw_reason)
    except ValueError:
        raise InvalidRequestError(
            "malformed_message",
            f"queue message reason {raw_reason!r} is not one of {[t.value for t in Trigger]}",
        ) from None
    enqueued_at = None
    if message.get("enqueuedAt") is not None:
        try:
            enqueued_at = parse_time(message["enqueuedAt"], "enqueuedAt")
        except InvalidRequestError as exc:
            raise InvalidRequestError("malformed_message", exc.message) from None
    return RotateBatch(
        device_ids=tuple(dict.fromkeys(checked)), reason=reason, enqueued_at=enqueued_at
    )

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


def parse_reported_x509(
    device_id: str, section: Mapping[str, Any], *, csr_max_bytes: int = MAX_CSR_BYTES
) -> ReportedX509:
    """The reported ``x509`` section of ``device_id``'s twin. A CSR larger than
    ``csr_max_bytes`` (the issuing policy's ``CERTROLL_CSR_MAX_BYTES``) is refused
    (``csr_too_large``).

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
        size = len(pem.encode("utf-8"))
        if size > min(csr_max_bytes, MAX_CSR_BYTES):
            # refused here, typed and permanent: it would never be issued, and a record
            # holding it could not even be written
            raise InvalidRequestError(
                "csr_too_large",
                f"{device_id}: x509.csr.pem has {size} bytes; "
                f"at most {min(csr_max_bytes, MAX_CSR_BYTES)} are accepted",
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
    campaign_id: str | None = None  # the campaign that enqueued the batch


def rotate_message(
    device_ids: list[str],
    reason: Trigger,
    enqueued_at: datetime,
    campaign_id: str | None = None,
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "kind": ROTATE_KIND,
        "deviceIds": list(device_ids),
        "reason": reason.value,
        "enqueuedAt": format_time(enqueued_at),
    }
    if campaign_id is not None:
        message["campaignId"] = campaign_id
    return message


CAMPAIGN_KIND = "campaign"
SWEEP_KIND = "sweep"
_CAMPAIGN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_CONTINUATION_CHARS = 16000


@dataclass(frozen=True)
class CampaignStep:
    """``{"kind": "campaign", "campaignId"}``: run the campaign on from its checkpoint."""

    campaign_id: str


@dataclass(frozen=True)
class SweepStep:
    """``{"kind": "sweep", "continuation", "startedAt"}``: the daily sweep goes on from
    the twin query's page ``continuation`` (it neared its time budget)."""

    continuation: str
    started_at: datetime | None = None
    page_size: int | None = None
    batch_size: int | None = None
    time_budget_s: float | None = None


def campaign_message(campaign_id: str) -> dict[str, Any]:
    return {"kind": CAMPAIGN_KIND, "campaignId": campaign_id}


def sweep_message(
    continuation: str,
    started_at: datetime,
    *,
    page_size: int | None = None,
    batch_size: int | None = None,
    time_budget_s: float | None = None,
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "kind": SWEEP_KIND,
        "continuation": continuation,
        "startedAt": format_time(started_at),
    }
    for key, value in (
        ("pageSize", page_size),
        ("batchSize", batch_size),
        ("timeBudgetSeconds", time_budget_s),
    ):
        if value is not None:
            message[key] = value
    return message


def _positive(message: Mapping[str, Any], key: str, top: float) -> Any:
    value = message.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= top:
        raise InvalidRequestError("malformed_message", f"sweep message {key!r} is out of range")
    return value


def _campaign_id(value: object) -> str:
    if not isinstance(value, str) or not _CAMPAIGN_ID.match(value):
        raise InvalidRequestError(
            "malformed_message", f"queue message campaignId {value!r} is not a campaign id"
        )
    return value


def parse_work_queue_message(message: object) -> RotateBatch | CampaignStep | SweepStep:
    """Any work-queue message: ``rotate``, ``campaign`` or ``sweep``;
    InvalidRequestError (code ``malformed_message``) otherwise."""
    if isinstance(message, Mapping):
        kind = message.get("kind")
        if kind == CAMPAIGN_KIND:
            return CampaignStep(_campaign_id(message.get("campaignId")))
        if kind == SWEEP_KIND:
            token = message.get("continuation")
            if not isinstance(token, str) or not token or len(token) > MAX_CONTINUATION_CHARS:
                raise InvalidRequestError(
                    "malformed_message", "sweep message 'continuation' must be a token"
                )
            started = None
            if message.get("startedAt") is not None:
                try:
                    started = parse_time(message["startedAt"], "startedAt")
                except InvalidRequestError as exc:
                    raise InvalidRequestError("malformed_message", exc.message) from None
            page = _positive(message, "pageSize", 1000)
            batch = _positive(message, "batchSize", MAX_BATCH)
            budget = _positive(message, "timeBudgetSeconds", 3600)
            return SweepStep(
                token,
                started,
                None if page is None else int(page),
                None if batch is None else int(batch),
                None if budget is None else float(budget),
            )
    return parse_rotate_message(message)


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
    campaign_id = message.get("campaignId")
    return RotateBatch(
        device_ids=tuple(dict.fromkeys(checked)),
        reason=reason,
        enqueued_at=enqueued_at,
        campaign_id=None if campaign_id is None else _campaign_id(campaign_id),
    )

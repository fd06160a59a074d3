"""HTTP API bodies: each operator request as a command from :mod:`shared.domain.commands`.

Only the shape of a body is checked here (and a CSR's PEM framing and size); whether a
CSR meets the issuing policy is the issuer's to decide.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from functions.parsing.common import load_json
from shared.domain.commands import Allow, Disallow, OperatorCsr, StartRenewal, Status
from shared.domain.errors import InvalidRequestError
from shared.domain.model import Trigger
from shared.settings import SETTING_DEFAULTS

MAX_REASON_LENGTH = 500
#: The default of ``CERTROLL_CSR_MAX_BYTES`` (the API passes the configured value).
DEFAULT_CSR_MAX_BYTES = int(SETTING_DEFAULTS["CERTROLL_CSR_MAX_BYTES"])
#: Reasons an operator may give for ``POST devices/{id}/renew``.
RENEW_REASONS = (Trigger.MANUAL, Trigger.COMPROMISE, Trigger.CA_ROLL, Trigger.EXPIRING)


def _body_object(body: bytes, *, required: bool) -> dict[str, Any]:
    if not body or not body.strip():
        if required:
            raise InvalidRequestError("body_required", "a JSON object body is required")
        return {}
    doc = load_json(body, "request body")
    if not isinstance(doc, dict):
        raise InvalidRequestError("malformed_json", "request body is not a JSON object")
    return doc


#: how many unknown field names an error message names, and how much of each
SHOWN_FIELDS = 3
SHOWN_FIELD_CHARS = 40


def _no_extra(doc: Mapping[str, Any], allowed: set[str]) -> None:
    """``unknown_field`` naming a few of the unknown names, each cut short: a client's
    field names are echoed (and audited) within a bound, however many or long they are."""
    extra = sorted(set(doc) - allowed)
    if extra:
        shown = [
            repr(name if len(name) <= SHOWN_FIELD_CHARS else name[:SHOWN_FIELD_CHARS] + "...")
            for name in extra[:SHOWN_FIELDS]
        ]
        more = f" and {len(extra) - SHOWN_FIELDS} more" if len(extra) > SHOWN_FIELDS else ""
        raise InvalidRequestError(
            "unknown_field",
            f"unknown field(s) {', '.join(shown)}{more}; allowed: {sorted(allowed)}",
        )


def check_reason(value: object) -> str:
    """A disallow reason: a string of 1-500 characters (surrounding blanks dropped)."""
    if not isinstance(value, str):
        raise InvalidRequestError("reason_required", "'reason' must be a string")
    reason = value.strip()
    try:
        reason.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate ("\ud800" is valid JSON): not storable
        raise InvalidRequestError("reason_invalid", "'reason' is not UTF-8 text") from None
    if not reason:
        raise InvalidRequestError("reason_required", "'reason' must not be empty")
    if len(reason) > MAX_REASON_LENGTH:
        raise InvalidRequestError(
            "reason_too_long", f"'reason' has {len(reason)} characters; at most 500 are allowed"
        )
    return reason


def parse_disallow(device_id: str, body: bytes, actor: str) -> Disallow:
    doc = _body_object(body, required=True)
    _no_extra(doc, {"reason"})
    if "reason" not in doc:
        raise InvalidRequestError("reason_required", "the body must carry 'reason'")
    return Disallow(device_id=device_id, reason=check_reason(doc["reason"]), actor=actor)


def parse_allow(
    device_id: str, body: bytes, actor: str, *, csr_max_bytes: int = DEFAULT_CSR_MAX_BYTES
) -> Allow:
    """An empty body, ``{}`` or ``{"csr": "<PEM CSR>"}`` (see :meth:`OperatorCsr.parse`)."""
    doc = _body_object(body, required=False)
    _no_extra(doc, {"csr"})
    csr = OperatorCsr.parse(doc["csr"], max_bytes=csr_max_bytes) if "csr" in doc else None
    return Allow(device_id=device_id, actor=actor, csr=csr)


def parse_renew(device_id: str, body: bytes, actor: str) -> StartRenewal:
    doc = _body_object(body, required=False)
    _no_extra(doc, {"reason"})
    raw = doc.get("reason", Trigger.MANUAL.value)
    allowed = [r.value for r in RENEW_REASONS]
    if raw not in allowed:
        raise InvalidRequestError(
            "reason_invalid", f"'reason' must be one of {allowed}, not {raw!r}"
        )
    return StartRenewal(device_id=device_id, reason=Trigger(raw), actor=actor)


def parse_status(device_id: str, body: bytes) -> Status:
    if body.strip():
        raise InvalidRequestError("unexpected_body", "GET takes no request body")
    return Status(device_id)

"""``POST /api/ca/roll/{step}`` bodies: the step's keyword options (shape only)."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from functions.parsing.api import _body_object, _no_extra
from shared.domain.ca_roll import RollStep, parse_mode, parse_step
from shared.domain.errors import InvalidRequestError

MAX_PEM_CHARS = 16_384
#: the fields each step accepts
STEP_FIELDS: dict[RollStep, set[str]] = {
    RollStep.PREPARE: {"mode", "subject"},
    RollStep.INSTALL: {"certificate", "days"},
    RollStep.VERIFY: set(),
    RollStep.TRUST: set(),
    RollStep.REISSUE: set(),
    RollStep.RETIRE: {"force", "rootCrl"},
}


def _text(doc: dict[str, Any], name: str) -> str | None:
    value = doc.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_PEM_CHARS:
        raise InvalidRequestError(f"{name}_invalid", f"'{name}' must be a non-empty string")
    return value


def parse_ca_roll(step_text: object, body: bytes) -> tuple[RollStep, dict[str, Any]]:
    """The step and its options; InvalidRequestError for anything malformed."""
    step = parse_step(step_text)
    doc = _body_object(body, required=False)
    _no_extra(doc, STEP_FIELDS[step])
    options: dict[str, Any] = {}
    if step is RollStep.PREPARE:
        options["mode"] = parse_mode(doc.get("mode", "normal"))
        options["subject"] = _text(doc, "subject")
    elif step is RollStep.INSTALL:
        pem = _text(doc, "certificate")
        if pem is not None and "-----BEGIN CERTIFICATE-----" not in pem:
            raise InvalidRequestError("certificate_invalid", "'certificate' is not a PEM")
        options["certificate_pem"] = pem
        days = doc.get("days", 1825)
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 7305:
            raise InvalidRequestError("days_invalid", "'days' must be an integer 1-7305")
        options["days"] = days
    elif step is RollStep.RETIRE:
        force = doc.get("force", False)
        if not isinstance(force, bool):
            raise InvalidRequestError("force_invalid", "'force' must be true or false")
        options["force"] = force
        crl = _text(doc, "rootCrl")
        if crl is not None:
            try:
                options["root_crl_der"] = base64.b64decode(crl, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise InvalidRequestError(
                    "rootCrl_invalid", "'rootCrl' must be the base64 of the DER CRL"
                ) from exc
        else:
            options["root_crl_der"] = None
    return step, options

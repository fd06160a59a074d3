"""``POST /api/ca/roll/{step}`` bodies: the step's keyword options (shape only); and the
``ca-roll`` work-queue message that carries a step to the queue worker."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
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


# --------------------------------------------------------------------------- work queue

CA_ROLL_KIND = "ca-roll"
MAX_ACTOR_CHARS = 256
#: Azure Queue storage: a message is at most 64 KiB (its base64 text included)
MAX_MESSAGE_BYTES = 48 * 1024


@dataclass(frozen=True)
class CaRollWork:
    """``{"kind": "ca-roll", "step", "actor", "body"}``: one CA-roll step the worker runs
    (the body is the step's API body, parsed again when the message is read)."""

    step: RollStep
    actor: str
    options: dict[str, Any]


def ca_roll_message(step: RollStep, actor: str, body: bytes) -> dict[str, Any]:
    """The queue message for ``step`` as ``actor`` asked for it with ``body``; the body is
    checked here first, so a malformed request is refused before it is queued."""
    parse_ca_roll(step.value, body)
    doc = _body_object(body, required=False)
    message = {"kind": CA_ROLL_KIND, "step": step.value, "actor": actor, "body": doc}
    if len(json.dumps(message).encode("utf-8")) > MAX_MESSAGE_BYTES:
        raise InvalidRequestError(
            "body_too_large", f"a queued step's body must be under {MAX_MESSAGE_BYTES} bytes"
        )
    return message


def parse_ca_roll_message(doc: dict[str, Any]) -> CaRollWork:
    """A ``ca-roll`` work message; InvalidRequestError (``malformed_message``) otherwise."""
    actor = doc.get("actor")
    body = doc.get("body", {})
    if set(doc) - {"kind", "step", "actor", "body"}:
        raise InvalidRequestError("malformed_message", "ca-roll message has unknown fields")
    if not isinstance(actor, str) or not actor.strip() or len(actor) > MAX_ACTOR_CHARS:
        raise InvalidRequestError("malformed_message", "ca-roll message 'actor' is missing")
    if not isinstance(body, dict):
        raise InvalidRequestError("malformed_message", "ca-roll message 'body' is not an object")
    try:
        step, options = parse_ca_roll(doc.get("step"), json.dumps(body).encode("utf-8"))
    except InvalidRequestError as exc:
        raise InvalidRequestError("malformed_message", f"ca-roll message: {exc.message}") from None
    return CaRollWork(step, actor, options)

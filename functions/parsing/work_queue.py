"""Storage queue payloads: the rotation work-queue message the sweep sends."""

from __future__ import annotations

from functions.parsing.common import load_json
from shared.domain.commands import RotateBatch, parse_rotate_message
from shared.domain.errors import InvalidRequestError


def parse_work_message(body: bytes | str) -> RotateBatch:
    """A rotation work-queue message (``{"kind": "rotate", "deviceIds": [...], ...}``);
    InvalidRequestError (``malformed_json`` / ``malformed_message``) otherwise."""
    doc = load_json(body, "work queue message")
    if not isinstance(doc, dict):
        raise InvalidRequestError(
            "malformed_message", f"work queue message is not a JSON object: {type(doc).__name__}"
        )
    return parse_rotate_message(doc)

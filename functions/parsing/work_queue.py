"""Storage queue payloads: the work-queue messages (a rotation batch the sweep or a
campaign sends, a campaign's next step, the sweep's continuation, a CA-roll step)."""

from __future__ import annotations

from functions.parsing.ca_roll import CA_ROLL_KIND, CaRollWork, parse_ca_roll_message
from functions.parsing.common import load_json
from shared.domain.commands import RotateBatch, parse_rotate_message
from shared.domain.errors import InvalidRequestError
from shared.domain.messages import CampaignStep, SweepStep, parse_work_queue_message


def parse_work_message(body: bytes | str) -> RotateBatch:
    """A rotation work-queue message (``{"kind": "rotate", "deviceIds": [...], ...}``);
    InvalidRequestError (``malformed_json`` / ``malformed_message``) otherwise."""
    doc = load_json(body, "work queue message")
    if not isinstance(doc, dict):
        raise InvalidRequestError(
            "malformed_message", f"work queue message is not a JSON object: {type(doc).__name__}"
        )
    return parse_rotate_message(doc)


def parse_any_work_message(
    body: bytes | str,
) -> RotateBatch | CampaignStep | SweepStep | CaRollWork:
    """Any work-queue message (``rotate``, ``campaign``, ``sweep``, ``ca-roll``)."""
    doc = load_json(body, "work queue message")
    if not isinstance(doc, dict):
        raise InvalidRequestError(
            "malformed_message", f"work queue message is not a JSON object: {type(doc).__name__}"
        )
    if doc.get("kind") == CA_ROLL_KIND:
        return parse_ca_roll_message(doc)
    return parse_work_queue_message(doc)

"""``/api/campaigns`` bodies and query strings: the shape of each request, as keyword
options for :class:`shared.domain.campaign_engine.CampaignService` (which checks the
query, reason and id itself)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from functions.parsing.api import _body_object, _no_extra
from shared.domain.campaign import MAX_REASON_CHARS, AbortCriteria, CampaignState
from shared.domain.errors import InvalidRequestError
from shared.domain.model import Trigger

#: the reasons a campaign may give its rotations (as ``certroll campaign start``)
START_REASONS = (Trigger.MANUAL, Trigger.COMPROMISE, Trigger.CA_ROLL)
#: the actions ``POST campaigns/{id}/{action}`` serves, with the body fields each takes
ACTION_FIELDS: dict[str, set[str]] = {"pause": {"note"}, "resume": set(), "abort": {"note"}}
START_FIELDS = {"query", "reason", "id", "devicesExpected", "abortCriteria"}
CRITERIA_FIELDS = {"minExecuted", "failurePercentage"}


@dataclass(frozen=True)
class StartCampaign:
    query: str
    reason: Trigger
    campaign_id: str | None
    devices_expected: int | None
    abort_criteria: AbortCriteria


@dataclass(frozen=True)
class CampaignAction:
    action: str
    note: str | None


def _utf8(value: str, name: str) -> str:
    """A text a store can write: no lone surrogate (valid JSON, not UTF-8)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequestError(f"{name}_invalid", f"'{name}' is not valid UTF-8") from None
    return value


def _int(value: object, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InvalidRequestError(f"{name}_invalid", f"'{name}' must be an integer >= {low}")
    return value


def _criteria(value: object) -> AbortCriteria:
    if value is None:
        return AbortCriteria()
    if not isinstance(value, dict):
        raise InvalidRequestError("abortCriteria_invalid", "'abortCriteria' must be an object")
    _no_extra(value, CRITERIA_FIELDS)
    default = AbortCriteria()
    executed = _int(value.get("minExecuted", default.min_executed), "minExecuted", 1)
    percentage = value.get("failurePercentage", default.failure_percentage)
    if (
        isinstance(percentage, bool)
        or not isinstance(percentage, int | float)
        or not math.isfinite(percentage)
        or not 0 < percentage <= 100
    ):
        raise InvalidRequestError(
            "failurePercentage_invalid", "'failurePercentage' must be a number in (0, 100]"
        )
    return AbortCriteria(executed, float(percentage))


def parse_start(body: bytes) -> StartCampaign:
    """``POST campaigns`` ``{"query", "reason"?, "id"?, "devicesExpected"?,
    "abortCriteria"?: {"minExecuted", "failurePercentage"}}``."""
    doc = _body_object(body, required=True)
    _no_extra(doc, START_FIELDS)
    query = doc.get("query")
    if not isinstance(query, str) or not query.strip():
        raise InvalidRequestError("campaign_query_invalid", "'query' must be a twin query")
    _utf8(query, "query")
    reason = doc.get("reason", Trigger.MANUAL.value)
    if reason not in [t.value for t in START_REASONS]:
        raise InvalidRequestError(
            "campaign_reason_invalid",
            f"'reason' must be one of {[t.value for t in START_REASONS]}",
        )
    cid = doc.get("id")
    if cid is not None and not isinstance(cid, str):
        raise InvalidRequestError("campaign_id_invalid", "'id' must be a string")
    if isinstance(cid, str):
        _utf8(cid, "campaign_id")
    expected = doc.get("devicesExpected")
    return StartCampaign(
        query=query,
        reason=Trigger(reason),
        campaign_id=cid,
        devices_expected=None if expected is None else _int(expected, "devicesExpected", 0),
        abort_criteria=_criteria(doc.get("abortCriteria")),
    )


def parse_action(action: str, body: bytes) -> CampaignAction:
    """``POST campaigns/{id}/pause|resume|abort``; an abort must say why (``note``)."""
    if action not in ACTION_FIELDS:
        raise InvalidRequestError("route_not_found", f"no campaign action {action!r}")
    doc = _body_object(body, required=action == "abort")
    _no_extra(doc, ACTION_FIELDS[action])
    note: Any = doc.get("note")
    if note is not None:
        if not isinstance(note, str) or len(note) > MAX_REASON_CHARS:
            raise InvalidRequestError(
                "note_invalid", f"'note' must be a string of at most {MAX_REASON_CHARS} characters"
            )
        note = _utf8(note, "note").strip() or None
    if action == "abort" and note is None:
        raise InvalidRequestError("note_required", "'note' must say why the campaign is aborted")
    return CampaignAction(action, note)


def parse_states(values: list[str]) -> set[CampaignState] | None:
    """``GET campaigns?state=running,paused``: the states asked for (None: all)."""
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    if not names:
        return None
    try:
        return {CampaignState(n) for n in names}
    except ValueError:
        raise InvalidRequestError(
            "state_invalid", f"'state' must be among {[s.value for s in CampaignState]}"
        ) from None

"""HTTP bodies of the campaigns API and queued CA-roll steps: any input -> a well-formed
request or InvalidRequestError with one of the documented codes; nothing else escapes."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from functions.parsing.ca_roll import (
    CA_ROLL_KIND,
    ca_roll_message,
    parse_ca_roll,
    parse_ca_roll_message,
)
from functions.parsing.campaigns import ACTION_FIELDS, START_REASONS, parse_action, parse_start
from shared.domain.ca_roll import RollStep
from shared.domain.campaign import AbortCriteria
from shared.domain.errors import InvalidRequestError
from tests.properties.strategies import dumps, json_values

START_CODES = {
    "body_required",
    "malformed_json",
    "unknown_field",
    "campaign_query_invalid",
    "query_invalid",
    "campaign_reason_invalid",
    "campaign_id_invalid",
    "devicesExpected_invalid",
    "abortCriteria_invalid",
    "minExecuted_invalid",
    "failurePercentage_invalid",
}
ACTION_CODES = {
    "body_required",
    "malformed_json",
    "unknown_field",
    "note_invalid",
    "note_required",
    "route_not_found",
}

numbers = st.one_of(
    st.integers(-5, 200), st.floats(allow_nan=True, allow_infinity=True), st.booleans()
)
criteria = st.one_of(
    st.fixed_dictionaries(
        {}, optional={"minExecuted": numbers, "failurePercentage": numbers, "x": json_values}
    ),
    json_values,
)
start_bodies = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "query": st.one_of(st.text(max_size=40), json_values),
            "reason": st.one_of(st.sampled_from(["manual", "ca-roll", "expiring"]), json_values),
            "id": st.one_of(st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,10}\Z"), json_values),
            "devicesExpected": numbers,
            "abortCriteria": criteria,
            "owner": json_values,
        },
    ).map(dumps),
    json_values.map(dumps),
    st.binary(max_size=60),
)


@given(start_bodies)
def test_a_start_body_is_a_request_or_a_typed_refusal(body: bytes) -> None:
    try:
        start = parse_start(body)
    except InvalidRequestError as exc:
        assert exc.code in START_CODES, exc.code
        return
    assert start.query.strip()
    start.query.encode("utf-8")
    assert start.reason in START_REASONS
    assert isinstance(start.abort_criteria, AbortCriteria)
    assert start.devices_expected is None or start.devices_expected >= 0


@given(
    st.sampled_from([*ACTION_FIELDS, "explode"]),
    st.one_of(
        st.fixed_dictionaries(
            {}, optional={"note": st.one_of(st.text(max_size=20), json_values), "x": json_values}
        ).map(dumps),
        st.binary(max_size=30),
        st.sampled_from([b"", b"{}", b"null"]),
    ),
)
def test_an_action_body_is_a_request_or_a_typed_refusal(action: str, body: bytes) -> None:
    try:
        parsed = parse_action(action, body)
    except InvalidRequestError as exc:
        assert exc.code in ACTION_CODES, exc.code
        return
    assert parsed.action in ACTION_FIELDS
    assert parsed.note is None or (parsed.note == parsed.note.strip() and parsed.note)
    if parsed.action == "abort":
        assert parsed.note


@given(
    st.sampled_from(list(RollStep)),
    st.fixed_dictionaries(
        {},
        optional={
            "force": st.one_of(st.booleans(), json_values),
            "mode": st.one_of(st.sampled_from(["normal", "compromise"]), json_values),
            "days": numbers,
        },
    ),
)
def test_a_queued_step_reads_back_as_the_api_would_have_run_it(
    step: RollStep, body: dict[str, Any]
) -> None:
    raw = json.dumps(body).encode()
    try:
        message = ca_roll_message(step, "alice", raw)
    except InvalidRequestError:
        return  # refused before anything is queued
    assert message["kind"] == CA_ROLL_KIND
    work = parse_ca_roll_message(json.loads(json.dumps(message)))
    assert (work.step, work.actor) == (step, "alice")
    assert work.options == parse_ca_roll(step.value, raw)[1]

"""Connections resource logs: any envelope -> a batch or InvalidRequestError; one bad
record never aborts the others; an accepted failure is a well-formed ConnectionFailure."""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from functions.parsing.hub_events import (
    FAILURE_CODES,
    parse_connection_log,
    parse_connection_record,
)
from shared.domain.errors import InvalidRequestError
from tests.properties.strategies import (
    any_device_id_value,
    dumps,
    hex64,
    json_values,
    near_hex64,
    timestamps,
    valid_device_ids,
)

FALLBACK = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DEVICE_ID = re.compile(r"[A-Za-z0-9\-.%_*?!(),:=@$']{1,128}")


@st.composite
def records(draw: st.DrawFn) -> Any:
    props: Any = {
        "deviceId": draw(st.one_of(valid_device_ids, any_device_id_value)),
    }
    if draw(st.booleans()):
        props[draw(st.sampled_from(["thumbprint", "presentedThumbprint", "x509Thumbprint"]))] = (
            draw(near_hex64)
        )
    if draw(st.booleans()):
        props["message"] = draw(
            st.one_of(hex64.map(lambda h: f"presented {h}"), st.text(max_size=40))
        )
    if draw(st.integers(0, 4)) == 0:
        props = draw(json_values)
    record: dict[str, Any] = {
        "category": draw(st.sampled_from(["Connections", "connections", "Routes"]) | json_values),
        "operationName": draw(st.sampled_from(["deviceConnect", "deviceDisconnect"]) | json_values),
        "resultType": draw(
            st.sampled_from(["401003", "403012", 401003, " 403012 ", "0", "x"]) | json_values
        ),
        "properties": draw(st.one_of(st.just(props), st.just(props).map(json.dumps), json_values)),
    }
    if draw(st.booleans()):
        record["time"] = draw(timestamps)
    if draw(st.booleans()):
        record["resultDescription"] = draw(json_values)
    return record if draw(st.integers(0, 9)) else draw(json_values)


@given(records())
def test_one_record_is_a_failure_none_or_a_typed_error(record: Any) -> None:
    before = copy.deepcopy(record)
    try:
        failure = parse_connection_record(record, FALLBACK)
    except InvalidRequestError:
        pass
    else:
        if failure is not None:
            assert DEVICE_ID.fullmatch(failure.device_id)
            assert failure.code in FAILURE_CODES
            assert failure.at.tzinfo is not None
            # undocumented thumbprint fields in a record are never read (docs/api.md)
            assert not hasattr(failure, "thumbprint")
            assert isinstance(failure.message, str)
    assert record == before


@given(st.lists(records(), max_size=6))
def test_every_record_of_an_envelope_is_counted_exactly_once(batch: list[Any]) -> None:
    result = parse_connection_log(dumps({"records": batch}), FALLBACK)
    one_by_one = []
    for record in batch:
        try:
            one = parse_connection_record(record, FALLBACK)
        except InvalidRequestError:
            continue
        if one is not None:
            one_by_one.append(one)
    # every record is a failure, a problem or ignored, once
    assert len(one_by_one) + len(result.problems) + result.ignored == len(batch)
    # a bad record costs only itself; a device's failures with one code count once, the
    # latest kept (parse_connection_log's docstring)
    latest: dict[tuple[str, int], Any] = {}
    for one in one_by_one:
        key = (one.device_id, one.code)
        if key not in latest or one.at >= latest[key].at:
            latest[key] = one
    assert result.failures == list(latest.values())


@given(json_values | st.binary(max_size=60))
def test_an_envelope_of_any_shape_is_a_batch_or_malformed(doc: Any) -> None:
    body = doc if isinstance(doc, bytes) else dumps(doc)
    try:
        parse_connection_log(body, FALLBACK)
    except InvalidRequestError as exc:
        assert exc.code in ("malformed_json", "malformed_event")


@pytest.mark.parametrize("props", ["[1]", "1", '"x"', "null", "{", "true"])
def test_a_record_whose_properties_are_not_an_object_costs_only_itself(props: str) -> None:
    good = {
        "category": "Connections",
        "operationName": "deviceConnect",
        "resultType": "401003",
        "properties": json.dumps({"deviceId": "dev-good"}),
    }
    bad = dict(good, properties=props)
    result = parse_connection_log(dumps({"records": [bad, good]}), FALLBACK)
    assert [f.device_id for f in result.failures] == ["dev-good"]
    assert len(result.problems) == 1

"""Event Hubs payloads and work-queue messages: every rejection by code and message, and
the fields each parser reads, one example per rule (the properties next door generate
the shapes; these pin the words and the choices)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from functions.parsing.common import load_json, parse_time
from functions.parsing.hub_events import (
    parse_connection_log,
    parse_connection_record,
    parse_twin_change,
)
from functions.parsing.work_queue import parse_any_work_message, parse_work_message
from shared.domain.errors import InvalidRequestError

AT = "2026-03-01T12:00:00+00:00"
X509 = {"renewal": {"requestId": "r1", "status": "installed"}}


def _rejects(call: Any) -> tuple[str, str]:
    with pytest.raises(InvalidRequestError) as caught:
        call()
    return caught.value.code, caught.value.message


def _twin(doc: Any, **app: Any) -> Any:
    return lambda: parse_twin_change(json.dumps(doc).encode(), None, app or {"deviceId": "d"})


def _record(**fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "category": "Connections",
        "operationName": "deviceConnect",
        "resultType": "401003",
        "time": AT,
        "properties": json.dumps({"deviceId": "d"}),
    }
    record.update(fields)
    return record


@pytest.mark.parametrize(
    ("call", "code", "message"),
    [
        (
            lambda: load_json(b"\xff", "the thing"),
            "malformed_json",
            "the thing is not UTF-8 JSON: 'utf-8' codec can't decode byte 0xff in position 0: "
            "invalid start byte",
        ),
        (
            lambda: load_json("{}".encode("utf-16"), "the thing"),
            "malformed_json",
            "the thing is not UTF-8 JSON: 'utf-8' codec can't decode byte 0xff in position 0: "
            "invalid start byte",
        ),
        (
            lambda: load_json(b'"\xed\xa0\x80"', "the thing"),
            "malformed_json",
            "the thing is not UTF-8 JSON: 'utf-8' codec can't decode byte 0xed in position 1: "
            "invalid continuation byte",
        ),
        (
            lambda: load_json("[" * 100_000, "the thing"),
            "malformed_json",
            "the thing is nested too deeply",
        ),
        (
            lambda: parse_twin_change(b"{"),
            "malformed_json",
            "twin change message is not UTF-8 JSON: Expecting property name enclosed in double "
            "quotes: line 1 column 2 (char 1)",
        ),
        (
            lambda: parse_connection_log(b"{"),
            "malformed_json",
            "resource log event is not UTF-8 JSON: Expecting property name enclosed in double "
            "quotes: line 1 column 2 (char 1)",
        ),
        (
            lambda: parse_connection_record(_record(time=None), "soon"),  # type: ignore[arg-type]
            "malformed_time",
            "enqueued time is not an ISO 8601 timestamp: 'soon'",
        ),
        (
            lambda: parse_twin_change(b"[1]"),
            "malformed_event",
            "twin change message is not a JSON object",
        ),
        (
            lambda: parse_twin_change(b"{}"),
            "malformed_event",
            "twin change message names no device (iothub-connection-device-id or deviceId)",
        ),
        (_twin({"properties": 1}), "malformed_event", "d: 'properties' is not an object"),
        (
            _twin({"properties": {"reported": []}}),
            "malformed_event",
            "d: 'properties.reported' is not an object",
        ),
        (
            _twin({"properties": {"reported": {"x509": "x"}}}),
            "malformed_event",
            "d: reported 'x509' is not an object",
        ),
        (
            _twin({"version": True, "properties": {"reported": {"x509": X509}}}),
            "malformed_event",
            "d: twin 'version' is not an integer: True",
        ),
        (
            _twin({"version": "3", "properties": {"reported": {"x509": X509}}}),
            "malformed_event",
            "d: twin 'version' is not an integer: '3'",
        ),
        (
            lambda: parse_connection_record([]),
            "malformed_event",
            "log record is not a JSON object",
        ),
        (
            lambda: parse_connection_record(_record(properties="[1]")),
            "malformed_event",
            "log record 'properties' is not an object",
        ),
        (
            lambda: parse_connection_record(_record(properties=[1])),
            "malformed_event",
            "log record 'properties' is not an object",
        ),
        (
            lambda: parse_connection_record(_record(properties="{")),
            "malformed_json",
            "log record 'properties' is not UTF-8 JSON: Expecting property name enclosed in "
            "double quotes: line 1 column 2 (char 1)",
        ),
        (
            lambda: parse_connection_record(_record(properties=None)),
            "malformed_event",
            "401003 record names no deviceId",
        ),
        (
            lambda: parse_connection_log(b'{"records": {}}'),
            "malformed_event",
            "resource log event is not an object with a 'records' list",
        ),
        (
            lambda: parse_connection_log(b"[]"),
            "malformed_event",
            "resource log event is not an object with a 'records' list",
        ),
        (
            lambda: parse_work_message(b"[1]"),
            "malformed_message",
            "work queue message is not a JSON object: list",
        ),
        (
            lambda: parse_any_work_message(b'"rotate"'),
            "malformed_message",
            "work queue message is not a JSON object: str",
        ),
        (
            lambda: parse_work_message(b"{"),
            "malformed_json",
            "work queue message is not UTF-8 JSON: Expecting property name enclosed in double "
            "quotes: line 1 column 2 (char 1)",
        ),
        (
            lambda: parse_any_work_message(b"{"),
            "malformed_json",
            "work queue message is not UTF-8 JSON: Expecting property name enclosed in double "
            "quotes: line 1 column 2 (char 1)",
        ),
    ],
)
def test_each_rejection_has_its_code_and_message(call: Any, code: str, message: str) -> None:
    assert _rejects(call) == (code, message)


def test_a_naive_datetime_is_utc_whatever_the_hosts_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert parse_time(datetime(2026, 1, 1, 12, 0), "t") == datetime(2026, 1, 1, 12, tzinfo=UTC)
    finally:
        monkeypatch.undo()
        time.tzset()


def test_the_problems_of_a_batch_name_each_bad_record_by_index() -> None:
    body = {
        "records": [
            _record(),
            _record(properties="[1]"),
            _record(resultType=None, properties=None),
            {"category": "Connections", "operationName": "deviceConnect", "resultType": "1"},
            [],
        ]
    }
    batch = parse_connection_log(json.dumps(body))
    assert batch.problems == [
        "record 1: malformed_event: log record 'properties' is not an object",
        "record 4: malformed_event: log record is not a JSON object",
    ]
    assert (len(batch.failures), batch.ignored) == (1, 2)


def test_a_record_that_raises_a_type_error_is_named_as_unreadable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(record: object, fallback_time: object = None) -> None:
        raise TypeError("boom")

    monkeypatch.setattr("functions.parsing.hub_events.parse_connection_record", broken)
    batch = parse_connection_log(json.dumps({"records": [{}, {}]}))
    assert batch.problems == [
        "record 0: unreadable (TypeError)",
        "record 1: unreadable (TypeError)",
    ]


@pytest.mark.parametrize(
    ("category", "operation", "result"),
    [
        ("CONNECTIONS", "DeviceConnect", " 401003 "),
        ("connections", "deviceconnect", 403012),
    ],
)
def test_category_operation_and_result_are_read_loosely(
    category: str, operation: str, result: object
) -> None:
    failure = parse_connection_record(
        _record(category=category, operationName=operation, resultType=result)
    )
    assert failure is not None
    assert failure.code == int(str(result).strip())


@pytest.mark.parametrize(
    "fields",
    [
        {"category": "Routes"},
        {"category": None},
        {"operationName": "deviceDisconnect"},
        {"operationName": None},
        {"resultType": "500001"},
        {"resultType": "x"},
        {"resultType": None},
    ],
)
def test_records_certroll_does_not_act_on_are_ignored(fields: dict[str, Any]) -> None:
    assert parse_connection_record(_record(**fields)) is None


def test_a_record_names_its_device_in_properties_or_at_its_top_level() -> None:
    top = parse_connection_record(_record(properties=None, deviceId="top"))
    inner = parse_connection_record(_record(properties={"deviceId": "in"}, deviceId="top"))
    assert (top and top.device_id, inner and inner.device_id) == ("top", "in")


def test_a_record_is_dated_by_its_time_else_the_enqueued_time_else_now() -> None:
    enqueued = datetime(2026, 3, 2, tzinfo=UTC)
    own = parse_connection_record(_record(), enqueued)
    assert own is not None
    assert own.at == datetime(2026, 3, 1, 12, tzinfo=UTC)
    fallback = parse_connection_record(_record(time=None), enqueued)
    assert fallback is not None
    assert fallback.at == enqueued
    before = datetime.now(UTC)
    now = parse_connection_record(_record(time=None))
    assert now is not None
    assert before <= now.at <= datetime.now(UTC)
    with pytest.raises(InvalidRequestError) as caught:
        parse_connection_record(_record(time="soon"))
    assert (caught.value.code, caught.value.message) == (
        "malformed_time",
        "d: record 'time' is not an ISO 8601 timestamp: 'soon'",
    )


def test_the_result_description_is_kept_up_to_200_characters() -> None:
    long = parse_connection_record(_record(resultDescription="x" * 250))
    none = parse_connection_record(_record(resultDescription=5))
    assert long is not None
    assert none is not None
    assert (long.message, none.message) == ("x" * 200, "")


def test_a_batch_keeps_one_failure_per_device_and_code_the_latest() -> None:
    records = [
        _record(time="2026-03-01T12:00:00Z", resultDescription="first"),
        _record(time="2026-03-01T12:05:00Z", resultDescription="latest"),
        _record(time="2026-03-01T12:01:00Z", resultDescription="between"),
        _record(time="2026-03-01T12:05:00Z", resultDescription="same time, later"),
        _record(time="2026-03-01T12:00:00Z", resultType="403012", resultDescription="other"),
        _record(properties={"deviceId": "e"}, resultDescription="other device"),
    ]
    batch = parse_connection_log(json.dumps({"records": records}))
    assert [(f.device_id, f.code, f.message) for f in batch.failures] == [
        ("d", 401003, "same time, later"),
        ("d", 403012, "other"),
        ("e", 401003, "other device"),
    ]


def test_a_routed_envelope_is_unwrapped_from_its_body() -> None:
    routed = {"body": {"records": [_record()]}, "properties": {}}
    batch = parse_connection_log(json.dumps(routed).encode())
    assert [f.device_id for f in batch.failures] == ["d"]


def _reported(**app: Any) -> Any:
    body = {"version": 2, "properties": {"reported": {"x509": X509}}}
    return parse_twin_change(json.dumps(body), None, app)


def test_a_module_twin_or_another_operation_is_not_for_certroll() -> None:
    assert _reported(deviceId="d", moduleId="m") is None
    assert (
        parse_twin_change(
            json.dumps({"properties": {"reported": {"x509": X509}}}),
            {"connection-device-id": "d", "connection-module-id": "m"},
        )
        is None
    )
    assert _reported(deviceId="d", opType="deleteTwin") is None
    for op in ("updateTwin", "replaceTwin"):
        parsed = _reported(deviceId="d", opType=op)
        assert parsed is not None
        assert (parsed.device_id, parsed.twin_version) == ("d", 2)


@pytest.mark.parametrize(
    "doc",
    [
        {"version": 1},
        {"properties": {}},
        {"properties": {"desired": {}}},
        {"properties": {"reported": {"other": 1}}},
    ],
)
def test_a_change_without_a_reported_x509_section_is_not_for_certroll(doc: Any) -> None:
    assert parse_twin_change(json.dumps(doc), None, {"deviceId": "d"}) is None


def test_the_runtime_properties_win_over_what_a_routed_body_says_of_itself() -> None:
    routed = {
        "body": {"version": 4, "properties": {"reported": {"x509": X509}}},
        "properties": {"deviceId": "inner", "opType": "updateTwin"},
        "systemProperties": {"iothub-connection-device-id": "inner-system"},
    }
    text = json.dumps(routed)
    from_app = parse_twin_change(text, None, {"deviceId": "runtime"})
    assert from_app is not None
    assert from_app.device_id == "inner-system"  # a system property beats any app property
    from_system = parse_twin_change(text, {"iothub-connection-device-id": "runtime"}, None)
    assert from_system is not None
    assert from_system.device_id == "runtime"
    routed["systemProperties"] = "not an object"
    from_inner_app = parse_twin_change(json.dumps(routed), None, None)
    assert from_inner_app is not None
    assert from_inner_app.device_id == "inner"
    routed["properties"] = {"deviceId": "inner", "opType": "deleteTwin"}
    assert parse_twin_change(json.dumps(routed), None, {"opType": "updateTwin"}) is not None

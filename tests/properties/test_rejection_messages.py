"""Each inbound rejection, pinned by code and by the message a person reads, and the edges
of what is accepted (sizes, indexes, time zones)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from functions.parsing.api import parse_allow, parse_disallow, parse_renew, parse_status
from functions.parsing.common import parse_time
from functions.parsing.hub_events import (
    app_properties_for,
    parse_twin_change,
)
from functions.parsing.lifecycle import DEVICE_CONNECTED, DEVICE_CREATED, parse_lifecycle
from shared.domain.commands import Allow, DeviceConnected, Disallow, OperatorCsr, Sweep
from shared.domain.errors import InvalidRequestError
from tests.properties.strategies import PEM

H = "ab" * 32


def _rejects(call: Any) -> tuple[str, str]:
    with pytest.raises(InvalidRequestError) as caught:
        call()
    return caught.value.code, caught.value.message


@pytest.mark.parametrize(
    ("call", "code", "message"),
    [
        (
            lambda: parse_disallow("d", b'{"reason": 1}', "o"),
            "reason_required",
            "'reason' must be a string",
        ),
        (
            lambda: parse_disallow("d", b'{"reason": " "}', "o"),
            "reason_required",
            "'reason' must not be empty",
        ),
        (
            lambda: parse_disallow("d", b'{"reason": "\\ud800"}', "o"),
            "reason_invalid",
            "'reason' is not UTF-8 text",
        ),
        (lambda: parse_disallow("d", b"", "o"), "body_required", "a JSON object body is required"),
        (lambda: parse_status("d", b"{}"), "unexpected_body", "GET takes no request body"),
        (
            lambda: parse_disallow("d", b"[1]", "o"),
            "malformed_json",
            "request body is not a JSON object",
        ),
        (
            lambda: parse_disallow("d", b"{}", "o"),
            "reason_required",
            "the body must carry 'reason'",
        ),
        (
            lambda: parse_disallow("d", b'{"reason": "r", "b": 1, "a": 2}', "o"),
            "unknown_field",
            "unknown field(s) 'a', 'b'; allowed: ['reason']",
        ),
        (
            lambda: parse_allow("d", b'{"c": 1, "b": 2, "a": 3}', "o"),
            "unknown_field",
            "unknown field(s) 'a', 'b', 'c'; allowed: ['csr']",
        ),
        (
            lambda: parse_renew("d", b'{"d": 1, "c": 2, "b": 3, "a": 4}', "o"),
            "unknown_field",
            "unknown field(s) 'a', 'b', 'c' and 1 more; allowed: ['reason']",
        ),
        (lambda: Disallow("d", " ", "o"), "reason_required", "a disallow needs a reason"),
        (lambda: Disallow("d", "r", " "), "actor_required", "a disallow needs an actor"),
        (lambda: Allow("d", ""), "actor_required", "an allow needs an actor"),
        (lambda: Sweep(batch_size=0), "batch_size_invalid", "batch_size must be at least 1"),
        (
            lambda: OperatorCsr.parse(1),
            "csr_invalid",
            "'csr' must be a string holding a PEM certificate request",
        ),
        (lambda: OperatorCsr.parse("\ud800"), "csr_invalid", "'csr' is not UTF-8 text"),
        (
            lambda: OperatorCsr.parse("xx", max_bytes=1),
            "csr_too_large",
            "'csr' has 2 bytes; at most 1 are allowed",
        ),
        (
            lambda: OperatorCsr.parse("x"),
            "csr_invalid",
            "'csr' is not one PEM block '-----BEGIN CERTIFICATE REQUEST-----' ... "
            "'-----END CERTIFICATE REQUEST-----'",
        ),
        (
            lambda: OperatorCsr.parse(PEM.replace("MIIB", "M=IB")),
            "csr_invalid",
            "'csr' does not hold base64 data",
        ),
        (
            lambda: OperatorCsr.parse(PEM.replace("MIIB", "MII")),
            "csr_invalid",
            "'csr' does not hold base64 data",
        ),
        (
            lambda: OperatorCsr.parse(PEM.replace("MIIB", "QQ==\nQQ==")),  # data after padding
            "csr_invalid",
            "'csr' does not hold base64 data",
        ),
        (
            lambda: parse_lifecycle(DEVICE_CONNECTED, None, {}, None),
            "malformed_event",
            f"{DEVICE_CONNECTED} event names no device (data.deviceId or subject)",
        ),
        (
            lambda: parse_lifecycle(DEVICE_CONNECTED, None, {"deviceId": "d"}, "x"),  # type: ignore[arg-type]
            "malformed_time",
            "eventTime is not an ISO 8601 timestamp: 'x'",
        ),
    ],
)
def test_each_rejection_has_its_code_and_message(call: Any, code: str, message: str) -> None:
    assert _rejects(call) == (code, message)


def test_the_smallest_batch_and_an_exactly_full_csr_are_accepted() -> None:
    assert Sweep(batch_size=1).batch_size == 1
    size = len(PEM.encode())
    assert OperatorCsr.parse(PEM, max_bytes=size).pem == PEM


def test_a_body_that_is_not_json_is_named_the_request_body() -> None:
    code, message = _rejects(lambda: parse_disallow("d", b"{", "o"))
    assert code == "malformed_json"
    assert message.startswith("request body is not UTF-8 JSON: ")


def test_an_unknown_field_name_is_shown_up_to_40_characters() -> None:
    forty, longer = "f" * 40, "g" * 41
    body = json.dumps({forty: 1, longer: 2, "reason": "r"}).encode()
    assert _rejects(lambda: parse_disallow("d", body, "o")) == (
        "unknown_field",
        f"unknown field(s) '{forty}', '{longer[:40]}...'; allowed: ['reason']",
    )


def test_line_breaks_anywhere_in_the_base64_are_blanks() -> None:
    split_padding = PEM.replace("MIIB", "QQ=\n=")  # "QQ==" (one byte) broken in its padding
    assert OperatorCsr.parse(split_padding).pem == split_padding


def test_an_empty_or_blank_body_is_no_fields_for_allow_and_renew() -> None:
    assert parse_allow("d", b" ", "o").csr is None
    assert parse_renew("d", b"", "o").reason.value == "manual"


def test_parse_time_of_a_datetime_is_utc_whatever_its_zone() -> None:
    naive = datetime(2026, 1, 1, 12, 0)
    east = datetime(2026, 1, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    assert parse_time(naive, "t") == datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert parse_time(east, "t").tzinfo is UTC
    assert parse_time(east, "t") == datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert _rejects(lambda: parse_time("x", "when")) == (
        "malformed_time",
        "when is not an ISO 8601 timestamp: 'x'",
    )


def test_a_lifecycle_event_without_a_time_is_dated_now() -> None:
    before = datetime.now(UTC)
    event = parse_lifecycle(DEVICE_CONNECTED, "devices/d-1/x/y", None, None)
    assert isinstance(event, DeviceConnected)
    assert event.device_id == "d-1"
    assert before <= event.at <= datetime.now(UTC)
    assert event.at.tzinfo is UTC
    created = parse_lifecycle(DEVICE_CREATED, "devices/d-2", {"deviceId": None}, None)
    assert created is not None
    assert created.device_id == "d-2"


def test_app_properties_from_a_json_string_and_the_index_bounds() -> None:
    many = {"PropertiesArray": json.dumps([{"deviceId": "a"}, {"deviceId": "b"}])}
    assert app_properties_for(many, 1) == {"deviceId": "b"}
    assert app_properties_for(many, 2) == {}
    one = {"Properties": json.dumps({"deviceId": "c"})}
    assert app_properties_for(one, 0) == {"deviceId": "c"}
    assert app_properties_for({"PropertiesArray": "[", "Properties": "{"}, 0) == {}


def _record(**props: Any) -> dict[str, Any]:
    return {
        "category": "Connections",
        "operationName": "deviceConnect",
        "resultType": "401003",
        "time": "2026-03-01T12:00:00Z",
        "properties": json.dumps({"deviceId": "d", **props}),
    }


@pytest.mark.parametrize("key", ["iothub-connection-device-id", "connection-device-id"])
def test_the_device_id_of_a_routed_message_comes_from_its_system_properties(key: str) -> None:
    x509 = {"renewal": {"requestId": "r1", "status": "installed"}}
    routed = {
        "body": {"version": 3, "properties": {"reported": {"x509": x509}}},
        "systemProperties": {key: "dev-7"},
    }
    parsed = parse_twin_change(json.dumps(routed).encode())
    assert parsed is not None
    assert (parsed.device_id, parsed.twin_version) == ("dev-7", 3)
    meta = parse_twin_change(json.dumps(routed["body"]).encode(), {key: "dev-8"})
    assert meta is not None
    assert meta.device_id == "dev-8"

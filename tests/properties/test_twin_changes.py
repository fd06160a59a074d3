"""Routed TwinChangeEvents: any body, any metadata -> a TwinReported, None, or
InvalidRequestError; an accepted report is well-formed; a rejected one reaches no service."""

from __future__ import annotations

import copy
import re
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from functions.hub_events import handle_twin_changes
from functions.parsing.hub_events import app_properties_for, parse_twin_change
from shared.domain.commands import TwinReported
from shared.domain.errors import InvalidRequestError
from tests.functions.fakes import FakeRotation
from tests.properties.strategies import (
    any_device_id_value,
    dumps,
    json_values,
    valid_device_ids,
    x509_sections,
)

DEVICE_ID = re.compile(r"[A-Za-z0-9\-.%_*?!(),:=@$']{1,128}")
HEX64 = re.compile(r"[0-9a-f]{64}")
REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


@st.composite
def twin_messages(draw: st.DrawFn) -> tuple[Any, Any, Any]:
    """(body document, iothub metadata, application properties)."""
    doc: Any = {
        "version": draw(st.one_of(st.integers(0, 2**40), json_values)),
        "properties": draw(
            st.one_of(
                st.fixed_dictionaries(
                    {"reported": st.fixed_dictionaries({"x509": x509_sections()})}
                ),
                st.fixed_dictionaries({"reported": json_values}),
                json_values,
            )
        ),
    }
    if draw(st.integers(0, 3)) == 0:
        doc = {
            "body": doc,
            "systemProperties": draw(
                st.one_of(
                    st.fixed_dictionaries({"iothub-connection-device-id": any_device_id_value}),
                    json_values,
                )
            ),
            "properties": draw(json_values),
        }
    if draw(st.integers(0, 9)) == 0:
        doc = draw(json_values)
    metadata = draw(
        st.one_of(
            st.fixed_dictionaries({"iothub-connection-device-id": any_device_id_value}),
            st.fixed_dictionaries({"connection-device-id": valid_device_ids}),
            st.none(),
            st.dictionaries(st.text(max_size=8), json_values, max_size=3),
        )
    )
    app = draw(
        st.one_of(
            st.none(),
            st.fixed_dictionaries({"deviceId": any_device_id_value}),
            st.dictionaries(st.text(max_size=8), json_values, max_size=2),
        )
    )
    return doc, metadata, app


def _check_accepted(result: TwinReported) -> None:
    assert DEVICE_ID.fullmatch(result.device_id)
    cert = result.report.certificate
    if cert is not None:
        assert HEX64.fullmatch(cert.thumbprint_sha256)
        assert re.fullmatch(r"[0-9a-f]+", cert.serial)
        assert cert.not_after > cert.not_before
        assert cert.not_before.tzinfo is not None
    if result.report.csr is not None:
        assert REQUEST_ID.fullmatch(result.report.csr.request_id)
        assert "BEGIN CERTIFICATE REQUEST" in result.report.csr.pem
    if result.report.renewal is not None:
        assert REQUEST_ID.fullmatch(result.report.renewal.request_id)
        assert result.report.renewal.status in ("installed", "failed")
    assert result.twin_version is None or type(result.twin_version) is int


@given(twin_messages())
@example(({"version": 0, "properties": {"reported": None}}, {}, {"opType": []}))
def test_twin_change_is_parsed_or_rejected_with_a_typed_error(
    message: tuple[Any, Any, Any],
) -> None:
    doc, metadata, app = message
    before = copy.deepcopy((doc, metadata, app))
    try:
        result = parse_twin_change(dumps(doc), metadata, app)
    except InvalidRequestError as exc:
        assert exc.code in (
            "malformed_json",
            "malformed_event",
            "malformed_report",
            "malformed_time",
            "device_id_invalid",
        )
    else:
        if result is not None:
            _check_accepted(result)
    assert (doc, metadata, app) == before  # the parser never changes what it was given


@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_twin_change_bytes_of_any_kind(body: bytes) -> None:
    try:
        parse_twin_change(body, {"connection-device-id": "dev-1"})
    except InvalidRequestError:
        pass


@given(
    st.one_of(
        st.none(),
        json_values,
        st.dictionaries(
            st.sampled_from(["PropertiesArray", "Properties"]),
            st.one_of(json_values, json_values.map(lambda v: __import__("json").dumps(v))),
        ),
    ),
    st.integers(-2, 5),
)
def test_app_properties_for_any_metadata_is_a_dict(metadata: Any, index: int) -> None:
    if metadata is not None and not isinstance(metadata, dict):
        metadata = {"Properties": metadata}
    assert isinstance(app_properties_for(metadata, index), dict)


class _Event:
    """The part of ``func.EventHubEvent`` the handler reads."""

    def __init__(self, body: bytes, iothub_metadata: Any, app: Any) -> None:
        self._body = body
        self.iothub_metadata = iothub_metadata
        self.metadata = {"Properties": app} if app is not None else {}
        self.sequence_number = 1

    def get_body(self) -> bytes:
        return self._body


@given(twin_messages())
@example(
    (
        {"version": 0, "properties": {"reported": None}},
        {"iothub-connection-device-id": ""},
        {"opType": []},  # unhashable: once a TypeError instead of a typed rejection
    )
)
def test_a_rejected_twin_change_reaches_no_service(message: tuple[Any, Any, Any]) -> None:
    doc, metadata, app = message
    body = dumps(doc)
    try:
        parsed = parse_twin_change(body, metadata, app if isinstance(app, dict) else None)
    except InvalidRequestError:
        parsed = None
    fake = FakeRotation()
    event: Any = _Event(body, metadata, app if isinstance(app, dict) else None)
    handled = handle_twin_changes([event], fake)  # type: ignore[arg-type]
    assert handled == (0 if parsed is None else 1)
    assert fake.names() == ([] if parsed is None else ["on_twin_reported"])

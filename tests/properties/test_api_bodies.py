"""HTTP bodies of the devices API: any bytes -> a command or InvalidRequestError."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from functions.parsing.api import (
    MAX_REASON_LENGTH,
    parse_allow,
    parse_disallow,
    parse_renew,
    parse_status,
)
from shared.domain.commands import OperatorCsr
from shared.domain.errors import InvalidRequestError
from tests.properties.strategies import PEM, dumps, json_values

CODES = {
    "body_required",
    "malformed_json",
    "unknown_field",
    "reason_required",
    "reason_too_long",
    "reason_invalid",
    "unexpected_body",
    "csr_invalid",
    "csr_too_large",
}

reasons = st.one_of(
    st.text(max_size=30),
    st.text(min_size=495, max_size=510),
    st.sampled_from(["manual", "compromise", "ca-roll", "expiring", "bulk-reprovision", " manual"]),
    json_values,
)
csrs = st.one_of(
    st.just(PEM),
    st.just(PEM.replace("MIIB", "MI!B")),
    st.just(PEM.replace("MIIB", "")),
    st.just(PEM.replace("\n", "\r\n")),
    st.just(PEM + PEM),
    st.text(max_size=60),
    st.text(max_size=8).map(lambda t: PEM.replace("MIIB", "MIIB" + t)),
    json_values,
)
bodies = st.one_of(
    st.fixed_dictionaries({}, optional={"reason": reasons, "csr": csrs, "x": json_values}).map(
        dumps
    ),
    json_values.map(dumps),
    st.binary(max_size=80),
    st.sampled_from([b"", b"  ", b"\n", b"{}", b"null"]),
)


def _typed(call: Any) -> Any:
    try:
        return call()
    except InvalidRequestError as exc:
        assert exc.code in CODES, exc.code
        return None


@given(bodies)
def test_disallow_body(body: bytes) -> None:
    command = _typed(lambda: parse_disallow("dev-1", body, "ops"))
    if command is not None:
        assert 1 <= len(command.reason) <= MAX_REASON_LENGTH
        assert command.reason == command.reason.strip()
        command.reason.encode("utf-8")  # storable as it is


@given(bodies, st.integers(min_value=1, max_value=200))
def test_allow_body(body: bytes, max_bytes: int) -> None:
    command = _typed(lambda: parse_allow("dev-1", body, "ops", csr_max_bytes=max_bytes))
    if command is not None and command.csr is not None:
        assert len(command.csr.pem.encode("utf-8")) <= max_bytes
        assert "-----BEGIN CERTIFICATE REQUEST-----" in command.csr.pem


@given(bodies)
def test_renew_body(body: bytes) -> None:
    command = _typed(lambda: parse_renew("dev-1", body, "ops"))
    if command is not None:
        assert command.reason.value in ("manual", "compromise", "ca-roll", "expiring")


@given(bodies)
def test_status_body(body: bytes) -> None:
    command = _typed(lambda: parse_status("dev-1", body))
    if command is not None:
        assert not body.strip()


@given(st.text(max_size=30) | st.sampled_from(["\ud800", "a\udfff"]))
def test_operator_csr_of_any_text(value: str) -> None:
    _typed(lambda: OperatorCsr.parse(value))
    _typed(lambda: OperatorCsr.parse(PEM.replace("MIIB", "MIIB" + value)))


@pytest.mark.parametrize("field", ["csr", "reason"])
def test_a_lone_surrogate_is_a_typed_rejection(field: str) -> None:
    """Regression: ``{"csr": "\\ud800"}`` is valid JSON whose string cannot be encoded as
    UTF-8; it raised UnicodeEncodeError (a 500) instead of a 400."""
    body = json.dumps({field: "\ud800" + PEM}).encode()
    parse = parse_allow if field == "csr" else parse_disallow
    with pytest.raises(InvalidRequestError):
        parse("dev-1", body, "ops")

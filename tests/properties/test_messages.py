"""The shared field checks every parser uses: device ids, timestamps, reported x509."""

from __future__ import annotations

import re
from datetime import UTC
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.domain.errors import InvalidRequestError
from shared.domain.messages import check_device_id, parse_reported_x509, parse_time
from tests.properties.strategies import (
    any_device_id_value,
    moments,
    near_device_ids,
    timestamps,
    x509_sections,
)

DEVICE_ID = re.compile(r"[A-Za-z0-9\-.%_*?!(),:=@$']{1,128}")


@given(any_device_id_value)
def test_check_device_id_accepts_exactly_the_hub_grammar(value: Any) -> None:
    ok = isinstance(value, str) and DEVICE_ID.fullmatch(value) is not None
    if ok:
        assert check_device_id(value) == value
    else:
        with pytest.raises(InvalidRequestError) as caught:
            check_device_id(value)
        assert caught.value.code == "device_id_invalid"


@pytest.mark.parametrize("value", ["dev-1\n", "\ndev-1", "dev 1", "", "d" * 129])
def test_a_device_id_with_a_trailing_newline_is_rejected(value: str) -> None:
    """Regression: ``^...$`` with ``match`` let ``"dev-1\\n"`` through as a device id."""
    with pytest.raises(InvalidRequestError):
        check_device_id(value)


@given(timestamps)
def test_parse_time_is_aware_utc_or_malformed_time(value: Any) -> None:
    try:
        parsed = parse_time(value, "t")
    except InvalidRequestError as exc:
        assert exc.code == "malformed_time"
    else:
        assert parsed.tzinfo is not None
        assert parsed.utcoffset().total_seconds() == 0  # type: ignore[union-attr]


@given(moments)
def test_parse_time_round_trips_the_contract_format(moment: Any) -> None:
    text = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert parse_time(text, "t") == moment.replace(microsecond=0).astimezone(UTC)


@given(near_device_ids, x509_sections())
def test_reported_x509_is_parsed_or_malformed_report(device_id: str, section: Any) -> None:
    try:
        report = parse_reported_x509(device_id, section)
    except InvalidRequestError as exc:
        assert exc.code in ("malformed_report", "malformed_time")
        return
    if report.certificate is not None:
        assert re.fullmatch(r"[0-9a-f]{64}", report.certificate.thumbprint_sha256)
        assert re.fullmatch(r"[0-9a-f]{1,64}", report.certificate.serial)
        assert report.certificate.not_after > report.certificate.not_before


@given(st.sampled_from(["thumbprint", "serialNumber"]))
def test_a_thumbprint_or_serial_with_a_trailing_newline_is_rejected(field: str) -> None:
    """Regression: ``$`` accepted a trailing newline, which then reached the ledger."""
    section = {
        "thumbprint": "a" * 64,
        "serialNumber": "1f",
        "notBefore": "2026-01-01T00:00:00Z",
        "notAfter": "2027-01-01T00:00:00Z",
    }
    section[field] += "\n"
    with pytest.raises(InvalidRequestError):
        parse_reported_x509("dev-1", section)

"""One Retry-After parser for every Azure adapter: delta-seconds or HTTP-date (RFC 9110
section 10.2.3), and Azure's millisecond headers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest

from shared.adapters._azure_rest import DEFAULT_RETRY_AFTER_SECONDS, raise_status_error, retry_after
from shared.adapters.retry_after import retry_after_seconds
from shared.domain.errors import ThrottledError

NOW = datetime(2026, 12, 6, 7, 0, 0, tzinfo=UTC)


def http_date(when: datetime) -> str:
    return format_datetime(when, usegmt=True)  # "Sun, 06 Dec 2026 07:00:30 GMT"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after": "0"}, 0.0),
        ({"Retry-After": "-3"}, 0.0),
        ({"Retry-After": http_date(NOW + timedelta(seconds=30))}, 30.0),
        ({"Retry-After": http_date(NOW - timedelta(days=1))}, 0.0),
        ({"Retry-After": "Sun, 06 Dec 2026 07:01:00 -0000"}, 60.0),
        ({"x-ms-retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "250", "Retry-After": "9"}, 0.25),
        ({"X-Ms-Retry-After-Ms": "bad", "Retry-After": "9"}, 9.0),
        ({"Retry-After": "soon"}, 5.0),
        ({"Retry-After": ""}, 5.0),
        ({}, 5.0),
        (None, 5.0),
    ],
)
def test_delta_seconds_http_date_and_milliseconds(
    headers: dict[str, str] | None, expected: float
) -> None:
    assert retry_after_seconds(headers, 5.0, now=NOW) == pytest.approx(expected)


def test_an_http_date_counts_from_the_real_clock_by_default() -> None:
    later = datetime.now(UTC) + timedelta(seconds=120)
    assert 100.0 < retry_after_seconds({"Retry-After": http_date(later)}, 5.0) <= 120.0


class FakeResponse:
    def __init__(self, status: int, headers: dict[str, Any]) -> None:
        self.status_code = status
        self.headers = headers


def test_the_rest_adapters_honour_an_http_date() -> None:
    later = datetime.now(UTC) + timedelta(seconds=60)
    response: Any = FakeResponse(429, {"Retry-After": http_date(later)})
    assert 40.0 < retry_after(response) <= 60.0
    with pytest.raises(ThrottledError) as info:
        raise_status_error(response, "throttled")
    assert info.value.retry_after is not None
    assert 40.0 < info.value.retry_after <= 60.0


def test_the_rest_adapters_default_when_no_header() -> None:
    response: Any = FakeResponse(503, {})
    assert retry_after(response) == DEFAULT_RETRY_AFTER_SECONDS

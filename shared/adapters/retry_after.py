"""The one ``Retry-After`` parser of the Azure adapters (storage, DPS, IoT Hub, Event Grid).

RFC 9110 section 10.2.3: ``Retry-After`` is either delta-seconds or an HTTP-date. Azure
services also send milliseconds in ``retry-after-ms`` / ``x-ms-retry-after-ms``, which are
more precise and win when present. A date in the past, or a negative number, means "now"
(0 seconds); a value that is neither form is ignored and ``default`` applies.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

_MILLISECOND_HEADERS = ("retry-after-ms", "x-ms-retry-after-ms")


def retry_after_seconds(
    headers: Mapping[str, str] | None,
    default: float,
    *,
    now: datetime | None = None,
) -> float:
    """Seconds to wait before retrying, from the response ``headers`` (any case), else
    ``default``; ``now`` (timezone-aware) is the reference for an HTTP-date."""
    if not headers:
        return default
    lowered = {name.lower(): value for name, value in headers.items()}
    for name in _MILLISECOND_HEADERS:
        value = lowered.get(name, "").strip()
        if value:
            try:
                return max(0.0, float(value) / 1000.0)
            except ValueError:
                pass
    value = lowered.get("retry-after", "").strip()
    if not value:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default
    if when.tzinfo is None:  # RFC 9110 dates are GMT; "-0000" parses naive
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())

"""What every trigger's parser shares: JSON decoding and timestamps."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from shared.domain.errors import InvalidRequestError
from shared.domain.messages import parse_time as parse_iso_time


def load_json(data: bytes | str, what: str) -> Any:
    """Decode UTF-8 JSON, or InvalidRequestError(``malformed_json``) naming ``what``.

    JSON nested deeper than the parser's recursion allows is malformed too: it never
    escapes as ``RecursionError`` (an API 500, a failed Event Hub batch).
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return json.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequestError("malformed_json", f"{what} is not UTF-8 JSON: {exc}") from None
    except RecursionError:
        raise InvalidRequestError("malformed_json", f"{what} is nested too deeply") from None


def parse_time(value: object, what: str) -> datetime:
    """An ISO 8601 timestamp (or a datetime) as an aware UTC datetime."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return parse_iso_time(value, what)

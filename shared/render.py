"""Service results as JSON data: the one renderer of the HTTP API, the triggers' logs and
the ``certroll`` command line."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

#: Fields of a rotation record that are internal bookkeeping, not output.
HIDDEN_FIELDS = frozenset({"etag", "csr_pem"})


def to_jsonable(value: Any) -> Any:
    """Render a service result (``to_dict()``, dataclass, enum, datetime ...) as JSON data.

    Datetimes become UTC ISO 8601 strings ending in ``Z``; sets become sorted lists;
    anything else unknown becomes its ``str``.
    """
    if value is None or isinstance(value, bool | int | float | str):
        return value
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return to_jsonable(to_dict())
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value)
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return aware.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: to_jsonable(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.name not in HIDDEN_FIELDS
        }
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [to_jsonable(v) for v in value]
        return sorted(items, key=str) if isinstance(value, set | frozenset) else items
    return str(value)

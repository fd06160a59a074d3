"""The audit log on Azure Table storage: append-only, newest first per partition."""

from __future__ import annotations

import heapq
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from azure.core.exceptions import AzureError
from azure.data.tables import TableEntity, TableServiceClient

from shared.adapters.storage_clients import raise_storage_error
from shared.adapters.tables._common import (
    _NO_ECHO,
    MAX_STRING_CHARS,
    _key,
    _plain,
    _TableBase,
    _utc,
)
from shared.domain.model import AuditEvent
from shared.ports import AuditLog

__all__ = ["MAX_DETAIL_PARTS", "TableAuditLog"]

logger = logging.getLogger(__name__)

#: Detail JSON is spread over at most this many string properties (< 1 MiB entity limit).
MAX_DETAIL_PARTS = 12
_GLOBAL_PK = "~global"
_INVERT_BASE = 10**20 - 1


class _AppendClock:
    """Strictly increasing nanosecond stamps within the process (insertion order)."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            self._last = max(time.time_ns(), self._last + 1)
            return self._last


_APPEND_CLOCK = _AppendClock()


def _detail_properties(detail: Mapping[str, Any]) -> dict[str, Any]:
    text = json.dumps(detail, default=str, sort_keys=True)
    parts = [text[i : i + MAX_STRING_CHARS] for i in range(0, len(text), MAX_STRING_CHARS)]
    if len(parts) > MAX_DETAIL_PARTS:
        logger.warning("audit detail of %d characters truncated to a summary", len(text))
        summary = {"truncated": True, "chars": len(text), "keys": sorted(map(str, detail))[:100]}
        parts = [json.dumps(summary)[:MAX_STRING_CHARS]]
    props: dict[str, Any] = {"detail_parts": len(parts) or 1}
    for i, part in enumerate(parts or ["{}"]):
        props["detail" if i == 0 else f"detail_{i}"] = part
    return props


def _detail_from(e: Mapping[str, Any]) -> dict[str, Any]:
    count = int(e.get("detail_parts") or 1)
    text = (e.get("detail") or "{}") + "".join(e.get(f"detail_{i}") or "" for i in range(1, count))
    value = json.loads(text)
    return value if isinstance(value, dict) else {"value": value}


class TableAuditLog(_TableBase, AuditLog):
    """Append-only audit entries, newest first per partition.

    Each entry is one entity: in its device's partition, or in ``~global`` when it has
    no device. ``list(device_id)`` is a single-partition read that stops after ``limit``
    rows; ``list(None)`` (every entry, an operator's view) reads the whole table and
    keeps the newest ``limit``. Order is append order within a process (an inverted
    nanosecond stamp as RowKey prefix), which is also the in-memory fake's order.
    """

    def __init__(self, service: TableServiceClient, table_name: str) -> None:
        super().__init__(service, table_name)

    @staticmethod
    def _entity(event: AuditEvent) -> dict[str, Any]:
        at = _utc(event.at, "at") or datetime.now(UTC)
        rk = f"{_INVERT_BASE - _APPEND_CLOCK.next():020d}-{uuid.uuid4().hex}"
        return {
            "PartitionKey": _key(event.device_id) if event.device_id else _GLOBAL_PK,
            "RowKey": rk,
            "action": event.action,
            "outcome": event.outcome,
            "actor": event.actor,
            "device_id": event.device_id,
            "request_id": event.request_id,
            "at": at,
            **_detail_properties(event.detail),
        }

    def append(self, event: AuditEvent) -> None:
        entity = self._entity(event)
        try:
            self._table.create_entity(entity, **_NO_ECHO)
        except AzureError as exc:
            raise_storage_error(exc, f"audit entry {event.action} for {event.device_id}")

    def list(self, device_id: str | None = None, limit: int = 100) -> list[AuditEvent]:
        if limit <= 0:
            return []
        rows: Iterator[TableEntity]
        if device_id:
            rows = self._query(
                "PartitionKey eq @pk",
                {"pk": _key(device_id)},
                "audit entries",
                page=min(limit, 1000),
            )
        else:  # every partition: the newest ``limit`` rows of the whole table
            everything = self._query("RowKey ne @none", {"none": ""}, "audit entries")
            rows = iter(heapq.nsmallest(limit, everything, key=lambda e: str(e["RowKey"])))
        events: list[AuditEvent] = []
        for e in rows:
            events.append(
                AuditEvent(
                    action=e["action"],
                    outcome=e["outcome"],
                    actor=e["actor"],
                    device_id=e.get("device_id"),
                    request_id=e.get("request_id"),
                    detail=_detail_from(e),
                    at=_plain(e.get("at")),
                )
            )
            if len(events) >= limit:
                break
        return events

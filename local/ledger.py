"""The certificates of a run's ledger, read back from Table storage, and the
before/after snapshot the HTML expiry report is drawn from."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.domain.errors import InvalidRequestError, NotFoundError
from shared.settings import Settings


@dataclass(frozen=True)
class LedgerSnapshot:
    before: list[datetime]
    before_at: datetime
    after: list[datetime]
    after_at: datetime
    devices: int
    certificates: int
    renewed: int
    revoked: int


def ledger_snapshot(rows: list[dict[str, Any]], now: datetime) -> LedgerSnapshot:
    """Per device, the newest certificate in use (after) and the one it replaced (before),
    from ledger certificate rows (``device_id``, ``not_after``, ``issued_at``, ``status``)."""
    by_device: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_device[row["device_id"]].append(row)
    before: list[datetime] = []
    after: list[datetime] = []
    renewal_times: list[datetime] = []
    revoked = 0
    for records in by_device.values():
        records.sort(key=lambda r: r["issued_at"])
        usable = [r for r in records if r["status"] != "revoked"]
        revoked += len(records) - len(usable)
        if not usable:
            continue
        after.append(usable[-1]["not_after"])
        if len(usable) > 1:
            before.append(usable[-2]["not_after"])
            renewal_times.append(usable[-1]["issued_at"])
        else:
            before.append(usable[-1]["not_after"])
    return LedgerSnapshot(
        before=before,
        before_at=min(renewal_times, default=now),
        after=after,
        after_at=now,
        devices=len(by_device),
        certificates=len(rows),
        renewed=len(renewal_times),
        revoked=revoked,
    )


def read_ledger_rows(settings: Settings) -> list[dict[str, Any]]:
    """Every certificate row of the ledger table (``RK=cert-<csr sha256>`` rows)."""
    from azure.core.exceptions import ResourceNotFoundError

    from shared.adapters.storage_clients import table_names, table_service

    ledger_name = table_names(settings)[0]
    client = table_service(settings).get_table_client(ledger_name)
    fields = ["device_id", "not_after", "issued_at", "status"]
    try:
        entities = list(
            client.query_entities("RowKey ge 'cert-' and RowKey lt 'cert.'", select=fields)
        )
    except ResourceNotFoundError:
        raise NotFoundError(f"no ledger table {ledger_name}") from None
    rows = []
    for e in entities:
        rows.append(
            {
                "device_id": str(e["device_id"]),
                "not_after": _aware(e["not_after"]),
                "issued_at": _aware(e["issued_at"]),
                "status": str(e["status"]),
            }
        )
    return rows


def _aware(value: Any) -> datetime:
    if not isinstance(value, datetime):
        raise InvalidRequestError("ledger_row_invalid", f"expected a datetime, got {value!r}")
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)

"""The rotation state on Azure Table storage: one row per device, ETag-checked writes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from azure.data.tables import TableEntity, TableServiceClient

from shared.adapters.tables._common import (
    MAX_STRING_CHARS,
    _key,
    _plain,
    _TableBase,
    _utc,
)
from shared.domain.model import RotationRecord, RotationState
from shared.ports import RotationStateStore

__all__ = ["TableRotationStore"]

_STATE_DATETIMES = ("current_not_after", "deadline", "updated_at")


def _state_to_entity(rec: RotationRecord) -> dict[str, Any]:
    if not rec.device_id:
        raise ValueError("a rotation record needs a device_id")
    return {
        "PartitionKey": _key(rec.device_id),
        "RowKey": _key(rec.device_id),
        "device_id": rec.device_id,
        "state": RotationState(rec.state).value,
        "request_id": rec.request_id,
        "reason": rec.reason,
        "csr_sha256": rec.csr_sha256,
        "csr_pem": rec.csr_pem,
        "new_serial": rec.new_serial,
        "new_thumbprint": rec.new_thumbprint,
        "current_serial": rec.current_serial,
        "current_thumbprint": rec.current_thumbprint,
        "current_not_after": _utc(rec.current_not_after, "current_not_after"),
        "slot": rec.slot,
        "hub_cleanup": bool(rec.hub_cleanup),
        "attempts": int(rec.attempts),
        "deadline": _utc(rec.deadline, "deadline"),
        "updated_at": _utc(rec.updated_at, "updated_at"),
        "last_error": (rec.last_error or "")[:MAX_STRING_CHARS] or None,
        "disallowed_by": rec.disallowed_by,
        "disallowed_reason": rec.disallowed_reason,
    }


def _entity_to_state(e: TableEntity) -> RotationRecord:
    return RotationRecord(
        device_id=e["device_id"],
        state=RotationState(e["state"]),
        request_id=e.get("request_id"),
        reason=e.get("reason"),
        csr_sha256=e.get("csr_sha256"),
        csr_pem=e.get("csr_pem"),
        new_serial=e.get("new_serial"),
        new_thumbprint=e.get("new_thumbprint"),
        current_serial=e.get("current_serial"),
        current_thumbprint=e.get("current_thumbprint"),
        current_not_after=_plain(e.get("current_not_after")),
        slot=e.get("slot"),
        hub_cleanup=bool(e.get("hub_cleanup")),
        attempts=int(e.get("attempts") or 0),
        deadline=_plain(e.get("deadline")),
        updated_at=_plain(e.get("updated_at")),
        last_error=e.get("last_error"),
        disallowed_by=e.get("disallowed_by"),
        disallowed_reason=e.get("disallowed_reason"),
        etag=e.metadata["etag"],
    )


class TableRotationStore(_TableBase, RotationStateStore):
    """One row per device (``PK=RK=<device>``) with ETag-checked writes.

    The RowKey repeats the device rather than naming the row kind: Azure Table storage
    finds a row by both keys either way, but Azurite looks a point read up by RowKey
    first, so a RowKey every row shares made each read scan them all (``make bench``,
    section ``storage_calls``).

    ``list`` is a server-side filtered scan of the table (the state and ``updated_at``
    conditions), read page by page; it serves the daily sweep, which has to look at
    every device anyway.
    """

    def __init__(self, service: TableServiceClient, table_name: str) -> None:
        super().__init__(service, table_name)

    def get(self, device_id: str) -> RotationRecord | None:
        if not device_id:
            return None
        key = _key(device_id)
        entity = self._point_read(key, key, f"rotation of {device_id}")
        return None if entity is None else _entity_to_state(entity)

    def put(self, record: RotationRecord) -> RotationRecord:
        entity = _state_to_entity(record)
        meta = self._create_or_replace(
            entity, record.etag, f"rotation record of {record.device_id}"
        )
        stored = _entity_to_state(TableEntity(entity))
        stored.etag = str(meta["etag"])
        return stored

    def list(
        self,
        states: set[RotationState] | None = None,
        updated_before: datetime | None = None,
    ) -> Iterator[RotationRecord]:
        clauses: list[str] = []
        params: dict[str, Any] = {}
        if states is not None:
            if not states:
                return
            ors = []
            for i, state in enumerate(sorted(RotationState(s).value for s in states)):
                params[f"s{i}"] = state
                ors.append(f"state eq @s{i}")
            clauses.append("( " + " or ".join(ors) + " )")
        if updated_before is not None:
            params["before"] = _utc(updated_before, "updated_before")
            clauses.append("updated_at lt @before")
        if not clauses:
            clauses.append("PartitionKey ne ''")  # every row: the table holds only these
        for entity in self._query(" and ".join(clauses), params, "rotation records"):
            yield _entity_to_state(entity)

"""The CA-roll record's stores: Azure Table storage, and in memory (tests, memory storage).

Table ``<prefix>CaRoll``: one row ``PK=RK=ca-roll`` holding the record as JSON (the
certificates of every CA certroll has used, a few KB each) in property ``doc``. Writes
are ETag-checked: a create fails when the row exists, a replace when someone else wrote
first, so two runs of a step cannot both advance the roll.
"""

from __future__ import annotations

import copy
import threading
import uuid

from azure.data.tables import TableServiceClient

from shared.adapters.tables._common import MAX_STRING_CHARS, _TableBase
from shared.domain.ca_roll import CaRollRecord
from shared.domain.errors import ConcurrencyError, ConflictError
from shared.settings import Settings

ROW_KEY = "ca-roll"


def ca_roll_table_name(settings: Settings) -> str:
    return f"{settings.get('CERTROLL_TABLE_PREFIX')}CaRoll"


class TableCaRollStore(_TableBase):
    """One row with the record as JSON, ETag-checked."""

    def __init__(self, service: TableServiceClient, table_name: str) -> None:
        super().__init__(service, table_name)

    def get(self) -> CaRollRecord | None:
        entity = self._point_read(ROW_KEY, ROW_KEY, "the CA-roll record")
        if entity is None:
            return None
        etag = entity.metadata.get("etag")
        return CaRollRecord.from_json(str(entity["doc"]), str(etag) if etag else None)

    def put(self, record: CaRollRecord) -> CaRollRecord:
        doc = record.to_json()
        if len(doc) > MAX_STRING_CHARS:
            raise ValueError(f"the CA-roll record ({len(doc)} characters) is too large")
        entity = {"PartitionKey": ROW_KEY, "RowKey": ROW_KEY, "doc": doc}
        meta = self._create_or_replace(
            entity,
            record.etag,
            "the CA-roll record",
            exists="the CA-roll record exists; read it first",
            changed="the CA-roll record changed since it was read",
        )
        saved = CaRollRecord.from_json(doc, str(meta.get("etag")) if meta else None)
        return saved


class MemoryCaRollStore:
    """The record in memory, with the table's ETag semantics."""

    def __init__(self) -> None:
        self.record: CaRollRecord | None = None
        self._lock = threading.Lock()

    def get(self) -> CaRollRecord | None:
        with self._lock:
            return copy.deepcopy(self.record)

    def put(self, record: CaRollRecord) -> CaRollRecord:
        with self._lock:
            if record.etag is None:
                if self.record is not None:
                    raise ConflictError("the CA-roll record exists; read it first")
            elif self.record is None or self.record.etag != record.etag:
                raise ConcurrencyError("the CA-roll record changed since it was read")
            saved = copy.deepcopy(record)
            saved.etag = uuid.uuid4().hex
            self.record = saved
            return copy.deepcopy(saved)

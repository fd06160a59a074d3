"""Azure Table storage adapters: the issuance ledger, the rotation state and the audit log.

Key design (see docs/storage.md for the reasoning):

Ledger table (``<prefix>Ledger``): certificate rows only
    ``PK=<device>, RK=cert-<csr sha256>``   the certificate record (authoritative copy);
                                            one certificate per device and CSR

Ledger index table (``<prefix>LedgerIndex``): look-ups, never scanned per rotation
    ``PK=~serial-<last 2 hex>, RK=<serial>`` serial -> device + CSR (``get``, ``set_status``)
    ``PK=~thumb-<first 2 hex>, RK=<tp>``     thumbprint -> device + serial + CSR
    ``PK=~revoked, RK=<serial>``            full copy of every revoked record (the CRL list)

State table (``<prefix>State``): ``PK=RK=<device>``, ETag-checked writes.

Audit table (``<prefix>Audit``): one entity per entry, ``PK=<device>`` (``PK=~global``
for entries without a device); ``RK=<inverted append time>-<uuid>`` so a partition reads
newest first.

Partition and row keys are the identifier percent-encoded (so ``?``, ``/``, ``#``, ``%``
and ``~`` never reach a key raw); ``~`` starts every index partition and can therefore
never be a device's partition.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import (
    TableClient,
    TableEntity,
    TableServiceClient,
    UpdateMode,
)

from shared.adapters.storage_clients import raise_storage_error
from shared.domain.errors import ConcurrencyError, ConflictError, NotFoundError
from shared.domain.model import (
    AuditEvent,
    CertificateRecord,
    CertificateStatus,
    RevocationReason,
    RotationRecord,
    RotationState,
    status_change_allowed,
)
from shared.ports import AuditLog, CertificateLedger, RotationStateStore

__all__ = ["TableAuditLog", "TableLedger", "TableRotationStore"]

logger = logging.getLogger(__name__)

#: creates ask the service not to echo the entity back (``Prefer: return-no-content``):
#: the adapters use only the new ETag, which comes in a header either way
_NO_ECHO: dict[str, Any] = {"response_preference": "return-no-content"}

#: Table storage keeps at most 64 KiB per string property (UTF-16): 32 Ki characters.
MAX_STRING_CHARS = 32_000
#: Detail JSON is spread over at most this many string properties (< 1 MiB entity limit).
MAX_DETAIL_PARTS = 12
_SET_STATUS_ATTEMPTS = 8


# --------------------------------------------------------------------------- helpers


def _key(value: str) -> str:
    """``value`` made safe for PartitionKey/RowKey (no / \\ # ? % ~ or control chars)."""
    if not value:
        raise ValueError("a table key must not be empty")
    return quote(value, safe="-._!*(),:=@$'").replace("~", "%7E")


def _utc(value: datetime | None, name: str) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware (UTC), got a naive datetime")
    return value.astimezone(UTC)


def _plain(value: Any) -> datetime | None:
    """A service datetime as a plain timezone-aware UTC ``datetime``."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise TypeError(f"expected a datetime, got {type(value).__name__}")
    value = value.astimezone(UTC)
    return datetime(
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond,
        tzinfo=UTC,
    )


def _required_dt(value: Any) -> datetime:
    result = _plain(value)
    if result is None:
        raise TypeError("a required datetime property is missing")
    return result


def _ensure_table(service: TableServiceClient, table_name: str) -> TableClient:
    try:
        service.create_table(table_name)
        logger.info("created table %s", table_name)
    except ResourceExistsError:
        pass
    except AzureError as exc:
        raise_storage_error(exc, f"create table {table_name}")
    return service.get_table_client(table_name)


class _TableBase:
    def __init__(self, service: TableServiceClient, table_name: str) -> None:
        self._service = service
        self.table_name = table_name
        self._clients: dict[str, TableClient] = {}
        self._client_lock = threading.Lock()

    def _client_of(self, table_name: str) -> TableClient:
        """The client of ``table_name``, the table made on first use."""
        client = self._clients.get(table_name)
        if client is None:
            with self._client_lock:
                client = self._clients.get(table_name)
                if client is None:
                    client = _ensure_table(self._service, table_name)
                    self._clients[table_name] = client
        return client

    @property
    def _table(self) -> TableClient:
        return self._client_of(self.table_name)

    def _point_read(
        self, pk: str, rk: str, what: str, table: TableClient | None = None
    ) -> TableEntity | None:
        try:
            return (table or self._table).get_entity(pk, rk)
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise_storage_error(exc, what)

    def _query(
        self,
        query_filter: str,
        parameters: dict[str, Any],
        what: str,
        page: int = 1000,
        table: TableClient | None = None,
    ) -> Iterator[TableEntity]:
        try:
            yield from (table or self._table).query_entities(
                query_filter, parameters=parameters, results_per_page=page
            )
        except AzureError as exc:
            raise_storage_error(exc, what)


# --------------------------------------------------------------------------- ledger

_CERT_PREFIX = "cert-"
_REVOKED_PK = "~revoked"


def _serial_pk(serial: str) -> str:
    return "~serial-" + serial[-2:].rjust(2, "0").lower()


def _thumb_pk(thumbprint: str) -> str:
    return "~thumb-" + thumbprint[:2].lower()


def _record_to_entity(rec: CertificateRecord, pk: str, rk: str) -> dict[str, Any]:
    return {
        "PartitionKey": pk,
        "RowKey": rk,
        "serial": rec.serial,
        "device_id": rec.device_id,
        "thumbprint_sha256": rec.thumbprint_sha256,
        "not_before": _utc(rec.not_before, "not_before"),
        "not_after": _utc(rec.not_after, "not_after"),
        "csr_sha256": rec.csr_sha256,
        "issuer_key_id": rec.issuer_key_id,
        "trigger": rec.trigger,
        "request_id": rec.request_id,
        "status": CertificateStatus(rec.status).value,
        "pem": rec.pem,
        "issued_at": _utc(rec.issued_at, "issued_at"),
        "revoked_at": _utc(rec.revoked_at, "revoked_at"),
        "revocation_reason": (
            RevocationReason(rec.revocation_reason).value if rec.revocation_reason else None
        ),
    }


def _entity_to_record(e: Mapping[str, Any]) -> CertificateRecord:
    reason = e.get("revocation_reason")
    metadata = getattr(e, "metadata", None) or {}
    return CertificateRecord(
        serial=e["serial"],
        device_id=e["device_id"],
        thumbprint_sha256=e["thumbprint_sha256"],
        not_before=_required_dt(e["not_before"]),
        not_after=_required_dt(e["not_after"]),
        csr_sha256=e["csr_sha256"],
        issuer_key_id=e["issuer_key_id"],
        trigger=e["trigger"],
        request_id=e["request_id"],
        status=CertificateStatus(e["status"]),
        pem=e["pem"],
        issued_at=_required_dt(e["issued_at"]),
        revoked_at=_plain(e.get("revoked_at")),
        revocation_reason=RevocationReason(reason) if reason else None,
        etag=metadata.get("etag"),
    )


class TableLedger(_TableBase, CertificateLedger):
    """The issuance ledger on Azure Table storage; every lookup is a point read.

    A certificate row sits in its device's partition under the SHA-256 of the CSR it
    answers (``cert-<csr sha256>``): one device and CSR have one certificate, and
    ``find_by_csr`` is one point read. ``add`` writes the serial index (create-only),
    the thumbprint index (idempotent upsert), both naming the device and CSR, then
    creates the certificate row: two concurrent ``add`` calls for the same device and
    CSR cannot both succeed, and the loser returns the winner's record. A crash before
    the last write leaves index rows pointing at nothing (or at the winner); readers
    check the serial of the row they reach and ignore them.

    The index rows live in a table of their own (``index_table_name``, by default the
    ledger's name + ``Index``), so the ledger table holds certificate rows only. Azure
    answers the finish's one-partition query from the partition either way; Azurite
    evaluates a query against every row of the table, and the index rows were two
    thirds of them (``docs/performance.md``).
    """

    def __init__(
        self, service: TableServiceClient, table_name: str, index_table_name: str | None = None
    ) -> None:
        super().__init__(service, table_name)
        self.index_table_name = index_table_name or f"{table_name}Index"

    @property
    def _index(self) -> TableClient:
        return self._client_of(self.index_table_name)

    def _device_records(self, device_id: str) -> dict[str, CertificateRecord]:
        rows = self._query(
            "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
            {"pk": _key(device_id), "lo": _CERT_PREFIX, "hi": _CERT_PREFIX[:-1] + "."},
            f"certificates of {device_id}",
        )
        return {str(e["serial"]): _entity_to_record(e) for e in rows}

    # reads ---------------------------------------------------------------

    def _cert_entity(self, device_id: str, csr_sha256: str) -> TableEntity | None:
        return self._point_read(
            _key(device_id), _CERT_PREFIX + _key(csr_sha256), f"certificate of {device_id}"
        )

    def _indexed(self, index: TableEntity | None, serial: str) -> TableEntity | None:
        """The certificate row an index row points at, when it holds ``serial`` (an index
        row left by an add that did not complete points at nothing, or at a winner)."""
        if index is None:
            return None
        entity = self._cert_entity(str(index["device_id"]), str(index["csr_sha256"]))
        return entity if entity is not None and entity["serial"] == serial else None

    def _get_entity(self, serial: str) -> TableEntity:
        if not serial:
            raise NotFoundError("no certificate with an empty serial")
        index = self._point_read(
            _serial_pk(serial), _key(serial), f"serial index of {serial}", self._index
        )
        entity = self._indexed(index, serial)
        if entity is None:
            raise NotFoundError(f"no certificate with serial {serial}")
        return entity

    def find_by_csr(self, device_id: str, csr_sha256: str) -> CertificateRecord | None:
        if not device_id or not csr_sha256:
            return None
        entity = self._cert_entity(device_id, csr_sha256)
        return None if entity is None else _entity_to_record(entity)

    def get(self, serial: str) -> CertificateRecord:
        return _entity_to_record(self._get_entity(serial))

    def find_by_thumbprint(self, thumbprint_sha256: str) -> CertificateRecord | None:
        if not thumbprint_sha256:
            return None
        index = self._point_read(
            _thumb_pk(thumbprint_sha256),
            _key(thumbprint_sha256),
            f"thumbprint index of {thumbprint_sha256}",
            self._index,
        )
        entity = None if index is None else self._indexed(index, str(index["serial"]))
        return None if entity is None else _entity_to_record(entity)

    def list_for_device(self, device_id: str) -> list[CertificateRecord]:
        if not device_id:
            return []
        return sorted(self._device_records(device_id).values(), key=lambda r: r.issued_at)

    def list_revoked(self) -> Iterator[CertificateRecord]:
        for entity in self._query(
            "PartitionKey eq @pk", {"pk": _REVOKED_PK}, "revoked certificates", table=self._index
        ):
            yield _entity_to_record(entity)

    def list_all(self) -> Iterator[CertificateRecord]:
        for entity in self._query(
            "RowKey ge @lo and RowKey lt @hi",
            {"lo": _CERT_PREFIX, "hi": _CERT_PREFIX[:-1] + "."},
            "every certificate",
        ):
            yield _entity_to_record(entity)

    # writes --------------------------------------------------------------

    def _claim_serial(self, record: CertificateRecord) -> None:
        row = {
            "PartitionKey": _serial_pk(record.serial),
            "RowKey": _key(record.serial),
            "device_id": record.device_id,
            "csr_sha256": record.csr_sha256,
        }
        try:
            self._index.create_entity(row, **_NO_ECHO)
            return
        except ResourceExistsError:
            pass
        except AzureError as exc:
            raise_storage_error(exc, f"serial index of {record.serial}")
        owner = self._point_read(
            _serial_pk(record.serial),
            _key(record.serial),
            f"serial index of {record.serial}",
            self._index,
        )
        if owner is None or (owner["device_id"], owner["csr_sha256"]) != (
            record.device_id,
            record.csr_sha256,
        ):
            raise ConflictError(f"serial {record.serial} already recorded")

    def add(self, record: CertificateRecord) -> CertificateRecord:
        if not record.device_id or not record.serial or not record.csr_sha256:
            raise ValueError("a certificate record needs device_id, serial and csr_sha256")
        # no look-up first: the caller (Issuer.issue) has just made it, and a CSR already
        # recorded fails the create below, which then returns the recorded certificate
        cert_row = _record_to_entity(
            record, _key(record.device_id), _CERT_PREFIX + _key(record.csr_sha256)
        )
        self._claim_serial(record)
        try:
            self._index.upsert_entity(
                {
                    "PartitionKey": _thumb_pk(record.thumbprint_sha256),
                    "RowKey": _key(record.thumbprint_sha256),
                    "device_id": record.device_id,
                    "serial": record.serial,
                    "csr_sha256": record.csr_sha256,
                },
                mode=UpdateMode.REPLACE,
            )
        except AzureError as exc:
            raise_storage_error(exc, f"thumbprint index of {record.serial}")
        try:
            self._table.create_entity(cert_row, **_NO_ECHO)
        except ResourceExistsError as exc:
            winner = self.find_by_csr(record.device_id, record.csr_sha256)
            if winner is not None:
                logger.info(
                    "ledger: device %s CSR %s already recorded as %s",
                    record.device_id,
                    record.csr_sha256,
                    winner.serial,
                )
                return winner
            raise ConflictError(f"serial {record.serial} already recorded") from exc
        except AzureError as exc:
            raise_storage_error(exc, f"record certificate {record.serial}")
        return _entity_to_record(cert_row)

    def set_status(
        self,
        serial: str,
        status: CertificateStatus,
        *,
        reason: RevocationReason | None = None,
        at: datetime | None = None,
    ) -> CertificateRecord:
        status = CertificateStatus(status)
        revoked_at = _utc(at, "at")
        for _ in range(_SET_STATUS_ATTEMPTS):
            entity = self._get_entity(serial)
            record = _entity_to_record(entity)
            if not status_change_allowed(record.status, status):
                return record
            record.status = status
            if status is CertificateStatus.REVOKED:
                record.revoked_at = revoked_at or datetime.now(UTC)
                record.revocation_reason = (
                    RevocationReason(reason) if reason else RevocationReason.UNSPECIFIED
                )
                # The CRL list first: a crash in between errs on the revoked side.
                try:
                    self._index.upsert_entity(
                        _record_to_entity(record, _REVOKED_PK, _key(serial)),
                        mode=UpdateMode.REPLACE,
                    )
                except AzureError as exc:
                    raise_storage_error(exc, f"revocation index of {serial}")
            try:
                self._table.update_entity(
                    _record_to_entity(record, entity["PartitionKey"], entity["RowKey"]),
                    mode=UpdateMode.REPLACE,
                    etag=entity.metadata["etag"],
                    match_condition=MatchConditions.IfNotModified,
                )
            except ResourceModifiedError:
                logger.info("ledger: certificate %s changed concurrently; retrying", serial)
                continue
            except AzureError as exc:
                raise_storage_error(exc, f"status of certificate {serial}")
            return record
        raise ConcurrencyError(f"certificate {serial} keeps changing; status not set")

    def set_statuses(
        self,
        device_id: str,
        changes: Mapping[str, CertificateStatus],
        listed: Sequence[CertificateRecord] = (),
    ) -> dict[str, CertificateRecord]:
        """One ETag-checked merge of the status per changed row, in the order given,
        retried on a concurrent change (rows already written then need no write). The
        ``listed`` records are written against when they hold every wanted row and each
        of those changes (each write then checks its row is current); otherwise, and
        after a failed check, the partition is read afresh. Not one entity-group transaction:
        the azure-data-tables client spends several times a single write's CPU on one,
        and every caller's change is idempotent and repeated when cut short."""
        wanted = {serial: CertificateStatus(status) for serial, status in changes.items()}
        if CertificateStatus.REVOKED in wanted.values():
            raise ValueError("set_statuses does not revoke; use set_status")
        if not wanted:
            return {}
        given = {r.serial: r for r in listed if r.device_id == device_id and r.etag}
        use_given = wanted.keys() <= given.keys()
        for _ in range(_SET_STATUS_ATTEMPTS):
            current = given if use_given else self._device_records(device_id)
            out: dict[str, CertificateRecord] = {}
            writes: list[CertificateRecord] = []
            for serial, status in wanted.items():
                if serial not in current:
                    raise NotFoundError(f"device {device_id} has no certificate {serial}")
                record = current[serial]
                if record.status is not status and status_change_allowed(record.status, status):
                    record = dataclasses.replace(record, status=status)
                    writes.append(record)
                out[serial] = record
            if use_given and len(writes) < len(wanted):
                use_given = False  # a given row needing no write is not ETag-checked
                continue
            use_given = False
            try:
                for record in writes:
                    meta = self._table.update_entity(
                        {
                            "PartitionKey": _key(device_id),
                            "RowKey": _CERT_PREFIX + _key(record.csr_sha256),
                            "status": record.status.value,
                        },
                        mode=UpdateMode.MERGE,  # the status alone; the ETag covers the rest
                        etag=record.etag,
                        match_condition=MatchConditions.IfNotModified,
                    )
                    record.etag = str(meta["etag"])
            except ResourceModifiedError:
                logger.info("ledger: certificates of %s changed concurrently; retrying", device_id)
                continue
            except AzureError as exc:
                raise_storage_error(exc, f"status of certificates of {device_id}")
            return out
        raise ConcurrencyError(f"certificates of {device_id} keep changing; status not set")


# --------------------------------------------------------------------------- rotation state

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
        what = f"rotation record of {record.device_id}"
        try:
            if record.etag is None:
                meta = self._table.create_entity(entity, **_NO_ECHO)
            else:
                meta = self._table.update_entity(
                    entity,
                    mode=UpdateMode.REPLACE,
                    etag=record.etag,
                    match_condition=MatchConditions.IfNotModified,
                )
        except ResourceExistsError as exc:
            raise ConflictError(f"{what} exists") from exc
        except (ResourceModifiedError, ResourceNotFoundError) as exc:
            raise ConcurrencyError(f"{what} changed") from exc
        except AzureError as exc:
            raise_storage_error(exc, what)
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


# --------------------------------------------------------------------------- audit

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

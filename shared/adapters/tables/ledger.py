"""The issuance ledger on Azure Table storage (key layout: :mod:`shared.adapters.tables`)."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import AzureError, ResourceExistsError, ResourceModifiedError
from azure.data.tables import TableClient, TableEntity, TableServiceClient, UpdateMode

from shared.adapters.storage_clients import raise_storage_error
from shared.adapters.tables._common import (
    _NO_ECHO,
    _key,
    _plain,
    _required_dt,
    _TableBase,
    _utc,
)
from shared.domain.certs import pem_key_sha256
from shared.domain.errors import ConcurrencyError, ConflictError, NotFoundError
from shared.domain.model import (
    CertificateRecord,
    CertificateStatus,
    RevocationReason,
    status_change_allowed,
)
from shared.ports import CertificateLedger

__all__ = ["TableLedger"]

logger = logging.getLogger(__name__)

_SET_STATUS_ATTEMPTS = 8
_CERT_PREFIX = "cert-"
_REVOKED_PK = "~revoked"
#: the revoked-key rows: one per public key a revoked certificate carried, keyed by the
#: key's SHA-256, so the issuer's key rule is one point read (``revoked_with_key``)
_REVOKED_KEY_PREFIX = "~revkey-"
#: written once every revoked row of the index has its key row (``_ensure_key_rows``)
_REVOKED_KEYS_DONE = ("~revkey", "complete")


def _serial_pk(serial: str) -> str:
    return "~serial-" + serial[-2:].rjust(2, "0").lower()


def _thumb_pk(thumbprint: str) -> str:
    return "~thumb-" + thumbprint[:2].lower()


def _revoked_key_pk(key_sha256: str) -> str:
    return _REVOKED_KEY_PREFIX + key_sha256[:2].lower()


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
        self._key_rows_ready = False
        self._key_rows_lock = threading.Lock()

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

    def revoked_with_key(self, key_sha256: str) -> str | None:
        """One point read of the key's revoked-key row (the index table). Revocations
        write that row before the revoked row; the first look-up of a worker makes sure
        rows revoked before key rows existed have one (once per ledger, then a marker
        row says so)."""
        if not key_sha256:
            return None
        self._ensure_key_rows()
        row = self._point_read(
            _revoked_key_pk(key_sha256),
            _key(key_sha256.lower()),
            f"revoked key {key_sha256}",
            self._index,
        )
        return None if row is None else str(row["serial"])

    def _write_key_row(self, record: CertificateRecord) -> None:
        key = pem_key_sha256(record.pem)
        if key is None:
            logger.warning("ledger: revoked certificate %s has no readable key", record.serial)
            return
        try:
            self._index.upsert_entity(
                {
                    "PartitionKey": _revoked_key_pk(key),
                    "RowKey": _key(key),
                    "serial": record.serial,
                    "device_id": record.device_id,
                },
                mode=UpdateMode.REPLACE,
            )
        except AzureError as exc:
            raise_storage_error(exc, f"revoked key of {record.serial}")

    def _ensure_key_rows(self) -> None:
        if self._key_rows_ready:
            return
        with self._key_rows_lock:
            if self._key_rows_ready:
                return
            if self._point_read(*_REVOKED_KEYS_DONE, "revoked keys marker", self._index) is None:
                for record in self.list_revoked():
                    self._write_key_row(record)
                try:
                    self._index.upsert_entity(
                        {"PartitionKey": _REVOKED_KEYS_DONE[0], "RowKey": _REVOKED_KEYS_DONE[1]}
                    )
                except AzureError as exc:
                    raise_storage_error(exc, "revoked keys marker")
            self._key_rows_ready = True

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
                # The key row, then the CRL list, then the row: a crash in between errs
                # on the revoked side.
                self._write_key_row(record)
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

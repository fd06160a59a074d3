"""Table adapters against Azurite: key layout, index rows, crash leftovers, size limits."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from azure.core.exceptions import ServiceRequestError
from azure.data.tables import TableServiceClient

from shared.adapters.tables import (
    MAX_STRING_CHARS,
    TableAuditLog,
    TableLedger,
    TableRotationStore,
)
from shared.domain.errors import ConflictError, NotFoundError, ServiceError
from shared.domain.model import (
    AuditEvent,
    CertificateRecord,
    CertificateStatus,
    RevocationReason,
    RotationRecord,
)

pytestmark = pytest.mark.azurite

T0 = datetime(2026, 5, 1, tzinfo=UTC)


def record(serial: str, device_id: str = "dev-1", csr: str = "c" * 64) -> CertificateRecord:
    return CertificateRecord(
        serial=serial,
        device_id=device_id,
        thumbprint_sha256=f"{serial:0>64}",
        not_before=T0,
        not_after=T0 + timedelta(days=30),
        csr_sha256=csr,
        issuer_key_id="file:/tmp/issuing.pem",
        trigger="manual",
        request_id="r",
        status=CertificateStatus.ISSUED,
        pem="PEM",
        issued_at=T0,
    )


def rows(tables: TableServiceClient, table_name: str) -> dict[tuple[str, str], dict[str, object]]:
    client = tables.get_table_client(table_name)
    return {(e["PartitionKey"], e["RowKey"]): dict(e) for e in client.list_entities()}


def test_ledger_rows_and_indexes(tables: TableServiceClient, table_name: str) -> None:
    ledger = TableLedger(tables, table_name)
    ledger.add(record("12ab"))
    ledger.set_status("12ab", CertificateStatus.REVOKED, reason=RevocationReason.KEY_COMPROMISE)
    cert_key = ("dev-1", "cert-" + "c" * 64)  # under the SHA-256 of the CSR it answers
    # the ledger table holds certificate rows only; the look-ups have a table of their own
    assert set(rows(tables, table_name)) == {cert_key}
    assert ledger.index_table_name == f"{table_name}Index"
    stored = rows(tables, table_name) | rows(tables, ledger.index_table_name)
    assert set(stored) == {
        cert_key,
        ("~serial-ab", "12ab"),
        ("~thumb-00", f"{'12ab':0>64}"),
        ("~revoked", "12ab"),
    }
    assert stored[("~serial-ab", "12ab")]["device_id"] == "dev-1"
    assert stored[("~serial-ab", "12ab")]["csr_sha256"] == "c" * 64
    assert stored[("~thumb-00", f"{'12ab':0>64}")]["serial"] == "12ab"
    cert = stored[cert_key]
    assert cert["serial"] == "12ab"
    assert cert["status"] == "revoked"
    assert cert["revocation_reason"] == "keyCompromise"
    assert stored[("~revoked", "12ab")]["status"] == "revoked"


def test_ledger_keys_escape_characters_tables_forbid(
    tables: TableServiceClient, table_name: str
) -> None:
    ledger = TableLedger(tables, table_name)
    device = "a/b?c#d%e~f"
    ledger.add(record("0f", device_id=device))
    assert ledger.get("0f").device_id == device
    pks = {pk for pk, _ in rows(tables, table_name)}
    assert pks == {"a%2Fb%3Fc%23d%25e%7Ef"}
    assert all("/" not in pk and "?" not in pk and "#" not in pk for pk in pks)


def test_ledger_ignores_index_rows_left_by_an_unfinished_add(
    tables: TableServiceClient, table_name: str
) -> None:
    ledger = TableLedger(tables, table_name)
    ledger.add(record("01"))  # creates the tables
    client = tables.get_table_client(ledger.index_table_name)
    # a crash after the index writes and before the certificate row leaves these behind
    client.create_entity(
        {"PartitionKey": "~serial-77", "RowKey": "77", "device_id": "dev-2", "csr_sha256": "d" * 64}
    )
    client.create_entity(
        {
            "PartitionKey": "~thumb-00",
            "RowKey": f"{'77':0>64}",
            "device_id": "dev-2",
            "serial": "77",
            "csr_sha256": "d" * 64,
        }
    )
    with pytest.raises(NotFoundError):
        ledger.get("77")
    assert ledger.find_by_thumbprint(f"{'77':0>64}") is None
    # the retry of that add completes over the leftovers
    stored = ledger.add(record("77", device_id="dev-2", csr="d" * 64))
    assert ledger.get("77") == stored
    assert ledger.find_by_thumbprint(f"{'77':0>64}") == stored
    # while the serial stays bound to its device and CSR
    with pytest.raises(ConflictError):
        ledger.add(record("77", device_id="dev-3", csr="e" * 64))
    with pytest.raises(ConflictError):
        ledger.add(record("77", device_id="dev-2", csr="f" * 64))
    # an index row of an add that lost to another for the same CSR reaches the winner's
    # row, whose serial is not its own: ignored too
    client.create_entity(
        {"PartitionKey": "~serial-78", "RowKey": "78", "device_id": "dev-2", "csr_sha256": "d" * 64}
    )
    with pytest.raises(NotFoundError):
        ledger.get("78")


def test_state_rows_and_filters_use_utc(tables: TableServiceClient, table_name: str) -> None:
    store = TableRotationStore(tables, table_name)
    local = datetime(2026, 5, 1, 16, 0, tzinfo=timezone(timedelta(hours=2)))
    store.put(RotationRecord("dev-1", updated_at=local))
    (row,) = rows(tables, table_name).values()
    assert (row["PartitionKey"], row["RowKey"]) == ("dev-1", "dev-1")
    assert row["state"] == "idle"
    fetched = store.get("dev-1")
    assert fetched is not None
    assert fetched.updated_at == datetime(2026, 5, 1, 14, 0, tzinfo=UTC)
    assert fetched.updated_at.tzinfo is UTC
    with pytest.raises(ValueError, match="timezone-aware"):
        store.put(RotationRecord("dev-2", updated_at=datetime(2026, 5, 1)))
    assert store.get("dev-2") is None


def test_audit_one_entity_per_entry_and_large_detail(
    tables: TableServiceClient, table_name: str
) -> None:
    log = TableAuditLog(tables, table_name)
    big = {"chain": "A" * (MAX_STRING_CHARS * 3 + 17), "n": 1}
    log.append(AuditEvent("issue", "ok", "system:worker", "dev-1", detail=big))
    log.append(AuditEvent("crl_publish", "ok", "system:sweep"))
    stored = rows(tables, table_name)
    assert sorted(pk for pk, _ in stored) == ["dev-1", "~global"]
    (entry,) = log.list("dev-1")
    assert entry.detail == big
    row = next(v for (pk, _), v in stored.items() if pk == "dev-1")
    assert row["detail_parts"] == 4
    assert all(len(str(row[k])) <= MAX_STRING_CHARS for k in row if str(k).startswith("detail_"))
    newest, oldest = log.list()
    assert newest.action == "crl_publish"
    assert oldest.detail == big


def test_audit_oversized_detail_is_summarised(tables: TableServiceClient, table_name: str) -> None:
    log = TableAuditLog(tables, table_name)
    huge = {"blob": "B" * (MAX_STRING_CHARS * 13), "other": 2}
    log.append(AuditEvent("issue", "ok", "x", "dev-1", detail=huge))
    (entry,) = log.list("dev-1")
    assert entry.detail["truncated"] is True
    assert entry.detail["keys"] == ["blob", "other"]
    assert entry.detail["chars"] == len(json.dumps(huge, sort_keys=True))


def two_certificates(tables: TableServiceClient, table_name: str, *serials: str) -> TableLedger:
    """A ledger holding one certificate of dev-1 per serial, each for its own CSR."""
    ledger = TableLedger(tables, table_name)
    for i, serial in enumerate(serials, start=1):
        ledger.add(record(serial, csr=str(i) * 64))
    return ledger


def test_ledger_set_statuses_after_a_listing_writes_against_the_listed_rows(
    tables: TableServiceClient, table_name: str
) -> None:
    ledger = two_certificates(tables, table_name, "0a", "0b")
    client = ledger._table
    queries: list[str] = []
    inner = client.query_entities

    def counting(query_filter: str, **kwargs: Any) -> Any:
        queries.append(query_filter)
        return inner(query_filter, **kwargs)

    client.query_entities = counting  # type: ignore[method-assign]
    listed = ledger.list_for_device("dev-1")
    assert len(queries) == 1
    assert all(r.etag for r in listed)
    ledger.set_statuses(
        "dev-1", {"0a": CertificateStatus.SUPERSEDED, "0b": CertificateStatus.ACTIVE}, listed
    )
    assert len(queries) == 1  # the rows just listed, no second partition query
    for before in listed:  # the status changed, every other property kept
        after = ledger.get(before.serial)
        assert (
            after.status
            is {"0a": CertificateStatus.SUPERSEDED, "0b": CertificateStatus.ACTIVE}[before.serial]
        )
        assert dataclasses.replace(after, status=before.status, etag=None) == dataclasses.replace(
            before, etag=None
        )
    assert [r.status for r in listed] == [CertificateStatus.ISSUED] * 2  # caller's untouched

    # a row that changes between the listing and its write fails the ETag check and is
    # read again, not overwritten
    listed = ledger.list_for_device("dev-1")
    ledger.set_status("0b", CertificateStatus.REVOKED, reason=RevocationReason.KEY_COMPROMISE)
    out = ledger.set_statuses("dev-1", {"0b": CertificateStatus.SUPERSEDED}, listed)
    assert len(queries) == 3  # the listing, then a fresh read after the failed check
    assert out["0b"].status is CertificateStatus.REVOKED
    assert ledger.get("0b").status is CertificateStatus.REVOKED

    # a listed row that needs no write has nothing checking it is current: read afresh
    listed = ledger.list_for_device("dev-1")
    ledger.set_status("0a", CertificateStatus.REVOKED, reason=RevocationReason.KEY_COMPROMISE)
    out = ledger.set_statuses("dev-1", {"0a": CertificateStatus.SUPERSEDED}, listed)
    assert len(queries) == 5
    assert out["0a"].status is CertificateStatus.REVOKED

    # without a listing, set_statuses reads the partition itself
    ledger.set_statuses("dev-1", {"0b": CertificateStatus.ACTIVE})
    assert len(queries) == 6


def test_ledger_set_statuses_cut_short_completes_when_repeated(
    tables: TableServiceClient, table_name: str
) -> None:
    ledger = two_certificates(tables, table_name, "1a", "1b")
    ledger.set_statuses("dev-1", {"1a": CertificateStatus.ACTIVE})
    client = ledger._table
    inner = client.update_entity
    writes: list[str] = []

    def dies_after_one(entity: Any, **kwargs: Any) -> Any:
        if writes:
            raise ServiceRequestError("connection reset")
        writes.append(entity["RowKey"])
        return inner(entity, **kwargs)

    client.update_entity = dies_after_one  # type: ignore[method-assign]
    changes = {"1b": CertificateStatus.ACTIVE, "1a": CertificateStatus.SUPERSEDED}
    with pytest.raises(ServiceError, match="unreachable"):
        ledger.set_statuses("dev-1", changes)
    # written in the order given: the new one is active, the old one not yet superseded
    assert len(writes) == 1
    assert ledger.get("1b").status is CertificateStatus.ACTIVE
    assert ledger.get("1a").status is CertificateStatus.ACTIVE
    client.update_entity = inner  # type: ignore[method-assign]
    out = ledger.set_statuses("dev-1", changes)
    assert {s: r.status for s, r in out.items()} == changes
    assert [ledger.get(s).status for s in ("1a", "1b")] == [
        CertificateStatus.SUPERSEDED,
        CertificateStatus.ACTIVE,
    ]


def test_creates_ask_for_no_echo_of_the_entity(azurite: str, table_name: str) -> None:
    from local.curl_transport import CurlTransport

    answers: list[tuple[str, str, int, bytes]] = []

    class Recording(CurlTransport):
        def send(self, request: Any, **kwargs: Any) -> Any:
            response = super().send(request, **kwargs)
            answers.append((request.method, request.url, response.status_code, response.content))
            return response

    tables = TableServiceClient.from_connection_string(azurite, transport=Recording())
    TableLedger(tables, table_name).add(record("12ab"))
    TableAuditLog(tables, table_name + "a").append(AuditEvent("issue", "ok", "x", "dev-1"))
    stored = TableRotationStore(tables, table_name + "s").put(RotationRecord("dev-1"))
    assert stored.etag  # the new ETag comes in a header
    posts = [  # entity creates (a table's own creation is a POST to /Tables)
        (status, body)
        for method, url, status, body in answers
        if method == "POST" and "/Tables" not in url
    ]
    assert len(posts) >= 4  # serial index, certificate row, audit entry, rotation record
    assert {status for status, _ in posts} == {204}
    assert all(body == b"" for _, body in posts)
    tables.delete_table(table_name + "a")
    tables.delete_table(table_name + "s")

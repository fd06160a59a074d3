"""One contract for every storage port: the in-memory fakes and the Azure adapters
(against Azurite) must behave the same. Fixtures come from ``conftest.py``."""

from __future__ import annotations

import dataclasses
import threading
from datetime import UTC, datetime, timedelta

import pytest
from azure.data.tables import TableServiceClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shared.adapters.tables import TableLedger
from shared.adapters.tables import ledger as ledger_module
from shared.domain.certs import certificate_pem, key_sha256
from shared.domain.errors import (
    ConcurrencyError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
)
from shared.domain.model import (
    AuditEvent,
    CertificateRecord,
    CertificateStatus,
    RevocationReason,
    RotationRecord,
    RotationState,
)
from shared.ports import AuditLog, CertificateLedger, CrlPublisher, RotationStateStore, WorkQueue

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def make_record(
    device_id: str = "dev-1",
    serial: str = "1a2b3c",
    csr: str = "c" * 64,
    thumbprint: str | None = None,
    issued_at: datetime = T0,
) -> CertificateRecord:
    return CertificateRecord(
        serial=serial,
        device_id=device_id,
        thumbprint_sha256=thumbprint or (serial * 64)[:64].ljust(64, "0"),
        not_before=issued_at - timedelta(minutes=5),
        not_after=issued_at + timedelta(days=30),
        csr_sha256=csr,
        issuer_key_id="pkcs11:certroll/certroll-issuing",
        trigger="expiring",
        request_id=f"req-{serial}",
        status=CertificateStatus.ISSUED,
        pem="-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        issued_at=issued_at,
    )


# --------------------------------------------------------------------------- ledger


def test_ledger_add_then_get_round_trips_every_field(ledger: CertificateLedger) -> None:
    record = make_record()
    stored = ledger.add(record)
    assert stored == record
    fetched = ledger.get(record.serial)
    assert fetched == record
    assert fetched.not_after.tzinfo is not None
    assert fetched.not_after.utcoffset() == timedelta(0)
    assert isinstance(fetched.status, CertificateStatus)


def test_ledger_add_is_idempotent_on_device_and_csr(ledger: CertificateLedger) -> None:
    first = ledger.add(make_record(serial="aa01"))
    second = ledger.add(make_record(serial="bb02"))  # same device, same CSR
    assert second.serial == first.serial == "aa01"
    assert [r.serial for r in ledger.list_for_device("dev-1")] == ["aa01"]
    with pytest.raises(NotFoundError):
        ledger.get("bb02")
    found = ledger.find_by_csr("dev-1", "c" * 64)
    assert found is not None
    assert found.serial == "aa01"


def test_ledger_concurrent_adds_of_one_csr_store_one_record(ledger: CertificateLedger) -> None:
    results: list[str] = []
    errors: list[BaseException] = []

    def add(serial: str) -> None:
        try:
            results.append(ledger.add(make_record(serial=serial)).serial)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(f"f{i:02x}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(results) == 6
    assert len(set(results)) == 1
    assert [r.serial for r in ledger.list_for_device("dev-1")] == [results[0]]


def test_ledger_same_csr_on_other_device_is_a_new_record(ledger: CertificateLedger) -> None:
    ledger.add(make_record(device_id="dev-1", serial="01"))
    other = ledger.add(make_record(device_id="dev-2", serial="02"))
    assert other.serial == "02"
    assert ledger.find_by_csr("dev-2", "c" * 64) == other
    assert ledger.find_by_csr("dev-3", "c" * 64) is None


def test_ledger_serial_reuse_for_another_csr_conflicts(ledger: CertificateLedger) -> None:
    ledger.add(make_record(serial="abc"))
    with pytest.raises(ConflictError):
        ledger.add(make_record(serial="abc", csr="d" * 64))
    with pytest.raises(ConflictError):
        ledger.add(make_record(device_id="dev-9", serial="abc", csr="e" * 64))
    assert [r.csr_sha256 for r in ledger.list_for_device("dev-1")] == ["c" * 64]
    assert ledger.list_for_device("dev-9") == []
    assert ledger.get("abc").device_id == "dev-1"


def test_ledger_unknown_lookups(ledger: CertificateLedger) -> None:
    with pytest.raises(NotFoundError):
        ledger.get("deadbeef")
    assert ledger.find_by_thumbprint("0" * 64) is None
    assert ledger.find_by_csr("dev-1", "c" * 64) is None
    assert ledger.list_for_device("nobody") == []
    assert list(ledger.list_revoked()) == []
    with pytest.raises(NotFoundError):
        ledger.set_status("deadbeef", CertificateStatus.ACTIVE)


def test_ledger_find_by_thumbprint(ledger: CertificateLedger) -> None:
    a = ledger.add(make_record(serial="0a", csr="1" * 64, thumbprint="ab" * 32))
    b = ledger.add(make_record(serial="0b", csr="2" * 64, thumbprint="cd" * 32))
    assert ledger.find_by_thumbprint("ab" * 32) == a
    assert ledger.find_by_thumbprint("cd" * 32) == b
    assert ledger.find_by_thumbprint("ef" * 32) is None


def test_ledger_list_for_device_is_oldest_first(ledger: CertificateLedger) -> None:
    for serial, days in (("03", 20), ("01", 0), ("02", 10)):
        ledger.add(make_record(serial=serial, csr=serial * 32, issued_at=T0 + timedelta(days=days)))
    ledger.add(make_record(device_id="dev-2", serial="04", csr="4" * 64))
    listed = ledger.list_for_device("dev-1")
    assert [r.serial for r in listed] == ["01", "02", "03"]
    assert [r.issued_at for r in listed] == sorted(r.issued_at for r in listed)
    assert [r.serial for r in ledger.list_for_device("dev-2")] == ["04"]


def test_ledger_device_ids_with_special_characters(ledger: CertificateLedger) -> None:
    device = "site:a?b%2F(c)=d@e$f'g"
    stored = ledger.add(make_record(device_id=device, serial="5e"))
    assert ledger.get("5e").device_id == device
    assert ledger.list_for_device(device) == [stored]
    assert ledger.find_by_csr(device, "c" * 64) == stored
    assert ledger.list_for_device("site:a") == []


def test_ledger_set_status_changes_status(ledger: CertificateLedger) -> None:
    ledger.add(make_record(serial="77"))
    active = ledger.set_status("77", CertificateStatus.ACTIVE)
    assert active.status is CertificateStatus.ACTIVE
    assert active.revoked_at is None
    assert ledger.get("77").status is CertificateStatus.ACTIVE
    ledger.set_status("77", CertificateStatus.SUPERSEDED)
    assert ledger.get("77").status is CertificateStatus.SUPERSEDED
    assert list(ledger.list_revoked()) == []


def test_ledger_revoked_is_final(ledger: CertificateLedger) -> None:
    ledger.add(make_record(serial="99"))
    when = T0 + timedelta(days=3)
    revoked = ledger.set_status(
        "99", CertificateStatus.REVOKED, reason=RevocationReason.KEY_COMPROMISE, at=when
    )
    assert revoked.status is CertificateStatus.REVOKED
    assert revoked.revocation_reason is RevocationReason.KEY_COMPROMISE
    assert revoked.revoked_at == when
    later = ledger.set_status("99", CertificateStatus.ACTIVE)
    again = ledger.set_status(
        "99", CertificateStatus.REVOKED, reason=RevocationReason.SUPERSEDED, at=when + timedelta(1)
    )
    for rec in (later, again, ledger.get("99")):
        assert rec.status is CertificateStatus.REVOKED
        assert rec.revocation_reason is RevocationReason.KEY_COMPROMISE
        assert rec.revoked_at == when


def test_ledger_failed_is_final_but_for_revocation(ledger: CertificateLedger) -> None:
    """A certificate whose rotation failed never becomes issued, active or superseded
    again (never admitted); it may still be revoked."""
    ledger.add(make_record(serial="f1", csr="1" * 64))
    ledger.add(make_record(serial="f2", csr="2" * 64))
    assert ledger.set_status("f1", CertificateStatus.FAILED).status is CertificateStatus.FAILED
    assert ledger.set_status("f1", CertificateStatus.ACTIVE).status is CertificateStatus.FAILED
    out = ledger.set_statuses(
        "dev-1", {"f1": CertificateStatus.SUPERSEDED, "f2": CertificateStatus.ACTIVE}
    )
    assert out["f1"].status is CertificateStatus.FAILED
    assert out["f2"].status is CertificateStatus.ACTIVE
    assert ledger.get("f1").status is CertificateStatus.FAILED
    assert list(ledger.list_revoked()) == []
    revoked = ledger.set_status(
        "f1", CertificateStatus.REVOKED, reason=RevocationReason.KEY_COMPROMISE, at=T0
    )
    assert revoked.status is CertificateStatus.REVOKED
    assert [r.serial for r in ledger.list_revoked()] == ["f1"]


def test_ledger_revoke_defaults_reason_and_time(ledger: CertificateLedger) -> None:
    ledger.add(make_record(serial="5a"))
    before = datetime.now(UTC)
    revoked = ledger.set_status("5a", CertificateStatus.REVOKED)
    assert revoked.revocation_reason is RevocationReason.UNSPECIFIED
    assert revoked.revoked_at is not None
    assert before - timedelta(seconds=1) <= revoked.revoked_at <= datetime.now(UTC)


def test_ledger_list_revoked_has_only_revoked(ledger: CertificateLedger) -> None:
    for i in range(5):
        ledger.add(make_record(device_id=f"dev-{i % 2}", serial=f"e{i}", csr=f"{i}" * 64))
    ledger.set_status("e1", CertificateStatus.REVOKED, reason=RevocationReason.SUPERSEDED, at=T0)
    ledger.set_status("e3", CertificateStatus.REVOKED, reason=RevocationReason.CA_COMPROMISE)
    ledger.set_status("e4", CertificateStatus.ACTIVE)
    revoked = {r.serial: r for r in ledger.list_revoked()}
    assert set(revoked) == {"e1", "e3"}
    assert revoked["e1"].revocation_reason is RevocationReason.SUPERSEDED
    assert revoked["e1"].revoked_at == T0
    assert revoked["e3"].revocation_reason is RevocationReason.CA_COMPROMISE
    assert revoked["e1"] == ledger.get("e1")


def test_ledger_set_statuses_changes_several_of_one_device(ledger: CertificateLedger) -> None:
    ledger.add(make_record(serial="a1", csr="1" * 64, issued_at=T0))
    ledger.add(make_record(serial="a2", csr="2" * 64, issued_at=T0 + timedelta(1)))
    ledger.add(make_record(serial="a3", csr="3" * 64, issued_at=T0 + timedelta(2)))
    ledger.set_status("a2", CertificateStatus.REVOKED, reason=RevocationReason.KEY_COMPROMISE)
    out = ledger.set_statuses(
        "dev-1",
        {
            "a1": CertificateStatus.SUPERSEDED,
            "a2": CertificateStatus.SUPERSEDED,
            "a3": CertificateStatus.ACTIVE,
        },
    )
    assert {s: r.status for s, r in out.items()} == {
        "a1": CertificateStatus.SUPERSEDED,
        "a2": CertificateStatus.REVOKED,  # revoked is final
        "a3": CertificateStatus.ACTIVE,
    }
    assert [c.status for c in ledger.list_for_device("dev-1")] == [
        CertificateStatus.SUPERSEDED,
        CertificateStatus.REVOKED,
        CertificateStatus.ACTIVE,
    ]
    assert out["a3"] == ledger.get("a3")
    # repeating it changes nothing
    again = ledger.set_statuses("dev-1", {"a3": CertificateStatus.ACTIVE})
    assert again["a3"] == ledger.get("a3")


def test_ledger_set_statuses_refuses_foreign_serials_and_revoking(
    ledger: CertificateLedger,
) -> None:
    ledger.add(make_record(serial="b1", csr="1" * 64))
    ledger.add(make_record(device_id="dev-2", serial="b2", csr="2" * 64))
    with pytest.raises(NotFoundError):
        ledger.set_statuses(
            "dev-1", {"b1": CertificateStatus.ACTIVE, "b2": CertificateStatus.SUPERSEDED}
        )
    with pytest.raises(NotFoundError):
        ledger.set_statuses("dev-1", {"nope": CertificateStatus.ACTIVE})
    with pytest.raises(ValueError, match="revoke"):
        ledger.set_statuses("dev-1", {"b1": CertificateStatus.REVOKED})
    assert ledger.get("b2").status is CertificateStatus.ISSUED
    assert list(ledger.list_revoked()) == []
    assert ledger.set_statuses("dev-1", {}) == {}


def _certificate_pem(common_name: str) -> tuple[str, str]:
    """(a PEM certificate with a fresh key, that key's SHA-256 as the ledger names it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(T0)
        .not_valid_after(T0 + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return certificate_pem(cert), key_sha256(key.public_key())


def test_ledger_revoked_with_key_names_only_revoked_certificates(
    ledger: CertificateLedger,
) -> None:
    keys = {}
    for i, serial in enumerate(("k1", "k2", "k3")):
        pem, keys[serial] = _certificate_pem(f"dev-{i}")
        ledger.add(
            dataclasses.replace(make_record(device_id=f"dev-{i}", serial=serial, csr=f"{i}" * 64),
                                pem=pem)
        )
    assert ledger.revoked_with_key(keys["k1"]) is None
    ledger.set_status("k1", CertificateStatus.REVOKED, reason=RevocationReason.KEY_COMPROMISE)
    ledger.set_status("k2", CertificateStatus.SUPERSEDED)
    assert ledger.revoked_with_key(keys["k1"]) == "k1"
    assert ledger.revoked_with_key(keys["k2"]) is None  # superseded is not revoked
    assert ledger.revoked_with_key(keys["k3"]) is None
    assert ledger.revoked_with_key("0" * 64) is None
    ledger.set_status("k3", CertificateStatus.REVOKED)
    assert ledger.revoked_with_key(keys["k3"]) == "k3"


@pytest.mark.azurite
def test_table_ledger_finds_keys_revoked_before_key_rows_existed(
    tables: TableServiceClient, table_name: str
) -> None:
    """A ledger whose revoked rows were written without revoked-key rows (as before they
    existed): a worker's first look-up writes them, once, and a marker says so."""
    old = TableLedger(tables, table_name)
    pem, key = _certificate_pem("dev-old")
    old.add(dataclasses.replace(make_record(device_id="dev-old", serial="0d"), pem=pem))
    old.set_status("0d", CertificateStatus.REVOKED, at=T0)
    index = tables.get_table_client(old.index_table_name)
    key_rows = "PartitionKey ge '~revkey' and PartitionKey lt '~revkez'"
    for row in list(index.query_entities(key_rows)):
        index.delete_entity(row["PartitionKey"], row["RowKey"])  # no key row, no marker
    assert [r["RowKey"] for r in index.query_entities("PartitionKey eq '~revoked'")] == ["0d"]
    fresh = TableLedger(tables, table_name)  # a worker started after the upgrade
    assert fresh.revoked_with_key(key) == "0d"
    assert index.get_entity(*ledger_module._REVOKED_KEYS_DONE) is not None
    # the next worker reads the marker and finds the key row by one point read
    assert TableLedger(tables, table_name).revoked_with_key(key) == "0d"


# --------------------------------------------------------------------------- rotation state


def make_state(device_id: str = "dev-1", **changes: object) -> RotationRecord:
    record = RotationRecord(
        device_id=device_id,
        state=RotationState.CSR_REQUESTED,
        request_id="req-1",
        reason="expiring",
        current_serial="01",
        current_thumbprint="ab" * 32,
        current_not_after=T0 + timedelta(days=10),
        attempts=1,
        deadline=T0 + timedelta(hours=24),
        updated_at=T0,
    )
    return dataclasses.replace(record, **changes)  # type: ignore[arg-type]


def test_state_get_unknown_is_none(state_store: RotationStateStore) -> None:
    assert state_store.get("nobody") is None


def test_state_create_and_get_round_trip(state_store: RotationStateStore) -> None:
    record = make_state(
        csr_pem="-----BEGIN CERTIFICATE REQUEST-----\n", slot="secondary", hub_cleanup=True
    )
    stored = state_store.put(record)
    assert stored.etag
    assert record.etag is None  # the caller's object is untouched
    fetched = state_store.get("dev-1")
    assert fetched is not None
    assert fetched == stored
    assert dataclasses.replace(fetched, etag=None) == record
    assert isinstance(fetched.state, RotationState)


def test_state_create_twice_conflicts(state_store: RotationStateStore) -> None:
    state_store.put(make_state())
    with pytest.raises(ConflictError):
        state_store.put(make_state(state=RotationState.IDLE))
    fetched = state_store.get("dev-1")
    assert fetched is not None
    assert fetched.state is RotationState.CSR_REQUESTED


def test_state_replace_checks_etag(state_store: RotationStateStore) -> None:
    first = state_store.put(make_state())
    second = state_store.put(dataclasses.replace(first, state=RotationState.CSR_RECEIVED))
    assert second.etag != first.etag
    with pytest.raises(ConcurrencyError):
        state_store.put(dataclasses.replace(first, state=RotationState.FAILED))
    fetched = state_store.get("dev-1")
    assert fetched is not None
    assert fetched.state is RotationState.CSR_RECEIVED
    assert fetched.etag == second.etag


def test_state_replace_of_missing_record_is_a_concurrency_error(
    state_store: RotationStateStore,
) -> None:
    stored = state_store.put(make_state(device_id="dev-a"))
    with pytest.raises(ConcurrencyError):
        state_store.put(dataclasses.replace(stored, device_id="dev-b"))
    assert state_store.get("dev-b") is None


def test_state_list_filters(state_store: RotationStateStore) -> None:
    state_store.put(make_state("idle-old", state=RotationState.IDLE, updated_at=T0))
    state_store.put(
        make_state("issued-new", state=RotationState.ISSUED, updated_at=T0 + timedelta(hours=5))
    )
    state_store.put(
        make_state("issued-old", state=RotationState.ISSUED, updated_at=T0 - timedelta(hours=5))
    )
    state_store.put(make_state("failed-never", state=RotationState.FAILED, updated_at=None))

    def ids(records: object) -> set[str]:
        return {r.device_id for r in records}  # type: ignore[attr-defined]

    assert ids(state_store.list()) == {"idle-old", "issued-new", "issued-old", "failed-never"}
    assert ids(state_store.list({RotationState.ISSUED})) == {"issued-new", "issued-old"}
    assert ids(state_store.list({RotationState.ISSUED, RotationState.FAILED})) == {
        "issued-new",
        "issued-old",
        "failed-never",
    }
    assert ids(state_store.list(updated_before=T0 + timedelta(minutes=1))) == {
        "idle-old",
        "issued-old",
    }
    assert ids(state_store.list({RotationState.ISSUED}, updated_before=T0)) == {"issued-old"}
    assert ids(state_store.list(set())) == set()
    assert ids(state_store.list({RotationState.DISALLOWED})) == set()
    listed = list(state_store.list({RotationState.IDLE}))
    assert listed == [state_store.get("idle-old")]


# --------------------------------------------------------------------------- audit


def test_audit_lists_newest_first_and_filters_by_device(audit_log: AuditLog) -> None:
    entries = [
        AuditEvent("issue", "ok", "system:worker", device_id="dev-a", request_id="r1"),
        AuditEvent("slot_write", "ok", "system:worker", device_id="dev-b"),
        AuditEvent("crl_publish", "ok", "system:sweep"),
        AuditEvent("disallow", "ok", "alice@example.com", device_id="dev-a", detail={"why": "x"}),
        AuditEvent("revoke", "noop", "cli:bob", device_id="dev-b", at=T0),
    ]
    for entry in entries:
        audit_log.append(entry)
    everything = audit_log.list()
    assert [e.action for e in everything] == [
        "revoke",
        "disallow",
        "crl_publish",
        "slot_write",
        "issue",
    ]
    assert [e.action for e in audit_log.list("dev-a")] == ["disallow", "issue"]
    assert [e.action for e in audit_log.list("dev-b")] == ["revoke", "slot_write"]
    assert audit_log.list("dev-c") == []
    assert [e.action for e in audit_log.list(limit=2)] == ["revoke", "disallow"]
    assert [e.action for e in audit_log.list("dev-a", limit=1)] == ["disallow"]
    assert audit_log.list(limit=0) == []


def test_audit_round_trips_fields_and_fills_time(audit_log: AuditLog) -> None:
    before = datetime.now(UTC)
    detail = {"code": "subject_mismatch", "n": 3, "nested": {"ok": True, "list": [1, "a"]}}
    audit_log.append(
        AuditEvent("issue_rejected", "rejected", "system:worker", "dev-x", "req-9", detail=detail)
    )
    audit_log.append(AuditEvent("revoke", "ok", "cli:bob", "dev-x", at=T0))
    newest, oldest = audit_log.list("dev-x")
    assert newest == AuditEvent("revoke", "ok", "cli:bob", "dev-x", None, {}, T0)
    assert oldest.detail == detail
    assert oldest.request_id == "req-9"
    assert oldest.outcome == "rejected"
    assert oldest.at is not None
    assert before - timedelta(seconds=1) <= oldest.at <= datetime.now(UTC)


def test_audit_detail_is_stored_as_json(audit_log: AuditLog) -> None:
    audit_log.append(AuditEvent("issue", "ok", "x", "dev-j", detail={"when": T0, "t": (1, 2)}))
    (entry,) = audit_log.list("dev-j")
    assert entry.detail == {"when": str(T0), "t": [1, 2]}


# --------------------------------------------------------------------------- CRL publisher


def test_publisher_round_trip(publisher: CrlPublisher) -> None:
    url = publisher.publish("crl/issuing.crl", b"\x30\x82crl-1", "application/pkix-crl")
    assert url == publisher.url_for("crl/issuing.crl")
    assert url.endswith("/crl/issuing.crl")
    assert url.startswith("http")
    assert publisher.fetch("crl/issuing.crl") == b"\x30\x82crl-1"
    publisher.publish("crl/issuing.crl", b"\x30\x82crl-2", "application/pkix-crl")
    assert publisher.fetch("crl/issuing.crl") == b"\x30\x82crl-2"
    publisher.publish("ca/issuing.pem", b"-----BEGIN CERTIFICATE-----\n", "application/x-pem-file")
    assert publisher.fetch("ca/issuing.pem") == b"-----BEGIN CERTIFICATE-----\n"


def test_publisher_fetch_missing_is_not_found(publisher: CrlPublisher) -> None:
    with pytest.raises(NotFoundError):
        publisher.fetch("crl/never.crl")
    publisher.publish("crl/other.crl", b"x", "application/pkix-crl")
    with pytest.raises(NotFoundError):
        publisher.fetch("crl/never.crl")


def test_publisher_url_for_is_stable_before_publishing(publisher: CrlPublisher) -> None:
    before = publisher.url_for("crl/issuing.crl")
    assert before == publisher.url_for("crl/issuing.crl")
    assert before.rsplit("/", 2)[1:] == ["crl", "issuing.crl"]
    assert publisher.url_for("ca/issuing.pem").rsplit("/", 2)[0] == before.rsplit("/", 2)[0]


# --------------------------------------------------------------------------- work queue


def _key(message: dict[str, object]) -> str:
    return str(message["deviceId"])


def test_queue_send_and_receive(work_queue: WorkQueue) -> None:
    sent = [{"deviceId": f"dev-{i}", "reason": "expiring", "n": i} for i in range(5)]
    for message in sent:
        work_queue.send(message)
    received = work_queue.receive()
    assert sorted(received, key=_key) == sent
    assert work_queue.receive() == []


def test_queue_receive_respects_max_and_deletes(work_queue: WorkQueue) -> None:
    sent = [{"deviceId": f"dev-{i}", "nested": {"slot": "primary"}} for i in range(4)]
    for message in sent:
        work_queue.send(message)
    first = work_queue.receive(max_messages=3)
    assert len(first) == 3
    rest = work_queue.receive(max_messages=3)
    assert sorted(first + rest, key=_key) == sent
    assert work_queue.receive(max_messages=3) == []
    assert work_queue.receive(max_messages=0) == []


def test_queue_rejects_oversized_and_non_json(work_queue: WorkQueue) -> None:
    with pytest.raises(InvalidRequestError) as info:
        work_queue.send({"deviceId": "big", "blob": "x" * 60_000})
    assert info.value.code == "message_too_large"
    with pytest.raises(TypeError):
        work_queue.send({"deviceId": "bad", "when": datetime.now(UTC)})
    work_queue.send({"deviceId": "ok", "blob": "y" * 40_000})
    (received,) = work_queue.receive()
    assert received == {"deviceId": "ok", "blob": "y" * 40_000}

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509

from shared.adapters.memory import MemoryAuditLog, MemoryCrlPublisher, MemoryLedger
from shared.clock import ManualClock
from shared.domain.errors import (
    CsrRejectedError,
    DeviceDisallowedError,
    InvalidRequestError,
    NotFoundError,
    ServiceError,
)
from shared.domain.model import CertificateStatus, RevocationReason
from shared.pki.issuer import Issuer, parse_serial
from shared.pki.profile import IssuancePolicy
from tests.support.pki import (
    assert_is_device_leaf,
    make_csr,
    make_device_key,
    make_test_authority,
)

START = datetime(2026, 5, 1, tzinfo=UTC)


class Env:
    def __init__(self, disallowed: set[str] | None = None) -> None:
        self.clock = ManualClock(START)
        self.authority = make_test_authority(now=START - timedelta(days=1))
        self.ledger = MemoryLedger()
        self.audit = MemoryAuditLog()
        self.publisher = MemoryCrlPublisher()
        blocked = disallowed or set()
        self.issuer = Issuer(
            self.authority,
            self.ledger,
            self.audit,
            IssuancePolicy(validity_days=30),
            self.clock,
            crl_publisher=self.publisher,
            is_disallowed=lambda d: d in blocked,
        )

    def issue(self, device: str, csr: bytes, request_id: str = "r1"):  # type: ignore[no-untyped-def]
        return self.issuer.issue(device, csr, request_id=request_id, trigger="manual", actor="t")


@pytest.fixture
def env() -> Env:
    return Env()


def test_issue_records_and_audits(env: Env) -> None:
    issued = env.issue("dev-1", make_csr("dev-1"))
    assert issued.reused is False
    assert_is_device_leaf(issued.certificate, "dev-1", env.authority, validity_days=30, now=START)
    rec = env.ledger.get(issued.record.serial)
    assert rec.device_id == "dev-1"
    assert rec.status is CertificateStatus.ISSUED
    assert rec.request_id == "r1"
    assert rec.trigger == "manual"
    assert rec.issuer_key_id == "memory:test"
    assert rec.not_after == START + timedelta(days=30)
    assert rec.serial == format(issued.certificate.serial_number, "x")
    chain = x509.load_pem_x509_certificates(issued.chain_pem.encode())
    assert chain == [issued.certificate, env.authority.certificate]
    [event] = env.audit.list("dev-1")
    assert (event.action, event.outcome, event.actor) == ("issue", "ok", "t")
    assert event.detail["serial"] == rec.serial
    assert event.detail["thumbprint"] == rec.thumbprint_sha256


def test_same_csr_is_idempotent_for_the_same_request_only(env: Env) -> None:
    csr = make_csr("dev-1")
    first = env.issue("dev-1", csr)
    again = env.issue("dev-1", csr)
    assert again.reused is True
    assert again.record.serial == first.record.serial
    assert again.certificate == first.certificate
    assert again.chain_pem == first.chain_pem
    # another request answered with the same CSR gets nothing: its key is certified already
    with pytest.raises(CsrRejectedError) as info:
        env.issue("dev-1", csr, request_id="r2")
    assert info.value.code == "key_reused"
    assert len(env.ledger.list_for_device("dev-1")) == 1
    assert [(e.action, e.outcome) for e in env.audit.list("dev-1")] == [
        ("issue_rejected", "rejected"),
        ("issue", "noop"),
        ("issue", "ok"),
    ]


def test_a_retired_certificate_is_not_returned_even_to_its_own_request(env: Env) -> None:
    csr = make_csr("dev-1")
    first = env.issue("dev-1", csr)
    env.issuer.revoke(first.record.serial, "keyCompromise", "t")
    with pytest.raises(CsrRejectedError) as info:
        env.issue("dev-1", csr)
    assert info.value.code == "key_reused"


def test_a_new_csr_for_a_key_an_earlier_certificate_carried_is_refused(env: Env) -> None:
    key = make_device_key()
    first = env.issue("dev-1", make_csr("dev-1", key))
    # a fresh CSR (other bytes) for the same key, in another request, and on re-admission
    with pytest.raises(CsrRejectedError) as info:
        env.issue("dev-1", make_csr("dev-1", key), request_id="r2")
    assert info.value.code == "key_reused"
    with pytest.raises(CsrRejectedError):
        env.issuer.check(
            "dev-1", make_csr("dev-1", key), request_id="op", trigger="allow", actor="t"
        )
    assert [c.serial for c in env.ledger.list_for_device("dev-1")] == [first.record.serial]


def test_the_key_of_any_revoked_certificate_is_refused_for_every_device(env: Env) -> None:
    key = make_device_key()
    other = env.issue("dev-2", make_csr("dev-2", key))
    env.issuer.revoke(other.record.serial, "keyCompromise", "t")
    with pytest.raises(CsrRejectedError) as info:
        env.issue("dev-1", make_csr("dev-1", key))
    assert info.value.code == "key_reused"
    assert env.ledger.list_for_device("dev-1") == []


def test_a_concurrent_record_of_the_same_csr_wins_at_the_ledger(env: Env) -> None:
    csr = make_csr("dev-1")
    first = env.issue("dev-1", csr)
    inner = env.ledger.list_for_device
    # as if the look-up ran before a concurrent attempt recorded the CSR
    env.ledger.list_for_device = lambda device_id: []  # type: ignore[method-assign]
    again = env.issue("dev-1", csr)
    assert again.reused is True
    assert again.record.serial == first.record.serial
    assert len(inner("dev-1")) == 1
    # the certificate signed meanwhile is not recorded; the audit names it as dropped
    newest, oldest = env.audit.list("dev-1")
    assert (newest.action, newest.outcome) == ("issue", "noop")
    assert newest.detail["serial"] == first.record.serial
    assert newest.detail["discardedSerial"] not in (first.record.serial, None)
    assert (oldest.action, oldest.outcome) == ("issue", "ok")
    # another request racing with the same CSR is refused, its signature dropped
    with pytest.raises(CsrRejectedError) as info:
        env.issue("dev-1", csr, request_id="r2")
    assert info.value.code == "key_reused"
    assert len(inner("dev-1")) == 1


def test_disallow_check_is_skipped_only_when_the_caller_knows() -> None:
    env = Env(disallowed={"dev-9"})
    issued = env.issuer.issue(
        "dev-9", make_csr("dev-9"), request_id="r1", trigger="manual", actor="t", known_allowed=True
    )
    assert issued.reused is False
    with pytest.raises(DeviceDisallowedError):
        env.issue("dev-9", make_csr("dev-9"), request_id="r2")


def test_new_csr_gets_new_certificate(env: Env) -> None:
    a = env.issue("dev-1", make_csr("dev-1"))
    b = env.issue("dev-1", make_csr("dev-1"), request_id="r2")
    assert a.record.serial != b.record.serial
    assert len(env.ledger.list_for_device("dev-1")) == 2


def test_concurrent_same_csr_signs_once_in_ledger(env: Env) -> None:
    csr = make_csr("dev-1")
    results = []

    def run() -> None:
        results.append(env.issue("dev-1", csr))

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({r.record.serial for r in results}) == 1
    assert len(env.ledger.list_for_device("dev-1")) == 1


@pytest.mark.parametrize(
    ("device", "csr_device", "code"),
    [
        ("dev-1", "dev-2", "subject_mismatch"),
        ("bad id", "bad id", "device_id_invalid"),
    ],
)
def test_rejection_audited_nothing_issued(
    env: Env, device: str, csr_device: str, code: str
) -> None:
    with pytest.raises(CsrRejectedError) as info:
        env.issue(device, make_csr(csr_device if code != "device_id_invalid" else "x"))
    assert info.value.code == code
    assert env.ledger.list_for_device(device) == []
    [event] = env.audit.list(device)
    assert (event.action, event.outcome) == ("issue_rejected", "rejected")
    assert event.detail["code"] == code


def test_disallowed_device_is_rejected() -> None:
    env = Env(disallowed={"dev-9"})
    with pytest.raises(CsrRejectedError) as info:
        env.issue("dev-9", make_csr("dev-9"))
    assert info.value.code == "device_disallowed"
    assert isinstance(info.value, DeviceDisallowedError)
    assert env.ledger.list_for_device("dev-9") == []
    assert env.audit.list("dev-9")[0].detail["code"] == "device_disallowed"
    assert env.issue("dev-8", make_csr("dev-8")).reused is False


def test_revoke_is_idempotent_and_audited(env: Env) -> None:
    issued = env.issue("dev-1", make_csr("dev-1"))
    env.clock.advance(60)
    rec = env.issuer.revoke(issued.record.serial.upper(), "keyCompromise", "op")
    assert rec.status is CertificateStatus.REVOKED
    assert rec.revocation_reason is RevocationReason.KEY_COMPROMISE
    assert rec.revoked_at == START + timedelta(seconds=60)
    again = env.issuer.revoke(issued.record.serial, RevocationReason.SUPERSEDED, "op")
    assert again.revocation_reason is RevocationReason.KEY_COMPROMISE
    actions = [(e.action, e.outcome) for e in env.audit.list("dev-1")]
    assert actions[:2] == [("revoke", "noop"), ("revoke", "ok")]


@pytest.mark.parametrize(
    ("serial", "reason", "error"),
    [
        ("zz", "keyCompromise", InvalidRequestError),
        ("0", "keyCompromise", InvalidRequestError),
        ("abc", "stolen", InvalidRequestError),
        ("abc", "keyCompromise", NotFoundError),
    ],
)
def test_revoke_bad_input(env: Env, serial: str, reason: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        env.issuer.revoke(serial, reason, "op")
    assert list(env.ledger.list_revoked()) == []


def test_parse_serial_forms() -> None:
    assert parse_serial("0x00AB:cd") == "abcd"
    assert parse_serial(" 1F ") == "1f"


def test_crl_lists_revoked_with_reasons(env: Env) -> None:
    a = env.issue("dev-1", make_csr("dev-1"))
    b = env.issue("dev-2", make_csr("dev-2"))
    c = env.issue("dev-3", make_csr("dev-3"))
    env.issuer.revoke(a.record.serial, "keyCompromise", "op")
    env.issuer.revoke(b.record.serial, "unspecified", "op")
    env.clock.advance(5)
    der1 = env.issuer.build_crl(next_update_hours=12)
    crl = x509.load_der_x509_crl(der1)
    assert crl.is_signature_valid(env.authority.certificate.public_key())  # type: ignore[arg-type]
    assert crl.issuer == env.authority.certificate.subject
    assert crl.last_update_utc == START + timedelta(seconds=5)
    assert crl.next_update_utc == START + timedelta(seconds=5, hours=12)
    entries = {format(e.serial_number, "x"): e for e in crl}
    assert set(entries) == {a.record.serial, b.record.serial}
    assert c.record.serial not in entries
    reason = entries[a.record.serial].extensions.get_extension_for_class(x509.CRLReason)
    assert reason.value.reason is x509.ReasonFlags.key_compromise
    assert reason.critical is False
    assert entries[a.record.serial].revocation_date_utc == START
    with pytest.raises(x509.ExtensionNotFound):
        entries[b.record.serial].extensions.get_extension_for_class(x509.CRLReason)
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = env.authority.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert aki.key_identifier == ski.value.digest
    n1 = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    n2 = x509.load_der_x509_crl(env.issuer.build_crl()).extensions.get_extension_for_class(
        x509.CRLNumber
    )
    assert n2.value.crl_number > n1


def test_crl_drops_expired_entries(env: Env) -> None:
    a = env.issue("dev-1", make_csr("dev-1"))
    env.issuer.revoke(a.record.serial, "superseded", "op")
    env.clock.advance(31 * 86400)
    crl = x509.load_der_x509_crl(env.issuer.build_crl())
    assert len(crl) == 0


def test_publish_crl(env: Env) -> None:
    url = env.issuer.publish_crl()
    assert url == env.publisher.url_for("crl/issuing.crl")
    crl = x509.load_der_x509_crl(env.publisher.fetch("crl/issuing.crl"))
    assert crl.issuer == env.authority.certificate.subject
    assert env.publisher.objects["crl/issuing.crl"][1] == "application/pkix-crl"
    ca = x509.load_pem_x509_certificates(env.publisher.fetch("ca/issuing.pem"))
    assert ca == [env.authority.certificate]


def test_publish_without_publisher_fails() -> None:
    env = Env()
    env.issuer.crl_publisher = None
    with pytest.raises(ServiceError):
        env.issuer.publish_crl()

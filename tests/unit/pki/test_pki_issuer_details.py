"""What the issuer records beside the certificate: every audit field, the CRL number's
clock basis and step, the CRL's bounds and extension criticality, what is published."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from shared.domain.errors import CsrRejectedError, InvalidRequestError, ServiceError, SigningError
from shared.domain.model import RevocationReason
from shared.pki.issuer import Issuer, parse_reason, parse_serial
from shared.pki.profile import IssuancePolicy
from tests.support.pki import make_csr, make_device_key
from tests.unit.pki.test_pki_issuer import START, Env


@pytest.fixture
def env() -> Env:
    return Env()


def _crl(env: Env, hours: int = 24) -> x509.CertificateRevocationList:
    return x509.load_der_x509_crl(env.issuer.build_crl(hours))


def test_the_crl_number_is_milliseconds_of_the_issuer_clock(env: Env) -> None:
    env.clock.advance(1.5)
    number = _crl(env).extensions.get_extension_for_class(x509.CRLNumber)
    assert number.value.crl_number == int((START.timestamp() + 1.5) * 1000)
    assert number.critical is False


def test_crl_numbers_in_the_same_millisecond_step_by_one(env: Env) -> None:
    numbers = [_crl(env).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number]
    numbers.append(_crl(env).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    assert numbers == [int(START.timestamp() * 1000), int(START.timestamp() * 1000) + 1]


def test_the_crl_extensions_are_not_critical_and_next_update_follows_the_hours(env: Env) -> None:
    crl = _crl(env, 1)
    assert crl.next_update_utc == START + timedelta(hours=1)
    assert crl.last_update_utc == START
    assert [e.critical for e in crl.extensions] == [False, False]


@pytest.mark.parametrize("hours", [1, 744])
def test_crl_hours_at_the_bounds_are_accepted(env: Env, hours: int) -> None:
    assert _crl(env, hours).next_update_utc == START + timedelta(hours=hours)


@pytest.mark.parametrize("hours", [0, 745])
def test_crl_hours_outside_the_bounds_are_refused(env: Env, hours: int) -> None:
    with pytest.raises(ValueError, match=r"^next_update_hours must be 1-744\Z"):
        env.issuer.build_crl(hours)


def test_the_default_crl_lasts_a_day(env: Env) -> None:
    crl = x509.load_der_x509_crl(env.issuer.build_crl())
    assert crl.next_update_utc == START + timedelta(hours=24)
    env.issuer.publish_crl()
    published = x509.load_der_x509_crl(env.publisher.fetch("crl/issuing.crl"))
    assert published.next_update_utc == START + timedelta(hours=24)


def test_a_revoked_certificate_leaves_the_crl_when_it_expires_and_not_before(env: Env) -> None:
    first = env.issue("dev-1", make_csr("dev-1"), request_id="r1").record
    second = env.issue("dev-2", make_csr("dev-2"), request_id="r2").record
    env.issuer.revoke(first.serial, RevocationReason.KEY_COMPROMISE, "ops")
    env.issuer.revoke(second.serial, RevocationReason.SUPERSEDED, "ops")
    env.clock.advance((first.not_after - env.clock.now()).total_seconds() - 1)
    listed = {format(r.serial_number, "x") for r in _crl(env)}
    assert listed == {first.serial, second.serial}
    env.clock.advance(1)  # expired at this instant: no longer listed
    assert len(list(_crl(env))) == 0


def test_publish_sends_the_crl_and_the_chain_with_their_content_types(env: Env) -> None:
    url = env.issuer.publish_crl()
    assert url.endswith("/crl/issuing.crl")
    crl_type = env.publisher.objects["crl/issuing.crl"][1]
    chain, chain_type = env.publisher.objects["ca/issuing.pem"]
    assert (crl_type, chain_type) == ("application/pkix-crl", "application/x-pem-file")
    assert x509.load_pem_x509_certificates(chain)[0] == env.authority.certificate
    [event] = env.audit.list()
    assert (event.action, event.outcome, event.actor, event.detail) == (
        "crl_publish",
        "ok",
        "system:issuer",
        {"url": url},
    )


def test_publish_without_a_publisher_says_so(env: Env) -> None:
    issuer = Issuer(env.authority, env.ledger, env.audit, IssuancePolicy(), env.clock)
    with pytest.raises(ServiceError, match=r"^no CRL publisher is configured\Z"):
        issuer.publish_crl()


def test_a_reused_issuance_is_audited_with_every_field(env: Env) -> None:
    csr = make_csr("dev-1")
    first = env.issue("dev-1", csr, request_id="r1")
    # the same open request asking again (a redelivered answer) gets its own certificate
    env.issuer.issue("dev-1", csr, request_id="r1", trigger="expiring", actor="ops")
    event = env.audit.list("dev-1")[0]
    assert (event.action, event.outcome, event.actor, event.request_id) == (
        "issue",
        "noop",
        "ops",
        "r1",
    )
    assert event.detail == {"serial": first.record.serial, "reused": True, "trigger": "expiring"}


def test_a_stored_pem_without_a_final_newline_still_gives_a_chain(env: Env) -> None:
    csr = make_csr("dev-1")
    first = env.issue("dev-1", csr)
    stored = env.ledger.get(first.record.serial)
    record = type(stored)(**{**stored.__dict__, "pem": stored.pem.rstrip("\n")})
    result = env.issuer._result(record, reused=True)
    assert result.chain_pem == first.chain_pem
    assert len(x509.load_pem_x509_certificates(result.chain_pem.encode())) == 2


def test_a_rejection_is_audited_with_request_trigger_and_actor(env: Env) -> None:
    with pytest.raises(CsrRejectedError):
        env.issuer.check("dev-1", make_csr("other"), request_id="r7", trigger="manual", actor="ops")
    [event] = env.audit.list("dev-1")
    assert (event.action, event.outcome, event.actor, event.request_id) == (
        "issue_rejected",
        "rejected",
        "ops",
        "r7",
    )
    assert event.detail["trigger"] == "manual"
    assert event.detail["code"] == "subject_mismatch"


def test_key_reuse_is_found_behind_an_unrevoked_certificate(env: Env) -> None:
    """The loop skips certificates that are not revoked and goes on to the next."""
    old_key = make_device_key()
    revoked = env.issue("dev-1", make_csr("dev-1", old_key), request_id="r1").record
    env.issue("dev-1", make_csr("dev-1", make_device_key()), request_id="r2")
    env.issuer.revoke(revoked.serial, RevocationReason.KEY_COMPROMISE, "ops")
    assert isinstance(old_key, ec.EllipticCurvePrivateKey)
    with pytest.raises(CsrRejectedError) as caught:
        env.issuer.check(
            "dev-1", make_csr("dev-1", old_key), request_id="r3", trigger="m", actor="o"
        )
    assert caught.value.code == "key_reused"
    assert caught.value.message == (
        f"the CSR's key is the key of certificate {revoked.serial} (revoked); "
        "a new certificate needs a new key"
    )


def test_revoke_audits_actor_reason_and_a_second_revoke_as_noop(env: Env) -> None:
    serial = env.issue("dev-1", make_csr("dev-1")).record.serial
    env.issuer.revoke(serial, "keyCompromise", "ops")
    env.issuer.revoke(serial, "superseded", "ops2")
    again, first = env.audit.list("dev-1")[:2]
    assert (first.action, first.outcome, first.actor, first.detail) == (
        "revoke",
        "ok",
        "ops",
        {"serial": serial, "reason": "keyCompromise"},
    )
    assert (again.outcome, again.actor, again.detail) == (
        "noop",
        "ops2",
        {"serial": serial, "reason": "keyCompromise"},
    )


@pytest.mark.parametrize(("value", "normal"), [("1", "1"), ("0x0A", "a"), ("0a:ff", "aff")])
def test_parse_serial_accepts_one_and_up(value: str, normal: str) -> None:
    assert parse_serial(value) == normal


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "a certificate serial is positive"),
        ("zz", "'zz' is not a hexadecimal certificate serial"),
    ],
)
def test_parse_serial_rejections(value: str, message: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_serial(value)
    assert (caught.value.code, caught.value.message) == ("serial_invalid", message)


def test_parse_reason_lists_the_choices() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_reason("bogus")
    choices = ", ".join(r.value for r in RevocationReason)
    assert (caught.value.code, caught.value.message) == (
        "reason_invalid",
        f"unknown revocation reason 'bogus'; use one of {choices}",
    )


def test_a_signing_failure_is_audited_with_every_field_and_raised(
    env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise SigningError("hsm unavailable")

    monkeypatch.setattr("shared.pki.issuer.build_device_certificate", fail)
    with pytest.raises(SigningError):
        env.issuer.issue("dev-1", make_csr("dev-1"), request_id="r9", trigger="manual", actor="ops")
    [event] = env.audit.list("dev-1")
    assert (event.action, event.outcome, event.actor, event.device_id, event.request_id) == (
        "issue",
        "failed",
        "ops",
        "dev-1",
        "r9",
    )
    assert event.detail == {"error": "hsm unavailable"}
    assert env.ledger.list_for_device("dev-1") == []
    assert "signing failed for device dev-1 request r9: hsm unavailable" in caplog.text


def test_an_issue_rejection_is_audited_with_request_trigger_and_actor(env: Env) -> None:
    with pytest.raises(CsrRejectedError):
        env.issuer.issue(
            "dev-1", make_csr("other"), request_id="r8", trigger="expiring", actor="ops"
        )
    [event] = env.audit.list("dev-1")
    assert (event.action, event.actor, event.request_id) == ("issue_rejected", "ops", "r8")
    assert event.detail["trigger"] == "expiring"

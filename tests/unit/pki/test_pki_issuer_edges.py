"""Issuer edges: the text of every key_reused refusal, the order the revoked list comes
in, a race lost to another request, the chain without intermediates, and the CRL of each
CA while two are in use."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from shared.domain.errors import CsrRejectedError, DeviceDisallowedError, InvalidRequestError
from shared.domain.model import RevocationReason
from shared.pki.ca_roll.cas import CaSet, PublishedCa
from shared.pki.ca_roll.issuer import RollingIssuer
from shared.pki.issuer import Issuer, parse_serial
from shared.pki.profile import IssuancePolicy
from tests.support.pki import make_csr, make_device_key, make_test_authority
from tests.unit.pki.test_pki_issuer import START, Env


@pytest.fixture
def env() -> Env:
    return Env()


@pytest.mark.parametrize("value", ["a0x", "1x", "0y1"])
def test_a_serial_with_a_stray_x_is_refused(value: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_serial(value)
    assert caught.value.code == "serial_invalid"


def test_the_key_of_another_devices_revoked_certificate_is_refused_with_its_serial(
    env: Env,
) -> None:
    """The device's own revoked certificates come first in the revoked list; the loop
    skips them and still finds the other device's certificate behind them."""
    own = env.issue("dev-1", make_csr("dev-1"), request_id="r1").record
    env.issuer.revoke(own.serial, RevocationReason.KEY_COMPROMISE, "ops")
    key = make_device_key()
    other = env.issue("dev-2", make_csr("dev-2", key), request_id="r1").record
    env.issuer.revoke(other.serial, RevocationReason.KEY_COMPROMISE, "ops")
    for attempt in ("r2", "r3"):  # the same answer the second time (the key is kept)
        with pytest.raises(CsrRejectedError) as caught:
            env.issue("dev-1", make_csr("dev-1", key), request_id=attempt)
        assert (caught.value.code, caught.value.message) == (
            "key_reused",
            f"the CSR's key is the key of revoked certificate {other.serial}; "
            "a new certificate needs a new key",
        )


def test_a_disallowed_device_is_told_so_by_name() -> None:
    env = Env(disallowed={"dev-9"})
    with pytest.raises(DeviceDisallowedError) as caught:
        env.issue("dev-9", make_csr("dev-9"))
    assert isinstance(caught.value, CsrRejectedError)
    assert (caught.value.code, caught.value.message) == (
        "device_disallowed",
        "device 'dev-9' is disallowed; nothing is issued",
    )


def test_a_race_lost_to_another_request_is_refused_and_audited_for_that_request(
    env: Env,
) -> None:
    csr = make_csr("dev-1")
    first = env.issue("dev-1", csr, request_id="r1")
    # as if the look-up ran before the first request recorded the CSR
    env.ledger.list_for_device = lambda device_id: []  # type: ignore[method-assign]
    with pytest.raises(CsrRejectedError) as caught:
        env.issuer.issue("dev-1", csr, request_id="r2", trigger="expiring", actor="ops")
    assert caught.value.code == "key_reused"
    assert caught.value.message.startswith(
        f"the CSR was already issued as {first.record.serial} for another request ("
    )
    assert caught.value.message.endswith(" dropped); a new certificate needs a new key")
    event = env.audit.list("dev-1")[0]
    assert (event.action, event.outcome, event.actor, event.device_id, event.request_id) == (
        "issue_rejected",
        "rejected",
        "ops",
        "dev-1",
        "r2",
    )
    assert event.detail == {
        "code": "key_reused",
        "message": caught.value.message,
        "trigger": "expiring",
    }


def test_a_race_won_by_the_same_request_is_audited_for_that_request(env: Env) -> None:
    csr = make_csr("dev-1")
    first = env.issue("dev-1", csr, request_id="r1")
    env.ledger.list_for_device = lambda device_id: []  # type: ignore[method-assign]
    again = env.issuer.issue("dev-1", csr, request_id="r1", trigger="expiring", actor="ops")
    assert again.record.serial == first.record.serial
    event = env.audit.list("dev-1")[0]
    assert (event.action, event.outcome, event.actor, event.request_id) == (
        "issue",
        "noop",
        "ops",
        "r1",
    )
    assert event.detail["serial"] == first.record.serial
    assert event.detail["trigger"] == "expiring"


def test_an_issuance_audit_holds_every_field(env: Env) -> None:
    issued = env.issuer.issue(
        "dev-1", make_csr("dev-1"), request_id="r1", trigger="expiring", actor="ops"
    )
    [event] = env.audit.list("dev-1")
    assert event.detail == {
        "serial": issued.record.serial,
        "thumbprint": issued.record.thumbprint_sha256,
        "notAfter": (START + timedelta(days=30)).isoformat(),
        "trigger": "expiring",
        "keyId": "memory:test",
    }
    assert (event.request_id, event.at) == ("r1", START)


def test_without_intermediates_the_chain_is_the_issuing_ca_certificate(env: Env) -> None:
    bare = dataclasses.replace(env.authority, chain=())
    issuer = Issuer(bare, env.ledger, env.audit, IssuancePolicy(), env.clock)
    issued = issuer.issue("dev-1", make_csr("dev-1"), request_id="r1", trigger="m", actor="t")
    assert x509.load_pem_x509_certificates(issued.chain_pem.encode()) == [
        issued.certificate,
        env.authority.certificate,
    ]


def test_the_chain_holds_every_intermediate_in_order(env: Env) -> None:
    intermediate = make_test_authority(now=START - timedelta(days=1)).certificate
    chained = dataclasses.replace(env.authority, chain=(env.authority.certificate, intermediate))
    issuer = Issuer(chained, env.ledger, env.audit, IssuancePolicy(), env.clock)
    issued = issuer.issue("dev-1", make_csr("dev-1"), request_id="r1", trigger="m", actor="t")
    assert x509.load_pem_x509_certificates(issued.chain_pem.encode()) == [
        issued.certificate,
        env.authority.certificate,
        intermediate,
    ]
    pem = [
        c.public_bytes(serialization.Encoding.PEM).decode()
        for c in (issued.certificate, env.authority.certificate, intermediate)
    ]
    assert issued.chain_pem == "".join(pem)  # PEM blocks back to back, nothing between


def test_a_certificate_expired_before_a_live_one_does_not_hide_it_from_the_crl(
    env: Env,
) -> None:
    early = env.issue("dev-1", make_csr("dev-1"), request_id="r1").record
    env.clock.advance(timedelta(days=10).total_seconds())
    late = env.issue("dev-2", make_csr("dev-2"), request_id="r1").record
    env.issuer.revoke(early.serial, RevocationReason.KEY_COMPROMISE, "ops")
    env.issuer.revoke(late.serial, RevocationReason.KEY_COMPROMISE, "ops")
    env.clock.advance(timedelta(days=21).total_seconds())  # early has expired, late has not
    crl = x509.load_der_x509_crl(env.issuer.build_crl())
    assert [format(r.serial_number, "x") for r in crl] == [late.serial]


def test_with_two_cas_in_use_each_crl_lists_only_its_own_leaves(env: Env) -> None:
    old = PublishedCa(env.authority, "crl/old.crl", "ca/old.pem", "issuing-1")
    second = dataclasses.replace(
        make_test_authority(now=START - timedelta(days=1)), key_id="memory:second"
    )
    new = PublishedCa(second, "crl/new.crl", "ca/new.pem", "issuing-2")
    issuer = RollingIssuer(
        CaSet(active=old),
        env.ledger,
        env.audit,
        IssuancePolicy(),
        env.clock,
        crl_publisher=env.publisher,
    )
    under_old = issuer.issue("dev-1", make_csr("dev-1"), request_id="r1", trigger="m", actor="t")
    issuer.use(CaSet(active=new, others=(old,)))
    under_new = issuer.issue("dev-2", make_csr("dev-2"), request_id="r1", trigger="m", actor="t")
    for issued in (under_old, under_new):
        issuer.revoke(issued.record.serial, RevocationReason.KEY_COMPROMISE, "ops")
    listed_new = x509.load_der_x509_crl(issuer.build_crl())
    listed_old = x509.load_der_x509_crl(issuer.build_crl(ca=old))
    assert [format(r.serial_number, "x") for r in listed_new] == [under_new.record.serial]
    assert [format(r.serial_number, "x") for r in listed_old] == [under_old.record.serial]
    assert listed_new.issuer == second.certificate.subject
    assert listed_old.issuer == env.authority.certificate.subject

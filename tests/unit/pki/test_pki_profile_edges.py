"""Device profile edges: the clock's zone, the 1950 floor, an issuing CA without a
subjectKeyIdentifier, two authorities behind one cached id, the CSR size setting."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from shared.pki import profile
from shared.pki.profile import EARLIEST_TIME, IssuancePolicy, build_device_certificate
from shared.ports import IssuingAuthority
from shared.settings import Settings
from tests.support.pki import make_csr, make_test_authority

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def _csr(device_id: str = "dev-1") -> x509.CertificateSigningRequest:
    return x509.load_pem_x509_csr(make_csr(device_id))


@pytest.mark.parametrize(
    "now",
    [NOW.replace(tzinfo=None), NOW.astimezone(timezone(timedelta(hours=2)))],
    ids=["naive", "utc+2"],
)
def test_a_clock_that_is_not_utc_is_refused(now: datetime) -> None:
    authority = make_test_authority(now=NOW - timedelta(days=1))
    with pytest.raises(ValueError, match=r"^now must be timezone-aware UTC\Z"):
        build_device_certificate(_csr(), "dev-1", authority, IssuancePolicy(), now)


def test_a_certificate_may_start_at_1950_but_not_before() -> None:
    authority = make_test_authority(now=NOW - timedelta(days=1))
    policy = IssuancePolicy(backdate_seconds=300)
    at_floor = EARLIEST_TIME + policy.backdate
    cert = build_device_certificate(_csr(), "dev-1", authority, policy, at_floor)
    assert cert.not_valid_before_utc == EARLIEST_TIME
    with pytest.raises(ValueError, match=r"^the certificate cannot start before 1950\Z"):
        build_device_certificate(
            _csr(), "dev-1", authority, policy, at_floor - timedelta(seconds=1)
        )


def _authority_without_ski() -> IssuingAuthority:
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuing CA without SKI")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA384())
    )
    return IssuingAuthority(certificate=cert, key=key, key_id="memory:no-ski", chain=(cert,))


def test_without_a_ca_ski_the_authority_key_id_comes_from_the_ca_public_key() -> None:
    authority = _authority_without_ski()
    cert = build_device_certificate(_csr(), "dev-1", authority, IssuancePolicy(), NOW)
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    assert aki.value == x509.AuthorityKeyIdentifier.from_issuer_public_key(
        authority.certificate.public_key()  # type: ignore[arg-type]
    )
    assert aki.critical is False
    cert.verify_directly_issued_by(authority.certificate)


def test_an_authority_is_never_given_the_parts_cached_for_another_at_its_id() -> None:
    """The cache is keyed by ``id()``, which a new object may reuse once the old one is
    gone: the entry names its authority and is used only for that very object."""
    first = make_test_authority(now=NOW - timedelta(days=1))
    second = make_test_authority(now=NOW - timedelta(days=1), crl_url=None)
    build_device_certificate(_csr(), "dev-1", first, IssuancePolicy(), NOW)
    profile._PARTS[id(second)] = profile._PARTS[id(first)]  # as after an id was reused
    cert = build_device_certificate(_csr(), "dev-1", second, IssuancePolicy(), NOW)
    assert cert.issuer == second.certificate.subject
    cert.verify_directly_issued_by(second.certificate)
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.CRLDistributionPoints)


def test_the_csr_size_limit_comes_from_its_setting() -> None:
    settings = Settings.from_env({"CERTROLL_CSR_MAX_BYTES": "1024"})
    policy = IssuancePolicy.from_settings(settings)
    assert policy.csr_max_bytes == 1024
    assert dataclasses.replace(policy, csr_max_bytes=4096) == IssuancePolicy.from_settings(
        Settings.from_env({})
    )


def test_the_ca_expiring_before_the_start_is_named_in_the_refusal() -> None:
    authority = make_test_authority(now=NOW - timedelta(days=1))
    late = authority.certificate.not_valid_after_utc + timedelta(days=1)
    with pytest.raises(
        ValueError, match=r"^the issuing CA expires before the certificate would start\Z"
    ):
        build_device_certificate(_csr(), "dev-1", authority, IssuancePolicy(), late)


def test_a_ca_expiring_as_the_certificate_would_start_issues_nothing() -> None:
    """The last second a certificate can be issued is one before the CA's notAfter minus
    the backdate; at that instant the certificate would be valid for no time at all."""
    authority = make_test_authority(now=NOW - timedelta(days=1))
    policy = IssuancePolicy(backdate_seconds=300)
    ca_end = authority.certificate.not_valid_after_utc
    last = ca_end + policy.backdate - timedelta(seconds=1)
    cert = build_device_certificate(_csr(), "dev-1", authority, policy, last)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(seconds=1)
    with pytest.raises(ValueError, match=r"^the issuing CA expires before the certificate"):
        build_device_certificate(_csr(), "dev-1", authority, policy, ca_end + policy.backdate)


@pytest.mark.parametrize("serial", [1, (1 << 159) - 1])
def test_a_serial_at_either_end_of_its_range_is_used(serial: int) -> None:
    authority = make_test_authority(now=NOW - timedelta(days=1))
    cert = build_device_certificate(
        _csr(), "dev-1", authority, IssuancePolicy(), NOW, serial=serial
    )
    assert cert.serial_number == serial


@pytest.mark.parametrize("serial", [0, 1 << 159])
def test_a_serial_past_its_range_is_refused_by_name(serial: int) -> None:
    authority = make_test_authority(now=NOW - timedelta(days=1))
    with pytest.raises(ValueError, match=r"^a serial is a positive integer of at most 159 bits\Z"):
        build_device_certificate(_csr(), "dev-1", authority, IssuancePolicy(), NOW, serial=serial)


def test_a_key_that_is_neither_ec_nor_rsa_is_refused_by_name() -> None:
    authority = make_test_authority(now=NOW - timedelta(days=1))
    key = ed25519.Ed25519PrivateKey.generate()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev-1")]))
        .sign(key, None)
    )
    with pytest.raises(
        ValueError, match=r"^device keys are EC or RSA \(check the CSR with csr_policy first\)\Z"
    ):
        build_device_certificate(csr, "dev-1", authority, IssuancePolicy(), NOW)

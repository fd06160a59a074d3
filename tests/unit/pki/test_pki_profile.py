from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from shared.pki.profile import IssuancePolicy, build_device_certificate, random_serial
from shared.settings import Settings
from tests.support.pki import (
    assert_is_device_leaf,
    make_csr,
    make_device_key,
    make_test_authority,
    verify_chain,
)

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize("kind", ["ec-p256", "ec-p384", "rsa-2048"])
@pytest.mark.parametrize("validity_days", [1, 30, 90])
def test_device_certificate_profile(kind: str, validity_days: int) -> None:
    authority = make_test_authority(now=NOW - timedelta(days=1))
    policy = IssuancePolicy(validity_days=validity_days, backdate_seconds=120)
    key = make_device_key(kind)
    csr = x509.load_pem_x509_csr(make_csr("dev-7", key))
    cert = build_device_certificate(csr, "dev-7", authority, policy, NOW)
    assert_is_device_leaf(
        cert, "dev-7", authority, validity_days=validity_days, backdate_seconds=120, now=NOW
    )
    assert cert.public_key() == key.public_key()
    assert cert.not_valid_before_utc == NOW - timedelta(seconds=120)
    assert cert.not_valid_after_utc == NOW + timedelta(days=validity_days)
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA384)
    assert authority.root is not None
    verify_chain(cert, authority.certificate, authority.root)


def test_requested_extensions_are_not_copied() -> None:
    authority = make_test_authority(now=NOW)
    key = make_device_key()
    pem = make_csr(
        "dev-1",
        key,
        extensions=[(x509.SubjectAlternativeName([x509.DNSName("dev-1")]), False)],
    )
    cert = build_device_certificate(
        x509.load_pem_x509_csr(pem), "dev-1", authority, IssuancePolicy(), NOW
    )
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)


def test_no_crl_url_means_no_distribution_point() -> None:
    authority = make_test_authority(now=NOW, crl_url=None)
    csr = x509.load_pem_x509_csr(make_csr("dev-1"))
    cert = build_device_certificate(csr, "dev-1", authority, IssuancePolicy(), NOW)
    assert_is_device_leaf(cert, "dev-1", authority)
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.CRLDistributionPoints)


def test_leaf_never_outlives_the_issuing_ca() -> None:
    authority = make_test_authority(now=NOW)
    late = authority.certificate.not_valid_after_utc - timedelta(days=3)
    csr = x509.load_pem_x509_csr(make_csr("dev-1"))
    cert = build_device_certificate(csr, "dev-1", authority, IssuancePolicy(validity_days=30), late)
    assert cert.not_valid_after_utc == authority.certificate.not_valid_after_utc


def test_p256_issuer_signs_with_sha256() -> None:
    authority = make_test_authority(now=NOW, curve=ec.SECP256R1())
    csr = x509.load_pem_x509_csr(make_csr("dev-1"))
    cert = build_device_certificate(csr, "dev-1", authority, IssuancePolicy(), NOW)
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    cert.verify_directly_issued_by(authority.certificate)


def test_serials_are_random_159_bit() -> None:
    serials = {random_serial() for _ in range(200)}
    assert len(serials) == 200
    assert all(s.bit_length() == 159 for s in serials)


def test_naive_time_is_refused() -> None:
    authority = make_test_authority(now=NOW)
    csr = x509.load_pem_x509_csr(make_csr("dev-1"))
    with pytest.raises(ValueError, match="UTC"):
        build_device_certificate(
            csr, "dev-1", authority, IssuancePolicy(), NOW.replace(tzinfo=None)
        )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"validity_days": 0},
        {"validity_days": 91},
        {"renewal_fraction": 0.49},
        {"renewal_fraction": 0.91},
        {"renewal_jitter": -0.01},
        {"renewal_jitter": 0.25},
        {"backdate_seconds": -1},
        {"csr_max_bytes": 10},
        {"csr_max_bytes": 4097},
    ],
)
def test_policy_bounds(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        IssuancePolicy(**kwargs)  # type: ignore[arg-type]


def test_policy_from_settings() -> None:
    settings = Settings.from_env(
        {
            "CERTROLL_CERT_VALIDITY_DAYS": "7",
            "CERTROLL_RENEWAL_FRACTION": "0.8",
            "CERTROLL_RENEWAL_JITTER": "0.1",
            "CERTROLL_BACKDATE_SECONDS": "60",
            "CERTROLL_CSR_MAX_BYTES": "4096",
        }
    )
    assert IssuancePolicy.from_settings(settings) == IssuancePolicy(7, 0.8, 0.1, 60, 4096)
    defaults = IssuancePolicy.from_settings(Settings.from_env({}))
    assert defaults.validity_days == 30
    assert defaults.csr_max_bytes == 4096
    with pytest.raises(ValueError, match="validity_days"):
        IssuancePolicy.from_settings(Settings.from_env({"CERTROLL_CERT_VALIDITY_DAYS": "365"}))

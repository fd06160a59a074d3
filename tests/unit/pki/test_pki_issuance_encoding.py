"""The issuance path's encoding shortcuts give exactly what the plain library calls give."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from shared.adapters.memory import MemoryAuditLog, MemoryLedger
from shared.clock import ManualClock
from shared.domain.errors import CsrRejectedError
from shared.pki.csr_policy import check_signature
from shared.pki.issuer import Issuer, der_to_pem
from shared.pki.profile import (
    DEVICE_BASIC_CONSTRAINTS,
    DEVICE_EKU,
    DEVICE_KEY_USAGE,
    IssuancePolicy,
    build_device_certificate,
    subject_key_identifier,
)
from tests.support.pki import make_csr, make_device_key, make_test_authority

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
DER = serialization.Encoding.DER


def _typed_builder_tbs(
    csr: x509.CertificateSigningRequest, authority_crl: str | None, serial: int
) -> tuple[bytes, bytes]:
    """(certroll's TBS, the TBS of the same certificate made with the chained setters)."""
    authority = make_test_authority(now=NOW - timedelta(days=1), crl_url=authority_crl)
    policy = IssuancePolicy(backdate_seconds=120)
    cert = build_device_certificate(csr, "dev-7", authority, policy, NOW, serial=serial)
    issuing = authority.certificate
    ski = issuing.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    public = csr.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev-7")]))
        .issuer_name(issuing.subject)
        .public_key(public)  # type: ignore[arg-type]
        .serial_number(serial)
        .not_valid_before(NOW - timedelta(seconds=120))
        .not_valid_after(NOW + timedelta(days=30))
        .add_extension(DEVICE_BASIC_CONSTRAINTS, critical=True)
        .add_extension(DEVICE_KEY_USAGE, critical=True)
        .add_extension(DEVICE_EKU, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)  # type: ignore[arg-type]
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    )
    if authority_crl:
        dp = x509.DistributionPoint(
            [x509.UniformResourceIdentifier(authority_crl)], None, None, None
        )
        builder = builder.add_extension(x509.CRLDistributionPoints([dp]), critical=False)
    reference = builder.sign(authority.key, hashes.SHA384())
    return cert.tbs_certificate_bytes, reference.tbs_certificate_bytes


@pytest.mark.parametrize("kind", ["ec-p256", "ec-p384", "rsa-2048"])
@pytest.mark.parametrize("crl_url", ["http://127.0.0.1/pki/crl/issuing.crl", None])
def test_certificate_bytes_equal_the_typed_builder(kind: str, crl_url: str | None) -> None:
    csr = x509.load_pem_x509_csr(make_csr("dev-7", make_device_key(kind)))
    ours, reference = _typed_builder_tbs(csr, crl_url, serial=(1 << 158) | 12345)
    assert ours == reference


@pytest.mark.parametrize("kind", ["ec-p256", "ec-p384", "rsa-2048", "rsa-3072"])
def test_subject_key_identifier_is_method_one(kind: str) -> None:
    public = make_device_key(kind).public_key()
    ext = subject_key_identifier(public)  # type: ignore[arg-type]
    expected = x509.SubjectKeyIdentifier.from_public_key(public)  # type: ignore[arg-type]
    assert ext.value.public_bytes() == expected.public_bytes()
    assert (ext.oid, ext.critical) == (expected.oid, False)


def test_ca_expired_before_the_start_is_refused() -> None:
    authority = make_test_authority(now=NOW)
    late = authority.certificate.not_valid_after_utc + timedelta(days=1)
    csr = x509.load_pem_x509_csr(make_csr("dev-1"))
    with pytest.raises(ValueError, match="expires before"):
        build_device_certificate(csr, "dev-1", authority, IssuancePolicy(), late)


@pytest.mark.parametrize("serial", [0, -5, 1 << 159])
def test_serial_out_of_range_is_refused(serial: int) -> None:
    authority = make_test_authority(now=NOW)
    csr = x509.load_pem_x509_csr(make_csr("dev-1"))
    with pytest.raises(ValueError, match="159 bits"):
        build_device_certificate(csr, "dev-1", authority, IssuancePolicy(), NOW, serial=serial)


def _csr_variants() -> list[tuple[str, bytes]]:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev-1")])
    ec256 = ec.generate_private_key(ec.SECP256R1())
    ec384 = ec.generate_private_key(ec.SECP384R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    builder = x509.CertificateSigningRequestBuilder().subject_name(name)
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    signed = {
        "ec-p256-sha256": builder.sign(ec256, hashes.SHA256()),
        "ec-p384-sha384": builder.sign(ec384, hashes.SHA384()),
        "ec-p256-sha512": builder.sign(ec256, hashes.SHA512()),
        "rsa-pkcs1-sha256": builder.sign(rsa_key, hashes.SHA256()),
        "rsa-pss-sha256": builder.sign(rsa_key, hashes.SHA256(), rsa_padding=pss),
    }
    out = []
    for label, csr in signed.items():
        der = csr.public_bytes(DER)
        out.append((label, der))
        bad_sig = bytearray(der)
        bad_sig[-3] ^= 0x01  # inside the signature value
        out.append((f"{label}-bad-signature", bytes(bad_sig)))
        bad_tbs = bytearray(der)
        at = der.index(b"dev-1")
        bad_tbs[at + 4] ^= 0x01  # the signed subject no longer matches: dev-0
        out.append((f"{label}-bad-subject", bytes(bad_tbs)))
    return out


@pytest.mark.parametrize(("label", "der"), _csr_variants())
def test_proof_of_possession_agrees_with_is_signature_valid(label: str, der: bytes) -> None:
    csr = x509.load_der_x509_csr(der)
    expected = csr.is_signature_valid
    assert expected is (not label.endswith(("bad-signature", "bad-subject")))
    if expected:
        check_signature(csr, csr.public_key())
        check_signature(csr)
    else:
        with pytest.raises(CsrRejectedError) as info:
            check_signature(csr, csr.public_key())
        assert info.value.code == "csr_signature_invalid"


def test_signature_algorithm_of_another_key_type_is_refused() -> None:
    der = bytearray(make_csr("dev-1", encoding=DER))
    ecdsa_sha256 = bytes.fromhex("300a06082a8648ce3d040302")
    rsa_sha256 = bytes.fromhex("300d06092a864886f70d01010b0500")
    assert der[:2] == b"\x30\x81"
    assert der.count(ecdsa_sha256) == 1
    swapped = bytearray(der.replace(ecdsa_sha256, rsa_sha256))
    swapped[2] += len(rsa_sha256) - len(ecdsa_sha256)  # outer SEQUENCE length
    csr = x509.load_der_x509_csr(bytes(swapped))
    assert isinstance(csr.signature_algorithm_parameters, padding.PKCS1v15)
    with pytest.raises(CsrRejectedError) as info:
        check_signature(csr, csr.public_key())
    assert info.value.code == "csr_signature_invalid"


def test_issued_pem_and_thumbprint_come_from_the_certificate() -> None:
    authority = make_test_authority(now=NOW - timedelta(days=1))
    ledger = MemoryLedger()
    issuer = Issuer(authority, ledger, MemoryAuditLog(), IssuancePolicy(), ManualClock(NOW))
    issued = issuer.issue("dev-9", make_csr("dev-9"), request_id="r1", trigger="t", actor="a")
    cert = issued.certificate
    assert issued.record.pem == cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
    assert issued.record.thumbprint_sha256 == hashlib.sha256(cert.public_bytes(DER)).hexdigest()
    assert issued.record.serial == format(cert.serial_number, "x")
    assert cert.serial_number.bit_length() == 159
    assert ledger.get(issued.record.serial).pem == issued.record.pem
    assert issued.chain_pem.startswith(issued.record.pem)


@pytest.mark.parametrize("size", [1, 47, 48, 49, 96, 500])
def test_der_to_pem_is_64_column_base64(size: int) -> None:
    der = bytes(range(256)) * 2
    body = der_to_pem(der[:size], "TEST")
    lines = body.splitlines()
    assert lines[0] == "-----BEGIN TEST-----"
    assert lines[-1] == "-----END TEST-----"
    assert all(len(line) <= 64 for line in lines[1:-1])
    assert all(len(line) == 64 for line in lines[1:-2])
    assert base64.b64decode("".join(lines[1:-1])) == der[:size]

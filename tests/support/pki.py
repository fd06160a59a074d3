"""PKI helpers for tests: a fast in-memory issuing CA, device CSRs, certificate checks.

    from tests.support.pki import make_test_authority, make_csr, assert_is_device_leaf

``make_test_authority()`` uses a plain in-memory EC key (no files, no HSM) and takes a
few milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.pki.local_ca import GeneratedPki, generate_pki
from shared.ports import IssuingAuthority

TEST_CRL_URL = "http://127.0.0.1:10000/devstoreaccount1/pki/crl/issuing.crl"

DeviceKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def make_test_pki(
    now: datetime | None = None, *, curve: ec.EllipticCurve | None = None
) -> GeneratedPki:
    return generate_pki(now=now or datetime.now(UTC), curve=curve)


def authority_from_pki(
    pki: GeneratedPki,
    *,
    key: CertificateIssuerPrivateKeyTypes | None = None,
    key_id: str = "memory:test",
    crl_url: str | None = TEST_CRL_URL,
) -> IssuingAuthority:
    return IssuingAuthority(
        certificate=pki.issuing_certificate,
        key=key or pki.issuing_key,
        key_id=key_id,
        chain=(pki.issuing_certificate,),
        root=pki.root_certificate,
        crl_url=crl_url,
    )


def make_test_authority(
    tmp_path: Path | None = None,
    *,
    crl_url: str | None = TEST_CRL_URL,
    now: datetime | None = None,
    curve: ec.EllipticCurve | None = None,
) -> IssuingAuthority:
    """A fresh issuing CA (EC P-384 unless ``curve``) with its root in ``.root``.

    When ``tmp_path`` is given, ``root.pem`` and ``issuing.pem`` are written there too
    (e.g. for ``openssl verify``).
    """
    pki = make_test_pki(now, curve=curve)
    if tmp_path is not None:
        write_pem(tmp_path / "root.pem", [pki.root_certificate])
        write_pem(tmp_path / "issuing.pem", [pki.issuing_certificate])
    return authority_from_pki(pki, crl_url=crl_url)


def write_pem(path: Path, certificates: Iterable[x509.Certificate]) -> Path:
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates))
    return path


def make_device_key(kind: str = "ec-p256") -> DeviceKey:
    """``ec-p256``, ``ec-p384``, ``ec-p521``, ``ec-k256`` or ``rsa-<bits>``."""
    curves: dict[str, ec.EllipticCurve] = {
        "ec-p256": ec.SECP256R1(),
        "ec-p384": ec.SECP384R1(),
        "ec-p521": ec.SECP521R1(),
        "ec-k256": ec.SECP256K1(),
    }
    if kind in curves:
        return ec.generate_private_key(curves[kind])
    if kind.startswith("rsa-"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(kind[4:]))
    raise ValueError(f"unknown key kind {kind!r}")


def make_csr(
    device_id: str,
    key: DeviceKey | None = None,
    *,
    subject: x509.Name | None = None,
    extensions: Iterable[tuple[x509.ExtensionType, bool]] = (),
    algorithm: hashes.HashAlgorithm | None = None,
    encoding: serialization.Encoding = serialization.Encoding.PEM,
) -> bytes:
    """A CSR for ``device_id`` (CN only unless ``subject``), signed with SHA-256 by default."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        subject
        if subject is not None
        else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])
    )
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    signing_key = key if key is not None else make_device_key()
    csr = builder.sign(signing_key, algorithm or hashes.SHA256())  # type: ignore[arg-type]
    return csr.public_bytes(encoding)


def verify_chain(leaf: x509.Certificate, issuing: x509.Certificate, root: x509.Certificate) -> None:
    """Signature chain leaf -> issuing -> root (raises on any break)."""
    leaf.verify_directly_issued_by(issuing)
    issuing.verify_directly_issued_by(root)
    root.verify_directly_issued_by(root)


def assert_is_device_leaf(
    cert: x509.Certificate,
    device_id: str,
    authority: IssuingAuthority,
    *,
    validity_days: int | None = None,
    backdate_seconds: int | None = None,
    now: datetime | None = None,
) -> None:
    """Check every field and extension (value and critical flag) of a device certificate."""
    cert.verify_directly_issued_by(authority.certificate)
    assert cert.version is x509.Version.v3
    assert cert.subject == x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])
    assert cert.issuer == authority.certificate.subject
    assert 0 < cert.serial_number < 2**159
    assert cert.serial_number.bit_length() == 159
    if now is not None and backdate_seconds is not None:
        assert cert.not_valid_before_utc == (now - timedelta(seconds=backdate_seconds)).replace(
            microsecond=0
        )
    if now is not None and validity_days is not None:
        expected = min(
            (now + timedelta(days=validity_days)).replace(microsecond=0),
            authority.certificate.not_valid_after_utc,
        )
        assert cert.not_valid_after_utc == expected

    exts = {ext.oid: ext for ext in cert.extensions}
    expected_oids = {
        x509.BasicConstraints.oid,
        x509.KeyUsage.oid,
        x509.ExtendedKeyUsage.oid,
        x509.SubjectKeyIdentifier.oid,
        x509.AuthorityKeyIdentifier.oid,
    }
    if authority.crl_url:
        expected_oids.add(x509.CRLDistributionPoints.oid)
    assert set(exts) == expected_oids, sorted(o.dotted_string for o in exts)

    bc = exts[x509.BasicConstraints.oid]
    assert bc.critical is True
    assert bc.value == x509.BasicConstraints(ca=False, path_length=None)

    ku = exts[x509.KeyUsage.oid]
    assert ku.critical is True
    assert isinstance(ku.value, x509.KeyUsage)
    assert ku.value.digital_signature is True
    for flag in (
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
    ):
        assert getattr(ku.value, flag) is False, flag

    eku = exts[x509.ExtendedKeyUsage.oid]
    assert eku.critical is False
    assert list(eku.value) == [ExtendedKeyUsageOID.CLIENT_AUTH]  # type: ignore[call-overload]

    ski = exts[x509.SubjectKeyIdentifier.oid]
    assert ski.critical is False
    assert ski.value == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())  # type: ignore[arg-type]

    aki = exts[x509.AuthorityKeyIdentifier.oid]
    assert aki.critical is False
    issuing_ski = authority.certificate.extensions.get_extension_for_class(
        x509.SubjectKeyIdentifier
    ).value
    assert isinstance(aki.value, x509.AuthorityKeyIdentifier)
    assert aki.value.key_identifier == issuing_ski.digest
    assert aki.value.authority_cert_issuer is None

    if authority.crl_url:
        dp = exts[x509.CRLDistributionPoints.oid]
        assert dp.critical is False
        assert isinstance(dp.value, x509.CRLDistributionPoints)
        points = list(dp.value)
        assert len(points) == 1
        assert points[0].full_name == [x509.UniformResourceIdentifier(authority.crl_url)]
        assert points[0].reasons is None
        assert points[0].crl_issuer is None


# --------------------------------------------------------------------------- pkilint


def pkilint_certificate(der: bytes, max_severity: str = "WARNING") -> list[str]:
    """pkilint's RFC 5280 findings at ``max_severity`` or worse, as ``SEVERITY code: msg``."""
    from pkilint import loader
    from pkilint.pkix import certificate, extension, name

    validator = certificate.create_pkix_certificate_validator_container(
        certificate.create_decoding_validators(
            name.ATTRIBUTE_TYPE_MAPPINGS, extension.EXTENSION_MAPPINGS
        ),
        [
            certificate.create_issuer_validator_container([]),
            certificate.create_validity_validator_container(),
            certificate.create_subject_validator_container([]),
            certificate.create_extensions_validator_container([]),
            certificate.create_spki_validator_container([]),
        ],
    )
    doc = loader.RFC5280CertificateDocumentLoader().load_der_document(der, "certificate")
    return _findings(validator.validate(doc.root), max_severity)


def pkilint_crl(der: bytes, max_severity: str = "WARNING") -> list[str]:
    """pkilint's RFC 5280 CRL findings at ``max_severity`` or worse."""
    from pkilint import loader, pkix
    from pkilint.pkix import crl, extension, name

    validator = crl.create_pkix_crl_validator_container(
        [
            pkix.create_attribute_decoder(name.ATTRIBUTE_TYPE_MAPPINGS),
            pkix.create_extension_decoder(extension.EXTENSION_MAPPINGS),
        ],
        [
            crl.create_issuer_validator_container([]),
            crl.create_validity_validator_container([]),
            crl.create_extensions_validator_container([]),
        ],
    )
    doc = loader.RFC5280CertificateListDocumentLoader().load_der_document(der, "crl")
    return _findings(validator.validate(doc.root), max_severity)


def _findings(results: object, max_severity: str) -> list[str]:
    from pkilint.validation import ValidationFindingSeverity

    limit = ValidationFindingSeverity[max_severity]
    found = []
    for result in results:  # type: ignore[attr-defined]
        for desc in result.finding_descriptions:
            if desc.finding.severity <= limit:
                found.append(f"{desc.finding.severity.name} {desc.finding.code}: {desc.message}")
    return found

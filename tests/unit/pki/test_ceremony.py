"""The issuing CA ceremony as pure functions: CSR, the root's signature, proof of possession."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from shared.adapters.filekey import FileSigningKey
from shared.domain.errors import InvalidRequestError
from shared.pki import ceremony
from shared.pki.local_ca import GeneratedPki, build_root_certificate, generate_pki
from tests.support.pki import make_csr, pkilint_certificate

NOW = datetime(2030, 5, 1, 12, 0, tzinfo=UTC)
DER = serialization.Encoding.DER
SUBJECT = ceremony.parse_subject("CN=Example Issuing CA 7,O=Example")
CRL_URL = "https://pki.example.net/pki/crl/root.crl"


class CountingKey(FileSigningKey):
    """An in-memory key behind the signing-key base class, counting ``_sign_digest`` calls."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        super().__init__(Path("memory"), None, loaded=key)
        self.signed: list[str] = []

    def _sign_digest(self, digest: bytes, algorithm: hashes.HashAlgorithm) -> bytes:
        self.signed.append(algorithm.name)
        return super()._sign_digest(digest, algorithm)


@pytest.fixture(scope="module")
def pki() -> GeneratedPki:
    return generate_pki(now=NOW - timedelta(days=1))


def _issuing_key() -> CountingKey:
    return CountingKey(ec.generate_private_key(ec.SECP384R1()))


def assert_is_issuing_ca(
    cert: x509.Certificate,
    root: x509.Certificate,
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    *,
    crl_url: str | None,
) -> None:
    """Every field and extension (value and critical flag) of an issuing CA certificate."""
    cert.verify_directly_issued_by(root)
    assert cert.version is x509.Version.v3
    assert cert.subject == subject
    assert cert.issuer == root.subject
    assert cert.public_key() == public_key
    assert cert.serial_number.bit_length() == 159
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA384)  # root key is P-384
    exts = {ext.oid: ext for ext in cert.extensions}
    expected = {
        x509.BasicConstraints.oid,
        x509.KeyUsage.oid,
        x509.SubjectKeyIdentifier.oid,
        x509.AuthorityKeyIdentifier.oid,
    }
    if crl_url:
        expected.add(x509.CRLDistributionPoints.oid)
    assert set(exts) == expected
    bc = exts[x509.BasicConstraints.oid]
    assert bc.critical is True
    assert bc.value == x509.BasicConstraints(ca=True, path_length=0)
    ku = exts[x509.KeyUsage.oid]
    assert ku.critical is True
    assert isinstance(ku.value, x509.KeyUsage)
    assert (ku.value.key_cert_sign, ku.value.crl_sign) == (True, True)
    for flag in (
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
    ):
        assert getattr(ku.value, flag) is False, flag
    ski = exts[x509.SubjectKeyIdentifier.oid]
    assert ski.critical is False
    assert ski.value == x509.SubjectKeyIdentifier.from_public_key(public_key)
    aki = exts[x509.AuthorityKeyIdentifier.oid]
    assert aki.critical is False
    root_ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert isinstance(aki.value, x509.AuthorityKeyIdentifier)
    assert aki.value.key_identifier == root_ski.digest
    assert aki.value.authority_cert_issuer is None
    if crl_url:
        dp = exts[x509.CRLDistributionPoints.oid]
        assert dp.critical is False
        assert isinstance(dp.value, x509.CRLDistributionPoints)
        assert [p.full_name for p in dp.value] == [[x509.UniformResourceIdentifier(crl_url)]]
    assert pkilint_certificate(cert.public_bytes(DER)) == []


# --------------------------------------------------------------------------- CSR


@pytest.mark.parametrize(
    ("make_key", "hash_name"),
    [
        (lambda: ec.generate_private_key(ec.SECP384R1()), "sha384"),
        (lambda: ec.generate_private_key(ec.SECP256R1()), "sha256"),
    ],
)
def test_issuing_csr_is_signed_through_the_key_and_asks_for_a_ca(
    make_key: Callable[[], ec.EllipticCurvePrivateKey], hash_name: str
) -> None:
    key = CountingKey(make_key())
    csr = ceremony.build_issuing_csr(key, SUBJECT)
    assert key.signed == [hash_name]  # one signature, through the backend's sign()
    assert csr.is_signature_valid
    assert csr.public_key() == key.public_key()
    assert csr.subject == SUBJECT
    assert csr.signature_hash_algorithm is not None
    assert csr.signature_hash_algorithm.name == hash_name
    bc = csr.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical is True
    assert bc.value == x509.BasicConstraints(ca=True, path_length=0)
    ku = csr.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical is True
    assert (ku.value.key_cert_sign, ku.value.crl_sign, ku.value.digital_signature) == (
        True,
        True,
        False,
    )
    ceremony.check_issuing_csr(csr)  # the root side accepts it


def test_issuing_csr_with_rsa_key() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    csr = ceremony.build_issuing_csr(key, SUBJECT)
    assert csr.is_signature_valid
    assert isinstance(csr.signature_hash_algorithm, hashes.SHA256)


def test_issuing_csr_refuses_an_ed25519_key() -> None:
    with pytest.raises(InvalidRequestError) as info:
        ceremony.build_issuing_csr(ed25519.Ed25519PrivateKey.generate(), SUBJECT)
    assert info.value.code == "key_not_allowed"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("CN=Issuing", x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Issuing")])),
        (
            "CN=certroll Issuing CA,O=certroll",
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "certroll"),
                    x509.NameAttribute(NameOID.COMMON_NAME, "certroll Issuing CA"),
                ]
            ),
        ),
    ],
)
def test_parse_subject(text: str, expected: x509.Name) -> None:
    assert ceremony.parse_subject(text) == expected


@pytest.mark.parametrize(
    "text", ["", "O=only org", "CN=a,CN=b", "CN=", "garbage", "CN=" + "x" * 65]
)
def test_parse_subject_refuses(text: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        ceremony.parse_subject(text)
    assert info.value.code == "subject_invalid"


def test_default_subject_is_the_local_issuing_name() -> None:
    local = generate_pki(now=NOW).issuing_certificate.subject
    assert ceremony.parse_subject(ceremony.DEFAULT_ISSUING_SUBJECT) == local


# --------------------------------------------------------------------------- root signs


def test_root_signs_issuing_csr_with_ca_profile(pki: GeneratedPki) -> None:
    key = _issuing_key()
    csr = ceremony.build_issuing_csr(key, SUBJECT)
    cert = ceremony.sign_issuing_csr(
        csr,
        pki.root_certificate,
        pki.root_key,
        now=NOW,
        root_crl_url=CRL_URL,
    )
    assert_is_issuing_ca(cert, pki.root_certificate, SUBJECT, key.public_key(), crl_url=CRL_URL)
    assert cert.not_valid_before_utc == NOW - timedelta(minutes=5)
    assert cert.not_valid_after_utc == NOW + timedelta(days=1825)


def test_requested_extensions_are_not_copied(pki: GeneratedPki) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(SUBJECT)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("evil.example")]), critical=False)
        .sign(key, hashes.SHA384())
    )
    cert = ceremony.sign_issuing_csr(
        csr,
        pki.root_certificate,
        pki.root_key,
        now=NOW,
        days=30,
    )
    assert_is_issuing_ca(cert, pki.root_certificate, SUBJECT, key.public_key(), crl_url=None)
    assert cert.not_valid_after_utc == NOW + timedelta(days=30)


def test_validity_never_passes_the_root() -> None:
    root_key = ec.generate_private_key(ec.SECP384R1())
    root = build_root_certificate(root_key, now=NOW, validity=timedelta(days=100))
    csr = ceremony.build_issuing_csr(_issuing_key(), SUBJECT)
    cert = ceremony.sign_issuing_csr(csr, root, root_key, now=NOW + timedelta(days=10))
    assert cert.not_valid_after_utc == root.not_valid_after_utc
    assert cert.not_valid_after_utc < NOW + timedelta(days=10 + 1825)


def _tampered(csr: x509.CertificateSigningRequest) -> x509.CertificateSigningRequest:
    der = bytearray(csr.public_bytes(DER))
    der[-5] ^= 0x01  # inside the signature value
    return x509.load_der_x509_csr(bytes(der))


def _csr(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    *extensions: tuple[x509.ExtensionType, bool],
) -> x509.CertificateSigningRequest:
    builder = x509.CertificateSigningRequestBuilder().subject_name(SUBJECT)
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(key, hashes.SHA256())


CA0 = (x509.BasicConstraints(ca=True, path_length=0), True)


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (
            lambda: _tampered(ceremony.build_issuing_csr(_issuing_key(), SUBJECT)),
            "csr_signature_invalid",
        ),
        (lambda: x509.load_pem_x509_csr(make_csr("device-1")), "csr_not_ca"),
        (
            lambda: _csr(
                ec.generate_private_key(ec.SECP384R1()),
                (x509.BasicConstraints(ca=False, path_length=None), True),
            ),
            "csr_not_ca",
        ),
        (
            lambda: _csr(
                ec.generate_private_key(ec.SECP384R1()),
                (x509.BasicConstraints(ca=True, path_length=1), True),
            ),
            "csr_pathlen_not_allowed",
        ),
        (lambda: _csr(ec.generate_private_key(ec.SECP521R1()), CA0), "csr_key_not_allowed"),
        (
            lambda: _csr(rsa.generate_private_key(public_exponent=65537, key_size=1024), CA0),
            "csr_key_not_allowed",
        ),
        (
            lambda: (
                x509.CertificateSigningRequestBuilder()
                .subject_name(SUBJECT)
                .add_extension(*CA0)
                .sign(ed25519.Ed25519PrivateKey.generate(), None)
            ),
            "csr_key_not_allowed",
        ),
        (
            lambda: (
                x509.CertificateSigningRequestBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "x")]))
                .add_extension(*CA0)
                .sign(ec.generate_private_key(ec.SECP384R1()), hashes.SHA384())
            ),
            "subject_invalid",
        ),
    ],
)
def test_bad_csr_is_refused(
    pki: GeneratedPki, make: Callable[[], x509.CertificateSigningRequest], code: str
) -> None:
    csr = make()
    with pytest.raises(InvalidRequestError) as info:
        ceremony.sign_issuing_csr(csr, pki.root_certificate, pki.root_key, now=NOW)
    assert info.value.code == code


@pytest.mark.parametrize(
    "data", [b"", b"not a csr", b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n"]
)
def test_malformed_csr_bytes(data: bytes) -> None:
    with pytest.raises(InvalidRequestError) as info:
        ceremony.load_csr(data)
    assert info.value.code == "csr_malformed"


def test_csr_loads_from_pem_and_der() -> None:
    csr = ceremony.build_issuing_csr(_issuing_key(), SUBJECT)
    assert ceremony.load_csr(csr.public_bytes(serialization.Encoding.PEM)) == csr
    assert ceremony.load_csr(csr.public_bytes(DER)) == csr


def test_root_key_must_match_root_certificate(pki: GeneratedPki) -> None:
    csr = ceremony.build_issuing_csr(_issuing_key(), SUBJECT)
    other = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(InvalidRequestError) as info:
        ceremony.sign_issuing_csr(csr, pki.root_certificate, other, now=NOW)
    assert info.value.code == "root_key_mismatch"


def test_root_must_be_able_to_certify_a_ca(pki: GeneratedPki) -> None:
    # the issuing CA (pathlen 0) cannot stand in for the root
    csr = ceremony.build_issuing_csr(_issuing_key(), SUBJECT)
    with pytest.raises(InvalidRequestError) as info:
        ceremony.sign_issuing_csr(
            csr,
            pki.issuing_certificate,
            pki.issuing_key,
            now=NOW,
        )
    assert info.value.code == "root_not_ca"
    assert "pathlen 0" in info.value.message


@pytest.mark.parametrize(
    ("when", "code"),
    [
        (NOW + timedelta(days=21 * 365), "certificate_expired"),
        (NOW - timedelta(days=30), "certificate_not_yet_valid"),
    ],
)
def test_root_must_be_valid_now(pki: GeneratedPki, when: datetime, code: str) -> None:
    csr = ceremony.build_issuing_csr(_issuing_key(), SUBJECT)
    with pytest.raises(InvalidRequestError) as info:
        ceremony.sign_issuing_csr(csr, pki.root_certificate, pki.root_key, now=when)
    assert info.value.code == code


@pytest.mark.parametrize("days", [0, -1, ceremony.MAX_ISSUING_DAYS + 1])
def test_days_out_of_range(pki: GeneratedPki, days: int) -> None:
    csr = ceremony.build_issuing_csr(_issuing_key(), SUBJECT)
    with pytest.raises(InvalidRequestError) as info:
        ceremony.sign_issuing_csr(
            csr,
            pki.root_certificate,
            pki.root_key,
            now=NOW,
            days=days,
        )
    assert info.value.code == "days_invalid"


def test_naive_now_is_a_programming_error(pki: GeneratedPki) -> None:
    csr = ceremony.build_issuing_csr(_issuing_key(), SUBJECT)
    with pytest.raises(ValueError, match="timezone-aware"):
        ceremony.sign_issuing_csr(
            csr,
            pki.root_certificate,
            pki.root_key,
            now=datetime(2030, 1, 1),
        )


# --------------------------------------------------------------------------- private keys


def _pem(
    key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey, password: bytes | None
) -> bytes:
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def test_load_private_key_with_password() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    loaded = ceremony.load_private_key(_pem(key, b"s3cret"), b"s3cret")
    assert loaded.public_key() == key.public_key()


@pytest.mark.parametrize(
    ("data_password", "given", "code"),
    [
        (b"s3cret", None, "key_password"),
        (None, b"s3cret", "key_password"),
        (b"s3cret", b"wrong", "key_unreadable"),
    ],
)
def test_load_private_key_refuses(
    data_password: bytes | None, given: bytes | None, code: str
) -> None:
    data = _pem(ec.generate_private_key(ec.SECP256R1()), data_password)
    with pytest.raises(InvalidRequestError) as info:
        ceremony.load_private_key(data, given)
    assert info.value.code == code


def test_load_private_key_refuses_garbage_and_ed25519() -> None:
    with pytest.raises(InvalidRequestError) as info:
        ceremony.load_private_key(b"-----BEGIN PRIVATE KEY-----\nAA==\n", None)
    assert info.value.code == "key_unreadable"
    with pytest.raises(InvalidRequestError) as info:
        ceremony.load_private_key(_pem(ed25519.Ed25519PrivateKey.generate(), None), None)
    assert info.value.code == "key_not_allowed"


# --------------------------------------------------------------------------- proof of possession


def test_verification_certificate(pki: GeneratedPki) -> None:
    code = "0D2C86A5F4E5B1A19DF3C2E8A2B1F0E9C8D7B6A594837261"
    assert isinstance(pki.issuing_key, ec.EllipticCurvePrivateKey)
    key = CountingKey(pki.issuing_key)
    cert = ceremony.build_verification_certificate(pki.issuing_certificate, key, code, now=NOW)
    assert key.signed == ["sha384"]
    cert.verify_directly_issued_by(pki.issuing_certificate)
    assert cert.subject == x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, code)])
    assert cert.issuer == pki.issuing_certificate.subject
    assert cert.not_valid_before_utc == NOW - timedelta(minutes=5)
    assert cert.not_valid_after_utc == NOW + timedelta(days=1)
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert (bc.critical, bc.value.ca) == (True, False)
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert (ku.critical, ku.value.digital_signature, ku.value.key_cert_sign) == (True, True, False)
    issuing_ski = pki.issuing_certificate.extensions.get_extension_for_class(
        x509.SubjectKeyIdentifier
    ).value
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == issuing_ski.digest
    assert pkilint_certificate(cert.public_bytes(DER)) == []


def test_verification_certificate_never_outlives_the_ca() -> None:
    made = generate_pki(now=NOW)
    end = made.issuing_certificate.not_valid_after_utc
    cert = ceremony.build_verification_certificate(
        made.issuing_certificate, made.issuing_key, "abc", now=end - timedelta(hours=2)
    )
    assert cert.not_valid_after_utc == end


@pytest.mark.parametrize("code", ["", "has space", "a/b", "x" * 65, "ünïcode", "CN=x,O=y"])
def test_verification_code_refused(pki: GeneratedPki, code: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        ceremony.build_verification_certificate(
            pki.issuing_certificate, pki.issuing_key, code, now=NOW
        )
    assert info.value.code == "verification_code_invalid"


def test_verification_key_must_match_ca(pki: GeneratedPki) -> None:
    with pytest.raises(InvalidRequestError) as info:
        ceremony.build_verification_certificate(
            pki.issuing_certificate, pki.root_key, "ABC123", now=NOW
        )
    assert info.value.code == "ca_key_mismatch"


def test_verification_needs_a_ca_certificate(pki: GeneratedPki) -> None:
    leaf = ceremony.build_verification_certificate(
        pki.issuing_certificate, pki.issuing_key, "ABC123", now=NOW
    )
    # the leaf's own key is gone; a fresh self-consistent leaf shows the CA check
    key = ec.generate_private_key(ec.SECP256R1())
    not_ca = (
        x509.CertificateBuilder()
        .subject_name(leaf.subject)
        .issuer_name(leaf.subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(InvalidRequestError) as info:
        ceremony.build_verification_certificate(not_ca, key, "ABC123", now=NOW)
    assert info.value.code == "ca_not_ca"

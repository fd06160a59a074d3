from __future__ import annotations

import base64
from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.domain.errors import CSR_REJECTION_CODES, CsrRejectedError
from shared.pki.csr_policy import check_csr
from tests.support.pki import make_csr, make_device_key

DEVICE = "dev-001"
MAX = 8192


def _cn(*values: str, extra: tuple[x509.NameAttribute, ...] = ()) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, v) for v in values] + list(extra))


def _ku(**flags: bool) -> x509.KeyUsage:
    base = dict.fromkeys(
        (
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    base.update(flags)
    return x509.KeyUsage(**base)


# A P-256 CSR for dev-001 signed with ecdsa-with-SHA1 (made with `openssl req -sha1`;
# cryptography refuses to create one).
SHA1_CSR = b"""-----BEGIN CERTIFICATE REQUEST-----
MIHLMHQCAQAwEjEQMA4GA1UEAwwHZGV2LTAwMTBZMBMGByqGSM49AgEGCCqGSM49
AwEHA0IABIahQF3d9FncgMA25GBqdt/NvehR/cCOJfwkQimTpvIyKP/cDqNXCZb9
ImOqEKJZKfEATe/IPLM/0MxmEG8yPB6gADAJBgcqhkjOPQQBA0gAMEUCIBa2sZFr
Qbd8ylrAaXxyonnT+ocIU07lPPNnfd9f5r0gAiEA/kOk03nAMKT2lwAlTpEoO+Ew
ASv1gEtuSsQrYObVKw8=
-----END CERTIFICATE REQUEST-----
"""


def _tampered() -> bytes:
    der = make_csr(DEVICE, encoding=serialization.Encoding.DER)
    # flip one bit in the last byte of the signature: still parses, no longer verifies
    return der[:-1] + bytes([der[-1] ^ 0x01])


def _ed25519_csr() -> bytes:
    key = ed25519.Ed25519PrivateKey.generate()
    csr = x509.CertificateSigningRequestBuilder().subject_name(_cn(DEVICE)).sign(key, None)
    return csr.public_bytes(serialization.Encoding.PEM)


BAD_CSRS: list[tuple[str, str, Callable[[], bytes | str]]] = [
    ("bad device id", "device_id_invalid", lambda: make_csr(DEVICE)),
    ("too large", "csr_too_large", lambda: b"-----BEGIN CERTIFICATE REQUEST-----\n" + b"A" * MAX),
    ("garbage pem", "csr_malformed", lambda: "-----BEGIN CERTIFICATE REQUEST-----\nabc\n"),
    ("garbage der", "csr_malformed", lambda: b"\x30\x03\x02\x01\x00"),
    ("empty", "csr_malformed", lambda: b""),
    ("certificate not csr", "csr_malformed", lambda: base64.b64encode(b"x" * 40)),
    ("p521 key", "key_not_allowed", lambda: make_csr(DEVICE, make_device_key("ec-p521"))),
    ("secp256k1 key", "key_not_allowed", lambda: make_csr(DEVICE, make_device_key("ec-k256"))),
    ("rsa 1024", "key_not_allowed", lambda: make_csr(DEVICE, make_device_key("rsa-1024"))),
    ("ed25519", "key_not_allowed", _ed25519_csr),
    ("sha1", "signature_hash_not_allowed", lambda: SHA1_CSR),
    ("sha224", "signature_hash_not_allowed", lambda: make_csr(DEVICE, algorithm=hashes.SHA224())),
    ("tampered signature", "csr_signature_invalid", _tampered),
    ("other cn", "subject_mismatch", lambda: make_csr("dev-002")),
    ("cn case differs", "subject_mismatch", lambda: make_csr("DEV-001")),
    ("two cns", "subject_mismatch", lambda: make_csr(DEVICE, subject=_cn(DEVICE, DEVICE))),
    (
        "no cn",
        "subject_mismatch",
        lambda: make_csr(
            DEVICE, subject=x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "x")])
        ),
    ),
    (
        "ca requested",
        "extension_not_allowed",
        lambda: make_csr(DEVICE, extensions=[(x509.BasicConstraints(True, None), True)]),
    ),
    (
        "keyCertSign requested",
        "extension_not_allowed",
        lambda: make_csr(
            DEVICE, extensions=[(_ku(digital_signature=True, key_cert_sign=True), True)]
        ),
    ),
    (
        "cRLSign requested",
        "extension_not_allowed",
        lambda: make_csr(DEVICE, extensions=[(_ku(crl_sign=True), True)]),
    ),
    (
        "serverAuth requested",
        "extension_not_allowed",
        lambda: make_csr(
            DEVICE,
            extensions=[(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)],
        ),
    ),
    (
        "name constraints requested",
        "extension_not_allowed",
        lambda: make_csr(
            DEVICE,
            extensions=[(x509.NameConstraints([x509.DNSName("a.example")], None), True)],
        ),
    ),
    (
        "san other dns",
        "san_not_allowed",
        lambda: make_csr(
            DEVICE, extensions=[(x509.SubjectAlternativeName([x509.DNSName("evil")]), False)]
        ),
    ),
    (
        "san two entries",
        "san_not_allowed",
        lambda: make_csr(
            DEVICE,
            extensions=[
                (
                    x509.SubjectAlternativeName(
                        [x509.DNSName(DEVICE), x509.UniformResourceIdentifier(DEVICE)]
                    ),
                    False,
                )
            ],
        ),
    ),
    (
        "san email",
        "san_not_allowed",
        lambda: make_csr(
            DEVICE,
            extensions=[(x509.SubjectAlternativeName([x509.RFC822Name("a@b.c")]), False)],
        ),
    ),
]


@pytest.mark.parametrize(
    ("code", "make"), [(c, m) for _, c, m in BAD_CSRS], ids=[n for n, _, _ in BAD_CSRS]
)
def test_bad_csr_is_rejected_with_its_code(code: str, make: Callable[[], bytes | str]) -> None:
    device = "bad id with spaces" if code == "device_id_invalid" else DEVICE
    with pytest.raises(CsrRejectedError) as info:
        check_csr(device, make(), max_bytes=MAX)
    assert info.value.code == code
    assert info.value.message
    assert str(info.value).startswith(f"{code}: ")


def test_every_policy_code_is_covered() -> None:
    covered = {code for _, code, _ in BAD_CSRS}
    # device_disallowed and key_reused are the issuer's checks (ledger), not the CSR policy's
    assert covered == CSR_REJECTION_CODES - {"device_disallowed", "key_reused"}


@pytest.mark.parametrize(
    "device_id",
    ["", "x" * 65, "x" * 129, "a b", "dev/1", "dev#1", "dév", "dev\n", "dev+1"],
)
def test_device_id_syntax_rejected(device_id: str) -> None:
    with pytest.raises(CsrRejectedError) as info:
        check_csr(device_id, make_csr("x"), max_bytes=MAX)
    assert info.value.code == "device_id_invalid"


@pytest.mark.parametrize(
    "device_id", ["a", "x" * 64, "Dev-01.a_b:c", "%*?!(),=@$'", "MixedCase123"]
)
def test_device_id_syntax_accepted(device_id: str) -> None:
    accepted = check_csr(device_id, make_csr(device_id), max_bytes=MAX)
    assert accepted.device_id == device_id


@pytest.mark.parametrize("kind", ["ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096"])
def test_allowed_keys(kind: str) -> None:
    key = make_device_key(kind)
    accepted = check_csr(DEVICE, make_csr(DEVICE, key), max_bytes=MAX)
    assert accepted.public_key == key.public_key()


@pytest.mark.parametrize("algorithm", [hashes.SHA256(), hashes.SHA384(), hashes.SHA512()])
def test_allowed_hashes(algorithm: hashes.HashAlgorithm) -> None:
    accepted = check_csr(DEVICE, make_csr(DEVICE, algorithm=algorithm), max_bytes=MAX)
    assert accepted.csr.signature_hash_algorithm is not None
    assert accepted.csr.signature_hash_algorithm.name == algorithm.name


def test_harmless_requests_are_accepted_and_ignored() -> None:
    key = make_device_key()
    pem = make_csr(
        DEVICE,
        key,
        subject=_cn(DEVICE, extra=(x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme"),)),
        extensions=[
            (x509.BasicConstraints(False, None), True),
            (_ku(digital_signature=True, key_agreement=True), True),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False),
            (x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False),
            (x509.SubjectAlternativeName([x509.UniformResourceIdentifier(DEVICE)]), False),
        ],
    )
    accepted = check_csr(DEVICE, pem, max_bytes=MAX)
    assert accepted.device_id == DEVICE


def test_pem_and_der_give_the_same_csr_hash() -> None:
    key = make_device_key()
    pem = make_csr(DEVICE, key)
    csr = x509.load_pem_x509_csr(pem)
    der = csr.public_bytes(serialization.Encoding.DER)
    a = check_csr(DEVICE, pem, max_bytes=MAX)
    b = check_csr(DEVICE, der, max_bytes=MAX)
    c = check_csr(DEVICE, pem.decode("ascii"), max_bytes=MAX)
    assert a.csr_sha256 == b.csr_sha256 == c.csr_sha256
    assert len(a.csr_sha256) == 64


def test_size_bound_is_exact() -> None:
    pem = make_csr(DEVICE, ec.generate_private_key(ec.SECP256R1()))
    assert check_csr(DEVICE, pem, max_bytes=len(pem)).device_id == DEVICE
    with pytest.raises(CsrRejectedError) as info:
        check_csr(DEVICE, pem, max_bytes=len(pem) - 1)
    assert info.value.code == "csr_too_large"

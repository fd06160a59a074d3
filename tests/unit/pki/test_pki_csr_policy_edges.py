"""The CSR policy's rarer paths, each pinned by code and message: a public key that cannot
be read, extensions that cannot be parsed, a signature algorithm of the wrong key type or
unknown, text that is not UTF-8, PEM with blanks around it."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import ExtensionOID, NameOID

from shared.domain.errors import CsrRejectedError
from shared.pki.csr_policy import check_csr, check_key, check_signature, parse_csr
from tests.support.pki import make_csr, make_device_key

DEVICE = "dev-001"
MAX = 8192
P256_OID = bytes.fromhex("06082a8648ce3d030107")  # prime256v1
ECDSA_SHA256 = bytes.fromhex("300a06082a8648ce3d040302")
RSA_SHA256 = bytes.fromhex("300d06092a864886f70d01010b0500")
UNKNOWN_ALG = bytes.fromhex("3006060429010105")  # 1.1.1.1.5 (no such signature algorithm)
ED25519_OID = bytes.fromhex("06032b6570")  # 1.3.101.112
X25519_OID = bytes.fromhex("06032b656e")  # 1.3.101.110


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _tlv(tag: int, value: bytes) -> bytes:
    return bytes([tag]) + _der_len(len(value)) + value


def _with_algorithm(der: bytes, algorithm: bytes) -> bytes:
    """The CSR re-wrapped with another signatureAlgorithm (request info and signature kept)."""
    csr = x509.load_der_x509_csr(der)
    signature = _tlv(0x03, b"\x00" + csr.signature)
    return _tlv(0x30, csr.tbs_certrequest_bytes + algorithm + signature)


def _rejected(make: bytes | str, device_id: str = DEVICE) -> CsrRejectedError:
    with pytest.raises(CsrRejectedError) as caught:
        check_csr(device_id, make, max_bytes=MAX)
    return caught.value


def test_a_public_key_that_cannot_be_read_is_key_not_allowed() -> None:
    der = make_csr(DEVICE, encoding=serialization.Encoding.DER)
    unknown_curve = der.replace(P256_OID, P256_OID[:-1] + b"\x7f")
    with pytest.raises(UnsupportedAlgorithm):
        x509.load_der_x509_csr(unknown_curve).public_key()
    error = _rejected(unknown_curve)
    assert (error.code, error.message) == (
        "key_not_allowed",
        "the CSR's public key is not supported",
    )


def test_extensions_that_cannot_be_read_are_extension_not_allowed() -> None:
    garbage_san = x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, b"\x30\x03\x01")
    csr = make_csr(DEVICE, extensions=[(garbage_san, False)])
    error = _rejected(csr)
    assert error.code == "extension_not_allowed"
    assert error.message.startswith("the CSR's requested extensions cannot be read: ")


def test_an_ec_key_with_an_rsa_signature_algorithm_is_no_proof_of_possession() -> None:
    der = make_csr(DEVICE, encoding=serialization.Encoding.DER)
    assert ECDSA_SHA256 in der
    error = _rejected(_with_algorithm(der, RSA_SHA256))
    assert error.code == "csr_signature_invalid"
    assert error.message == (
        "the CSR signature does not verify with its own public key (no proof of possession)"
    )


def test_an_rsa_key_with_an_ecdsa_signature_algorithm_is_no_proof_of_possession() -> None:
    der = make_csr(DEVICE, make_device_key("rsa-2048"), encoding=serialization.Encoding.DER)
    assert _rejected(_with_algorithm(der, ECDSA_SHA256)).code == "csr_signature_invalid"


def test_the_rewrapped_csr_is_accepted_with_its_own_algorithm() -> None:
    der = make_csr(DEVICE, encoding=serialization.Encoding.DER)
    assert check_csr(DEVICE, _with_algorithm(der, ECDSA_SHA256), max_bytes=MAX).device_id == DEVICE


def test_an_unknown_signature_algorithm_is_named_so() -> None:
    der = make_csr(DEVICE, encoding=serialization.Encoding.DER)
    error = _rejected(_with_algorithm(der, UNKNOWN_ALG))
    assert error.code == "signature_hash_not_allowed"
    assert error.message == (
        "the CSR is signed with an unsupported algorithm; SHA-256, SHA-384 or SHA-512 is required"
    )


def test_a_hash_outside_the_list_is_named() -> None:
    csr = x509.load_pem_x509_csr(make_csr(DEVICE, algorithm=hashes.SHA224()))
    with pytest.raises(CsrRejectedError) as caught:
        check_signature(csr)
    assert caught.value.message.startswith("the CSR is signed with sha224;")


def test_an_ed25519_signature_names_no_hash() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DEVICE)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, None)
    with pytest.raises(CsrRejectedError) as caught:
        check_signature(csr)
    assert "signed with an unsupported algorithm;" in caught.value.message


def test_an_unsupported_key_type_is_named_without_underscores() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DEVICE)])
    pem = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(name)
        .sign(key, None)
        .public_bytes(serialization.Encoding.PEM)
    )
    error = _rejected(pem)
    assert error.code == "key_not_allowed"
    assert (
        error.message == "Ed25519PublicKey keys are not allowed (EC P-256/P-384 or RSA 2048-4096)"
    )


def test_a_key_agreement_key_in_a_csr_is_named_in_full() -> None:
    """An X25519 key (key agreement, no signatures) put in a CSR's SubjectPublicKeyInfo:
    refused before its signature is looked at, and named with its leading ``X``."""
    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DEVICE)])
    der = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(name)
        .sign(key, None)
        .public_bytes(serialization.Encoding.DER)
    )
    x25519_spki = der.replace(ED25519_OID, X25519_OID, 1)  # the key's; the signature's kept
    assert type(x509.load_der_x509_csr(x25519_spki).public_key()).__name__ == "X25519PublicKey"
    error = _rejected(x25519_spki)
    assert (error.code, error.message) == (
        "key_not_allowed",
        "X25519PublicKey keys are not allowed (EC P-256/P-384 or RSA 2048-4096)",
    )


class _DSAPublicKey:
    """A key of a backend's private class (cryptography's OpenSSL backend named its key
    classes so, ``_RSAPublicKey``, ``_DSAPublicKey``, before the Rust one)."""


def test_a_private_key_class_is_named_without_its_leading_underscore() -> None:
    with pytest.raises(CsrRejectedError) as caught:
        check_key(_DSAPublicKey())  # type: ignore[arg-type]
    assert (caught.value.code, caught.value.message) == (
        "key_not_allowed",
        "DSAPublicKey keys are not allowed (EC P-256/P-384 or RSA 2048-4096)",
    )


def test_text_that_is_not_utf8_is_malformed_not_a_crash() -> None:
    error = _rejected("\ud800-----BEGIN CERTIFICATE REQUEST-----")
    assert error.code == "csr_malformed"
    assert error.message == "not a PKCS#10 certificate signing request (PEM or DER)"


def test_pem_with_blanks_before_it_is_read_as_pem() -> None:
    pem = make_csr(DEVICE)
    assert check_csr(DEVICE, b"  \n" + pem + b"\n\n", max_bytes=MAX).device_id == DEVICE
    assert parse_csr(b"\t" + pem, MAX).subject == x509.load_pem_x509_csr(pem).subject


def test_a_device_id_rejection_lists_the_allowed_characters() -> None:
    error = _rejected(make_csr(DEVICE), device_id="bad/id")
    assert error.message == (
        "'bad/id' is not a valid device id (1-64 characters: letters, digits "
        "and - . % _ * ? ! ( ) , : = @ $ ')"
    )


@pytest.mark.parametrize(
    ("extension", "message"),
    [
        (
            x509.BasicConstraints(ca=True, path_length=None),
            "the CSR requests a CA certificate (basicConstraints CA:true)",
        ),
        (
            x509.KeyUsage(True, False, False, False, False, True, True, False, False),
            "the CSR requests keyCertSign/cRLSign key usage",
        ),
        (
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
            "the CSR requests an extended key usage other than clientAuth",
        ),
        (
            x509.SubjectAlternativeName([x509.DNSName("other")]),
            "a subjectAltName may hold only one URI or DNS name equal to the device id",
        ),
    ],
)
def test_each_refused_extension_says_what_was_asked(
    extension: x509.ExtensionType, message: str
) -> None:
    error = _rejected(make_csr(DEVICE, extensions=[(extension, False)]))
    assert (error.code, error.message) == (
        "san_not_allowed"
        if isinstance(extension, x509.SubjectAlternativeName)
        else "extension_not_allowed",
        message,
    )

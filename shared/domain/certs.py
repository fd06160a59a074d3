"""Certificate facts in the forms the model speaks (see :mod:`shared.domain.model`).

A thumbprint is the lower-case hex SHA-256 of the DER certificate (IoT Hub may also name
a certificate by its SHA-1 thumbprint); a serial is lower-case hex without leading zeros.
"""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes


def sha256_thumbprint(cert: x509.Certificate) -> str:
    """Lower-case hex SHA-256 of the DER certificate."""
    return cert.fingerprint(hashes.SHA256()).hex()


def sha1_thumbprint(cert: x509.Certificate) -> str:
    """Lower-case hex SHA-1 of the DER certificate (IoT Hub accepts either thumbprint)."""
    return cert.fingerprint(hashes.SHA1()).hex()


def serial_hex(serial: int) -> str:
    """Lower-case hex serial without leading zeros."""
    return format(serial, "x")


def certificate_pem(cert: x509.Certificate) -> str:
    """The certificate as PEM text."""
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def spki_der(public_key: CertificatePublicKeyTypes) -> bytes:
    """The DER SubjectPublicKeyInfo of ``public_key``: two keys are the same key exactly
    when these bytes are equal."""
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_sha256(public_key: CertificatePublicKeyTypes) -> str:
    """Lower-case hex SHA-256 of :func:`spki_der`: names a public key (the ledger's
    revoked-key look-up)."""
    return hashlib.sha256(spki_der(public_key)).hexdigest()


def pem_key_sha256(pem: str) -> str | None:
    """:func:`key_sha256` of the first certificate in ``pem``; None when it does not
    parse (a ledger record without a readable certificate names no key)."""
    try:
        cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
    except ValueError:
        return None
    return key_sha256(cert.public_key())

"""Certificate facts in the forms the model speaks (see :mod:`shared.domain.model`).

A thumbprint is the lower-case hex SHA-256 of the DER certificate (IoT Hub may also name
a certificate by its SHA-1 thumbprint); a serial is lower-case hex without leading zeros.
"""

from __future__ import annotations

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

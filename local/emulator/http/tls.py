"""TLS for the emulator's REST front end on loopback.

``loopback_tls(issuer_certificate, issuer_key)`` issues a short-lived server certificate
for ``127.0.0.1``, ``::1`` and ``localhost`` from a CA of certroll's local PKI (for
example ``generate_pki()``'s issuing CA) and returns the server's ``ssl.SSLContext``
together with the PEM a client must trust (the root, which must be self-signed: TLS
clients verify up to a self-signed anchor). Clients pass that
file as their CA bundle (azure-core ``connection_verify``, requests ``verify``).
"""

from __future__ import annotations

import ipaddress
import ssl
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.pki.algorithms import signature_hash

LOOPBACK_NAMES = ("localhost",)
LOOPBACK_IPS = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class LoopbackTls:
    context: ssl.SSLContext  # the server's
    certificate: x509.Certificate  # the server's leaf
    ca_file: Path  # PEM of the root (and the issuer): what clients trust


def server_certificate(
    issuer_certificate: x509.Certificate,
    issuer_key: CertificateIssuerPrivateKeyTypes,
    key: ec.EllipticCurvePrivateKey,
    *,
    now: datetime | None = None,
    days: int = 7,
) -> x509.Certificate:
    """A TLS server certificate for the loopback names, signed by the issuer."""
    when = now or datetime.now(UTC)
    san = [x509.DNSName(n) for n in LOOPBACK_NAMES] + [
        x509.IPAddress(ipaddress.ip_address(ip)) for ip in LOOPBACK_IPS
    ]
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(issuer_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(when - timedelta(minutes=5))
        .not_valid_after(when + timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(
                issuer_certificate.public_key()  # type: ignore[arg-type]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(issuer_key, signature_hash(issuer_key))
    )


def loopback_tls(
    issuer_certificate: x509.Certificate,
    issuer_key: CertificateIssuerPrivateKeyTypes,
    *,
    root: x509.Certificate | None = None,
    directory: Path | None = None,
    now: datetime | None = None,
) -> LoopbackTls:
    """A server context for the loopback names and the CA file clients trust.

    The files (server chain, its key, the CA) are written to ``directory`` (a fresh
    private temporary directory when None): ``ssl`` loads certificates from files only.
    """
    folder = directory or Path(tempfile.mkdtemp(prefix="certroll-tls-"))
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = server_certificate(issuer_certificate, issuer_key, key, now=now)
    pem = serialization.Encoding.PEM
    chain = folder / "server-chain.pem"
    chain.write_bytes(leaf.public_bytes(pem) + issuer_certificate.public_bytes(pem))
    key_file = folder / "server-key.pem"
    key_file.touch(mode=0o600)
    key_file.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    ca_file = folder / "ca.pem"
    anchor = root or issuer_certificate  # the issuer itself when it is a root
    ca_file.write_bytes(anchor.public_bytes(pem))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(chain), str(key_file))
    return LoopbackTls(context, leaf, ca_file)

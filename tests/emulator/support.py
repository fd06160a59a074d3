"""Test PKI and device helpers for the emulator tests (EC P-256, ``cryptography`` only)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shared.domain.model import CertificateSlot

# one key for every leaf keeps the tests fast; certificates still differ (serial, CN)
_LEAF_KEY = ec.generate_private_key(ec.SECP256R1())


@dataclass
class Ca:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def issue(
        self,
        cn: str,
        not_before: datetime,
        days: float = 30,
        *,
        ca: bool = False,
        key: ec.EllipticCurvePrivateKey | None = None,
    ) -> x509.Certificate:
        return _build(cn, key or _LEAF_KEY, self.cert.subject, self.key, not_before, days, ca)

    def sub_ca(self, cn: str, not_before: datetime, days: float = 365) -> Ca:
        key = ec.generate_private_key(ec.SECP256R1())
        return Ca(self.issue(cn, not_before, days, ca=True, key=key), key)


def _build(
    cn: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    not_before: datetime,
    days: float,
    ca: bool,
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )


def make_root(cn: str, not_before: datetime, days: float = 3650) -> Ca:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    return Ca(_build(cn, key, name, key, not_before, days, True), key)


def self_signed(cn: str, not_before: datetime, days: float = 30) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    return _build(cn, _LEAF_KEY, name, _LEAF_KEY, not_before, days, False)


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def slot(cert: x509.Certificate) -> CertificateSlot:
    return CertificateSlot(pem=pem(cert))


def thumbprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


@dataclass
class RecordingHandler:
    """A device handler that records calls and answers methods from a table."""

    answers: dict[str, tuple[int, Any]] = field(default_factory=dict)
    desired: list[tuple[dict[str, Any], int]] = field(default_factory=list)
    methods: list[tuple[str, Any]] = field(default_factory=list)

    def on_desired(self, patch: dict[str, Any], version: int) -> None:
        self.desired.append((patch, version))

    def on_method(self, name: str, payload: Any) -> tuple[int, Any]:
        self.methods.append((name, payload))
        return self.answers.get(name, (200, {"ok": name}))

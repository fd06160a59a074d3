"""A two-tier PKI for local use: a root CA and the issuing CA that signs device certificates.

``generate_pki`` builds everything in memory (tests, demos). ``init_pki`` writes it under
``$CERTROLL_HOME/pki``; the issuing key is an encrypted PEM (``file`` backend, development
only) or is generated inside a SoftHSM2 token and never leaves it (``pkcs11`` backend).
The root key is written as an encrypted PEM: in production the root is offline and only
its certificate is needed here.

Profile (RFC 5280): EC P-384 keys, ECDSA with SHA-384; root 20 years, basicConstraints
CA:true critical, keyUsage keyCertSign+cRLSign critical; issuing CA 5 years,
basicConstraints CA:true pathlen:0 critical, keyUsage keyCertSign+cRLSign critical;
SKI on both, AKI from the issuer's SKI, and, when a CRL base URL is given, a CRL
distribution point on the issuing CA pointing at the root CRL (``crl/root.crl``).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificateIssuerPublicKeyTypes,
)
from cryptography.x509.oid import NameOID

from shared.domain.errors import ConflictError, InvalidRequestError
from shared.pki.algorithms import signature_hash
from shared.pki.profile import random_serial
from shared.settings import Settings

logger = logging.getLogger(__name__)

KeyBackend = Literal["file", "pkcs11"]

ROOT_VALIDITY = timedelta(days=20 * 365 + 5)
ISSUING_VALIDITY = timedelta(days=5 * 365 + 1)
ROOT_CRL_VALIDITY = timedelta(days=30)
CA_BACKDATE = timedelta(minutes=5)

ROOT_CRL_NAME = "crl/root.crl"
ISSUING_CRL_NAME = "crl/issuing.crl"
ISSUING_CERT_NAME = "ca/issuing.pem"
ROOT_CERT_NAME = "ca/root.pem"

ROOT_CERT_FILE = "root.pem"
ROOT_KEY_FILE = "root-key.pem"
ROOT_CRL_FILE = "root.crl"
ISSUING_CERT_FILE = "issuing.pem"
ISSUING_KEY_FILE = "issuing-key.pem"
PASSWORD_FILE = "key-password"
PIN_FILE = "pkcs11-pin"
METADATA_FILE = "pki.json"


def ca_name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "certroll"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _ski(public_key: CertificateIssuerPublicKeyTypes) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(public_key)


CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def build_root_certificate(
    key: CertificateIssuerPrivateKeyTypes,
    *,
    now: datetime,
    common_name: str = "certroll Root CA",
    validity: timedelta = ROOT_VALIDITY,
) -> x509.Certificate:
    """A self-signed root CA certificate for ``key``."""
    name = ca_name(common_name)
    ski = _ski(key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(random_serial())
        .not_valid_before(now - CA_BACKDATE)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(CA_KEY_USAGE, critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, signature_hash(key))
    )


def build_issuing_certificate(
    root_key: CertificateIssuerPrivateKeyTypes,
    root_certificate: x509.Certificate,
    issuing_public_key: CertificateIssuerPublicKeyTypes,
    *,
    now: datetime,
    common_name: str = "certroll Issuing CA",
    validity: timedelta = ISSUING_VALIDITY,
    root_crl_url: str | None = None,
) -> x509.Certificate:
    """The issuing CA certificate (pathlen 0), signed by the root."""
    root_ski = root_certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    not_after = min(now + validity, root_certificate.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(ca_name(common_name))
        .issuer_name(root_certificate.subject)
        .public_key(issuing_public_key)
        .serial_number(random_serial())
        .not_valid_before(now - CA_BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(CA_KEY_USAGE, critical=True)
        .add_extension(_ski(issuing_public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(root_ski.value),
            critical=False,
        )
    )
    if root_crl_url:
        builder = builder.add_extension(crl_distribution_points(root_crl_url), critical=False)
    return builder.sign(root_key, signature_hash(root_key))


def crl_distribution_points(url: str) -> x509.CRLDistributionPoints:
    return x509.CRLDistributionPoints(
        [
            x509.DistributionPoint(
                full_name=[x509.UniformResourceIdentifier(url)],
                relative_name=None,
                reasons=None,
                crl_issuer=None,
            )
        ]
    )


def build_empty_crl(
    key: CertificateIssuerPrivateKeyTypes,
    certificate: x509.Certificate,
    *,
    now: datetime,
    validity: timedelta = ROOT_CRL_VALIDITY,
) -> x509.CertificateRevocationList:
    """A CRL with no entries (the root's, which revokes nothing until the issuing CA rolls)."""
    ski = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateRevocationListBuilder()
        .issuer_name(certificate.subject)
        .last_update(now)
        .next_update(now + validity)
        .add_extension(x509.CRLNumber(int(now.timestamp())), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, signature_hash(key))
    )


@dataclass(frozen=True)
class GeneratedPki:
    root_key: CertificateIssuerPrivateKeyTypes
    root_certificate: x509.Certificate
    issuing_key: CertificateIssuerPrivateKeyTypes
    issuing_certificate: x509.Certificate
    root_crl: x509.CertificateRevocationList


def root_crl_url(crl_base_url: str) -> str | None:
    base = crl_base_url.strip().rstrip("/")
    return f"{base}/{ROOT_CRL_NAME}" if base else None


def generate_pki(
    *,
    now: datetime | None = None,
    crl_base_url: str = "",
    root_common_name: str = "certroll Root CA",
    issuing_common_name: str = "certroll Issuing CA",
    curve: ec.EllipticCurve | None = None,
    issuing_key: CertificateIssuerPrivateKeyTypes | None = None,
) -> GeneratedPki:
    """A fresh root + issuing CA in memory (EC P-384 unless ``curve`` says otherwise).

    ``issuing_key`` may be given (e.g. a key held in an HSM); otherwise one is generated.
    """
    when = now or datetime.now(UTC)
    if when.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    chosen = curve or ec.SECP384R1()
    root_key = ec.generate_private_key(chosen)
    root = build_root_certificate(root_key, now=when, common_name=root_common_name)
    ikey = issuing_key or ec.generate_private_key(chosen)
    issuing = build_issuing_certificate(
        root_key,
        root,
        ikey.public_key(),
        now=when,
        common_name=issuing_common_name,
        root_crl_url=root_crl_url(crl_base_url),
    )
    crl = build_empty_crl(root_key, root, now=when)
    return GeneratedPki(root_key, root, ikey, issuing, crl)


# --------------------------------------------------------------------------- on disk


@dataclass(frozen=True)
class PkiFiles:
    """Where ``init_pki`` put things."""

    backend: str
    key_id: str
    root_certificate: Path
    issuing_certificate: Path
    root_key: Path
    root_crl: Path
    issuing_key: Path | None  # None when the key lives in a token

    def to_dict(self) -> dict[str, str | None]:
        return {
            "backend": self.backend,
            "key_id": self.key_id,
            "root_certificate": str(self.root_certificate),
            "issuing_certificate": str(self.issuing_certificate),
            "root_key": str(self.root_key),
            "root_crl": str(self.root_crl),
            "issuing_key": str(self.issuing_key) if self.issuing_key else None,
        }


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _secret_from(setting: str, path: Path, settings: Settings, create: bool) -> str:
    """A secret from its setting, else from ``path`` (created with a random value if asked)."""
    value = settings.get(setting)
    if value:
        return value
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    if not create:
        return ""
    value = secrets.token_urlsafe(24)
    _write_private(path, value.encode())
    logger.info("generated a development secret in %s (set %s to choose one)", path, setting)
    return value


def file_key_password(home: Path, settings: Settings, *, create: bool = False) -> bytes | None:
    """CERTROLL_FILE_KEY_PASSWORD, else the generated ``pki/key-password`` (development)."""
    value = _secret_from(
        "CERTROLL_FILE_KEY_PASSWORD", home / "pki" / PASSWORD_FILE, settings, create
    )
    return value.encode() if value else None


def pkcs11_pin(home: Path, settings: Settings, *, create: bool = False) -> str:
    """CERTROLL_PKCS11_PIN, else the generated ``pki/pkcs11-pin`` (development)."""
    return _secret_from("CERTROLL_PKCS11_PIN", home / "pki" / PIN_FILE, settings, create)


def _encrypted_pem(key: CertificateIssuerPrivateKeyTypes, password: bytes | None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def recorded_key_backend(pki_dir: Path) -> str | None:
    """The key backend ``init_pki`` recorded in ``pki_dir/pki.json``; None when there is
    no (readable) record."""
    meta = pki_dir / METADATA_FILE
    try:
        recorded = json.loads(meta.read_text(encoding="utf-8")).get("backend")
    except (OSError, ValueError, AttributeError):
        return None
    return recorded if isinstance(recorded, str) and recorded else None


def init_pki(
    home: Path,
    backend: str = "file",
    force: bool = False,
    crl_base_url: str = "",
    *,
    settings: Settings | None = None,
    now: datetime | None = None,
) -> PkiFiles:
    """Create the local PKI under ``home/pki`` (see the module docstring).

    Raises :class:`ConflictError` when a PKI exists and ``force`` is false, and
    :class:`InvalidRequestError` for an unknown backend; nothing is written then.
    """
    if backend not in ("file", "pkcs11"):
        raise InvalidRequestError(
            "backend_invalid", f"unknown key backend {backend!r}: use file or pkcs11"
        )
    cfg = settings or Settings.from_env()
    pki = home / "pki"
    root_cert_path = pki / ROOT_CERT_FILE
    issuing_cert_path = pki / ISSUING_CERT_FILE
    existing = [p for p in (root_cert_path, issuing_cert_path) if p.exists()]
    if existing and not force:
        raise ConflictError(
            f"a PKI already exists in {pki} ({existing[0].name}); use --force to replace it"
        )
    when = now or datetime.now(UTC)
    password = file_key_password(home, cfg, create=True)

    issuing_key_path: Path | None
    if backend == "file":
        issuing_key: CertificateIssuerPrivateKeyTypes = ec.generate_private_key(ec.SECP384R1())
        issuing_key_path = pki / ISSUING_KEY_FILE
        key_id = f"file:{issuing_key_path}"
    else:
        from shared.adapters import pkcs11 as p11

        pin = pkcs11_pin(home, cfg, create=True)
        token_key = p11.create_issuing_key(
            module=p11.module_path(cfg.get("CERTROLL_PKCS11_MODULE")),
            token_label=cfg.get("CERTROLL_PKCS11_TOKEN"),
            key_label=cfg.get("CERTROLL_PKCS11_KEY_LABEL"),
            pin=pin,
            replace=force,
            softhsm_home=home / "softhsm",
        )
        issuing_key = token_key
        issuing_key_path = None
        key_id = token_key.key_id

    made = generate_pki(now=when, crl_base_url=crl_base_url, issuing_key=issuing_key)
    pki.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    _write_private(pki / ROOT_KEY_FILE, _encrypted_pem(made.root_key, password))
    if issuing_key_path is not None:
        _write_private(issuing_key_path, _encrypted_pem(made.issuing_key, password))
    root_cert_path.write_bytes(made.root_certificate.public_bytes(pem))
    issuing_cert_path.write_bytes(made.issuing_certificate.public_bytes(pem))
    (pki / ROOT_CRL_FILE).write_bytes(made.root_crl.public_bytes(serialization.Encoding.DER))
    files = PkiFiles(
        backend=backend,
        key_id=key_id,
        root_certificate=root_cert_path,
        issuing_certificate=issuing_cert_path,
        root_key=pki / ROOT_KEY_FILE,
        root_crl=pki / ROOT_CRL_FILE,
        issuing_key=issuing_key_path,
    )
    (pki / METADATA_FILE).write_text(
        json.dumps({**files.to_dict(), "created": when.isoformat()}, indent=2) + "\n",
        encoding="utf-8",
    )
    logger.info("PKI created in %s with the %s key backend (%s)", pki, backend, key_id)
    return files

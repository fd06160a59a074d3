"""The root CA: its CRL listing compromised issuing CAs, and the root on this machine
(development and the demo)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from shared.domain.certs import spki_der
from shared.domain.errors import InvalidRequestError
from shared.pki.algorithms import signature_hash
from shared.pki.local_ca import ROOT_CERT_FILE, ROOT_KEY_FILE
from shared.settings import Settings

__all__ = ["ROOT_CRL_VALIDITY", "LocalRoot", "build_root_crl"]


ROOT_CRL_VALIDITY = timedelta(days=30)


def build_root_crl(
    root_certificate: x509.Certificate,
    root_key: CertificateIssuerPrivateKeyTypes,
    revoked: Sequence[tuple[x509.Certificate, datetime]],
    *,
    now: datetime,
    previous: x509.CertificateRevocationList | None = None,
    validity: timedelta = ROOT_CRL_VALIDITY,
) -> x509.CertificateRevocationList:
    """The root's CRL: the entries of ``previous`` plus each issuing CA of ``revoked``
    (``cACompromise``), signed by the root key (on the offline root machine)."""
    if spki_der(root_key.public_key()) != spki_der(root_certificate.public_key()):
        raise InvalidRequestError("root_key_mismatch", "the root key is not the root's")
    for cert, _at in revoked:
        if cert.issuer != root_certificate.subject:
            raise InvalidRequestError(
                "not_issued_by_root", f"{cert.subject.rfc4514_string()} is not the root's"
            )
    ski = root_certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(root_certificate.subject)
        .last_update(now)
        .next_update(now + validity)
        .add_extension(x509.CRLNumber(int(now.timestamp() * 1000)), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    )
    listed: set[int] = set()
    for cert, at in revoked:
        listed.add(cert.serial_number)
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(at)
            .add_extension(x509.CRLReason(x509.ReasonFlags.ca_compromise), critical=False)
            .build()
        )
    for entry in previous or ():
        if entry.serial_number not in listed:
            builder = builder.add_revoked_certificate(entry)
    return builder.sign(root_key, signature_hash(root_key))


@dataclass(frozen=True)
class LocalRoot:
    """The root CA's certificate and key on this machine (development and the demo: in
    production the root is offline and ``install`` takes the certificate it signed)."""

    certificate: x509.Certificate
    key: CertificateIssuerPrivateKeyTypes

    @classmethod
    def from_pki_dir(cls, settings: Settings) -> LocalRoot | None:
        from shared.pki.ceremony import load_private_key
        from shared.pki.local_ca import file_key_password

        cert_path = settings.pki_dir / ROOT_CERT_FILE
        key_path = settings.pki_dir / ROOT_KEY_FILE
        if not (cert_path.is_file() and key_path.is_file()):
            return None
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        password = file_key_password(settings.home, settings)
        key = load_private_key(key_path.read_bytes(), password, "root key")
        return cls(cert, key)

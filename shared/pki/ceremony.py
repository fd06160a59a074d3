"""The issuing CA's key ceremony: its CSR, the offline root's signature, proof of possession.

Three steps, each a pure function here and a ``certroll pki`` subcommand in
:mod:`cli.pki`:

1. :func:`build_issuing_csr` — a CSR for the issuing CA, signed through the issuing key's
   ``sign()`` (Key Vault, PKCS#11 or a development file: the private key never leaves the
   key store), asking for basicConstraints CA:true, pathlen 0 and keyCertSign + cRLSign.
2. :func:`sign_issuing_csr` — on the offline root machine: check the CSR (signature,
   a CA request, an allowed key, a CN) and the root (a CA whose key matches its
   certificate, valid now), then issue the issuing CA certificate with the profile of
   :mod:`shared.pki.local_ca`: basicConstraints CA:true pathlen 0 (critical), keyUsage
   keyCertSign + cRLSign (critical), SKI, AKI = root SKI, optionally a CRL distribution
   point to the root CRL; validity never beyond the root's.
3. :func:`build_verification_certificate` — the proof-of-possession certificate DPS and
   IoT Hub ask for: subject ``CN=<verification code>``, signed with the CA's key, valid
   for a day.

Requested extensions are never copied into the certificate; the profile decides. Every
bad input raises :class:`InvalidRequestError` (``code: message``) before anything is
signed.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
)
from cryptography.x509.oid import NameOID

from shared.domain.certs import spki_der
from shared.domain.errors import InvalidRequestError
from shared.pki.algorithms import signature_hash
from shared.pki.local_ca import CA_BACKDATE, CA_KEY_USAGE, crl_distribution_points
from shared.pki.profile import DEVICE_BASIC_CONSTRAINTS, DEVICE_KEY_USAGE, random_serial

#: Subject of the issuing CA unless ``--subject`` says otherwise (as ``pki init`` makes it).
DEFAULT_ISSUING_SUBJECT = "CN=certroll Issuing CA,O=certroll"
DEFAULT_ISSUING_DAYS = 1825
MAX_ISSUING_DAYS = 7305
VERIFICATION_VALIDITY = timedelta(days=1)

#: DPS / IoT Hub verification codes are hex strings; accept the usual token characters.
_CODE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_EC_CURVES = ("secp256r1", "secp384r1")
_RSA_BITS = (2048, 4096)
_CSR_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512)

IssuerKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _check_issuer_key(key: CertificateIssuerPrivateKeyTypes, what: str) -> None:
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise InvalidRequestError(
            "key_not_allowed", f"{what} is a {type(key).__name__}; only EC and RSA keys sign"
        )


def _check_aware(now: datetime) -> None:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")


# --------------------------------------------------------------------------- inputs


def parse_subject(text: str) -> x509.Name:
    """An RFC 4514 subject (``CN=...,O=...``) with exactly one non-empty CN."""
    try:
        name = x509.Name.from_rfc4514_string(text)
    except ValueError as exc:
        raise InvalidRequestError(
            "subject_invalid", f"{text!r} is not an RFC 4514 name such as 'CN=Issuing CA,O=Org'"
        ) from exc
    cns = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1 or not str(cns[0].value).strip():
        raise InvalidRequestError(
            "subject_invalid", f"the subject {text!r} must have exactly one non-empty CN"
        )
    if len(str(cns[0].value)) > 64:
        raise InvalidRequestError("subject_invalid", "the CN is longer than 64 characters")
    return name


def load_csr(data: bytes) -> x509.CertificateSigningRequest:
    """A PKCS#10 request from PEM or DER bytes."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_csr(data)
        return x509.load_der_x509_csr(data)
    except ValueError as exc:
        raise InvalidRequestError("csr_malformed", "not a PEM or DER PKCS#10 request") from exc


def load_certificate(data: bytes, what: str) -> x509.Certificate:
    """The first certificate of a PEM file (or a DER certificate)."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificates(data)[0]
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise InvalidRequestError(
            "certificate_malformed", f"the {what} is not a PEM or DER certificate"
        ) from exc


def load_private_key(data: bytes, password: bytes | None, what: str = "root key") -> IssuerKey:
    """An EC or RSA private key from a (possibly encrypted) PEM file."""
    try:
        key = serialization.load_pem_private_key(data, password=password or None)
    except TypeError as exc:  # encrypted without a password, or a password for a clear key
        raise InvalidRequestError(
            "key_password",
            f"the {what} is encrypted: give its password file"
            if not password
            else f"the {what} is not encrypted: give no password file",
        ) from exc
    except ValueError as exc:
        raise InvalidRequestError(
            "key_unreadable", f"the {what} is not a PEM private key or the password is wrong"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise InvalidRequestError(
            "key_not_allowed", f"the {what} is a {type(key).__name__}; only EC and RSA sign"
        )
    return key


def _basic_constraints(
    extensions: x509.Extensions,
) -> x509.BasicConstraints | None:
    try:
        return extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None


def _is_ca(cert: x509.Certificate) -> bool:
    bc = _basic_constraints(cert.extensions)
    if bc is None or not bc.ca:
        return False
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return ku.key_cert_sign


def _check_valid_now(cert: x509.Certificate, what: str, now: datetime) -> None:
    if now < cert.not_valid_before_utc:
        raise InvalidRequestError(
            "certificate_not_yet_valid",
            f"the {what} is valid only from {cert.not_valid_before_utc.isoformat()}",
        )
    if now >= cert.not_valid_after_utc:
        raise InvalidRequestError(
            "certificate_expired",
            f"the {what} expired at {cert.not_valid_after_utc.isoformat()}",
        )


def _ski(cert: x509.Certificate) -> x509.SubjectKeyIdentifier:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key())  # type: ignore[arg-type]


# --------------------------------------------------------------------------- 1. CSR


def build_issuing_csr(
    key: CertificateIssuerPrivateKeyTypes, subject: x509.Name
) -> x509.CertificateSigningRequest:
    """The issuing CA's CSR, signed with ``key`` (an HSM-held key signs in the HSM).

    Requests basicConstraints CA:true pathlen 0 and keyUsage keyCertSign + cRLSign (both
    critical); the root's profile decides what is granted.
    """
    _check_issuer_key(key, "the issuing key")
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(CA_KEY_USAGE, critical=True)
        .sign(key, signature_hash(key))
    )
    if not csr.is_signature_valid:  # a backend that signs with another key
        raise InvalidRequestError(
            "csr_signature_invalid", "the issuing key produced a CSR signature that does not verify"
        )
    return csr


# --------------------------------------------------------------------------- 2. root signs


def check_issuing_csr(csr: x509.CertificateSigningRequest) -> None:
    """The CSR is signed by its own key, asks for a CA, has an allowed key and a CN."""
    try:
        valid = csr.is_signature_valid
        hash_alg = csr.signature_hash_algorithm
        extensions = csr.extensions
        public = csr.public_key()
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise InvalidRequestError("csr_malformed", f"the CSR cannot be read: {exc}") from exc
    if not valid:
        raise InvalidRequestError(
            "csr_signature_invalid",
            "the CSR signature does not verify with its own public key (no proof of possession)",
        )
    if isinstance(public, ec.EllipticCurvePublicKey):
        if public.curve.name not in _EC_CURVES:
            raise InvalidRequestError(
                "csr_key_not_allowed", f"EC curve {public.curve.name} is not P-256 or P-384"
            )
    elif isinstance(public, rsa.RSAPublicKey):
        if not _RSA_BITS[0] <= public.key_size <= _RSA_BITS[1]:
            raise InvalidRequestError(
                "csr_key_not_allowed", f"RSA-{public.key_size} is not 2048-4096 bits"
            )
    else:
        raise InvalidRequestError(
            "csr_key_not_allowed", f"a {type(public).__name__} cannot be an issuing CA key here"
        )
    if not isinstance(hash_alg, _CSR_HASHES):
        name = hash_alg.name if hash_alg else "none"
        raise InvalidRequestError(
            "csr_signature_hash_not_allowed", f"the CSR is signed with {name}; use SHA-256/384/512"
        )
    bc = _basic_constraints(extensions)
    if bc is None or not bc.ca:
        raise InvalidRequestError(
            "csr_not_ca",
            "the CSR does not ask for a CA (basicConstraints CA:true); it is not an issuing "
            "CA request — make it with `certroll pki issuing-csr`",
        )
    if bc.path_length not in (None, 0):
        raise InvalidRequestError(
            "csr_pathlen_not_allowed",
            f"the CSR asks for pathlen {bc.path_length}; the issuing CA gets pathlen 0",
        )
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1 or not str(cns[0].value).strip():
        raise InvalidRequestError("subject_invalid", "the CSR subject needs exactly one CN")


def check_root(
    root_certificate: x509.Certificate, root_key: CertificateIssuerPrivateKeyTypes, now: datetime
) -> None:
    """The root is a CA that may sign a CA, its key matches, and it is valid now."""
    _check_issuer_key(root_key, "the root key")
    if spki_der(root_key.public_key()) != spki_der(root_certificate.public_key()):
        raise InvalidRequestError(
            "root_key_mismatch",
            f"the root key does not belong to the root certificate "
            f"{root_certificate.subject.rfc4514_string()}",
        )
    bc = _basic_constraints(root_certificate.extensions)
    if not _is_ca(root_certificate) or bc is None:
        raise InvalidRequestError(
            "root_not_ca", "the root certificate is not a CA (basicConstraints / keyCertSign)"
        )
    if bc.path_length == 0:
        raise InvalidRequestError(
            "root_not_ca", "the root certificate has pathlen 0: it cannot certify another CA"
        )
    _check_valid_now(root_certificate, "root certificate", now)


def sign_issuing_csr(
    csr: x509.CertificateSigningRequest,
    root_certificate: x509.Certificate,
    root_key: CertificateIssuerPrivateKeyTypes,
    *,
    now: datetime,
    days: int = DEFAULT_ISSUING_DAYS,
    root_crl_url: str | None = None,
) -> x509.Certificate:
    """The issuing CA certificate for ``csr``, signed by the root (profile: module docstring).

    The subject and public key come from the CSR; nothing else does.
    """
    _check_aware(now)
    if not 1 <= days <= MAX_ISSUING_DAYS:
        raise InvalidRequestError("days_invalid", f"--days must be 1-{MAX_ISSUING_DAYS}")
    check_issuing_csr(csr)
    check_root(root_certificate, root_key, now)
    public = csr.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)  # checked above
    not_before = max(now - CA_BACKDATE, root_certificate.not_valid_before_utc)
    not_after = min(now + timedelta(days=days), root_certificate.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(root_certificate.subject)
        .public_key(public)
        .serial_number(random_serial())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(CA_KEY_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(_ski(root_certificate)),
            critical=False,
        )
    )
    if root_crl_url:
        builder = builder.add_extension(crl_distribution_points(root_crl_url), critical=False)
    certificate = builder.sign(root_key, signature_hash(root_key))
    certificate.verify_directly_issued_by(root_certificate)
    return certificate


# --------------------------------------------------------------------------- 3. PoP


def check_verification_code(code: str) -> str:
    if not _CODE.fullmatch(code):
        raise InvalidRequestError(
            "verification_code_invalid",
            "the verification code must be 1-64 characters of A-Z a-z 0-9 . _ - "
            "(copy it from the DPS / IoT Hub certificate's verificationCode)",
        )
    return code


def build_verification_certificate(
    ca_certificate: x509.Certificate,
    key: CertificateIssuerPrivateKeyTypes,
    code: str,
    *,
    now: datetime,
    validity: timedelta = VERIFICATION_VALIDITY,
) -> x509.Certificate:
    """The proof-of-possession certificate: ``CN=<code>``, signed with the CA's ``key``.

    Its own key pair is generated here and thrown away; only the signature matters. Valid
    from five minutes ago for ``validity`` (never past the CA).
    """
    _check_aware(now)
    check_verification_code(code)
    _check_issuer_key(key, "the CA key")
    if spki_der(key.public_key()) != spki_der(ca_certificate.public_key()):
        raise InvalidRequestError(
            "ca_key_mismatch",
            f"the configured signing key does not belong to "
            f"{ca_certificate.subject.rfc4514_string()} (check CERTROLL_KEY_BACKEND and the key)",
        )
    if not _is_ca(ca_certificate):
        raise InvalidRequestError("ca_not_ca", "the CA certificate is not a CA")
    _check_valid_now(ca_certificate, "CA certificate", now)
    subject_key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, code)]))
        .issuer_name(ca_certificate.subject)
        .public_key(subject_key.public_key())
        .serial_number(random_serial())
        .not_valid_before(max(now - CA_BACKDATE, ca_certificate.not_valid_before_utc))
        .not_valid_after(min(now + validity, ca_certificate.not_valid_after_utc))
        .add_extension(DEVICE_BASIC_CONSTRAINTS, critical=True)
        .add_extension(DEVICE_KEY_USAGE, critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(subject_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(_ski(ca_certificate)),
            critical=False,
        )
        .sign(key, signature_hash(key))
    )
    try:
        certificate.verify_directly_issued_by(ca_certificate)
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise InvalidRequestError(
            "ca_key_mismatch", "the signature does not verify under the CA certificate"
        ) from exc
    return certificate

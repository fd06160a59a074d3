"""The issuing policy a device CSR must meet before anything is signed.

Checks, in order (the first failure wins and names its code):

1. ``device_id_invalid`` - the device id is not an IoT Hub device id (ASCII letters,
   digits and ``- . % _ * ? ! ( ) , : = @ $ '``) of 1-64 characters: IoT Hub allows 128,
   but the id is the certificate's CN and RFC 5280 bounds a CN at 64 characters.
2. ``csr_too_large`` - the CSR is bigger than ``CERTROLL_CSR_MAX_BYTES``.
3. ``csr_malformed`` - not a PEM or DER PKCS#10 request.
4. ``key_not_allowed`` - the key is not EC P-256/P-384 or RSA 2048-4096 bits.
5. ``signature_hash_not_allowed`` - the CSR is not signed with SHA-256, SHA-384 or SHA-512.
6. ``csr_signature_invalid`` - the CSR's signature does not verify (no proof of possession).
7. ``subject_mismatch`` - the subject does not hold exactly one CN, or it differs from the
   device id (other subject attributes are ignored: the certificate's subject is the CN).
8. ``extension_not_allowed`` - the CSR requests something certroll never grants: a CA
   (basicConstraints CA:true), keyCertSign/cRLSign, an extended key usage other than
   clientAuth, or any extension outside the list below.
9. ``san_not_allowed`` - a subjectAltName that is not exactly one URI or DNS name equal to
   the device id.

Requested extensions are never copied into the certificate; the profile alone decides its
content. Harmless requests that device tool chains add by default (basicConstraints
CA:false, keyUsage without CA bits, EKU clientAuth, subjectKeyIdentifier, a SAN that
matches the device id) are accepted and ignored; everything else is rejected so a client
asking for more than it can get learns so at once.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.domain.errors import CsrRejectedError

#: IoT Hub device-id characters (case-sensitive); at most 64 (RFC 5280 ub-common-name).
DEVICE_ID_PATTERN = re.compile(r"[A-Za-z0-9\-.%_*?!(),:=@$']{1,64}")

ALLOWED_CURVES: tuple[type[ec.EllipticCurve], ...] = (ec.SECP256R1, ec.SECP384R1)
RSA_MIN_BITS = 2048
RSA_MAX_BITS = 4096
ALLOWED_HASHES: tuple[type[hashes.HashAlgorithm], ...] = (
    hashes.SHA256,
    hashes.SHA384,
    hashes.SHA512,
)

#: Extensions a CSR may request (they are ignored); any other is ``extension_not_allowed``.
IGNORED_EXTENSIONS: frozenset[type[x509.ExtensionType]] = frozenset(
    {
        x509.BasicConstraints,
        x509.KeyUsage,
        x509.ExtendedKeyUsage,
        x509.SubjectKeyIdentifier,
        x509.SubjectAlternativeName,
    }
)


@dataclass(frozen=True)
class AcceptedCsr:
    """A CSR that passed the policy."""

    csr: x509.CertificateSigningRequest
    device_id: str
    csr_sha256: str  # hex SHA-256 of the DER request (the idempotency key)
    public_key: CertificatePublicKeyTypes


def csr_der_and_hash(csr: x509.CertificateSigningRequest) -> tuple[bytes, str]:
    der = csr.public_bytes(serialization.Encoding.DER)
    return der, hashlib.sha256(der).hexdigest()


def check_device_id(device_id: str) -> None:
    if not isinstance(device_id, str) or not DEVICE_ID_PATTERN.fullmatch(device_id):
        raise CsrRejectedError(
            "device_id_invalid",
            f"{device_id!r} is not a valid device id (1-64 characters: letters, digits "
            "and - . % _ * ? ! ( ) , : = @ $ ')",
        )


def parse_csr(data: str | bytes, max_bytes: int) -> x509.CertificateSigningRequest:
    """Size check and parse (PEM or DER); raises ``csr_too_large`` / ``csr_malformed``."""
    raw = data.encode("utf-8", errors="replace") if isinstance(data, str) else bytes(data)
    if len(raw) > max_bytes:
        raise CsrRejectedError(
            "csr_too_large", f"the CSR is {len(raw)} bytes; at most {max_bytes} are accepted"
        )
    try:
        if raw.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_csr(raw.strip())
        return x509.load_der_x509_csr(raw)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CsrRejectedError(
            "csr_malformed", "not a PKCS#10 certificate signing request (PEM or DER)"
        ) from exc


def check_key(public_key: CertificatePublicKeyTypes) -> None:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if isinstance(public_key.curve, ALLOWED_CURVES):
            return
        raise CsrRejectedError(
            "key_not_allowed", f"EC curve {public_key.curve.name} is not allowed (P-256, P-384)"
        )
    if isinstance(public_key, rsa.RSAPublicKey):
        if RSA_MIN_BITS <= public_key.key_size <= RSA_MAX_BITS:
            return
        raise CsrRejectedError(
            "key_not_allowed",
            f"RSA-{public_key.key_size} is not allowed (RSA {RSA_MIN_BITS}-{RSA_MAX_BITS} bits)",
        )
    raise CsrRejectedError(
        "key_not_allowed",
        f"{type(public_key).__name__.lstrip('_')} keys are not allowed "
        "(EC P-256/P-384 or RSA 2048-4096)",
    )


def check_signature(
    csr: x509.CertificateSigningRequest,
    public_key: CertificatePublicKeyTypes | None = None,
) -> None:
    """Allowed hash, then proof of possession: the CSR's signature over its request info
    verifies with its own public key (``public_key``: that key, when already parsed).

    The same verification ``csr.is_signature_valid`` makes (signature algorithm of the key's
    type, with the parameters and hash the CSR names), without parsing the key again.
    """
    try:
        algorithm = csr.signature_hash_algorithm
    except UnsupportedAlgorithm:
        algorithm = None
    if not isinstance(algorithm, ALLOWED_HASHES):
        name = algorithm.name if algorithm is not None else "an unsupported algorithm"
        raise CsrRejectedError(
            "signature_hash_not_allowed",
            f"the CSR is signed with {name}; SHA-256, SHA-384 or SHA-512 is required",
        )
    try:
        valid = _proves_possession(csr, public_key or csr.public_key(), algorithm)
    except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError):
        valid = False
    if not valid:
        raise CsrRejectedError(
            "csr_signature_invalid",
            "the CSR signature does not verify with its own public key (no proof of possession)",
        )


def _proves_possession(
    csr: x509.CertificateSigningRequest,
    public_key: CertificatePublicKeyTypes,
    algorithm: hashes.HashAlgorithm,
) -> bool:
    """True when the signature verifies; raises InvalidSignature when it does not."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        params = csr.signature_algorithm_parameters
        if not isinstance(params, ec.ECDSA):  # e.g. an RSA signature algorithm on an EC key
            return False
        public_key.verify(csr.signature, csr.tbs_certrequest_bytes, params)
        return True
    if isinstance(public_key, rsa.RSAPublicKey):
        params = csr.signature_algorithm_parameters
        if not isinstance(params, padding.PKCS1v15 | padding.PSS):
            return False
        public_key.verify(csr.signature, csr.tbs_certrequest_bytes, params, algorithm)
        return True
    return csr.is_signature_valid  # other key types are refused by check_key before this


def check_subject(csr: x509.CertificateSigningRequest, device_id: str) -> None:
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1:
        raise CsrRejectedError(
            "subject_mismatch", f"the subject must hold exactly one CN, it holds {len(cns)}"
        )
    cn = cns[0].value
    if cn != device_id:
        raise CsrRejectedError(
            "subject_mismatch", f"subject CN {cn!r} differs from the device id {device_id!r}"
        )


def _check_extension(ext: x509.Extension[x509.ExtensionType]) -> None:
    value = ext.value
    if type(value) not in IGNORED_EXTENSIONS:
        raise CsrRejectedError(
            "extension_not_allowed",
            f"the CSR requests extension {ext.oid.dotted_string}, which is never granted",
        )
    if isinstance(value, x509.BasicConstraints) and value.ca:
        raise CsrRejectedError(
            "extension_not_allowed", "the CSR requests a CA certificate (basicConstraints CA:true)"
        )
    if isinstance(value, x509.KeyUsage) and (value.key_cert_sign or value.crl_sign):
        raise CsrRejectedError(
            "extension_not_allowed", "the CSR requests keyCertSign/cRLSign key usage"
        )
    if isinstance(value, x509.ExtendedKeyUsage) and any(
        oid != ExtendedKeyUsageOID.CLIENT_AUTH for oid in value
    ):
        raise CsrRejectedError(
            "extension_not_allowed",
            "the CSR requests an extended key usage other than clientAuth",
        )


def check_san(san: x509.SubjectAlternativeName, device_id: str) -> None:
    names = list(san)
    ok = (
        len(names) == 1
        and isinstance(names[0], x509.UniformResourceIdentifier | x509.DNSName)
        and names[0].value == device_id
    )
    if not ok:
        raise CsrRejectedError(
            "san_not_allowed",
            "a subjectAltName may hold only one URI or DNS name equal to the device id",
        )


def check_extensions(csr: x509.CertificateSigningRequest, device_id: str) -> None:
    try:
        extensions = csr.extensions
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise CsrRejectedError(
            "extension_not_allowed", f"the CSR's requested extensions cannot be read: {exc}"
        ) from exc
    for ext in extensions:
        _check_extension(ext)
        if isinstance(ext.value, x509.SubjectAlternativeName):
            check_san(ext.value, device_id)


def check_csr(device_id: str, csr_pem: str | bytes, *, max_bytes: int) -> AcceptedCsr:
    """Run every check above; return the accepted CSR or raise :class:`CsrRejectedError`."""
    check_device_id(device_id)
    csr = parse_csr(csr_pem, max_bytes)
    try:
        public_key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CsrRejectedError("key_not_allowed", "the CSR's public key is not supported") from exc
    check_key(public_key)
    check_signature(csr, public_key)
    check_subject(csr, device_id)
    check_extensions(csr, device_id)
    _, digest = csr_der_and_hash(csr)
    return AcceptedCsr(csr=csr, device_id=device_id, csr_sha256=digest, public_key=public_key)

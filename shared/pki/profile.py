"""The device certificate profile and the issuance policy numbers.

A device certificate (RFC 5280, one builder chain, explicit ``critical=`` flags):

- subject: ``CN=<device id>`` only; issuer: the issuing CA's subject;
- serial: random positive 159-bit integer (bit 158 set, so always 20 DER bytes);
- validity: ``now - backdate`` to ``now + validity_days`` (never past the issuing CA);
- basicConstraints CA:false (critical);
- keyUsage digitalSignature only (critical): TLS client authentication signs with the
  key (ECDHE provides the key exchange), so keyAgreement/keyEncipherment are not granted;
- extendedKeyUsage clientAuth (not critical);
- subjectKeyIdentifier (method 1: SHA-1 of the public key), authorityKeyIdentifier from
  the issuing CA's SKI;
- cRLDistributionPoints with ``authority.crl_url`` when the authority has one.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.pki.algorithms import signature_hash
from shared.ports import IssuingAuthority

if TYPE_CHECKING:
    from shared.settings import Settings

MIN_VALIDITY_DAYS = 1
MAX_VALIDITY_DAYS = 90
EARLIEST_TIME = datetime(1950, 1, 1, tzinfo=UTC)  # RFC 5280 UTCTime


#: IoT Hub limits each twin string value to 4 KB (iot-hub-devguide-device-twins.md); the
#: CSR arrives as one (reported ``x509.csr.pem``)
TWIN_STRING_MAX_BYTES = 4096

@dataclass(frozen=True)
class IssuancePolicy:
    """How long device certificates live, and the issuing limits.

    ``renewal_fraction`` and ``renewal_jitter`` are checked here against the issuing
    limits; :class:`shared.domain.policy.RotationPolicy` decides when a device renews.
    """

    validity_days: int = 30
    renewal_fraction: float = 0.6667
    renewal_jitter: float = 0.05
    backdate_seconds: int = 300
    csr_max_bytes: int = 4096  # at most a twin string value (4 KB)

    def __post_init__(self) -> None:
        if not MIN_VALIDITY_DAYS <= self.validity_days <= MAX_VALIDITY_DAYS:
            raise ValueError(
                f"validity_days must be {MIN_VALIDITY_DAYS}-{MAX_VALIDITY_DAYS}, "
                f"not {self.validity_days}"
            )
        if not 0.5 <= self.renewal_fraction <= 0.9:
            raise ValueError(f"renewal_fraction must be 0.5-0.9, not {self.renewal_fraction}")
        if not 0.0 <= self.renewal_jitter <= 0.2:
            raise ValueError(f"renewal_jitter must be 0-0.2, not {self.renewal_jitter}")
        if self.renewal_fraction + self.renewal_jitter >= 1.0:
            raise ValueError("renewal_fraction + renewal_jitter must stay below 1")
        if not 0 <= self.backdate_seconds <= 86400:
            raise ValueError(f"backdate_seconds must be 0-86400, not {self.backdate_seconds}")
        if not 256 <= self.csr_max_bytes <= TWIN_STRING_MAX_BYTES:
            raise ValueError(
                f"csr_max_bytes must be 256-{TWIN_STRING_MAX_BYTES} (a CSR travels as one twin "
                f"string value, at most 4 KB), not {self.csr_max_bytes}"
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> IssuancePolicy:
        """From CERTROLL_CERT_VALIDITY_DAYS, _RENEWAL_FRACTION, _RENEWAL_JITTER,
        _BACKDATE_SECONDS and _CSR_MAX_BYTES (ValueError when out of range)."""
        return cls(
            validity_days=settings.int("CERTROLL_CERT_VALIDITY_DAYS"),
            renewal_fraction=settings.float("CERTROLL_RENEWAL_FRACTION"),
            renewal_jitter=settings.float("CERTROLL_RENEWAL_JITTER"),
            backdate_seconds=settings.int("CERTROLL_BACKDATE_SECONDS"),
            csr_max_bytes=settings.int("CERTROLL_CSR_MAX_BYTES"),
        )

    @property
    def validity(self) -> timedelta:
        return timedelta(days=self.validity_days)

    @property
    def backdate(self) -> timedelta:
        return timedelta(seconds=self.backdate_seconds)


def random_serial() -> int:
    """A random positive serial of exactly 159 bits."""
    return secrets.randbits(158) | (1 << 158)


def signature_hash_for(
    authority: IssuingAuthority,
) -> hashes.SHA256 | hashes.SHA384 | hashes.SHA512:
    """The hash the issuing key signs with (:func:`shared.pki.algorithms.signature_hash`)."""
    return signature_hash(authority.key)


DEVICE_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)
DEVICE_EKU = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
DEVICE_BASIC_CONSTRAINTS = x509.BasicConstraints(ca=False, path_length=None)


def _encoded(value: x509.ExtensionType, critical: bool) -> x509.Extension[x509.ExtensionType]:
    """``value`` as an extension whose DER is encoded once, here.

    The certificate holds the same bytes as when the typed value is encoded at every
    signature; reading it back yields the typed value again.
    """
    raw = x509.UnrecognizedExtension(value.oid, value.public_bytes())
    return x509.Extension(value.oid, critical, raw)


#: basicConstraints, keyUsage, extendedKeyUsage: the same in every device certificate.
_DEVICE_HEAD: tuple[x509.Extension[x509.ExtensionType], ...] = (
    _encoded(DEVICE_BASIC_CONSTRAINTS, critical=True),
    _encoded(DEVICE_KEY_USAGE, critical=True),
    _encoded(DEVICE_EKU, critical=False),
)
_SKI_OID = x509.SubjectKeyIdentifier.oid


def subject_key_identifier(
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
) -> x509.Extension[x509.ExtensionType]:
    """The subjectKeyIdentifier extension (RFC 5280 method 1: SHA-1 of the subjectPublicKey
    BIT STRING: the uncompressed point for EC, the PKCS#1 RSAPublicKey for RSA), exactly
    what ``x509.SubjectKeyIdentifier.from_public_key`` computes, without a SPKI round trip."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        bits = public_key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    else:
        bits = public_key.public_bytes(Encoding.DER, PublicFormat.PKCS1)
    digest = hashlib.sha1(bits, usedforsecurity=False).digest()
    # DER OCTET STRING of the 20-byte key identifier
    return x509.Extension(
        _SKI_OID, False, x509.UnrecognizedExtension(_SKI_OID, b"\x04\x14" + digest)
    )


@dataclass(frozen=True)
class _IssuerParts:
    """What every certificate of one authority shares (computed once per authority)."""

    name: x509.Name
    tail: tuple[x509.Extension[x509.ExtensionType], ...]  # AKI, then the CRL DP if any
    hash: hashes.SHA256 | hashes.SHA384 | hashes.SHA512
    not_after: datetime


_PARTS: dict[int, tuple[IssuingAuthority, _IssuerParts]] = {}


def _issuer_parts(authority: IssuingAuthority) -> _IssuerParts:
    cached = _PARTS.get(id(authority))
    if cached is not None and cached[0] is authority:
        return cached[1]
    cert = authority.certificate
    try:
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key())
    tail = [_encoded(aki, critical=False)]
    if authority.crl_url:
        crl_dp = x509.CRLDistributionPoints(
            [
                x509.DistributionPoint(
                    full_name=[x509.UniformResourceIdentifier(authority.crl_url)],
                    relative_name=None,
                    reasons=None,
                    crl_issuer=None,
                )
            ]
        )
        tail.append(_encoded(crl_dp, critical=False))
    parts = _IssuerParts(
        name=cert.subject,
        tail=tuple(tail),
        hash=signature_hash_for(authority),
        not_after=cert.not_valid_after_utc,
    )
    if len(_PARTS) > 64:
        _PARTS.clear()
    _PARTS[id(authority)] = (authority, parts)
    return parts


def build_device_certificate(
    csr: x509.CertificateSigningRequest,
    device_id: str,
    authority: IssuingAuthority,
    policy: IssuancePolicy,
    now: datetime,
    *,
    serial: int | None = None,
    public_key: CertificatePublicKeyTypes | None = None,
) -> x509.Certificate:
    """Sign the device certificate for an accepted ``csr`` (see the module docstring).

    The CSR must have passed :func:`shared.pki.csr_policy.check_csr`; nothing requested
    in it except the public key is used (``public_key``, when given, is the CSR's key
    already parsed by the policy check).
    """
    if now.tzinfo is None or now.utcoffset() != timedelta(0):
        raise ValueError("now must be timezone-aware UTC")
    parts = _issuer_parts(authority)
    not_before = now - policy.backdate
    not_after = min(now + policy.validity, parts.not_after)
    if not_before < EARLIEST_TIME:
        raise ValueError("the certificate cannot start before 1950")
    if not_after <= not_before:  # a certificate valid for no time at all is not issued
        raise ValueError("the issuing CA expires before the certificate would start")
    if serial is None:
        serial = random_serial()
    elif not isinstance(serial, int) or not 0 < serial < 1 << 159:
        raise ValueError("a serial is a positive integer of at most 159 bits")
    if public_key is None:
        public_key = csr.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise ValueError("device keys are EC or RSA (check the CSR with csr_policy first)")
    # Every value is checked above, so the builder is made in one step from them (the
    # chained setters would check them again) with the extensions in profile order.
    builder = x509.CertificateBuilder(
        issuer_name=parts.name,
        subject_name=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]),
        public_key=public_key,
        serial_number=serial,
        not_valid_before=not_before.replace(tzinfo=None),
        not_valid_after=not_after.replace(tzinfo=None),
        extensions=[*_DEVICE_HEAD, subject_key_identifier(public_key), *parts.tail],
    )
    return builder.sign(authority.key, parts.hash)

"""The device contract in code: names, formats and validation of the ``x509`` twin sections
and the ``reprovision`` direct method (docs/device-contract.md is the prose version and
docs/schemas/device-contract.schema.json the JSON Schema).

Everything here is pure: no emulator, no clock, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeGuard

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from shared.domain.certs import serial_hex
from shared.domain.certs import sha256_thumbprint as thumbprint
from shared.domain.errors import InvalidRequestError
from shared.domain.messages import format_time
from shared.pki.algorithms import signature_hash

#: The twin section (reported and desired) that carries the certificate exchange.
SECTION = "x509"
#: The direct method that asks a device to register again through DPS.
REPROVISION_METHOD = "reprovision"

REASONS: frozenset[str] = frozenset({"expiring", "manual", "compromise", "ca-roll"})
RENEWAL_STATUSES: frozenset[str] = frozenset({"installed", "failed"})
DEFAULT_KEY_ALGORITHM = "ec-p256"

#: Machine-readable codes a device puts in ``renewal.errorCode`` next to the ``error`` text.
ERROR_CODES: frozenset[str] = frozenset(
    {
        "key_algorithm_unsupported",  # desired renewal.keyAlgorithm is not one the device makes
        "request_malformed",  # desired renewal/issued does not follow the contract
        "request_unknown",  # issued.requestId names no CSR the device made (or a replaced one)
        "certificate_malformed",  # issued.certificate is not a PEM chain / notAfter disagrees
        "key_mismatch",  # the leaf's public key is not the key made for the request
        "subject_mismatch",  # the leaf's subject CN is not the device id
        "not_a_leaf",  # the leaf is a CA certificate
        "chain_untrusted",  # the chain does not verify up to the device's trust anchor
        "certificate_not_valid_now",  # a certificate of the chain is expired or not yet valid
        "registration_failed",  # DPS refused the new certificate
        "connect_failed",  # the hub refused the new certificate
    }
)

_TIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


@dataclass(frozen=True)
class KeySpec:
    name: str
    kind: str  # "ec" | "rsa"
    size: int  # curve bits or modulus bits


KEY_ALGORITHMS: dict[str, KeySpec] = {
    "ec-p256": KeySpec("ec-p256", "ec", 256),
    "ec-p384": KeySpec("ec-p384", "ec", 384),
    "rsa-2048": KeySpec("rsa-2048", "rsa", 2048),
    "rsa-3072": KeySpec("rsa-3072", "rsa", 3072),
    "rsa-4096": KeySpec("rsa-4096", "rsa", 4096),
}

DeviceKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class ContractError(InvalidRequestError):
    """A payload does not follow the device contract; ``code`` is one of :data:`ERROR_CODES`."""

    def __init__(self, code: str, message: str) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown device contract error code {code!r}")
        super().__init__(code, message)


# --------------------------------------------------------------------------- formats


def parse_time(text: Any) -> datetime:
    if not isinstance(text, str) or not _TIME_RE.fullmatch(text):
        raise ContractError("request_malformed", f"time {text!r} is not YYYY-MM-DDTHH:MM:SSZ")
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def common_name(name: x509.Name) -> str | None:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(attrs) != 1:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode()


def certificate_section(cert: x509.Certificate) -> dict[str, str]:
    """The certificate part of reported ``x509``: thumbprint, serialNumber, notBefore, notAfter."""
    return {
        "thumbprint": thumbprint(cert),
        "serialNumber": serial_hex(cert.serial_number),
        "notBefore": format_time(cert.not_valid_before_utc),
        "notAfter": format_time(cert.not_valid_after_utc),
    }


def is_request_id(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and bool(_REQUEST_ID_RE.fullmatch(value))


# --------------------------------------------------------------------------- keys and CSRs


def generate_key(algorithm: str) -> DeviceKey:
    spec = KEY_ALGORITHMS.get(algorithm)
    if spec is None:
        raise ContractError(
            "key_algorithm_unsupported",
            f"key algorithm {algorithm!r} is not one of {sorted(KEY_ALGORITHMS)}",
        )
    if spec.kind == "ec":
        curve: ec.EllipticCurve = ec.SECP256R1() if spec.size == 256 else ec.SECP384R1()
        return ec.generate_private_key(curve)
    return rsa.generate_private_key(public_exponent=65537, key_size=spec.size)


def build_csr(device_id: str, key: DeviceKey) -> x509.CertificateSigningRequest:
    """A CSR whose subject is ``CN=<device id>`` and nothing else, signed by ``key``."""
    digest = signature_hash(key)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])
    signer: CertificateIssuerPrivateKeyTypes = key
    return x509.CertificateSigningRequestBuilder().subject_name(subject).sign(signer, digest)


# --------------------------------------------------------------------------- desired/method parsing


@dataclass(frozen=True)
class RenewalRequest:
    request_id: str
    reason: str
    key_algorithm: str


@dataclass(frozen=True)
class IssuedDelivery:
    request_id: str
    certificate_pem: str
    not_after: str


def parse_renewal(value: Any, default_algorithm: str = DEFAULT_KEY_ALGORITHM) -> RenewalRequest:
    """Desired ``x509.renewal``; unknown extra fields are ignored (forward compatibility)."""
    if not isinstance(value, dict):
        raise ContractError("request_malformed", "desired x509.renewal must be an object")
    request_id = value.get("requestId")
    if not is_request_id(request_id):
        raise ContractError("request_malformed", f"renewal.requestId {request_id!r} is invalid")
    reason = value.get("reason")
    if reason not in REASONS:
        raise ContractError(
            "request_malformed", f"renewal.reason {reason!r} is not one of {sorted(REASONS)}"
        )
    algorithm = value.get("keyAlgorithm", default_algorithm)
    if not isinstance(algorithm, str):
        raise ContractError("request_malformed", "renewal.keyAlgorithm must be a string")
    return RenewalRequest(request_id, str(reason), algorithm)


def parse_issued(value: Any) -> IssuedDelivery:
    if not isinstance(value, dict):
        raise ContractError("request_malformed", "desired x509.issued must be an object")
    request_id = value.get("requestId")
    if not is_request_id(request_id):
        raise ContractError("request_malformed", f"issued.requestId {request_id!r} is invalid")
    pem = value.get("certificate")
    if isinstance(pem, list) and pem and all(isinstance(p, str) for p in pem):
        pem = "".join(p if p.endswith("\n") else p + "\n" for p in pem)
    if not isinstance(pem, str) or "-----BEGIN CERTIFICATE-----" not in pem:
        raise ContractError(
            "certificate_malformed",
            "issued.certificate must be a list of PEM certificates (leaf first) or a PEM chain",
        )
    not_after = value.get("notAfter")
    parse_time(not_after)
    return IssuedDelivery(request_id, pem, str(not_after))


def parse_reprovision(payload: Any) -> str:
    """The ``requestId`` of a ``reprovision`` call."""
    if not isinstance(payload, dict):
        raise ContractError("request_malformed", "reprovision payload must be an object")
    request_id = payload.get("requestId")
    if not is_request_id(request_id):
        raise ContractError("request_malformed", f"reprovision requestId {request_id!r} is invalid")
    return request_id


# --------------------------------------------------------------------------- checking a delivery


def _public_der(key: Any) -> bytes:
    return bytes(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _valid_at(cert: x509.Certificate, now: datetime) -> bool:
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def verify_chain(
    chain: list[x509.Certificate], trust_anchor: x509.Certificate, now: datetime
) -> None:
    """Check that ``chain`` (leaf first) leads to ``trust_anchor`` and is valid at ``now``.

    Each certificate must be directly issued by the next one, until one is the anchor
    itself or is directly issued by the anchor. Raises :class:`ContractError`.
    """
    if not chain:
        raise ContractError("certificate_malformed", "the chain is empty")
    anchor_der = trust_anchor.public_bytes(Encoding.DER)
    for index, cert in enumerate(chain):
        if not _valid_at(cert, now):
            raise ContractError(
                "certificate_not_valid_now",
                f"certificate {index} of the chain ({cert.subject.rfc4514_string()}) is valid "
                f"{format_time(cert.not_valid_before_utc)}..{format_time(cert.not_valid_after_utc)}"
                f", not at {format_time(now)}",
            )
        if cert.public_bytes(Encoding.DER) == anchor_der:
            return
        if _issued_by(cert, trust_anchor):
            if not _valid_at(trust_anchor, now):
                raise ContractError(
                    "certificate_not_valid_now", "the trust anchor is not valid now"
                )
            return
        if index + 1 >= len(chain) or not _issued_by(cert, chain[index + 1]):
            raise ContractError(
                "chain_untrusted",
                f"{cert.subject.rfc4514_string()} is not issued by the next certificate of the "
                "chain nor by the trust anchor",
            )
    raise ContractError("chain_untrusted", "the chain does not reach the trust anchor")


def check_delivery(
    delivery: IssuedDelivery,
    *,
    device_id: str,
    pending_key: DeviceKey,
    trust_anchor: x509.Certificate,
    now: datetime,
) -> list[x509.Certificate]:
    """Everything a device checks before it stages a delivered certificate.

    Returns the parsed chain (leaf first); raises :class:`ContractError` with the code of
    the first failed check: PEM parse, notAfter agreement, key, subject, CA flag, chain.
    """
    try:
        chain = x509.load_pem_x509_certificates(delivery.certificate_pem.encode())
    except ValueError as exc:
        raise ContractError("certificate_malformed", f"issued.certificate: {exc}") from None
    leaf = chain[0]
    if format_time(leaf.not_valid_after_utc) != delivery.not_after:
        raise ContractError(
            "certificate_malformed",
            f"issued.notAfter {delivery.not_after} is not the leaf's "
            f"{format_time(leaf.not_valid_after_utc)}",
        )
    if _public_der(leaf.public_key()) != _public_der(pending_key.public_key()):
        raise ContractError(
            "key_mismatch",
            f"the certificate is not for the key made for request {delivery.request_id}",
        )
    cn = common_name(leaf.subject)
    if cn != device_id:
        raise ContractError("subject_mismatch", f"leaf CN {cn!r} is not the device id")
    try:
        constraints = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is not None and constraints.ca:
        raise ContractError("not_a_leaf", "the delivered certificate is a CA certificate")
    verify_chain(chain, trust_anchor, now)
    return chain

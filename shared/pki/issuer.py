"""The issuer: CSR in, device certificate out, with ledger, audit and CRL.

``Issuer.issue`` runs, in order: CSR policy (size, parse, key, signature, subject,
extensions, SAN) -> disallowed check -> idempotency lookup (same device + CSR + request
returns the certificate already issued, no second signature, never a retired one) ->
key check (no key an earlier certificate of the device, or any revoked certificate,
carried) -> sign -> ledger -> audit. Every rejection leaves an ``issue_rejected`` audit
entry and nothing in the ledger. The rule is stated in
``shared/domain/rotation/admissible.py`` and docs/issuing.md.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from shared.domain.certs import serial_hex, spki_der
from shared.domain.errors import (
    CsrRejectedError,
    DeviceDisallowedError,
    InvalidRequestError,
    ServiceError,
    SigningError,
    ThrottledError,
)
from shared.domain.model import AuditEvent, CertificateRecord, CertificateStatus, RevocationReason
from shared.pki.csr_policy import check_csr
from shared.pki.local_ca import ISSUING_CERT_NAME, ISSUING_CRL_NAME
from shared.pki.profile import (
    IssuancePolicy,
    build_device_certificate,
    random_serial,
    signature_hash_for,
)
from shared.ports import AuditLog, CertificateLedger, Clock, CrlPublisher, IssuingAuthority

__all__ = [
    "IssuanceDisallowedError",
    "IssuancePolicy",
    "IssuedCertificate",
    "Issuer",
    "der_to_pem",
    "parse_reason",
    "parse_serial",
]

logger = logging.getLogger(__name__)

PEM = serialization.Encoding.PEM
DER = serialization.Encoding.DER


#: ledger statuses whose certificate is never handed out again
_RETIRED = frozenset(
    {CertificateStatus.REVOKED, CertificateStatus.SUPERSEDED, CertificateStatus.FAILED}
)


def _record_spki(record: CertificateRecord) -> bytes:
    return spki_der(x509.load_pem_x509_certificate(record.pem.encode("ascii")).public_key())


def _refuse_retired(record: CertificateRecord) -> None:
    if record.status in _RETIRED:
        raise CsrRejectedError(
            "key_reused",
            f"this request's certificate {record.serial} is {record.status.value}; "
            "a new certificate needs a new key",
        )


class IssuanceDisallowedError(CsrRejectedError, DeviceDisallowedError):
    """The device is disallowed: the CSR is rejected with code ``device_disallowed``.

    Catch it as either :class:`CsrRejectedError` or :class:`DeviceDisallowedError`.
    """


@dataclass(frozen=True)
class IssuedCertificate:
    record: CertificateRecord
    certificate: x509.Certificate
    chain_pem: str  # the leaf, then the issuing CA (and any intermediates), PEM
    reused: bool  # True when an earlier issuance for the same device + CSR was returned


def der_to_pem(der: bytes, label: str = "CERTIFICATE") -> str:
    """PEM text of ``der``: the bytes ``public_bytes(Encoding.PEM)`` gives (64-column base64)."""
    b64 = base64.b64encode(der).decode("ascii")
    lines = "\n".join(b64[i : i + 64] for i in range(0, len(b64), 64))
    return f"-----BEGIN {label}-----\n{lines}\n-----END {label}-----\n"


def parse_reason(value: str | RevocationReason) -> RevocationReason:
    """A revocation reason from its RFC 5280 spelling; InvalidRequestError when unknown."""
    try:
        return RevocationReason(value)
    except ValueError:
        choices = ", ".join(r.value for r in RevocationReason)
        raise InvalidRequestError(
            "reason_invalid", f"unknown revocation reason {value!r}; use one of {choices}"
        ) from None


def parse_serial(value: str) -> str:
    """Normalise a hex serial (``0x`` prefix, colons and case allowed) to model form."""
    text = value.strip().lower().removeprefix("0x").replace(":", "")
    try:
        number = int(text, 16)
    except ValueError:
        raise InvalidRequestError(
            "serial_invalid", f"{value!r} is not a hexadecimal certificate serial"
        ) from None
    if number <= 0:
        raise InvalidRequestError("serial_invalid", "a certificate serial is positive")
    return serial_hex(number)


class Issuer:
    def __init__(
        self,
        authority: IssuingAuthority,
        ledger: CertificateLedger,
        audit: AuditLog,
        policy: IssuancePolicy,
        clock: Clock,
        crl_publisher: CrlPublisher | None = None,
        is_disallowed: Callable[[str], bool] = lambda _id: False,
    ) -> None:
        self.authority = authority
        self.ledger = ledger
        self.audit = audit
        self.policy = policy
        self.clock = clock
        self.crl_publisher = crl_publisher
        self.is_disallowed = is_disallowed
        self._chain_pem = "".join(c.public_bytes(PEM).decode("ascii") for c in authority.chain)
        if not self._chain_pem:
            self._chain_pem = authority.certificate.public_bytes(PEM).decode("ascii")
        self._crl_lock = threading.Lock()
        self._last_crl_number = 0

    # ------------------------------------------------------------------ issue

    def check(
        self, device_id: str, csr_pem: str | bytes, *, request_id: str, trigger: str, actor: str
    ) -> None:
        """Apply the CSR policy without issuing, and refuse a key that any earlier
        certificate of the device, or any revoked certificate, carried (``key_reused``):
        re-admitting a device needs a fresh key.

        A rejection is audited (``issue_rejected``) and raised as :class:`CsrRejectedError`;
        nothing else changes.
        """
        with self._audit_rejection(device_id, request_id, trigger, actor):
            accepted = check_csr(device_id, csr_pem, max_bytes=self.policy.csr_max_bytes)
            self._refuse_known_key(
                device_id,
                spki_der(accepted.csr.public_key()),
                self.ledger.list_for_device(device_id),
            )

    def _refuse_known_key(
        self,
        device_id: str,
        spki: bytes,
        certs: list[CertificateRecord],
    ) -> None:
        """``key_reused`` when ``spki`` is the key of an earlier certificate of the device
        (``certs``) or of any revoked certificate (one look-up by the key's SHA-256,
        ``CertificateLedger.revoked_with_key``, not a walk of the revoked list)."""
        for record in certs:
            if _record_spki(record) == spki:
                raise CsrRejectedError(
                    "key_reused",
                    f"the CSR's key is the key of certificate {record.serial} "
                    f"({record.status.value}); a new certificate needs a new key",
                )
        revoked = self.ledger.revoked_with_key(hashlib.sha256(spki).hexdigest())
        if revoked is not None:
            raise CsrRejectedError(
                "key_reused",
                f"the CSR's key is the key of revoked certificate {revoked}; "
                "a new certificate needs a new key",
            )

    def issue(
        self,
        device_id: str,
        csr_pem: str | bytes,
        *,
        request_id: str,
        trigger: str,
        actor: str,
        known_allowed: bool = False,
        first_attempt: bool = False,
    ) -> IssuedCertificate:
        """Issue (or return the already issued) certificate for ``device_id`` and the CSR.

        ``known_allowed``: the caller holds the device's rotation record, read or written
        (ETag-checked) within this same operation, and it is not disallowed; the issuer
        does not read it again. Otherwise the issuer asks ``is_disallowed``.

        The device's certificates are listed once: a certificate already recorded for
        the same device, CSR **and request** is returned (``reused=True``, no second
        signature) unless it is revoked, superseded or failed; any other certificate of
        the device carrying the CSR's key, and any revoked certificate carrying it,
        refuses the CSR (``key_reused``). A certificate recorded concurrently for the same
        CSR wins at the ledger's create-only row: returned to the same request, refused
        (``key_reused``) to another; the certificate signed here is then dropped
        unrecorded. ``first_attempt`` is accepted for the rotation service's call and
        changes nothing (the listing is needed for the key check anyway).

        Raises :class:`CsrRejectedError` (``IssuanceDisallowedError`` for a disallowed
        device) after writing an ``issue_rejected`` audit entry; ``SigningError`` /
        ``ThrottledError`` when the signing key fails (audit ``issue`` ``failed``).
        """
        with self._audit_rejection(device_id, request_id, trigger, actor):
            accepted = check_csr(device_id, csr_pem, max_bytes=self.policy.csr_max_bytes)
            if not known_allowed and self.is_disallowed(device_id):
                raise IssuanceDisallowedError(
                    "device_disallowed", f"device {device_id!r} is disallowed; nothing is issued"
                )
            certs = self.ledger.list_for_device(device_id)
            existing = next(
                (
                    c
                    for c in certs
                    if c.csr_sha256 == accepted.csr_sha256 and c.request_id == request_id
                ),
                None,
            )
            if existing is not None:
                _refuse_retired(existing)
            else:
                self._refuse_known_key(device_id, spki_der(accepted.public_key), certs)
        if existing is not None:
            return self._reused(existing, request_id, trigger, actor)

        now = self.clock.now()
        serial = random_serial()
        try:
            certificate = build_device_certificate(
                accepted.csr,
                device_id,
                self.authority,
                self.policy,
                now,
                serial=serial,
                public_key=accepted.public_key,
            )
        except (SigningError, ThrottledError) as exc:
            logger.error("signing failed for device %s request %s: %s", device_id, request_id, exc)
            self._audit("issue", "failed", actor, device_id, request_id, {"error": str(exc)})
            raise
        der = certificate.public_bytes(DER)  # encoded once: thumbprint and PEM come from it
        pem = der_to_pem(der)
        record = CertificateRecord(
            serial=serial_hex(serial),
            device_id=device_id,
            thumbprint_sha256=hashlib.sha256(der).hexdigest(),
            not_before=certificate.not_valid_before_utc,
            not_after=certificate.not_valid_after_utc,
            csr_sha256=accepted.csr_sha256,
            issuer_key_id=self.authority.key_id,
            trigger=str(trigger),
            request_id=request_id,
            status=CertificateStatus.ISSUED,
            pem=pem,
            issued_at=now,
        )
        stored = self.ledger.add(record)
        if stored.serial != record.serial and (
            stored.request_id != request_id or stored.status in _RETIRED
        ):
            # another request recorded this CSR first: its key is not certified again
            with self._audit_rejection(device_id, request_id, trigger, actor):
                raise CsrRejectedError(
                    "key_reused",
                    f"the CSR was already issued as {stored.serial} for another request "
                    f"({record.serial} dropped); a new certificate needs a new key",
                )
        if stored.serial != record.serial:
            # every signature is accounted for: the dropped one was never handed out
            return self._reused(stored, request_id, trigger, actor, discarded=record.serial)
        not_after = record.not_after.isoformat()
        logger.info(
            "issued %s to device %s request %s until %s",
            record.serial,
            device_id,
            request_id,
            not_after,
        )
        self._audit(
            "issue",
            "ok",
            actor,
            device_id,
            request_id,
            {
                "serial": record.serial,
                "thumbprint": record.thumbprint_sha256,
                "notAfter": not_after,
                "trigger": record.trigger,
                "keyId": self.authority.key_id,
            },
        )
        return IssuedCertificate(stored, certificate, pem + self._chain_pem, reused=False)

    def _result(self, record: CertificateRecord, *, reused: bool) -> IssuedCertificate:
        certificate = x509.load_pem_x509_certificate(record.pem.encode("ascii"))
        pem = record.pem if record.pem.endswith("\n") else record.pem + "\n"
        return IssuedCertificate(record, certificate, pem + self._chain_pem, reused=reused)

    # ------------------------------------------------------------------ revoke

    def _reused(
        self,
        existing: CertificateRecord,
        request_id: str,
        trigger: str,
        actor: str,
        discarded: str | None = None,
    ) -> IssuedCertificate:
        """The certificate already recorded for the device and CSR, audited ``noop``
        (with the serial of a certificate signed meanwhile and dropped, if any)."""
        logger.info(
            "device %s request %s: CSR already issued as %s%s",
            existing.device_id,
            request_id,
            existing.serial,
            f"; {discarded} dropped" if discarded else "",
        )
        detail: dict[str, Any] = {"serial": existing.serial, "reused": True, "trigger": trigger}
        if discarded:
            detail["discardedSerial"] = discarded
        self._audit("issue", "noop", actor, existing.device_id, request_id, detail)
        return self._result(existing, reused=True)

    def revoke(self, serial: str, reason: RevocationReason | str, actor: str) -> CertificateRecord:
        """Mark ``serial`` revoked (idempotent: a second call changes nothing).

        NotFoundError for an unknown serial, InvalidRequestError for a bad serial/reason.
        """
        normal = parse_serial(serial)
        why = parse_reason(reason)
        record = self.ledger.get(normal)
        if record.status is CertificateStatus.REVOKED:
            self._audit(
                "revoke",
                "noop",
                actor,
                record.device_id,
                None,
                {"serial": normal, "reason": str(record.revocation_reason)},
            )
            return record
        updated = self.ledger.set_status(
            normal, CertificateStatus.REVOKED, reason=why, at=self.clock.now()
        )
        logger.warning(
            "revoked %s of device %s (%s) by %s", normal, record.device_id, why.value, actor
        )
        self._audit(
            "revoke",
            "ok",
            actor,
            record.device_id,
            None,
            {"serial": normal, "reason": why.value},
        )
        return updated

    # ------------------------------------------------------------------ CRL

    def _next_crl_number(self) -> int:
        with self._crl_lock:
            candidate = int(self.clock.now().timestamp() * 1000)
            self._last_crl_number = max(candidate, self._last_crl_number + 1)
            return self._last_crl_number

    def build_crl(self, next_update_hours: int = 24) -> bytes:
        """The issuing CA's CRL (DER), signed by the issuing key.

        Lists every revoked certificate that has not expired yet, with its revocation
        date and a reasonCode entry extension (omitted for ``unspecified``, as RFC 5280
        recommends); CRL number (milliseconds since the epoch, strictly increasing per
        issuer) and AKI.
        """
        if not 1 <= next_update_hours <= 24 * 31:
            raise ValueError("next_update_hours must be 1-744")
        now = self.clock.now()
        return self._signed_crl(self.authority, now, now + timedelta(hours=next_update_hours))

    def _signed_crl(
        self,
        authority: IssuingAuthority,
        now: datetime,
        next_update: datetime,
        include: Callable[[CertificateRecord], bool] = lambda _record: True,
    ) -> bytes:
        """``authority``'s CRL (DER) valid ``now``..``next_update``, listing every revoked,
        unexpired certificate that ``include`` keeps."""
        cert = authority.certificate
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(cert.subject)
            .last_update(now)
            .next_update(next_update)
            .add_extension(x509.CRLNumber(self._next_crl_number()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                critical=False,
            )
        )
        for record in self.ledger.list_revoked():
            if record.not_after <= now or not include(record):
                continue
            entry = (
                x509.RevokedCertificateBuilder()
                .serial_number(int(record.serial, 16))
                .revocation_date(record.revoked_at or now)
            )
            reason = record.revocation_reason or RevocationReason.UNSPECIFIED
            if reason is not RevocationReason.UNSPECIFIED:
                entry = entry.add_extension(
                    x509.CRLReason(x509.ReasonFlags(reason.value)), critical=False
                )
            builder = builder.add_revoked_certificate(entry.build())
        crl = builder.sign(authority.key, signature_hash_for(authority))
        return crl.public_bytes(serialization.Encoding.DER)

    def publish_crl(self, next_update_hours: int = 24) -> str:
        """Build the CRL and publish it (``crl/issuing.crl``) with the issuing CA
        certificate (``ca/issuing.pem``); returns the CRL URL."""
        if self.crl_publisher is None:
            raise ServiceError("no CRL publisher is configured")
        der = self.build_crl(next_update_hours)
        url = self.crl_publisher.publish(ISSUING_CRL_NAME, der, "application/pkix-crl")
        self.crl_publisher.publish(
            ISSUING_CERT_NAME, self._chain_pem.encode("ascii"), "application/x-pem-file"
        )
        logger.info("published the CRL (%d bytes) at %s", len(der), url)
        self._audit("crl_publish", "ok", "system:issuer", None, None, {"url": url})
        return url

    # ------------------------------------------------------------------ audit

    @contextlib.contextmanager
    def _audit_rejection(
        self, device_id: str, request_id: str, trigger: str, actor: str
    ) -> Iterator[None]:
        """Audit a :class:`CsrRejectedError` raised inside (``issue_rejected``), re-raise it."""
        try:
            yield
        except CsrRejectedError as exc:
            logger.warning("CSR rejected for device %s request %s: %s", device_id, request_id, exc)
            self._audit(
                "issue_rejected",
                "rejected",
                actor,
                device_id,
                request_id,
                {"code": exc.code, "message": exc.message, "trigger": trigger},
            )
            raise

    def _audit(
        self,
        action: str,
        outcome: str,
        actor: str,
        device_id: str | None,
        request_id: str | None,
        detail: dict[str, object],
    ) -> None:
        self.audit.append(
            AuditEvent(
                action=action,
                outcome=outcome,
                actor=actor,
                device_id=device_id,
                request_id=request_id,
                detail=dict(detail),
                at=self.clock.now(),
            )
        )

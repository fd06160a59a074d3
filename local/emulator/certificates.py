"""CA certificates of the emulated DPS and IoT Hub, with proof of possession.

Both services keep named X.509 CA certificates (ARM ``Microsoft.Devices/
provisioningServices/certificates`` and ``Microsoft.Devices/IotHubs/certificates``): an
upload is *unverified*; ``generateVerificationCode`` returns a code; ``verify`` takes a
certificate whose subject is the code and which the CA's private key signed, and marks
the certificate verified (Microsoft Learn: DPS "How to verify X.509 CA certificates",
IoT Hub "Authenticate identities with X.509 certificates", section "Register the X.509
CA certificate to IoT Hub"). Every write takes the certificate's ETag (If-Match), as the
ARM operations do. DPS accepts a group ``caReferences`` entry only for a verified
certificate; the hub authenticates ``certificateAuthority`` identities against its
verified certificates only.

``FleetEmulator.add_verified_ca`` stays the short cut that trusts the caller (the
"verified on upload" option Microsoft documents for both services).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID

from local.emulator.core import Core
from local.emulator.store import StoredCert, is_valid_at, new_etag, parse_pem
from shared.domain.ca_roll import CaCertificateInfo, CaCertificateService
from shared.domain.errors import ConcurrencyError, InvalidRequestError, NotFoundError


@dataclass
class CaCertificateRecord:
    name: str
    cert: StoredCert
    verified: bool
    etag: str
    verification_code: str | None = None


def _info(rec: CaCertificateRecord) -> CaCertificateInfo:
    return CaCertificateInfo(
        name=rec.name,
        thumbprint_sha256=rec.cert.sha256,
        subject=rec.cert.cert.subject.rfc4514_string(),
        verified=rec.verified,
        etag=rec.etag,
        verification_code=rec.verification_code,
    )


class EmulatedCaCertificates(CaCertificateService):
    """The CA certificates of one emulated service (``service`` is ``dps`` or ``hub``)."""

    def __init__(self, core: Core, service: str) -> None:
        if service not in ("dps", "hub"):
            raise ValueError("service must be dps or hub")
        self._core = core
        self.service = service

    @property
    def _table(self) -> dict[str, CaCertificateRecord]:
        table: dict[str, CaCertificateRecord] = getattr(self._core, f"{self.service}_certificates")
        return table

    def _get(self, name: str) -> CaCertificateRecord:
        rec = self._table.get(name)
        if rec is None:
            raise NotFoundError(f"no CA certificate {name} in the {self.service} (404)")
        return rec

    @staticmethod
    def _check_etag(rec: CaCertificateRecord, etag: str) -> None:
        if etag != "*" and etag != rec.etag:
            raise ConcurrencyError(f"CA certificate {rec.name} changed since it was read (412)")

    def get(self, name: str) -> CaCertificateInfo:
        with self._core.txn():
            return _info(self._get(name))

    def list(self) -> list[CaCertificateInfo]:
        with self._core.txn():
            return [_info(r) for _, r in sorted(self._table.items())]

    def upload(self, name: str, certificate_pem: str, etag: str | None = None) -> CaCertificateInfo:
        if not isinstance(name, str) or not name or len(name) > 64:
            raise InvalidRequestError("certificate_name_invalid", "1-64 characters")
        stored = StoredCert(parse_pem(certificate_pem, "certificate"))
        try:
            bc = stored.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            bc = None
        if bc is None or not bc.ca:
            raise InvalidRequestError("certificate_not_ca", f"{name} is not a CA certificate")
        with self._core.txn():
            current = self._table.get(name)
            if current is not None and current.cert.sha256 == stored.sha256:
                return _info(current)  # the same certificate again: nothing changes
            if current is not None:
                self._check_etag(current, etag or "")
            rec = CaCertificateRecord(name=name, cert=stored, verified=False, etag=new_etag())
            self._table[name] = rec
            return _info(rec)

    def generate_verification_code(self, name: str, etag: str) -> CaCertificateInfo:
        with self._core.txn():
            rec = self._get(name)
            self._check_etag(rec, etag)
            rec.verification_code = secrets.token_hex(20).upper()
            rec.etag = new_etag()
            return _info(rec)

    def verify(self, name: str, etag: str, verification_pem: str) -> CaCertificateInfo:
        proof = parse_pem(verification_pem, "verification certificate")
        with self._core.txn():
            rec = self._get(name)
            self._check_etag(rec, etag)
            if rec.verified:
                return _info(rec)
            code = rec.verification_code
            if code is None:
                raise InvalidRequestError(
                    "verification_code_missing", f"generate a verification code for {name} first"
                )
            cns = proof.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            if len(cns) != 1 or cns[0].value != code:
                raise InvalidRequestError(
                    "verification_failed", "the verification certificate's CN is not the code"
                )
            try:
                proof.verify_directly_issued_by(rec.cert.cert)
            except (InvalidSignature, ValueError, TypeError) as exc:
                raise InvalidRequestError(
                    "verification_failed",
                    f"the verification certificate is not signed by the key of {name}",
                ) from exc
            if not is_valid_at(proof, self._core.now()):
                raise InvalidRequestError(
                    "verification_failed", "the verification certificate is not valid now"
                )
            rec.verified = True
            rec.verification_code = None
            rec.etag = new_etag()
            return _info(rec)

    def delete(self, name: str, etag: str) -> None:
        with self._core.txn():
            rec = self._get(name)
            self._check_etag(rec, etag)
            del self._table[name]

"""The abstract boundaries between certroll's domain and the technologies it uses.

Each port has one adapter per technology under ``shared/adapters/`` and an in-memory
fake (``shared/adapters/memory.py``) or emulator that implements the same port.
Every method raises only :mod:`shared.domain.errors` types.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from shared.campaign_ports import CampaignOutcomes as CampaignOutcomes
from shared.campaign_ports import CampaignStore as CampaignStore
from shared.domain.auth import Caller
from shared.domain.certs import pem_key_sha256
from shared.domain.errors import NotFoundError
from shared.domain.model import (
    AuditEvent,
    BulkItemError,
    CertificateRecord,
    CertificateStatus,
    DeviceIdentity,
    DomainEvent,
    EnrollmentGroup,
    IndividualEnrollment,
    JobStatus,
    MethodResult,
    Page,
    RegistrationState,
    RevocationReason,
    RotationRecord,
    RotationState,
    Trigger,
    Twin,
)
from shared.telemetry_ports import (
    HIGH_CARDINALITY_DIMENSIONS as HIGH_CARDINALITY_DIMENSIONS,
)
from shared.telemetry_ports import (
    NullTelemetry as NullTelemetry,
)
from shared.telemetry_ports import (
    NullTracer as NullTracer,
)
from shared.telemetry_ports import (
    Telemetry as Telemetry,
)
from shared.telemetry_ports import (
    Tracer as Tracer,
)
from shared.telemetry_ports import (
    call_name as call_name,
)
from shared.telemetry_ports import (
    in_rotation_trace as in_rotation_trace,
)

# --------------------------------------------------------------------------- time


class Clock(abc.ABC):
    @abc.abstractmethod
    def now(self) -> datetime:
        """Timezone-aware UTC now."""

    @abc.abstractmethod
    def sleep(self, seconds: float) -> None:
        """Wait (scaled clocks wait less in real time)."""


# --------------------------------------------------------------------------- signing


@dataclass(frozen=True)
class IssuingAuthority:
    """The issuing CA as the issuer sees it.

    ``key`` is a ``cryptography`` private key; for HSM-held keys it is one of the
    signing-key classes whose ``sign()`` calls the HSM (Key Vault, PKCS#11).
    ``chain`` is the issuing CA certificate followed by any intermediates up to (not
    including) the root.
    """

    certificate: x509.Certificate
    key: CertificateIssuerPrivateKeyTypes
    key_id: str  # Key Vault key id with version, "pkcs11:<token>/<label>", or "file:<path>"
    chain: tuple[x509.Certificate, ...]
    root: x509.Certificate | None = None
    crl_url: str | None = None  # the CRL distribution point written into every leaf


# --------------------------------------------------------------------------- storage


class CertificateLedger(abc.ABC):
    """The issuance ledger (Table storage in Azure, Azurite locally)."""

    @abc.abstractmethod
    def find_by_csr(self, device_id: str, csr_sha256: str) -> CertificateRecord | None:
        """The certificate already issued for this device and CSR, if any."""

    @abc.abstractmethod
    def add(self, record: CertificateRecord) -> CertificateRecord:
        """Record an issuance, idempotently on (device_id, csr_sha256).

        If a record for the same device and CSR exists, it is returned unchanged and
        ``record`` is not stored: the caller must use the returned record.
        """

    @abc.abstractmethod
    def get(self, serial: str) -> CertificateRecord:
        """The record of ``serial``; NotFoundError when unknown."""

    @abc.abstractmethod
    def find_by_thumbprint(self, thumbprint_sha256: str) -> CertificateRecord | None: ...

    @abc.abstractmethod
    def list_for_device(self, device_id: str) -> list[CertificateRecord]:
        """Every certificate issued to the device, oldest first."""

    @abc.abstractmethod
    def set_status(
        self,
        serial: str,
        status: CertificateStatus,
        *,
        reason: RevocationReason | None = None,
        at: datetime | None = None,
    ) -> CertificateRecord:
        """Change a certificate's status; revoked is final (a later change is ignored)."""

    @abc.abstractmethod
    def list_revoked(self) -> Iterator[CertificateRecord]:
        """Every revoked certificate (for the CRL)."""

    def revoked_with_key(self, key_sha256: str) -> str | None:
        """The serial of a revoked certificate carrying the key ``key_sha256``
        (``shared.domain.certs.key_sha256``), asked at every issuance. This default walks
        :meth:`list_revoked`; the Table ledger answers with one point read."""
        for record in self.list_revoked():
            if pem_key_sha256(record.pem) == key_sha256:
                return record.serial
        return None

    def list_all(self) -> Iterator[CertificateRecord]:
        """Every certificate of the ledger, in no particular order (the fleet report and
        its gauges; a full scan, so not for the rotation path)."""
        raise NotImplementedError(f"{type(self).__name__} cannot list its certificates")

    def set_statuses(
        self,
        device_id: str,
        changes: Mapping[str, CertificateStatus],
        listed: Sequence[CertificateRecord] = (),
    ) -> dict[str, CertificateRecord]:
        """Change the status of several certificates of ``device_id``, in the order given
        (issued, active, superseded; revoking goes through ``set_status``). Revoked
        records stay as they are. Returns the records by serial; NotFoundError when a
        serial is not the device's. Not all or nothing: a caller cut short repeats it.
        ``listed``: the device's certificates as the caller has just read them
        (``list_for_device``); an adapter may write against their ETags instead of
        reading the rows again."""
        out: dict[str, CertificateRecord] = {}
        for serial, status in changes.items():
            if CertificateStatus(status) is CertificateStatus.REVOKED:
                raise ValueError("set_statuses does not revoke; use set_status")
            record = self.get(serial)
            if record.device_id != device_id:
                raise NotFoundError(f"device {device_id} has no certificate {serial}")
            out[serial] = self.set_status(serial, status)
        return out


class RotationStateStore(abc.ABC):
    """One rotation record per device, changed only with ETag-checked writes."""

    @abc.abstractmethod
    def get(self, device_id: str) -> RotationRecord | None: ...

    @abc.abstractmethod
    def put(self, record: RotationRecord) -> RotationRecord:
        """Create (``record.etag is None``: ConflictError if present) or replace with If-Match
        (ConcurrencyError when the stored ETag differs). Returns the record with its new ETag."""

    @abc.abstractmethod
    def list(
        self,
        states: set[RotationState] | None = None,
        updated_before: datetime | None = None,
    ) -> Iterator[RotationRecord]:
        """Records in any of ``states`` (all when None), optionally only those not updated
        since ``updated_before``."""


class AuditLog(abc.ABC):
    @abc.abstractmethod
    def append(self, event: AuditEvent) -> None:
        """Append one entry (never updates or deletes)."""

    @abc.abstractmethod
    def list(self, device_id: str | None = None, limit: int = 100) -> list[AuditEvent]:
        """Newest first."""


class CrlPublisher(abc.ABC):
    """Publishes the CRL (and CA certificates) where the CRL distribution point says."""

    @abc.abstractmethod
    def publish(self, name: str, data: bytes, content_type: str) -> str:
        """Upload ``data`` under ``name``; returns the public URL."""

    @abc.abstractmethod
    def url_for(self, name: str) -> str:
        """The public URL ``name`` has (or will have) once published."""

    @abc.abstractmethod
    def fetch(self, name: str) -> bytes:
        """Read back a published object (NotFoundError when absent)."""


class WorkQueue(abc.ABC):
    """The rotation work queue (Storage queue in Azure)."""

    @abc.abstractmethod
    def send(self, message: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    def receive(self, max_messages: int = 32) -> list[dict[str, Any]]:
        """Receive and delete up to ``max_messages`` (local use; in Azure the trigger does this)."""


class EventSink(abc.ABC):
    """Outbound domain events (Event Grid custom topic)."""

    @abc.abstractmethod
    def publish(self, events: list[DomainEvent]) -> None: ...


# --------------------------------------------------------------------------- fleet


class EnrollmentStore(abc.ABC):
    """Device Provisioning Service enrollments and registrations (service API 2021-10-01)."""

    @abc.abstractmethod
    def get_individual(self, registration_id: str) -> IndividualEnrollment:
        """NotFoundError when absent."""

    @abc.abstractmethod
    def put_individual(self, enrollment: IndividualEnrollment) -> IndividualEnrollment:
        """Create (etag None) or replace with If-Match; returns the stored enrollment.
        Slots given with ``pem`` are written; a slot given with only a thumbprint equal to
        the stored one is kept; ``None`` clears the slot."""

    @abc.abstractmethod
    def update_individuals_if_match(
        self, enrollments: Sequence[IndividualEnrollment]
    ) -> list[BulkItemError]:
        """One bulk operation (``POST /enrollments``, mode ``updateIfMatchETag``) over at
        most :data:`~shared.domain.model.MAX_BULK_ENROLLMENTS` existing enrollments, each
        written as :meth:`put_individual` writes it, only where its ``etag`` is the stored
        one. Each item succeeds or fails on its own; returns the failures (412: changed,
        404: gone). The service returns no new ETags: read again before the next
        conditional write. ValueError for an empty or oversized list, an item without an
        etag or one named twice (:func:`~shared.domain.model.bulk_items`)."""

    @abc.abstractmethod
    def delete_individual(self, registration_id: str, etag: str | None = None) -> None: ...

    @abc.abstractmethod
    def query_individual(
        self, page_size: int = 100, continuation: str | None = None
    ) -> Page[IndividualEnrollment]: ...

    @abc.abstractmethod
    def get_group(self, group_id: str) -> EnrollmentGroup: ...

    @abc.abstractmethod
    def put_group(self, group: EnrollmentGroup) -> EnrollmentGroup: ...

    @abc.abstractmethod
    def delete_group(self, group_id: str, etag: str | None = None) -> None: ...

    @abc.abstractmethod
    def query_groups(
        self, page_size: int = 100, continuation: str | None = None
    ) -> Page[EnrollmentGroup]: ...

    @abc.abstractmethod
    def get_registration_state(self, registration_id: str) -> RegistrationState: ...

    @abc.abstractmethod
    def delete_registration_state(self, registration_id: str, etag: str | None = None) -> None: ...


class DeviceRegistry(abc.ABC):
    """IoT Hub: identities, twins, direct methods, jobs."""

    @abc.abstractmethod
    def get_device(self, device_id: str) -> DeviceIdentity: ...

    @abc.abstractmethod
    def update_device(self, identity: DeviceIdentity) -> DeviceIdentity:
        """Replace status/thumbprints with If-Match on ``identity.etag`` ('*' when None)."""

    @abc.abstractmethod
    def create_device(self, identity: DeviceIdentity) -> DeviceIdentity: ...

    @abc.abstractmethod
    def get_twin(self, device_id: str) -> Twin: ...

    @abc.abstractmethod
    def patch_desired(self, device_id: str, patch: dict[str, Any], etag: str | None = None) -> Twin:
        """Merge-patch ``properties.desired`` (JSON merge semantics: None deletes)."""

    @abc.abstractmethod
    def query_twins(
        self, query: str, page_size: int = 1000, continuation: str | None = None
    ) -> Page[Twin]:
        """IoT Hub query language over ``devices``, e.g.
        ``SELECT * FROM devices WHERE properties.reported.x509.notAfter < '2026-12-01T00:00:00Z'``.
        """

    @abc.abstractmethod
    def invoke_method(
        self,
        device_id: str,
        method_name: str,
        payload: Any,
        connect_timeout: int = 10,
        response_timeout: int = 30,
    ) -> MethodResult:
        """DeviceOfflineError when the device is not connected or does not answer."""

    @abc.abstractmethod
    def schedule_method_job(
        self,
        job_id: str,
        query_condition: str,
        method_name: str,
        payload: Any,
        start_time: datetime | None = None,
        max_execution_seconds: int = 3600,
    ) -> JobStatus:
        """Bulk direct method to every device matching ``query_condition`` (e.g.
        ``deviceId IN ['a','b']``)."""

    @abc.abstractmethod
    def get_job(self, job_id: str) -> JobStatus: ...

    def active_jobs(self) -> list[JobStatus]:
        """Jobs that count against the hub's concurrent-job limit (queued, scheduled or
        running): at most 1 on Free and S1, 5 on S2, 10 on S3. A job scheduled beyond
        the limit fails with ``JobQuotaExceededError``."""
        raise NotImplementedError(f"{type(self).__name__} does not list jobs")


# --------------------------------------------------------------------------- issuing and metrics
# The rotation service's view of the issuer and of metrics. They are protocols, not
# abstract classes: ``shared.pki.issuer.Issuer`` and the metrics sinks satisfy them
# structurally, and the domain imports nothing from ``shared.pki``.


class IssuedLike(Protocol):
    """What ``Issuer.issue`` returns (``shared.pki.issuer.IssuedCertificate``)."""

    @property
    def record(self) -> CertificateRecord: ...

    @property
    def certificate(self) -> x509.Certificate: ...

    @property
    def chain_pem(self) -> str: ...

    @property
    def reused(self) -> bool: ...


class IssuerLike(Protocol):
    """The issuing CA as the rotation service uses it (``shared.pki.issuer.Issuer``).

    ``issue`` is idempotent on (device id, CSR): the same CSR returns the same
    certificate with ``reused=True``. The issuer is the one place a CSR is checked
    against the issuing policy.
    """

    def issue(
        self,
        device_id: str,
        csr_pem: str,
        *,
        request_id: str,
        trigger: Trigger,
        actor: str,
        known_allowed: bool = False,
        first_attempt: bool = False,
    ) -> IssuedLike: ...

    def check(
        self, device_id: str, csr_pem: str, *, request_id: str, trigger: Trigger, actor: str
    ) -> None:
        """Apply the issuing policy without issuing (CsrRejectedError, audited), refusing
        a key that one of the device's revoked certificates held."""

    def revoke(self, serial: str, reason: RevocationReason, actor: str) -> CertificateRecord: ...

    def publish_crl(self) -> str: ...


class Metrics(Protocol):
    """A counter sink (Application Insights custom metrics, or a local counter)."""

    def increment(self, name: str, value: int = 1, **dimensions: str) -> None: ...


# --------------------------------------------------------------------------- operators


class TokenValidator(abc.ABC):
    """Validates a caller's access token (Entra ID in Azure, a loopback issuer locally)."""

    @abc.abstractmethod
    def validate(self, token: str) -> Caller:
        """The caller the token proves: signature against the issuer's published keys,
        algorithm, issuer, tenant, audience and lifetime checked. Raises
        ``NotAuthenticatedError`` for a token that fails, ``AuthUnavailableError`` when the
        signing keys cannot be read."""

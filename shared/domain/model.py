"""certroll's domain model: plain dataclasses, no SDK imports.

Conventions used everywhere:
- times are timezone-aware UTC ``datetime``;
- a certificate serial is lower-case hex without leading zeros (``format(n, "x")``);
- a thumbprint is the lower-case hex SHA-256 of the DER certificate (64 chars);
- ``etag`` is opaque; ``None`` means "not read from a store yet".
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from shared.domain.redact import redact

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a paged query; ``continuation`` is None on the last page."""

    items: list[T]
    continuation: str | None = None


# --------------------------------------------------------------------------- ledger


class CertificateStatus(enum.StrEnum):
    ISSUED = "issued"  # signed, not yet confirmed in use by the device
    ACTIVE = "active"  # the device connected with it
    SUPERSEDED = "superseded"  # replaced by a newer certificate after confirmation
    REVOKED = "revoked"  # listed in the CRL
    FAILED = "failed"  # its rotation failed: withdrawn from every slot, never admitted again


def status_change_allowed(current: CertificateStatus, new: CertificateStatus) -> bool:
    """Whether a ledger row in ``current`` may move to ``new``: revoked is final, and a
    failed certificate may only be revoked (it is never admitted again)."""
    if current is CertificateStatus.REVOKED:
        return False
    if current is CertificateStatus.FAILED:
        return new is CertificateStatus.REVOKED
    return True


class RevocationReason(enum.StrEnum):
    """RFC 5280 reason codes, spelled as in the RFC (and as ``certroll revoke`` takes them)."""

    UNSPECIFIED = "unspecified"
    KEY_COMPROMISE = "keyCompromise"
    CA_COMPROMISE = "caCompromise"
    AFFILIATION_CHANGED = "affiliationChanged"
    SUPERSEDED = "superseded"
    CESSATION_OF_OPERATION = "cessationOfOperation"
    CERTIFICATE_HOLD = "certificateHold"
    PRIVILEGE_WITHDRAWN = "privilegeWithdrawn"


class Trigger(enum.StrEnum):
    """What asked for an issuance or rotation."""

    EXPIRING = "expiring"
    MANUAL = "manual"
    COMPROMISE = "compromise"
    CA_ROLL = "ca-roll"
    CLI = "cli"
    ALLOW = "allow"


@dataclass
class CertificateRecord:
    """One issued certificate in the issuance ledger."""

    serial: str
    device_id: str
    thumbprint_sha256: str
    not_before: datetime
    not_after: datetime
    csr_sha256: str
    issuer_key_id: str
    trigger: str
    request_id: str
    status: CertificateStatus
    pem: str  # the leaf certificate alone, PEM
    issued_at: datetime
    revoked_at: datetime | None = None
    revocation_reason: RevocationReason | None = None
    etag: str | None = field(default=None, compare=False)  # the ledger row's, when read


# --------------------------------------------------------------------------- rotation


class RotationState(enum.StrEnum):
    IDLE = "idle"
    CSR_REQUESTED = "csr_requested"
    CSR_RECEIVED = "csr_received"
    ISSUED = "issued"
    ENROLLED = "enrolled"
    DELIVERED = "delivered"
    REPROVISION_SENT = "reprovision_sent"
    CONFIRMED = "confirmed"
    FAILED = "failed"
    DISALLOWED = "disallowed"


@dataclass
class RotationRecord:
    """The per-device rotation record (one row per device, ETag-checked writes)."""

    device_id: str
    state: RotationState = RotationState.IDLE
    request_id: str | None = None
    reason: str | None = None  # Trigger value of the running rotation
    csr_sha256: str | None = None
    csr_pem: str | None = None
    new_serial: str | None = None
    new_thumbprint: str | None = None
    current_serial: str | None = None  # the certificate the device uses now
    current_thumbprint: str | None = None
    current_not_after: datetime | None = None
    slot: str | None = None  # "primary" | "secondary": where the new certificate went
    #: a 401 reconcile wrote the hub identity during this rotation: the finish reads it
    #: and leaves only the new thumbprint (economy.py skips that read otherwise)
    hub_cleanup: bool = False
    attempts: int = 0
    deadline: datetime | None = None  # when a non-idle record counts as stuck
    updated_at: datetime | None = None
    last_error: str | None = None
    disallowed_by: str | None = None
    disallowed_reason: str | None = None
    etag: str | None = None


# --------------------------------------------------------------------------- audit


@dataclass
class AuditEvent:
    """One append-only audit entry: who did what to which device, and how it ended."""

    action: str  # e.g. "issue", "issue_rejected", "disallow", "revoke", "slot_write"
    outcome: str  # "ok" | "rejected" | "failed" | "noop"
    actor: str  # principal name, "system:<function>" or "cli:<user>"
    device_id: str | None = None
    request_id: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    at: datetime | None = None  # filled by the store when None

    def __post_init__(self) -> None:
        # nothing audited carries a secret (a function key in a URL, a token, a PIN)
        self.detail = redact(self.detail)


# --------------------------------------------------------------------------- DPS


class ProvisioningStatus(enum.StrEnum):
    ENABLED = "enabled"
    DISABLED = "disabled"


@dataclass
class CertificateSlot:
    """An X.509 attestation slot (primary or secondary).

    Reads from DPS carry ``info`` only (thumbprint, expiry); writes carry ``pem``.
    """

    thumbprint_sha256: str | None = None
    not_after: datetime | None = None
    subject: str | None = None
    pem: str | None = None


@dataclass
class IndividualEnrollment:
    registration_id: str
    device_id: str | None = None
    primary: CertificateSlot | None = None  # clientCertificates.primary
    secondary: CertificateSlot | None = None  # clientCertificates.secondary
    provisioning_status: ProvisioningStatus = ProvisioningStatus.ENABLED
    reprovision_migrate_data: bool = True
    reprovision_update_hub_assignment: bool = True
    iot_hub_host_name: str | None = None
    etag: str | None = None
    # The service's JSON document as last read (None when not read from the service).
    # Writes send it back with only certroll's fields changed, so what an operator
    # configured (initial twin, allocation, capabilities, scopes...) survives a replace.
    document: dict[str, Any] | None = field(default=None, compare=False, repr=False)


#: Enrollments one DPS bulk operation takes: "Bulk device enrollment operation with maximum
#: of 10 enrollments" (service API 2021-10-01, IndividualEnrollment_RunBulkOperation).
MAX_BULK_ENROLLMENTS = 10


@dataclass(frozen=True)
class BulkItemError:
    """One enrollment a bulk operation did not write (``BulkEnrollmentOperationError``:
    ``registrationId``, ``errorCode``, ``errorStatus``). ``status`` is the HTTP status
    the error code stands for (DPS codes are the status followed by three digits, e.g.
    412201; the spec does not list them), ``message`` the service's ``errorStatus``."""

    registration_id: str
    status: int
    message: str


def bulk_status(error_code: int) -> int:
    """The HTTP status a DPS error code stands for (404201 -> 404; a bare status stays)."""
    return error_code // 1000 if error_code >= 100_000 else error_code


def bulk_items(enrollments: Any) -> list[IndividualEnrollment]:
    """The enrollments of one ``updateIfMatchETag`` bulk operation, checked: 1 to
    :data:`MAX_BULK_ENROLLMENTS` of them, each with an ETag, no registration id twice.
    ValueError otherwise (a caller's mistake, never the service's answer)."""
    items = list(enrollments)
    if not 1 <= len(items) <= MAX_BULK_ENROLLMENTS:
        raise ValueError(
            f"a bulk operation takes 1 to {MAX_BULK_ENROLLMENTS} enrollments, not {len(items)}"
        )
    ids = [e.registration_id for e in items]
    if len(set(ids)) != len(ids):
        raise ValueError("a bulk operation names an enrollment twice")
    if any(not e.etag or e.etag == "*" for e in items):
        raise ValueError("updateIfMatchETag needs each enrollment's etag")
    return items


@dataclass
class EnrollmentGroup:
    group_id: str
    primary: CertificateSlot | None = None  # signingCertificates.primary
    secondary: CertificateSlot | None = None  # signingCertificates.secondary
    ca_primary: str | None = None  # caReferences.primary (verified CA name)
    ca_secondary: str | None = None
    provisioning_status: ProvisioningStatus = ProvisioningStatus.ENABLED
    reprovision_migrate_data: bool = True
    reprovision_update_hub_assignment: bool = True
    etag: str | None = None
    # The service's JSON document as last read (None when not read from the service).
    # Writes send it back with only certroll's fields changed, so what an operator
    # configured (initial twin, allocation, capabilities, scopes...) survives a replace.
    document: dict[str, Any] | None = field(default=None, compare=False, repr=False)


@dataclass
class RegistrationState:
    registration_id: str
    status: str  # unassigned | assigning | assigned | failed | disabled
    assigned_hub: str | None = None
    device_id: str | None = None
    last_updated: datetime | None = None
    error_code: int | None = None
    error_message: str | None = None
    etag: str | None = None


# --------------------------------------------------------------------------- IoT Hub


class DeviceStatus(enum.StrEnum):
    ENABLED = "enabled"
    DISABLED = "disabled"


class AuthType(enum.StrEnum):
    SELF_SIGNED = "selfSigned"  # thumbprint authentication
    CERTIFICATE_AUTHORITY = "certificateAuthority"


@dataclass
class DeviceIdentity:
    device_id: str
    status: DeviceStatus = DeviceStatus.ENABLED
    auth_type: AuthType = AuthType.SELF_SIGNED
    primary_thumbprint: str | None = None
    secondary_thumbprint: str | None = None
    status_reason: str | None = None
    connection_state: str = "Disconnected"
    etag: str | None = None
    # The service's JSON document as last read (None when not read from the service).
    # Writes send it back with only certroll's fields changed, so what an operator
    # configured (initial twin, allocation, capabilities, scopes...) survives a replace.
    document: dict[str, Any] | None = field(default=None, compare=False, repr=False)


@dataclass
class ReportedCertificate:
    """The ``x509`` section a device reports (see docs/device-contract.md)."""

    thumbprint_sha256: str
    serial: str
    not_before: datetime
    not_after: datetime


@dataclass
class Twin:
    device_id: str
    desired: dict[str, Any] = field(default_factory=dict)
    reported: dict[str, Any] = field(default_factory=dict)
    desired_version: int = 0
    reported_version: int = 0
    tags: dict[str, Any] = field(default_factory=dict)
    status: DeviceStatus = DeviceStatus.ENABLED
    connection_state: str = "Disconnected"
    etag: str | None = None


@dataclass(frozen=True)
class MethodResult:
    status: int
    payload: Any = None


@dataclass
class JobStatus:
    job_id: str
    status: str  # queued | scheduled | running | completed | failed | cancelled
    type: str = "scheduleDeviceMethod"
    succeeded: int = 0
    failed: int = 0
    pending: int = 0


@dataclass(frozen=True)
class ConnectionFailure:
    """One hub Connections-log record of a failed connect (401003 or 403012).

    Only what the log documents: the device id, the result and its time. No field names
    the certificate the device presented (docs/api.md, "Connections log").
    """

    device_id: str
    code: int  # 401003 IoTHubUnauthorized, 403012 DeviceDisabled
    at: datetime
    message: str = ""  # the record's resultDescription


# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class DomainEvent:
    """An outbound event for the Event Grid custom topic."""

    event_type: str  # CertificateIssued | RotationCompleted | RotationFailed | DeviceDisallowed
    subject: str  # "devices/<id>"
    data: dict[str, Any]
    event_id: str = ""
    at: datetime | None = None
    #: what the publishing step already holds, for in-process observers
    #: (``shared.observability``); never published. ``RotationCompleted``:
    #: ``previous_certificate``, the ledger record of the certificate it replaced, so
    #: the observer does not read it again.
    observed: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

"""What the rotation use cases answer, and its JSON form (the API and the CLI show it).

Presentation only: nothing here decides anything.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.domain.model import (
    AuditEvent,
    CertificateRecord,
    CertificateSlot,
    DeviceIdentity,
    IndividualEnrollment,
    RotationRecord,
)
from shared.domain.rotation.context import iso


def record_dict(rec: RotationRecord | None) -> dict[str, Any] | None:
    """A rotation record without its ETag and CSR."""
    if rec is None:
        return None
    out: dict[str, Any] = {}
    for f in dataclasses.fields(rec):
        if f.name in ("etag", "csr_pem"):
            continue
        value = getattr(rec, f.name)
        out[f.name] = iso(value) if isinstance(value, datetime) else value
    return out


@dataclass(frozen=True)
class ReconcileOutcome:
    """What ``on_connection_failure`` decided.

    ``action``: reconciled | already_consistent | rate_limited | disabled_device |
    unknown_device | device_disallowed | no_admissible_certificate.
    """

    device_id: str
    code: int
    action: str
    changed: tuple[str, ...] = ()
    serial: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "deviceId": self.device_id,
            "code": self.code,
            "action": self.action,
            "changed": list(self.changed),
            "serial": self.serial,
        }


@dataclass(frozen=True)
class DisallowResult:
    device_id: str
    changed: bool
    enrollment: str  # disabled | created_disabled | already_disabled | none
    hub_identity: str  # disabled | already_disabled | none
    revoked: tuple[str, ...]
    cancelled_request_id: str | None
    crl_url: str | None
    record: RotationRecord

    def to_dict(self) -> dict[str, Any]:
        return {
            "deviceId": self.device_id,
            "changed": self.changed,
            "enrollment": self.enrollment,
            "hubIdentity": self.hub_identity,
            "revoked": list(self.revoked),
            "cancelledRequestId": self.cancelled_request_id,
            "crlUrl": self.crl_url,
            "record": record_dict(self.record),
        }


def _slot_dict(slot: CertificateSlot | None) -> dict[str, Any] | None:
    if slot is None:
        return None
    return {"thumbprint": slot.thumbprint_sha256, "notAfter": iso(slot.not_after)}


def _certificate_dict(c: CertificateRecord) -> dict[str, Any]:
    return {
        "serial": c.serial,
        "thumbprint": c.thumbprint_sha256,
        "status": c.status.value,
        "notBefore": iso(c.not_before),
        "notAfter": iso(c.not_after),
        "requestId": c.request_id,
        "trigger": c.trigger,
        "issuedAt": iso(c.issued_at),
        "revokedAt": iso(c.revoked_at),
        "revocationReason": c.revocation_reason.value if c.revocation_reason else None,
    }


def _audit_dict(a: AuditEvent) -> dict[str, Any]:
    return {
        "action": a.action,
        "outcome": a.outcome,
        "actor": a.actor,
        "requestId": a.request_id,
        "detail": dict(a.detail),
        "at": iso(a.at),
    }


@dataclass(frozen=True)
class DeviceView:
    device_id: str
    record: RotationRecord | None
    certificates: tuple[CertificateRecord, ...]
    enrollment: IndividualEnrollment | None
    hub_identity: DeviceIdentity | None
    audit: tuple[AuditEvent, ...]

    def to_dict(self) -> dict[str, Any]:
        enr = self.enrollment
        hub = self.hub_identity
        return {
            "deviceId": self.device_id,
            "rotation": record_dict(self.record),
            "certificates": [_certificate_dict(c) for c in self.certificates],
            "enrollment": None
            if enr is None
            else {
                "registrationId": enr.registration_id,
                "provisioningStatus": enr.provisioning_status.value,
                "primary": _slot_dict(enr.primary),
                "secondary": _slot_dict(enr.secondary),
            },
            "hubIdentity": None
            if hub is None
            else {
                "status": hub.status.value,
                "authType": hub.auth_type.value,
                "primaryThumbprint": hub.primary_thumbprint,
                "secondaryThumbprint": hub.secondary_thumbprint,
                "connectionState": hub.connection_state,
            },
            "audit": [_audit_dict(a) for a in self.audit],
        }

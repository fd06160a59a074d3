"""The fleet as the ledger sees it: one snapshot for the HTML report and the gauges.

Built from what the storage ports hold (rotation records, ledger certificates, recent
audit entries) and the CA certificates; pure, so the report and the metrics agree.

A device's *status* is the first that applies of:

- ``disallowed``: an operator disallowed it (no certificate is issued to it);
- ``failed``: its last rotation failed (the sweep retries it);
- ``overdue``: its current certificate is past notAfter;
- ``stuck``: a rotation is running past its deadline (or has not moved for one);
- ``late``: its renewal point is more than the rotation deadline behind it and no
  rotation has replaced the certificate (past its renewal deadline);
- ``ok`` otherwise.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography import x509

from shared.domain.model import (
    AuditEvent,
    CertificateRecord,
    CertificateStatus,
    RotationRecord,
    RotationState,
)
from shared.domain.policy import RotationPolicy

STATUSES = ("ok", "late", "stuck", "overdue", "failed", "disallowed")
#: days-to-expiry buckets of ``certroll.devices_by_expiry`` (upper bounds, inclusive)
EXPIRY_BUCKETS: tuple[tuple[str, float], ...] = (
    ("expired", -1),
    ("0-3", 3),
    ("4-7", 7),
    ("8-14", 14),
    ("15-30", 30),
    ("31-90", 90),
    ("91+", math.inf),
)
_IN_FLIGHT = frozenset(
    {
        RotationState.CSR_REQUESTED,
        RotationState.CSR_RECEIVED,
        RotationState.ISSUED,
        RotationState.ENROLLED,
        RotationState.DELIVERED,
        RotationState.REPROVISION_SENT,
        RotationState.CONFIRMED,
    }
)


def expiry_bucket(days: int) -> str:
    for name, upper in EXPIRY_BUCKETS:
        if days <= upper:
            return name
    return EXPIRY_BUCKETS[-1][0]  # pragma: no cover - the last bound is infinite


@dataclass(frozen=True)
class DeviceProblem:
    device_id: str
    status: str
    state: str
    reason: str
    since: datetime | None


@dataclass(frozen=True)
class CaCertificate:
    role: str  # issuing | intermediate | root
    subject: str
    not_after: datetime
    days_left: int


@dataclass
class FleetSnapshot:
    at: datetime
    devices: int = 0
    #: devices per whole day until their current certificate expires (negative: expired)
    expiry_days: Counter[int] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    states: Counter[str] = field(default_factory=Counter)
    problems: list[DeviceProblem] = field(default_factory=list)
    #: issuing key id -> certificate status -> count
    certificates_by_issuer: dict[str, Counter[str]] = field(default_factory=dict)
    certificates: int = 0
    #: running rotations by trigger
    in_flight: Counter[str] = field(default_factory=Counter)
    #: devices whose current certificate the current issuing key signed / another key
    on_current_key: int = 0
    on_other_key: int = 0
    ca: list[CaCertificate] = field(default_factory=list)
    recent_disallows: list[AuditEvent] = field(default_factory=list)
    recent_reconciles: list[AuditEvent] = field(default_factory=list)

    @property
    def expiry_buckets(self) -> dict[str, int]:
        out = {name: 0 for name, _ in EXPIRY_BUCKETS}
        for days, n in self.expiry_days.items():
            out[expiry_bucket(days)] += n
        return out


def _renewal_point(
    rec: RotationRecord, cert: CertificateRecord | None, policy: RotationPolicy
) -> datetime | None:
    if rec.current_not_after is None:
        return None
    not_before = cert.not_before if cert is not None else rec.current_not_after - policy.validity
    return policy.renewal_time(rec.device_id, not_before, rec.current_not_after)


def _status(
    rec: RotationRecord,
    cert: CertificateRecord | None,
    policy: RotationPolicy,
    now: datetime,
) -> tuple[str, str, datetime | None]:
    """(status, reason, since) of one device."""
    if rec.state is RotationState.DISALLOWED:
        return "disallowed", rec.disallowed_reason or "", rec.updated_at
    if rec.state is RotationState.FAILED:
        return "failed", rec.last_error or "", rec.updated_at
    if rec.current_not_after is not None and rec.current_not_after <= now:
        return "overdue", f"certificate expired {rec.current_not_after:%Y-%m-%d %H:%M}Z", (
            rec.current_not_after
        )
    if rec.state in _IN_FLIGHT:
        stale = rec.updated_at is not None and rec.updated_at < now - policy.rotation_deadline
        if (rec.deadline is not None and rec.deadline <= now) or stale:
            reason = rec.last_error or f"waiting in {rec.state.value}"
            return "stuck", reason, rec.updated_at
    renewal = _renewal_point(rec, cert, policy)
    if (
        renewal is not None
        and rec.state is RotationState.IDLE
        and renewal + policy.rotation_deadline <= now
    ):
        return "late", f"renewal due since {renewal:%Y-%m-%d %H:%M}Z", renewal
    return "ok", "", None


def _ca_role(index: int, cert: x509.Certificate) -> str:
    if cert.subject == cert.issuer:
        return "root"
    return "issuing" if index == 0 else "intermediate"


def build_snapshot(
    *,
    records: Iterable[RotationRecord],
    certificates: Iterable[CertificateRecord],
    audit: Iterable[AuditEvent] = (),
    ca_certificates: Sequence[x509.Certificate] = (),
    current_key_id: str | None = None,
    policy: RotationPolicy | None = None,
    now: datetime,
    recent: int = 20,
) -> FleetSnapshot:
    """The snapshot at ``now``; ``ca_certificates``: the issuing CA first, root last."""
    policy = policy or RotationPolicy()
    snap = FleetSnapshot(at=now)
    by_serial: dict[str, CertificateRecord] = {}
    for cert in certificates:
        by_serial[cert.serial] = cert
        snap.certificates += 1
        counts = snap.certificates_by_issuer.setdefault(cert.issuer_key_id, Counter())
        counts[CertificateStatus(cert.status).value] += 1
    for rec in records:
        snap.devices += 1
        snap.states[rec.state.value] += 1
        current = by_serial.get(rec.current_serial or "")
        if rec.current_not_after is not None and rec.state is not RotationState.DISALLOWED:
            days = math.floor((rec.current_not_after - now) / timedelta(days=1))
            snap.expiry_days[days] += 1
        status, reason, since = _status(rec, current, policy, now)
        snap.statuses[status] += 1
        if status != "ok":
            snap.problems.append(
                DeviceProblem(rec.device_id, status, rec.state.value, reason, since)
            )
        if rec.state in _IN_FLIGHT:
            snap.in_flight[rec.reason or "unknown"] += 1
        if current is not None and current_key_id is not None:
            if current.issuer_key_id == current_key_id:
                snap.on_current_key += 1
            else:
                snap.on_other_key += 1
    # the most severe first: disallowed, failed, overdue, stuck, late
    snap.problems.sort(key=lambda p: (-STATUSES.index(p.status), p.device_id))
    for i, ca in enumerate(ca_certificates):
        left = ca.not_valid_after_utc - now
        snap.ca.append(
            CaCertificate(
                _ca_role(i, ca),
                ca.subject.rfc4514_string(),
                ca.not_valid_after_utc,
                math.floor(left / timedelta(days=1)),
            )
        )
    for event in audit:
        if event.action == "disallow" and len(snap.recent_disallows) < recent:
            snap.recent_disallows.append(event)
        elif event.action == "reconcile" and len(snap.recent_reconciles) < recent:
            snap.recent_reconciles.append(event)
    return snap

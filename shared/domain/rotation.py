"""The rotation service: certroll's state machine for device certificates (pure Python).

One :class:`~shared.domain.model.RotationRecord` per device drives

    idle -> csr_requested -> csr_received -> issued -> enrolled -> delivered
         -> reprovision_sent -> confirmed -> idle        (+ failed, disallowed)

Rules every step follows (docs/rotation.md explains them):

- a step performs its side effects first and writes the record last, with the ETag it
  read; every side effect is idempotent (keyed by device id + requestId, the CSR's
  SHA-256, slot contents), so a crash between any two calls, a redelivered message or a
  duplicate event repeats harmless work and converges on one certificate per request;
- on :class:`ConcurrencyError` the record is read again and the decision made again;
- every port call goes through :class:`~shared.domain.retry.Retrier`: a 429 is waited
  out on the clock, and when it persists the ThrottledError propagates with the record
  still in its last written state (the queue redelivers).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

from cryptography import x509

from shared.domain.certs import certificate_pem, sha1_thumbprint
from shared.domain.errors import (
    ConcurrencyError,
    ConflictError,
    CsrRejectedError,
    DeviceDisallowedError,
    DeviceOfflineError,
    InvalidRequestError,
    NotFoundError,
    ThrottledError,
)
from shared.domain.messages import (
    CsrAnswer,
    ReportedX509,
    format_time,
    parse_reported_x509,
    parse_rotate_message,
    rotate_message,
)
from shared.domain.model import (
    AuditEvent,
    AuthType,
    CertificateRecord,
    CertificateSlot,
    CertificateStatus,
    ConnectionFailure,
    DeviceIdentity,
    DeviceStatus,
    DomainEvent,
    IndividualEnrollment,
    JobStatus,
    ProvisioningStatus,
    ReportedCertificate,
    RevocationReason,
    RotationRecord,
    RotationState,
    Trigger,
    Twin,
)
from shared.domain.policy import Renewal, RotationPolicy
from shared.domain.retry import Retrier, backoff
from shared.domain.sweep import BatchResult, SweepPlan
from shared.ports import (
    AuditLog,
    CertificateLedger,
    Clock,
    DeviceRegistry,
    EnrollmentStore,
    EventSink,
    NullTracer,
    RotationStateStore,
    Tracer,
    WorkQueue,
    in_rotation_trace,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

REPROVISION_METHOD = "reprovision"
SYSTEM_ACTOR = "system:rotation"

#: states in which a rotation is running
IN_FLIGHT: frozenset[RotationState] = frozenset(
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
#: states in which the new certificate is enrolled, so the device may be using it
CONFIRMABLE: frozenset[RotationState] = frozenset(
    {RotationState.ENROLLED, RotationState.DELIVERED, RotationState.REPROVISION_SENT}
)
#: states in which the rotation waits for the device
WAITING_ON_DEVICE: frozenset[RotationState] = frozenset(
    {RotationState.CSR_REQUESTED, RotationState.DELIVERED, RotationState.REPROVISION_SENT}
)
#: a record's request fields, cleared when a rotation starts and when it ends
_NO_REQUEST: dict[str, Any] = {
    "request_id": None,
    "reason": None,
    "csr_pem": None,
    "csr_sha256": None,
    "new_serial": None,
    "new_thumbprint": None,
    "slot": None,
    "attempts": 0,
    "deadline": None,
    "last_error": None,
}
#: states a repeated CSR report drives on: nothing in them waits for the device
_RESUMABLE_ON_CSR: frozenset[RotationState] = frozenset(
    {RotationState.CSR_RECEIVED, RotationState.ISSUED, RotationState.ENROLLED}
)
#: the reasons the device contract knows (docs/device-contract.md)
_DEVICE_REASONS = {
    Trigger.EXPIRING: "expiring",
    Trigger.MANUAL: "manual",
    Trigger.COMPROMISE: "compromise",
    Trigger.CA_ROLL: "ca-roll",
    Trigger.CLI: "manual",
    Trigger.ALLOW: "manual",
}
_MAX_STEPS = 16  # transitions one drive may make (the chain has 8)
_MAX_CAS = 6  # re-reads after a ConcurrencyError before giving up
_ISSUED_CACHE = 1024  # issued certificates kept for the delivery step of their request


# --------------------------------------------------------------------------- collaborators


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
    certificate with ``reused=True``.
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
    def increment(self, name: str, value: int = 1, **dimensions: str) -> None: ...


class NullMetrics:
    def increment(self, name: str, value: int = 1, **dimensions: str) -> None:
        return None


class CountingMetrics:
    """Counts by metric name (local runs and tests)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def increment(self, name: str, value: int = 1, **dimensions: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + value


@dataclass
class RotationDeps:
    state: RotationStateStore
    ledger: CertificateLedger
    audit: AuditLog
    enrollments: EnrollmentStore
    registry: DeviceRegistry
    issuer: IssuerLike
    events: EventSink
    queue: WorkQueue
    clock: Clock
    policy: RotationPolicy = field(default_factory=RotationPolicy)
    metrics: Metrics = field(default_factory=NullMetrics)
    tracer: Tracer = field(default_factory=NullTracer)
    #: the issuing CA certificate and its chain, for the sweep's expiry warning
    ca_certificates: Sequence[x509.Certificate] = ()
    actor: str = SYSTEM_ACTOR


# --------------------------------------------------------------------------- results


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _record_dict(rec: RotationRecord | None) -> dict[str, Any] | None:
    if rec is None:
        return None
    out: dict[str, Any] = {}
    for f in dataclasses.fields(rec):
        if f.name in ("etag", "csr_pem"):
            continue
        value = getattr(rec, f.name)
        out[f.name] = _iso(value) if isinstance(value, datetime) else value
    return out


@dataclass(frozen=True)
class ReconcileOutcome:
    """What ``on_connection_failure`` decided.

    ``action``: reconciled | already_consistent | rate_limited | disabled_device |
    no_thumbprint | unknown_certificate | foreign_certificate | revoked_certificate |
    device_disallowed.
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
            "record": _record_dict(self.record),
        }


def _slot_dict(slot: CertificateSlot | None) -> dict[str, Any] | None:
    if slot is None:
        return None
    return {"thumbprint": slot.thumbprint_sha256, "notAfter": _iso(slot.not_after)}


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
            "rotation": _record_dict(self.record),
            "certificates": [
                {
                    "serial": c.serial,
                    "thumbprint": c.thumbprint_sha256,
                    "status": c.status.value,
                    "notBefore": _iso(c.not_before),
                    "notAfter": _iso(c.not_after),
                    "requestId": c.request_id,
                    "trigger": c.trigger,
                    "issuedAt": _iso(c.issued_at),
                    "revokedAt": _iso(c.revoked_at),
                    "revocationReason": c.revocation_reason.value if c.revocation_reason else None,
                }
                for c in self.certificates
            ],
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
            "audit": [
                {
                    "action": a.action,
                    "outcome": a.outcome,
                    "actor": a.actor,
                    "requestId": a.request_id,
                    "detail": dict(a.detail),
                    "at": _iso(a.at),
                }
                for a in self.audit
            ],
        }


# --------------------------------------------------------------------------- helpers


def _thumb(slot: CertificateSlot | None) -> str | None:
    if slot is None or slot.thumbprint_sha256 is None:
        return None
    return slot.thumbprint_sha256.lower()


def _lower(value: str | None) -> str | None:
    return value.lower() if value else None


def _sha1_of_pem(pem: str) -> str | None:
    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        return None
    return sha1_thumbprint(cert)  # hub thumbprints may be SHA-1


def _leaf_chain(issued: IssuedLike) -> str:
    """The PEM chain to deliver: the leaf first, then the issuing chain."""
    leaf = certificate_pem(issued.certificate)
    chain = issued.chain_pem or ""
    if leaf.strip() in chain:
        return chain if chain.endswith("\n") else chain + "\n"
    return leaf + chain


def _choose_slot(
    primary: str | None,
    secondary: str | None,
    keep: str | None,
    primary_expiry: datetime | None = None,
    secondary_expiry: datetime | None = None,
) -> str:
    """The slot rule: the slot that does not hold ``keep`` (the certificate in use).

    When neither slot holds it: an empty slot, else the one expiring first.
    """
    if keep and primary == keep:
        return "secondary"
    if keep and secondary == keep:
        return "primary"
    if primary is None:
        return "primary"
    if secondary is None:
        return "secondary"
    if primary_expiry is not None and secondary_expiry is not None:
        return "primary" if primary_expiry <= secondary_expiry else "secondary"
    return "secondary"


def _device_reason(reason: str | None) -> str:
    try:
        return _DEVICE_REASONS[Trigger(reason or Trigger.EXPIRING.value)]
    except ValueError:
        return "manual"


def _trigger(reason: str | None) -> Trigger:
    try:
        return Trigger(reason or Trigger.EXPIRING.value)
    except ValueError:
        return Trigger.MANUAL


def _quote(device_id: str) -> str:
    return "'" + device_id.replace("'", "''") + "'"


# --------------------------------------------------------------------------- the service


class RotationService:
    """Rotates the certificate of one device at a time; see the module docstring."""

    def __init__(self, deps: RotationDeps) -> None:
        self.deps = deps
        self.policy = deps.policy
        self.retrier = Retrier(deps.clock, deps.policy.retry)
        self._issued: dict[tuple[str, str], IssuedLike] = {}
        self._issued_lock = threading.Lock()

    # ------------------------------------------------------------------ plumbing

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return self.retrier.call(self.deps.tracer.wrap(fn), *args, **kwargs)

    def _now(self) -> datetime:
        return self.deps.clock.now()

    def _get(self, device_id: str) -> RotationRecord | None:
        return self._call(self.deps.state.get, device_id)

    def _save(self, rec: RotationRecord, **changes: Any) -> RotationRecord:
        """Write ``rec`` with ``changes`` (ETag-checked; create when ``rec.etag`` is None)."""
        new = dataclasses.replace(rec, **changes)
        new.updated_at = self._now()
        saved = self._call(self.deps.state.put, new)
        logger.info(
            "device %s request %s: %s -> %s",
            rec.device_id,
            saved.request_id,
            rec.state.value,
            saved.state.value,
        )
        return saved

    def _audit(
        self,
        action: str,
        outcome: str,
        device_id: str,
        *,
        actor: str | None = None,
        request_id: str | None = None,
        **detail: Any,
    ) -> None:
        event = AuditEvent(
            action=action,
            outcome=outcome,
            actor=actor or self.deps.actor,
            device_id=device_id,
            request_id=request_id,
            detail=detail,
            at=self._now(),
        )
        self._call(self.deps.audit.append, event)

    def _publish(self, event_type: str, device_id: str, event_id: str, **data: Any) -> None:
        event = DomainEvent(
            event_type=event_type,
            subject=f"devices/{device_id}",
            data={"deviceId": device_id, **data},
            event_id=event_id,
            at=self._now(),
        )
        self._call(self.deps.events.publish, [event])

    def _metric(self, name: str, **dimensions: str) -> None:
        try:
            self.deps.metrics.increment(name, 1, **dimensions)
        except Exception:  # metrics never break a rotation
            logger.exception("metric %s could not be recorded", name)

    def _twin(self, device_id: str) -> Twin:
        return self._call(self.deps.registry.get_twin, device_id)

    def _individual(self, device_id: str) -> IndividualEnrollment | None:
        try:
            return self._call(self.deps.enrollments.get_individual, device_id)
        except NotFoundError:
            return None

    def _identity(self, device_id: str) -> DeviceIdentity | None:
        try:
            return self._call(self.deps.registry.get_device, device_id)
        except NotFoundError:
            return None

    def _issue(self, rec: RotationRecord, *, first_attempt: bool = False) -> IssuedLike:
        """The certificate of ``rec``'s request (idempotent on device + CSR).
        ``first_attempt``: this operation has just moved the request to csr_received."""
        if rec.request_id is None or rec.csr_pem is None:
            raise ValueError(f"{rec.device_id}: record in {rec.state.value} has no request/CSR")
        key = (rec.device_id, rec.request_id)
        with self._issued_lock:
            cached = self._issued.get(key)
        if cached is not None:
            return cached
        issued = self._call(
            self.deps.issuer.issue,
            rec.device_id,
            rec.csr_pem,
            request_id=rec.request_id,
            trigger=_trigger(rec.reason),
            actor=self.deps.actor,
            # rec was read or written in this operation, and no step runs on a disallowed
            # record; a disallow landing after that makes the next ETag-checked write
            # fail, and _drive then revokes what was issued (_revoke_stray)
            known_allowed=True,
            first_attempt=first_attempt,
        )
        with self._issued_lock:  # the latest few, for the steps that follow
            self._issued[key] = issued
            while len(self._issued) > _ISSUED_CACHE:
                del self._issued[next(iter(self._issued))]
        return issued

    def _with_record(
        self,
        device_id: str,
        action: Callable[[RotationRecord | None], T],
        what: str,
        read: tuple[RotationRecord | None] | None = None,
    ) -> T:
        """Run ``action`` on the current record, again on a fresh read after a lost race.
        ``read`` is a record the caller has just read (``(None,)``: it has none), used for
        the first attempt; its ETag makes a stale one a lost race like any other."""
        for _ in range(_MAX_CAS):
            rec = read[0] if read is not None else self._get(device_id)
            read = None
            try:
                return action(rec)
            except (ConcurrencyError, ConflictError):
                logger.info("device %s: record changed during %s; deciding again", device_id, what)
        raise ConcurrencyError(f"{device_id}: the rotation record kept changing during {what}")

    # ------------------------------------------------------------------ public: entry points

    def on_twin_reported(
        self, device_id: str, reported_x509: dict[str, Any], twin_version: int | None = None
    ) -> RotationRecord:
        """A device's reported ``x509`` section changed (routed TwinChangeEvents)."""
        report = parse_reported_x509(device_id, reported_x509)
        logger.debug("device %s reported x509 (twin version %s)", device_id, twin_version)
        return self._with_record(
            device_id, lambda rec: self._on_report(device_id, rec, report), "twin report"
        )

    def on_device_connected(self, device_id: str, at: datetime) -> RotationRecord | None:
        """DeviceConnected: deliver what waits for the device, or look for confirmation."""
        rec = self._get(device_id)
        if rec is None or rec.state not in IN_FLIGHT:
            return rec
        if rec.state is RotationState.CSR_REQUESTED:
            return self._ensure_renewal_requested(rec)
        if rec.state in CONFIRMABLE and self._confirmed_by_device(rec, at):
            return self._drive(self._confirm(rec, "connected"))
        if rec.state is RotationState.DELIVERED:
            return self._drive(rec, force=True)
        return rec

    def on_device_created(self, device_id: str) -> RotationRecord:
        """DeviceCreated: make the device's (idle) record, adopting the hub's thumbprint."""

        def create(rec: RotationRecord | None) -> RotationRecord:
            if rec is not None:
                return rec
            new = RotationRecord(device_id=device_id)
            ident = self._identity(device_id)
            if ident is not None and ident.auth_type is AuthType.SELF_SIGNED:
                for thumb in (ident.primary_thumbprint, ident.secondary_thumbprint):
                    cert = (
                        self._call(self.deps.ledger.find_by_thumbprint, thumb.lower())
                        if (thumb)
                        else None
                    )
                    if (
                        cert is not None
                        and cert.device_id == device_id
                        and (cert.status is not CertificateStatus.REVOKED)
                    ):
                        new.current_serial = cert.serial
                        new.current_thumbprint = cert.thumbprint_sha256
                        new.current_not_after = cert.not_after
                        break
            return self._save(new)

        return self._with_record(device_id, create, "device created")

    def start_renewal(
        self,
        device_id: str,
        reason: Trigger,
        actor: str,
        *,
        read: tuple[RotationRecord | None] | None = None,
    ) -> RotationRecord:
        """Ask the device for a CSR (manual renew API, sweep, due certificate).

        A rotation already running is returned unchanged (coalesced); a disallowed
        device raises DeviceDisallowedError; an unknown device NotFoundError. ``read``:
        the record as the caller has just read it (see ``_with_record``).
        """
        reason = Trigger(reason)
        return self._with_record(
            device_id, lambda rec: self._start(device_id, rec, reason, actor), "start", read
        )

    def advance(self, device_id: str) -> RotationRecord:
        """Drive one record as far as it can go now (resumes stuck and offline devices)."""
        rec = self._get(device_id)
        if rec is None:
            raise NotFoundError(f"no rotation record for device {device_id}")
        if rec.state is RotationState.FAILED:
            return self.start_renewal(device_id, _trigger(rec.reason), self.deps.actor)
        return self._drive(rec, force=True)

    # ------------------------------------------------------------------ twin reports

    def _on_report(
        self, device_id: str, rec: RotationRecord | None, report: ReportedX509
    ) -> RotationRecord:
        if rec is not None and rec.state is RotationState.DISALLOWED:
            logger.info("device %s is disallowed; its twin report is not acted on", device_id)
            return rec
        if rec is not None and report.renewal is not None:
            result = report.renewal
            if result.request_id == rec.request_id:
                if result.status == "installed" and rec.state in CONFIRMABLE:
                    return self._drive(self._confirm(rec, "installed"))
                if result.status == "failed" and rec.state in IN_FLIGHT - {RotationState.CONFIRMED}:
                    code = result.error_code or "device_failed"
                    return self._fail(rec, code, result.error or "the device reported failure")
        if rec is not None and report.csr is not None:
            handled = self._on_csr(rec, report.csr)
            if handled is not None:
                return handled
        cert = report.certificate
        if cert is None:
            return rec if rec is not None else self._save(RotationRecord(device_id=device_id))
        if rec is not None and rec.state in IN_FLIGHT:
            if rec.state in CONFIRMABLE and cert.thumbprint_sha256 == rec.new_thumbprint:
                return self._drive(self._confirm(rec, "reported"))
            if rec.state is RotationState.CSR_REQUESTED:
                return self._ensure_renewal_requested(rec)
            return rec
        return self._on_current_certificate(device_id, rec, cert)

    def _on_csr(self, rec: RotationRecord, csr: CsrAnswer) -> RotationRecord | None:
        if csr.request_id != rec.request_id:
            logger.info(
                "device %s: CSR for request %s ignored (current request %s)",
                rec.device_id,
                csr.request_id,
                rec.request_id,
            )
            return None
        if rec.state is RotationState.CSR_REQUESTED:
            saved = self._save(
                rec,
                state=RotationState.CSR_RECEIVED,
                csr_pem=csr.pem,
                csr_sha256=csr.sha256,
                deadline=self._now() + self.policy.work_timeout,
                last_error=None,
            )
            return self._drive(saved, first_attempt=True)
        if rec.csr_sha256 is not None and rec.csr_sha256 != csr.sha256:
            # the request is bound to the first CSR: one certificate per request
            self._audit(
                "csr_ignored",
                "rejected",
                rec.device_id,
                request_id=rec.request_id,
                reason="a different CSR was already accepted for this request",
            )
            return rec
        if rec.state in _RESUMABLE_ON_CSR:
            # the same CSR again: a redelivered report after a crash between two steps
            # (e.g. signed but the record not written); carry on now, not at the sweep
            return self._drive(rec)
        return rec

    def _on_current_certificate(
        self, device_id: str, rec: RotationRecord | None, cert: ReportedCertificate
    ) -> RotationRecord:
        """Idle (or failed, or new) device reporting the certificate it uses."""
        base = rec if rec is not None else RotationRecord(device_id=device_id)
        if base.current_thumbprint != cert.thumbprint_sha256:
            adopted = self._adopt(base, cert)
            if adopted is None:  # stale or foreign report: nothing changes
                return rec if rec is not None else self._save(base)
            base = adopted
        elif base.current_not_after != cert.not_after or rec is None:
            base = self._save(base, current_not_after=cert.not_after)
        if base.state is not RotationState.IDLE:
            return base
        decision = self.policy.decide(device_id, cert.not_before, cert.not_after, self._now())
        if decision is Renewal.NOT_DUE:
            return base
        self._metric("certroll.renewal_due", decision=decision.value)
        return self._start(device_id, base, Trigger.EXPIRING, "system:twin")

    def _adopt(self, rec: RotationRecord, cert: ReportedCertificate) -> RotationRecord | None:
        device_id = rec.device_id
        known = self._call(self.deps.ledger.find_by_thumbprint, cert.thumbprint_sha256)
        if known is not None and known.device_id != device_id:
            self._audit(
                "unexpected_certificate",
                "rejected",
                device_id,
                thumbprint=cert.thumbprint_sha256,
                issuedTo=known.device_id,
            )
            self._metric("certroll.foreign_certificate")
            return None
        if known is not None and known.status is CertificateStatus.REVOKED:
            self._audit(
                "unexpected_certificate",
                "rejected",
                device_id,
                thumbprint=cert.thumbprint_sha256,
                serial=known.serial,
                status="revoked",
            )
            self._metric("certroll.revoked_certificate_reported")
            return None
        if known is not None and rec.current_serial and rec.current_serial != known.serial:
            current = self._ledger_get(rec.current_serial)
            if known.status is CertificateStatus.SUPERSEDED or (
                current is not None and known.issued_at < current.issued_at
            ):
                logger.info(
                    "device %s: stale report of %s ignored (current %s)",
                    device_id,
                    known.serial,
                    rec.current_serial,
                )
                return None
        retired = False
        if known is not None and rec.current_serial not in (None, known.serial):
            # a newer certificate of certroll's own replaces the current one (the device
            # installed a renewal whose confirmation certroll missed, e.g. let back in by a
            # 401 reconcile): the previous one must not stay accepted until the next
            # rotation
            moved_on = dataclasses.replace(
                rec, new_serial=known.serial, new_thumbprint=known.thumbprint_sha256.lower()
            )
            self._retire_previous(moved_on, compromise=False)
            retired = True
        elif known is not None and known.status is CertificateStatus.ISSUED:
            self._call(self.deps.ledger.set_status, known.serial, CertificateStatus.ACTIVE)
        self._audit(
            "adopt_certificate",
            "ok",
            device_id,
            thumbprint=cert.thumbprint_sha256,
            serial=cert.serial,
            issuedByCertroll=known is not None,
            previous=rec.current_thumbprint,
            previousRetired=retired,
        )
        if known is None:
            self._metric("certroll.unknown_certificate_adopted")
        return self._save(
            rec,
            current_serial=cert.serial,
            current_thumbprint=cert.thumbprint_sha256,
            current_not_after=cert.not_after,
        )

    def _ledger_get(self, serial: str) -> CertificateRecord | None:
        try:
            return self._call(self.deps.ledger.get, serial)
        except NotFoundError:
            return None

    # ------------------------------------------------------------------ starting

    def _start(
        self, device_id: str, rec: RotationRecord | None, reason: Trigger, actor: str
    ) -> RotationRecord:
        if rec is None:
            if self._identity(device_id) is None and self._individual(device_id) is None:
                raise NotFoundError(f"device {device_id} is not known to the hub or DPS")
            rec = RotationRecord(device_id=device_id)
        if rec.state is RotationState.DISALLOWED:
            raise DeviceDisallowedError(
                f"device {device_id} is disallowed ({rec.disallowed_reason}); allow it first"
            )
        if rec.state in IN_FLIGHT:
            if rec.state is RotationState.CSR_REQUESTED:
                return self._ensure_renewal_requested(rec)
            return rec
        return self._begin(rec, reason, actor)

    def _begin(
        self, rec: RotationRecord, reason: Trigger, actor: str, **extra: Any
    ) -> RotationRecord:
        request_id = uuid.uuid4().hex
        started = {
            "state": RotationState.CSR_REQUESTED,
            "request_id": request_id,
            "reason": reason.value,
            "deadline": self._now() + self.policy.rotation_deadline,
        }
        saved = self._save(rec, **(_NO_REQUEST | started | extra))
        self._audit(
            "rotation_start",
            "ok",
            rec.device_id,
            actor=actor,
            request_id=request_id,
            reason=reason.value,
        )
        self._metric("certroll.rotation_started", reason=reason.value)
        self._request_csr(saved)
        return saved

    def _renewal_request(self, rec: RotationRecord) -> dict[str, Any]:
        return {
            "requestId": rec.request_id,
            "reason": _device_reason(rec.reason),
            "keyAlgorithm": self.policy.key_algorithm,
        }

    @in_rotation_trace
    def _request_csr(self, rec: RotationRecord) -> None:
        patch = {"x509": {"renewal": self._renewal_request(rec), "issued": None}}
        self._call(self.deps.registry.patch_desired, rec.device_id, patch)

    def _ensure_renewal_requested(self, rec: RotationRecord) -> RotationRecord:
        """Re-write the desired renewal request when the twin does not carry it."""
        twin = self._twin(rec.device_id)
        reported = twin.reported.get("x509") if isinstance(twin.reported, dict) else None
        if isinstance(reported, dict):
            try:
                parsed = parse_reported_x509(rec.device_id, reported)
            except InvalidRequestError:
                parsed = None
            if parsed is not None and parsed.csr is not None:
                handled = self._on_csr(rec, parsed.csr)
                if handled is not None and handled.state is not RotationState.CSR_REQUESTED:
                    return handled
        desired = twin.desired.get("x509") if isinstance(twin.desired, dict) else None
        current = desired.get("renewal") if isinstance(desired, dict) else None
        if not isinstance(current, dict) or current.get("requestId") != rec.request_id:
            logger.info(
                "device %s: renewal request %s written again", rec.device_id, rec.request_id
            )
            self._request_csr(rec)
        return rec

    # ------------------------------------------------------------------ driving

    @in_rotation_trace
    def _drive(
        self,
        rec: RotationRecord,
        *,
        force: bool = False,
        defer_reprovision: bool = False,
        first_attempt: bool = False,
    ) -> RotationRecord:
        """Step ``rec`` until it waits. ``first_attempt``: the caller has just written
        ``rec`` into csr_received (its first step is the request's first issuance)."""
        for step in range(_MAX_STEPS):
            try:
                nxt = self._step(
                    rec,
                    force=force,
                    defer_reprovision=defer_reprovision,
                    first_attempt=first_attempt and step == 0,
                )
            except ConcurrencyError:
                fresh = self._get(rec.device_id)
                if fresh is None:
                    raise
                if fresh.state is RotationState.DISALLOWED:
                    self._revoke_stray(rec)
                rec = fresh
                continue
            if nxt is None:
                return rec
            if nxt.state is rec.state:  # bookkeeping only (attempts, next try): wait
                return nxt
            rec = nxt
        return rec

    def _revoke_stray(self, rec: RotationRecord) -> None:
        """A disallow won the race against ``rec``'s request. A certificate issued for it
        after the disallow listed the device's certificates escaped that revocation; it
        is revoked here as the disallow revokes, and the CRL published again."""
        stray = self._revoke_all(rec.device_id, self.deps.actor)
        if stray:
            logger.warning(
                "device %s: %s issued as the device was disallowed; revoked",
                rec.device_id,
                ", ".join(stray),
            )
            self._call(self.deps.issuer.publish_crl)

    def _revoke_all(self, device_id: str, actor: str) -> list[str]:
        """Revoke (keyCompromise) every certificate of the device not yet revoked; their
        serials. The CRL is the caller's to publish."""
        revoked: list[str] = []
        for cert in self._call(self.deps.ledger.list_for_device, device_id):
            if cert.status is not CertificateStatus.REVOKED:
                self._call(
                    self.deps.issuer.revoke, cert.serial, RevocationReason.KEY_COMPROMISE, actor
                )
                revoked.append(cert.serial)
        return revoked

    def _step(
        self,
        rec: RotationRecord,
        *,
        force: bool,
        defer_reprovision: bool,
        first_attempt: bool = False,
    ) -> RotationRecord | None:
        """One transition; None when the record waits (for the device, or a deadline)."""
        state = rec.state
        now = self._now()
        due = force or (rec.deadline is not None and rec.deadline <= now)
        if state is RotationState.CSR_REQUESTED:
            if not due:
                return None
            after = self._ensure_renewal_requested(rec)
            if after.state is not RotationState.CSR_REQUESTED:
                return after
            if rec.deadline is not None and rec.deadline <= now:
                return self._save(
                    rec,
                    attempts=rec.attempts + 1,
                    deadline=now + self.policy.rotation_deadline,
                    last_error="no CSR from the device yet",
                )
            return None
        if state is RotationState.CSR_RECEIVED:
            return self._step_issue(
                rec, defer_reprovision=defer_reprovision, first_attempt=first_attempt
            )
        if state is RotationState.ISSUED:
            return self._step_enroll(rec, defer_reprovision=defer_reprovision)
        if state is RotationState.ENROLLED:
            return self._step_deliver(rec, defer_reprovision=defer_reprovision)
        if state is RotationState.DELIVERED:
            if defer_reprovision or not due:
                return None
            return self._step_reprovision(rec)
        if state is RotationState.REPROVISION_SENT:
            if not due:
                return None
            if self._confirmed_by_device(rec, None):
                return self._confirm(rec, "reported")
            if rec.deadline is not None and rec.deadline <= now:
                return self._save(
                    rec,
                    state=RotationState.DELIVERED,
                    deadline=now,
                    last_error="no confirmation; reprovision again",
                )
            return None
        if state is RotationState.CONFIRMED:  # a record stored in confirmed: finish it
            return self._step_finish(rec)
        return None

    def _step_issue(
        self, rec: RotationRecord, *, defer_reprovision: bool, first_attempt: bool = False
    ) -> RotationRecord:
        try:
            issued = self._issue(rec, first_attempt=first_attempt)
        except CsrRejectedError as exc:
            return self._fail(rec, exc.code, exc.message)
        except DeviceDisallowedError as exc:
            return self._fail(rec, "device_disallowed", str(exc))
        cert = issued.record
        self._publish(
            "CertificateIssued",
            rec.device_id,
            f"{rec.request_id}/issued",
            requestId=rec.request_id,
            serial=cert.serial,
            thumbprint=cert.thumbprint_sha256,
            notAfter=_iso(cert.not_after),
            reason=rec.reason,
        )
        # issue, enroll, deliver and the reprovision call need no device round trip and
        # each is idempotent: one write at the end of all of them (a crash before it leaves
        # csr_received; re-driving reuses the certificate, finds it enrolled, delivers the
        # same patch again)
        issued_rec = dataclasses.replace(
            rec,
            state=RotationState.ISSUED,
            new_serial=cert.serial,
            new_thumbprint=cert.thumbprint_sha256.lower(),
        )
        return self._step_enroll(issued_rec, cert, defer_reprovision=defer_reprovision)

    def _step_enroll(
        self,
        rec: RotationRecord,
        cert: CertificateRecord | None = None,
        *,
        defer_reprovision: bool,
    ) -> RotationRecord:
        if rec.new_serial is None or rec.new_thumbprint is None:
            raise ValueError(f"{rec.device_id}: record in {rec.state.value} has no new certificate")
        if cert is None or cert.serial != rec.new_serial:
            cert = self._call(self.deps.ledger.get, rec.new_serial)
        reason = _trigger(rec.reason)
        clear_old = reason in (Trigger.COMPROMISE, Trigger.ALLOW)
        enable = reason is Trigger.ALLOW
        slot = self._enroll_individual(rec, cert, clear_old=clear_old, enable=enable)
        self._hub_accept(rec, keep=rec.current_thumbprint, clear_others=enable, enable=enable)
        self._audit(
            "slot_write",
            "ok",
            rec.device_id,
            request_id=rec.request_id,
            slot=slot,
            thumbprint=rec.new_thumbprint,
            oldRemoved=clear_old,
        )
        enrolled = dataclasses.replace(rec, state=RotationState.ENROLLED, slot=slot)
        return self._step_deliver(enrolled, defer_reprovision=defer_reprovision)

    def _enroll_individual(
        self, rec: RotationRecord, cert: CertificateRecord, *, clear_old: bool, enable: bool
    ) -> str:
        """Put the new certificate in the free individual-enrollment slot; "group" when the
        device has no individual enrollment (its group trusts certroll's issuing CA)."""
        new = cert.thumbprint_sha256.lower()
        for _ in range(_MAX_CAS):
            enr = self._individual(rec.device_id)
            if enr is None:
                return "group"
            p, s = _thumb(enr.primary), _thumb(enr.secondary)
            if new in (p, s):
                slot = "primary" if p == new else "secondary"
            else:
                slot = _choose_slot(
                    p,
                    s,
                    _lower(rec.current_thumbprint),
                    enr.primary.not_after if enr.primary else None,
                    enr.secondary.not_after if enr.secondary else None,
                )
            other = "secondary" if slot == "primary" else "primary"
            changes: dict[str, Any] = {}
            if (p if slot == "primary" else s) != new:
                changes[slot] = CertificateSlot(
                    thumbprint_sha256=new,
                    not_after=cert.not_after,
                    subject=f"CN={rec.device_id}",
                    pem=cert.pem,
                )
            if clear_old and getattr(enr, other) is not None:
                changes[other] = None
            if enable and enr.provisioning_status is not ProvisioningStatus.ENABLED:
                changes["provisioning_status"] = ProvisioningStatus.ENABLED
            if not changes:
                return slot
            try:
                updated = dataclasses.replace(enr, **changes)
                self._call(self.deps.enrollments.put_individual, updated)
            except ConcurrencyError:
                continue
            return slot
        raise ConcurrencyError(f"{rec.device_id}: the enrollment kept changing")

    def _hub_accept(
        self,
        rec: RotationRecord,
        *,
        keep: str | None,
        clear_others: bool,
        enable: bool,
        thumbprint: str | None = None,
    ) -> bool:
        """Make the hub identity accept ``thumbprint`` (default: the new certificate).

        Self-signed identities get it in the thumbprint slot not holding ``keep``. With
        ``enable`` (allow) a disabled identity is enabled, and a CA-authenticated one is
        switched to thumbprint authentication so a revoked leaf of the same CA stays out.
        Returns whether the identity changed.
        """
        new = (thumbprint or rec.new_thumbprint or "").lower()
        for _ in range(_MAX_CAS):
            ident = self._identity(rec.device_id)
            if ident is None:
                return False  # DPS creates it at registration
            if ident.auth_type is not AuthType.SELF_SIGNED and not enable:
                return False
            p, s = _lower(ident.primary_thumbprint), _lower(ident.secondary_thumbprint)
            if ident.auth_type is not AuthType.SELF_SIGNED:
                p = s = None
            updated = dataclasses.replace(ident, auth_type=AuthType.SELF_SIGNED)
            if new not in (p, s):
                slot = _choose_slot(p, s, _lower(keep))
                if slot == "primary":
                    p = new
                else:
                    s = new
            if clear_others:
                p = p if p == new else None
                s = s if s == new else None
                if p is None and s is not None:
                    p, s = s, None
            updated.primary_thumbprint, updated.secondary_thumbprint = p, s
            if enable:
                updated.status = DeviceStatus.ENABLED
                updated.status_reason = None
            if (
                updated.primary_thumbprint == _lower(ident.primary_thumbprint)
                and updated.secondary_thumbprint == _lower(ident.secondary_thumbprint)
                and updated.status is ident.status
                and updated.auth_type is ident.auth_type
            ):
                return False
            try:
                self._call(self.deps.registry.update_device, updated)
            except ConcurrencyError:
                continue
            return True
        raise ConcurrencyError(f"{rec.device_id}: the hub identity kept changing")

    def _step_deliver(self, rec: RotationRecord, *, defer_reprovision: bool) -> RotationRecord:
        issued = self._issue(rec)
        patch = {
            "x509": {
                "renewal": self._renewal_request(rec),
                "issued": {
                    "requestId": rec.request_id,
                    "certificate": _leaf_chain(issued),
                    "notAfter": format_time(issued.record.not_after),
                },
            }
        }
        self._call(self.deps.registry.patch_desired, rec.device_id, patch)
        delivered = dataclasses.replace(
            rec, state=RotationState.DELIVERED, attempts=0, deadline=self._now()
        )
        if defer_reprovision:  # a bulk job calls reprovision for the whole batch
            return self._save(delivered)
        return self._step_reprovision(delivered)

    def _step_reprovision(self, rec: RotationRecord) -> RotationRecord:
        now = self._now()
        error: str
        try:
            result = self._call(
                self.deps.registry.invoke_method,
                rec.device_id,
                REPROVISION_METHOD,
                {"requestId": rec.request_id},
            )
        except DeviceOfflineError as exc:
            error = f"device offline: {exc}"
        else:
            if 200 <= result.status < 300:
                return self._save(
                    rec,
                    state=RotationState.REPROVISION_SENT,
                    attempts=rec.attempts + 1,
                    deadline=now + self.policy.confirm_timeout,
                    last_error=None,
                )
            error = f"reprovision answered {result.status}"
        attempts = rec.attempts + 1
        delay = backoff(
            attempts,
            base=self.policy.offline_backoff_base,
            cap=self.policy.offline_backoff_cap,
            key=rec.device_id,
        )
        logger.info(
            "device %s request %s: %s; next try in %s", rec.device_id, rec.request_id, error, delay
        )
        self._metric("certroll.device_offline")
        return self._save(rec, attempts=attempts, deadline=now + delay, last_error=error)

    def _confirmed_by_device(self, rec: RotationRecord, connected_at: datetime | None) -> bool:
        """Evidence that the device uses the new certificate: its twin, or (self-signed
        identities) a registration after the reprovision with the hub holding only the new
        thumbprint."""
        twin = self._twin(rec.device_id)
        reported = twin.reported.get("x509") if isinstance(twin.reported, dict) else None
        if isinstance(reported, dict):
            try:
                parsed = parse_reported_x509(rec.device_id, reported)
            except InvalidRequestError:
                parsed = None
            if parsed is not None:
                if parsed.certificate is not None and (
                    parsed.certificate.thumbprint_sha256 == rec.new_thumbprint
                ):
                    return True
                if parsed.renewal is not None and parsed.renewal.request_id == rec.request_id:
                    return parsed.renewal.status == "installed"
        if connected_at is None or rec.updated_at is None:
            return False
        try:
            reg = self._call(self.deps.enrollments.get_registration_state, rec.device_id)
        except NotFoundError:
            return False
        if reg.status != "assigned" or reg.last_updated is None:
            return False
        if reg.last_updated < rec.updated_at:
            return False
        ident = self._identity(rec.device_id)
        if ident is None or ident.auth_type is not AuthType.SELF_SIGNED:
            return False
        thumbs = {_lower(ident.primary_thumbprint), _lower(ident.secondary_thumbprint)} - {None}
        return thumbs == {rec.new_thumbprint}

    def _confirm(self, rec: RotationRecord, evidence: str) -> RotationRecord:
        """The device runs on the new certificate: finish now. ``confirmed`` is not written
        on its own: every finishing step is idempotent, so a crash before the final write
        leaves the record where it was and the next report (or the sweep) confirms again."""
        confirmed = dataclasses.replace(rec, state=RotationState.CONFIRMED, last_error=None)
        return self._step_finish(confirmed, evidence=evidence)

    def _retire_previous(
        self, rec: RotationRecord, *, compromise: bool
    ) -> tuple[CertificateRecord, bool]:
        """The device runs on ``rec.new_serial``: retire what came before it. The old
        individual-enrollment slot is emptied, the hub identity keeps only the new
        thumbprint, older certificates are superseded in the ledger (the current one
        revoked on ``compromise``) and the new one is active. Every step is idempotent.
        Returns (the new certificate's record, whether anything was revoked)."""
        if rec.new_serial is None or rec.new_thumbprint is None:
            raise ValueError(f"{rec.device_id}: record in {rec.state.value} has no new certificate")
        new = rec.new_thumbprint
        for _ in range(_MAX_CAS):
            enr = self._individual(rec.device_id)
            if enr is None:
                break
            changes: dict[str, Any] = {}
            for name in ("primary", "secondary"):
                if _thumb(getattr(enr, name)) not in (None, new):
                    changes[name] = None
            if not changes:
                break
            if _thumb(enr.primary) != new and _thumb(enr.secondary) != new:
                logger.warning(
                    "device %s: new certificate no longer in its enrollment; slots "
                    "left as they are",
                    rec.device_id,
                )
                break
            try:
                updated = dataclasses.replace(enr, **changes)
                self._call(self.deps.enrollments.put_individual, updated)
            except ConcurrencyError:
                continue
            break
        # the hub identity keeps only the new thumbprint
        self._hub_accept(rec, keep=new, clear_others=True, enable=False)
        # ledger: old certificates superseded (revoked on compromise), the new one active
        revoked_any = False
        certs = self._call(self.deps.ledger.list_for_device, rec.device_id)
        issued_at = next(
            (c.issued_at for c in certs if c.serial == rec.new_serial), None
        ) or self._issue_time(rec)
        # the new one active before the old ones are superseded: a crash in between
        # leaves two active (the retried finish completes it), never none
        statuses = {rec.new_serial: CertificateStatus.ACTIVE}
        for cert in certs:
            if cert.serial == rec.new_serial or cert.status in (
                CertificateStatus.REVOKED,
                CertificateStatus.SUPERSEDED,
            ):
                continue
            if compromise and cert.serial == rec.current_serial:
                self._call(
                    self.deps.issuer.revoke,
                    cert.serial,
                    RevocationReason.KEY_COMPROMISE,
                    self.deps.actor,
                )
                revoked_any = True
            elif cert.issued_at <= issued_at or cert.serial == rec.current_serial:
                statuses[cert.serial] = CertificateStatus.SUPERSEDED
        new_cert = self._call(self.deps.ledger.set_statuses, rec.device_id, statuses, certs)[
            rec.new_serial
        ]
        return new_cert, revoked_any

    def _step_finish(self, rec: RotationRecord, *, evidence: str | None = None) -> RotationRecord:
        compromise = _trigger(rec.reason) is Trigger.COMPROMISE
        new_cert, revoked_any = self._retire_previous(rec, compromise=compromise)
        new = rec.new_thumbprint
        if revoked_any:
            self._call(self.deps.issuer.publish_crl)
        self._call(
            self.deps.registry.patch_desired,
            rec.device_id,
            {"x509": {"renewal": None, "issued": None}},
        )
        self._publish(
            "RotationCompleted",
            rec.device_id,
            f"{rec.request_id}/completed",
            requestId=rec.request_id,
            serial=rec.new_serial,
            thumbprint=new,
            previousSerial=rec.current_serial,
            notAfter=_iso(new_cert.not_after),
            reason=rec.reason,
        )
        detail = {} if evidence is None else {"confirmedBy": evidence}
        self._audit(
            "rotation_complete",
            "ok",
            rec.device_id,
            request_id=rec.request_id,
            serial=rec.new_serial,
            previous=rec.current_serial,
            slot=rec.slot,
            **detail,
        )
        self._metric("certroll.rotation_completed", reason=rec.reason or "")
        with self._issued_lock:
            self._issued.pop((rec.device_id, rec.request_id or ""), None)
        finished = {
            "state": RotationState.IDLE,
            "current_serial": rec.new_serial,
            "current_thumbprint": new,
            "current_not_after": new_cert.not_after,
        }
        return self._save(rec, **(_NO_REQUEST | finished))

    def _issue_time(self, rec: RotationRecord) -> datetime:
        cert = self._ledger_get(rec.new_serial or "")
        return cert.issued_at if cert is not None else self._now()

    def _fail(self, rec: RotationRecord, code: str, message: str) -> RotationRecord:
        self._audit(
            "rotation_failed",
            "failed",
            rec.device_id,
            request_id=rec.request_id,
            code=code,
            error=message,
            state=rec.state.value,
        )
        self._publish(
            "RotationFailed",
            rec.device_id,
            f"{rec.request_id}/failed",
            requestId=rec.request_id,
            code=code,
            error=message,
            state=rec.state.value,
        )
        self._metric("certroll.rotation_failed", code=code, reason=rec.reason or "")
        return self._save(
            rec, state=RotationState.FAILED, last_error=f"{code}: {message}", deadline=None
        )

    # ------------------------------------------------------------------ bulk reprovision

    def _reprovision_job(self, waiting: Sequence[RotationRecord]) -> JobStatus | None:
        """One hub job calling ``reprovision`` on every device of ``waiting`` (records in
        ``delivered``); the records move to ``reprovision_sent``. None when none waits."""
        if not waiting:
            return None
        job_id = f"certroll-reprovision-{uuid.uuid4().hex}"
        condition = "deviceId IN [" + ",".join(_quote(r.device_id) for r in waiting) + "]"
        job = self._call(
            self.deps.registry.schedule_method_job, job_id, condition, REPROVISION_METHOD, {}
        )
        deadline = self._now() + max(self.policy.confirm_timeout, timedelta(hours=1))
        for rec in waiting:
            try:
                self._save(
                    rec,
                    state=RotationState.REPROVISION_SENT,
                    attempts=rec.attempts + 1,
                    deadline=deadline,
                )
            except ConcurrencyError:
                logger.info("device %s changed while the job was scheduled", rec.device_id)
        self._audit(
            "reprovision_job", "ok", waiting[0].device_id, jobId=job_id, devices=len(waiting)
        )
        return job

    # ------------------------------------------------------------------ queue worker

    def process_batch(self, message: dict[str, Any]) -> BatchResult:
        """The queue worker: start or resume the rotation of each listed device."""
        batch = parse_rotate_message(message)
        result = BatchResult()
        bulk = len(batch.device_ids) >= self.policy.bulk_threshold
        throttled: ThrottledError | None = None
        waiting: dict[str, RotationRecord] = {}  # left in delivered for the bulk job
        for device_id in batch.device_ids:
            try:
                rec = self._get(device_id)
                if rec is not None and rec.state is RotationState.DISALLOWED:
                    result.skipped[device_id] = "disallowed"
                elif rec is not None and rec.state in IN_FLIGHT:
                    driven = self._drive(rec, force=True, defer_reprovision=bulk)
                    if driven.state is RotationState.DELIVERED:
                        waiting[device_id] = driven
                    result.advanced.append(device_id)
                else:
                    reason = batch.reason
                    if rec is not None and rec.state is RotationState.FAILED:
                        reason = _trigger(rec.reason)
                    started = self.start_renewal(device_id, reason, "system:sweep", read=(rec,))
                    if started.state is RotationState.IDLE:
                        result.skipped[device_id] = "idle"
                    else:
                        result.started.append(device_id)
            except ThrottledError as exc:
                throttled = exc
                result.errors[device_id] = f"throttled: {exc}"
            except (NotFoundError, DeviceDisallowedError, ConcurrencyError) as exc:
                result.errors[device_id] = f"{type(exc).__name__}: {exc}"
                logger.warning("device %s: %s", device_id, exc)
        if bulk:
            job = self._reprovision_job(list(waiting.values()))
            result.reprovision_job = job.job_id if job is not None else None
        if throttled is not None:
            # the message is redelivered; finished devices are no-ops the second time
            raise throttled
        return result

    # ------------------------------------------------------------------ sweep

    def _query_all(self, query: str, page_size: int) -> Iterator[Twin]:
        continuation: str | None = None
        while True:
            page = self._call(self.deps.registry.query_twins, query, page_size, continuation)
            yield from page.items
            continuation = page.continuation
            if not continuation:
                return

    def sweep(self, *, dry_run: bool = False, batch_size: int = 100) -> SweepPlan:
        """Find what needs work and (unless ``dry_run``) enqueue it; see docs/rotation.md."""
        if batch_size < 1:
            raise InvalidRequestError("batch_size_invalid", "batch_size must be at least 1")
        now = self._now()
        plan = SweepPlan(at=now, dry_run=dry_run)
        policy = self.policy
        state = self.deps.state
        in_flight = list(self._call(lambda: list(state.list(states=set(IN_FLIGHT)))))
        disallowed = {
            r.device_id
            for r in self._call(lambda: list(state.list(states={RotationState.DISALLOWED})))
        }
        failed = self._call(lambda: list(state.list(states={RotationState.FAILED})))
        busy = {r.device_id for r in in_flight} | disallowed | {r.device_id for r in failed}
        seen: set[str] = set()
        query = (
            "SELECT * FROM devices WHERE properties.reported.x509.notAfter < "
            f"'{format_time(policy.sweep_horizon(now))}'"
        )
        for twin in self._query_all(query, 1000):
            seen.add(twin.device_id)
            if twin.device_id in busy:
                continue
            section = twin.reported.get("x509") if isinstance(twin.reported, dict) else None
            try:
                report = parse_reported_x509(twin.device_id, section or {})
            except InvalidRequestError as exc:
                plan.problems.append(str(exc))
                continue
            cert = report.certificate
            if cert is None:
                continue
            decision = policy.decide(twin.device_id, cert.not_before, cert.not_after, now)
            if decision is Renewal.OVERDUE:
                plan.overdue.append(twin.device_id)
            elif decision is Renewal.DUE:
                plan.expiring.append(twin.device_id)
        stale_before = now - policy.rotation_deadline
        silent_before = now - 7 * policy.rotation_deadline
        for rec in in_flight:
            stuck = (rec.updated_at is not None and rec.updated_at < stale_before) or (
                rec.deadline is not None and rec.deadline <= now
            )
            if (
                rec.state in WAITING_ON_DEVICE
                and rec.updated_at is not None
                and (rec.updated_at < silent_before)
            ):
                plan.silent.append(rec.device_id)
            elif stuck:
                plan.stuck.append(rec.device_id)
        plan.failed.extend(r.device_id for r in failed)
        for rec in self._call(lambda: list(state.list(states={RotationState.IDLE}))):
            if rec.device_id in seen or rec.current_not_after is None:
                continue
            if rec.current_not_after <= now:
                plan.silent.append(rec.device_id)  # the twin no longer reports the certificate
        for ca in self.deps.ca_certificates:
            left = ca.not_valid_after_utc - now
            if left <= policy.ca_warning:
                plan.ca_expiring.append(
                    {
                        "subject": ca.subject.rfc4514_string(),
                        "notAfter": _iso(ca.not_valid_after_utc),
                        "daysLeft": max(0, left.days),
                    }
                )
        ids = plan.device_ids()
        for start in range(0, len(ids), batch_size):
            plan.messages.append(
                rotate_message(ids[start : start + batch_size], Trigger.EXPIRING, now)
            )
        if dry_run:
            return plan
        for item in plan.ca_expiring:
            logger.warning("issuing CA %s expires %s", item["subject"], item["notAfter"])
            self._metric("certroll.ca_expiring")
        for msg in plan.messages:
            self._call(self.deps.queue.send, msg)
        plan.crl_url = self._call(self.deps.issuer.publish_crl)
        self._call(
            self.deps.audit.append,
            AuditEvent(
                action="sweep",
                outcome="ok",
                actor="system:sweep",
                detail=plan.to_dict()["counts"],
                at=now,
            ),
        )
        return plan

    # ------------------------------------------------------------------ reconcile on 401

    def on_connection_failure(self, failure: ConnectionFailure) -> ReconcileOutcome:
        """A 401003/403012 from the hub's Connections log; see docs/rotation.md."""
        device_id = failure.device_id
        now = self._now()
        since = now - self.policy.reconcile_interval
        for event in self._call(self.deps.audit.list, device_id, 20):
            if event.action == "reconcile" and event.at is not None and event.at > since:
                self._metric("certroll.reconcile_rate_limited")
                return ReconcileOutcome(device_id, failure.code, "rate_limited")

        def refuse(action: str, serial: str | None = None, **detail: Any) -> ReconcileOutcome:
            self._audit(
                "reconcile",
                "rejected",
                device_id,
                result=action,
                code=failure.code,
                thumbprint=failure.thumbprint,
                **detail,
            )
            self._metric("certroll.reconcile_refused", result=action)
            logger.warning("device %s: %d not reconciled (%s)", device_id, failure.code, action)
            return ReconcileOutcome(device_id, failure.code, action, serial=serial)

        if failure.code != 401003:
            self._audit(
                "reconcile",
                "noop",
                device_id,
                result="disabled_device",
                code=failure.code,
                message=failure.message[:200],
            )
            return ReconcileOutcome(device_id, failure.code, "disabled_device")
        if not failure.thumbprint:
            return refuse("no_thumbprint")
        rec = self._get(device_id)
        if rec is not None and rec.state is RotationState.DISALLOWED:
            return refuse("device_disallowed")
        cert = self._find_presented(device_id, failure.thumbprint.lower())
        if cert is None:
            return refuse("unknown_certificate")
        if cert.device_id != device_id:
            return refuse("foreign_certificate", cert.serial, issuedTo=cert.device_id)
        if cert.status is CertificateStatus.REVOKED:
            return refuse("revoked_certificate", cert.serial)
        changed = self._reconcile(device_id, rec, cert)
        action = "reconciled" if changed else "already_consistent"
        self._audit(
            "reconcile",
            "ok" if changed else "noop",
            device_id,
            result=action,
            serial=cert.serial,
            changed=list(changed),
        )
        self._metric("certroll.reconcile", result=action)
        return ReconcileOutcome(device_id, failure.code, action, tuple(changed), cert.serial)

    @staticmethod
    def _with_slot(
        enr: IndividualEnrollment, slot: str, value: CertificateSlot | None
    ) -> IndividualEnrollment:
        if slot == "primary":
            return dataclasses.replace(enr, primary=value)
        return dataclasses.replace(enr, secondary=value)

    def _find_presented(self, device_id: str, thumbprint: str) -> CertificateRecord | None:
        if len(thumbprint) == 64:
            found = self._call(self.deps.ledger.find_by_thumbprint, thumbprint)
            if found is not None:
                return found
        for cert in self._call(self.deps.ledger.list_for_device, device_id):
            if cert.thumbprint_sha256.lower() == thumbprint or _sha1_of_pem(cert.pem) == thumbprint:
                return cert
        return None

    def _reconcile(
        self, device_id: str, rec: RotationRecord | None, cert: CertificateRecord
    ) -> list[str]:
        changed: list[str] = []
        thumb = cert.thumbprint_sha256.lower()
        current = rec.current_thumbprint if rec else None
        pending = rec.new_thumbprint if rec else None
        keep = pending if thumb == _lower(current) else current
        probe = RotationRecord(device_id=device_id, new_thumbprint=thumb, current_thumbprint=keep)
        for _ in range(_MAX_CAS):
            enr = self._individual(device_id)
            if enr is None or thumb in (_thumb(enr.primary), _thumb(enr.secondary)):
                break
            slot = _choose_slot(
                _thumb(enr.primary),
                _thumb(enr.secondary),
                _lower(keep),
                enr.primary.not_after if enr.primary else None,
                enr.secondary.not_after if enr.secondary else None,
            )
            new_slot = CertificateSlot(
                thumbprint_sha256=thumb,
                not_after=cert.not_after,
                subject=f"CN={device_id}",
                pem=cert.pem,
            )
            try:
                self._call(
                    self.deps.enrollments.put_individual,
                    self._with_slot(enr, slot, new_slot),
                )
            except ConcurrencyError:
                continue
            changed.append(f"enrollment.{slot}")
            break
        if self._hub_accept(probe, keep=keep, clear_others=False, enable=False, thumbprint=thumb):
            changed.append("hub_identity")
        return changed

    # ------------------------------------------------------------------ disallow / allow

    def disallow(self, device_id: str, reason: str, actor: str) -> DisallowResult:
        """Block the device everywhere at once; repeating it changes nothing."""
        if not isinstance(reason, str) or not reason.strip():
            raise InvalidRequestError("reason_required", "a disallow needs a reason")
        if not isinstance(actor, str) or not actor.strip():
            raise InvalidRequestError("actor_required", "a disallow needs an actor")
        reason = reason.strip()
        enr = self._individual(device_id)
        ident = self._identity(device_id)
        certs = self._call(self.deps.ledger.list_for_device, device_id)
        rec = self._get(device_id)
        if enr is None and ident is None and not certs and rec is None:
            raise NotFoundError(f"device {device_id} is not known to certroll, the hub or DPS")

        cancelled: str | None = None
        was_complete = (
            rec is not None and rec.state is RotationState.DISALLOWED and (rec.last_error is None)
        )

        # 1. the record first: it stops every rotation step and the issuer (ETag-checked)
        def mark(current: RotationRecord | None) -> RotationRecord:
            nonlocal cancelled
            base = current or RotationRecord(device_id=device_id)
            if base.state is RotationState.DISALLOWED:
                return base
            cancelled = base.request_id if base.state in IN_FLIGHT else None
            return self._save(
                base,
                state=RotationState.DISALLOWED,
                disallowed_by=actor,
                disallowed_reason=reason,
                deadline=None,
                last_error="disallow in progress",
            )

        rec = self._with_record(device_id, mark, "disallow")
        # 2. DPS: individual enrollment disabled, or a disabled one made for a group member
        enrollment = self._disable_enrollment(device_id, rec, certs)
        # 3. the hub identity disabled
        hub = "none"
        for _ in range(_MAX_CAS):
            ident = self._identity(device_id)
            if ident is None:
                break
            if ident.status is DeviceStatus.DISABLED:
                hub = "already_disabled"
                break
            try:
                self._call(
                    self.deps.registry.update_device,
                    dataclasses.replace(
                        ident,
                        status=DeviceStatus.DISABLED,
                        status_reason=f"disallowed by {actor}: {reason}"[:128],
                    ),
                )
            except ConcurrencyError:
                continue
            hub = "disabled"
            break
        # 4. every certificate of the device revoked (keyCompromise), then the CRL
        revoked = self._revoke_all(device_id, actor)
        changed = bool(
            not was_complete
            or revoked
            or enrollment in ("disabled", "created_disabled")
            or hub == "disabled"
        )
        crl_url = self._call(self.deps.issuer.publish_crl) if changed else None
        if not changed:
            self._audit("disallow", "noop", device_id, actor=actor, reason=reason)
            return DisallowResult(device_id, False, enrollment, hub, (), None, None, rec)
        self._publish(
            "DeviceDisallowed",
            device_id,
            f"{device_id}/disallowed/{uuid.uuid4().hex}",
            actor=actor,
            reason=reason,
            revoked=revoked,
            cancelledRequestId=cancelled,
        )
        self._audit(
            "disallow",
            "ok",
            device_id,
            actor=actor,
            reason=reason,
            enrollment=enrollment,
            hubIdentity=hub,
            revoked=revoked,
            cancelledRequestId=cancelled,
        )
        self._metric("certroll.disallowed")
        final = self._with_record(
            device_id,
            lambda cur: (
                self._save(cur, last_error=None)
                if cur is not None and cur.state is RotationState.DISALLOWED and cur.last_error
                else (cur or rec)
            ),
            "disallow",
        )
        return DisallowResult(
            device_id, True, enrollment, hub, tuple(revoked), cancelled, crl_url, final
        )

    def _disable_enrollment(
        self, device_id: str, rec: RotationRecord, certs: list[CertificateRecord]
    ) -> str:
        for _ in range(_MAX_CAS):
            enr = self._individual(device_id)
            if enr is not None:
                if enr.provisioning_status is ProvisioningStatus.DISABLED:
                    return "already_disabled"
                try:
                    self._call(
                        self.deps.enrollments.put_individual,
                        dataclasses.replace(enr, provisioning_status=ProvisioningStatus.DISABLED),
                    )
                except ConcurrencyError:
                    continue
                return "disabled"
            # a group member: a disabled individual enrollment holding its certificate(s)
            by_serial = {c.serial: c for c in certs}
            chosen: list[CertificateRecord] = []
            for serial in (rec.current_serial, rec.new_serial):
                if serial and serial in by_serial:
                    chosen.append(by_serial[serial])
            if not chosen:
                chosen = [c for c in reversed(certs)][:1]
            if not chosen:
                logger.warning(
                    "device %s: no certificate to put in a disabled enrollment", device_id
                )
                return "none"
            slots = [
                CertificateSlot(
                    thumbprint_sha256=c.thumbprint_sha256,
                    not_after=c.not_after,
                    subject=f"CN={device_id}",
                    pem=c.pem,
                )
                for c in chosen[:2]
            ]
            try:
                self._call(
                    self.deps.enrollments.put_individual,
                    IndividualEnrollment(
                        registration_id=device_id,
                        device_id=device_id,
                        primary=slots[0],
                        secondary=slots[1] if len(slots) > 1 else None,
                        provisioning_status=ProvisioningStatus.DISABLED,
                    ),
                )
            except (ConflictError, ConcurrencyError):
                continue
            return "created_disabled"
        raise ConcurrencyError(f"{device_id}: the enrollment kept changing")

    def allow(self, device_id: str, actor: str, csr_pem: str | None = None) -> RotationRecord:
        """Let a disallowed device back in, with a newly issued certificate only.

        The record leaves ``disallowed`` into a renewal with reason ``allow`` (the device
        is asked for a "manual" renewal). Enrollment and hub identity are enabled when the
        new certificate is enrolled, holding it alone. A disabled device cannot read its
        twin, so ``csr_pem`` (a CSR made on the device, brought by the operator) lets the
        rotation go on at once; without it the request waits for the device.
        """
        if not isinstance(actor, str) or not actor.strip():
            raise InvalidRequestError("actor_required", "an allow needs an actor")
        csr = None
        if csr_pem is not None:
            parsed = parse_reported_x509(
                device_id, {"csr": {"requestId": "operator", "pem": csr_pem}}
            )
            csr = parsed.csr
            # refuse a CSR the issuer would refuse (or that reuses a revoked key) before
            # the device leaves ``disallowed``: a refused allow changes nothing
            self._call(
                self.deps.issuer.check,
                device_id,
                csr_pem,
                request_id="operator",
                trigger=Trigger.ALLOW,
                actor=actor,
            )

        def go(rec: RotationRecord | None) -> RotationRecord:
            if rec is None:
                raise NotFoundError(f"device {device_id} has no rotation record")
            if rec.state is not RotationState.DISALLOWED:
                if rec.reason == Trigger.ALLOW.value and rec.state in IN_FLIGHT:
                    return rec  # already allowed: idempotent
                raise InvalidRequestError(
                    "not_disallowed", f"device {device_id} is not disallowed ({rec.state.value})"
                )
            if rec.last_error:
                raise InvalidRequestError(
                    "disallow_incomplete",
                    f"device {device_id}: the disallow did not finish; repeat it first",
                )
            started = self._begin(
                rec, Trigger.ALLOW, actor, disallowed_by=None, disallowed_reason=None
            )
            self._audit("allow", "ok", device_id, actor=actor, request_id=started.request_id)
            return started

        started = self._with_record(device_id, go, "allow")
        if csr is None or started.state is not RotationState.CSR_REQUESTED:
            return started

        def take_csr(rec: RotationRecord | None) -> RotationRecord:
            if rec is None or rec.state is not RotationState.CSR_REQUESTED or csr is None:
                return rec if rec is not None else started
            answer = dataclasses.replace(csr, request_id=rec.request_id or "")
            return self._on_csr(rec, answer) or rec

        return self._with_record(device_id, take_csr, "allow")

    # ------------------------------------------------------------------ status

    def status(self, device_id: str) -> DeviceView:
        rec = self._get(device_id)
        certs = self._call(self.deps.ledger.list_for_device, device_id)
        enr = self._individual(device_id)
        ident = self._identity(device_id)
        if rec is None and not certs and enr is None and ident is None:
            raise NotFoundError(f"device {device_id} is not known to certroll, the hub or DPS")
        audit = self._call(self.deps.audit.list, device_id, 20)
        return DeviceView(device_id, rec, tuple(certs), enr, ident, tuple(audit))

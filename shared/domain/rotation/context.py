"""What every rotation use case works with: the ports, the policy, the throttle retrier,
the unit of work, and the small helpers around them (audit, events, metrics, look-ups,
the cache of issued certificates).

Rules every use case follows (docs/rotation.md explains them):

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

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from cryptography import x509

from shared.domain.errors import NotFoundError
from shared.domain.model import (
    AuditEvent,
    CertificateRecord,
    CertificateStatus,
    DeviceIdentity,
    DomainEvent,
    IndividualEnrollment,
    RevocationReason,
    RotationRecord,
    Twin,
)
from shared.domain.policy import RotationPolicy
from shared.domain.retry import Retrier
from shared.domain.rotation.states import SYSTEM_ACTOR, trigger_of
from shared.domain.rotation.unit_of_work import RecordUnitOfWork
from shared.metrics import NullMetrics
from shared.ports import (
    AuditLog,
    CampaignOutcomes,
    CertificateLedger,
    Clock,
    DeviceRegistry,
    EnrollmentStore,
    EventSink,
    IssuedLike,
    IssuerLike,
    Metrics,
    NullTracer,
    RotationStateStore,
    Tracer,
    WorkQueue,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

_ISSUED_CACHE = 1024  # issued certificates kept for the delivery step of their request


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
    #: spans for a rotation's trace (keyed by its request id) and its service calls
    tracer: Tracer = field(default_factory=NullTracer)
    #: the issuing CA certificate and its chain, for the sweep's expiry warning
    ca_certificates: Sequence[x509.Certificate] = ()
    actor: str = SYSTEM_ACTOR
    #: the campaigns a rotation's outcome is counted in (None: no campaigns)
    campaigns: CampaignOutcomes | None = None


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class RotationContext:
    """The ports and helpers one rotation service's use cases share."""

    def __init__(self, deps: RotationDeps) -> None:
        self.deps = deps
        self.policy = deps.policy
        self.retrier = Retrier(deps.clock, deps.policy.retry)
        self.uow = RecordUnitOfWork(deps.state, deps.clock, self.call)
        self._issued: dict[tuple[str, str], IssuedLike] = {}
        self._issued_lock = threading.Lock()

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return self.retrier.call(self.deps.tracer.wrap(fn), *args, **kwargs)

    def now(self) -> datetime:
        return self.deps.clock.now()

    # ------------------------------------------------------------------ records of what happened

    def audit(
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
            at=self.now(),
        )
        self.call(self.deps.audit.append, event)

    def publish(
        self,
        event_type: str,
        device_id: str,
        event_id: str,
        *,
        observed: dict[str, Any] | None = None,
        **data: Any,
    ) -> None:
        """Publish one event; ``observed`` goes to in-process observers only
        (:attr:`DomainEvent.observed`)."""
        event = DomainEvent(
            event_type=event_type,
            subject=f"devices/{device_id}",
            data={"deviceId": device_id, **data},
            event_id=event_id,
            at=self.now(),
            observed=observed or {},
        )
        self.call(self.deps.events.publish, [event])

    def metric(self, name: str, **dimensions: str) -> None:
        try:
            self.deps.metrics.increment(name, 1, **dimensions)
        except Exception:  # metrics never break a rotation
            logger.exception("metric %s could not be recorded", name)

    def campaign_outcome(
        self, device_id: str, outcome: str, campaign_id: str | None = None
    ) -> None:
        """Count a rotation's outcome in the campaigns holding the device (never raises)."""
        if self.deps.campaigns is None:
            return
        try:
            self.deps.campaigns.report(device_id, outcome, campaign_id)
        except Exception:  # counting never breaks a rotation
            logger.exception("campaign outcome of %s not counted", device_id)

    # ------------------------------------------------------------------ look-ups

    def twin(self, device_id: str) -> Twin:
        return self.call(self.deps.registry.get_twin, device_id)

    def individual(self, device_id: str) -> IndividualEnrollment | None:
        try:
            return self.call(self.deps.enrollments.get_individual, device_id)
        except NotFoundError:
            return None

    def known_individual(self, device_id: str) -> IndividualEnrollment | None:
        """The device's individual enrollment as a running campaign's pass over the
        enrollment query read it (ETag included; campaign_enrollments.py), else read now.
        A stale copy costs one refused conditional write and a read."""
        campaigns = self.deps.campaigns
        if campaigns is not None:
            try:
                known = campaigns.known_enrollment(device_id)
            except Exception:  # the copy only saves a read
                logger.exception("device %s: the campaign's enrollment copy unreadable", device_id)
                known = None
            if known is not None:
                return known.enrollment
        return self.individual(device_id)

    def identity(self, device_id: str) -> DeviceIdentity | None:
        try:
            return self.call(self.deps.registry.get_device, device_id)
        except NotFoundError:
            return None

    def ledger_get(self, serial: str) -> CertificateRecord | None:
        try:
            return self.call(self.deps.ledger.get, serial)
        except NotFoundError:
            return None

    # ------------------------------------------------------------------ the issuer

    def issue(self, rec: RotationRecord, *, first_attempt: bool = False) -> IssuedLike:
        """The certificate of ``rec``'s request (idempotent on device + CSR).
        ``first_attempt``: this operation has just moved the request to csr_received."""
        if rec.request_id is None or rec.csr_pem is None:
            raise ValueError(f"{rec.device_id}: record in {rec.state.value} has no request/CSR")
        key = (rec.device_id, rec.request_id)
        with self._issued_lock:
            cached = self._issued.get(key)
        if cached is not None:
            return cached
        issued = self.call(
            self.deps.issuer.issue,
            rec.device_id,
            rec.csr_pem,
            request_id=rec.request_id,
            trigger=trigger_of(rec.reason),
            actor=self.deps.actor,
            # rec was read or written in this operation, and no step runs on a disallowed
            # record; a disallow landing after that makes the next ETag-checked write
            # fail, and the driver then revokes what was issued (revoke_stray)
            known_allowed=True,
            first_attempt=first_attempt,
        )
        with self._issued_lock:  # the latest few, for the steps that follow
            self._issued[key] = issued
            while len(self._issued) > _ISSUED_CACHE:
                del self._issued[next(iter(self._issued))]
        return issued

    def forget_issued(self, rec: RotationRecord) -> None:
        with self._issued_lock:
            self._issued.pop((rec.device_id, rec.request_id or ""), None)

    def revoke_all(self, device_id: str, actor: str) -> list[str]:
        """Revoke (keyCompromise) every certificate of the device not yet revoked; their
        serials. The CRL is the caller's to publish."""
        revoked: list[str] = []
        for cert in self.call(self.deps.ledger.list_for_device, device_id):
            if cert.status is not CertificateStatus.REVOKED:
                self.call(
                    self.deps.issuer.revoke, cert.serial, RevocationReason.KEY_COMPROMISE, actor
                )
                revoked.append(cert.serial)
        return revoked

"""Metrics derived from what the rotation service publishes and what storage holds.

- :class:`ObservedEvents` wraps the outbound event sink: a ``RotationCompleted`` event
  records ``certroll.rotation.due_to_confirmed`` (seconds from the renewal falling due to
  the device's confirmation) and ``DeviceDisallowed`` is already counted by the service.
- :func:`record_fleet` reads the fleet from the storage ports (the daily sweep and the
  demo call it) and sets the fleet gauges (docs/operations.md).

Neither ever raises into the work it observes.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.domain.fleet import STATUSES, FleetSnapshot, build_snapshot
from shared.domain.model import CertificateRecord, DomainEvent, Trigger
from shared.domain.policy import RotationPolicy
from shared.ports import AuditLog, CertificateLedger, EventSink, Telemetry

logger = logging.getLogger(__name__)

DUE_TO_CONFIRMED = "certroll.rotation.due_to_confirmed"


class ObservedEvents(EventSink):
    """Publishes through ``inner``, then records the metrics the events carry."""

    def __init__(
        self,
        inner: EventSink,
        telemetry: Telemetry,
        ledger: CertificateLedger,
        audit: AuditLog,
        policy: RotationPolicy,
    ) -> None:
        self.inner = inner
        self.telemetry = telemetry
        self.ledger = ledger
        self.audit = audit
        self.policy = policy

    def publish(self, events: list[DomainEvent]) -> None:
        self.inner.publish(events)
        for event in events:
            try:
                if event.event_type == "RotationCompleted":
                    self._completed(event)
            except Exception:  # metrics never break a rotation
                logger.exception("event %s: metric not recorded", event.event_id)

    def _due(self, device_id: str, event: DomainEvent) -> datetime | None:
        """When the renewal fell due: the previous certificate's renewal point for an
        expiry-driven rotation, else the moment the rotation started (audit). The
        previous certificate comes with the event when the finish had it in hand
        (``DomainEvent.observed``), else from the ledger."""
        data = event.data
        previous = data.get("previousSerial")
        if data.get("reason") == Trigger.EXPIRING.value and previous:
            cert = event.observed.get("previous_certificate")
            if not isinstance(cert, CertificateRecord) or cert.serial != previous:
                cert = self.ledger.get(str(previous))
            return self.policy.renewal_time(device_id, cert.not_before, cert.not_after)
        for entry in self.audit.list(device_id, 20):
            if entry.action == "rotation_start" and entry.request_id == data.get("requestId"):
                return entry.at
        return None

    def _completed(self, event: DomainEvent) -> None:
        device_id = str(event.data.get("deviceId", ""))
        due = self._due(device_id, event)
        if due is None or event.at is None:
            return
        seconds = max(0.0, (event.at - due).total_seconds())
        trigger = str(event.data.get("reason") or "unknown")
        self.telemetry.record(DUE_TO_CONFIRMED, seconds, trigger=trigger)


def set_fleet_gauges(telemetry: Telemetry, snap: FleetSnapshot) -> None:
    """The fleet gauges of one snapshot (every dimension value set, zeros included, so a
    problem that went away reads 0)."""
    for status in STATUSES:
        telemetry.set_gauge("certroll.devices_by_status", snap.statuses.get(status, 0),
                            status=status)
    for bucket, n in snap.expiry_buckets.items():
        telemetry.set_gauge("certroll.devices_by_expiry", n, bucket=bucket)
    for ca in snap.ca:
        telemetry.set_gauge("certroll.ca.days_to_expiry", ca.days_left, ca=ca.role)
    for trigger in {t.value for t in Trigger} | set(snap.in_flight):
        telemetry.set_gauge(
            "certroll.rotations_in_flight", snap.in_flight.get(trigger, 0), trigger=trigger
        )
    telemetry.set_gauge("certroll.campaign.devices", snap.on_current_key, phase="current_key")
    telemetry.set_gauge("certroll.campaign.devices", snap.on_other_key, phase="other_key")
    telemetry.set_gauge(
        "certroll.campaign.devices", sum(snap.in_flight.values()), phase="in_flight"
    )


def ca_certificates(services: Any) -> tuple[list[Any], str | None]:
    """(the CA certificates, issuing first and root last; the issuing key id) of
    ``services``: from its issuing authority when the key can be loaded, else the
    certificates alone (``CERTROLL_ISSUING_CERT`` or ``$CERTROLL_HOME/pki``), as the
    report needs no key."""
    try:
        authority = services.authority
        chain = list(authority.chain or (authority.certificate,))
        root = [authority.root] if authority.root is not None else []
        return [*chain, *root], authority.key_id
    except Exception as exc:
        logger.info("issuing authority not loaded (%s); reading the certificates alone", exc)
    from cryptography import x509

    settings = services.settings
    configured = settings.get("CERTROLL_ISSUING_CERT")
    path = Path(configured) if configured else settings.pki_dir / "issuing.pem"
    certs: list[Any] = []
    try:
        if path.is_file():
            certs = x509.load_pem_x509_certificates(path.read_bytes())
        elif configured:
            certs = x509.load_pem_x509_certificates(services.crl_publisher.fetch(configured))
        root_path = settings.pki_dir / "root.pem"
        if root_path.is_file():
            certs.append(x509.load_pem_x509_certificate(root_path.read_bytes()))
    except Exception as exc:  # the report works from storage alone
        logger.info("no CA certificates for the fleet snapshot: %s", exc)
    return certs, None


def snapshot_of(
    services: Any, now: datetime | None = None, recent: int = 20, with_audit: bool = True
) -> FleetSnapshot:
    """The fleet snapshot from a :class:`shared.bootstrap.Services`' storage ports and CA
    certificates. ``with_audit``: read the recent disallows and reconciles too (a scan of
    the audit table: the report, not the gauges). The current issuing key is the
    authority's, or else the key of the newest certificate in the ledger."""
    ca, key_id = ca_certificates(services)
    certificates = list(services.ledger.list_all())
    if key_id is None and certificates:
        key_id = max(certificates, key=lambda c: c.issued_at).issuer_key_id
    return build_snapshot(
        records=services.state.list(),
        certificates=certificates,
        audit=services.audit.list(None, max(200, recent * 10)) if with_audit else (),
        ca_certificates=ca,
        current_key_id=key_id,
        policy=RotationPolicy.from_settings(services.settings),
        now=now or services.clock.now().astimezone(UTC),
        recent=recent,
    )


def record_fleet(services: Any, now: datetime | None = None) -> FleetSnapshot | None:
    """Read the fleet and set the gauges on ``services.instrumentation``; None (logged)
    when storage cannot be read."""
    instrumentation = services.instrumentation
    try:
        snap = snapshot_of(services, now, with_audit=False)
    except Exception:
        logger.exception("fleet gauges not recorded")
        return None
    set_fleet_gauges(instrumentation.telemetry, snap)
    instrumentation.flush()
    return snap

"""Reconcile on a failed connect: a device that presents a certificate certroll issued to
it but that DPS or the hub does not accept (yet) is let in again.

The rules for what may be reconciled (the refusals below) are the ones later CA and
reconcile rules change; they are all in :meth:`Reconciler.on_connection_failure`.
"""

from __future__ import annotations

import logging
from typing import Any

from cryptography import x509

from shared.domain.certs import sha1_thumbprint
from shared.domain.errors import ConcurrencyError
from shared.domain.model import (
    CertificateRecord,
    CertificateStatus,
    ConnectionFailure,
    RotationRecord,
    RotationState,
)
from shared.domain.rotation.context import RotationContext
from shared.domain.rotation.results import ReconcileOutcome
from shared.domain.rotation.slots import (
    enrollment_slot_for,
    hub_accept,
    lower,
    slot_of,
    thumb,
    with_slot,
)
from shared.domain.rotation.unit_of_work import MAX_ATTEMPTS

logger = logging.getLogger(__name__)

UNAUTHORIZED = 401003


def _sha1_of_pem(pem: str) -> str | None:
    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        return None
    return sha1_thumbprint(cert)  # hub thumbprints may be SHA-1


class Reconciler:
    def __init__(self, ctx: RotationContext) -> None:
        self.ctx = ctx

    def on_connection_failure(self, failure: ConnectionFailure) -> ReconcileOutcome:
        """A 401003/403012 from the hub's Connections log; see docs/rotation.md."""
        ctx = self.ctx
        device_id = failure.device_id
        since = ctx.now() - ctx.policy.reconcile_interval
        for event in ctx.call(ctx.deps.audit.list, device_id, 20):
            if event.action == "reconcile" and event.at is not None and event.at > since:
                ctx.metric("certroll.reconcile_rate_limited")
                return ReconcileOutcome(device_id, failure.code, "rate_limited")

        def refuse(action: str, serial: str | None = None, **detail: Any) -> ReconcileOutcome:
            ctx.audit(
                "reconcile",
                "rejected",
                device_id,
                result=action,
                code=failure.code,
                thumbprint=failure.thumbprint,
                **detail,
            )
            ctx.metric("certroll.reconcile_refused", result=action)
            logger.warning("device %s: %d not reconciled (%s)", device_id, failure.code, action)
            return ReconcileOutcome(device_id, failure.code, action, serial=serial)

        if failure.code != UNAUTHORIZED:
            ctx.audit(
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
        rec = ctx.uow.get(device_id)
        if rec is not None and rec.state is RotationState.DISALLOWED:
            return refuse("device_disallowed")
        cert = self.find_presented(device_id, failure.thumbprint.lower())
        if cert is None:
            return refuse("unknown_certificate")
        if cert.device_id != device_id:
            return refuse("foreign_certificate", cert.serial, issuedTo=cert.device_id)
        if cert.status is CertificateStatus.REVOKED:
            return refuse("revoked_certificate", cert.serial)
        changed = self.let_in(device_id, rec, cert)
        action = "reconciled" if changed else "already_consistent"
        ctx.audit(
            "reconcile",
            "ok" if changed else "noop",
            device_id,
            result=action,
            serial=cert.serial,
            changed=list(changed),
        )
        ctx.metric("certroll.reconcile", result=action)
        return ReconcileOutcome(device_id, failure.code, action, tuple(changed), cert.serial)

    def find_presented(self, device_id: str, thumbprint: str) -> CertificateRecord | None:
        """The ledger's certificate with this SHA-256 (or, for the hub, SHA-1) thumbprint."""
        ctx = self.ctx
        if len(thumbprint) == 64:
            found = ctx.call(ctx.deps.ledger.find_by_thumbprint, thumbprint)
            if found is not None:
                return found
        for cert in ctx.call(ctx.deps.ledger.list_for_device, device_id):
            if cert.thumbprint_sha256.lower() == thumbprint or _sha1_of_pem(cert.pem) == thumbprint:
                return cert
        return None

    def let_in(
        self, device_id: str, rec: RotationRecord | None, cert: CertificateRecord
    ) -> list[str]:
        """Put ``cert`` in the enrollment and the hub identity beside the certificate the
        record expects; what changed."""
        ctx = self.ctx
        changed: list[str] = []
        new = cert.thumbprint_sha256.lower()
        current = rec.current_thumbprint if rec else None
        pending = rec.new_thumbprint if rec else None
        keep = pending if new == lower(current) else current
        for _ in range(MAX_ATTEMPTS):
            enr = ctx.individual(device_id)
            if enr is None or new in (thumb(enr.primary), thumb(enr.secondary)):
                break
            slot = enrollment_slot_for(enr, new, lower(keep))
            try:
                ctx.call(
                    ctx.deps.enrollments.put_individual,
                    with_slot(enr, slot, slot_of(device_id, cert)),
                )
            except ConcurrencyError:
                continue
            changed.append(f"enrollment.{slot}")
            break
        if hub_accept(ctx, device_id, new, keep=keep, clear_others=False, enable=False):
            changed.append("hub_identity")
        return changed

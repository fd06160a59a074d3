"""What devices tell certroll: twin reports (a CSR, an install result, the certificate in
use) and the hub's lifecycle events (connected, created)."""

from __future__ import annotations

import logging

from shared.domain.commands import DeviceConnected, DeviceCreated, TwinReported
from shared.domain.messages import ReportedX509
from shared.domain.model import (
    AuthType,
    CertificateStatus,
    ReportedCertificate,
    RotationRecord,
    RotationState,
    Trigger,
)
from shared.domain.policy import Renewal
from shared.domain.rotation import transitions
from shared.domain.rotation.admissible import RETIRED
from shared.domain.rotation.completion import Completion
from shared.domain.rotation.context import RotationContext
from shared.domain.rotation.driving import Driver
from shared.domain.rotation.renewal import Renewals
from shared.domain.rotation.states import CONFIRMABLE, IN_FLIGHT

logger = logging.getLogger(__name__)


class DeviceReports:
    def __init__(
        self, ctx: RotationContext, driver: Driver, completion: Completion, renewals: Renewals
    ) -> None:
        self.ctx = ctx
        self.driver = driver
        self.completion = completion
        self.renewals = renewals

    # ------------------------------------------------------------------ entry points

    def twin_reported(self, event: TwinReported) -> RotationRecord:
        logger.debug(
            "device %s reported x509 (twin version %s)", event.device_id, event.twin_version
        )
        uow = self.ctx.uow
        for attempt in uow.attempts(event.device_id, "twin report"):
            with attempt as rec:
                return self.on_report(event.device_id, rec, event.report)
        raise uow.kept_changing(event.device_id, "twin report")

    def device_connected(self, event: DeviceConnected) -> RotationRecord | None:
        """Deliver what waits for the device, or look for confirmation."""
        rec = self.ctx.uow.get(event.device_id)
        if rec is None or rec.state not in IN_FLIGHT:
            return rec
        driver = self.driver
        if rec.state is RotationState.CSR_REQUESTED:
            return driver.ensure_renewal_requested(rec)
        if rec.state in CONFIRMABLE and driver.confirmed_by_device(rec, event.at):
            return driver.run_until_waiting(self.completion.confirm(rec, "connected"))
        if rec.state is RotationState.DELIVERED:
            return driver.run_until_waiting(rec, force=True)
        return rec

    def device_created(self, event: DeviceCreated) -> RotationRecord:
        """Make the device's (idle) record, adopting the hub's thumbprint."""
        uow = self.ctx.uow
        for attempt in uow.attempts(event.device_id, "device created"):
            with attempt as rec:
                return rec if rec is not None else uow.save(self._new_record(event.device_id))
        raise uow.kept_changing(event.device_id, "device created")

    def _new_record(self, device_id: str) -> RotationRecord:
        ctx = self.ctx
        new = RotationRecord(device_id=device_id)
        ident = ctx.identity(device_id)
        if ident is None or ident.auth_type is not AuthType.SELF_SIGNED:
            return new
        for thumb in (ident.primary_thumbprint, ident.secondary_thumbprint):
            cert = ctx.call(ctx.deps.ledger.find_by_thumbprint, thumb.lower()) if thumb else None
            if (
                cert is not None
                and cert.device_id == device_id
                and cert.status not in RETIRED
            ):
                new.current_serial = cert.serial
                new.current_thumbprint = cert.thumbprint_sha256
                new.current_not_after = cert.not_after
                break
        return new

    # ------------------------------------------------------------------ a twin report

    def on_report(
        self, device_id: str, rec: RotationRecord | None, report: ReportedX509
    ) -> RotationRecord:
        ctx, driver = self.ctx, self.driver
        if rec is not None and rec.state is RotationState.DISALLOWED:
            logger.info("device %s is disallowed; its twin report is not acted on", device_id)
            return rec
        if rec is not None and report.renewal is not None:
            result = report.renewal
            if result.request_id == rec.request_id:
                if result.status == "installed" and rec.state in CONFIRMABLE:
                    return driver.run_until_waiting(self.completion.confirm(rec, "installed"))
                if result.status == "failed" and rec.state in IN_FLIGHT - {RotationState.CONFIRMED}:
                    code = result.error_code or "device_failed"
                    message = result.error or "the device reported failure"
                    return self.completion.fail(rec, code, message)
        if rec is not None and report.csr is not None:
            handled = driver.accept_csr(rec, report.csr)
            if handled is not None:
                return handled
        cert = report.certificate
        if cert is None:
            return rec if rec is not None else ctx.uow.save(RotationRecord(device_id=device_id))
        if rec is not None and rec.state in IN_FLIGHT:
            if rec.state in CONFIRMABLE and cert.thumbprint_sha256 == rec.new_thumbprint:
                return driver.run_until_waiting(self.completion.confirm(rec, "reported"))
            if rec.state is RotationState.CSR_REQUESTED:
                return driver.ensure_renewal_requested(rec)
            return rec
        return self.on_current_certificate(device_id, rec, cert)

    def on_current_certificate(
        self, device_id: str, rec: RotationRecord | None, cert: ReportedCertificate
    ) -> RotationRecord:
        """Idle (or failed, or new) device reporting the certificate it uses."""
        ctx = self.ctx
        base = rec if rec is not None else RotationRecord(device_id=device_id)
        if base.current_thumbprint != cert.thumbprint_sha256:
            adopted = self.adopt(base, cert)
            if adopted is None:  # stale or foreign report: nothing changes
                return rec if rec is not None else ctx.uow.save(base)
            base = adopted
        elif base.current_not_after != cert.not_after or rec is None:
            base = ctx.uow.save(base, transitions.expiry_seen(cert.not_after))
        if base.state is not RotationState.IDLE:
            return base
        decision = ctx.policy.decide(device_id, cert.not_before, cert.not_after, ctx.now())
        if decision is Renewal.NOT_DUE:
            return base
        ctx.metric("certroll.renewal_due", decision=decision.value)
        return self.renewals.start_or_join(device_id, base, Trigger.EXPIRING, "system:twin")

    def adopt(self, rec: RotationRecord, cert: ReportedCertificate) -> RotationRecord | None:
        """The device reports a certificate that is not its current one: take it as
        current, unless it is another device's, revoked, or older than the current one
        (None: nothing changes)."""
        ctx = self.ctx
        device_id = rec.device_id
        known = ctx.call(ctx.deps.ledger.find_by_thumbprint, cert.thumbprint_sha256)
        if known is not None and known.device_id != device_id:
            ctx.audit(
                "unexpected_certificate",
                "rejected",
                device_id,
                thumbprint=cert.thumbprint_sha256,
                issuedTo=known.device_id,
            )
            ctx.metric("certroll.foreign_certificate")
            return None
        if known is not None and known.status is CertificateStatus.SUPERSEDED:
            # retired by a finished rotation: never current again (the slot rule)
            logger.info(
                "device %s: report of superseded %s ignored (current %s)",
                device_id,
                known.serial,
                rec.current_serial,
            )
            return None
        if known is not None and known.status in (
            CertificateStatus.REVOKED,
            CertificateStatus.FAILED,
        ):
            # a revoked certificate, or one whose rotation failed, is never taken back
            ctx.audit(
                "unexpected_certificate",
                "rejected",
                device_id,
                thumbprint=cert.thumbprint_sha256,
                serial=known.serial,
                status=known.status.value,
            )
            ctx.metric(f"certroll.{known.status.value}_certificate_reported")
            return None
        if known is not None and rec.current_serial and rec.current_serial != known.serial:
            current = ctx.ledger_get(rec.current_serial)
            if current is not None and known.issued_at < current.issued_at:
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
            self.completion.retire_before(rec, known.serial, known.thumbprint_sha256)
            retired = True
        elif known is not None and known.status is CertificateStatus.ISSUED:
            ctx.call(ctx.deps.ledger.set_status, known.serial, CertificateStatus.ACTIVE)
        ctx.audit(
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
            ctx.metric("certroll.unknown_certificate_adopted")
        return ctx.uow.save(rec, transitions.adopted(cert))

"""Disallow a device (blocked everywhere, every certificate revoked) and allow it back in
with a newly issued certificate only."""

from __future__ import annotations

import dataclasses
import logging
import uuid

from shared.domain.commands import Allow, Disallow
from shared.domain.errors import ConcurrencyError, ConflictError, InvalidRequestError, NotFoundError
from shared.domain.messages import CsrAnswer
from shared.domain.model import (
    CertificateRecord,
    CertificateSlot,
    DeviceStatus,
    IndividualEnrollment,
    ProvisioningStatus,
    RotationRecord,
    RotationState,
    Trigger,
)
from shared.domain.rotation import transitions
from shared.domain.rotation.context import RotationContext
from shared.domain.rotation.driving import Driver
from shared.domain.rotation.renewal import Renewals
from shared.domain.rotation.results import DisallowResult
from shared.domain.rotation.states import IN_FLIGHT
from shared.domain.rotation.unit_of_work import MAX_ATTEMPTS

logger = logging.getLogger(__name__)


class Access:
    def __init__(self, ctx: RotationContext, driver: Driver, renewals: Renewals) -> None:
        self.ctx = ctx
        self.driver = driver
        self.renewals = renewals

    # ------------------------------------------------------------------ disallow

    def disallow(self, command: Disallow) -> DisallowResult:
        """Block the device everywhere at once; repeating it changes nothing."""
        ctx, uow = self.ctx, self.ctx.uow
        device_id, reason, actor = command.device_id, command.reason, command.actor
        enr = ctx.individual(device_id)
        ident = ctx.identity(device_id)
        certs = ctx.call(ctx.deps.ledger.list_for_device, device_id)
        rec = uow.get(device_id)
        if enr is None and ident is None and not certs and rec is None:
            raise NotFoundError(f"device {device_id} is not known to certroll, the hub or DPS")
        was_complete = (
            rec is not None and rec.state is RotationState.DISALLOWED and rec.last_error is None
        )

        # 1. the record first: it stops every rotation step and the issuer (ETag-checked)
        cancelled: str | None = None
        for attempt in uow.attempts(device_id, "disallow"):
            with attempt as current:
                base = current or RotationRecord(device_id=device_id)
                if base.state is RotationState.DISALLOWED:
                    rec = base
                else:
                    cancelled = base.request_id if base.state in IN_FLIGHT else None
                    rec = uow.save(base, transitions.disallowed(actor, reason))
                break
        else:
            raise uow.kept_changing(device_id, "disallow")
        # 2. DPS: individual enrollment disabled, or a disabled one made for a group member
        enrollment = self._disable_enrollment(device_id, rec, certs)
        # 3. the hub identity disabled
        hub = self._disable_identity(device_id, f"disallowed by {actor}: {reason}"[:128])
        # 4. every certificate of the device revoked (keyCompromise), then the CRL
        revoked = ctx.revoke_all(device_id, actor)
        changed = bool(
            not was_complete
            or revoked
            or enrollment in ("disabled", "created_disabled")
            or hub == "disabled"
        )
        if not changed:
            ctx.audit("disallow", "noop", device_id, actor=actor, reason=reason)
            return DisallowResult(device_id, False, enrollment, hub, (), None, None, rec)
        crl_url = ctx.call(ctx.deps.issuer.publish_crl)
        ctx.publish(
            "DeviceDisallowed",
            device_id,
            f"{device_id}/disallowed/{uuid.uuid4().hex}",
            actor=actor,
            reason=reason,
            revoked=revoked,
            cancelledRequestId=cancelled,
        )
        ctx.audit(
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
        ctx.metric("certroll.disallowed")
        final = rec
        for attempt in uow.attempts(device_id, "disallow"):
            with attempt as current:
                if current is not None and current.state is RotationState.DISALLOWED:
                    if current.last_error:
                        final = uow.save(current, transitions.disallow_completed())
                    else:
                        final = current
                elif current is not None:
                    final = current
                break
        else:
            raise uow.kept_changing(device_id, "disallow")
        return DisallowResult(
            device_id, True, enrollment, hub, tuple(revoked), cancelled, crl_url, final
        )

    def _disable_identity(self, device_id: str, status_reason: str) -> str:
        ctx = self.ctx
        for _ in range(MAX_ATTEMPTS):
            ident = ctx.identity(device_id)
            if ident is None:
                return "none"
            if ident.status is DeviceStatus.DISABLED:
                return "already_disabled"
            try:
                ctx.call(
                    ctx.deps.registry.update_device,
                    dataclasses.replace(
                        ident, status=DeviceStatus.DISABLED, status_reason=status_reason
                    ),
                )
            except ConcurrencyError:
                continue
            return "disabled"
        return "none"

    def _disable_enrollment(
        self, device_id: str, rec: RotationRecord, certs: list[CertificateRecord]
    ) -> str:
        ctx = self.ctx
        for _ in range(MAX_ATTEMPTS):
            enr = ctx.individual(device_id)
            if enr is not None:
                if enr.provisioning_status is ProvisioningStatus.DISABLED:
                    return "already_disabled"
                try:
                    ctx.call(
                        ctx.deps.enrollments.put_individual,
                        dataclasses.replace(enr, provisioning_status=ProvisioningStatus.DISABLED),
                    )
                except ConcurrencyError:
                    continue
                return "disabled"
            # a group member: a disabled individual enrollment holding its certificate(s)
            by_serial = {c.serial: c for c in certs}
            chosen = [
                by_serial[serial]
                for serial in (rec.current_serial, rec.new_serial)
                if serial and serial in by_serial
            ]
            if not chosen:
                chosen = list(reversed(certs))[:1]
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
                ctx.call(
                    ctx.deps.enrollments.put_individual,
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

    # ------------------------------------------------------------------ allow

    def allow(self, command: Allow) -> RotationRecord:
        """Let a disallowed device back in, with a newly issued certificate only.

        The record leaves ``disallowed`` into a renewal with reason ``allow`` (the device
        is asked for a "manual" renewal). Enrollment and hub identity are enabled when the
        new certificate is enrolled, holding it alone. A disabled device cannot read its
        twin, so ``command.csr`` (a CSR made on the device, brought by the operator) lets
        the rotation go on at once; without it the request waits for the device.
        """
        ctx, uow = self.ctx, self.ctx.uow
        device_id, actor, csr = command.device_id, command.actor, command.csr
        if csr is not None:
            # the issuer refuses a CSR it would refuse (or that reuses a revoked key)
            # before the device leaves ``disallowed``: a refused allow changes nothing
            ctx.call(
                ctx.deps.issuer.check,
                device_id,
                csr.pem,
                request_id="operator",
                trigger=Trigger.ALLOW,
                actor=actor,
            )
        for attempt in uow.attempts(device_id, "allow"):
            with attempt as rec:
                started = self._reopen(device_id, rec, actor)
                break
        else:
            raise uow.kept_changing(device_id, "allow")
        if csr is None or started.state is not RotationState.CSR_REQUESTED:
            return started
        for attempt in uow.attempts(device_id, "allow"):
            with attempt as rec:
                if rec is None or rec.state is not RotationState.CSR_REQUESTED:
                    return rec if rec is not None else started
                answer = CsrAnswer(request_id=rec.request_id or "", pem=csr.pem, sha256=csr.sha256)
                return self.driver.accept_csr(rec, answer) or rec
        raise uow.kept_changing(device_id, "allow")

    def _reopen(self, device_id: str, rec: RotationRecord | None, actor: str) -> RotationRecord:
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
        started = self.renewals.open_request(rec, Trigger.ALLOW, actor, allow=True)
        self.ctx.audit("allow", "ok", device_id, actor=actor, request_id=started.request_id)
        return started

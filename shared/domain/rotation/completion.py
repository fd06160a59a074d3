"""How a rotation ends: confirmed and finished (the old certificate retired), or failed."""

from __future__ import annotations

import dataclasses
from datetime import datetime

from shared.domain.model import (
    CertificateRecord,
    CertificateStatus,
    RevocationReason,
    RotationRecord,
    Trigger,
)
from shared.domain.rotation import transitions
from shared.domain.rotation.admissible import slot_refusal
from shared.domain.rotation.context import RotationContext, iso
from shared.domain.rotation.economy import (
    enrollment_cleanup_after_confirmation,
    hub_cleanup_after_confirmation,
)
from shared.domain.rotation.slots import (
    hub_accept,
    keep_only_in_enrollment,
    withdraw_from_enrollment,
    withdraw_from_hub,
)
from shared.domain.rotation.states import trigger_of

#: failure codes a device reports that mean the certificate's key is not the one it
#: made for the request: someone else holds the key, so the certificate is revoked
KEY_HELD_ELSEWHERE = frozenset({"key_mismatch", "request_unknown"})


class Completion:
    def __init__(self, ctx: RotationContext) -> None:
        self.ctx = ctx

    def confirm(self, rec: RotationRecord, evidence: str) -> RotationRecord:
        """The device runs on the new certificate: finish now. ``confirmed`` is not written
        on its own: every finishing step is idempotent, so a crash before the final write
        leaves the record where it was and the next report (or the sweep) confirms again."""
        return self.finish(transitions.apply(rec, transitions.confirmed()), evidence=evidence)

    def finish(self, rec: RotationRecord, *, evidence: str | None = None) -> RotationRecord:
        """confirmed -> idle: retire the old certificate, clear the desired twin, tell."""
        ctx = self.ctx
        compromise = trigger_of(rec.reason) is Trigger.COMPROMISE
        new_cert, previous = self.retire_previous(rec, compromise=compromise)
        ctx.call(
            ctx.deps.registry.patch_desired,
            rec.device_id,
            {"x509": {"renewal": None, "issued": None}},
        )
        ctx.publish(
            "RotationCompleted",
            rec.device_id,
            f"{rec.request_id}/completed",
            requestId=rec.request_id,
            serial=rec.new_serial,
            thumbprint=rec.new_thumbprint,
            previousSerial=rec.current_serial,
            notAfter=iso(new_cert.not_after),
            reason=rec.reason,
            observed={} if previous is None else {"previous_certificate": previous},
        )
        detail = {} if evidence is None else {"confirmedBy": evidence}
        ctx.audit(
            "rotation_complete",
            "ok",
            rec.device_id,
            request_id=rec.request_id,
            serial=rec.new_serial,
            previous=rec.current_serial,
            slot=rec.slot,
            **detail,
        )
        ctx.metric("certroll.rotation_completed", reason=rec.reason or "")
        ctx.forget_issued(rec)
        done = ctx.uow.save(rec, transitions.finished(rec, new_cert.not_after))
        ctx.campaign_outcome(rec.device_id, "completed")
        return done

    def retire_previous(
        self, rec: RotationRecord, *, compromise: bool, full: bool = False
    ) -> tuple[CertificateRecord, CertificateRecord | None]:
        """The device runs on ``rec.new_serial``: retire what came before it. The old
        individual-enrollment slot is emptied, the hub identity keeps only the new
        thumbprint, older certificates are superseded in the ledger (the current one
        revoked on ``compromise``) and the new one is active. Every step is idempotent.
        On ``compromise`` the CRL is published once the ledger says the old certificate is
        revoked, before the slot clean-up, which may stop to wait for a batch's bulk write
        and be replayed (a replay publishes again). Returns (the new certificate's record,
        the ledger record of ``rec.current_serial`` as listed when the finish read the
        ledger -- its validity dates are what matter -- if the device has it)."""
        ctx = self.ctx
        if rec.new_serial is None or rec.new_thumbprint is None:
            raise ValueError(f"{rec.device_id}: record in {rec.state.value} has no new certificate")
        new = rec.new_thumbprint
        # the ledger first, the slots after: a 401 reconcile reads the slots before the
        # ledger, so it never puts back what this retires (reconcile.py, ``let_in``)
        # ledger: old certificates superseded (revoked on compromise), the new one active
        certs = ctx.call(ctx.deps.ledger.list_for_device, rec.device_id)
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
                CertificateStatus.FAILED,
            ):
                continue
            if compromise and cert.serial == rec.current_serial:
                ctx.call(
                    ctx.deps.issuer.revoke,
                    cert.serial,
                    RevocationReason.KEY_COMPROMISE,
                    ctx.deps.actor,
                )
            elif cert.issued_at <= issued_at or cert.serial == rec.current_serial:
                statuses[cert.serial] = CertificateStatus.SUPERSEDED
        new_cert = ctx.call(ctx.deps.ledger.set_statuses, rec.device_id, statuses, certs)[
            rec.new_serial
        ]
        previous = next((c for c in certs if c.serial == rec.current_serial), None)
        if compromise and previous is not None and previous.status not in (
            CertificateStatus.SUPERSEDED,
            CertificateStatus.FAILED,
        ):  # revoked by this call or by an earlier pass of it
            ctx.call(ctx.deps.issuer.publish_crl)
        # ``full``: every slot checked; else what the rotation may have left (economy.py)
        if full or enrollment_cleanup_after_confirmation(rec):
            keep_only_in_enrollment(ctx, rec.device_id, new)
        if full or hub_cleanup_after_confirmation(rec):
            hub_accept(ctx, rec.device_id, new, keep=new, clear_others=True, enable=False)
        return new_cert, previous

    def retire_before(self, rec: RotationRecord, serial: str, thumbprint: str) -> None:
        """``rec``'s device turned out to run on ``serial`` (a renewal whose confirmation
        was missed): retire what came before it as a finish would."""
        moved_on = dataclasses.replace(rec, new_serial=serial, new_thumbprint=thumbprint.lower())
        self.retire_previous(moved_on, compromise=False, full=True)

    def _issue_time(self, rec: RotationRecord) -> datetime:
        cert = self.ctx.ledger_get(rec.new_serial or "")
        return cert.issued_at if cert is not None else self.ctx.now()

    def fail(self, rec: RotationRecord, code: str, message: str) -> RotationRecord:
        """-> failed: the request's certificate is withdrawn first (out of the enrollment
        and the hub identity, ledger status ``failed``, revoked when the failure means
        someone else holds its key). A failed ``allow`` goes back to ``disallowed``."""
        ctx = self.ctx
        withdrawn, revoked = self.withdraw(rec, revoke=code in KEY_HELD_ELSEWHERE)
        ctx.audit(
            "rotation_failed",
            "failed",
            rec.device_id,
            request_id=rec.request_id,
            code=code,
            error=message,
            state=rec.state.value,
            withdrawn=withdrawn,
            revoked=revoked,
        )
        ctx.publish(
            "RotationFailed",
            rec.device_id,
            f"{rec.request_id}/failed",
            requestId=rec.request_id,
            code=code,
            error=message,
            state=rec.state.value,
        )
        ctx.metric("certroll.rotation_failed", code=code, reason=rec.reason or "")
        ctx.campaign_outcome(rec.device_id, "failed")
        if trigger_of(rec.reason) is Trigger.ALLOW:
            return ctx.uow.save(rec, transitions.allow_failed(code, ctx.deps.actor))
        return ctx.uow.save(rec, transitions.failed(code, message))

    def withdraw(self, rec: RotationRecord, *, revoke: bool) -> tuple[list[str], list[str]]:
        """Withdraw every certificate issued for ``rec``'s request (never the current
        one): out of the enrollment slot and the hub thumbprints, ledger status
        ``failed`` (never admitted again), or revoked (keyCompromise) with ``revoke``.
        Idempotent. Returns (the serials withdrawn, the serials revoked)."""
        ctx = self.ctx
        if rec.request_id is None:
            return [], []
        certs = [
            c
            for c in ctx.call(ctx.deps.ledger.list_for_device, rec.device_id)
            if c.request_id == rec.request_id and c.serial != rec.current_serial
        ]
        withdrawn: list[str] = []
        revoked: list[str] = []
        # where the withdrawn certificate was the only one, the current one returns to
        # its place if the slot rule admits it (a failed renewal leaves the device as it
        # was before); otherwise (e.g. an allow: the current one is revoked) the
        # enrollment or identity is disabled
        current = ctx.ledger_get(rec.current_serial) if rec.current_serial else None
        if current is not None and slot_refusal(current, rec.device_id, rec, ctx.now()):
            current = None
        for cert in certs:
            # the ledger first, the slots after (see retire_previous)
            if revoke and cert.status is not CertificateStatus.REVOKED:
                ctx.call(
                    ctx.deps.issuer.revoke,
                    cert.serial,
                    RevocationReason.KEY_COMPROMISE,
                    ctx.deps.actor,
                )
                revoked.append(cert.serial)
            elif cert.status not in (CertificateStatus.REVOKED, CertificateStatus.FAILED):
                ctx.call(ctx.deps.ledger.set_status, cert.serial, CertificateStatus.FAILED)
            withdraw_from_enrollment(ctx, rec.device_id, cert.thumbprint_sha256, current)
            withdraw_from_hub(
                ctx,
                rec.device_id,
                cert.thumbprint_sha256,
                current.thumbprint_sha256 if current is not None else None,
            )
            withdrawn.append(cert.serial)
        if revoked:
            ctx.call(ctx.deps.issuer.publish_crl)
        ctx.forget_issued(rec)
        return withdrawn, revoked

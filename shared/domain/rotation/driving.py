"""Driving a request: take the next transition until the record waits (for the device,
or for a deadline). Also where a CSR answer is accepted, since an answer found on the
twin while driving is accepted the same way as one reported."""

from __future__ import annotations

import logging
from datetime import datetime

from shared.domain.errors import ConcurrencyError, InvalidRequestError, NotFoundError
from shared.domain.messages import CsrAnswer, ReportedX509, parse_reported_x509
from shared.domain.model import AuthType, RotationRecord, RotationState
from shared.domain.rotation import transitions
from shared.domain.rotation.completion import Completion
from shared.domain.rotation.context import RotationContext, RotationDeps
from shared.domain.rotation.slots import lower
from shared.domain.rotation.states import RESUMABLE_ON_CSR
from shared.domain.rotation.steps import ForwardSteps, request_csr
from shared.ports import in_rotation_trace

logger = logging.getLogger(__name__)

MAX_TRANSITIONS = 16  # transitions one drive may make (the chain has 8)


def reported_on_twin(ctx: RotationContext, device_id: str) -> ReportedX509 | None:
    """The device's reported ``x509`` section as its twin holds it now (None: none, or
    unreadable)."""
    twin = ctx.twin(device_id)
    reported = twin.reported.get("x509") if isinstance(twin.reported, dict) else None
    if not isinstance(reported, dict):
        return None
    try:
        return parse_reported_x509(device_id, reported)
    except InvalidRequestError:
        return None


class Driver:
    def __init__(self, ctx: RotationContext, steps: ForwardSteps, completion: Completion) -> None:
        self.ctx = ctx
        self.steps = steps
        self.completion = completion

    @property
    def deps(self) -> RotationDeps:
        return self.ctx.deps

    @in_rotation_trace
    def run_until_waiting(
        self,
        rec: RotationRecord,
        *,
        force: bool = False,
        defer_reprovision: bool = False,
        first_attempt: bool = False,
    ) -> RotationRecord:
        """Take transitions from ``rec`` until it waits. ``force``: act on deadlines not
        yet reached. ``first_attempt``: the caller has just written ``rec`` into
        csr_received (its first transition is the request's first issuance)."""
        for step in range(MAX_TRANSITIONS):
            try:
                nxt = self.next_transition(
                    rec,
                    force=force,
                    defer_reprovision=defer_reprovision,
                    first_attempt=first_attempt and step == 0,
                )
            except ConcurrencyError:
                fresh = self.ctx.uow.get(rec.device_id)
                if fresh is None:
                    raise
                if fresh.state is RotationState.DISALLOWED:
                    self.revoke_stray(rec)
                rec = fresh
                continue
            if nxt is None:
                return rec
            if nxt.state is rec.state:  # bookkeeping only (attempts, next try): wait
                return nxt
            rec = nxt
        return rec

    def next_transition(
        self,
        rec: RotationRecord,
        *,
        force: bool,
        defer_reprovision: bool,
        first_attempt: bool = False,
    ) -> RotationRecord | None:
        """One transition; None when the record waits (for the device, or a deadline)."""
        ctx = self.ctx
        state = rec.state
        now = ctx.now()
        due = force or (rec.deadline is not None and rec.deadline <= now)
        if state is RotationState.CSR_REQUESTED:
            if not due:
                return None
            after = self.ensure_renewal_requested(rec)
            if after.state is not RotationState.CSR_REQUESTED:
                return after
            if rec.deadline is not None and rec.deadline <= now:
                deadline = now + ctx.policy.rotation_deadline
                return ctx.uow.save(rec, transitions.csr_still_awaited(rec, deadline))
            return None
        if state is RotationState.CSR_RECEIVED:
            return self.steps.issue(
                rec, defer_reprovision=defer_reprovision, first_attempt=first_attempt
            )
        if state is RotationState.ISSUED:
            return self.steps.enroll(rec, defer_reprovision=defer_reprovision)
        if state is RotationState.ENROLLED:
            return self.steps.deliver(rec, defer_reprovision=defer_reprovision)
        if state is RotationState.DELIVERED:
            if defer_reprovision or not due:
                return None
            return self.steps.reprovision(rec)
        if state is RotationState.REPROVISION_SENT:
            if not due:
                return None
            if self.confirmed_by_device(rec, None):
                return self.completion.confirm(rec, "reported")
            if rec.deadline is not None and rec.deadline <= now:
                return ctx.uow.save(rec, transitions.redeliver(now))
            return None
        if state is RotationState.CONFIRMED:  # a record stored in confirmed: finish it
            return self.completion.finish(rec)
        return None

    def revoke_stray(self, rec: RotationRecord) -> None:
        """A disallow won the race against ``rec``'s request. A certificate issued for it
        after the disallow listed the device's certificates escaped that revocation; it
        is revoked here as the disallow revokes, and the CRL published again."""
        stray = self.ctx.revoke_all(rec.device_id, self.ctx.deps.actor)
        if stray:
            logger.warning(
                "device %s: %s issued as the device was disallowed; revoked",
                rec.device_id,
                ", ".join(stray),
            )
            self.ctx.call(self.ctx.deps.issuer.publish_crl)

    # ------------------------------------------------------------------ the device's CSR

    def accept_csr(self, rec: RotationRecord, csr: CsrAnswer) -> RotationRecord | None:
        """The device answered a renewal request; None when the answer is for another
        request (the caller decides what else the report says)."""
        ctx = self.ctx
        if csr.request_id != rec.request_id:
            logger.info(
                "device %s: CSR for request %s ignored (current request %s)",
                rec.device_id,
                csr.request_id,
                rec.request_id,
            )
            return None
        if rec.state is RotationState.CSR_REQUESTED:
            size = len(csr.pem.encode("utf-8"))
            if size > ctx.policy.csr_max_bytes:
                # never bound to the request (nor written): the request fails, and the
                # next one asks the device again
                return self.completion.fail(
                    rec,
                    "csr_too_large",
                    f"the CSR has {size} bytes; at most {ctx.policy.csr_max_bytes}",
                )
            deadline = ctx.now() + ctx.policy.work_timeout
            saved = ctx.uow.save(rec, transitions.csr_received(csr, deadline))
            return self.run_until_waiting(saved, first_attempt=True)
        if rec.csr_sha256 is not None and rec.csr_sha256 != csr.sha256:
            # the request is bound to the first CSR: one certificate per request
            ctx.audit(
                "csr_ignored",
                "rejected",
                rec.device_id,
                request_id=rec.request_id,
                reason="a different CSR was already accepted for this request",
            )
            return rec
        if rec.state in RESUMABLE_ON_CSR:
            # the same CSR again: a redelivered report after a crash between two steps
            # (e.g. signed but the record not written); carry on now, not at the sweep
            return self.run_until_waiting(rec)
        return rec

    def ensure_renewal_requested(self, rec: RotationRecord) -> RotationRecord:
        """csr_requested: take an answer the twin already holds, else re-write the desired
        renewal request when the twin does not carry it."""
        ctx = self.ctx
        twin = ctx.twin(rec.device_id)
        reported = twin.reported.get("x509") if isinstance(twin.reported, dict) else None
        if isinstance(reported, dict):
            try:
                parsed: ReportedX509 | None = parse_reported_x509(rec.device_id, reported)
            except InvalidRequestError:
                parsed = None
            if parsed is not None and parsed.csr is not None:
                handled = self.accept_csr(rec, parsed.csr)
                if handled is not None and handled.state is not RotationState.CSR_REQUESTED:
                    return handled
        desired = twin.desired.get("x509") if isinstance(twin.desired, dict) else None
        current = desired.get("renewal") if isinstance(desired, dict) else None
        if not isinstance(current, dict) or current.get("requestId") != rec.request_id:
            logger.info(
                "device %s: renewal request %s written again", rec.device_id, rec.request_id
            )
            request_csr(ctx, rec)
        return rec

    # ------------------------------------------------------------------ confirmation

    def confirmed_by_device(self, rec: RotationRecord, connected_at: datetime | None) -> bool:
        """Evidence that the device uses the new certificate: its twin, or (self-signed
        identities) a registration after the reprovision with the hub holding only the new
        thumbprint."""
        ctx = self.ctx
        parsed = reported_on_twin(ctx, rec.device_id)
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
            reg = ctx.call(ctx.deps.enrollments.get_registration_state, rec.device_id)
        except NotFoundError:
            return False
        if reg.status != "assigned" or reg.last_updated is None:
            return False
        if reg.last_updated < rec.updated_at:
            return False
        ident = ctx.identity(rec.device_id)
        if ident is None or ident.auth_type is not AuthType.SELF_SIGNED:
            return False
        thumbs = {lower(ident.primary_thumbprint), lower(ident.secondary_thumbprint)} - {None}
        return thumbs == {rec.new_thumbprint}

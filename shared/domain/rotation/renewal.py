"""Starting a renewal: a new request (the device is asked for a CSR), or joining the one
already running."""

from __future__ import annotations

import uuid

from shared.domain.errors import DeviceDisallowedError, NotFoundError
from shared.domain.model import RotationRecord, RotationState, Trigger
from shared.domain.rotation import transitions
from shared.domain.rotation.context import RotationContext
from shared.domain.rotation.driving import Driver
from shared.domain.rotation.states import IN_FLIGHT
from shared.domain.rotation.steps import request_csr
from shared.domain.rotation.unit_of_work import RecordRead


class Renewals:
    def __init__(self, ctx: RotationContext, driver: Driver) -> None:
        self.ctx = ctx
        self.driver = driver

    def start(
        self, device_id: str, reason: Trigger, actor: str, *, read: RecordRead | None = None
    ) -> RotationRecord:
        """Ask the device for a CSR (manual renew API, sweep, due certificate).

        A rotation already running is returned unchanged (coalesced); a disallowed
        device raises DeviceDisallowedError; an unknown device NotFoundError. ``read``:
        the record as the caller has just read it.
        """
        uow = self.ctx.uow
        for attempt in uow.attempts(device_id, "start", read=read):
            with attempt as rec:
                return self.start_or_join(device_id, rec, reason, actor)
        raise uow.kept_changing(device_id, "start")

    def start_or_join(
        self, device_id: str, rec: RotationRecord | None, reason: Trigger, actor: str
    ) -> RotationRecord:
        """A new request unless one runs (then it is made sure the device was asked)."""
        if rec is None:
            ctx = self.ctx
            if ctx.identity(device_id) is None and ctx.individual(device_id) is None:
                raise NotFoundError(f"device {device_id} is not known to the hub or DPS")
            rec = RotationRecord(device_id=device_id)
        if rec.state is RotationState.DISALLOWED:
            raise DeviceDisallowedError(
                f"device {device_id} is disallowed ({rec.disallowed_reason}); allow it first"
            )
        if rec.state in IN_FLIGHT:
            if rec.state is RotationState.CSR_REQUESTED:
                return self.driver.ensure_renewal_requested(rec)
            return rec
        return self.open_request(rec, reason, actor)

    def open_request(
        self, rec: RotationRecord, reason: Trigger, actor: str, *, allow: bool = False
    ) -> RotationRecord:
        """-> csr_requested: a new request id, written, audited, and asked of the device.
        ``allow``: the request lets a disallowed device back in."""
        ctx = self.ctx
        request_id = uuid.uuid4().hex
        deadline = ctx.now() + ctx.policy.rotation_deadline
        changes = (
            transitions.allowed(request_id, deadline)
            if allow
            else transitions.open_request(reason, request_id, deadline)
        )
        saved = ctx.uow.save(rec, changes)
        ctx.audit(
            "rotation_start",
            "ok",
            rec.device_id,
            actor=actor,
            request_id=request_id,
            reason=reason.value,
        )
        ctx.metric("certroll.rotation_started", reason=reason.value)
        request_csr(ctx, saved)
        return saved

"""What certroll knows about one device, in one view."""

from __future__ import annotations

from shared.domain.commands import Status
from shared.domain.errors import NotFoundError
from shared.domain.rotation.context import RotationContext
from shared.domain.rotation.results import DeviceView


def device_status(ctx: RotationContext, query: Status) -> DeviceView:
    device_id = query.device_id
    rec = ctx.uow.get(device_id)
    certs = ctx.call(ctx.deps.ledger.list_for_device, device_id)
    enr = ctx.individual(device_id)
    ident = ctx.identity(device_id)
    if rec is None and not certs and enr is None and ident is None:
        raise NotFoundError(f"device {device_id} is not known to certroll, the hub or DPS")
    audit = ctx.call(ctx.deps.audit.list, device_id, 20)
    return DeviceView(device_id, rec, tuple(certs), enr, ident, tuple(audit))

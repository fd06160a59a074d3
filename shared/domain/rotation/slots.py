"""Where a certificate goes: the slot rule, the individual-enrollment slots (DPS) and the
hub identity's thumbprints.

:func:`choose_slot` is the pure rule; the other functions apply it with their own
ETag-checked retry (DPS's and the hub's records, not the rotation record's unit of work).
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime
from typing import Any

from shared.domain.errors import ConcurrencyError
from shared.domain.model import (
    AuthType,
    CertificateRecord,
    CertificateSlot,
    DeviceStatus,
    IndividualEnrollment,
    ProvisioningStatus,
)
from shared.domain.rotation.batching import current_batch, write_or_stage
from shared.domain.rotation.context import RotationContext
from shared.domain.rotation.unit_of_work import MAX_ATTEMPTS

logger = logging.getLogger(__name__)


def thumb(slot: CertificateSlot | None) -> str | None:
    if slot is None or slot.thumbprint_sha256 is None:
        return None
    return slot.thumbprint_sha256.lower()


def lower(value: str | None) -> str | None:
    return value.lower() if value else None


def choose_slot(
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


def enrollment_slot_for(enr: IndividualEnrollment, new: str, keep: str | None) -> str:
    """The slot of ``enr`` for thumbprint ``new``: where it already is, else the slot rule."""
    p, s = thumb(enr.primary), thumb(enr.secondary)
    if new in (p, s):
        return "primary" if p == new else "secondary"
    return choose_slot(
        p,
        s,
        keep,
        enr.primary.not_after if enr.primary else None,
        enr.secondary.not_after if enr.secondary else None,
    )


def slot_of(device_id: str, cert: CertificateRecord) -> CertificateSlot:
    return CertificateSlot(
        thumbprint_sha256=cert.thumbprint_sha256.lower(),
        not_after=cert.not_after,
        subject=f"CN={device_id}",
        pem=cert.pem,
    )


def place_in_enrollment(
    ctx: RotationContext,
    device_id: str,
    cert: CertificateRecord,
    *,
    keep: str | None,
    clear_old: bool,
    enable: bool,
    known_first: bool = False,
) -> str:
    """Put ``cert`` in the individual-enrollment slot not holding ``keep``; "group" when
    the device has none (its group trusts certroll's issuing CA). ``clear_old`` empties
    the other slot; ``enable`` enables a disabled enrollment."""
    new = cert.thumbprint_sha256.lower()
    batch = current_batch()
    landed = batch.landed.get(device_id) if batch is not None else None
    if landed is not None and new in (thumb(landed.primary), thumb(landed.secondary)):
        return "primary" if thumb(landed.primary) == new else "secondary"  # written in bulk
    for attempt in range(MAX_ATTEMPTS):
        # ``known_first``: from the campaign's copy (its ETag guards the write), then reads
        fresh = attempt or not known_first or (batch is not None and device_id in batch.refused)
        enr = (ctx.individual if fresh else ctx.known_individual)(device_id)
        if enr is None:
            return "group"
        slot = enrollment_slot_for(enr, new, lower(keep))
        other = "secondary" if slot == "primary" else "primary"
        changes: dict[str, Any] = {}
        if thumb(getattr(enr, slot)) != new:
            changes[slot] = slot_of(device_id, cert)
        if clear_old and getattr(enr, other) is not None:
            changes[other] = None
        if enable and enr.provisioning_status is not ProvisioningStatus.ENABLED:
            changes["provisioning_status"] = ProvisioningStatus.ENABLED
        if not changes:
            return slot
        if not write_or_stage(ctx, dataclasses.replace(enr, **changes), batch):
            continue
        return slot
    raise ConcurrencyError(f"{device_id}: the enrollment kept changing")


def keep_only_in_enrollment(ctx: RotationContext, device_id: str, new: str) -> None:
    """Empty every individual-enrollment slot not holding thumbprint ``new`` (left as
    they are when ``new`` is in neither slot)."""
    batch = current_batch()
    landed = batch.landed.get(device_id) if batch is not None else None
    if landed is not None and {thumb(landed.primary), thumb(landed.secondary)} <= {new, None}:
        return  # emptied in the batch's bulk call
    for _ in range(MAX_ATTEMPTS):
        enr = ctx.individual(device_id)
        if enr is None:
            return
        changes: dict[str, Any] = {}
        for name in ("primary", "secondary"):
            if thumb(getattr(enr, name)) not in (None, new):
                changes[name] = None
        if not changes:
            return
        if thumb(enr.primary) != new and thumb(enr.secondary) != new:
            logger.warning(
                "device %s: new certificate no longer in its enrollment; slots left as they are",
                device_id,
            )
            return
        if not write_or_stage(ctx, dataclasses.replace(enr, **changes), batch):
            continue
        return


def hub_accept(
    ctx: RotationContext,
    device_id: str,
    thumbprint: str,
    *,
    keep: str | None,
    clear_others: bool,
    enable: bool,
) -> bool:
    """Make the hub identity accept ``thumbprint``.

    Self-signed identities get it in the thumbprint slot not holding ``keep``. With
    ``enable`` (allow) a disabled identity is enabled, and a CA-authenticated one is
    switched to thumbprint authentication so a revoked leaf of the same CA stays out.
    Returns whether the identity changed.
    """
    new = thumbprint.lower()
    for _ in range(MAX_ATTEMPTS):
        ident = ctx.identity(device_id)
        if ident is None:
            return False  # DPS creates it at registration
        if ident.auth_type is not AuthType.SELF_SIGNED and not enable:
            return False
        p, s = lower(ident.primary_thumbprint), lower(ident.secondary_thumbprint)
        if ident.auth_type is not AuthType.SELF_SIGNED:
            p = s = None
        updated = dataclasses.replace(ident, auth_type=AuthType.SELF_SIGNED)
        if new not in (p, s):
            if choose_slot(p, s, lower(keep)) == "primary":
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
            updated.primary_thumbprint == lower(ident.primary_thumbprint)
            and updated.secondary_thumbprint == lower(ident.secondary_thumbprint)
            and updated.status is ident.status
            and updated.auth_type is ident.auth_type
        ):
            return False
        try:
            ctx.call(ctx.deps.registry.update_device, updated)
        except ConcurrencyError:
            continue
        return True
    raise ConcurrencyError(f"{device_id}: the hub identity kept changing")


def withdraw_from_enrollment(
    ctx: RotationContext,
    device_id: str,
    thumbprint: str,
    fallback: CertificateRecord | None = None,
) -> str:
    """Take thumbprint ``thumbprint`` out of the device's individual enrollment. When it is
    the only certificate there (DPS needs one), ``fallback`` (the device's current
    certificate, when the slot rule admits it) takes its place, else the enrollment is
    disabled. Returns what was done: "none", "cleared", "restored" or "disabled"."""
    gone = thumbprint.lower()
    for _ in range(MAX_ATTEMPTS):
        enr = ctx.individual(device_id)
        if enr is None:
            return "none"
        held = [name for name in ("primary", "secondary") if thumb(getattr(enr, name)) == gone]
        if not held:
            return "none"
        others = [
            getattr(enr, name)
            for name in ("primary", "secondary")
            if name not in held and getattr(enr, name) is not None
        ]
        if others:
            updated = dataclasses.replace(enr, primary=others[0], secondary=None)
            done = "cleared"
        elif fallback is not None:
            updated = dataclasses.replace(enr, primary=slot_of(device_id, fallback), secondary=None)
            done = "restored"
        elif enr.provisioning_status is ProvisioningStatus.DISABLED:
            return "disabled"
        else:
            updated = dataclasses.replace(enr, provisioning_status=ProvisioningStatus.DISABLED)
            done = "disabled"
        try:
            ctx.call(ctx.deps.enrollments.put_individual, updated)
        except ConcurrencyError:
            continue
        return done
    raise ConcurrencyError(f"{device_id}: the enrollment kept changing")


def withdraw_from_hub(
    ctx: RotationContext, device_id: str, thumbprint: str, fallback: str | None = None
) -> str:
    """Take thumbprint ``thumbprint`` off the device's self-signed hub identity. When it
    is the only thumbprint there (the hub needs one), ``fallback`` (the current
    certificate's thumbprint, when the slot rule admits it) takes its place, else the
    identity is disabled. Returns "none", "cleared", "restored" or "disabled"."""
    gone = thumbprint.lower()
    for _ in range(MAX_ATTEMPTS):
        ident = ctx.identity(device_id)
        if ident is None or ident.auth_type is not AuthType.SELF_SIGNED:
            return "none"
        p, s = lower(ident.primary_thumbprint), lower(ident.secondary_thumbprint)
        if gone not in (p, s):
            return "none"
        rest = [t for t in (p, s) if t is not None and t != gone]
        if rest or fallback:
            updated = dataclasses.replace(
                ident,
                primary_thumbprint=rest[0] if rest else lower(fallback),
                secondary_thumbprint=None,
            )
            done = "cleared" if rest else "restored"
        elif ident.status is DeviceStatus.DISABLED:
            return "disabled"
        else:
            updated = dataclasses.replace(
                ident,
                status=DeviceStatus.DISABLED,
                status_reason="its only certificate was withdrawn (failed rotation)",
            )
            done = "disabled"
        try:
            ctx.call(ctx.deps.registry.update_device, updated)
        except ConcurrencyError:
            continue
        return done
    raise ConcurrencyError(f"{device_id}: the hub identity kept changing")

"""Reconcile on a failed connect: a device that the hub refused (401003) gets its DPS
enrollment and self-signed hub identity made to hold the certificates it may use, so its
own re-provisioning succeeds.

What Azure sends is the device id and the result (the Connections resource log documents
``deviceId``, ``sdkVersion``, ``protocol``, ``authType``, ``maskedIpAddress``,
``resultType``, ``resultDescription``; nothing names the presented certificate). So the
reconcile does not ask which certificate the device presented: it writes what the rule of
:mod:`~shared.domain.rotation.admissible` allows -- the device's current certificate and
the one its open request issued, valid and neither revoked, superseded nor failed -- and
removes from the slots the device's certificates the ledger says are retired. Nothing else
ever goes in, so a 401003 from someone holding a retired key changes nothing for them.

Bounds: a reconcile that changed something uses up the device's allowance
(``policy.reconcile_interval``); refusals and no-ops do not, and are audited at most once
per device, result and interval. Refusals for device ids certroll has never seen (no
rotation record, no certificate) are not audited one by one: the caller gathers them in an
:class:`UnknownDevices` and writes one audit entry for the batch.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from shared.domain.certs import sha1_thumbprint
from shared.domain.errors import ConcurrencyError
from shared.domain.model import (
    AuditEvent,
    AuthType,
    CertificateRecord,
    ConnectionFailure,
    DeviceIdentity,
    IndividualEnrollment,
    RotationRecord,
    RotationState,
)
from shared.domain.rotation import transitions
from shared.domain.rotation.admissible import admissible_certificates
from shared.domain.rotation.context import RotationContext
from shared.domain.rotation.results import ReconcileOutcome
from shared.domain.rotation.slots import lower, slot_of, thumb
from shared.domain.rotation.states import IN_FLIGHT
from shared.domain.rotation.unit_of_work import MAX_ATTEMPTS

logger = logging.getLogger(__name__)

UNAUTHORIZED = 401003
SLOTS = ("primary", "secondary")
#: device ids named in the one audit entry of a batch's unknown devices
UNKNOWN_SAMPLE = 20


def _sha1_of_pem(pem: str) -> str | None:
    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        return None
    return sha1_thumbprint(cert)  # hub thumbprints may be SHA-1


def _thumbprints(cert: CertificateRecord) -> set[str]:
    out = {cert.thumbprint_sha256.lower()}
    sha1 = _sha1_of_pem(cert.pem)
    if sha1:
        out.add(sha1.lower())
    return out


@dataclass
class UnknownDevices:
    """Refusals for device ids certroll has never seen, gathered over one event batch."""

    count: int = 0
    sample: list[str] = field(default_factory=list)

    def add(self, device_id: str) -> None:
        self.count += 1
        if len(self.sample) < UNKNOWN_SAMPLE and device_id not in self.sample:
            self.sample.append(device_id)


class Reconciler:
    def __init__(self, ctx: RotationContext) -> None:
        self.ctx = ctx

    # ------------------------------------------------------------------ entry points

    def on_connection_failure(
        self, failure: ConnectionFailure, unknown: UnknownDevices | None = None
    ) -> ReconcileOutcome:
        """A 401003/403012 record of the hub's Connections log; see docs/rotation.md."""
        ctx = self.ctx
        device_id = failure.device_id
        rec = ctx.uow.get(device_id)
        if rec is None and not ctx.call(ctx.deps.ledger.list_for_device, device_id):
            ctx.metric("certroll.reconcile_refused", result="unknown_device")
            if unknown is not None:
                unknown.add(device_id)
            else:
                self.audit_unknown(UnknownDevices(1, [device_id]))
            return ReconcileOutcome(device_id, failure.code, "unknown_device")
        since = ctx.now() - ctx.policy.reconcile_interval
        recent = [
            e
            for e in ctx.call(ctx.deps.audit.list, device_id, 20)
            if e.action == "reconcile" and e.at is not None and e.at > since
        ]

        def quiet(outcome: str, result: str, **detail: Any) -> ReconcileOutcome:
            """Audit a refusal or no-op once per result and interval; it uses up nothing."""
            if not any(e.detail.get("result") == result for e in recent):
                ctx.audit("reconcile", outcome, device_id, result=result, code=failure.code,
                          **detail)
            ctx.metric(
                "certroll.reconcile" if outcome == "noop" else "certroll.reconcile_refused",
                result=result,
            )
            return ReconcileOutcome(device_id, failure.code, result)

        if failure.code != UNAUTHORIZED:
            return quiet("noop", "disabled_device", description=failure.message[:200])
        if any(e.outcome == "ok" for e in recent):
            ctx.metric("certroll.reconcile_rate_limited")
            return ReconcileOutcome(device_id, failure.code, "rate_limited")
        if rec is not None and rec.state is RotationState.DISALLOWED:
            logger.warning("device %s: 401003 not reconciled (disallowed)", device_id)
            return quiet("rejected", "device_disallowed")
        changed, allowed = self.let_in(device_id)
        if not allowed:
            logger.warning("device %s: 401003 not reconciled (no admissible certificate)",
                           device_id)
            return quiet("rejected", "no_admissible_certificate")
        serials = [c.serial for c in allowed]
        if not changed:
            return quiet("noop", "already_consistent", serials=serials)
        ctx.audit("reconcile", "ok", device_id, result="reconciled", code=failure.code,
                  serials=serials, changed=changed)
        ctx.metric("certroll.reconcile", result="reconciled")
        logger.info("device %s: reconciled %s (%s)", device_id, serials, ", ".join(changed))
        return ReconcileOutcome(device_id, failure.code, "reconciled", tuple(changed), serials[0])

    def audit_unknown(self, unknown: UnknownDevices) -> None:
        """One audit entry (and metric) for a batch's refusals of unknown device ids."""
        if unknown.count == 0:
            return
        ctx = self.ctx
        ctx.call(
            ctx.deps.audit.append,
            AuditEvent(
                action="reconcile",
                outcome="rejected",
                actor=ctx.deps.actor,
                detail={"result": "unknown_device", "count": unknown.count,
                        "deviceIds": list(unknown.sample)},
                at=ctx.now(),
            ),
        )
        logger.warning("401003 for %d unknown device ids not reconciled (e.g. %s)",
                       unknown.count, ", ".join(unknown.sample[:3]))

    # ------------------------------------------------------------------ the slots

    def let_in(self, device_id: str) -> tuple[list[str], list[CertificateRecord]]:
        """Make the individual enrollment and a self-signed hub identity hold what the slot
        rule allows and none of the device's other certificates. Returns what changed and
        the certificates allowed.

        Safe against a rotation ending in another worker: a finish or a failure marks
        the ledger first and cleans the slots after (completion.py). Here the slots are
        read, then the record and the ledger, the slots are written with the ETags read
        (a 412 decides again), and after a write the ledger is read once more. A
        certificate retired before that last read is taken out in another round; one
        retired after it is taken out by the retiring worker, whose clean-up reads the
        slots after this write. The finish reads the hub identity only when the record
        asks it to (economy.py), so a write to it mid-rotation marks the record first
        (ETag-checked: a finish that read the record before the mark fails its own save
        and finishes again, with the mark)."""
        ctx = self.ctx
        changed: list[str] = []
        for _ in range(MAX_ATTEMPTS):
            enr = ctx.individual(device_id)
            ident = ctx.identity(device_id)
            rec, certs, allowed = self._rule(device_id)
            if not allowed:
                return changed, []
            serials = {c.serial for c in allowed}
            retired: set[str] = set()
            for cert in certs:
                if cert.serial not in serials:
                    retired |= _thumbprints(cert)
            wrote: list[str] = []
            hub = self._hub_update(ident, allowed, retired) if ident is not None else None
            try:
                if hub is not None and rec is not None and rec.state in IN_FLIGHT:
                    if not rec.hub_cleanup:
                        ctx.uow.save(rec, transitions.hub_written())
                if enr is not None:
                    wrote += self._enrollment(device_id, enr, allowed, retired)
                if hub is not None:
                    ctx.call(ctx.deps.registry.update_device, hub)
                    wrote.append("hub_identity")
            except ConcurrencyError:
                changed += wrote
                continue
            changed += wrote
            if not wrote or serials <= {c.serial for c in self._rule(device_id)[2]}:
                return list(dict.fromkeys(changed)), allowed
            # retired meanwhile by a worker whose slot clean-up came before this write:
            # the next round takes it out again
        raise ConcurrencyError(f"{device_id}: the enrollment or hub identity kept changing")

    def _rule(
        self, device_id: str
    ) -> tuple[RotationRecord | None, list[CertificateRecord], list[CertificateRecord]]:
        """The record and the ledger as they are now, and what the slot rule admits."""
        ctx = self.ctx
        rec = ctx.uow.get(device_id)
        certs: list[CertificateRecord] = ctx.call(ctx.deps.ledger.list_for_device, device_id)
        return rec, certs, admissible_certificates(device_id, rec, certs, ctx.now())

    @staticmethod
    def _place(
        current: dict[str, str | None],
        allowed: Sequence[CertificateRecord],
        retired: set[str],
        held: dict[str, set[str]],
    ) -> dict[str, CertificateRecord | None]:
        """The slot writes: retired thumbprints cleared, each allowed certificate not held
        put in an empty slot, else in the slot not holding an allowed one."""
        target: dict[str, str | None] = {
            n: (None if current[n] in retired else current[n]) for n in SLOTS
        }
        writes: dict[str, CertificateRecord | None] = {
            n: None for n in SLOTS if target[n] != current[n]
        }
        for cert in allowed:
            if any(target[n] in held[cert.serial] for n in SLOTS):
                continue
            free = [n for n in SLOTS if target[n] is None]
            if not free:
                taken = {t for c in allowed for t in held[c.serial]}
                free = [n for n in SLOTS if target[n] not in taken]
            if not free:  # both slots hold allowed certificates already
                continue
            target[free[0]] = cert.thumbprint_sha256.lower()
            writes[free[0]] = cert
        return writes

    def _enrollment(
        self,
        device_id: str,
        enr: IndividualEnrollment,
        allowed: Sequence[CertificateRecord],
        retired: set[str],
    ) -> list[str]:
        """Write ``enr``'s slots (ETag-checked: ConcurrencyError when it changed)."""
        held = {c.serial: {c.thumbprint_sha256.lower()} for c in allowed}
        current = {"primary": thumb(enr.primary), "secondary": thumb(enr.secondary)}
        writes = self._place(current, allowed, retired, held)
        if not writes:
            return []
        changes: dict[str, Any] = {
            n: (slot_of(device_id, c) if c is not None else None) for n, c in writes.items()
        }
        ctx = self.ctx
        ctx.call(ctx.deps.enrollments.put_individual, dataclasses.replace(enr, **changes))
        return [f"enrollment.{n}" for n in SLOTS if n in writes]

    def _hub_update(
        self, ident: DeviceIdentity, allowed: Sequence[CertificateRecord], retired: set[str]
    ) -> DeviceIdentity | None:
        """``ident`` holding what it should (None: a CA identity, or nothing to change).
        DPS creates the identity at registration; CA identities need nothing."""
        if ident.auth_type is not AuthType.SELF_SIGNED:
            return None
        held = {c.serial: _thumbprints(c) for c in allowed}
        current = {
            "primary": lower(ident.primary_thumbprint),
            "secondary": lower(ident.secondary_thumbprint),
        }
        writes = self._place(current, allowed, retired, held)
        if not writes:
            return None
        values = dict(current)
        for name, cert in writes.items():
            values[name] = cert.thumbprint_sha256.lower() if cert is not None else None
        if values["primary"] is None:
            values["primary"], values["secondary"] = values["secondary"], None
        return dataclasses.replace(
            ident, primary_thumbprint=values["primary"], secondary_thumbprint=values["secondary"]
        )

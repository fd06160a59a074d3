"""The soak's end-of-run invariants: pure functions over what the run left behind.

Inputs are plain records read once at the end (:class:`DeviceView` per device, the
ledger rows, the serials the published CRL lists, the poison messages and the reasons
the host gave for them); :func:`check` returns every invariant with pass/fail and the
figures ``lost`` and ``double_issuances``. Nothing here reads storage or the emulator.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from local.fleet import PROVISION_TRIGGER
from shared.domain.model import CertificateRecord, CertificateStatus


@dataclass(frozen=True)
class DeviceView:
    """One device at the end of the run, as the device, DPS and the hub see it."""

    device_id: str
    disallowed: bool
    initial_serial: str
    current_serial: str
    current_thumbprint: str
    chain_valid: bool  # chains to the issuing CA and is valid now
    dps_accepts: bool  # a DPS registration with the current certificate succeeded
    hub_accepts: bool  # a hub connection with it succeeded
    #: thumbprints in the individual enrollment's slots (None: a group member)
    enrollment_thumbprints: frozenset[str] | None
    #: thumbprints of a self-signed hub identity (None: CA-authenticated)
    hub_thumbprints: frozenset[str] | None
    #: times the device's own certificate was refused (401/403) while it was allowed
    refusals: int = 0
    max_gap_seconds: float = 0.0


@dataclass(frozen=True)
class Invariant:
    name: str
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class Verdict:
    invariants: list[Invariant]
    lost: int
    double_issuances: int
    rotations_completed: int
    max_gap_seconds: float
    failures: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(i.ok for i in self.invariants)


def _some(ids: Sequence[str], limit: int = 5) -> str:
    more = f" (+{len(ids) - limit} more)" if len(ids) > limit else ""
    return ", ".join(ids[:limit]) + more


def readable(reason: str) -> bool:
    """A reason a person can act on: the error's message, not just its class name."""
    return len(reason.split(":", 1)[-1].strip()) >= 8


def renewals(ledger: Iterable[CertificateRecord]) -> list[CertificateRecord]:
    return [r for r in ledger if r.trigger != PROVISION_TRIGGER]


def double_issuances(ledger: Iterable[CertificateRecord]) -> list[str]:
    """``device/request`` for every renewal request that got more than one certificate,
    and ``device`` for every device holding more than one renewal certificate that is
    neither failed nor revoked (at most one replacement per device survives a run)."""
    rows = renewals(ledger)
    out: list[str] = []
    per_request = Counter((r.device_id, r.request_id) for r in rows)
    out += [f"{d}/{q}" for (d, q), n in sorted(per_request.items()) for _ in range(n - 1)]
    dead = {CertificateStatus.FAILED, CertificateStatus.REVOKED}
    live: dict[str, list[CertificateRecord]] = {}
    for r in rows:
        if r.status not in dead:
            live.setdefault(r.device_id, []).append(r)
    for d, certs in sorted(live.items()):
        shown = " ".join(f"{r.status}/{r.trigger}/{r.request_id[:8]}" for r in certs)
        out += [f"{d} ({shown})"] * (len(certs) - 1)
    return out


def check(
    devices: Sequence[DeviceView],
    ledger: Sequence[CertificateRecord],
    crl_serials: Iterable[int],
    poison_count: int,
    poison_reasons: Sequence[tuple[str, str]],
    killed_not_redelivered: Sequence[str] = (),
) -> Verdict:
    """Every invariant over the end state; ``poison_reasons`` are the (message id,
    reason) pairs the host recorded when it moved a message to the poison queue, and
    ``killed_not_redelivered`` the messages of killed workers that never came back."""
    allowed = [d for d in devices if not d.disallowed]
    barred = [d for d in devices if d.disallowed]
    by_device: dict[str, list[CertificateRecord]] = {}
    for row in ledger:
        by_device.setdefault(row.device_id, []).append(row)
    invariants: list[Invariant] = []
    failures: dict[str, list[str]] = {}

    def add(name: str, bad: list[str], detail: str = "") -> None:
        failures[name] = bad
        invariants.append(Invariant(name, not bad, detail or _some(bad)))

    lost = [
        d.device_id
        for d in allowed
        if d.current_serial == d.initial_serial
        or not (d.chain_valid and d.dps_accepts and d.hub_accepts)
    ]
    add("every allowed device on a valid new certificate DPS and the hub accept", lost)

    doubles = double_issuances(ledger)
    add("exactly one issuance per renewal request", doubles)

    disagree: list[str] = []
    for d in allowed:
        rows = by_device.get(d.device_id, [])
        active = {r.thumbprint_sha256.lower() for r in rows if r.status is CertificateStatus.ACTIVE}
        current = [r for r in rows if r.serial == d.current_serial]
        ok = bool(current) and current[0].status is CertificateStatus.ACTIVE
        for slots in (d.enrollment_thumbprints, d.hub_thumbprints):
            if slots is not None:
                ok = ok and d.current_thumbprint in slots and slots <= active
        if not ok:
            disagree.append(d.device_id)
    add("ledger, enrollments and hub identities agree", disagree)

    revoked = {int(r.serial, 16) for r in ledger if r.status is CertificateStatus.REVOKED}
    listed = set(crl_serials)
    crl_bad = [format(s, "x") for s in sorted(revoked ^ listed)]
    add(
        "the CRL lists exactly the revoked certificates",
        crl_bad,
        f"{len(listed)} listed, {len(revoked)} revoked"
        + (f"; {_some(crl_bad)}" if crl_bad else ""),
    )

    barred_bad = [
        d.device_id
        for d in barred
        if d.dps_accepts
        or d.hub_accepts
        or any(r.status is not CertificateStatus.REVOKED for r in by_device.get(d.device_id, []))
    ]
    add("disallowed devices refused and all their certificates revoked", barred_bad)

    unreadable = [mid for mid, text in poison_reasons if not readable(text)]
    if poison_count != len(poison_reasons):
        unreadable.append(
            f"{poison_count} in the poison queue, {len(poison_reasons)} reasons recorded"
        )
    add("no poison message without a readable reason", unreadable, f"{poison_count} poisoned")

    add(
        "every message of a killed worker came back after its visibility timeout",
        list(killed_not_redelivered),
    )

    refused = [d.device_id for d in allowed if d.refusals]
    add("no moment without a working certificate (no refusal of a device's certificate)", refused)

    completed = sum(
        1
        for d in allowed
        for r in by_device.get(d.device_id, [])
        if r.trigger != PROVISION_TRIGGER and r.serial == d.current_serial
    )
    return Verdict(
        invariants=invariants,
        lost=len(lost),
        double_issuances=len(doubles),
        rotations_completed=completed,
        max_gap_seconds=round(max((d.max_gap_seconds for d in allowed), default=0.0), 3),
        failures=failures,
    )

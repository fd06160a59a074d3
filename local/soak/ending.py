"""Reads the end state of a soak run once (faults off) into the checker's records."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from datetime import datetime
from enum import Enum
from typing import Any, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from local.device import contract
from local.device.simulator import FleetSimulator
from local.emulator import HubConnectError, RegistrationError
from local.soak.invariants import DeviceView, Verdict, check
from local.soak.stack import SoakStack
from shared.bootstrap import CRL_NAME
from shared.clock import ManualClock
from shared.domain.errors import NotFoundError, ThrottledError

T = TypeVar("T")


def _patiently(clock: ManualClock, call: Callable[[], T]) -> T:
    """``call()``, waiting out the emulator's throttling on the clock."""
    for _ in range(1000):
        try:
            return call()
        except ThrottledError as exc:
            clock.advance(max(exc.retry_after or 1.0, 0.001))
        except (RegistrationError, HubConnectError) as exc:
            after = getattr(exc, "retry_after", None)
            if after is None:
                raise
            clock.advance(max(float(after), 0.001))
    return call()


def _chain_valid(cert: x509.Certificate, issuing: x509.Certificate, at: Any) -> bool:
    try:
        cert.verify_directly_issued_by(issuing)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return cert.not_valid_before_utc <= at <= cert.not_valid_after_utc


def _accepts(
    clock: ManualClock, stack: SoakStack, sim: FleetSimulator, device_id: str
) -> tuple[bool, bool]:
    """(DPS accepts, hub accepts) the device's current certificate: a real registration
    and a real connection with it."""
    agent = sim.agents[device_id]
    emulator = stack.emulator
    try:
        _patiently(clock, lambda: emulator.register(device_id, agent.chain))
        dps = True
    except RegistrationError:
        dps = False
    try:
        session = _patiently(clock, lambda: emulator.connect(device_id, agent.chain, agent))
        session.disconnect()
        hub = True
    except HubConnectError:
        hub = False
    return dps, hub


def _slots(clock: ManualClock, stack: SoakStack, device_id: str) -> tuple[Any, Any]:
    emulator = stack.emulator
    try:
        enr = _patiently(clock, lambda: emulator.dps.get_individual(device_id))
        enrolled = frozenset(
            s.thumbprint_sha256.lower() for s in (enr.primary, enr.secondary) if s is not None
        )
    except NotFoundError:
        enrolled = None
    ident = _patiently(clock, lambda: emulator.hub.get_device(device_id))
    held = None
    if ident.primary_thumbprint or ident.secondary_thumbprint:
        held = frozenset(
            t.lower() for t in (ident.primary_thumbprint, ident.secondary_thumbprint) if t
        )
    return enrolled, held


def verdict_of(
    stack: SoakStack,
    sim: FleetSimulator,
    initial: dict[str, str],
    barred: str,
    clock: ManualClock,
) -> Verdict:
    services = stack.services
    issuing = services.authority.certificate
    at = clock.now()
    ledger = list(services.ledger.list_all())
    devices = []
    for device_id, agent in sorted(sim.agents.items()):
        cert = agent.certificate
        enrolled, held = _slots(clock, stack, device_id)
        dps, hub = _accepts(clock, stack, sim, device_id)
        devices.append(
            DeviceView(
                device_id=device_id,
                disallowed=device_id == barred,
                initial_serial=initial[device_id],
                current_serial=format(cert.serial_number, "x"),
                current_thumbprint=contract.thumbprint(cert).lower(),
                chain_valid=_chain_valid(cert, issuing, at),
                dps_accepts=dps,
                hub_accepts=hub,
                enrollment_thumbprints=enrolled,
                hub_thumbprints=held,
                refusals=agent.timeline.connect_failures,
                max_gap_seconds=agent.timeline.gap_seconds(clock.now()),
            )
        )
    crl = x509.load_der_x509_crl(services.crl_publisher.fetch(CRL_NAME))
    queue = stack.devhost.queue_service.get_queue_client(
        stack.settings.get("CERTROLL_WORK_QUEUE") + "-poison"
    )
    try:
        poison_count = int(queue.get_queue_properties().approximate_message_count or 0)
    except Exception:  # no poison queue: nothing was poisoned
        poison_count = 0
    return check(
        devices,
        ledger,
        (r.serial_number for r in crl),
        poison_count,
        stack.poisoned,
        sorted(stack.killed_messages - stack.redelivered_after_kill),
    )


def _plain(value: Any) -> Any:
    """``value`` as JSON-ready data (dataclasses, enums, datetimes, sets made plain)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def evidence(
    stack: SoakStack, sim: FleetSimulator, clock: ManualClock, device_ids: Iterable[str]
) -> dict[str, Any]:
    """What each of ``device_ids`` left behind, read before the soak's storage goes: its
    ledger rows, rotation record, enrollment slots, hub identity, audit entries and the
    device's own timeline (its refusals among them)."""
    return {d: _evidence_of(stack, sim, clock, d) for d in device_ids}


_LEDGER_FIELDS = (
    "serial", "thumbprint_sha256", "status", "trigger", "request_id",
    "issued_at", "not_before", "not_after", "revoked_at", "revocation_reason",
)  # fmt: skip


def _evidence_of(
    stack: SoakStack, sim: FleetSimulator, clock: ManualClock, device_id: str
) -> dict[str, Any]:
    services = stack.services
    emulator = stack.emulator
    item: dict[str, Any] = {}
    try:
        rows = services.ledger.list_for_device(device_id)
        item["ledger"] = [{k: _plain(getattr(r, k)) for k in _LEDGER_FIELDS} for r in rows]
        rec = _plain(services.state.get(device_id)) or {}
        item["rotation"] = {k: v for k, v in rec.items() if k not in ("csr_pem", "etag")}
        try:
            enr = _patiently(clock, lambda: emulator.dps.get_individual(device_id))
            item["enrollment"] = {
                "primary": enr.primary.thumbprint_sha256.lower() if enr.primary else None,
                "secondary": enr.secondary.thumbprint_sha256.lower() if enr.secondary else None,
            }
        except NotFoundError:
            item["enrollment"] = None
        ident = _patiently(clock, lambda: emulator.hub.get_device(device_id))
        item["hub"] = {"primary": ident.primary_thumbprint, "secondary": ident.secondary_thumbprint}
        item["audit"] = [_plain(e) for e in services.audit.list(device_id, limit=200)]
    except Exception as exc:  # evidence is best effort; the verdict stands regardless
        item["error"] = f"{type(exc).__name__}: {exc}"
    agent = sim.agents.get(device_id)
    if agent is not None:
        item["timeline"] = _plain(agent.timeline)
        item["device_thumbprint"] = contract.thumbprint(agent.certificate).lower()
    return item

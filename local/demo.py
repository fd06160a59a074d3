"""The demo: a simulated fleet near expiry rotated end to end by the functions.

Flow (:func:`run_demo`):

1. Start the :class:`~local.stack.LocalStack` on a :class:`~shared.clock.ManualClock` set
   ``age`` (22 days) before the rotation start, which itself is ``margin`` before real
   now. Certificates issued during the run are therefore already valid at real now.
2. Provision the fleet through certroll's own Issuer (so the ledger holds every initial
   certificate; 30-day validity), mixing individual enrollments and members of a CA
   enrollment group; devices register through DPS and connect to the hub.
3. Move the clock to the rotation start: every certificate is now due for renewal.
4. Fire the timer: ``daily_sweep`` fans the due devices out on the work queue,
   ``rotation_worker`` asks each device for a CSR, the CSRs come back as routed twin
   changes (``twin_changes``), the certificates are issued, enrolled in the free DPS slot,
   delivered, the devices reprovision, and ``device_lifecycle`` / ``twin_changes``
   confirm. A share of the twin-change messages is delivered twice (at-least-once), some
   devices are offline for a while, and one device is disallowed through the HTTP API
   (with a bearer token of the stack's loopback token issuer) while its rotation runs;
   it is then refused by DPS and the hub.
5. An operator restores one device's enrollment and hub identity from before the
   rotation (they hold its superseded certificate); the device, on its new certificate,
   is refused by the hub (401003), the Connections record (documented fields only) reaches
   ``connection_failures``, the reconcile puts the device's current certificate back and
   takes the superseded one out, and the device gets back in (``reconciled``).
6. Verify: every other device runs on a new certificate that chains to the root and is
   valid at real now, with exactly one renewal issuance in the ledger; every certificate
   of the disallowed device is revoked and listed in the published CRL.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import gc
import json
import logging
import math
import random
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from local.device.simulator import FleetSimulator
from local.emulator import HubConnectError, RegistrationError
from local.fleet import PROVISION_TRIGGER, provision_fleet
from local.stack import (
    EVENT_HUB_PARTITIONS,
    STORAGE_CALLS,
    LocalStack,
    cpu_seconds,
    demo_times,
)
from shared.bootstrap import CRL_NAME
from shared.clock import ManualClock
from shared.domain.errors import CertrollError, InvalidRequestError, ThrottledError
from shared.domain.model import CertificateStatus, RotationState
from shared.settings import Settings

logger = logging.getLogger(__name__)

DEMO_ACTOR = "system:demo"
SUMMARY_KEYS = (
    "devices",
    "renewed",
    "failed",
    "disallowed",
    "reconciled",
    "certificates_issued",
    "duplicate_events",
    "disallowed_reconnect_attempts",
    "disallowed_reconnect_rejected",
    "max_gap_seconds",
    "elapsed_seconds",
)
#: ``--json`` adds ``metrics``: the local OpenTelemetry readings (docs/operations.md) of
#: these instruments, as ``{name: {"dim=value,...": value}}``
METRIC_KEYS = (
    "certroll.rotations",
    "certroll.rotation.due_to_confirmed",
    "certroll.disallowed",
    "certroll.devices_by_status",
    "certroll.devices_by_expiry",
    "certroll.ca.days_to_expiry",
    "certroll.campaign.devices",
)


@dataclass(frozen=True)
class DemoOptions:
    devices: int = 1000
    transport: str = "inproc"
    group_fraction: float = 0.3
    offline_fraction: float = 0.05
    offline_for: timedelta = timedelta(minutes=30)
    duplicate_fraction: float = 0.1
    age: timedelta = timedelta(days=22)
    validity_days: int = 30
    margin: timedelta = timedelta(hours=3)
    seed: int = 7
    run_id: str | None = None
    key_backend: str | None = None
    progress: bool = True
    max_rounds: int = 20_000  # at least; raised with the fleet (20 rounds per device)
    partitions: int = EVENT_HUB_PARTITIONS  # concurrent function invocations
    # IoT Hub units: one S1 unit per 1,000 devices, as an operator sizes a hub (identity
    # operations are 100/min per S1 unit; one unit for 10,000 devices would need hours)
    hub_units: int = 0  # 0: sized from the fleet
    # ``--ca-roll``: move the fleet to a new issuing CA instead (local/demo_ca_roll.py)
    ca_roll: bool = False
    ca_roll_mode: str = "normal"  # or "compromise"

    @property
    def units(self) -> int:
        return self.hub_units or max(1, math.ceil(self.devices / 1000))

    @property
    def rounds(self) -> int:
        return max(self.max_rounds, 20 * self.devices)

    def __post_init__(self) -> None:
        if self.devices < 2:
            raise InvalidRequestError("devices_invalid", "the demo needs at least 2 devices")
        if self.transport not in ("inproc", "http", "https"):
            raise InvalidRequestError(
                "transport_invalid",
                f"transport {self.transport!r} is not one of inproc, http, https",
            )
        if self.ca_roll_mode not in ("normal", "compromise"):
            raise InvalidRequestError(
                "ca_roll_mode_invalid", "the CA-roll mode is normal or compromise"
            )
        for name in ("group_fraction", "offline_fraction", "duplicate_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise InvalidRequestError(f"{name}_invalid", f"{name} must be within 0..1")
        if self.offline_for >= self.margin:
            raise InvalidRequestError(
                "offline_for_invalid", "offline_for must be shorter than the clock margin"
            )


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class Comeback:
    """The disallowed device's attempts to register with DPS and connect to the hub."""

    attempts: int = 0
    refused: int = 0

    def __add__(self, other: Comeback) -> Comeback:
        return Comeback(self.attempts + other.attempts, self.refused + other.refused)

    def check(self) -> Check:
        """Passes only when there were attempts and every one of them was refused."""
        ok = self.attempts > 0 and self.refused == self.attempts
        return Check(
            "disallowed device refused by DPS and hub",
            ok,
            f"{self.refused} of {self.attempts} attempts refused",
        )


@dataclass
class DemoResult:
    summary: dict[str, Any]
    checks: list[Check]
    run_id: str
    backend: str
    backend_note: str
    transport: str
    url: str | None
    home: Path
    table_prefix: str
    pki_container: str
    disallowed_device: str
    before: list[datetime] = field(default_factory=list)
    before_at: datetime | None = None
    after: list[datetime] = field(default_factory=list)
    after_at: datetime | None = None
    #: wall-clock seconds from the timer firing to the last confirmation
    rotation_seconds: float = 0.0
    #: storage requests made during that time
    rotation_storage_calls: int = 0
    #: the same by kind (``local.storage_kinds.storage_call_kind``: ``ledger_query``, ...)
    rotation_storage_calls_by_kind: dict[str, int] = field(default_factory=dict)
    #: CPU seconds used during that time: ``python`` (this process: functions, emulator,
    #: devices) and ``azurite`` when it runs on this machine
    rotation_cpu_seconds: dict[str, float] = field(default_factory=dict)
    #: the local telemetry at the end of the run (``shared.adapters.otel.Instrumentation``)
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def principal_header(name: str, role: str) -> str:
    """An App Service Authentication principal (``X-MS-CLIENT-PRINCIPAL``) with one role:
    what a caller could forge where the platform does not strip it (the API refuses it
    without a valid bearer token)."""
    doc = {
        "auth_typ": "aad",
        "claims": [{"typ": "roles", "val": role}, {"typ": "name", "val": name}],
        "name_typ": "name",
        "role_typ": "roles",
    }
    return base64.b64encode(json.dumps(doc).encode()).decode()


def call_api(
    base_url: str,
    method: str,
    path: str,
    *,
    function_key: str | None,
    token: str | None = None,
    principal: str | None = None,
    principal_name: str | None = None,
    body: dict[str, Any] | None = None,
    timeout: float = 30.0,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """One real HTTP call to the dev host; returns (status, JSON body or None)."""
    headers = {"Accept": "application/json", **(headers or {})}
    if function_key is not None:
        headers["x-functions-key"] = function_key
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if principal is not None:
        headers["X-MS-CLIENT-PRINCIPAL"] = principal
    if principal_name is not None:
        headers["X-MS-CLIENT-PRINCIPAL-NAME"] = principal_name
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(
        base_url.rstrip("/") + path, data=data, headers=headers, method=method
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def _progress(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc="rotating",
        unit="dev",
        file=sys.stderr,
        disable=not enabled,
        dynamic_ncols=True,
        leave=True,
    )


def run_demo(
    settings: Settings,
    options: DemoOptions,
    *,
    say: Callable[[str], None] = lambda _text: None,
) -> DemoResult:
    """Run the whole demo against the local stack; see the module docstring."""
    started = time.perf_counter()
    real_now = datetime.now(UTC)
    birth, rotation_start = demo_times(real_now, age=options.age, margin=options.margin)
    clock = ManualClock(birth)
    values = dict(settings.values)
    values["CERTROLL_CERT_VALIDITY_DAYS"] = str(options.validity_days)
    stack = LocalStack(
        Settings(values),
        clock=clock,
        transport=options.transport,
        key_backend=options.key_backend,
        run_id=options.run_id,
        pki_not_before=birth - timedelta(days=1),
        duplicate_fraction=options.duplicate_fraction,
        seed=options.seed,
        partitions=options.partitions,
        hub_units=options.units,
    )
    with stack:
        _check_pki_window(stack, birth)
        say(
            f"local stack {stack.run_id}: {stack.transport} transport, dev host {stack.url}, "
            f"{stack.backend_note}"
        )
        if options.ca_roll:
            return _run_ca_roll(stack, options, clock, real_now, started, say)
        return _run(stack, options, clock, rotation_start, real_now, started, say)


def _run_ca_roll(
    stack: LocalStack,
    options: DemoOptions,
    clock: ManualClock,
    real_now: datetime,
    started: float,
    say: Callable[[str], None],
) -> DemoResult:
    """The ``--ca-roll`` demo (local/demo_ca_roll.py) as a :class:`DemoResult`."""
    from local.demo_ca_roll import run_ca_roll

    with _frozen_heap():
        calls_before = STORAGE_CALLS.value
        cpu_before = cpu_seconds()
        parts = run_ca_roll(
            stack,
            options,
            clock,
            real_now,
            started,
            say,
            rotate=_rotate,
            drain=_drain,
            progress=_progress,
            call_api=call_api,
            check=Check,
        )
        cpu_after = cpu_seconds()
    from shared.observability import record_fleet

    record_fleet(stack.services, clock.now())
    return DemoResult(
        summary=parts["summary"],
        checks=parts["checks"],
        run_id=stack.run_id,
        backend=stack.backend,
        backend_note=stack.backend_note,
        transport=stack.transport,
        url=stack.url,
        home=stack.home,
        table_prefix=stack.settings.get("CERTROLL_TABLE_PREFIX"),
        pki_container=stack.settings.get("CERTROLL_PKI_CONTAINER"),
        disallowed_device="",
        before=parts["before"],
        before_at=parts["before_at"],
        after=parts["after"],
        after_at=clock.now(),
        rotation_seconds=parts["rotation_seconds"],
        rotation_storage_calls=STORAGE_CALLS.value - calls_before,
        rotation_cpu_seconds={
            k: cpu_after[k] - cpu_before[k] for k in cpu_after if k in cpu_before
        },
        metrics=stack.services.instrumentation.metrics(),
    )


@contextlib.contextmanager
def _frozen_heap() -> Iterator[None]:
    """Keep the cyclic GC from walking what exists now (the fleet and the emulated hub
    built for the run, which it would free none of) on every full collection, for the
    duration of the block."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _check_pki_window(stack: LocalStack, birth: datetime) -> None:
    issuing = stack.services.authority.certificate
    if issuing.not_valid_before_utc > birth:
        raise InvalidRequestError(
            "pki_too_new",
            f"the issuing CA in {stack.home / 'pki'} starts {issuing.not_valid_before_utc:%Y-%m-%d}"
            f", after the demo fleet's first certificates ({birth:%Y-%m-%d}); remove that "
            "directory so the demo makes its own PKI",
        )


def _run(
    stack: LocalStack,
    options: DemoOptions,
    clock: ManualClock,
    rotation_start: datetime,
    real_now: datetime,
    started: float,
    say: Callable[[str], None],
) -> DemoResult:
    services = stack.services
    authority = services.authority
    root = authority.root or authority.chain[-1]

    say(
        f"provisioning {options.devices} devices at {clock.now():%Y-%m-%d %H:%M} UTC "
        f"({options.validity_days}-day certificates)"
    )
    sim = provision_fleet(
        stack,
        devices=options.devices,
        group_fraction=options.group_fraction,
        seed=options.seed,
        actor=DEMO_ACTOR,
        max_rounds=10 * options.rounds,
        drain=_drain,
    )
    initial_serials = {d: int(a.certificate.serial_number) for d, a in sim.agents.items()}
    if clock.now() >= rotation_start:
        raise CertrollError("provisioning used up the clock margin; raise the margin")
    clock.advance((rotation_start - clock.now()).total_seconds())
    before = [a.certificate.not_valid_after_utc for a in sim.agents.values()]
    before_at = clock.now()

    rng = random.Random(options.seed)
    ids = sorted(sim.agents)
    members = sorted(sim.group_members) or ids
    disallowed_id = rng.choice(members)
    others = [d for d in ids if d != disallowed_id]
    individuals = [d for d in others if d not in sim.group_members] or others
    restored_id = rng.choice(individuals)
    restored_old = sim.agents[restored_id].certificate
    offline = rng.sample(others, round(options.offline_fraction * len(others)))
    say(
        f"{clock.now():%Y-%m-%d %H:%M} UTC: every certificate is due; {len(offline)} of "
        f"{len(ids)} devices go offline for {options.offline_for}; the timer fires"
    )
    sim.take_offline(offline, options.offline_for)

    with _frozen_heap():  # the rotation phase, measured
        rotation_started = time.perf_counter()
        calls_before = STORAGE_CALLS.value
        kinds_before = STORAGE_CALLS.snapshot()
        cpu_before = cpu_seconds()
        stack.fire_timer()
        stack.pump()

        # breach response through the HTTP API while the device's rotation runs
        assert stack.url is not None
        status, body = call_api(
            stack.url,
            "POST",
            f"/api/devices/{disallowed_id}/disallow",
            function_key=stack.function_key,
            token=stack.operator_token("operator@demo.local"),
            body={"reason": "demo: device reported stolen"},
        )
        if status != 200:
            raise CertrollError(f"disallow of {disallowed_id} answered {status}: {body}")
        say(f"disallowed {disallowed_id} through POST /api/devices/{disallowed_id}/disallow")
        comeback = try_comeback(stack, sim, disallowed_id)
        sim.agents[disallowed_id].go_offline()  # powered off: it stops retrying

        bar = _progress(len(others), options.progress)
        try:
            rounds = _rotate(stack, sim, others, options, bar)
        finally:
            bar.close()
        _drain(stack, sim)
        rotation_seconds = time.perf_counter() - rotation_started
        rotation_calls = STORAGE_CALLS.value - calls_before
        rotation_kinds = dict(STORAGE_CALLS.snapshot() - kinds_before)
        cpu_after = cpu_seconds()
        rotation_cpu = {k: cpu_after[k] - cpu_before[k] for k in cpu_after if k in cpu_before}
    comeback += try_comeback(stack, sim, disallowed_id)
    say(f"rotation finished after {rounds} rounds; clock at {clock.now():%Y-%m-%d %H:%M} UTC")
    say(f"an operator restores {restored_id}'s enrollment and hub identity from before")
    reconciled = restore_and_reconcile(stack, sim, restored_id, restored_old, options)

    checks, counts = verify(stack, sim, others, disallowed_id, initial_serials, root, real_now)
    checks.append(comeback.check())
    checks.append(reconciled.check)
    after = [sim.agents[d].certificate.not_valid_after_utc for d in others]
    from shared.observability import record_fleet

    record_fleet(stack.services, clock.now())  # the fleet gauges, as the daily sweep sets them
    summary = {
        "devices": options.devices,
        "renewed": counts["renewed"],
        "failed": len(others) - counts["renewed"],
        "disallowed": counts["disallowed"],
        "reconciled": reconciled.count,
        "certificates_issued": counts["certificates_issued"],
        "duplicate_events": stack.totals.duplicates,
        "disallowed_reconnect_attempts": comeback.attempts,
        "disallowed_reconnect_rejected": comeback.refused,
        "max_gap_seconds": round(
            max(sim.agents[d].timeline.gap_seconds(clock.now()) for d in others), 3
        ),
        "elapsed_seconds": round(time.perf_counter() - started, 2),
    }
    return DemoResult(
        summary=summary,
        checks=checks,
        run_id=stack.run_id,
        backend=stack.backend,
        backend_note=stack.backend_note,
        transport=stack.transport,
        url=stack.url,
        home=stack.home,
        table_prefix=stack.settings.get("CERTROLL_TABLE_PREFIX"),
        pki_container=stack.settings.get("CERTROLL_PKI_CONTAINER"),
        disallowed_device=disallowed_id,
        before=before,
        before_at=before_at,
        after=after,
        after_at=clock.now(),
        rotation_seconds=rotation_seconds,
        rotation_storage_calls=rotation_calls,
        rotation_storage_calls_by_kind=rotation_kinds,
        rotation_cpu_seconds=rotation_cpu,
        metrics=stack.services.instrumentation.metrics(),
    )


def _drain(stack: LocalStack, sim: FleetSimulator, max_rounds: int = 1000) -> None:
    """Pump and step until neither has anything to do now (no clock movement)."""
    for _ in range(max_rounds):
        moved = stack.pump().total + sim.step_all()
        if not moved and not stack.pending():
            return


def try_comeback(stack: LocalStack, sim: FleetSimulator, device_id: str) -> Comeback:
    """The disallowed device tries to register with DPS and to connect to the hub with
    the certificate it has; how many attempts there were and how many were refused."""
    agent = sim.agents[device_id]
    refused = 0
    try:
        stack.emulator.register(device_id, agent.chain)
    except RegistrationError as exc:
        logger.info("DPS refused %s: %s", device_id, exc)
        refused += 1
    try:
        session = stack.emulator.connect(device_id, agent.chain, agent)
    except HubConnectError as exc:
        logger.info("hub refused %s: %s", device_id, exc)
        refused += 1
    else:
        logger.warning("the hub let the disallowed device %s connect", device_id)
        session.disconnect()
    return Comeback(attempts=2, refused=refused)


@dataclass(frozen=True)
class Reconciled:
    """The restored-enrollment device: how many devices the 401 reconcile let back in."""

    count: int
    check: Check


def restore_and_reconcile(
    stack: LocalStack,
    sim: FleetSimulator,
    device_id: str,
    old: x509.Certificate,
    options: DemoOptions,
) -> Reconciled:
    """Put ``device_id``'s superseded certificate back into its enrollment and hub identity
    (as restoring an old backup would), reconnect the device, and let the Connections
    record of its refused connect reconcile it."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from local.device import contract
    from shared.domain.model import CertificateSlot

    services = stack.services
    agent = sim.agents[device_id]
    old_thumb = contract.thumbprint(old)
    new_thumb = contract.thumbprint(agent.certificate)
    clock = stack.clock
    assert isinstance(clock, ManualClock)

    def operator(call: Callable[[], Any]) -> Any:
        """An operator's call, retried after a 429 as a patient operator would."""
        for _ in range(100):
            try:
                return call()
            except ThrottledError as exc:
                clock.advance(max(exc.retry_after or 1.0, 0.001))
        return call()

    enr = operator(lambda: services.enrollments.get_individual(device_id))
    operator(
        lambda: services.enrollments.put_individual(
            dataclasses.replace(
                enr,
                primary=CertificateSlot(
                    thumbprint_sha256=old_thumb, pem=old.public_bytes(Encoding.PEM).decode()
                ),
                secondary=None,
            )
        )
    )
    ident = operator(lambda: services.registry.get_device(device_id))
    operator(
        lambda: services.registry.update_device(
            dataclasses.replace(ident, primary_thumbprint=old_thumb, secondary_thumbprint=None)
        )
    )
    agent.go_offline()
    agent.go_online()
    for _ in range(options.rounds):
        moved = stack.pump().total + sim.step_all()
        if agent.connected and not moved and not stack.pending():
            break
        if not moved and not stack.pending():
            due = sim.next_due()
            step = (due - clock.now()).total_seconds() if due is not None else 60.0
            clock.advance(max(step, 0.001))
    entries = [
        e
        for e in services.audit.list(device_id, 50)
        if e.action == "reconcile" and e.detail.get("result") == "reconciled"
    ]
    enr = operator(lambda: services.enrollments.get_individual(device_id))
    held = {s.thumbprint_sha256 for s in (enr.primary, enr.secondary) if s is not None}
    ok = (
        bool(entries)
        and agent.connected
        and contract.thumbprint(agent.certificate) == new_thumb
        and held == {new_thumb}
    )
    return Reconciled(
        count=1 if entries and agent.connected else 0,
        check=Check(
            "restored enrollment: a 401003 reconcile lets the device back in, "
            "its superseded certificate stays out",
            ok,
            f"{device_id}: {len(entries)} reconcile(s), connected={agent.connected}, "
            f"enrollment holds the new certificate only: {held == {new_thumb}}",
        ),
    )


def _rotate(
    stack: LocalStack,
    sim: FleetSimulator,
    others: list[str],
    options: DemoOptions,
    bar: Any,
) -> int:
    """Pump events and step devices until every device but the disallowed one has
    installed its renewal and nothing is left in flight."""
    clock = stack.clock
    assert isinstance(clock, ManualClock)
    state = stack.services.state
    waiting = set(others)
    idle_sweeps = 0
    for rounds in range(1, options.rounds + 1):
        moved = stack.pump().total + sim.step_all()
        installed = sim.last_installed & waiting
        if installed:
            waiting -= installed
            bar.update(len(installed))
        if moved or stack.pending():
            continue
        if not waiting and not _in_flight(state):
            return rounds
        due = sim.next_due()
        if due is not None:
            clock.advance(max((due - clock.now()).total_seconds(), 0.001))
            continue
        # nothing scheduled by the devices: let time pass and sweep (stuck, failed, offline)
        if idle_sweeps >= 50:
            return rounds
        idle_sweeps += 1
        clock.advance(timedelta(minutes=1).total_seconds())
        stack.fire_timer()
    return options.rounds


def _in_flight(state: Any) -> bool:
    from shared.domain.rotation import IN_FLIGHT

    return any(True for _ in state.list(states=set(IN_FLIGHT)))


def verify(
    stack: LocalStack,
    sim: FleetSimulator,
    others: list[str],
    disallowed_id: str,
    initial_serials: dict[str, int],
    root: x509.Certificate,
    real_now: datetime,
) -> tuple[list[Check], dict[str, int]]:
    """The end-of-run checks (certificates, ledger, CRL) and the counts for the summary."""
    services = stack.services
    authority = services.authority
    issuing = authority.certificate
    ledger = services.ledger
    at = max(real_now, datetime.now(UTC))
    checks: list[Check] = []

    chain_ok = _verify_ca(issuing, root, at)
    checks.append(Check("issuing CA chains to the root", chain_ok))

    renewed = 0
    not_new: list[str] = []
    bad_chain: list[str] = []
    bad_ledger: list[str] = []
    issued_total = 0
    for device_id in [*others, disallowed_id]:
        records = ledger.list_for_device(device_id)
        renewals = [r for r in records if r.trigger != PROVISION_TRIGGER]
        issued_total += len(renewals)
        if device_id == disallowed_id:
            continue
        cert = sim.agents[device_id].certificate
        serial = format(cert.serial_number, "x")
        fresh = cert.serial_number != initial_serials[device_id]
        verified = _verify_leaf(cert, issuing, at)
        in_ledger = (
            len(renewals) == 1
            and renewals[0].serial == serial
            and renewals[0].status is CertificateStatus.ACTIVE
        )
        if not fresh:
            not_new.append(device_id)
        if not verified:
            bad_chain.append(device_id)
        if not in_ledger:
            bad_ledger.append(device_id)
        if fresh and verified and in_ledger:
            renewed += 1
    checks.append(Check("every device is on a new certificate", not not_new, _some(not_new)))
    checks.append(
        Check(
            "every new certificate chains to the root and is valid now",
            not bad_chain,
            _some(bad_chain),
        )
    )
    checks.append(
        Check(
            "exactly one renewal issuance per device in the ledger, now active",
            not bad_ledger,
            _some(bad_ledger),
        )
    )

    record = services.state.get(disallowed_id)
    disallowed_state = record is not None and record.state is RotationState.DISALLOWED
    checks.append(Check("disallowed device's rotation record is disallowed", disallowed_state))
    revoked = ledger.list_for_device(disallowed_id)
    all_revoked = bool(revoked) and all(r.status is CertificateStatus.REVOKED for r in revoked)
    checks.append(
        Check(
            "every certificate of the disallowed device is revoked",
            all_revoked,
            f"{len(revoked)} certificates",
        )
    )
    crl = x509.load_der_x509_crl(services.crl_publisher.fetch(CRL_NAME))
    crl_signed = crl.is_signature_valid(issuing.public_key())  # type: ignore[arg-type]
    listed = [
        r.serial
        for r in revoked
        if crl.get_revoked_certificate_by_serial_number(int(r.serial, 16)) is not None
    ]
    checks.append(
        Check(
            "the published CRL is signed by the issuing CA and lists them",
            crl_signed and len(listed) == len(revoked) and bool(listed),
            f"{len(listed)} of {len(revoked)} listed",
        )
    )
    disallowed = sum(1 for _ in services.state.list(states={RotationState.DISALLOWED}))
    counts = {"renewed": renewed, "certificates_issued": issued_total, "disallowed": disallowed}
    return checks, counts


def _some(ids: list[str], limit: int = 5) -> str:
    if not ids:
        return ""
    more = f" (+{len(ids) - limit} more)" if len(ids) > limit else ""
    return ", ".join(ids[:limit]) + more


def _valid_at(cert: x509.Certificate, at: datetime) -> bool:
    return cert.not_valid_before_utc <= at <= cert.not_valid_after_utc


def _verify_ca(issuing: x509.Certificate, root: x509.Certificate, at: datetime) -> bool:
    try:
        issuing.verify_directly_issued_by(root)
        root.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return _valid_at(issuing, at) and _valid_at(root, at)


def _verify_leaf(cert: x509.Certificate, issuing: x509.Certificate, at: datetime) -> bool:
    try:
        cert.verify_directly_issued_by(issuing)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return _valid_at(cert, at)


def write_report(result: DemoResult, path: Path) -> Path:
    from local.report import render_report

    assert result.before_at is not None
    assert result.after_at is not None
    html_text = render_report(
        before=result.before,
        before_at=result.before_at,
        after=result.after,
        after_at=result.after_at,
        summary={**result.summary, "run": result.run_id, "key backend": result.backend},
        title=f"certroll demo {result.run_id}",
    )
    path.write_text(html_text, encoding="utf-8")
    return path

"""``certroll soak``: a fleet rotates through the local stack while faults strike.

Flow (:func:`run_soak`):

1. A private Azurite (its own ports and data directory) and a :class:`SoakStack` on it,
   with every port the functions use wrapped to fail as the plan says
   (:mod:`local.soak.ports`); faults stay off while the fleet is provisioned.
2. The fleet (30% members of a CA enrollment group) gets certificates from certroll's
   issuer with the clock weeks back, registers and connects; a share of the devices
   gets a clock skewed by minutes.
3. The clock moves on until every certificate is due; faults are switched on, a share
   of the fleet goes offline for hours, the signing key goes out for a while, and the
   timer fires. Events are pumped and devices stepped; when nothing moves the clock
   advances and the sweep runs again (it must recover lost events, poisoned messages and
   killed workers). Along the way one device is disallowed through the HTTP API, more
   devices go offline, and Azurite is restarted.
4. Faults off; the end state is read once and checked (:mod:`local.soak.invariants`).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from local.device.simulator import FleetSimulator
from local.fleet import provision_fleet
from local.soak.azurite import PrivateAzurite
from local.soak.devices import offline_wave, skew_clocks
from local.soak.invariants import Verdict
from local.soak.plan import FaultPlan, FaultRates
from local.soak.ports import (
    FaultyPort,
    FaultySigningKey,
    FaultyStateStore,
    KillSwitch,
    fleet_error,
    storage_error,
)
from local.soak.stack import KILLED_VISIBILITY_SECONDS, SoakStack
from local.stack import demo_times
from shared.bootstrap import Services, StorageBundle
from shared.clock import ManualClock
from shared.domain.errors import CertrollError, InvalidRequestError
from shared.settings import Settings

logger = logging.getLogger(__name__)

SOAK_ACTOR = "system:soak"
SIGNING_OUTAGE = timedelta(minutes=20)
IDLE_STEP = timedelta(hours=1)  # clock moved, and the sweep fired, when nothing moves
MAX_CLOCK = timedelta(days=3)  # the run gives up waiting this long after the timer fired


@dataclass(frozen=True)
class SoakOptions:
    devices: int = 1000
    seed: int = 7
    rates: FaultRates = field(default_factory=FaultRates)
    group_fraction: float = 0.3
    age: timedelta = timedelta(days=22)
    validity_days: int = 30
    margin: timedelta = timedelta(days=4)  # the clock ends before real now
    partitions: int = 8
    key_backend: str | None = None
    private_azurite: bool = True
    evidence_limit: int = 50  # failing devices whose end state is kept (``--dump``)

    def __post_init__(self) -> None:
        if self.devices < 10:
            raise InvalidRequestError("devices_invalid", "the soak needs at least 10 devices")


@dataclass
class SoakResult:
    summary: dict[str, Any]
    verdict: Verdict
    #: per failing device (at most ``evidence_limit``): its end state, read before teardown
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.verdict.ok


def _wrapper(
    plan: FaultPlan,
    kill: KillSwitch,
    armed: Callable[[], bool],
    clock: ManualClock,
    keys: list[FaultySigningKey],
) -> Callable[[Settings, dict[str, Any]], dict[str, Any]]:
    """The ``wrap_ports`` hook: every port the functions use, wrapped."""

    def port(inner: Any, name: str, make: Any, cls: type[FaultyPort] = FaultyPort) -> Any:
        return cls(inner, name, plan, kill, make, armed)

    def dps(what: str, fault: str, after: str) -> CertrollError:
        return fleet_error("DPS", what, fault, after)

    def hub(what: str, fault: str, after: str) -> CertrollError:
        return fleet_error("IoT Hub", what, fault, after)

    def wrap(settings: Settings, ports: dict[str, Any]) -> dict[str, Any]:
        ca_set = Services(settings, **ports).ca_set
        authority = ca_set.active.authority
        key = FaultySigningKey(authority.key, plan, kill, armed, clock.now, None)  # type: ignore[arg-type]
        keys.append(key)
        active = dataclasses.replace(
            ca_set.active, authority=dataclasses.replace(authority, key=key)
        )
        s: StorageBundle = ports["storage"]
        storage = StorageBundle(
            ledger=port(s.ledger, "storage", storage_error),
            state=port(s.state, "storage", storage_error, FaultyStateStore),
            audit=port(s.audit, "storage", storage_error),
            crl_publisher=port(s.crl_publisher, "storage", storage_error),
            queue=port(s.queue, "storage", storage_error),
            campaigns=s.campaigns,
        )
        return {
            **ports,
            "enrollments": port(ports["enrollments"], "dps", dps),
            "registry": port(ports["registry"], "hub", hub),
            "storage": storage,
            "ca_set": dataclasses.replace(ca_set, active=active),
        }

    return wrap


def run_soak(
    settings: Settings, options: SoakOptions, *, say: Callable[[str], None] = lambda _t: None
) -> SoakResult:
    started = time.perf_counter()
    azurite = PrivateAzurite() if options.private_azurite else None
    if azurite is not None:
        azurite.start()
        settings = Settings({**settings.values, "CERTROLL_STORAGE": azurite.connection_string})
        say(f"private Azurite on ports {azurite.ports} (data in {azurite.location})")
    try:
        return _run(settings, options, azurite, started, say)
    finally:
        if azurite is not None:
            azurite.close()


def _run(
    settings: Settings,
    options: SoakOptions,
    azurite: PrivateAzurite | None,
    started: float,
    say: Callable[[str], None],
) -> SoakResult:
    from local.soak.ending import evidence, verdict_of

    plan = FaultPlan(options.seed, options.rates)
    kill = KillSwitch()
    switch = threading.Event()
    armed = switch.is_set
    real_now = datetime.now(UTC)
    birth, rotation_start = demo_times(real_now, age=options.age, margin=options.margin)
    clock = ManualClock(birth)
    keys: list[FaultySigningKey] = []
    values = dict(settings.values)
    values["CERTROLL_CERT_VALIDITY_DAYS"] = str(options.validity_days)
    stack = SoakStack(
        Settings(values),
        clock=clock,
        key_backend=options.key_backend,
        run_id="soak" + uuid.uuid4().hex[:8],
        pki_not_before=birth - timedelta(days=1),
        seed=options.seed,
        partitions=options.partitions,
        hub_units=max(1, -(-options.devices // 1000)),
        wrap_ports=_wrapper(plan, kill, armed, clock, keys),
        plan=plan,
        kill=kill,
    )
    with stack:
        stack.armed = armed
        services = stack.services
        authority = services.authority
        if authority.certificate.not_valid_before_utc > birth:
            raise CertrollError(
                f"the issuing CA under {stack.home / 'pki'} is newer than the soak's fleet; "
                "remove that directory"
            )

        say(f"provisioning {options.devices} devices (seed {options.seed})")
        sim = provision_fleet(
            stack,
            devices=options.devices,
            group_fraction=options.group_fraction,
            seed=options.seed,
            actor=SOAK_ACTOR,
            max_rounds=40 * options.devices,
            drain=_drain,
        )
        initial = {d: format(a.certificate.serial_number, "x") for d, a in sim.agents.items()}
        ids = sorted(sim.agents)
        skew_clocks(sim, plan, ids)
        clock.advance((rotation_start - clock.now()).total_seconds())

        barred = plan.rng.choice(sorted(sim.group_members) or ids)
        others = [d for d in ids if d != barred]
        outage_in = plan.rng.uniform(0, 10)
        restart_at = plan.rng.uniform(0.2, 0.5)  # share of the fleet renewed when it happens
        say(f"{clock.now():%Y-%m-%d %H:%M} UTC: every certificate is due; faults on")
        switch.set()
        offline_wave(sim, plan, others)
        stack.fire_timer()
        stack.pump()
        _disallow(stack, barred, clock)
        sim.agents[barred].go_offline()
        # the key goes out while the fleet rotates (not during the operator's disallow)
        keys[0].outage = (clock.now() + timedelta(minutes=outage_in), SIGNING_OUTAGE)
        restarter = _rotate(stack, sim, others, azurite, restart_at, plan, clock)
        if restarter is not None:
            restarter.join()
        switch.clear()
        _settle(stack, sim, clock)
        verdict = verdict_of(stack, sim, initial, barred, clock)
        failing = sorted({d for bad in verdict.failures.values() for d in bad if d in sim.agents})
        found = evidence(stack, sim, clock, failing[: options.evidence_limit])
    summary = {
        "devices": options.devices,
        "seed": options.seed,
        "faults_injected": plan.injected(),
        "rotations_completed": verdict.rotations_completed,
        "lost": verdict.lost,
        "double_issuances": verdict.double_issuances,
        "max_gap_seconds": verdict.max_gap_seconds,
        "invariants_ok": verdict.ok,
        "invariants": [
            {"name": i.name, "ok": i.ok, "detail": i.detail} for i in verdict.invariants
        ],
        "events_dropped_after_retries": stack.dropped,
        "clock_hours": round((clock.now() - rotation_start).total_seconds() / 3600, 2),
        "elapsed_seconds": round(time.perf_counter() - started, 1),
    }
    if azurite is not None:
        # the mid-run restart's stop: seconds, and whether Azurite had to be killed
        summary["azurite_stops"] = [
            {"seconds": secs, "killed": killed} for secs, killed in azurite.stops
        ]
    if failing:
        summary["failing_devices"] = failing
    return SoakResult(summary, verdict, found)


def _disallow(stack: SoakStack, device_id: str, clock: ManualClock) -> None:
    """An operator disallows ``device_id`` through the HTTP API, retrying a 5xx every 5
    minutes as a patient operator would (the CRL cannot be signed while the key is out)."""
    from local.demo import call_api

    assert stack.url is not None
    for _ in range(40):
        status, body = call_api(
            stack.url,
            "POST",
            f"/api/devices/{device_id}/disallow",
            function_key=stack.function_key,
            token=stack.operator_token("operator@soak.local"),
            body={"reason": "soak: device reported stolen"},
        )
        if status == 200:
            return
        logger.info("disallow of %s answered %s: %s; retrying", device_id, status, body)
        clock.advance(300)
    raise CertrollError(f"disallow of {device_id} kept failing: {status} {body}")


def _drain(stack: SoakStack, sim: FleetSimulator, max_rounds: int = 1000) -> None:
    for _ in range(max_rounds):
        moved = stack.pump().total + sim.step_all()
        if not moved and not stack.pending():
            return


def _in_flight(stack: SoakStack) -> bool:
    from shared.domain.rotation import IN_FLIGHT

    state = stack.services.state
    return any(True for _ in state.list(states=set(IN_FLIGHT)))


def _rotate(
    stack: SoakStack,
    sim: FleetSimulator,
    others: list[str],
    azurite: PrivateAzurite | None,
    restart_at: float,
    plan: FaultPlan,
    clock: ManualClock,
) -> threading.Thread | None:
    """Pump and step until every allowed device installed its renewal and nothing is in
    flight (or the clock ran ``MAX_CLOCK`` past the start). Azurite restarts once, in the
    background, when ``restart_at`` of the fleet has renewed; a second offline wave
    starts at half."""
    start = clock.now()
    waiting = set(others)
    restarter: threading.Thread | None = None
    second_wave = False
    while clock.now() - start < MAX_CLOCK:
        moved = stack.pump().total + sim.step_all()
        waiting -= sim.last_installed
        done = 1 - len(waiting) / len(others)
        if azurite is not None and restarter is None and done >= restart_at:
            restarter = threading.Thread(target=azurite.restart, name="azurite-restart")
            restarter.start()
            plan.count("azurite_restart")
        if not second_wave and done >= 0.5:
            second_wave = True
            offline_wave(sim, plan, sorted(waiting))
        if moved or stack.pending():
            continue
        if not waiting and not stack.killed_messages - stack.redelivered_after_kill:
            try:
                if not _in_flight(stack):
                    break
            except CertrollError as exc:
                logger.info("in-flight check failed: %s", exc)
        due = sim.next_due()
        if due is not None and due - clock.now() < IDLE_STEP:
            clock.advance(max((due - clock.now()).total_seconds(), 0.001))
            continue
        if stack.killed_messages - stack.redelivered_after_kill:
            time.sleep(0.5)  # a killed worker's message is still invisible
        clock.advance(IDLE_STEP.total_seconds())
        stack.fire_timer()
    return restarter


def _settle(stack: SoakStack, sim: FleetSimulator, clock: ManualClock) -> None:
    """Faults off: wait for killed workers' messages to show again, and let everything
    in flight finish (a final sweep included)."""
    deadline = time.monotonic() + KILLED_VISIBILITY_SECONDS + 5
    while stack.killed_messages - stack.redelivered_after_kill and time.monotonic() < deadline:
        _drain(stack, sim)
        time.sleep(0.5)
    stack.fire_timer()
    _drain(stack, sim)

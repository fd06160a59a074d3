"""The simulated fleet against certroll's own rotation service and issuer: both sides of the
device contract agree."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

from local.device.simulator import FleetSimulator
from local.emulator import LIFECYCLE, TWIN_CHANGES, FleetEmulator
from shared.adapters.memory import (
    MemoryAuditLog,
    MemoryEventSink,
    MemoryLedger,
    MemoryRotationStore,
    MemoryWorkQueue,
)
from shared.clock import ManualClock
from shared.domain.commands import DeviceConnected, StartRenewal, TwinReported
from shared.domain.model import CertificateStatus, RotationState, Trigger
from shared.domain.rotation import RotationDeps, RotationService
from shared.pki.issuer import Issuer
from shared.pki.local_ca import generate_pki
from shared.pki.profile import IssuancePolicy
from shared.ports import IssuingAuthority


def test_fleet_rotates_end_to_end_with_the_rotation_service(clock: ManualClock) -> None:
    pki = generate_pki(now=clock.now())
    authority = IssuingAuthority(
        pki.issuing_certificate,
        pki.issuing_key,
        "file:test",
        (pki.issuing_certificate,),
        pki.root_certificate,
    )
    ledger, audit = MemoryLedger(), MemoryAuditLog()
    issuer = Issuer(authority, ledger, audit, IssuancePolicy(), clock)
    emulator = FleetEmulator(clock, enforce_limits=False)
    deps = RotationDeps(
        state=MemoryRotationStore(),
        ledger=ledger,
        audit=audit,
        enrollments=emulator.dps,
        registry=emulator.hub,
        issuer=issuer,
        events=MemoryEventSink(),
        queue=MemoryWorkQueue(),
        clock=clock,
    )
    service = RotationService(deps)

    def issue_initial(device_id: str, csr_pem: str) -> str:
        issued = issuer.issue(
            device_id, csr_pem, request_id="initial", trigger="cli", actor="cli:test"
        )
        return issued.chain_pem

    sim = FleetSimulator(
        emulator,
        issue_initial,
        40,
        group_fraction=0.3,
        offline_fraction=0.1,
        offline_for=timedelta(hours=1),
        slow_fraction=0.1,
        slow_delay=timedelta(minutes=5),
        trust_anchor=pki.root_certificate,
        seed=3,
    )
    assert sim.start() == 36
    emulator.events.drain(TWIN_CHANGES)
    emulator.events.drain(LIFECYCLE)
    old = {d: a.certificate for d, a in sim.agents.items()}

    def deliver_events() -> int:
        handled = 0
        for event in emulator.events.drain(TWIN_CHANGES):
            reported = event["body"]["properties"].get("reported") or {}
            if "x509" in reported:
                device_id = event["properties"]["deviceId"]
                section = emulator.hub.get_twin(device_id).reported["x509"]
                service.on_twin_reported(
                    TwinReported.parse(device_id, section, event["body"]["version"])
                )
                handled += 1
        for event in emulator.events.drain(LIFECYCLE):
            if event["eventType"] == "Microsoft.Devices.DeviceConnected":
                service.on_device_connected(DeviceConnected(event["data"]["deviceId"], clock.now()))
        return handled

    for device_id in sim.device_ids:
        service.start_renewal(StartRenewal(device_id, Trigger.MANUAL, "cli:test"))
    installed_in_steps: list[str] = []
    for _ in range(50):
        stepped = sim.step_all()
        installed_in_steps += sim.last_installed
        if stepped or deliver_events():
            continue
        due = sim.next_due()
        if due is None and all(
            deps.state.get(d).state is RotationState.IDLE  # type: ignore[union-attr]
            for d in sim.device_ids
        ):
            break
        clock.advance(600 if due is None else max(1.0, (due - clock.now()).total_seconds()))
        for device_id in sim.device_ids:
            record = deps.state.get(device_id)
            if record is not None and record.state is not RotationState.IDLE:
                service.advance(device_id)

    states = Counter(deps.state.get(d).state for d in sim.device_ids)  # type: ignore[union-attr]
    assert states == {RotationState.IDLE: 40}
    summary = sim.summary()
    assert summary.renewals_installed == 40
    assert sorted(installed_in_steps) == sorted(sim.device_ids)  # each once, when it did
    assert summary.renewals_failed == 0
    assert summary.max_gap_seconds == 0
    for device_id, agent in sim.agents.items():
        assert agent.certificate != old[device_id]
        records = ledger.list_for_device(device_id)
        assert [r.status for r in records] == [
            CertificateStatus.SUPERSEDED,
            CertificateStatus.ACTIVE,
        ]
        assert records[-1].serial == format(agent.certificate.serial_number, "x")

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography import x509

from local.device import contract
from local.device.simulator import FleetSimulator
from local.emulator import FleetEmulator
from shared.clock import ManualClock
from shared.domain.errors import DeviceOfflineError, NotFoundError
from shared.ports import IssuingAuthority
from tests.device.pki import TestPki, chain_pem
from tests.device.service import ServiceDouble


def authority_of(pki: TestPki) -> IssuingAuthority:
    return IssuingAuthority(
        certificate=pki.issuing,
        key=pki.issuing_key,
        key_id="file:test",
        chain=(pki.issuing,),
        root=pki.root,
        crl_url="http://127.0.0.1:10000/devstoreaccount1/pki/crl.der",
    )


def rotate_fleet(sim: FleetSimulator, service: ServiceDouble, request: str) -> set[str]:
    """Play certroll for every device that has reported a CSR for ``request`` and not yet
    been served; returns the devices served."""
    served: set[str] = set()
    for device_id, agent in sim.agents.items():
        if agent.pending_request_id != f"{request}-{device_id}":
            continue
        rid = f"{request}-{device_id}"
        leaf, pem = service.sign(device_id, rid)
        if device_id not in sim.group_members:
            service.put_in_free_slot(device_id, leaf)
        service.deliver(device_id, rid, pem)
        served.add(device_id)
    sim.step_all()
    for device_id in served:
        assert service.reprovision(device_id, f"{request}-{device_id}").status == 200
    sim.step_all()
    return served


def test_fleet_of_300_rotates_with_offline_slow_and_group_devices(
    clock: ManualClock, pki: TestPki
) -> None:
    emulator = FleetEmulator(clock, enforce_limits=False)
    service = ServiceDouble(emulator, pki)
    sim = FleetSimulator(
        emulator,
        authority_of(pki),
        300,
        group_fraction=0.2,
        offline_fraction=0.1,
        offline_for=timedelta(hours=2),
        slow_fraction=0.1,
        slow_delay=timedelta(minutes=10),
        seed=7,
        initial_validity=timedelta(days=30),
        initial_age=timedelta(days=25),
    )
    assert sim.start() == 270
    assert len(sim.group_members) == 60
    assert len(sim.offline_devices) == 30
    summary = sim.summary()
    assert (summary.devices, summary.connected, summary.offline) == (300, 270, 30)

    member = sorted(sim.group_members)[0]
    individual = sorted(set(sim.device_ids) - sim.group_members)[0]
    with pytest.raises(NotFoundError):
        emulator.dps.get_individual(member)
    assert emulator.dps.get_individual(individual).primary is not None
    agent = sim.agents[individual]
    assert agent.certificate.not_valid_after_utc - clock.now() == timedelta(days=5)
    assert agent.certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints)

    # certroll asks every device for a CSR; offline devices get it in their twin only
    for device_id in sim.device_ids:
        service.ask_renewal(device_id, f"r1-{device_id}")
    assert sim.step_all() == 270  # only the devices the hub could call
    online_fast = {
        d for d in sim.device_ids if d not in sim.offline_devices and d not in sim.slow_devices
    }
    assert {d for d, a in sim.agents.items() if a.pending_request_id} == online_fast
    assert sim.step_all() == 0  # nothing left to do now: O(pending work) rounds

    served = rotate_fleet(sim, service, "r1")
    assert served == online_fast
    for device_id in served:
        assert sim.agents[device_id].renewal_outcome(f"r1-{device_id}") == "installed"
        assert service.reported_x509(device_id)["thumbprint"] == contract.thumbprint(
            sim.agents[device_id].certificate
        )

    # slow devices answer after their delay; offline ones once they are back
    offline = sorted(sim.offline_devices)
    with pytest.raises(DeviceOfflineError):
        service.reprovision(offline[0], "r1-x")
    sim.settle(max_wait=timedelta(minutes=10))
    served |= rotate_fleet(sim, service, "r1")
    sim.settle(max_wait=timedelta(hours=3))
    served |= rotate_fleet(sim, service, "r1")
    sim.settle(max_wait=timedelta(minutes=15))
    served |= rotate_fleet(sim, service, "r1")

    assert served == set(sim.device_ids)
    summary = sim.summary()
    assert summary.renewals_installed == 300
    assert summary.renewals_failed == 0
    assert summary.connected == 300
    assert summary.max_gap_seconds == 0
    assert summary.self_reprovisions == 0
    assert all(len(a.timeline.certificates) == 2 for a in sim.agents.values())
    assert sim.run_until_idle() == 1
    assert sim.next_due() is None


def test_start_waits_out_the_service_limits(clock: ManualClock, pki: TestPki) -> None:
    emulator = FleetEmulator(clock, enforce_limits=True)
    sim = FleetSimulator(emulator, authority_of(pki), 300, group_fraction=0.5, seed=1)
    start = clock.now()
    assert sim.start() == 300
    sim.settle()
    assert clock.now() > start  # connections (100/s), reads and updates were throttled
    reported = emulator.hub.count(
        "SELECT * FROM devices WHERE IS_DEFINED(properties.reported.x509.thumbprint)"
    )
    assert reported == 300
    assert sim.summary().connected == 300


def test_initial_certificates_from_an_issue_callable(clock: ManualClock, pki: TestPki) -> None:
    emulator = FleetEmulator(clock, enforce_limits=False)
    calls: list[str] = []

    def issue(device_id: str, csr_pem: str) -> str:
        calls.append(device_id)
        leaf, pem = pki.sign_csr(csr_pem, clock.now(), days=2)
        assert contract.common_name(leaf.subject) == device_id
        return pem

    sim = FleetSimulator(emulator, issue, 20, group_fraction=0.5, trust_anchor=pki.root)
    assert sim.start() == 20
    assert sorted(calls) == sim.device_ids
    assert sim.group_ca == pki.issuing
    for agent in sim.agents.values():
        assert agent.certificate.not_valid_after_utc - clock.now() < timedelta(days=2)
        assert agent.trust_anchor == pki.root


def test_issue_callable_returning_a_certificate_for_another_key_is_refused(
    clock: ManualClock, pki: TestPki
) -> None:
    emulator = FleetEmulator(clock, enforce_limits=False)
    other = TestPki.create(clock.now(), "Other")

    def issue(device_id: str, csr_pem: str) -> str:
        key = other.issuing_key
        leaf = pki.leaf(device_id, key.public_key(), clock.now())
        return chain_pem([leaf, pki.issuing])

    sim = FleetSimulator(emulator, issue, 3, trust_anchor=pki.root)
    with pytest.raises(ValueError, match="another key"):
        sim.provision()
    assert sim.agents == {}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"group_fraction": 1.5},
        {"offline_fraction": -0.1},
        {"slow_fraction": 2},
        {"initial_validity": timedelta(days=1), "initial_age": timedelta(days=1)},
    ],
)
def test_bad_simulator_arguments_are_refused(
    clock: ManualClock, pki: TestPki, kwargs: dict[str, object]
) -> None:
    emulator = FleetEmulator(clock, enforce_limits=False)
    with pytest.raises(ValueError, match="must"):
        FleetSimulator(emulator, authority_of(pki), 10, **kwargs)  # type: ignore[arg-type]


def test_a_round_steps_only_devices_with_work(clock: ManualClock, pki: TestPki) -> None:
    emulator = FleetEmulator(clock, enforce_limits=False)
    service = ServiceDouble(emulator, pki)
    sim = FleetSimulator(emulator, authority_of(pki), 1000, group_fraction=1.0)
    assert sim.start() == 1000
    assert sim.step_all() == 0
    service.ask_renewal(sim.device_ids[734], "only-one")
    assert sim.step_all() == 1
    assert sim.agents[sim.device_ids[734]].pending_request_id == "only-one"
    # a link the hub drops wakes that device, which reconnects in the next round
    emulator.session(sim.device_ids[5]).disconnect()  # type: ignore[union-attr]
    assert sim.step_all() == 1
    assert sim.agents[sim.device_ids[5]].connected

"""What an operator configured on an enrollment or a hub identity survives certroll.

DPS ``CreateOrUpdate`` and IoT Hub ``PUT /devices/{id}`` replace the whole resource
(DPS service API 2021-10-01, IndividualEnrollment; IoT Hub service API, Devices
CreateOrUpdateIdentity). certroll's writes therefore send back the document as read and
change only what certroll owns (certificate slots, status). This suite runs the rotation
service against both fleet implementations (the in-process emulator and the production
REST adapters against the emulator's REST front end) and checks an operator's fields after
a rotation, a disallow and an allow.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from local.device.simulator import FleetSimulator
from local.emulator import LIFECYCLE, TWIN_CHANGES, FleetEmulator
from local.stack import fleet_ports
from shared.adapters.dps import DpsEnrollmentStore
from shared.adapters.memory import (
    MemoryAuditLog,
    MemoryCrlPublisher,
    MemoryEventSink,
    MemoryLedger,
    MemoryRotationStore,
    MemoryWorkQueue,
)
from shared.clock import ManualClock
from shared.domain.commands import (
    Allow,
    DeviceConnected,
    Disallow,
    StartRenewal,
    TwinReported,
)
from shared.domain.model import DeviceStatus, ProvisioningStatus, RotationState, Trigger
from shared.domain.rotation import RotationDeps, RotationService
from shared.pki.issuer import Issuer
from shared.pki.local_ca import generate_pki
from shared.pki.profile import IssuancePolicy
from shared.ports import DeviceRegistry, EnrollmentStore, IssuingAuthority

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HUB = "certroll-emulator.azure-devices.net"

#: An operator's enrollment settings (field names and shapes from the DPS service API
#: 2021-10-01 IndividualEnrollment definition).
ENROLLMENT_FIELDS: dict[str, Any] = {
    "initialTwin": {
        "tags": {"site": "plant-7"},
        "properties": {"desired": {"telemetryIntervalSeconds": 30}},
    },
    "capabilities": {"iotEdge": True},
    "allocationPolicy": "custom",
    "iotHubs": [HUB],
    "customAllocationDefinition": {
        "webhookUrl": "https://alloc.example.net/api/allocate",
        "apiVersion": "2021-10-01",
    },
    "optionalDeviceInformation": {"model": "sensor-3", "firmware": "4.2"},
}
#: An operator's identity settings (IoT Hub Device, api-version 2021-04-12).
EDGE_SCOPE = "ms-azure-iot-edge://edge-gw-1-637000000000000000"
IDENTITY_FIELDS: dict[str, Any] = {
    "capabilities": {"iotEdge": True},
    "deviceScope": EDGE_SCOPE,
    "parentScopes": [EDGE_SCOPE],
}


@dataclasses.dataclass
class Setup:
    emulator: FleetEmulator
    clock: ManualClock
    dps: EnrollmentStore
    hub: DeviceRegistry
    service: RotationService
    sim: FleetSimulator


@pytest.fixture(params=["inprocess", "http"])
def setup(request: pytest.FixtureRequest) -> Iterator[Setup]:
    clock = ManualClock(START)
    emulator = FleetEmulator(clock, enforce_limits=False)
    ports = fleet_ports(
        emulator, "http" if request.param == "http" else "inproc", clock, retry_total=0
    )
    dps: EnrollmentStore = ports.enrollments
    hub: DeviceRegistry = ports.registry
    pki = generate_pki(now=clock.now())
    authority = IssuingAuthority(
        pki.issuing_certificate,
        pki.issuing_key,
        "file:test",
        (pki.issuing_certificate,),
        pki.root_certificate,
    )
    ledger, audit = MemoryLedger(), MemoryAuditLog()
    issuer = Issuer(authority, ledger, audit, IssuancePolicy(), clock, MemoryCrlPublisher())
    deps = RotationDeps(
        state=MemoryRotationStore(),
        ledger=ledger,
        audit=audit,
        enrollments=dps,
        registry=hub,
        issuer=issuer,
        events=MemoryEventSink(),
        queue=MemoryWorkQueue(),
        clock=clock,
    )

    def issue_initial(device_id: str, csr_pem: str) -> str:
        return issuer.issue(
            device_id, csr_pem, request_id="initial", trigger="cli", actor="cli:test"
        ).chain_pem

    sim = FleetSimulator(emulator, issue_initial, 1, trust_anchor=pki.root_certificate, seed=5)
    assert sim.start() == 1
    emulator.events.drain(TWIN_CHANGES)
    emulator.events.drain(LIFECYCLE)
    yield Setup(emulator, clock, dps, hub, RotationService(deps), sim)
    ports.close()


def configure_as_operator(s: Setup, device_id: str) -> None:
    enrollment = s.dps.get_individual(device_id)
    s.dps.put_individual(
        dataclasses.replace(
            enrollment, document={**(enrollment.document or {}), **ENROLLMENT_FIELDS}
        )
    )
    identity = s.hub.get_device(device_id)
    s.hub.update_device(
        dataclasses.replace(identity, document={**(identity.document or {}), **IDENTITY_FIELDS})
    )


def assert_operator_fields_kept(s: Setup, device_id: str) -> None:
    document = s.dps.get_individual(device_id).document or {}
    assert {k: document.get(k) for k in ENROLLMENT_FIELDS} == ENROLLMENT_FIELDS
    identity = s.hub.get_device(device_id).document or {}
    assert {k: identity.get(k) for k in IDENTITY_FIELDS} == IDENTITY_FIELDS


def run_until_idle(s: Setup, device_id: str) -> None:
    for _ in range(40):
        stepped = s.sim.step_all()
        handled = 0
        for event in s.emulator.events.drain(TWIN_CHANGES):
            reported = event["body"]["properties"].get("reported") or {}
            if "x509" in reported:
                section = s.emulator.hub.get_twin(device_id).reported["x509"]
                s.service.on_twin_reported(
                    TwinReported.parse(device_id, section, event["body"]["version"])
                )
                handled += 1
        for event in s.emulator.events.drain(LIFECYCLE):
            if event["eventType"] == "Microsoft.Devices.DeviceConnected":
                s.service.on_device_connected(
                    DeviceConnected(event["data"]["deviceId"], s.clock.now())
                )
        if stepped or handled:
            continue
        record = s.service.deps.state.get(device_id)
        if record is not None and record.state is RotationState.IDLE:
            return
        s.clock.advance(600)
        s.service.advance(device_id)
    raise AssertionError(f"{device_id} did not settle: {s.service.deps.state.get(device_id)}")


def device_csr(device_id: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def test_operator_fields_survive_rotation_disallow_and_allow(setup: Setup) -> None:
    s = setup
    device_id = s.sim.device_ids[0]
    configure_as_operator(s, device_id)
    assert_operator_fields_kept(s, device_id)
    before = s.dps.get_individual(device_id).primary

    s.service.start_renewal(StartRenewal(device_id, Trigger.MANUAL, "cli:test"))
    run_until_idle(s, device_id)
    rotated = s.dps.get_individual(device_id)
    assert (rotated.primary, rotated.secondary) != (before, None)  # slots were written
    assert_operator_fields_kept(s, device_id)

    s.service.disallow(Disallow(device_id, "lost in transit", "cli:test"))
    assert s.dps.get_individual(device_id).provisioning_status is ProvisioningStatus.DISABLED
    assert s.hub.get_device(device_id).status is DeviceStatus.DISABLED
    assert_operator_fields_kept(s, device_id)

    s.service.allow(Allow.with_pem(device_id, "cli:test", device_csr(device_id)))
    for _ in range(5):
        s.service.advance(device_id)
    assert s.dps.get_individual(device_id).provisioning_status is ProvisioningStatus.ENABLED
    assert s.hub.get_device(device_id).status is DeviceStatus.ENABLED
    assert_operator_fields_kept(s, device_id)


@pytest.mark.parametrize("setup", ["http"], indirect=True)
def test_the_wire_document_keeps_operator_fields(setup: Setup) -> None:
    """Over REST: the JSON the front end returns carries the fields too."""
    s = setup
    assert isinstance(s.dps, DpsEnrollmentStore)
    device_id = s.sim.device_ids[0]
    configure_as_operator(s, device_id)
    enrollment = s.dps.get_individual(device_id)
    s.dps.put_individual(
        dataclasses.replace(enrollment, provisioning_status=ProvisioningStatus.DISABLED)
    )
    wire = s.dps.get_individual(device_id).document or {}
    for name, value in ENROLLMENT_FIELDS.items():
        assert wire[name] == value
    assert "createdDateTimeUtc" not in ENROLLMENT_FIELDS

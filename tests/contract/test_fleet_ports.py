"""One contract suite for the fleet ports, run against every implementation.

``inprocess``: the emulator's own ``EmulatedDps`` / ``EmulatedHub``.
``http``: the production adapters ``DpsEnrollmentStore`` / ``IotHubRegistry`` talking to
the emulator's REST front end over loopback (port picked by the OS), with a static
token credential.
``fake``: ``FakeEnrollments`` / ``FakeRegistry``, the small fakes the rotation unit tests
run on (tests/unit/rotation/fakes.py), so they cannot drift from the real ports.

Device-side steps (register, connect, load twins, run due jobs) go through
``fleet.devices``: the emulator itself, or :class:`FakeDevices` over the two fakes.
"""

from __future__ import annotations

import dataclasses
import itertools
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from local.emulator import FleetEmulator, RegistrationError
from local.stack import fleet_ports
from shared.clock import ManualClock
from shared.domain.errors import (
    ConcurrencyError,
    ConflictError,
    DeviceOfflineError,
    NotFoundError,
    ThrottledError,
)
from shared.domain.model import (
    AuthType,
    CertificateSlot,
    DeviceIdentity,
    DeviceStatus,
    EnrollmentGroup,
    IndividualEnrollment,
    MethodResult,
    ProvisioningStatus,
    RegistrationState,
)
from shared.ports import DeviceRegistry, EnrollmentStore
from tests.unit.rotation.fakes import FakeEnrollments, FakeRegistry

START = datetime(2026, 3, 1, tzinfo=UTC)
_KEY = ec.generate_private_key(ec.SECP256R1())
_serials = itertools.count(1000)


# --------------------------------------------------------------------------- PKI


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_cert(
    cn: str,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
    *,
    ca: bool = False,
    days: int = 30,
) -> x509.Certificate:
    issuer_name, issuer_key = (issuer[0].subject, issuer[1]) if issuer else (_name(cn), _KEY)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer_name)
        .public_key(_KEY.public_key())
        .serial_number(next(_serials))
        .not_valid_before(START - timedelta(days=1))
        .not_valid_after(START + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def thumb(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


# --------------------------------------------------------------------------- fixtures


@dataclass
class Recorder:
    answers: dict[str, tuple[int, Any]] = field(default_factory=dict)
    calls: list[tuple[str, Any]] = field(default_factory=list)

    def on_desired(self, patch: dict[str, Any], version: int) -> None:
        self.calls.append(("desired", patch))

    def on_method(self, name: str, payload: Any) -> tuple[int, Any]:
        self.calls.append((name, payload))
        return self.answers.get(name, (200, {"echo": payload}))


class DeviceSide(Protocol):
    """What devices and the portal do to a fleet, beside the two service ports."""

    hub_host: str

    def register(self, registration_id: str, chain: list[x509.Certificate]) -> Any: ...

    def connect(self, device_id: str, chain: list[x509.Certificate], handler: Any) -> Any: ...

    def bulk_load(self, devices: Iterable[tuple[str, str | None, dict[str, Any]]]) -> int: ...

    def add_verified_ca(self, name: str, certificate: x509.Certificate) -> None: ...

    def run_due_jobs(self) -> int: ...


class FakeSession:
    def __init__(self, registry: FakeRegistry, device_id: str) -> None:
        self._registry = registry
        self.device_id = device_id

    def disconnect(self) -> None:
        self._registry.online.discard(self.device_id)


class FakeDevices:
    """The device side of the fakes: registration against ``FakeEnrollments`` (an enabled
    individual enrollment holding the certificate, or an enabled group naming the verified
    CA that issued it), which creates or updates the ``FakeRegistry`` identity."""

    hub_host = "fake-hub.azure-devices.net"

    def __init__(self, dps: FakeEnrollments, hub: FakeRegistry, clock: ManualClock) -> None:
        self.dps = dps
        self.hub = hub
        self.clock = clock
        self.cas: dict[str, x509.Certificate] = {}
        self.handlers: dict[str, Any] = {}
        hub.on_method = self._on_method

    def _on_method(self, device_id: str, name: str, payload: Any) -> MethodResult:
        status, answer = self.handlers[device_id].on_method(name, payload)
        return MethodResult(status, answer)

    def _refused(self, registration_id: str) -> RegistrationError:
        return RegistrationError(401, 401002, f"{registration_id}: no enrollment admits it")

    def register(self, registration_id: str, chain: list[x509.Certificate]) -> Any:
        leaf = chain[0]
        tp = thumb(leaf)
        enrollment = self.dps.individual.get(registration_id)
        if enrollment is not None:
            slots = (enrollment.primary, enrollment.secondary)
            if enrollment.provisioning_status is not ProvisioningStatus.ENABLED or tp not in {
                s.thumbprint_sha256 for s in slots if s is not None
            }:
                raise self._refused(registration_id)
        elif not any(
            group.provisioning_status is ProvisioningStatus.ENABLED
            and len(chain) > 1
            and self.cas.get(group.ca_primary or "") == chain[1]
            for group in self.dps.groups.values()
        ):
            raise self._refused(registration_id)
        self.dps.registrations[registration_id] = RegistrationState(
            registration_id,
            "assigned",
            assigned_hub=self.hub_host,
            device_id=registration_id,
            last_updated=self.clock.now(),
            etag=uuid.uuid4().hex,
        )
        if registration_id in self.hub.devices:
            identity = self.hub.get_device(registration_id)
            identity.primary_thumbprint, identity.secondary_thumbprint = tp, None
            self.hub.update_device(identity)
        else:
            self.hub.create_device(DeviceIdentity(registration_id, primary_thumbprint=tp))
        return self.dps.registrations[registration_id]

    def connect(self, device_id: str, chain: list[x509.Certificate], handler: Any) -> FakeSession:
        self.handlers[device_id] = handler
        self.hub.online.add(device_id)
        return FakeSession(self.hub, device_id)

    def bulk_load(self, devices: Iterable[tuple[str, str | None, dict[str, Any]]]) -> int:
        count = 0
        for device_id, thumbprint, reported in devices:
            self.hub.create_device(DeviceIdentity(device_id, primary_thumbprint=thumbprint))
            self.hub.report(device_id, reported)
            count += 1
        return count

    def add_verified_ca(self, name: str, certificate: x509.Certificate) -> None:
        self.cas[name] = certificate

    def run_due_jobs(self) -> int:
        return self.hub.run_due_jobs(self.clock.now())


@dataclass
class Fleet:
    devices: DeviceSide
    clock: ManualClock
    dps: EnrollmentStore
    hub: DeviceRegistry
    kind: str


FleetFactory = Callable[..., Fleet]


@pytest.fixture(params=["inprocess", "http", "fake"])
def make_fleet(request: pytest.FixtureRequest) -> Iterator[FleetFactory]:
    closers: list[Callable[[], None]] = []

    def factory(**kwargs: Any) -> Fleet:
        clock = ManualClock(START)
        if request.param == "fake":
            if kwargs:
                pytest.skip(f"the fakes take no emulator options ({sorted(kwargs)})")
            dps, hub = FakeEnrollments(), FakeRegistry()
            return Fleet(FakeDevices(dps, hub, clock), clock, dps, hub, "fake")
        emulator = FleetEmulator(clock, **kwargs)
        transport = "inproc" if request.param == "inprocess" else "http"
        ports = fleet_ports(emulator, transport, clock, retry_total=0)
        closers.append(ports.close)
        return Fleet(emulator, clock, ports.enrollments, ports.registry, request.param)

    yield factory
    for close in reversed(closers):
        close()


@pytest.fixture
def fleet(make_fleet: FleetFactory) -> Fleet:
    return make_fleet()


def register(fleet: Fleet, cert: x509.Certificate, *chain: x509.Certificate) -> str:
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert isinstance(cn, str)
    result = fleet.devices.register(cn, [cert, *chain])
    device_id: str = result.device_id
    return device_id


# --------------------------------------------------------------------------- DPS


def test_individual_enrollment_crud_with_etags(fleet: Fleet) -> None:
    first, second = make_cert("dev-1"), make_cert("dev-1")
    created = fleet.dps.put_individual(
        IndividualEnrollment("dev-1", primary=CertificateSlot(pem=pem(first)))
    )
    assert created.etag
    read = fleet.dps.get_individual("dev-1")
    assert read.etag == created.etag
    assert read.primary is not None
    assert read.secondary is None
    assert read.primary.thumbprint_sha256 == thumb(first)
    assert read.primary.not_after == first.not_valid_after_utc
    assert read.primary.pem is None  # reads carry the info only
    assert read.provisioning_status is ProvisioningStatus.ENABLED

    with pytest.raises(ConflictError):  # create of an existing enrollment
        fleet.dps.put_individual(
            IndividualEnrollment("dev-1", primary=CertificateSlot(pem=pem(first)))
        )

    # write the free slot, keep the primary by its thumbprint
    read.secondary = CertificateSlot(pem=pem(second))
    updated = fleet.dps.put_individual(read)
    assert updated.etag != created.etag
    assert updated.primary is not None
    assert updated.primary.thumbprint_sha256 == thumb(first)
    assert updated.secondary is not None
    assert updated.secondary.thumbprint_sha256 == thumb(second)

    stale = fleet.dps.get_individual("dev-1")
    stale.etag = created.etag
    with pytest.raises(ConcurrencyError):
        fleet.dps.put_individual(stale)
    with pytest.raises(ConcurrencyError):
        fleet.dps.delete_individual("dev-1", etag=created.etag)

    # clearing a slot
    current = fleet.dps.get_individual("dev-1")
    current.primary = None
    cleared = fleet.dps.put_individual(current)
    assert cleared.primary is None
    assert cleared.secondary is not None
    assert cleared.secondary.thumbprint_sha256 == thumb(second)

    fleet.dps.delete_individual("dev-1", etag=cleared.etag)
    with pytest.raises(NotFoundError):
        fleet.dps.get_individual("dev-1")
    with pytest.raises(NotFoundError):
        fleet.dps.delete_individual("dev-1")


def _three_enrollments(fleet: Fleet) -> list[IndividualEnrollment]:
    return [
        fleet.dps.put_individual(
            IndividualEnrollment(rid, primary=CertificateSlot(pem=pem(make_cert(rid))))
        )
        for rid in ("bulk-1", "bulk-2", "bulk-3")
    ]


def test_bulk_update_if_match_writes_each_item_on_its_own(fleet: Fleet) -> None:
    one, two, _ = _three_enrollments(fleet)
    # read through the query (the campaign's way): its ETags serve the conditional write
    read = {e.registration_id: e for e in fleet.dps.query_individual(page_size=10).items}
    assert read["bulk-1"].etag == one.etag
    stale = read["bulk-2"]
    fleet.dps.put_individual(
        dataclasses.replace(fleet.dps.get_individual("bulk-2"), secondary=None)
    )  # bulk-2 changes after the read: its ETag no longer matches
    fleet.dps.delete_individual("bulk-3")  # bulk-3 is gone
    new_cert = make_cert("bulk-1")
    writes = [
        dataclasses.replace(read["bulk-1"], secondary=CertificateSlot(pem=pem(new_cert))),
        dataclasses.replace(stale, provisioning_status=ProvisioningStatus.DISABLED),
        dataclasses.replace(read["bulk-3"], provisioning_status=ProvisioningStatus.DISABLED),
    ]
    errors = fleet.dps.update_individuals_if_match(writes)
    assert sorted((e.registration_id, e.status) for e in errors) == [
        ("bulk-2", 412),
        ("bulk-3", 404),
    ]
    written = fleet.dps.get_individual("bulk-1")
    assert written.etag != one.etag
    assert written.primary is not None
    assert written.primary.thumbprint_sha256 == one.primary.thumbprint_sha256  # type: ignore[union-attr]
    assert written.secondary is not None
    assert written.secondary.thumbprint_sha256 == thumb(new_cert)
    # the refused item is untouched
    assert fleet.dps.get_individual("bulk-2").provisioning_status is ProvisioningStatus.ENABLED
    assert two.etag != fleet.dps.get_individual("bulk-2").etag  # changed by the put above


def test_bulk_update_refuses_what_the_service_would(fleet: Fleet) -> None:
    first, *_ = _three_enrollments(fleet)
    with pytest.raises(ValueError, match="1 to 10"):
        fleet.dps.update_individuals_if_match([])
    with pytest.raises(ValueError, match="1 to 10"):
        fleet.dps.update_individuals_if_match([first] * 11)
    with pytest.raises(ValueError, match="etag"):
        fleet.dps.update_individuals_if_match([dataclasses.replace(first, etag=None)])
    with pytest.raises(ValueError, match="twice"):
        fleet.dps.update_individuals_if_match([first, first])


@pytest.mark.parametrize(("reading", "charged"), [("call", 1.0), ("item", 3.0)])
def test_bulk_call_charged_as_the_emulator_reading_says(
    make_fleet: FleetFactory, reading: str, charged: float
) -> None:
    fleet = make_fleet(dps_bulk_counts=reading)
    assert isinstance(fleet.devices, FleetEmulator)
    enrollments = _three_enrollments(fleet)
    before = fleet.devices.limiter.spent["dps.service_operations"]
    writes = [
        dataclasses.replace(e, provisioning_status=ProvisioningStatus.DISABLED) for e in enrollments
    ]
    assert fleet.dps.update_individuals_if_match(writes) == []
    assert fleet.devices.limiter.spent["dps.service_operations"] - before == charged


def test_disable_and_enable_an_enrollment(fleet: Fleet) -> None:
    cert = make_cert("dev-2")
    e = fleet.dps.put_individual(
        IndividualEnrollment("dev-2", primary=CertificateSlot(pem=pem(cert)))
    )
    e.provisioning_status = ProvisioningStatus.DISABLED
    disabled = fleet.dps.put_individual(e)
    assert fleet.dps.get_individual("dev-2").provisioning_status is ProvisioningStatus.DISABLED
    with pytest.raises(RegistrationError):
        register(fleet, cert)
    disabled.provisioning_status = ProvisioningStatus.ENABLED
    fleet.dps.put_individual(disabled)
    assert register(fleet, cert) == "dev-2"


def test_group_with_ca_reference_and_registration_state(fleet: Fleet) -> None:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("fleet-ca"))
        .issuer_name(_name("fleet-ca"))
        .public_key(ca_key.public_key())
        .serial_number(next(_serials))
        .not_valid_before(START - timedelta(days=1))
        .not_valid_after(START + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    fleet.devices.add_verified_ca("fleet-ca", ca_cert)
    group = fleet.dps.put_group(EnrollmentGroup("fleet", ca_primary="fleet-ca"))
    assert group.etag
    read = fleet.dps.get_group("fleet")
    assert (read.ca_primary, read.ca_secondary, read.primary) == ("fleet-ca", None, None)

    with pytest.raises(NotFoundError):
        fleet.dps.get_registration_state("dev-g1")
    leaf = make_cert("dev-g1", (ca_cert, ca_key))
    assert register(fleet, leaf, ca_cert) == "dev-g1"

    state = fleet.dps.get_registration_state("dev-g1")
    assert state.status == "assigned"
    assert state.device_id == "dev-g1"
    assert state.assigned_hub == fleet.devices.hub_host
    assert state.last_updated == START
    assert state.etag
    with pytest.raises(ConcurrencyError):
        fleet.dps.delete_registration_state("dev-g1", etag="not-the-etag")
    fleet.dps.delete_registration_state("dev-g1", etag=state.etag)
    with pytest.raises(NotFoundError):
        fleet.dps.get_registration_state("dev-g1")

    # the hub identity the registration made carries the presented certificate
    identity = fleet.hub.get_device("dev-g1")
    assert identity.primary_thumbprint == thumb(leaf)

    group_page = fleet.dps.query_groups()
    assert [g.group_id for g in group_page.items] == ["fleet"]
    with pytest.raises(ConcurrencyError):
        fleet.dps.delete_group("fleet", etag="stale")
    fleet.dps.delete_group("fleet", etag=read.etag)
    with pytest.raises(NotFoundError):
        fleet.dps.get_group("fleet")


def test_group_with_signing_certificate_slots(fleet: Fleet) -> None:
    signer = make_cert("signer", ca=True)
    group = fleet.dps.put_group(EnrollmentGroup("signed", primary=CertificateSlot(pem=pem(signer))))
    assert group.primary is not None
    assert group.primary.thumbprint_sha256 == thumb(signer)
    assert group.primary.pem is None
    group.provisioning_status = ProvisioningStatus.DISABLED
    stored = fleet.dps.put_group(group)  # primary kept by thumbprint
    assert stored.provisioning_status is ProvisioningStatus.DISABLED
    assert stored.primary is not None
    assert stored.primary.thumbprint_sha256 == thumb(signer)


def test_query_enrollments_with_continuation(fleet: Fleet) -> None:
    for i in range(7):
        cert = make_cert(f"q-{i}")
        fleet.dps.put_individual(
            IndividualEnrollment(f"q-{i}", primary=CertificateSlot(pem=pem(cert)))
        )
    seen: list[str] = []
    token: str | None = None
    pages = 0
    while True:
        page = fleet.dps.query_individual(page_size=3, continuation=token)
        pages += 1
        assert len(page.items) <= 3
        seen.extend(e.registration_id for e in page.items)
        token = page.continuation
        if token is None:
            break
    assert sorted(seen) == [f"q-{i}" for i in range(7)]
    assert pages == 3


# --------------------------------------------------------------------------- hub


def test_identity_get_update_and_etag_mismatch(fleet: Fleet) -> None:
    cert, nxt = make_cert("dev-3"), make_cert("dev-3")
    fleet.dps.put_individual(IndividualEnrollment("dev-3", primary=CertificateSlot(pem=pem(cert))))
    register(fleet, cert)
    identity = fleet.hub.get_device("dev-3")
    assert identity.auth_type is AuthType.SELF_SIGNED
    assert identity.primary_thumbprint == thumb(cert)
    assert identity.secondary_thumbprint is None
    assert identity.status is DeviceStatus.ENABLED

    identity.secondary_thumbprint = thumb(nxt)
    updated = fleet.hub.update_device(identity)
    assert updated.secondary_thumbprint == thumb(nxt)
    assert updated.etag != identity.etag

    identity.status = DeviceStatus.DISABLED  # still the old etag
    with pytest.raises(ConcurrencyError):
        fleet.hub.update_device(identity)
    assert fleet.hub.get_device("dev-3").status is DeviceStatus.ENABLED

    updated.status = DeviceStatus.DISABLED
    updated.status_reason = "compromised"
    disabled = fleet.hub.update_device(updated)
    assert (disabled.status, disabled.status_reason) == (DeviceStatus.DISABLED, "compromised")

    with pytest.raises(ConflictError):
        fleet.hub.create_device(disabled)
    with pytest.raises(NotFoundError):
        fleet.hub.get_device("nobody")


def test_create_device_and_update_without_etag(fleet: Fleet) -> None:
    made = fleet.hub.create_device(DeviceIdentity("dev-4", primary_thumbprint="ab" * 32))
    assert made.primary_thumbprint == "ab" * 32
    made.etag = None  # '*': unconditional
    made.primary_thumbprint = "cd" * 32
    assert fleet.hub.update_device(made).primary_thumbprint == "cd" * 32


def test_twin_get_and_patch_desired(fleet: Fleet) -> None:
    fleet.devices.bulk_load([("dev-t", "ab" * 32, {"x509": {"notAfter": "2026-04-01T00:00:00Z"}})])
    twin = fleet.hub.get_twin("dev-t")
    assert twin.reported == {"x509": {"notAfter": "2026-04-01T00:00:00Z"}}
    assert twin.desired == {}
    v0 = twin.desired_version

    patched = fleet.hub.patch_desired(
        "dev-t", {"x509": {"renewal": {"requestId": "r1", "reason": "expiring"}}}, etag=twin.etag
    )
    assert patched.desired == {"x509": {"renewal": {"requestId": "r1", "reason": "expiring"}}}
    assert patched.desired_version == v0 + 1
    assert patched.etag != twin.etag

    with pytest.raises(ConcurrencyError):
        fleet.hub.patch_desired("dev-t", {"other": 1}, etag=twin.etag)

    merged = fleet.hub.patch_desired(
        "dev-t", {"x509": {"renewal": None, "issued": {"requestId": "r1"}}}
    )
    assert merged.desired == {"x509": {"issued": {"requestId": "r1"}}}
    assert fleet.hub.get_twin("dev-t").desired == merged.desired
    with pytest.raises(NotFoundError):
        fleet.hub.get_twin("nobody")


def test_twin_query_pages_with_continuation(fleet: Fleet) -> None:
    n = 300
    fleet.devices.bulk_load(
        (f"d{i:04d}", None, {"x509": {"notAfter": f"2026-{1 + i % 12:02d}-15T00:00:00Z"}})
        for i in range(n)
    )
    seen: list[str] = []
    token: str | None = None
    pages = 0
    while True:
        page = fleet.hub.query_twins("SELECT * FROM devices", page_size=64, continuation=token)
        pages += 1
        seen.extend(t.device_id for t in page.items)
        token = page.continuation
        if token is None:
            break
    assert len(seen) == n
    assert len(set(seen)) == n
    assert pages == 5

    expiring: list[str] = []
    token = None
    query = "SELECT * FROM devices WHERE properties.reported.x509.notAfter < '2026-03-01T00:00:00Z'"
    while True:
        page = fleet.hub.query_twins(query, page_size=50, continuation=token)
        expiring.extend(t.device_id for t in page.items)
        assert all(t.reported["x509"]["notAfter"] < "2026-03-01" for t in page.items)
        token = page.continuation
        if token is None:
            break
    assert len(expiring) == 50  # months 01 and 02: i % 12 in {0, 1}


def test_direct_method_to_connected_and_offline_device(fleet: Fleet) -> None:
    cert = make_cert("dev-m")
    fleet.dps.put_individual(IndividualEnrollment("dev-m", primary=CertificateSlot(pem=pem(cert))))
    register(fleet, cert)
    handler = Recorder(answers={"reprovision": (202, {"accepted": True})})
    session = fleet.devices.connect("dev-m", [cert], handler)

    result = fleet.hub.invoke_method("dev-m", "reprovision", {"requestId": "r1"})
    assert (result.status, result.payload) == (202, {"accepted": True})
    assert handler.calls == [("reprovision", {"requestId": "r1"})]

    session.disconnect()
    with pytest.raises(DeviceOfflineError):
        fleet.hub.invoke_method("dev-m", "reprovision", {"requestId": "r2"})
    with pytest.raises(NotFoundError):
        fleet.hub.invoke_method("nobody", "reprovision", {})


def test_scheduled_method_job(fleet: Fleet) -> None:
    handlers = {}
    for name in ("j1", "j2", "j3"):
        cert = make_cert(name)
        fleet.dps.put_individual(IndividualEnrollment(name, primary=CertificateSlot(pem=pem(cert))))
        register(fleet, cert)
        if name != "j3":
            handlers[name] = Recorder()
            fleet.devices.connect(name, [cert], handlers[name])
    job = fleet.hub.schedule_method_job(
        "job-1",
        "deviceId IN ['j1', 'j2', 'j3']",
        "reprovision",
        {"requestId": "bulk"},
        start_time=START + timedelta(minutes=5),
    )
    assert job.job_id == "job-1"
    assert job.status in ("queued", "scheduled")
    assert job.succeeded == 0

    fleet.clock.advance(600)
    fleet.devices.run_due_jobs()
    done = fleet.hub.get_job("job-1")
    assert done.status == "completed"
    assert (done.succeeded, done.failed, done.pending) == (2, 1, 0)
    assert handlers["j1"].calls == [("reprovision", {"requestId": "bulk"})]
    with pytest.raises(NotFoundError):
        fleet.hub.get_job("no-such-job")


def test_throttling_surfaces_with_retry_after(make_fleet: FleetFactory) -> None:
    fleet = make_fleet(limits_override={"dps.service_operations": 0.05})  # 3 per minute
    cert = make_cert("dev-z")
    fleet.dps.put_individual(IndividualEnrollment("dev-z", primary=CertificateSlot(pem=pem(cert))))
    for _ in range(2):  # the put took one of the three
        fleet.dps.get_individual("dev-z")
    with pytest.raises(ThrottledError) as caught:
        fleet.dps.get_individual("dev-z")
    assert 1.0 <= caught.value.retry_after <= 21.0
    fleet.clock.advance(caught.value.retry_after)
    assert fleet.dps.get_individual("dev-z").registration_id == "dev-z"

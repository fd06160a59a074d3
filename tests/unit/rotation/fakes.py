"""Small port-faithful fakes of DPS and IoT Hub, a scripted device, and fault injection.

The fakes keep the semantics the rotation service relies on: ETags (If-Match), slot
writes (``pem`` writes, a thumbprint-only slot equal to the stored one is kept, ``None``
clears), JSON merge-patch of desired properties, offline devices for direct methods, and
the ``notAfter <`` twin query the sweep sends.
"""

from __future__ import annotations

import copy
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shared.adapters.memory import (
    MemoryAuditLog,
    MemoryCrlPublisher,
    MemoryEventSink,
    MemoryLedger,
    MemoryRotationStore,
    MemoryWorkQueue,
)
from shared.clock import ManualClock
from shared.domain.commands import TwinReported
from shared.domain.errors import (
    ConcurrencyError,
    ConflictError,
    DeviceOfflineError,
    NotFoundError,
    ThrottledError,
)
from shared.domain.model import (
    AuthType,
    BulkItemError,
    CertificateSlot,
    DeviceIdentity,
    EnrollmentGroup,
    IndividualEnrollment,
    JobStatus,
    MethodResult,
    Page,
    RegistrationState,
    RotationState,
    Twin,
    bulk_items,
)
from shared.domain.policy import RotationPolicy
from shared.domain.rotation import RotationDeps, RotationService
from shared.metrics import CountingMetrics
from shared.pki.issuer import IssuancePolicy, Issuer
from shared.ports import DeviceRegistry, EnrollmentStore
from tests.support.pki import make_test_authority

START = datetime(2026, 1, 1, tzinfo=UTC)
T = TypeVar("T")


def _etag() -> str:
    return uuid.uuid4().hex


def _slot_info(slot: CertificateSlot | None, stored: CertificateSlot | None, name: str) -> Any:
    """A written slot as reads show it: a ``pem`` becomes its certificate's info, a
    thumbprint-only slot must be the stored one (kept), ``None`` clears."""
    if slot is None:
        return None
    if slot.pem is None:
        if stored is None or stored.thumbprint_sha256 != slot.thumbprint_sha256:
            raise ValueError(f"slot {name} given without pem and not the stored one")
        return copy.deepcopy(stored)
    cert = x509.load_pem_x509_certificate(slot.pem.encode())
    return CertificateSlot(
        thumbprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
        not_after=cert.not_valid_after_utc,
        subject=cert.subject.rfc4514_string(),
        pem=None,  # reads carry info only
    )


def _check_write(kind: str, key: str, etag: str | None, stored: Any) -> None:
    """No etag: create (ConflictError when it exists); an etag: replace that version."""
    if etag is None and stored is not None:
        raise ConflictError(f"{kind} {key} exists")
    if etag is not None and (stored is None or stored.etag != etag):
        raise ConcurrencyError(f"{kind} {key} changed")


def _pop(items: dict[str, Any], kind: str, key: str, etag: str | None) -> None:
    stored = items.get(key)
    if stored is None:
        raise NotFoundError(f"no {kind} {key}")
    if etag not in (None, "*") and stored.etag != etag:
        raise ConcurrencyError(f"{kind} {key} changed")
    del items[key]


def _page(items: list[T], page_size: int, continuation: str | None) -> Page[T]:
    start = int(continuation or 0)
    end = start + page_size
    return Page(items[start:end], str(end) if end < len(items) else None)


class FakeEnrollments(EnrollmentStore):
    """DPS enrollments and registration states in dicts (held to
    tests/contract/test_fleet_ports.py like the emulator and the REST adapter)."""

    def __init__(self) -> None:
        self.individual: dict[str, IndividualEnrollment] = {}
        self.groups: dict[str, EnrollmentGroup] = {}
        self.registrations: dict[str, RegistrationState] = {}
        self.writes = 0  # every write, single or in bulk
        self.single_writes = 0  # put_individual calls
        self.bulk_calls = 0
        #: registration ids a bulk operation answers 412 for (as if changed meanwhile)
        self.fail_bulk: set[str] = set()

    def get_individual(self, registration_id: str) -> IndividualEnrollment:
        try:
            return copy.deepcopy(self.individual[registration_id])
        except KeyError:
            raise NotFoundError(f"no enrollment {registration_id}") from None

    def put_individual(self, enrollment: IndividualEnrollment) -> IndividualEnrollment:
        self.single_writes += 1
        return self._put(enrollment)

    def _put(self, enrollment: IndividualEnrollment) -> IndividualEnrollment:
        stored = self.individual.get(enrollment.registration_id)
        _check_write("enrollment", enrollment.registration_id, enrollment.etag, stored)
        new = copy.deepcopy(enrollment)
        for name in ("primary", "secondary"):
            setattr(new, name, _slot_info(getattr(new, name), getattr(stored, name, None), name))
        new.etag = _etag()
        self.individual[new.registration_id] = new
        self.writes += 1
        return copy.deepcopy(new)

    def update_individuals_if_match(
        self, enrollments: Sequence[IndividualEnrollment]
    ) -> list[BulkItemError]:
        errors: list[BulkItemError] = []
        self.bulk_calls += 1
        for enrollment in bulk_items(enrollments):
            rid = enrollment.registration_id
            if rid in self.fail_bulk:
                errors.append(BulkItemError(rid, 412, "changed (injected)"))
                continue
            if rid not in self.individual:
                errors.append(BulkItemError(rid, 404, f"no enrollment {rid}"))
                continue
            try:
                self._put(enrollment)
            except NotFoundError as exc:
                errors.append(BulkItemError(rid, 404, str(exc)))
            except ConcurrencyError as exc:
                errors.append(BulkItemError(rid, 412, str(exc)))
        return errors

    def delete_individual(self, registration_id: str, etag: str | None = None) -> None:
        _pop(self.individual, "enrollment", registration_id, etag)

    def query_individual(
        self, page_size: int = 100, continuation: str | None = None
    ) -> Page[IndividualEnrollment]:
        return _page([copy.deepcopy(e) for e in self.individual.values()], page_size, continuation)

    def get_group(self, group_id: str) -> EnrollmentGroup:
        try:
            return copy.deepcopy(self.groups[group_id])
        except KeyError:
            raise NotFoundError(f"no enrollment group {group_id}") from None

    def put_group(self, group: EnrollmentGroup) -> EnrollmentGroup:
        stored = self.groups.get(group.group_id)
        _check_write("enrollment group", group.group_id, group.etag, stored)
        new = copy.deepcopy(group)
        for name in ("primary", "secondary"):
            setattr(new, name, _slot_info(getattr(new, name), getattr(stored, name, None), name))
        new.etag = _etag()
        self.groups[group.group_id] = new
        return copy.deepcopy(new)

    def delete_group(self, group_id: str, etag: str | None = None) -> None:
        _pop(self.groups, "enrollment group", group_id, etag)

    def query_groups(
        self, page_size: int = 100, continuation: str | None = None
    ) -> Page[EnrollmentGroup]:
        return _page([copy.deepcopy(g) for g in self.groups.values()], page_size, continuation)

    def get_registration_state(self, registration_id: str) -> RegistrationState:
        try:
            return copy.deepcopy(self.registrations[registration_id])
        except KeyError:
            raise NotFoundError(f"no registration {registration_id}") from None

    def delete_registration_state(self, registration_id: str, etag: str | None = None) -> None:
        _pop(self.registrations, "registration", registration_id, etag)


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


_ALL_QUERY = "SELECT * FROM devices"
_NOT_AFTER_QUERY = re.compile(
    r"^SELECT \* FROM devices WHERE properties\.reported\.x509\.notAfter < '([^']+)'$"
)
_IDS_CONDITION = re.compile(r"^deviceId IN \[(.*)\]$")


@dataclass
class _Job:
    status: JobStatus
    targets: list[str]
    method_name: str
    payload: Any
    start_time: datetime | None


class FakeRegistry(DeviceRegistry):
    """IoT Hub identities, twins, methods and jobs in dicts (held to
    tests/contract/test_fleet_ports.py like the emulator and the REST adapter). Queries:
    all twins, or the sweep's ``notAfter <``; job conditions: ``deviceId IN [...]``."""

    def __init__(self) -> None:
        self.devices: dict[str, DeviceIdentity] = {}
        self.twins: dict[str, Twin] = {}
        self.online: set[str] = set()
        self.methods: list[tuple[str, str, Any]] = []
        #: job id -> (condition, method, payload) as scheduled
        self.jobs: dict[str, tuple[str, str, Any]] = {}
        self.on_method: Callable[[str, str, Any], MethodResult] | None = None
        self._jobs: dict[str, _Job] = {}

    def get_device(self, device_id: str) -> DeviceIdentity:
        try:
            return copy.deepcopy(self.devices[device_id])
        except KeyError:
            raise NotFoundError(f"no device {device_id}") from None

    def update_device(self, identity: DeviceIdentity) -> DeviceIdentity:
        stored = self.devices.get(identity.device_id)
        if stored is None:
            raise NotFoundError(f"no device {identity.device_id}")
        if identity.etag not in (None, "*") and identity.etag != stored.etag:
            raise ConcurrencyError(f"device {identity.device_id} changed")
        new = copy.deepcopy(identity)
        new.etag = _etag()
        self.devices[new.device_id] = new
        return copy.deepcopy(new)

    def create_device(self, identity: DeviceIdentity) -> DeviceIdentity:
        if identity.device_id in self.devices:
            raise ConflictError(identity.device_id)
        new = copy.deepcopy(identity)
        new.etag = _etag()
        self.devices[new.device_id] = new
        self.twins.setdefault(new.device_id, Twin(device_id=new.device_id, etag=_etag()))
        return copy.deepcopy(new)

    def get_twin(self, device_id: str) -> Twin:
        try:
            return copy.deepcopy(self.twins[device_id])
        except KeyError:
            raise NotFoundError(f"no twin {device_id}") from None

    def patch_desired(self, device_id: str, patch: dict[str, Any], etag: str | None = None) -> Twin:
        twin = self.twins.get(device_id)
        if twin is None:
            raise NotFoundError(f"no twin {device_id}")
        if etag not in (None, "*") and etag != twin.etag:
            raise ConcurrencyError(f"twin {device_id} changed")
        _merge(twin.desired, patch)
        twin.desired_version += 1
        twin.etag = _etag()
        return copy.deepcopy(twin)

    def report(self, device_id: str, patch: dict[str, Any]) -> None:
        """Device side: merge-patch reported properties."""
        twin = self.twins[device_id]
        _merge(twin.reported, patch)
        twin.reported_version += 1
        twin.etag = _etag()

    def query_twins(
        self, query: str, page_size: int = 1000, continuation: str | None = None
    ) -> Page[Twin]:
        if query == _ALL_QUERY:
            hits = list(self.twins.values())
        else:
            match = _NOT_AFTER_QUERY.match(query)
            if match is None:
                raise ValueError(f"query not supported by the fake: {query}")
            bound = match.group(1)
            hits = [
                t
                for t in self.twins.values()
                if isinstance(t.reported.get("x509"), dict)
                and isinstance(t.reported["x509"].get("notAfter"), str)
                and t.reported["x509"]["notAfter"] < bound
            ]
        return _page([copy.deepcopy(t) for t in hits], page_size, continuation)

    def invoke_method(
        self,
        device_id: str,
        method_name: str,
        payload: Any,
        connect_timeout: int = 10,
        response_timeout: int = 30,
    ) -> MethodResult:
        if device_id not in self.devices:
            raise NotFoundError(f"no device {device_id}")
        if device_id not in self.online:
            raise DeviceOfflineError(f"device {device_id} is not online")
        self.methods.append((device_id, method_name, copy.deepcopy(payload)))
        if self.on_method is not None:
            return self.on_method(device_id, method_name, payload)
        return MethodResult(200, None)

    def schedule_method_job(
        self,
        job_id: str,
        query_condition: str,
        method_name: str,
        payload: Any,
        start_time: datetime | None = None,
        max_execution_seconds: int = 3600,
    ) -> JobStatus:
        match = _IDS_CONDITION.match(query_condition)
        if match is None:
            raise ValueError(f"job condition not supported by the fake: {query_condition}")
        targets = [t.strip().strip("'") for t in match.group(1).split(",") if t.strip()]
        self.jobs[job_id] = (query_condition, method_name, copy.deepcopy(payload))
        status = JobStatus(job_id=job_id, status="scheduled", pending=len(targets))
        self._jobs[job_id] = _Job(status, targets, method_name, copy.deepcopy(payload), start_time)
        return copy.deepcopy(status)

    def active_jobs(self) -> list[JobStatus]:
        return [
            copy.deepcopy(job.status)
            for job in self._jobs.values()
            if job.status.status in ("queued", "scheduled", "running")
        ]

    def run_due_jobs(self, now: datetime | None = None) -> int:
        """Run every scheduled job whose start time has come (``now`` None: all of them);
        returns the device calls made (offline or unknown devices count as failed)."""
        calls = 0
        for job in self._jobs.values():
            if job.status.status != "scheduled":
                continue
            if now is not None and job.start_time is not None and job.start_time > now:
                continue
            for device_id in job.targets:
                try:
                    result = self.invoke_method(device_id, job.method_name, job.payload)
                    ok = 200 <= result.status < 300
                except (NotFoundError, DeviceOfflineError):
                    ok = False
                calls += 1
                job.status.succeeded += ok
                job.status.failed += not ok
            job.status.pending = 0
            job.status.status = "completed"
        return calls

    def get_job(self, job_id: str) -> JobStatus:
        if job_id not in self._jobs:
            raise NotFoundError(f"no job {job_id}")
        return copy.deepcopy(self._jobs[job_id].status)


# --------------------------------------------------------------------------- fault injection


class Crash(Exception):
    """A simulated process crash (not a CertrollError: nothing handles it)."""


@dataclass
class Faults:
    """Counts port calls across wrapped ports; raises on the chosen call."""

    crash_at: int | None = None
    throttle_at: int | None = None
    throttle_times: int = 1
    calls: int = 0
    log: list[str] = field(default_factory=list)
    _throttled: int = 0

    def before(self, name: str) -> None:
        self.calls += 1
        self.log.append(name)
        if self.crash_at is not None and self.calls == self.crash_at:
            raise Crash(f"crash before call {self.calls} ({name})")
        if (
            self.throttle_at is not None
            and self.calls >= self.throttle_at
            and self._throttled < self.throttle_times
        ):
            self._throttled += 1
            raise ThrottledError(f"429 on {name}", retry_after=2.0)


class Wrapped:
    """A proxy that reports each method call of ``target`` to ``faults`` first."""

    def __init__(self, target: Any, label: str, faults: Faults) -> None:
        self._target = target
        self._label = label
        self._faults = faults

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr) or name.startswith("_"):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self._faults.before(f"{self._label}.{name}")
            return attr(*args, **kwargs)

        return call


# --------------------------------------------------------------------------- world and device


def _section(cert: x509.Certificate) -> dict[str, str]:
    return {
        "thumbprint": cert.fingerprint(hashes.SHA256()).hex(),
        "serialNumber": format(cert.serial_number, "x"),
        "notBefore": cert.not_valid_before_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "notAfter": cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _pem_text(value: Any) -> str:
    """A delivered ``issued.certificate``: a list of PEMs (as certroll sends it) or one."""
    return "".join(value) if isinstance(value, list) else str(value)


def thumb(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


class World:
    """Every port of the rotation service, backed by fakes, plus scripted devices."""

    def __init__(self, policy: RotationPolicy | None = None) -> None:
        self.clock = ManualClock(START)
        self.state = MemoryRotationStore()
        self.ledger = MemoryLedger()
        self.audit = MemoryAuditLog()
        self.events = MemoryEventSink()
        self.queue = MemoryWorkQueue()
        self.crl = MemoryCrlPublisher()
        self.enrollments = FakeEnrollments()
        self.registry = FakeRegistry()
        self.authority = make_test_authority(now=START)
        self.issuer = Issuer(
            self.authority,
            self.ledger,
            self.audit,
            IssuancePolicy(validity_days=30),
            self.clock,
            crl_publisher=self.crl,
            is_disallowed=self._is_disallowed,
        )
        self.policy = policy or RotationPolicy()
        self.metrics = CountingMetrics()
        self.devices: dict[str, Device] = {}

    def _is_disallowed(self, device_id: str) -> bool:
        rec = self.state.get(device_id)
        return rec is not None and rec.state is RotationState.DISALLOWED

    def deps(self, faults: Faults | None = None) -> RotationDeps:
        def w(target: Any, label: str) -> Any:
            return Wrapped(target, label, faults) if faults is not None else target

        return RotationDeps(
            state=w(self.state, "state"),
            ledger=w(self.ledger, "ledger"),
            audit=w(self.audit, "audit"),
            enrollments=w(self.enrollments, "dps"),
            registry=w(self.registry, "hub"),
            issuer=w(self.issuer, "issuer"),
            events=w(self.events, "events"),
            queue=w(self.queue, "queue"),
            clock=self.clock,
            policy=self.policy,
            metrics=self.metrics,
            ca_certificates=(self.authority.certificate,),
        )

    def service(self, faults: Faults | None = None) -> RotationService:
        return RotationService(self.deps(faults))

    def ready(self, device_id: str = "dev-1", **kw: Any) -> tuple[Device, RotationService]:
        """A new device whose first twin report (version 1) a fresh service has read."""
        dev = self.add_device(device_id, **kw)
        svc = self.service()
        svc.on_twin_reported(TwinReported.parse(device_id, dev.section(), twin_version=1))
        return dev, svc

    def audits(self, action: str, device_id: str = "dev-1") -> list[Any]:
        """The device's audit entries of ``action``, newest first."""
        return [e for e in self.audit.list(device_id, limit=1000) if e.action == action]

    def events_of(self, event_type: str) -> list[Any]:
        """The published events of ``event_type``, in order."""
        return [e for e in self.events.events if e.event_type == event_type]

    def add_device(
        self,
        device_id: str,
        *,
        group: bool = False,
        auth: AuthType = AuthType.SELF_SIGNED,
        online: bool = True,
        from_certroll: bool = True,
    ) -> Device:
        dev = Device(self, device_id)
        if from_certroll:
            issued = self.issuer.issue(
                device_id,
                dev.new_csr("initial"),
                request_id="initial",
                trigger="cli",
                actor="test",
            )
            dev.cert = issued.certificate
        else:
            dev.cert = dev.self_made_certificate()
        dev.key = dev.pending.pop("initial", dev.key)
        pem = dev.cert.public_bytes(serialization.Encoding.PEM).decode()
        if not group:
            self.enrollments.put_individual(
                IndividualEnrollment(
                    registration_id=device_id,
                    device_id=device_id,
                    primary=CertificateSlot(thumbprint_sha256=thumb(dev.cert), pem=pem),
                )
            )
        self.registry.create_device(
            DeviceIdentity(
                device_id=device_id,
                auth_type=auth,
                primary_thumbprint=thumb(dev.cert) if auth is AuthType.SELF_SIGNED else None,
            )
        )
        self.registry.report(device_id, {"x509": _section(dev.cert)})
        if online:
            self.registry.online.add(device_id)
        self.devices[device_id] = dev
        return dev


class Device:
    """A scripted device: answers renewal requests, stages deliveries, installs on command."""

    def __init__(self, world: World, device_id: str) -> None:
        self.world = world
        self.device_id = device_id
        self.key: ec.EllipticCurvePrivateKey = ec.generate_private_key(ec.SECP256R1())
        self.cert: x509.Certificate
        self.pending: dict[str, ec.EllipticCurvePrivateKey] = {}
        self.csrs: dict[str, str] = {}

    def new_csr(self, request_id: str) -> str:
        if request_id in self.csrs:
            return self.csrs[request_id]
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.device_id)])
        csr = (
            x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
        )
        self.pending[request_id] = key
        self.csrs[request_id] = csr.public_bytes(serialization.Encoding.PEM).decode()
        return self.csrs[request_id]

    def self_made_certificate(self) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.device_id)])
        now = self.world.clock.now()
        return (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now.replace(year=now.year + 1))
            .sign(self.key, hashes.SHA256())
        )

    @property
    def twin(self) -> Twin:
        return self.world.registry.twins[self.device_id]

    def section(self) -> dict[str, str]:
        return _section(self.cert)

    def renewal_request(self) -> str | None:
        x = self.twin.desired.get("x509") or {}
        renewal = x.get("renewal") or {}
        rid = renewal.get("requestId")
        return rid if isinstance(rid, str) else None

    def answer(self) -> dict[str, Any] | None:
        """The reported patch answering the desired renewal request (None when none)."""
        rid = self.renewal_request()
        if rid is None:
            return None
        patch = {"x509": {"csr": {"requestId": rid, "pem": self.new_csr(rid)}}}
        self.world.registry.report(self.device_id, patch)
        return patch["x509"]

    def delivered(self) -> x509.Certificate | None:
        issued = (self.twin.desired.get("x509") or {}).get("issued")
        if not issued:
            return None
        return x509.load_pem_x509_certificates(_pem_text(issued["certificate"]).encode())[0]

    def install(self) -> dict[str, Any]:
        """Install the delivered certificate and report it (what a reprovision ends with)."""
        issued = (self.twin.desired.get("x509") or {}).get("issued")
        assert issued, "nothing delivered"
        rid = issued["requestId"]
        self.cert = x509.load_pem_x509_certificates(_pem_text(issued["certificate"]).encode())[0]
        self.key = self.pending[rid]
        self.registered()
        patch = {**_section(self.cert), "renewal": {"requestId": rid, "status": "installed"}}
        self.world.registry.report(self.device_id, {"x509": patch})
        return patch

    def registered(self) -> None:
        """What DPS does when the device registers with its certificate: the hub identity
        gets that thumbprint as its only one (docs/device-contract.md)."""
        ident = self.world.registry.devices.get(self.device_id)
        if ident is not None and ident.auth_type is AuthType.SELF_SIGNED:
            ident.primary_thumbprint = thumb(self.cert)
            ident.secondary_thumbprint = None
            ident.etag = _etag()  # a new version, as any write of the identity makes

    def fail(self, error: str = "registration refused") -> dict[str, Any]:
        rid = self.renewal_request()
        patch = {
            "renewal": {
                "requestId": rid,
                "status": "failed",
                "error": error,
                "errorCode": "registration_failed",
            }
        }
        self.world.registry.report(self.device_id, {"x509": patch})
        return patch


#: the rotation package's loggers' common prefix
ROTATION_LOGGER = "shared.domain.rotation"


def rotation_log_lines(caplog: Any) -> list[str]:
    """The messages the rotation package logged (``caplog``)."""
    return [r.getMessage() for r in caplog.records if r.name.startswith(ROTATION_LOGGER)]

"""Metrics and spans the rotation service emits: a rotation, a failure, a reconcile, a
disallow and a throttled call, read from the in-memory OpenTelemetry readers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from opentelemetry import trace as otel_trace

from local.device.simulator import FleetSimulator
from local.emulator import LIFECYCLE, TWIN_CHANGES, FleetEmulator
from shared.adapters import otel
from shared.adapters.memory import (
    MemoryAuditLog,
    MemoryCrlPublisher,
    MemoryEventSink,
    MemoryLedger,
    MemoryRotationStore,
    MemoryWorkQueue,
)
from shared.clock import ManualClock
from shared.domain.commands import DeviceConnected, Disallow, StartRenewal, TwinReported
from shared.domain.errors import ThrottledError
from shared.domain.model import ConnectionFailure, RotationState, Trigger
from shared.domain.policy import RotationPolicy
from shared.domain.retry import Retrier, RetryPolicy
from shared.domain.rotation import RotationDeps, RotationService
from shared.observability import ObservedEvents
from shared.pki.issuer import Issuer
from shared.pki.local_ca import generate_pki
from shared.pki.profile import IssuancePolicy
from shared.ports import HIGH_CARDINALITY_DIMENSIONS, IssuingAuthority

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@dataclass
class Fleet:
    clock: ManualClock
    emulator: FleetEmulator
    sim: FleetSimulator
    service: RotationService
    deps: RotationDeps
    inst: otel.Instrumentation

    def deliver(self) -> int:
        handled = 0
        for event in self.emulator.events.drain(TWIN_CHANGES):
            reported = event["body"]["properties"].get("reported") or {}
            if "x509" in reported:
                device_id = event["properties"]["deviceId"]
                section = self.emulator.hub.get_twin(device_id).reported["x509"]
                self.service.on_twin_reported(
                    TwinReported.parse(device_id, section, event["body"]["version"])
                )
                handled += 1
        for event in self.emulator.events.drain(LIFECYCLE):
            if event["eventType"] == "Microsoft.Devices.DeviceConnected":
                self.service.on_device_connected(
                    DeviceConnected(event["data"]["deviceId"], self.clock.now())
                )
        return handled

    def run(self, device_ids: list[str]) -> None:
        for _ in range(60):
            if self.sim.step_all() or self.deliver():
                continue
            if all(self.state(d) is RotationState.IDLE for d in device_ids):
                return
            due = self.sim.next_due()
            step = 600 if due is None else max(1.0, (due - self.clock.now()).total_seconds())
            self.clock.advance(step)
            for device_id in device_ids:
                if self.state(device_id) is not RotationState.IDLE:
                    self.service.advance(device_id)
        raise AssertionError("the fleet did not settle")

    def state(self, device_id: str) -> RotationState | None:
        record = self.deps.state.get(device_id)
        return None if record is None else record.state

    def metrics(self) -> dict[str, Any]:
        return self.inst.metrics()

    def request_id(self, device_id: str) -> str:
        for event in self.deps.audit.list(device_id, 100):
            if event.action == "rotation_start" and event.request_id:
                return event.request_id
        raise AssertionError(f"no rotation started for {device_id}")


@pytest.fixture
def fleet() -> Fleet:
    clock = ManualClock(START)
    pki = generate_pki(now=clock.now())
    authority = IssuingAuthority(
        pki.issuing_certificate,
        pki.issuing_key,
        "file:test",
        (pki.issuing_certificate,),
        pki.root_certificate,
    )
    ledger, audit = MemoryLedger(), MemoryAuditLog()
    issuer = Issuer(
        authority, ledger, audit, IssuancePolicy(), clock, crl_publisher=MemoryCrlPublisher()
    )
    emulator = FleetEmulator(clock, enforce_limits=False)
    inst = otel.in_memory()
    policy = RotationPolicy()
    deps = RotationDeps(
        state=MemoryRotationStore(),
        ledger=ledger,
        audit=audit,
        enrollments=emulator.dps,
        registry=emulator.hub,
        issuer=issuer,
        events=ObservedEvents(MemoryEventSink(), inst.telemetry, ledger, audit, policy),
        queue=MemoryWorkQueue(),
        clock=clock,
        policy=policy,
        metrics=inst.telemetry,
        tracer=inst.tracer,
    )

    def issue_initial(device_id: str, csr_pem: str) -> str:
        return issuer.issue(
            device_id, csr_pem, request_id="initial", trigger="cli", actor="cli:test"
        ).chain_pem

    sim = FleetSimulator(emulator, issue_initial, 3, trust_anchor=pki.root_certificate, seed=5)
    assert sim.start() == 3
    emulator.events.drain(TWIN_CHANGES)
    emulator.events.drain(LIFECYCLE)
    return Fleet(clock, emulator, sim, RotationService(deps), deps, inst)


def _spans(fleet: Fleet) -> list[Any]:
    assert fleet.inst.spans is not None
    return fleet.inst.spans.get_finished_spans()


def _no_device_dimensions(metrics: dict[str, Any]) -> None:
    for name, points in metrics.items():
        for key in points:
            names = {part.split("=", 1)[0] for part in key.split(",") if part}
            assert not names & HIGH_CARDINALITY_DIMENSIONS, (name, key)
            values = [part.split("=", 1)[-1] for part in key.split(",") if part]
            for value in values:  # the fleet's ids are dev-NNNNN; no value names one
                assert not value.startswith(("device-", "dev-")), (name, key)


def test_a_rotation_is_counted_timed_and_one_trace(fleet: Fleet) -> None:
    device_id = fleet.sim.device_ids[0]
    fleet.service.start_renewal(StartRenewal(device_id, Trigger.MANUAL, "cli:test"))
    fleet.clock.advance(120)
    fleet.run([device_id])

    metrics = fleet.metrics()
    assert metrics["certroll.rotations"] == {
        "outcome=started,trigger=manual": 1,
        "outcome=completed,trigger=manual": 1,
    }
    timing = metrics["certroll.rotation.due_to_confirmed"]["trigger=manual"]
    assert timing["count"] == 1
    assert timing["sum"] >= 120
    _no_device_dimensions(metrics)

    request_id = fleet.request_id(device_id)
    trace_id = int(request_id, 16)
    in_trace = [s for s in _spans(fleet) if s.context.trace_id == trace_id]
    names = {s.name for s in in_trace}
    # the request for a CSR, the steps after it, and the service calls inside them
    assert {"rotation.request_csr", "rotation.run_until_waiting"} <= names
    assert {"iothub.patch_desired", "dps.put_individual", "state.put"} <= names
    assert any(n.startswith("issuer.") for n in names)
    for span in in_trace:
        if span.name.startswith("rotation."):
            assert span.attributes["certroll.request_id"] == request_id
            assert span.attributes["certroll.device_id"] == device_id
        else:
            assert span.parent is not None  # a call inside a step, not a root of its own
    # every step of the rotation ran in that one trace
    # every step of the rotation ran in that one trace (a drive of an idle record, with
    # no request, belongs to whatever invoked it)
    drives = [
        s
        for s in _spans(fleet)
        if s.name == "rotation.run_until_waiting" and "certroll.request_id" in (s.attributes or {})
    ]
    assert drives
    assert all(s.context.trace_id == trace_id for s in drives)


def test_a_failed_rotation_is_counted_by_trigger_and_code(fleet: Fleet) -> None:
    device_id = fleet.sim.device_ids[1]
    fleet.service.start_renewal(StartRenewal(device_id, Trigger.COMPROMISE, "cli:test"))
    request_id = fleet.request_id(device_id)
    section = dict(fleet.emulator.hub.get_twin(device_id).reported["x509"])
    section.pop("csr", None)
    section["renewal"] = {
        "requestId": request_id,
        "status": "failed",
        "error": "no entropy",
        "errorCode": "key_generation_failed",
    }
    fleet.service.on_twin_reported(TwinReported.parse(device_id, section))
    assert fleet.state(device_id) is RotationState.FAILED

    rotations = fleet.metrics()["certroll.rotations"]
    assert rotations["code=key_generation_failed,outcome=failed,trigger=compromise"] == 1
    assert rotations["outcome=started,trigger=compromise"] == 1
    names = {s.name for s in _spans(fleet)}
    assert {"state.get", "audit.append", "events.publish", "state.put"} <= names


def test_a_reconcile_is_counted_by_result_with_spans(fleet: Fleet) -> None:
    device_id = fleet.sim.device_ids[0]
    outcome = fleet.service.on_connection_failure(
        ConnectionFailure(device_id, 401003, fleet.clock.now())
    )
    other = fleet.service.on_connection_failure(
        ConnectionFailure("never-seen", 401003, fleet.clock.now())
    )

    metrics = fleet.metrics()
    assert other.action == "unknown_device"
    counted = {**metrics.get("certroll.reconcile", {})}
    refused = dict(metrics["certroll.reconcile_refused"])
    assert refused.pop("result=unknown_device") == 1
    assert {**counted, **refused} == {f"result={outcome.action}": 1}
    names = {s.name for s in _spans(fleet)}
    assert {"audit.list", "ledger.list_for_device", "audit.append"} <= names
    _no_device_dimensions(metrics)


def test_a_disallow_is_counted_with_spans(fleet: Fleet) -> None:
    device_id = fleet.sim.device_ids[2]
    result = fleet.service.disallow(Disallow(device_id, "reported stolen", "cli:test"))
    assert result.revoked

    metrics = fleet.metrics()
    assert metrics["certroll.disallowed"] == {"": 1}
    names = {s.name for s in _spans(fleet)}
    assert {"ledger.list_for_device", "issuer.revoke", "issuer.publish_crl"} <= names
    assert any(n.startswith("dps.") for n in names)


class _FlakyQueue(MemoryWorkQueue):
    def __init__(self) -> None:
        super().__init__()
        self.tries = 0

    def send(self, message: dict[str, Any]) -> None:
        self.tries += 1
        if self.tries == 1:
            raise ThrottledError("429 from the queue", 0.0)
        super().send(message)


def test_a_throttled_call_is_counted_by_service_and_each_try_is_a_span() -> None:
    inst = otel.in_memory()
    queue = _FlakyQueue()
    Retrier(ManualClock(START), RetryPolicy(max_attempts=3)).call(
        inst.tracer.wrap(queue.send), {"kind": "rotate"}
    )
    assert inst.metrics()["certroll.throttled"] == {"service=queue": 1}
    assert inst.spans is not None
    tries = [s for s in inst.spans.get_finished_spans() if s.name == "queue.send"]
    assert [s.attributes.get("certroll.throttled") for s in tries] == [True, None]


def test_a_port_call_span_is_named_once_per_port_operation_and_is_current_inside(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The rotation service wraps each port call as it makes it: the span's name is
    worked out once per port class and operation, not per call, and the call still
    runs inside its own CLIENT span, a child of the step's span."""
    named: list[str] = []
    real = otel.call_name

    def counting(fn: Any) -> tuple[str, str]:
        named.append(fn.__name__)
        return real(fn)

    monkeypatch.setattr(otel, "call_name", counting)
    inst = otel.in_memory()
    seen: list[Any] = []

    class SeeingQueue(MemoryWorkQueue):
        def send(self, message: dict[str, Any]) -> None:
            seen.append(otel_trace.get_current_span())
            super().send(message)

    bound = SeeingQueue().send
    with inst.tracer.span("step"):
        for _ in range(3):
            inst.tracer.wrap(bound)({"kind": "rotate"})
    assert named == ["send"]
    assert inst.spans is not None
    spans = {s.name: s for s in inst.spans.get_finished_spans()}
    calls = [s for s in inst.spans.get_finished_spans() if s.name == "queue.send"]
    assert len(calls) == 3
    assert all(s.kind is otel_trace.SpanKind.CLIENT for s in calls)
    assert all(s.parent is not None and s.parent.span_id == spans["step"].context.span_id
               for s in calls)
    assert [s.get_span_context().span_id for s in seen] == [s.context.span_id for s in calls]
    assert inst.tracer.wrap(bound).__qualname__.endswith("SeeingQueue.send")


def test_device_and_request_dimensions_are_dropped() -> None:
    inst = otel.in_memory()
    inst.telemetry.increment("certroll.x", device_id="d-1", request_id="r", result="ok")
    inst.telemetry.record("certroll.y", 2.5, serial="01", trigger="manual")
    inst.telemetry.set_gauge("certroll.z", 3, thumbprint="ab", bucket="0-3")
    inst.telemetry.set_gauge("certroll.z", 4, bucket="0-3")
    metrics = inst.metrics()
    assert metrics["certroll.x"] == {"result=ok": 1}
    assert metrics["certroll.y"]["trigger=manual"]["count"] == 1
    assert metrics["certroll.z"] == {"bucket=0-3": 4.0}


def test_telemetry_never_raises_into_the_caller(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def create_counter(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("exporter gone")

        create_histogram = create_observable_gauge = create_counter

    telemetry = otel.OtelTelemetry(Broken())  # type: ignore[arg-type]
    telemetry.increment("certroll.a")
    telemetry.record("certroll.b", 1.0)
    telemetry.set_gauge("certroll.c", 1.0)
    assert len([r for r in caplog.records if "exporter gone" in (r.exc_text or "")]) == 3


@pytest.mark.parametrize(
    ("request_id", "expected"),
    [
        ("0123456789abcdef0123456789abcdef", 0x0123456789ABCDEF0123456789ABCDEF),
        ("01234567-89ab-cdef-0123-456789abcdef", 0x0123456789ABCDEF0123456789ABCDEF),
    ],
)
def test_a_rotation_trace_id_is_its_request_id(request_id: str, expected: int) -> None:
    assert otel.rotation_trace_id(request_id) == expected


def test_other_request_ids_hash_to_a_stable_trace_id() -> None:
    first = otel.rotation_trace_id("cli-42")
    assert first == otel.rotation_trace_id("cli-42") != otel.rotation_trace_id("cli-43")
    assert 0 < first < 2**128


# --------------------------------------------------------------------------- wiring


@pytest.mark.parametrize(
    ("auth", "client_id"),
    [
        ("Authorization=AAD", None),
        ("Authorization=AAD;ClientId=1111-2222", "1111-2222"),
        ("authorization=AAD; clientid=abc", "abc"),
    ],
)
def test_authentication_string_names_the_managed_identity(
    auth: str, client_id: str | None
) -> None:
    assert otel.managed_identity_client_id(auth) == client_id


def test_authentication_string_other_than_entra_is_refused() -> None:
    with pytest.raises(ValueError, match="Authorization=AAD"):
        otel.managed_identity_client_id("InstrumentationKey=abc")


def test_without_application_insights_telemetry_stays_in_memory() -> None:
    inst = otel.from_environment({})
    assert inst.kind == "memory"
    assert inst.reader is not None


def test_application_insights_is_configured_with_the_managed_identity(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import azure.monitor.opentelemetry as distro
    from azure.identity import ManagedIdentityCredential

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(distro, "configure_azure_monitor", lambda **kw: calls.append(kw))
    inst = otel.azure_monitor(
        {
            "APPLICATIONINSIGHTS_CONNECTION_STRING": f"InstrumentationKey={'0' * 32}",
            "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": "Authorization=AAD",
        }
    )
    assert inst.kind == "azure-monitor"
    (kwargs,) = calls
    assert kwargs["connection_string"].startswith("InstrumentationKey=")
    assert isinstance(kwargs["credential"], ManagedIdentityCredential)
    assert kwargs["disable_logging"] is True


def test_fleet_gauges_from_a_rotated_fleet(fleet: Fleet) -> None:
    from shared.domain.fleet import build_snapshot
    from shared.observability import set_fleet_gauges

    device_id = fleet.sim.device_ids[0]
    fleet.service.start_renewal(StartRenewal(device_id, Trigger.MANUAL, "cli:test"))
    fleet.run([device_id])
    fleet.service.disallow(Disallow(fleet.sim.device_ids[2], "lost", "cli:test"))
    snap = build_snapshot(
        records=fleet.deps.state.list(),
        certificates=fleet.deps.ledger.list_all(),
        audit=fleet.deps.audit.list(None, 100),
        current_key_id="file:test",
        now=fleet.clock.now() + timedelta(days=1),
    )
    set_fleet_gauges(fleet.inst.telemetry, snap)
    metrics = fleet.metrics()
    assert metrics["certroll.devices_by_status"]["status=disallowed"] == 1
    assert metrics["certroll.devices_by_status"]["status=ok"] == snap.devices - 1
    assert sum(metrics["certroll.devices_by_expiry"].values()) == snap.devices - 1
    assert metrics["certroll.campaign.devices"]["phase=current_key"] == 1
    assert [e.device_id for e in snap.recent_disallows] == [fleet.sim.device_ids[2]]


def test_a_gauge_reading_is_exported_once() -> None:
    inst = otel.in_memory()
    inst.telemetry.set_gauge("certroll.devices_by_status", 3, status="late")
    assert inst.metrics()["certroll.devices_by_status"] == {"status=late": 3.0}
    assert "certroll.devices_by_status" not in inst.metrics()
    inst.telemetry.set_gauge("certroll.devices_by_status", 0, status="late")
    assert inst.metrics()["certroll.devices_by_status"] == {"status=late": 0.0}

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from local.emulator import (
    CONNECTIONS,
    LIFECYCLE,
    TWIN_CHANGES,
    FleetEmulator,
    HubConnectError,
)
from shared.clock import ManualClock
from shared.domain.errors import (
    ConcurrencyError,
    ConflictError,
    DeviceOfflineError,
    InvalidRequestError,
    NotFoundError,
)
from shared.domain.model import (
    AuthType,
    DeviceIdentity,
    DeviceStatus,
    IndividualEnrollment,
    MethodResult,
)
from tests.emulator.conftest import T0
from tests.emulator.support import Ca, RecordingHandler, self_signed, slot, thumbprint
from tests.support.connections_log import PROPERTY_KEYS, RECORD_FIELDS


def _provisioned(emu: FleetEmulator, device_id: str = "dev-1"):  # type: ignore[no-untyped-def]
    cert = self_signed(device_id, T0)
    emu.dps.put_individual(IndividualEnrollment(device_id, primary=slot(cert)))
    emu.register(device_id, [cert])
    emu.events.drain(LIFECYCLE)
    return cert


def _record(emu: FleetEmulator) -> dict[str, object]:
    batches = emu.events.drain(CONNECTIONS)
    assert len(batches) == 1
    records = batches[0]["records"]
    assert len(records) == 1
    rec: dict[str, object] = records[0]
    return rec


def test_connect_emits_connected_and_disconnected(emu: FleetEmulator) -> None:
    cert = _provisioned(emu)
    s = emu.connect("dev-1", [cert], RecordingHandler())
    assert s.connected
    assert s.device_id == "dev-1"
    assert emu.hub.get_device("dev-1").connection_state == "Connected"
    s.disconnect()
    assert not s.connected
    assert emu.hub.get_twin("dev-1").connection_state == "Disconnected"
    evs = emu.events.drain(LIFECYCLE)
    assert [e["eventType"] for e in evs] == [
        "Microsoft.Devices.DeviceConnected",
        "Microsoft.Devices.DeviceDisconnected",
    ]
    seqs = [e["data"]["deviceConnectionStateEventInfo"]["sequenceNumber"] for e in evs]
    assert seqs[0] < seqs[1]
    assert evs[0]["subject"] == "devices/dev-1"
    assert evs[0]["data"]["hubName"] == "certroll-hub"
    assert evs[0]["eventTime"].startswith("2026-03-01T00:00:00")


def test_wrong_thumbprint_records_401003_in_the_documented_shape(emu: FleetEmulator) -> None:
    """Only the fields Microsoft documents (tests/support/connections_log.py): nothing
    names the presented certificate; the reason stays in the error the device gets."""
    cert = _provisioned(emu)
    other = self_signed("dev-1", T0 + timedelta(seconds=1))
    with pytest.raises(HubConnectError) as err:
        emu.connect("dev-1", [other], RecordingHandler())
    assert err.value.code == 401003
    assert err.value.status == 401
    rec = _record(emu)
    assert rec["operationName"] == "deviceConnect"
    assert rec["category"] == "Connections"
    assert rec["level"] == "Error"
    assert rec["resultType"] == "401003"
    assert rec["resultDescription"] == "IoTHubUnauthorized"
    assert rec["location"] == "local"
    assert set(rec) <= RECORD_FIELDS
    assert str(rec["resourceId"]).endswith("/IOTHUBS/CERTROLL-HUB")
    assert str(rec["time"]).startswith("2026-03-01T00:00:00")
    props = json.loads(str(rec["properties"]))
    assert props["deviceId"] == "dev-1"
    assert set(props) == PROPERTY_KEYS
    assert props["protocol"] == "Mqtt"
    assert json.loads(props["authType"])["type"] == "x509Certificate"
    assert thumbprint(other).upper() not in json.dumps(rec).upper()
    assert thumbprint(cert).upper() in str(err.value)
    assert emu.events.drain(LIFECYCLE) == []


def test_unknown_device_records_401003(emu: FleetEmulator) -> None:
    with pytest.raises(HubConnectError) as err:
        emu.connect("ghost", [self_signed("ghost", T0)], RecordingHandler())
    assert err.value.code == 401003
    assert json.loads(str(_record(emu)["properties"]))["deviceId"] == "ghost"


def test_disabled_device_records_403012_and_is_dropped(emu: FleetEmulator) -> None:
    cert = _provisioned(emu)
    s = emu.connect("dev-1", [cert], RecordingHandler())
    ident = emu.hub.get_device("dev-1")
    ident.status = DeviceStatus.DISABLED
    emu.hub.update_device(ident)
    assert not s.connected
    with pytest.raises(DeviceOfflineError):
        s.report({"a": 1})
    with pytest.raises(HubConnectError) as err:
        emu.connect("dev-1", [cert], RecordingHandler())
    assert err.value.code == 403012
    rec = _record(emu)
    assert rec["resultType"] == "403012"
    assert rec["resultDescription"] == "DeviceDisabled"
    assert set(json.loads(str(rec["properties"]))) == PROPERTY_KEYS


def test_secondary_thumbprint_and_sha1_accepted(emu: FleetEmulator, clock: ManualClock) -> None:
    a = self_signed("dev-1", T0)
    b = self_signed("dev-1", T0 + timedelta(seconds=1))
    clock.advance(2)
    emu.hub.create_device(
        DeviceIdentity(
            "dev-1", primary_thumbprint=thumbprint(a), secondary_thumbprint=thumbprint(b)
        )
    )
    assert emu.connect("dev-1", [b], RecordingHandler()).connected
    from cryptography.hazmat.primitives import hashes

    sha1 = a.fingerprint(hashes.SHA1()).hex().upper()
    emu.hub.update_device(DeviceIdentity("dev-1", primary_thumbprint=sha1))
    assert emu.connect("dev-1", [a], RecordingHandler()).connected


def test_expired_certificate_cannot_connect(emu: FleetEmulator, clock: ManualClock) -> None:
    cert = _provisioned(emu)
    clock.advance(31 * 86400)
    with pytest.raises(HubConnectError) as err:
        emu.connect("dev-1", [cert], RecordingHandler())
    assert err.value.code == 401003


def test_ca_authenticated_identity(emu: FleetEmulator, issuing: Ca) -> None:
    emu.hub.create_device(DeviceIdentity("dev-ca", auth_type=AuthType.CERTIFICATE_AUTHORITY))
    leaf = issuing.issue("dev-ca", T0)
    with pytest.raises(HubConnectError):
        emu.connect("dev-ca", [leaf], RecordingHandler())  # CA not verified yet
    emu.add_verified_ca("issuing", issuing.cert)
    assert emu.connect("dev-ca", [leaf], RecordingHandler()).connected
    with pytest.raises(HubConnectError):
        emu.connect("dev-ca", [issuing.issue("someone-else", T0)], RecordingHandler())


def test_new_connection_replaces_old(emu: FleetEmulator) -> None:
    cert = _provisioned(emu)
    first = emu.connect("dev-1", [cert], RecordingHandler())
    second = emu.connect("dev-1", [cert], RecordingHandler())
    assert not first.connected
    assert second.connected
    assert emu.session("dev-1") is second


def test_identity_crud_and_etags(emu: FleetEmulator) -> None:
    tp = "ab" * 32
    created = emu.hub.create_device(DeviceIdentity("d1", primary_thumbprint=tp.upper()))
    assert created.primary_thumbprint == tp
    with pytest.raises(ConflictError):
        emu.hub.create_device(DeviceIdentity("d1", primary_thumbprint=tp))
    created.secondary_thumbprint = "cd" * 32
    updated = emu.hub.update_device(created)
    assert updated.etag != created.etag
    with pytest.raises(ConcurrencyError):
        emu.hub.update_device(created)
    with pytest.raises(NotFoundError):
        emu.hub.get_device("nope")
    with pytest.raises(InvalidRequestError):
        emu.hub.create_device(DeviceIdentity("d2", primary_thumbprint="xyz"))
    with pytest.raises(InvalidRequestError):
        emu.hub.create_device(DeviceIdentity("bad id", primary_thumbprint=tp))
    assert emu.hub.get_device("d1").secondary_thumbprint == "cd" * 32


def test_twin_versions_etags_merge_and_events(emu: FleetEmulator) -> None:
    cert = _provisioned(emu)
    s = emu.connect("dev-1", [cert], RecordingHandler())
    t0 = emu.hub.get_twin("dev-1")
    v1 = s.report({"x509": {"thumbprint": "aa", "notAfter": "2026-04-01T00:00:00Z"}, "fw": "1"})
    v2 = s.report({"x509": {"thumbprint": "bb"}, "fw": None})
    assert v2 == v1 + 1 == t0.reported_version + 2
    twin = s.get_twin()
    assert twin.reported == {"x509": {"thumbprint": "bb", "notAfter": "2026-04-01T00:00:00Z"}}
    assert twin.reported_version == v2
    assert twin.etag != t0.etag
    # returned twins are copies
    twin.reported["x509"]["thumbprint"] = "mutated"
    assert emu.hub.get_twin("dev-1").reported["x509"]["thumbprint"] == "bb"
    msgs = emu.events.drain(TWIN_CHANGES)
    assert len(msgs) == 2
    m = msgs[1]
    assert m["body"]["properties"]["reported"] == {
        "x509": {"thumbprint": "bb"},
        "fw": None,
        "$version": v2,
    }
    assert m["body"]["version"] > msgs[0]["body"]["version"]
    assert m["properties"]["deviceId"] == "dev-1"
    assert m["properties"]["hubName"] == "certroll-hub"
    assert m["properties"]["iothub-message-schema"] == "twinChangeNotification"
    assert m["properties"]["opType"] == "updateTwin"
    assert m["systemProperties"]["iothub-message-source"] == "twinChangeEvents"
    assert m["systemProperties"]["iothub-connection-device-id"] == "dev-1"


def test_coalesced_twin_changes(clock: ManualClock) -> None:
    emu = FleetEmulator(clock, enforce_limits=False, coalesce_twin_changes=True)
    cert = _provisioned(emu)
    s = emu.connect("dev-1", [cert], RecordingHandler())
    s.report({"a": 1, "b": {"c": 1}})
    v = s.report({"b": {"d": 2}})
    msgs = emu.events.drain(TWIN_CHANGES)
    assert len(msgs) == 1
    assert msgs[0]["body"]["properties"]["reported"] == {
        "a": 1,
        "b": {"c": 1, "d": 2},
        "$version": v,
    }


def test_patch_desired_calls_handler_and_checks_etag(emu: FleetEmulator) -> None:
    cert = _provisioned(emu)
    h = RecordingHandler()
    emu.connect("dev-1", [cert], h)
    twin = emu.hub.patch_desired("dev-1", {"x509": {"renewal": {"requestId": "r1"}}})
    assert h.desired == [({"x509": {"renewal": {"requestId": "r1"}}}, twin.desired_version)]
    twin2 = emu.hub.patch_desired("dev-1", {"x509": {"renewal": None}}, etag=twin.etag)
    assert twin2.desired == {"x509": {}}
    assert twin2.desired_version == twin.desired_version + 1
    with pytest.raises(ConcurrencyError):
        emu.hub.patch_desired("dev-1", {"a": 1}, etag=twin.etag)
    with pytest.raises(InvalidRequestError):
        emu.hub.patch_desired("dev-1", {"bad.key": 1})
    with pytest.raises(NotFoundError):
        emu.hub.patch_desired("nope", {"a": 1})
    assert emu.hub.get_twin("dev-1").desired == {"x509": {}}


def test_offline_device_reads_desired_on_connect(emu: FleetEmulator) -> None:
    cert = _provisioned(emu)
    emu.hub.patch_desired("dev-1", {"k": "v"})
    h = RecordingHandler()
    s = emu.connect("dev-1", [cert], h)
    assert h.desired == []
    assert s.get_twin().desired == {"k": "v"}


def test_direct_method_online_and_offline(emu: FleetEmulator) -> None:
    cert = _provisioned(emu)
    with pytest.raises(DeviceOfflineError, match="404103"):
        emu.hub.invoke_method("dev-1", "reprovision", {"requestId": "r"})
    h = RecordingHandler(answers={"reprovision": (202, {"accepted": True})})
    emu.connect("dev-1", [cert], h)
    result = emu.hub.invoke_method("dev-1", "reprovision", {"requestId": "r"})
    assert result == MethodResult(202, {"accepted": True})
    assert h.methods == [("reprovision", {"requestId": "r"})]
    with pytest.raises(NotFoundError):
        emu.hub.invoke_method("nope", "reprovision", {})


def test_handler_may_call_back_without_deadlock(emu: FleetEmulator) -> None:
    cert = _provisioned(emu)

    class Reentrant(RecordingHandler):
        def on_method(self, name: str, payload: object) -> tuple[int, object]:
            twin = emu.hub.get_twin("dev-1")  # would deadlock if the lock were held
            return 200, twin.reported_version

    emu.connect("dev-1", [cert], Reentrant())
    assert emu.hub.invoke_method("dev-1", "m", None).status == 200


def test_method_job_runs_when_start_time_reached(emu: FleetEmulator, clock: ManualClock) -> None:
    handlers = {}
    for i in range(3):
        cert = _provisioned(emu, f"dev-{i}")
        if i < 2:
            handlers[i] = RecordingHandler()
            emu.connect(f"dev-{i}", [cert], handlers[i])
    status = emu.hub.schedule_method_job(
        "job-1",
        "deviceId IN ['dev-0','dev-1','dev-2']",
        "reprovision",
        {"r": 1},
        start_time=T0 + timedelta(minutes=5),
    )
    assert status.status == "scheduled"
    assert emu.run_due_jobs() == 0
    assert handlers[0].methods == []
    clock.advance(301)
    assert emu.hub.get_job("job-1").status == "completed"  # ran on this call
    job = emu.hub.get_job("job-1")
    assert (job.succeeded, job.failed, job.pending) == (2, 1, 0)
    assert handlers[0].methods == [("reprovision", {"r": 1})]
    assert emu.hub.job_results("job-1")["dev-2"] is None
    with pytest.raises(ConflictError):
        emu.hub.schedule_method_job("job-1", "deviceId = 'dev-0'", "m", None)
    emu.hub.schedule_method_job("job-2", "deviceId = 'dev-0'", "m", None)
    assert emu.run_due_jobs() == 1
    assert emu.hub.get_job("job-2").succeeded == 1
    with pytest.raises(InvalidRequestError):
        emu.hub.schedule_method_job("job-3", "deviceId ==", "m", None)
    with pytest.raises(NotFoundError):
        emu.hub.get_job("job-9")


def test_subscribe_gets_events_after_the_operation(emu: FleetEmulator) -> None:
    cert = _provisioned(emu)
    seen: list[str] = []
    emu.events.subscribe(LIFECYCLE, lambda e: seen.append(e["eventType"]))
    emu.connect("dev-1", [cert], RecordingHandler())
    assert seen == ["Microsoft.Devices.DeviceConnected"]
    assert len(emu.events.drain(LIFECYCLE)) == 1
    with pytest.raises(ValueError, match="unknown topic"):
        emu.events.drain("nope")


def test_concurrent_reports_get_distinct_versions(emu: FleetEmulator) -> None:
    import threading

    cert = _provisioned(emu)
    s = emu.connect("dev-1", [cert], RecordingHandler())
    start = s.get_twin().reported_version
    versions: list[int] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        for i in range(50):
            v = s.report({f"k{n}": i})
            with lock:
                versions.append(v)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(versions) == list(range(start + 1, start + 201))
    assert s.get_twin().reported == {f"k{n}": 49 for n in range(4)}
    assert len(emu.events.drain(TWIN_CHANGES)) == 200

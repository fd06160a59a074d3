"""Event Hubs, Event Grid, timer and queue triggers through the registered functions."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import azure.functions as func
import pytest
from azure.functions.meta import Datum
from azure.functions.timer import TimerRequest

from functions.parsing.hub_events import parse_connection_log
from functions.worker import MalformedWorkMessage
from shared.domain.errors import (
    ConcurrencyError,
    DeviceDisallowedError,
    InvalidRequestError,
    NotFoundError,
    ServiceError,
    ThrottledError,
)
from shared.domain.messages import ReportedX509, parse_reported_x509, parse_rotate_message
from shared.domain.model import ConnectionFailure
from tests.functions.fakes import FakeRotation, user_function
from tests.support.connections_log import DOCUMENTED_SAMPLE, connect_error, envelope

pytestmark = pytest.mark.usefixtures("services")

THUMB = "ab" * 32
X509 = {
    "thumbprint": THUMB,
    "serialNumber": "1f",
    "notBefore": "2026-01-01T00:00:00Z",
    "notAfter": "2026-01-31T00:00:00Z",
}
CSR_PEM = "-----BEGIN CERTIFICATE REQUEST-----\nQUJD\n-----END CERTIFICATE REQUEST-----\n"


def parsed(device_id: str, section: dict[str, Any]) -> ReportedX509:
    """The report as the trigger parses it (once, before the service is called)."""
    return parse_reported_x509(device_id, section)


def twin_event(
    device_id: str | None,
    reported: dict[str, Any] | None,
    version: int | None = 7,
    *,
    seq: int = 0,
    via: str = "system",
    raw: bytes | None = None,
) -> func.EventHubEvent:
    body: dict[str, Any] = {}
    if version is not None:
        body["version"] = version
    if reported is not None:
        body["properties"] = {"reported": reported}
    meta = {}
    if via == "system" and device_id is not None:
        meta = {"connection-device-id": device_id, "message-source": "twinChangeEvents"}
    trigger_metadata = None
    if via == "properties" and device_id is not None:
        props = json.dumps({"deviceId": device_id, "opType": "updateTwin"})
        trigger_metadata = {"Properties": Datum(props, "json")}
    return func.EventHubEvent(
        body=raw if raw is not None else json.dumps(body).encode(),
        trigger_metadata=trigger_metadata,
        sequence_number=seq,
        iothub_metadata=meta,
    )


# --------------------------------------------------------------------------- twin_changes


def test_twin_changes_calls_service_per_x509_report(fake_rotation: FakeRotation) -> None:
    events = [
        twin_event("dev-1", {"x509": X509, "$version": 3}, 11),
        twin_event("dev-2", {"firmware": "1.2"}, 4),  # no x509: ignored
        twin_event("dev-3", {"x509": {**X509, "csr": {"requestId": "r1", "pem": CSR_PEM}}}, None),
        twin_event("dev-4", None, 2),  # tags change: no properties
        twin_event("dev-5", {"x509": None}, 9),  # x509 deleted: ignored
    ]
    user_function("twin_changes")(events)
    assert fake_rotation.calls == [
        ("on_twin_reported", ("dev-1", parsed("dev-1", X509), 11)),
        (
            "on_twin_reported",
            ("dev-3", parsed("dev-3", {**X509, "csr": {"requestId": "r1", "pem": CSR_PEM}}), None),
        ),
    ]


def test_twin_device_id_from_application_property(fake_rotation: FakeRotation) -> None:
    user_function("twin_changes")([twin_event("dev-9", {"x509": X509}, 5, via="properties")])
    assert fake_rotation.calls == [("on_twin_reported", ("dev-9", parsed("dev-9", X509), 5))]


def test_twin_device_id_from_properties_array_of_a_batch(fake_rotation: FakeRotation) -> None:
    props = json.dumps([{"deviceId": "dev-a"}, {"deviceId": "dev-b"}])
    metadata = {"PropertiesArray": Datum(props, "json")}
    events = [
        func.EventHubEvent(
            body=json.dumps({"version": i, "properties": {"reported": {"x509": X509}}}).encode(),
            trigger_metadata=metadata,
            sequence_number=i,
        )
        for i in range(2)
    ]
    user_function("twin_changes")(events)
    assert [c[1][0] for c in fake_rotation.calls] == ["dev-a", "dev-b"]


def test_twin_whole_routed_message_is_unwrapped(fake_rotation: FakeRotation) -> None:
    message = {
        "body": {"version": 3, "properties": {"reported": {"x509": X509, "$version": 2}}},
        "properties": {"hubName": "hub", "deviceId": "dev-7", "opType": "updateTwin"},
        "systemProperties": {"iothub-connection-device-id": "dev-7"},
    }
    event = func.EventHubEvent(body=json.dumps(message).encode())
    user_function("twin_changes")(event)  # one event, not a list
    assert fake_rotation.calls == [("on_twin_reported", ("dev-7", parsed("dev-7", X509), 3))]


@pytest.mark.parametrize(
    "bad",
    [
        twin_event("dev-x", {"x509": X509}, raw=b"{not json"),
        twin_event("dev-x", {"x509": X509}, raw=b"[]"),
        twin_event(None, {"x509": X509}),
        twin_event("bad id/with slash", {"x509": X509}),
        twin_event("dev-x", {"x509": "not-an-object"}),
        twin_event("dev-x", {"x509": X509}, raw=b'{"version": 1, "properties": []}'),
        twin_event("dev-x", {"x509": X509}, raw=b'{"properties": {"reported": 5}}'),
        twin_event("dev-x", {"x509": X509}, version="7"),  # type: ignore[arg-type]
    ],
    ids=["json", "array", "no-device", "bad-id", "x509-type", "props", "reported", "version"],
)
def test_bad_twin_message_does_not_stop_the_batch(
    bad: func.EventHubEvent, fake_rotation: FakeRotation, caplog: pytest.LogCaptureFixture
) -> None:
    events = [twin_event("dev-1", {"x509": X509}, 1), bad, twin_event("dev-2", {"x509": X509}, 2)]
    user_function("twin_changes")(events)
    assert [c[1][0] for c in fake_rotation.calls] == ["dev-1", "dev-2"]
    assert any("skipped event 1" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "error",
    [
        NotFoundError("no dev-1"),
        DeviceDisallowedError("dev-1"),
        InvalidRequestError("x", "y"),
        KeyError("bug"),
    ],
)
def test_permanent_service_error_skips_only_that_event(
    error: Exception, fake_rotation: FakeRotation
) -> None:
    fake_rotation.fail["on_twin_reported"] = lambda device_id, *_: (
        error if device_id == "dev-1" else None
    )
    user_function("twin_changes")(
        [twin_event("dev-1", {"x509": X509}), twin_event("dev-2", {"x509": X509})]
    )
    assert [c[1][0] for c in fake_rotation.calls] == ["dev-1", "dev-2"]


@pytest.mark.parametrize(
    "error",
    [ThrottledError("429", retry_after=3), ConcurrencyError("etag"), ServiceError("503", 503)],
)
def test_transient_error_reraises_for_retry(error: Exception, fake_rotation: FakeRotation) -> None:
    fake_rotation.fail["on_twin_reported"] = error
    with pytest.raises(type(error)):
        user_function("twin_changes")(
            [twin_event("dev-1", {"x509": X509}), twin_event("dev-2", {"x509": X509})]
        )
    assert fake_rotation.names() == ["on_twin_reported"]


# --------------------------------------------------------------------------- connection_failures


def record(
    device_id: str | None = "dev-1",
    result: str | int = "401003",
    *,
    category: str = "Connections",
    operation: str = "deviceConnect",
    as_string: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    """Microsoft's documented Connections record (tests/support/connections_log.py)."""
    rec = connect_error(device_id or "x", str(result))
    props = json.loads(rec["properties"])
    if device_id is None:
        del props["deviceId"]
    rec.update(
        category=category,
        operationName=operation,
        resultType=result,
        properties=json.dumps(props) if as_string else props,
    )
    rec.update(extra)
    return rec


def log_event(*records: Any, raw: bytes | None = None) -> func.EventHubEvent:
    body = raw if raw is not None else json.dumps({"records": list(records)}).encode()
    return func.EventHubEvent(
        body=body, enqueued_time=datetime(2026, 2, 3, 5, 0, tzinfo=UTC), sequence_number=1
    )


def failures(fake: FakeRotation) -> list[ConnectionFailure]:
    assert set(fake.names()) <= {"on_connection_failure"}
    return [args[0] for _, args in fake.calls]


def test_connection_failures_picks_401_and_403(fake_rotation: FakeRotation) -> None:
    event = log_event(
        record("dev-1"),
        record("dev-2", 403012, resultDescription="DeviceDisabled", as_string=False),
        record("dev-3", "404001"),  # other result: ignored
        record("dev-4", category="C2DCommands"),  # other category: ignored
        record("dev-5", operation="deviceDisconnect"),  # other operation: ignored
    )
    user_function("connection_failures")([event])
    got = failures(fake_rotation)
    assert [(f.device_id, f.code) for f in got] == [("dev-1", 401003), ("dev-2", 403012)]
    assert got[0].at == datetime(2026, 2, 3, 4, 5, 6, 123456, tzinfo=UTC)
    assert got[0].message == "IoTHubUnauthorized"


def test_the_documented_sample_is_read_and_ignored() -> None:
    """Microsoft's sample record (an informational connect) parses and is not a failure."""
    batch = parse_connection_log(json.dumps(DOCUMENTED_SAMPLE))
    assert (batch.failures, batch.problems, batch.ignored) == ([], [], 1)


def test_a_documented_401003_record_becomes_a_failure() -> None:
    batch = parse_connection_log(envelope(connect_error("dev-7")))
    [failure] = batch.failures
    assert (failure.device_id, failure.code, failure.message) == (
        "dev-7",
        401003,
        "IoTHubUnauthorized",
    )
    assert not hasattr(failure, "thumbprint")


def test_repeated_connects_of_a_device_in_one_event_are_one_failure(
    fake_rotation: FakeRotation,
) -> None:
    event = log_event(
        record("dev-1", time="2026-02-03T04:05:06Z"),
        record("dev-1", time="2026-02-03T04:05:09Z"),
        record("dev-1", time="2026-02-03T04:05:07Z"),
    )
    user_function("connection_failures")([event])
    [failure] = failures(fake_rotation)
    assert failure.at == datetime(2026, 2, 3, 4, 5, 9, tzinfo=UTC)


def test_connection_record_without_time_uses_enqueued_time(fake_rotation: FakeRotation) -> None:
    rec = record("dev-1")
    del rec["time"]
    user_function("connection_failures")([log_event(rec)])
    assert failures(fake_rotation)[0].at == datetime(2026, 2, 3, 5, 0, tzinfo=UTC)


def test_one_malformed_record_does_not_abort_the_batch(fake_rotation: FakeRotation) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    events = [
        log_event(
            record("dev-1", properties="[1]"),
            record("dev-2", properties=deep),
            record("dev-3"),
        ),
        log_event(raw=b'{"records": ' + deep.encode() + b"}"),
        log_event(record("dev-4")),
    ]
    user_function("connection_failures")(events)
    assert [f.device_id for f in failures(fake_rotation)] == ["dev-3", "dev-4"]


def test_bad_records_and_events_do_not_stop_the_others(
    fake_rotation: FakeRotation, caplog: pytest.LogCaptureFixture
) -> None:
    events = [
        log_event(raw=b"garbage"),
        log_event(raw=b'{"records": "nope"}'),
        log_event(
            record(None),  # no deviceId
            "not a record",
            record("bad id!/"),
            record("dev-1", properties="{broken"),
            record("dev-2", time="yesterday"),
            record("dev-3"),
        ),
        log_event(record("dev-4", 403012)),
    ]
    user_function("connection_failures")(events)
    assert [f.device_id for f in failures(fake_rotation)] == ["dev-3", "dev-4"]
    assert sum("skipped" in r.getMessage() for r in caplog.records) >= 7


def test_connection_failure_throttled_reraises(fake_rotation: FakeRotation) -> None:
    fake_rotation.fail["on_connection_failure"] = ThrottledError("429", 2)
    with pytest.raises(ThrottledError):
        user_function("connection_failures")([log_event(record("dev-1"), record("dev-2"))])
    assert len(fake_rotation.calls) == 1


def test_connection_failure_unknown_device_is_skipped(fake_rotation: FakeRotation) -> None:
    fake_rotation.known = {"dev-2"}
    user_function("connection_failures")([log_event(record("dev-1"), record("dev-2"))])
    assert [f.device_id for f in failures(fake_rotation)] == ["dev-1", "dev-2"]


# --------------------------------------------------------------------------- device_lifecycle


def grid_event(event_type: str, subject: str, data: Any, at: datetime | None) -> Any:
    return func.EventGridEvent(
        id="e1",
        data=data,
        topic="/subscriptions/x/iothubs/h",
        subject=subject,
        event_type=event_type,
        event_time=at,
        data_version="1",
    )


def test_device_connected_and_created(fake_rotation: FakeRotation) -> None:
    at = datetime(2026, 2, 1, 8, 0, tzinfo=UTC)
    fn = user_function("device_lifecycle")
    fn(
        grid_event(
            "Microsoft.Devices.DeviceConnected",
            "devices/dev-1",
            {"deviceId": "dev-1", "hubName": "h"},
            at,
        )
    )
    fn(grid_event("Microsoft.Devices.DeviceCreated", "devices/dev-2", {}, None))
    fn(
        grid_event(
            "Microsoft.Devices.DeviceDisconnected", "devices/dev-3", {"deviceId": "dev-3"}, at
        )
    )
    fn(grid_event("Microsoft.Devices.DeviceTelemetry", "devices/dev-4", {"deviceId": "dev-4"}, at))
    assert fake_rotation.calls == [
        ("on_device_connected", ("dev-1", at)),
        ("on_device_created", ("dev-2",)),
    ]


def test_device_connected_naive_time_is_utc(fake_rotation: FakeRotation) -> None:
    user_function("device_lifecycle")(
        grid_event(
            "Microsoft.Devices.DeviceConnected",
            "devices/dev-1",
            {"deviceId": "dev-1"},
            datetime(2026, 2, 1, 8, 0),
        )
    )
    at = fake_rotation.calls[0][1][1]
    assert at == datetime(2026, 2, 1, 8, 0, tzinfo=UTC)
    assert at.tzinfo is not None


@pytest.mark.parametrize(
    ("subject", "data"), [("devices/", {}), ("other", {}), ("devices/x", {"deviceId": "a b"})]
)
def test_lifecycle_without_device_is_skipped(
    subject: str, data: Any, fake_rotation: FakeRotation
) -> None:
    user_function("device_lifecycle")(
        grid_event("Microsoft.Devices.DeviceCreated", subject, data, None)
    )
    assert fake_rotation.calls == []


def test_lifecycle_transient_error_reraises(fake_rotation: FakeRotation) -> None:
    fake_rotation.fail["on_device_connected"] = ThrottledError("429")
    with pytest.raises(ThrottledError):
        user_function("device_lifecycle")(
            grid_event("Microsoft.Devices.DeviceConnected", "devices/d", {"deviceId": "d"}, None)
        )


# --------------------------------------------------------------------------- daily_sweep


@pytest.mark.parametrize("past_due", [False, True])
def test_daily_sweep_runs_sweep(past_due: bool, fake_rotation: FakeRotation) -> None:
    user_function("daily_sweep")(TimerRequest(past_due=past_due))
    assert fake_rotation.calls == [("sweep", (False, 100))]


def test_daily_sweep_throttled_propagates(fake_rotation: FakeRotation) -> None:
    fake_rotation.fail["sweep"] = ThrottledError("429")
    with pytest.raises(ThrottledError):
        user_function("daily_sweep")(TimerRequest())


# --------------------------------------------------------------------------- rotation_worker


def test_rotation_worker_passes_the_message(fake_rotation: FakeRotation) -> None:
    message = {"kind": "rotate", "deviceIds": ["a", "b"], "reason": "expiring"}
    user_function("rotation_worker")(func.QueueMessage(id="m1", body=json.dumps(message)))
    assert fake_rotation.calls == [("process_batch", (parse_rotate_message(message),))]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"{nope", "not UTF-8 JSON"),
        (b"\xff", "not UTF-8 JSON"),
        (b'["a"]', "not a JSON object: list"),
        (b"", "not UTF-8 JSON"),
    ],
)
def test_rotation_worker_malformed_raises_readable_reason(
    body: bytes, expected: str, fake_rotation: FakeRotation, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(MalformedWorkMessage) as info:
        user_function("rotation_worker")(func.QueueMessage(id="m9", body=body))
    assert "m9" in str(info.value)
    assert expected in str(info.value)
    assert fake_rotation.calls == []
    assert any(expected in r.getMessage() for r in caplog.records)


def test_rotation_worker_service_rejection_is_readable(fake_rotation: FakeRotation) -> None:
    fake_rotation.fail["process_batch"] = InvalidRequestError(
        "malformed_message", "'deviceIds' must be a list of device ids"
    )
    body = b'{"kind": "rotate", "deviceIds": ["a"]}'
    with pytest.raises(MalformedWorkMessage, match="'deviceIds' must be a list"):
        user_function("rotation_worker")(func.QueueMessage(id="m2", body=body))


def test_rotation_worker_throttled_propagates(fake_rotation: FakeRotation) -> None:
    fake_rotation.fail["process_batch"] = ThrottledError("429", 5)
    body = b'{"kind": "rotate", "deviceIds": ["a"]}'
    with pytest.raises(ThrottledError):
        user_function("rotation_worker")(func.QueueMessage(id="m3", body=body))

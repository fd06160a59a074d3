"""Who may speak for a device: module twins and module lifecycle events are ignored, and a
``replaceTwin`` (the whole twin) is read on purpose (iot-hub-non-telemetry-event-schema.md,
iot-hub-event-grid.md)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from azure.functions.meta import Datum

from functions.parsing.hub_events import parse_twin_change
from functions.parsing.lifecycle import parse_lifecycle
from tests.functions.fakes import FakeRotation, user_function

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("services")
X509 = {
    "thumbprint": "ab" * 32,
    "serialNumber": "1f",
    "notBefore": "2026-01-01T00:00:00Z",
    "notAfter": "2026-02-01T00:00:00Z",
}


def _event(body: dict[str, Any], system: dict[str, str], app: dict[str, str]) -> Any:
    return func.EventHubEvent(
        body=json.dumps(body).encode(),
        trigger_metadata={"Properties": Datum(json.dumps(app), "json")},
        iothub_metadata=system,
    )


def test_a_module_twin_change_does_not_speak_for_its_device(
    fake_rotation: FakeRotation,
) -> None:
    body = {"version": 4, "properties": {"reported": {"x509": X509}}}
    module_system = {"connection-device-id": "dev-1", "connection-module-id": "telemetry"}
    module_app = {"deviceId": "dev-1", "moduleId": "telemetry", "opType": "updateTwin"}
    events = [
        _event(body, module_system, module_app),
        _event(body, {"connection-device-id": "dev-1"}, {"deviceId": "dev-1", "moduleId": "m"}),
        _event(body, {"connection-device-id": "dev-1"}, {"deviceId": "dev-1",
                                                         "opType": "updateTwin"}),
    ]
    user_function("twin_changes")(events)
    assert [name for name, _ in fake_rotation.calls] == ["on_twin_reported"]


def test_replace_twin_carries_the_whole_twin_and_is_read_on_purpose() -> None:
    whole = {
        "deviceId": "dev-1",
        "etag": "AAAAAAAAAAE=",
        "version": 9,
        "status": "enabled",
        "tags": {"site": "a"},
        "properties": {
            "desired": {"x509": {"renewal": None}, "$version": 3},
            "reported": {"x509": X509, "$version": 5},
        },
    }
    report = parse_twin_change(
        json.dumps(whole), {"connection-device-id": "dev-1"}, {"opType": "replaceTwin"}
    )
    assert report is not None
    assert report.device_id == "dev-1"
    assert report.twin_version == 9
    assert report.report.certificate is not None


def test_an_unknown_op_type_is_ignored() -> None:
    body = json.dumps({"version": 1, "properties": {"reported": {"x509": X509}}})
    assert parse_twin_change(body, {"connection-device-id": "d"}, {"opType": "deleteTwin"}) is None


@pytest.mark.parametrize(
    ("subject", "data"),
    [
        ("devices/dev-1/modules/m1", {"deviceId": "dev-1", "moduleId": "m1"}),
        ("devices/dev-1", {"deviceId": "dev-1", "moduleId": "m1"}),
        ("devices/dev-1/modules/m1", {"deviceId": "dev-1"}),
    ],
)
def test_module_lifecycle_events_are_ignored(subject: str, data: dict[str, str]) -> None:
    at = datetime(2026, 3, 1, tzinfo=UTC)
    for kind in ("Microsoft.Devices.DeviceConnected", "Microsoft.Devices.DeviceCreated"):
        assert parse_lifecycle(kind, subject, data, at) is None
    device = parse_lifecycle(
        "Microsoft.Devices.DeviceConnected", "devices/dev-1", {"deviceId": "dev-1",
                                                                "moduleId": ""}, at
    )
    assert device is not None


def test_the_route_takes_device_twins_only() -> None:
    text = (ROOT / "infra" / "modules" / "iothub.bicep").read_text()
    assert "condition: 'NOT is_defined($connectionModuleId)'" in text

"""DeviceConnected/DeviceDisconnected as IoT Hub documents them (iot-hub-event-grid.md):
reported only for a device that subscribed to cloud-to-device messages or sent telemetry,
published as a periodic (60 s) snapshot of connection state -- late, and a connect and
disconnect within one period not at all."""

from __future__ import annotations

from datetime import timedelta

import pytest

from local.emulator import LIFECYCLE, FleetEmulator
from shared.clock import ManualClock
from shared.domain.model import AuthType, DeviceIdentity
from tests.emulator.conftest import T0
from tests.emulator.support import RecordingHandler, self_signed, thumbprint


@pytest.fixture
def snap() -> tuple[FleetEmulator, ManualClock]:
    clock = ManualClock(T0 + timedelta(seconds=5))
    emu = FleetEmulator(clock, enforce_limits=False, connection_events="snapshot")
    for device_id in ("dev-1", "dev-2"):
        cert = self_signed(device_id, T0)
        emu.hub.create_device(
            DeviceIdentity(device_id, auth_type=AuthType.SELF_SIGNED,
                           primary_thumbprint=thumbprint(cert))
        )
        emu.__dict__.setdefault("certs", {})[device_id] = cert
    emu.events.drain(LIFECYCLE)
    return emu, clock


def _kinds(emu: FleetEmulator) -> list[tuple[str, str]]:
    return [(e["eventType"].rsplit(".", 1)[1], e["data"]["deviceId"])
            for e in emu.events.drain(LIFECYCLE)]


def test_connected_is_published_late_and_only_for_an_active_device(
    snap: tuple[FleetEmulator, ManualClock],
) -> None:
    emu, clock = snap
    certs = emu.__dict__["certs"]
    active = emu.connect("dev-1", [certs["dev-1"]], RecordingHandler())
    emu.connect("dev-2", [certs["dev-2"]], RecordingHandler())  # never subscribes
    active.subscribe_c2d()
    emu.run_due_jobs()
    assert _kinds(emu) == []  # not at connect time
    clock.advance(60)
    emu.run_due_jobs()
    assert _kinds(emu) == [("DeviceConnected", "dev-1")]
    clock.advance(600)
    emu.run_due_jobs()
    assert _kinds(emu) == []  # dev-2 never becomes reportable


def test_a_short_connection_within_one_period_is_not_reported(
    snap: tuple[FleetEmulator, ManualClock],
) -> None:
    emu, clock = snap
    session = emu.connect("dev-1", [emu.__dict__["certs"]["dev-1"]], RecordingHandler())
    session.send_telemetry({"t": 1})
    session.disconnect()
    clock.advance(60)
    emu.run_due_jobs()
    assert _kinds(emu) == []


def test_immediate_mode_is_unchanged_and_the_mode_is_checked() -> None:
    with pytest.raises(ValueError, match="connection_events"):
        FleetEmulator(ManualClock(T0), connection_events="sometimes")

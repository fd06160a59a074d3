"""The triggers read the payloads the local fleet emulator produces, as the dev host feeds them."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from local.devhost import to_eventgrid_event, to_eventhub_event
from local.emulator import CONNECTIONS, LIFECYCLE, TWIN_CHANGES, FleetEmulator, HubConnectError
from shared.clock import ManualClock
from shared.domain.messages import parse_reported_x509
from shared.domain.model import AuthType, DeviceIdentity
from tests.functions.fakes import FakeRotation, user_function

pytestmark = pytest.mark.usefixtures("services")

NOW = datetime(2026, 3, 1, tzinfo=UTC)


def self_signed(cn: str) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )


def thumb(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


class Quiet:
    def on_desired(self, patch: dict[str, Any], version: int) -> None:
        return None

    def on_method(self, name: str, payload: Any) -> tuple[int, Any]:
        return 200, None


@pytest.fixture
def emulator() -> FleetEmulator:
    return FleetEmulator(ManualClock(NOW), enforce_limits=False)


def test_unauthorized_connect_reaches_reconcile_with_the_device_id_only(
    emulator: FleetEmulator, fake_rotation: FakeRotation
) -> None:
    enrolled, presented = self_signed("dev-1"), self_signed("dev-1")
    emulator.hub.create_device(
        DeviceIdentity("dev-1", auth_type=AuthType.SELF_SIGNED, primary_thumbprint=thumb(enrolled))
    )
    with pytest.raises(HubConnectError):
        emulator.connect("dev-1", [presented], Quiet())
    logs = emulator.events.drain(CONNECTIONS)
    assert len(logs) == 1
    user_function("connection_failures")([to_eventhub_event({"body": logs[0]})])
    [(name, (failure,))] = fake_rotation.calls
    assert name == "on_connection_failure"
    assert failure.device_id == "dev-1"
    assert failure.code == 401003
    assert not hasattr(failure, "thumbprint")
    assert thumb(presented) not in str(logs[0]).lower()
    assert failure.at == NOW


def test_reported_x509_and_connect_events_reach_the_service(
    emulator: FleetEmulator, fake_rotation: FakeRotation
) -> None:
    cert = self_signed("dev-2")
    emulator.hub.create_device(
        DeviceIdentity("dev-2", auth_type=AuthType.SELF_SIGNED, primary_thumbprint=thumb(cert))
    )
    session = emulator.connect("dev-2", [cert], Quiet())
    report = {
        "thumbprint": thumb(cert),
        "serialNumber": format(cert.serial_number, "x"),
        "notBefore": "2026-02-28T00:00:00Z",
        "notAfter": "2026-03-31T00:00:00Z",
    }
    session.report({"x509": report})
    session.report({"firmware": "1.0"})
    messages = emulator.events.drain(TWIN_CHANGES)
    assert len(messages) == 2
    user_function("twin_changes")([to_eventhub_event(m, i) for i, m in enumerate(messages)])
    twin_calls = [args for name, args in fake_rotation.calls if name == "on_twin_reported"]
    assert len(twin_calls) == 1
    device_id, x509_section, version = twin_calls[0]
    assert device_id == "dev-2"
    assert x509_section == parse_reported_x509("dev-2", report)
    assert isinstance(version, int)
    for event in emulator.events.drain(LIFECYCLE):
        user_function("device_lifecycle")(to_eventgrid_event(event))
    assert ("on_device_connected", ("dev-2", NOW)) in fake_rotation.calls

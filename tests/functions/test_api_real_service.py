"""devices_api over the real rotation service, memory stores and the fleet emulator."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from local.emulator import FleetEmulator
from shared.adapters.memory import MemoryAuditLog, MemoryRotationStore
from shared.bootstrap import Services, override_services
from shared.clock import ManualClock
from shared.domain.model import AuthType, DeviceIdentity, DeviceStatus, RotationState
from shared.settings import Settings
from tests.functions.fakes import http_request, principal_header, user_function
from tests.support.pki import make_test_authority

NOW = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture
def real() -> Iterator[Services]:
    clock = ManualClock(NOW)
    emulator = FleetEmulator(clock, enforce_limits=False)
    emulator.hub.create_device(
        DeviceIdentity("dev-1", auth_type=AuthType.SELF_SIGNED, primary_thumbprint="ab" * 32)
    )
    services = Services(
        Settings.from_env({"CERTROLL_STORAGE": "memory"}),
        clock=clock,
        enrollments=emulator.dps,
        registry=emulator.hub,
        authority=make_test_authority(now=NOW),
    )
    services.__dict__["emulator"] = emulator
    with override_services(services):
        yield services


def call(method: str, device_id: str, action: str | None = None, **kw: Any) -> Any:
    kw.setdefault("principal", principal_header("erin@example.com"))
    return user_function("devices_api")(http_request(method, device_id, action, **kw))


def test_refused_calls_change_nothing(real: Services) -> None:
    audit: MemoryAuditLog = real.audit  # type: ignore[assignment]
    state: MemoryRotationStore = real.state  # type: ignore[assignment]
    assert (
        call("POST", "dev-1", "disallow", body={"reason": "x"}, principal=None).status_code == 401
    )
    assert (
        call(
            "POST", "dev-1", "disallow", body={"reason": "x"}, principal=principal_header(roles=())
        ).status_code
        == 403
    )
    assert call("POST", "dev-1", "disallow", body={"reason": ""}).status_code == 400
    assert call("POST", "dev-1", "renew", body=b"{").status_code == 400
    assert list(state.list()) == []
    assert real.registry.get_device("dev-1").status is DeviceStatus.ENABLED
    assert [e.outcome for e in audit.list()] == ["rejected"] * 4
    assert {e.detail["status"] for e in audit.list()} == {400, 401, 403}


def test_unknown_device_is_404(real: Services) -> None:
    resp = call("GET", "nobody")
    assert resp.status_code == 404
    assert json.loads(resp.get_body())["error"]["code"] == "not_found"


def test_disallow_through_the_api(real: Services) -> None:
    resp = call("POST", "dev-1", "disallow", body={"reason": "reported stolen"})
    assert resp.status_code == 200, resp.get_body()
    doc = json.loads(resp.get_body())
    assert doc["deviceId"] == "dev-1"
    assert doc["hubIdentity"] == "disabled"
    record = real.state.get("dev-1")
    assert record is not None
    assert record.state is RotationState.DISALLOWED
    assert record.disallowed_by == "erin@example.com"
    assert record.disallowed_reason == "reported stolen"
    assert real.registry.get_device("dev-1").status is DeviceStatus.DISABLED
    status = call("GET", "dev-1")
    assert status.status_code == 200
    assert json.loads(status.get_body())["rotation"]["state"] == "disallowed"
    renew = call("POST", "dev-1", "renew")
    assert renew.status_code == 409
    assert json.loads(renew.get_body())["error"]["code"] == "device_disallowed"

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jsonschema import Draft202012Validator

from local.device.agent import DeviceAgent
from local.emulator import FleetEmulator
from shared.clock import ManualClock
from tests.device.pki import TestPki, device_credentials
from tests.device.service import ServiceDouble

SCHEMA_PATH = (
    Path(__file__).resolve().parents[2] / "docs" / "schemas" / "device-contract.schema.json"
)
START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="session")
def contract_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


@pytest.fixture(scope="session")
def validator_for(contract_schema: dict[str, Any]) -> Callable[[str], Draft202012Validator]:
    def make(name: str) -> Draft202012Validator:
        assert name in contract_schema["$defs"], name
        return Draft202012Validator({**contract_schema, "$ref": f"#/$defs/{name}"})

    return make


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture(scope="session")
def pki() -> TestPki:
    return TestPki.create(START)


@pytest.fixture
def emulator(clock: ManualClock) -> FleetEmulator:
    return FleetEmulator(clock, enforce_limits=False)


@pytest.fixture
def service(emulator: FleetEmulator, pki: TestPki) -> ServiceDouble:
    return ServiceDouble(emulator, pki)


@pytest.fixture
def new_agent(
    emulator: FleetEmulator, pki: TestPki, service: ServiceDouble
) -> Callable[..., DeviceAgent]:
    """An enrolled (individual enrollment, primary slot) but not yet started device."""

    def make(device_id: str = "dev-1", **kwargs: Any) -> DeviceAgent:
        key, chain = device_credentials(pki, device_id, emulator.clock.now())
        service.enroll(device_id, chain[0])
        return DeviceAgent(device_id, emulator, key, chain, pki.root, **kwargs)

    return make


@pytest.fixture
def agent(new_agent: Callable[..., DeviceAgent]) -> DeviceAgent:
    a = new_agent()
    assert a.start()
    return a


def other_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())

"""The JSON Schema of the device contract, checked against what the agent really does."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from local.device import contract
from local.device.agent import DeviceAgent
from local.emulator import FleetEmulator
from tests.device.service import ServiceDouble

Validators = Callable[[str], Draft202012Validator]


class RecordingSession:
    """Wraps a device session to keep every reported patch the agent sends."""

    def __init__(self, inner: Any, sink: list[dict[str, Any]]) -> None:
        self.inner = inner
        self.sink = sink

    @property
    def connected(self) -> bool:
        return bool(self.inner.connected)

    def report(self, patch: dict[str, Any]) -> int:
        self.sink.append(copy.deepcopy(patch))
        return int(self.inner.report(patch))

    def get_twin(self) -> Any:
        return self.inner.get_twin()

    def disconnect(self) -> None:
        self.inner.disconnect()

    def subscribe_c2d(self) -> None:
        self.inner.subscribe_c2d()


class RecordingFleet:
    def __init__(self, emulator: FleetEmulator) -> None:
        self.inner = emulator
        self.clock = emulator.clock
        self.patches: list[dict[str, Any]] = []

    def register(self, registration_id: str, chain: Any) -> Any:
        return self.inner.register(registration_id, chain)

    def connect(self, device_id: str, chain: Any, handler: Any) -> RecordingSession:
        return RecordingSession(self.inner.connect(device_id, chain, handler), self.patches)


def test_schema_is_valid_draft_2020_12(contract_schema: dict[str, Any]) -> None:
    Draft202012Validator.check_schema(contract_schema)
    assert contract_schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_schema_enums_match_the_code(contract_schema: dict[str, Any]) -> None:
    defs = contract_schema["$defs"]
    assert set(defs["reason"]["enum"]) == contract.REASONS
    assert set(defs["keyAlgorithm"]["enum"]) == set(contract.KEY_ALGORITHMS)
    assert set(defs["errorCode"]["enum"]) == contract.ERROR_CODES
    assert set(defs["reportedRenewal"]["properties"]["status"]["enum"]) == (
        contract.RENEWAL_STATUSES
    )


def _drive_every_phase(
    fleet: RecordingFleet, service: ServiceDouble, pki_agent: Callable[..., DeviceAgent]
) -> tuple[DeviceAgent, list[dict[str, Any]], list[Any]]:
    """Start, answer a renewal, refuse a bad delivery, fail an unsupported algorithm, install
    a good certificate; returns the agent, the twin's x509 after each phase, and the method
    answers."""
    agent = pki_agent(fleet)
    twins: list[dict[str, Any]] = []
    answers: list[Any] = []
    assert agent.start()
    twins.append(service.reported_x509("dev-1"))
    service.ask_renewal("dev-1", "req-0", "dsa-1024")
    agent.step()
    twins.append(service.reported_x509("dev-1"))
    service.ask_renewal("dev-1", "req-1", "ec-p384")
    agent.step()
    twins.append(service.reported_x509("dev-1"))
    leaf, pem = service.sign("dev-1", "req-1")
    service.put_in_free_slot("dev-1", leaf)
    service.deliver("dev-1", "req-1", pem, "2030-01-01T00:00:00Z")  # wrong notAfter: refused
    agent.step()
    twins.append(service.reported_x509("dev-1"))
    service.deliver("dev-1", "req-1", pem)
    agent.step()
    answer = service.reprovision("dev-1", "req-1")
    answers.append(answer.payload)
    agent.step()
    twins.append(service.reported_x509("dev-1"))
    answers.append(service.emulator.hub.invoke_method("dev-1", "reprovision", {}).payload)
    return agent, twins, answers


@pytest.fixture
def phases(
    emulator: FleetEmulator, service: ServiceDouble, new_agent: Callable[..., DeviceAgent]
) -> tuple[DeviceAgent, list[dict[str, Any]], list[Any], list[dict[str, Any]]]:
    fleet = RecordingFleet(emulator)
    made: list[DeviceAgent] = []

    def make(f: RecordingFleet) -> DeviceAgent:
        base = new_agent()
        agent = DeviceAgent("dev-1", f, base._key, base.chain, base.trust_anchor)  # type: ignore[arg-type]
        made.append(agent)
        return agent

    agent, twins, answers = _drive_every_phase(fleet, service, make)
    return agent, twins, answers, fleet.patches


def test_reported_x509_in_every_phase_follows_the_schema(
    phases: tuple[DeviceAgent, list[dict[str, Any]], list[Any], list[dict[str, Any]]],
    validator_for: Validators,
) -> None:
    agent, twins, _, _ = phases
    validator = validator_for("reportedX509")
    for twin in twins:
        validator.validate(twin)
    # the phases really happened
    assert [t.get("renewal", {}).get("status") for t in twins] == [
        None,
        "failed",
        "failed",
        "failed",
        "installed",
    ]
    assert "csr" in twins[2]
    assert twins[3]["renewal"]["errorCode"] == "certificate_malformed"
    assert twins[4]["thumbprint"] == contract.thumbprint(agent.certificate)


def test_every_reported_patch_follows_the_patch_schema(
    phases: tuple[DeviceAgent, list[dict[str, Any]], list[Any], list[dict[str, Any]]],
    validator_for: Validators,
) -> None:
    _, _, _, patches = phases
    validator = validator_for("reportedX509Patch")
    assert len(patches) >= 5
    for patch in patches:
        assert set(patch) == {"x509"}
        validator.validate(patch["x509"])


def test_method_answers_follow_the_schema(
    phases: tuple[DeviceAgent, list[dict[str, Any]], list[Any], list[dict[str, Any]]],
    validator_for: Validators,
) -> None:
    _, _, answers, _ = phases
    validator = validator_for("reprovisionResponse")
    accepted, refused = answers
    validator.validate(accepted)
    validator.validate(refused)
    assert accepted == {"requestId": "req-1", "accepted": True}
    assert refused["accepted"] is False


def test_service_payloads_of_the_tests_follow_the_schema(
    service: ServiceDouble, agent: DeviceAgent, validator_for: Validators
) -> None:
    renewal = service.ask_renewal("dev-1", "req-1")
    agent.step()
    _, pem = service.sign("dev-1", "req-1")
    issued = service.deliver("dev-1", "req-1", pem)
    validator_for("desiredX509").validate({"renewal": renewal, "issued": issued})
    validator_for("desiredX509").validate({"renewal": None, "issued": None})
    validator_for("reprovisionRequest").validate({"requestId": "req-1"})


GOOD_REPORTED = {
    "thumbprint": "0" * 64,
    "serialNumber": "1f",
    "notBefore": "2026-01-01T00:00:00Z",
    "notAfter": "2026-02-01T00:00:00Z",
}


@pytest.mark.parametrize(
    ("name", "document"),
    [
        ("reportedX509", {**GOOD_REPORTED, "thumbprint": "A" * 64}),
        ("reportedX509", {**GOOD_REPORTED, "thumbprint": "0" * 40}),
        ("reportedX509", {**GOOD_REPORTED, "serialNumber": "01f"}),
        ("reportedX509", {**GOOD_REPORTED, "serialNumber": "1F"}),
        ("reportedX509", {**GOOD_REPORTED, "notAfter": "2026-02-01T00:00:00+00:00"}),
        ("reportedX509", {**GOOD_REPORTED, "notAfter": "2026-02-01T00:00:00.123Z"}),
        ("reportedX509", {**GOOD_REPORTED, "extra": 1}),
        ("reportedX509", {k: v for k, v in GOOD_REPORTED.items() if k != "notBefore"}),
        ("reportedX509", {**GOOD_REPORTED, "csr": {"requestId": "r", "pem": "not a csr"}}),
        (
            "reportedX509",
            {**GOOD_REPORTED, "renewal": {"requestId": "r", "status": "failed"}},
        ),
        (
            "reportedX509",
            {**GOOD_REPORTED, "renewal": {"requestId": "r", "status": "done"}},
        ),
        (
            "reportedX509",
            {
                **GOOD_REPORTED,
                "renewal": {"requestId": "r", "status": "installed", "error": "x"},
            },
        ),
        ("reportedX509Patch", {"thumbprint": "0" * 64}),
        ("desiredX509", {"renewal": {"requestId": "r", "reason": "because"}}),
        (
            "desiredX509",
            {"renewal": {"requestId": "r", "reason": "manual", "keyAlgorithm": "dsa-1024"}},
        ),
        ("desiredX509", {"issued": {"requestId": "r", "certificate": "x", "notAfter": "soon"}}),
        ("desiredX509", {"other": {}}),
        ("reprovisionRequest", {}),
        ("reprovisionRequest", {"requestId": "with space"}),
        ("reprovisionResponse", {"accepted": True}),
        ("reprovisionResponse", {"accepted": False}),
    ],
)
def test_schema_rejects_what_the_contract_forbids(
    validator_for: Validators, name: str, document: dict[str, Any]
) -> None:
    assert not validator_for(name).is_valid(document)


def test_schema_accepts_the_minimal_good_documents(validator_for: Validators) -> None:
    assert validator_for("reportedX509").is_valid(GOOD_REPORTED)
    assert validator_for("reportedX509").is_valid({**GOOD_REPORTED, "serialNumber": "0"})
    assert validator_for("reportedX509Patch").is_valid({"csr": None})
    assert validator_for("desiredX509").is_valid({})

"""The fault plan is reproducible from its seed and counts what it injects; the fault
wrappers raise the adapters' own typed errors."""

from __future__ import annotations

import pytest

from local.soak.plan import FaultPlan, FaultRates, all_kinds
from local.soak.ports import (
    FaultyPort,
    KillSwitch,
    WorkerKilled,
    fleet_error,
    signing_error,
    storage_error,
)
from shared.domain.errors import ServiceError, SigningError, ThrottledError


def _faults(seed: int) -> list[tuple[str, bool] | None]:
    plan = FaultPlan(seed, FaultRates(dps_call=0.3))
    return [plan.port_fault("dps", f"get/dev-{i % 7}") for i in range(200)]


def test_the_same_seed_gives_the_same_faults() -> None:
    assert _faults(7) == _faults(7)
    assert _faults(7) != _faults(8)


def test_every_fault_is_counted_under_its_kind() -> None:
    plan = FaultPlan(3, FaultRates(dps_call=0.5))
    struck = [f for i in range(400) if (f := plan.port_fault("dps", f"s{i}")) is not None]
    counts = plan.injected()
    assert set(counts) == set(all_kinds())
    assert sum(counts[f"dps_{k}"] for k in ("429", "500", "503", "timeout", "reset")) == len(struck)


@pytest.mark.parametrize(
    ("fault", "error", "status"),
    [
        ("429", ThrottledError, None),
        ("503", ThrottledError, None),
        ("500", ServiceError, 500),
        ("timeout", ServiceError, None),
        ("reset", ServiceError, None),
    ],
)
def test_fleet_and_storage_faults_are_the_adapters_errors(
    fault: str, error: type[Exception], status: int | None
) -> None:
    for made in (
        fleet_error("DPS", "get dev-1", fault, "5"),
        storage_error("get dev-1", fault, "5"),
    ):
        assert type(made) is error
        if status is not None:
            assert getattr(made, "status", None) == status
    throttled = fleet_error("DPS", "get dev-1", "429", "5")
    assert isinstance(throttled, ThrottledError)
    assert throttled.retry_after == 5.0  # parsed from the Retry-After header


def test_signing_faults_are_key_vault_errors() -> None:
    assert isinstance(signing_error("kv", "429", "2"), ThrottledError)
    for fault in ("500", "503", "timeout", "reset"):
        assert type(signing_error("kv", fault, "2")) is SigningError


class _Store:
    def __init__(self) -> None:
        self.writes: list[str] = []

    def put(self, name: str) -> str:
        self.writes.append(name)
        return name


def test_a_lost_response_may_leave_the_write_done() -> None:
    plan = FaultPlan(1, FaultRates(storage_call=1.0, response_lost=1.0))
    store = _Store()
    port = FaultyPort(store, "storage", plan, KillSwitch(), storage_error, lambda: True)
    applied = 0
    for i in range(50):
        with pytest.raises((ServiceError, ThrottledError)):
            port.put(f"x{i}")
        applied = len(store.writes)
    assert 0 < applied < 50  # only timed-out writes went through
    assert applied == plan.injected()["storage_timeout"]


def test_the_kill_switch_ends_the_invocation_after_its_count() -> None:
    plan = FaultPlan(1, FaultRates(storage_call=0.0))
    kill = KillSwitch()
    port = FaultyPort(_Store(), "storage", plan, kill, storage_error, lambda: True)
    kill.arm(2)
    port.put("a")
    port.put("b")
    with pytest.raises(WorkerKilled):
        port.put("c")
    port.put("d")  # disarmed once it fired


def test_the_signing_key_outage_starts_at_its_first_signature_and_lasts() -> None:
    from datetime import UTC, datetime, timedelta

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    from local.soak.ports import FaultySigningKey

    t0 = datetime(2026, 12, 1, tzinfo=UTC)
    now = [t0 - timedelta(minutes=1)]
    plan = FaultPlan(1, FaultRates(signing_key_call=0.0))
    key = FaultySigningKey(
        ec.generate_private_key(ec.SECP256R1()),
        plan,
        KillSwitch(),
        lambda: True,
        lambda: now[0],
        (t0, timedelta(minutes=20)),
    )
    key.sign(b"before", ec.ECDSA(hashes.SHA256()))
    now[0] = t0 + timedelta(hours=5)  # the clock jumped past the start
    with pytest.raises(SigningError):
        key.sign(b"out", ec.ECDSA(hashes.SHA256()))
    now[0] += timedelta(minutes=19)
    with pytest.raises(SigningError):
        key.sign(b"still out", ec.ECDSA(hashes.SHA256()))
    now[0] += timedelta(minutes=2)
    key.sign(b"back", ec.ECDSA(hashes.SHA256()))
    assert plan.injected()["signing_key_outage"] == 2

"""The dimensions each rotation counter carries (the alerts in docs/operations.md split
on them): why a rotation started, ended or failed, and what a reconcile decided."""

from __future__ import annotations

from shared.domain.commands import Disallow, StartRenewal, TwinReported
from shared.domain.model import ConnectionFailure, Trigger
from shared.metrics import CountingMetrics
from tests.unit.rotation.fakes import World
from tests.unit.rotation.test_flow import rotate


def test_counting_metrics_keep_each_set_of_dimensions_apart() -> None:
    metrics = CountingMetrics()
    metrics.increment("m", reason="a", code="x")
    metrics.increment("m", 2, code="x", reason="a")
    metrics.increment("m", reason="b")
    metrics.increment("other")
    assert metrics.counts == {"m": 4, "other": 1}
    assert metrics.dimensions("m") == {
        (("code", "x"), ("reason", "a")): 3,
        (("reason", "b"),): 1,
    }
    assert metrics.dimensions("other") == {(): 1}


def test_a_rotation_is_counted_by_its_reason(world: World) -> None:
    dev, svc = world.ready()
    rotate(svc, dev, Trigger.EXPIRING)
    assert world.metrics.dimensions("certroll.rotation_started") == {(("reason", "expiring"),): 1}
    assert world.metrics.dimensions("certroll.rotation_completed") == {(("reason", "expiring"),): 1}


def test_a_failed_rotation_is_counted_by_code_and_reason(world: World) -> None:
    dev, svc = world.ready()
    svc.start_renewal(StartRenewal("dev-1", Trigger.MANUAL, "op"))
    answer = dev.answer()
    assert answer is not None
    svc.on_twin_reported(TwinReported.parse("dev-1", answer))
    svc.on_twin_reported(TwinReported.parse("dev-1", dev.fail()))
    [(dims, count)] = world.metrics.dimensions("certroll.rotation_failed").items()
    assert count == 1
    assert dict(dims)["reason"] == "manual"
    assert dict(dims)["code"] == "registration_failed"


def _failure(world: World, device_id: str, code: int = 401003) -> ConnectionFailure:
    return ConnectionFailure(device_id=device_id, code=code, at=world.clock.now())


def test_each_reconcile_decision_is_counted_by_its_result(world: World) -> None:
    world.ready("dev-1")
    world.ready("dev-2")
    svc = world.service()
    svc.on_connection_failure(_failure(world, "ghost"))
    svc.on_connection_failure(_failure(world, "dev-1"))  # nothing to change
    svc.on_connection_failure(_failure(world, "dev-1", 403012))
    svc.disallow(Disallow("dev-2", "stolen", "ops"))
    svc.on_connection_failure(_failure(world, "dev-2"))
    assert world.metrics.dimensions("certroll.reconcile_refused") == {
        (("result", "unknown_device"),): 1,
        (("result", "device_disallowed"),): 1,
    }
    assert world.metrics.dimensions("certroll.reconcile") == {
        (("result", "already_consistent"),): 1,
        (("result", "disabled_device"),): 1,
    }
    world.enrollments.individual["dev-1"].primary = None
    svc.on_connection_failure(_failure(world, "dev-1"))
    svc.on_connection_failure(_failure(world, "dev-1"))  # within the interval: rate limited
    assert world.metrics.dimensions("certroll.reconcile")[(("result", "reconciled"),)] == 1
    assert world.metrics.counts["certroll.reconcile_rate_limited"] == 1

"""The counters a rotation leaves behind (shared.ports.Metrics), asserted by name."""

from __future__ import annotations

from shared.domain.commands import Disallow, StartRenewal, TwinReported
from shared.domain.model import Trigger
from tests.unit.rotation.fakes import World
from tests.unit.rotation.test_flow import adopt, rotate


def test_a_rotation_counts_one_start_and_one_completion(world: World) -> None:
    dev = world.add_device("dev-1")
    svc = world.service()
    adopt(svc, dev)
    before = dict(world.metrics.counts)
    rotate(svc, dev)
    counts = world.metrics.counts
    assert (
        counts.get("certroll.rotation_started", 0) - before.get("certroll.rotation_started", 0) == 1
    )
    assert (
        counts.get("certroll.rotation_completed", 0) - before.get("certroll.rotation_completed", 0)
        == 1
    )
    assert "certroll.rotation_failed" not in counts


def test_two_rotations_count_two_of_each(world: World) -> None:
    dev = world.add_device("dev-1")
    svc = world.service()
    adopt(svc, dev)
    rotate(svc, dev)
    rotate(svc, dev, Trigger.EXPIRING)
    assert world.metrics.counts["certroll.rotation_started"] == 2
    assert world.metrics.counts["certroll.rotation_completed"] == 2


def test_a_disallow_is_counted(world: World) -> None:
    dev = world.add_device("dev-1")
    svc = world.service()
    adopt(svc, dev)
    svc.disallow(Disallow("dev-1", "stolen", "ops"))
    assert world.metrics.counts["certroll.disallowed"] == 1
    assert "certroll.rotation_started" not in world.metrics.counts


def test_a_started_renewal_is_counted_before_the_device_answers(world: World) -> None:
    dev = world.add_device("dev-1")
    svc = world.service()
    adopt(svc, dev)
    svc.start_renewal(StartRenewal("dev-1", Trigger.MANUAL, "ops"))
    assert world.metrics.counts["certroll.rotation_started"] == 1
    assert "certroll.rotation_completed" not in world.metrics.counts
    answer = dev.answer()
    assert answer is not None
    svc.on_twin_reported(TwinReported.parse("dev-1", answer))
    assert "certroll.rotation_completed" not in world.metrics.counts

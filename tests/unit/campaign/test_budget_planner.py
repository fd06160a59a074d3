"""The budget planner's arithmetic, checked by hand against the documented limits."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shared.clock import ManualClock
from shared.domain.budget import (
    MEASURED_COST,
    Budget,
    Configuration,
    RotationCost,
    format_duration,
    hub_limits,
    limits,
    parse_cost_overrides,
    plan,
)
from shared.domain.budget_report import markdown_table

MILLION = 1_000_000
#: a rotation that spends only what cannot be avoided at the hub and in DPS
LEAN = MEASURED_COST.with_spend(hub_identity_ops=0.3, dps_service_ops=0.5, label="lean")


def test_s1x1_hub_identity_operations_bind_at_100_over_3_1() -> None:
    p = plan(Configuration("S1", 1, 1), MILLION, headroom=0.0)
    assert p.binding is Budget.HUB_IDENTITY_OPS
    assert p.bound_per_min == pytest.approx(100 / 3.1)  # 32.26/min
    assert round(p.bound_per_min) == 32
    # 1,000,000 / 32.26 = 31,000 min = 21.5 days (issue 18)
    assert p.eta_minutes_at_bound == pytest.approx(31_000)
    assert format_duration(p.eta_minutes_at_bound) == "21.5 d"


@pytest.mark.parametrize(("tier", "units"), [("S1", 10), ("S3", 1)])
def test_s1x10_and_s3x1_dps_service_operations_bind_at_1000_over_3_5(tier: str, units: int) -> None:
    p = plan(Configuration(tier, units, 1), MILLION, headroom=0.0)
    assert p.binding is Budget.DPS_SERVICE_OPS
    assert p.bound_per_min == pytest.approx(1000 / 3.5)  # 285.7/min
    assert round(p.bound_per_min) == 286
    assert p.eta_minutes_at_bound / 60 == pytest.approx(3500 / 60)  # 58.3 h
    assert format_duration(p.eta_minutes_at_bound) == "58.3 h"


def test_more_dps_instances_move_the_binding_budget_to_the_hub() -> None:
    # S1x10 with two DPS instances: DPS 2,000/3.5 = 571/min; hub 1,000/3.1 = 322.6/min
    p = plan(Configuration("S1", 10, 2), MILLION, headroom=0.0)
    assert p.binding is Budget.HUB_IDENTITY_OPS
    assert p.bound_per_min == pytest.approx(1000 / 3.1)
    # S3x1 with four: DPS 4,000/3.5 = 1,142.9/min, still below the hub's 5,000/3.1 = 1,613
    p = plan(Configuration("S3", 1, 4), MILLION, headroom=0.0)
    assert p.binding is Budget.DPS_SERVICE_OPS
    assert p.bound_per_min == pytest.approx(4000 / 3.5)


def test_dps_registrations_bound_a_lean_rotation_at_1000_per_min() -> None:
    p = plan(Configuration("S3", 1, 1), MILLION, LEAN, headroom=0.0)
    assert p.binding is Budget.DPS_REGISTRATIONS
    assert p.bound_per_min == pytest.approx(1000)
    # 1,000,000 devices at 1,000/min = 1,000 min = 16.7 h (issue 18)
    assert p.eta_minutes_at_bound == pytest.approx(1000)
    assert format_duration(p.eta_minutes_at_bound) == "16.7 h"


def test_headroom_keeps_every_budget_below_its_limit() -> None:
    p = plan(Configuration("S1", 1, 1), MILLION, headroom=0.2)
    assert p.bound_per_min == pytest.approx(100 / 3.1)
    assert p.pace_per_min == pytest.approx(0.8 * 100 / 3.1)
    assert p.eta_minutes == pytest.approx(MILLION / (0.8 * 100 / 3.1))
    for line in p.lines:
        assert line.share <= 0.8 + 1e-9
    assert p.line(Budget.HUB_IDENTITY_OPS).share == pytest.approx(0.8)
    # at the pace the hub sees 80 identity operations a minute of its 100
    assert p.line(Budget.HUB_IDENTITY_OPS).paced_per_min == pytest.approx(80)


def test_reduced_cost_after_bulk_enrollment_writes_and_no_identity_write() -> None:
    reduced = MEASURED_COST.without(Budget.HUB_IDENTITY_OPS, 1).batched(
        Budget.DPS_SERVICE_OPS, calls=1, per_call=10, label="reduced"
    )
    assert reduced[Budget.HUB_IDENTITY_OPS] == pytest.approx(2.1)
    assert reduced[Budget.DPS_SERVICE_OPS] == pytest.approx(2.6)  # 3.5 - 1 + 0.1
    s1 = plan(Configuration("S1", 1, 1), MILLION, reduced, headroom=0.0)
    assert s1.binding is Budget.HUB_IDENTITY_OPS
    assert s1.bound_per_min == pytest.approx(100 / 2.1)  # 47.6/min
    s3 = plan(Configuration("S3", 1, 1), MILLION, reduced, headroom=0.0)
    assert s3.binding is Budget.DPS_SERVICE_OPS
    assert s3.bound_per_min == pytest.approx(1000 / 2.6)  # 384.6/min
    with pytest.raises(ValueError, match="fewer than"):
        MEASURED_COST.batched(Budget.DPS_REGISTRATIONS, calls=2, per_call=10)


def test_hub_limits_per_tier_and_unit_as_documented() -> None:
    s1 = hub_limits("S1", 2)
    assert s1[Budget.HUB_IDENTITY_OPS].per_minute == 200  # 100/min/unit
    assert s1[Budget.HUB_TWIN_READS].per_minute == 6000  # 100/sec, not per unit
    assert s1[Budget.HUB_TWIN_UPDATES].per_minute == 3000  # 50/sec
    assert s1[Budget.HUB_DIRECT_METHODS].per_minute == 2 * 40 * 60  # 160 KB/s/unit ÷ 4 KB
    assert s1[Budget.HUB_QUERIES].per_minute == 40  # 20/min/unit
    assert s1[Budget.HUB_JOB_DEVICE_OPS].per_minute == 600  # 10/sec
    assert s1[Budget.HUB_CONCURRENT_JOBS].per_minute == 1
    s2 = hub_limits("S2", 20)
    assert s2[Budget.HUB_TWIN_READS].per_minute == 200 * 60  # higher of 100/s or 10/s/unit
    assert s2[Budget.HUB_TWIN_UPDATES].per_minute == 100 * 60  # higher of 50/s or 5/s/unit
    assert s2[Budget.HUB_DIRECT_METHODS].per_minute == 20 * 120 * 60  # 480 KB/s/unit ÷ 4 KB
    assert s2[Budget.HUB_JOB_DEVICE_OPS].per_minute == 20 * 60  # higher of 10/s or 1/s/unit
    assert s2[Budget.HUB_CONCURRENT_JOBS].per_minute == 5
    s3 = hub_limits("S3", 2)
    assert s3[Budget.HUB_IDENTITY_OPS].per_minute == 10_000  # 5,000/min/unit
    assert s3[Budget.HUB_TWIN_READS].per_minute == 2 * 500 * 60
    assert s3[Budget.HUB_TWIN_UPDATES].per_minute == 2 * 250 * 60
    assert s3[Budget.HUB_DIRECT_METHODS].per_minute == 2 * 6144 * 60  # 24 MB/s/unit ÷ 4 KB
    assert s3[Budget.HUB_QUERIES].per_minute == 2000
    assert s3[Budget.HUB_JOB_DEVICE_OPS].per_minute == 2 * 50 * 60
    assert s3[Budget.HUB_CONCURRENT_JOBS].per_minute == 10
    assert hub_limits("free", 1)[Budget.HUB_IDENTITY_OPS].per_minute == 100


def test_signing_and_storage_limits() -> None:
    kv = limits(Configuration(signing="key-vault", signing_units=2))
    assert kv[Budget.SIGNATURES].per_minute == 2 * 2000 * 6  # 2,000 per 10 s per vault
    hsm = limits(Configuration(signing="managed-hsm", curve="P-384"))
    assert hsm[Budget.SIGNATURES].per_minute == 160 * 60  # one partition, P-384
    assert Budget.SIGNATURES not in limits(Configuration(signing="none"))
    assert kv[Budget.STORAGE_REQUESTS].per_minute == 20_000 * 60
    # a budget without a documented limit does not bound the plan
    p = plan(Configuration(signing="none"), 10, headroom=0.0)
    assert all(line.budget is not Budget.SIGNATURES for line in p.lines)


def test_signing_binds_when_the_fleet_side_is_not_the_limit() -> None:
    # a Managed HSM partition signs 160 P-384/s = 9,600/min; S3x10 with 20 DPS instances
    # and a lean rotation would allow 20,000/min elsewhere
    p = plan(
        Configuration("S3", 10, 20, signing="managed-hsm"),
        MILLION,
        LEAN.with_spend(storage_requests=1.0),
        headroom=0.0,
    )
    assert p.binding is Budget.SIGNATURES
    assert p.bound_per_min == pytest.approx(9600)


def test_invalid_configurations_are_refused() -> None:
    with pytest.raises(ValueError, match="tier"):
        Configuration("S9")
    with pytest.raises(ValueError, match="at least 1"):
        Configuration("S1", 0)
    with pytest.raises(ValueError, match="free hub"):
        Configuration("F1", 2)
    with pytest.raises(ValueError, match="headroom"):
        plan(Configuration(), 1, headroom=1.0)
    with pytest.raises(ValueError, match="no budget"):
        plan(Configuration(signing="none"), 1, RotationCost({Budget.SIGNATURES: 1}))
    with pytest.raises(ValueError, match="count"):
        RotationCost({Budget.HUB_CONCURRENT_JOBS: 1})
    with pytest.raises(ValueError, match="finite"):
        RotationCost({Budget.HUB_QUERIES: -1})


def test_cost_overrides_parse() -> None:
    cost = parse_cost_overrides(["hub.identity_operations=2.1", "dps.service_operations=0"])
    assert cost[Budget.HUB_IDENTITY_OPS] == 2.1
    assert cost[Budget.DPS_SERVICE_OPS] == 0
    assert cost[Budget.STORAGE_REQUESTS] == 18.3
    assert cost.label == "custom"
    assert parse_cost_overrides([]).label == "measured"
    with pytest.raises(ValueError, match="unknown budget"):
        parse_cost_overrides(["hub.nothing=1"])
    with pytest.raises(ValueError, match="BUDGET=OPS"):
        parse_cost_overrides(["hub.identity_operations"])


def test_pacer_admits_at_the_planned_pace() -> None:
    clock = ManualClock(datetime(2026, 12, 6, tzinfo=UTC))
    p = plan(Configuration("S1", 1, 1), MILLION, headroom=0.1)  # pace 29.03/min
    spec = p.pacer(burst_seconds=10)
    ids = {b.budget: b for b in spec.buckets}
    assert ids[Budget.HUB_IDENTITY_OPS].rate_per_min == pytest.approx(90)
    assert ids[Budget.HUB_IDENTITY_OPS].burst == pytest.approx(15)  # 1.5/s for 10 s
    assert ids[Budget.HUB_QUERIES].burst == pytest.approx(3)  # 18/min for 10 s
    tight = {b.budget: b for b in p.pacer(burst_seconds=0.1).buckets}
    assert tight[Budget.HUB_IDENTITY_OPS].burst == pytest.approx(3.1)  # one rotation at least
    assert tight[Budget.HUB_QUERIES].burst == 1  # and never less than one token
    pacer = spec.build(clock)
    admitted = 0
    for _ in range(60 * 60):  # one minute in 1/60 s steps
        if pacer.try_admit() == 0.0:
            admitted += 1
        clock.advance(1 / 60)
    # a full burst (15 / 3.1 = 4 rotations) plus 90 identity operations a minute / 3.1
    assert admitted == math.floor((15 + 90) / 3.1)
    wait = pacer.try_admit()
    assert wait > 0


def test_performance_doc_carries_the_planner_table() -> None:
    doc = (Path(__file__).parents[3] / "docs" / "performance.md").read_text()
    from shared.domain.budget_report import DOC_COSTS

    assert markdown_table(costs=DOC_COSTS) in doc


def test_the_campaign_cost_lets_registrations_bind_on_s3x1_with_one_dps_instance() -> None:
    from shared.domain.budget import CAMPAIGN_COST, CAMPAIGN_COST_BULK_PER_ITEM

    # bulk calls counted as one operation: under one DPS operation a rotation
    p = plan(Configuration("S3", 1, 1), MILLION, CAMPAIGN_COST)
    assert CAMPAIGN_COST[Budget.DPS_SERVICE_OPS] < 1.0
    assert p.binding is Budget.DPS_REGISTRATIONS
    assert p.bound_per_min == pytest.approx(1000.0)
    # counted per enrollment (not documented either way): DPS service operations bind
    q = plan(Configuration("S3", 1, 1), MILLION, CAMPAIGN_COST_BULK_PER_ITEM)
    assert q.binding is Budget.DPS_SERVICE_OPS
    assert q.bound_per_min == pytest.approx(
        1000 / CAMPAIGN_COST_BULK_PER_ITEM[Budget.DPS_SERVICE_OPS]
    )
    # S1x1: the hub's twin updates, 50 a second at 5 a rotation
    s1 = plan(Configuration("S1", 1, 1), MILLION, CAMPAIGN_COST)
    assert s1.binding is Budget.HUB_TWIN_UPDATES
    assert s1.bound_per_min == pytest.approx(600.0)

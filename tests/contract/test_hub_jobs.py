"""Concurrent hub jobs per tier, on both fleet implementations.

"Maximum concurrent jobs is 1 (for Free and S1), 5 (for S2), and 10 (for S3)" (IoT Hub
quotas and throttling, "Other limits"); one more is refused with 429 and error code
429004 ThrottlingMaxActiveJobCountExceeded (IoT Hub troubleshoot-error-codes), which the
adapter raises as ``JobQuotaExceededError``.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from shared.domain.errors import CertrollError, JobQuotaExceededError, ThrottledError
from tests.contract.test_fleet_ports import START, FleetFactory, make_fleet  # noqa: F401


@pytest.mark.parametrize(("tier", "allowed"), [("F1", 1), ("S1", 1), ("S2", 5), ("S3", 10)])
def test_a_hub_runs_as_many_jobs_as_its_tier_allows(
    make_fleet: FleetFactory,  # noqa: F811
    tier: str,
    allowed: int,
) -> None:
    fleet = make_fleet(tier=tier, units=2)  # per hub, not per unit
    later = START + timedelta(hours=1)
    for i in range(allowed):
        fleet.hub.schedule_method_job(f"job-{i}", "deviceId = 'x'", "ping", {}, start_time=later)
    assert [j.job_id for j in fleet.hub.active_jobs()] == [f"job-{i}" for i in range(allowed)]
    with pytest.raises(JobQuotaExceededError) as refused:
        fleet.hub.schedule_method_job("one-more", "deviceId = 'x'", "ping", {}, start_time=later)
    assert isinstance(refused.value, ThrottledError)  # a 429: callers that only know
    assert "ThrottlingMaxActiveJobCountExceeded" in str(refused.value) or "429004" in str(
        refused.value
    )

    fleet.clock.advance(3 * 3600)  # every job ran (no device matched) and completed
    fleet.devices.run_due_jobs()
    assert fleet.hub.active_jobs() == []
    assert fleet.hub.get_job("job-0").status == "completed"
    again = fleet.hub.schedule_method_job("one-more", "deviceId = 'x'", "ping", {})
    assert again.job_id == "one-more"


def test_basic_tier_has_no_jobs(make_fleet: FleetFactory) -> None:  # noqa: F811
    fleet = make_fleet(tier="B1")
    with pytest.raises(CertrollError) as refused:  # 400: jobs are not in the basic tier
        fleet.hub.schedule_method_job("job-0", "deviceId = 'x'", "ping", {})
    assert not isinstance(refused.value, JobQuotaExceededError)


def test_limits_off_means_no_job_limit(make_fleet: FleetFactory) -> None:  # noqa: F811
    fleet = make_fleet(tier="S1", enforce_limits=False)
    later = START + timedelta(hours=1)
    for i in range(3):
        fleet.hub.schedule_method_job(f"job-{i}", "deviceId = 'x'", "ping", {}, start_time=later)
    assert len(fleet.hub.active_jobs()) == 3

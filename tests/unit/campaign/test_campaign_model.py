"""The campaign model: transitions, abort criteria, progress and ETA (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.domain import campaign as cm
from shared.domain.budget import Configuration, plan
from shared.domain.campaign import AbortCriteria, CampaignState
from shared.domain.errors import ConflictError, InvalidRequestError

T0 = datetime(2026, 12, 6, 8, 0, tzinfo=UTC)
QUERY = "SELECT * FROM devices"


def running(**kw: object) -> cm.Campaign:
    return cm.new_campaign("c1", QUERY, "ca-roll", at=T0, by="cli:ops", **kw)  # type: ignore[arg-type]


def test_a_new_campaign_runs_from_the_first_page() -> None:
    c = running()
    assert c.state is CampaignState.RUNNING
    assert c.checkpoint == cm.Checkpoint()
    assert c.abort_criteria == AbortCriteria(min_executed=100, failure_percentage=10.0)


@pytest.mark.parametrize(
    ("campaign_id", "query", "reason", "code"),
    [
        ("", QUERY, "r", "campaign_id_invalid"),
        ("a/b", QUERY, "r", "campaign_id_invalid"),
        ("c", " ", "r", "campaign_query_invalid"),
        ("c", QUERY, "", "campaign_reason_invalid"),
    ],
)
def test_malformed_campaigns_are_refused(
    campaign_id: str, query: str, reason: str, code: str
) -> None:
    with pytest.raises(InvalidRequestError) as info:
        cm.new_campaign(campaign_id, query, reason, at=T0, by="x")
    assert info.value.code == code


def test_pages_advance_the_checkpoint_and_the_last_page_ends_the_query() -> None:
    c = cm.record_page(running(), enqueued=1000, continuation="t1", at=T0)
    assert (c.checkpoint.pages_read, c.checkpoint.enqueued) == (1, 1000)
    assert c.checkpoint.continuation == "t1"
    assert not c.checkpoint.query_done
    c = cm.record_page(c, enqueued=200, continuation=None, at=T0)
    assert c.checkpoint.query_done
    assert c.state is CampaignState.RUNNING  # 1,200 in flight
    with pytest.raises(ConflictError):
        cm.record_page(c, enqueued=1, continuation=None, at=T0)
    c = cm.record_outcomes(c, completed=1199, failed=1, at=T0)
    assert c.state is CampaignState.COMPLETED
    with pytest.raises(ConflictError):
        cm.record_outcomes(c, completed=1, at=T0)


def test_pause_stops_paging_resume_goes_on_and_abort_is_final() -> None:
    c = cm.record_page(running(), enqueued=10, continuation="t1", at=T0)
    paused = cm.pause(c, at=T0, note="window closed")
    assert paused.state is CampaignState.PAUSED
    assert cm.pause(paused, at=T0) is paused  # idempotent
    with pytest.raises(ConflictError):
        cm.record_page(paused, enqueued=10, continuation="t2", at=T0)
    counted = cm.record_outcomes(paused, completed=10, at=T0)  # in-flight rotations end
    assert counted.state is CampaignState.PAUSED
    resumed = cm.resume(counted, at=T0 + timedelta(hours=1))
    assert resumed.state is CampaignState.RUNNING
    assert resumed.checkpoint.continuation == "t1"
    assert resumed.note is None
    aborted = cm.abort(resumed, at=T0, note="operator")
    assert aborted.state is CampaignState.ABORTED
    for change in (cm.resume, cm.pause):
        with pytest.raises(ConflictError):
            change(aborted, at=T0)


def test_resuming_a_campaign_whose_work_all_ended_completes_it() -> None:
    c = cm.record_page(running(), enqueued=3, continuation=None, at=T0)
    c = cm.record_outcomes(cm.pause(c, at=T0), completed=3, at=T0)
    assert c.state is CampaignState.PAUSED
    assert cm.resume(c, at=T0).state is CampaignState.COMPLETED


def test_abort_criteria_need_the_minimum_executed_count() -> None:
    criteria = AbortCriteria(min_executed=50, failure_percentage=10.0)
    assert not criteria.tripped(completed=0, failed=49)  # 49 < 50 executed
    assert criteria.tripped(completed=0, failed=50)
    assert not criteria.tripped(completed=451, failed=50)  # 50/501 = 9.98 %
    assert criteria.tripped(completed=450, failed=50)  # 50/500 = 10 %: at the threshold
    with pytest.raises(ValueError, match="min_executed"):
        AbortCriteria(min_executed=0)
    with pytest.raises(ValueError, match="failure_percentage"):
        AbortCriteria(failure_percentage=0)


def test_a_failure_rate_past_the_threshold_aborts_the_campaign() -> None:
    c = running(abort_criteria=AbortCriteria(min_executed=20, failure_percentage=25.0))
    c = cm.record_page(c, enqueued=100, continuation="t", at=T0)
    c = cm.record_outcomes(c, failed=10, at=T0)
    assert c.state is CampaignState.RUNNING  # 10 executed < 20
    c = cm.record_outcomes(c, completed=31, at=T0)
    assert c.state is CampaignState.RUNNING  # 10/41 = 24.4 %
    c = cm.record_outcomes(c, failed=1, at=T0)
    assert c.state is CampaignState.ABORTED  # 11/42 = 26.2 %
    assert c.note == "abort criteria: 11 of 42 failed (26.2 % >= 25 %)"
    assert cm.progress(c).failure_percentage == pytest.approx(100 * 11 / 42)


def test_progress_and_eta_from_the_planner_pace() -> None:
    pace = plan(Configuration("S3", 1, 1), 1_000_000, headroom=0.1).pace_per_min  # 257.1
    c = running(devices_expected=1_000_000, rate_per_min=pace)
    p0 = cm.progress(c)
    assert p0.total == 1_000_000
    assert p0.fraction == 0.0
    assert p0.eta_minutes == pytest.approx(1_000_000 / (0.9 * 1000 / 3.5))  # 64.8 h
    c = cm.record_page(c, enqueued=1000, continuation="t", at=T0)
    c = cm.record_outcomes(c, completed=990, failed=10, at=T0)
    p1 = cm.progress(c)
    assert (p1.enqueued, p1.completed, p1.failed, p1.in_flight) == (1000, 990, 10, 0)
    assert p1.fraction == pytest.approx(0.001)
    assert p1.eta_minutes == pytest.approx(999_000 / pace)
    assert p1.failure_percentage == pytest.approx(1.0)
    assert cm.progress(cm.pause(c, at=T0)).eta_minutes is None  # paused: no ETA
    unknown = cm.progress(running())
    assert unknown.total is None
    assert unknown.fraction is None
    assert unknown.eta_minutes is None


def test_to_dict_is_json_ready() -> None:
    import json

    c = cm.record_page(running(rate_per_min=900.0), enqueued=5, continuation="t", at=T0)
    data = json.loads(json.dumps(c.to_dict()))
    assert data["state"] == "running"
    assert data["checkpoint"]["enqueued"] == 5
    assert data["abort_criteria"] == {"min_executed": 100, "failure_percentage": 10.0}
    assert json.loads(json.dumps(cm.progress(c).to_dict()))["state"] == "running"

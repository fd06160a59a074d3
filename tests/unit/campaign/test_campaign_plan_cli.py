"""``certroll campaign plan``: figures from the planner, touching nothing."""

from __future__ import annotations

import json

import pytest

from cli.main import commands, main


def test_campaign_command_is_registered() -> None:
    main(["--help"])
    assert "campaign" in commands()


def test_plan_prints_bound_binding_budget_and_eta(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["campaign", "plan", "--devices", "1000000", "--hub-tier", "S1", "--hub-units", "1"]
    assert main([*argv, "--dps-instances", "1"]) == 0
    out = capsys.readouterr().out
    assert "bound: 32.3 rotations/min, binding budget hub.identity_operations" in out
    assert "21.5 d at the bound" in out
    assert "hub.identity_operations *" in out  # the binding budget is marked in the table
    for budget in ("dps.registrations", "hub.twin_updates", "signing.signatures"):
        assert budget in out


def test_plan_json_for_s3_with_a_lean_rotation(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["campaign", "plan", "--devices", "1000000", "--hub-tier", "s3", "--json"]
    lean = ["--cost", "hub.identity_operations=0.3", "--cost", "dps.service_operations=0.5"]
    assert main([*argv, "--headroom", "0", *lean]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["binding_budget"] == "dps.registrations"
    assert data["bound_rotations_per_min"] == pytest.approx(1000)
    assert data["eta_at_bound"] == "16.7 h"
    assert data["configuration"]["hub_tier"] == "S3"
    assert data["cost"]["per_rotation"]["hub.identity_operations"] == 0.3
    budgets = {b["budget"]: b for b in data["budgets"]}
    assert budgets["dps.registrations"]["share_of_limit_at_pace"] == pytest.approx(1.0)
    assert budgets["dps.registrations"]["source"].startswith("learn.microsoft.com")
    assert data["concurrent"]["hub.concurrent_jobs"]["limit"] == 10
    assert {b["budget"] for b in data["pacer"]["buckets"]} >= {"dps.registrations"}


@pytest.mark.parametrize(
    "extra",
    [
        ["--hub-units", "0"],
        ["--cost", "nothing=1"],
        ["--headroom", "1.5"],
        ["--devices", "-1"],
        ["--hub-tier", "F1", "--hub-units", "3"],
    ],
)
def test_plan_refuses_bad_input(extra: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["campaign", "plan", "--devices", "10", *extra]) == 2
    assert capsys.readouterr().err.startswith("rejected: ")


def test_campaign_without_an_action_is_a_usage_error() -> None:
    assert main(["campaign"]) == 2

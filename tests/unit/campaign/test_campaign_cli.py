"""``certroll campaign start|status|list|pause|resume|abort|run`` on the campaign service
(in-memory storage, the rotation fakes' hub)."""

from __future__ import annotations

import json

import pytest

from cli.main import main
from shared.bootstrap import Services, memory_storage, override_services
from shared.clock import ManualClock
from shared.settings import Settings
from tests.unit.rotation.fakes import World


@pytest.fixture
def services() -> Services:
    world = World()
    for i in range(5):
        world.add_device(f"dev-{i}")
    return Services(
        Settings.from_env({"CERTROLL_STORAGE": "memory"}),
        storage=memory_storage(),
        clock=ManualClock(),
        registry=world.registry,
        events=world.events,
    )


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict[str, object]:
    assert main([*argv, "--json"]) == 0
    out: dict[str, object] = json.loads(capsys.readouterr().out)
    return out


def test_start_status_pause_resume_abort(
    services: Services, capsys: pytest.CaptureFixture[str]
) -> None:
    with override_services(services):
        started = _json(
            capsys,
            [
                "campaign",
                "start",
                "--query",
                "SELECT * FROM devices",
                "--reason",
                "ca-roll",
                "--id",
                "roll-1",
                "--actor",
                "ops",
                "--devices-expected",
                "5",
            ],
        )
        assert started["state"] == "running"
        assert started["reason"] == "ca-roll"
        assert started["created_by"] == "cli:ops"
        ran = _json(capsys, ["campaign", "run", "roll-1"])
        assert ran["enqueued"] == 5
        status = _json(capsys, ["campaign", "status", "roll-1"])
        progress = status["progress"]
        assert isinstance(progress, dict)
        assert progress["enqueued"] == 5
        assert progress["total"] == 5
        paused = _json(capsys, ["campaign", "pause", "roll-1", "--note", "freeze"])
        assert paused["state"] == "paused"
        assert _json(capsys, ["campaign", "resume", "roll-1"])["state"] == "running"
        listed = json.loads((main(["campaign", "list", "--json"]), capsys.readouterr().out)[1])
        assert [c["campaign_id"] for c in listed] == ["roll-1"]
        aborted = _json(capsys, ["campaign", "abort", "roll-1", "--note", "wrong query"])
        assert aborted["state"] == "aborted"
        assert main(["campaign", "resume", "roll-1"]) != 0  # final
        assert main(["campaign", "status", "nope"]) != 0

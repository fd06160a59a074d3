"""The rotation worker's other message kinds: a campaign's next run and the sweep going
on from a continuation token."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import azure.functions as func
import pytest

from functions.worker import MalformedWorkMessage, handle_work_message
from shared.domain.commands import Sweep
from shared.domain.messages import campaign_message, rotate_message, sweep_message
from shared.domain.model import Trigger

T0 = datetime(2026, 12, 6, 3, 0, tzinfo=UTC)


class Service:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def sweep(self, command: Sweep) -> dict[str, Any]:
        self.calls.append(("sweep", command))
        return {}

    def process_batch(self, batch: Any) -> dict[str, Any]:
        self.calls.append(("batch", batch))
        return {}


class Campaigns:
    def __init__(self) -> None:
        self.runs: list[str] = []

    def run(self, campaign_id: str) -> dict[str, Any]:
        self.runs.append(campaign_id)
        return {}


def _msg(body: dict[str, Any]) -> func.QueueMessage:
    return func.QueueMessage(id="m1", body=json.dumps(body))


def test_a_campaign_message_runs_the_campaign() -> None:
    service, campaigns = Service(), Campaigns()
    handle_work_message(_msg(campaign_message("ca-roll-1")), service, campaigns)  # type: ignore[arg-type]
    assert campaigns.runs == ["ca-roll-1"]
    assert service.calls == []


def test_a_sweep_message_goes_on_from_its_token() -> None:
    service, campaigns = Service(), Campaigns()
    body = sweep_message("tok-7", T0, page_size=100, batch_size=50, time_budget_s=120.0)
    handle_work_message(_msg(body), service, campaigns)  # type: ignore[arg-type]
    [(name, command)] = service.calls
    assert name == "sweep"
    assert command == Sweep(
        batch_size=50, page_size=100, time_budget_s=120.0, continuation="tok-7", started_at=T0
    )


def test_a_campaign_batch_carries_its_campaign() -> None:
    service = Service()
    body = rotate_message(["a", "b"], Trigger.CA_ROLL, T0, campaign_id="roll")
    handle_work_message(_msg(body), service, Campaigns())  # type: ignore[arg-type]
    [(_, batch)] = service.calls
    assert batch.campaign_id == "roll"
    assert batch.reason is Trigger.CA_ROLL


@pytest.mark.parametrize(
    "body",
    [
        {"kind": "campaign", "campaignId": "no spaces"},
        {"kind": "campaign"},
        {"kind": "sweep"},
        {"kind": "sweep", "continuation": "t", "pageSize": 5000},
        {"kind": "rotate", "deviceIds": ["a"], "campaignId": ""},
    ],
)
def test_malformed_kinds_are_refused(body: dict[str, Any]) -> None:
    with pytest.raises(MalformedWorkMessage):
        handle_work_message(_msg(body), Service(), Campaigns())  # type: ignore[arg-type]

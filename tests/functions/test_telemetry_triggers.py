"""The triggers' own metrics: the fleet gauges after the daily sweep and the count of work
messages whose last try failed (the host moves them to ``<queue>-poison`` next)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from azure.functions.queue import QueueMessage
from azure.functions.timer import TimerRequest

from functions.worker import MAX_DEQUEUE_COUNT, MalformedWorkMessage
from shared.bootstrap import Services
from shared.domain.errors import ThrottledError
from tests.functions.fakes import FakeRotation, user_function

pytestmark = pytest.mark.usefixtures("services")

REPO = Path(__file__).resolve().parents[2]


def test_max_dequeue_count_is_the_hosts() -> None:
    host = json.loads((REPO / "host.json").read_text(encoding="utf-8"))
    assert host["extensions"]["queues"]["maxDequeueCount"] == MAX_DEQUEUE_COUNT


def test_daily_sweep_sets_the_fleet_gauges(services: Services) -> None:
    user_function("daily_sweep")(TimerRequest())
    metrics = services.instrumentation.metrics()
    assert metrics["certroll.devices_by_status"]["status=ok"] == 0
    assert set(metrics["certroll.devices_by_expiry"]) >= {"bucket=expired", "bucket=91+"}


def test_a_message_failing_its_last_try_is_counted(
    services: Services, fake_rotation: FakeRotation
) -> None:
    fake_rotation.fail["process_batch"] = ThrottledError("429", 5)
    body = b'{"kind": "rotate", "deviceIds": ["dev-1"]}'
    for dequeue_count in range(1, MAX_DEQUEUE_COUNT + 1):
        with pytest.raises(ThrottledError):
            user_function("rotation_worker")(
                QueueMessage(id="m1", body=body, dequeue_count=dequeue_count)
            )
    with pytest.raises(MalformedWorkMessage):
        user_function("rotation_worker")(
            QueueMessage(id="m2", body=b"{nope", dequeue_count=MAX_DEQUEUE_COUNT)
        )
    assert services.instrumentation.metrics()["certroll.work_messages_poisoned"] == {
        "reason=ThrottledError": 1,
        "reason=malformed": 1,
    }

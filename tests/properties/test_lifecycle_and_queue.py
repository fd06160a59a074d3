"""Event Grid lifecycle events and rotation work-queue messages."""

from __future__ import annotations

import copy
import re
from datetime import UTC, datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from functions.parsing.lifecycle import DEVICE_CONNECTED, DEVICE_CREATED, parse_lifecycle
from functions.parsing.work_queue import parse_work_message
from shared.domain.commands import DeviceConnected, DeviceCreated
from shared.domain.errors import InvalidRequestError
from shared.domain.messages import MAX_BATCH, rotate_message
from shared.domain.model import Trigger
from tests.properties.strategies import (
    any_device_id_value,
    dumps,
    json_values,
    moments,
    valid_device_ids,
)

DEVICE_ID = re.compile(r"[A-Za-z0-9\-.%_*?!(),:=@$']{1,128}")
EVENT_TYPES = st.sampled_from(
    [DEVICE_CONNECTED, DEVICE_CREATED, "Microsoft.Devices.DeviceDeleted", "", "x"]
)


@given(
    EVENT_TYPES,
    st.one_of(st.none(), st.text(max_size=20), any_device_id_value.map(lambda d: f"devices/{d}")),
    st.one_of(st.fixed_dictionaries({"deviceId": any_device_id_value}), json_values),
    st.one_of(st.none(), moments),
)
def test_lifecycle_event_is_a_command_none_or_malformed(
    event_type: str, subject: Any, data: Any, at: datetime | None
) -> None:
    before = copy.deepcopy(data)
    subject = subject if isinstance(subject, str) or subject is None else str(subject)
    try:
        parsed = parse_lifecycle(event_type, subject, data, at)
    except InvalidRequestError as exc:
        assert exc.code in ("malformed_event", "device_id_invalid", "malformed_time")
    else:
        if event_type not in (DEVICE_CONNECTED, DEVICE_CREATED):
            assert parsed is None
        else:
            assert isinstance(parsed, DeviceConnected | DeviceCreated)
            assert DEVICE_ID.fullmatch(parsed.device_id)
            if isinstance(parsed, DeviceConnected) and at is not None:
                assert parsed.at == at
    assert data == before


@st.composite
def work_messages(draw: st.DrawFn) -> Any:
    doc: dict[str, Any] = {
        "kind": draw(st.sampled_from(["rotate", "Rotate", ""]) | json_values),
        "deviceIds": draw(
            st.one_of(
                st.lists(valid_device_ids, min_size=1, max_size=5),
                st.lists(any_device_id_value, max_size=5),
                json_values,
            )
        ),
    }
    if draw(st.booleans()):
        doc["reason"] = draw(st.sampled_from([t.value for t in Trigger]) | json_values)
    if draw(st.booleans()):
        doc["enqueuedAt"] = draw(st.one_of(moments.map(lambda m: m.isoformat()), json_values))
    return doc if draw(st.integers(0, 9)) else draw(json_values)


@given(work_messages())
def test_work_message_is_a_batch_or_malformed(doc: Any) -> None:
    try:
        batch = parse_work_message(dumps(doc))
    except InvalidRequestError as exc:
        assert exc.code in ("malformed_message", "malformed_json")
        return
    assert 1 <= len(batch.device_ids) <= MAX_BATCH
    assert len(set(batch.device_ids)) == len(batch.device_ids)
    assert all(DEVICE_ID.fullmatch(d) for d in batch.device_ids)
    assert isinstance(batch.reason, Trigger)
    assert batch.enqueued_at is None or batch.enqueued_at.tzinfo is not None


@given(
    st.lists(valid_device_ids, min_size=1, max_size=20),
    st.sampled_from(list(Trigger)),
    moments,
)
def test_what_the_sweep_sends_the_worker_reads_back(
    ids: list[str], reason: Trigger, at: datetime
) -> None:
    batch = parse_work_message(dumps(rotate_message(ids, reason, at)))
    assert batch.device_ids == tuple(dict.fromkeys(ids))
    assert batch.reason is reason
    assert batch.enqueued_at == at.replace(microsecond=0).astimezone(UTC)


@given(st.binary(max_size=100))
def test_work_message_of_any_bytes(body: bytes) -> None:
    try:
        parse_work_message(body)
    except InvalidRequestError:
        pass

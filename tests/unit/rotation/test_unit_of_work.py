"""The ETag-checked read-modify-write of a rotation record."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from shared.adapters.memory import MemoryRotationStore
from shared.clock import ManualClock
from shared.domain.errors import ConcurrencyError
from shared.domain.model import RotationRecord, RotationState
from shared.domain.rotation.unit_of_work import MAX_ATTEMPTS, RecordRead, RecordUnitOfWork

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def direct(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return fn(*args, **kwargs)


@pytest.fixture
def store() -> MemoryRotationStore:
    return MemoryRotationStore()


@pytest.fixture
def uow(store: MemoryRotationStore) -> RecordUnitOfWork:
    return RecordUnitOfWork(store, ManualClock(NOW), direct)


def test_save_creates_then_updates_with_the_etag(uow: RecordUnitOfWork) -> None:
    created = uow.save(RotationRecord(device_id="dev-1"))
    assert created.etag is not None
    assert created.updated_at == NOW
    updated = uow.save(created, {"state": RotationState.FAILED})
    assert updated.state is RotationState.FAILED
    assert updated.etag != created.etag
    with pytest.raises(ConcurrencyError):
        uow.save(created, {"attempts": 1})  # a stale ETag


def test_a_lost_race_is_decided_again_on_a_fresh_read(
    uow: RecordUnitOfWork, store: MemoryRotationStore
) -> None:
    first = uow.save(RotationRecord(device_id="dev-1"))
    seen: list[int] = []

    def decide(rec: RotationRecord | None) -> RotationRecord:
        assert rec is not None
        seen.append(rec.attempts)
        if len(seen) == 1:  # another writer gets there first
            store.put(rec.__class__(**{**rec.__dict__, "attempts": 5}))
        return uow.save(rec, {"attempts": rec.attempts + 1})

    result = uow.run("dev-1", "test", decide)
    assert seen == [0, 5]
    assert result.attempts == 6
    assert first.attempts == 0


def test_with_attempt_style_gives_the_record_and_retries(
    uow: RecordUnitOfWork, store: MemoryRotationStore
) -> None:
    uow.save(RotationRecord(device_id="dev-1"))
    tries = 0
    result: RotationRecord | None = None
    for attempt in uow.attempts("dev-1", "test"):
        with attempt as rec:
            tries += 1
            assert rec is not None
            if tries == 1:
                store.put(rec)  # bumps the ETag under us
            result = uow.save(rec, {"attempts": tries})
            break
    assert tries == 2
    assert result is not None
    assert result.attempts == 2


def test_gives_up_after_max_attempts(uow: RecordUnitOfWork) -> None:
    calls = 0

    def always_lose(rec: RotationRecord | None) -> None:
        nonlocal calls
        calls += 1
        raise ConcurrencyError("changed")

    with pytest.raises(ConcurrencyError, match="kept changing during test"):
        uow.run("dev-1", "test", always_lose)
    assert calls == MAX_ATTEMPTS


def test_a_record_just_read_is_used_for_the_first_attempt(
    uow: RecordUnitOfWork, store: MemoryRotationStore
) -> None:
    reads: list[str] = []
    original_get = store.get

    def counting_get(device_id: str) -> RotationRecord | None:
        reads.append(device_id)
        return original_get(device_id)

    store.get = counting_get  # type: ignore[method-assign]
    read = uow.read("dev-1")
    assert read == RecordRead(None)
    seen = uow.run("dev-1", "test", lambda rec: rec, read=read)
    assert seen is None
    assert reads == ["dev-1"]  # the run did not read again


def test_other_errors_propagate_at_once(uow: RecordUnitOfWork) -> None:
    calls = 0

    def broken(rec: RotationRecord | None) -> None:
        nonlocal calls
        calls += 1
        raise ValueError("bug")

    with pytest.raises(ValueError, match="bug"):
        uow.run("dev-1", "test", broken)
    assert calls == 1


def test_a_lost_race_is_logged_with_what_was_being_done(
    uow: RecordUnitOfWork, store: MemoryRotationStore, caplog: pytest.LogCaptureFixture
) -> None:
    uow.save(RotationRecord(device_id="dev-1"))
    tries: list[int] = []

    def decide(rec: RotationRecord | None) -> RotationRecord:
        assert rec is not None
        tries.append(1)
        if len(tries) == 1:
            store.put(rec)  # bumps the ETag under us
        return uow.save(rec, {"attempts": len(tries)})

    with caplog.at_level(logging.INFO, logger="shared.domain.rotation"):
        uow.run("dev-1", "a test step", decide)
    assert "device dev-1: record changed during a test step; deciding again" in [
        r.getMessage() for r in caplog.records
    ]

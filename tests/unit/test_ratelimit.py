"""Token buckets: a caller that waits exactly the advertised time gets its tokens."""

from __future__ import annotations

import pytest

from shared.clock import ManualClock
from shared.domain.errors import ThrottledError
from shared.domain.ratelimit import TokenBucket


@pytest.mark.parametrize("rate", [1 / 3, 7.0, 1000 / 60, 3333.3, 1e6])
def test_waiting_the_advertised_time_always_suffices(rate: float) -> None:
    clock = ManualClock()
    bucket = TokenBucket(rate, 1, clock)
    for _ in range(200):
        wait = bucket.try_take()
        if wait:
            assert wait >= 1e-6
            clock.sleep(wait)
            assert bucket.try_take() == 0.0


def test_refused_attempts_consume_no_budget() -> None:
    """docs/emulator.md: Microsoft's throttling pages do not say a refused request counts
    against a throttle, so a refusal takes nothing and many refusals change nothing."""
    clock = ManualClock()
    bucket = TokenBucket.per_second(10, clock)
    for _ in range(10):
        assert bucket.try_take() == 0.0
    waits = [bucket.try_take() for _ in range(100)]
    assert all(w == pytest.approx(0.1) for w in waits)
    clock.sleep(0.1)
    assert bucket.try_take() == 0.0  # exactly one token refilled, none lost to refusals
    assert bucket.try_take() > 0


def test_take_raises_with_retry_after_and_takes_nothing() -> None:
    clock = ManualClock()
    bucket = TokenBucket.per_minute(60, clock)
    for _ in range(60):
        bucket.take()
    with pytest.raises(ThrottledError) as throttled:
        bucket.take()
    assert throttled.value.retry_after == pytest.approx(1.0)
    assert bucket.available() == pytest.approx(0.0)

"""Renewal timing, the retry helper and the offline back-off."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.clock import ManualClock
from shared.domain.errors import NotFoundError, ThrottledError
from shared.domain.messages import parse_reported_x509
from shared.domain.policy import Renewal, RotationPolicy
from shared.domain.retry import Retrier, RetryPolicy, backoff
from shared.settings import Settings

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LIFE = timedelta(days=30)


@pytest.mark.parametrize(
    ("elapsed_days", "expected"),
    [
        (0, Renewal.NOT_DUE),
        (15, Renewal.NOT_DUE),
        (22, Renewal.DUE),
        (29.9, Renewal.DUE),
        (30, Renewal.OVERDUE),
        (45, Renewal.OVERDUE),
    ],
)
def test_decide(elapsed_days: float, expected: Renewal) -> None:
    policy = RotationPolicy()
    now = T0 + timedelta(days=elapsed_days)
    assert policy.decide("dev-1", T0, T0 + LIFE, now) is expected


def test_jitter_is_fixed_per_device_and_spreads_a_fleet() -> None:
    policy = RotationPolicy(renewal_fraction=0.6, renewal_jitter=0.1)
    times = [policy.renewal_time(f"dev-{i}", T0, T0 + LIFE) for i in range(200)]
    assert times[7] == policy.renewal_time("dev-7", T0, T0 + LIFE)
    low, high = T0 + LIFE * 0.5, T0 + LIFE * 0.7
    assert all(low <= t <= high for t in times)
    assert max(times) - min(times) > LIFE * 0.15  # spread over most of the window


def test_policy_from_settings_and_bad_values() -> None:
    policy = RotationPolicy.from_settings(
        Settings.from_env({"CERTROLL_RENEWAL_FRACTION": "0.5", "CERTROLL_CA_WARNING_DAYS": "10"})
    )
    assert policy.renewal_fraction == 0.5
    assert policy.ca_warning == timedelta(days=10)
    with pytest.raises(ValueError, match="fraction"):
        RotationPolicy(renewal_fraction=1.5)
    with pytest.raises(ValueError, match="jitter"):
        RotationPolicy(renewal_jitter=0.7)


class Flaky:
    def __init__(self, failures: int, retry_after: float = 3.0) -> None:
        self.failures = failures
        self.retry_after = retry_after
        self.calls = 0

    def __call__(self, value: int) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            raise ThrottledError("429", retry_after=self.retry_after)
        return value * 2


def test_retrier_sleeps_retry_after_on_the_clock() -> None:
    clock = ManualClock(T0)
    retrier = Retrier(clock, RetryPolicy(max_attempts=4))
    fn = Flaky(failures=2)
    assert retrier.call(fn, 21) == 42
    assert fn.calls == 3
    assert clock.now() - T0 == timedelta(seconds=6)


def test_retrier_gives_up_with_the_throttle_error() -> None:
    clock = ManualClock(T0)
    retrier = Retrier(clock, RetryPolicy(max_attempts=3))
    fn = Flaky(failures=10)
    with pytest.raises(ThrottledError):
        retrier.call(fn, 1)
    assert fn.calls == 3
    long_wait = Flaky(failures=10, retry_after=500.0)
    capped = Retrier(clock, RetryPolicy(max_attempts=10, max_wait_seconds=30, max_total_seconds=60))
    with pytest.raises(ThrottledError):
        capped.call(long_wait, 1)
    assert long_wait.calls == 3  # 30 s + 30 s, the third wait would pass 60 s


def test_retrier_passes_other_errors_at_once() -> None:
    calls = []

    def missing() -> None:
        calls.append(1)
        raise NotFoundError("gone")

    with pytest.raises(NotFoundError):
        Retrier(ManualClock(T0)).call(missing)
    assert calls == [1]


def test_backoff_grows_and_caps() -> None:
    base, cap = timedelta(minutes=5), timedelta(hours=1)
    delays = [backoff(n, base=base, cap=cap, jitter=0) for n in range(1, 8)]
    assert delays[:4] == [base, base * 2, base * 4, base * 8]
    assert delays[-1] == cap
    jittered = backoff(3, base=base, cap=cap, key="dev-1")
    assert base * 4 * 0.9 <= jittered <= base * 4
    assert backoff(0, base=base, cap=cap) == timedelta(0)


def test_reported_x509_parsing() -> None:
    section = {
        "thumbprint": "AB" * 32,
        "serialNumber": "00ff",
        "notBefore": "2026-01-01T00:00:00Z",
        "notAfter": "2026-01-31T00:00:00.1234567Z",
        "renewal": {"requestId": "r-1", "status": "failed", "error": "x" * 900},
    }
    parsed = parse_reported_x509("dev-1", section)
    assert parsed.certificate is not None
    assert parsed.certificate.thumbprint_sha256 == "ab" * 32
    assert parsed.certificate.serial == "ff"
    assert parsed.certificate.not_after.tzinfo is not None
    assert parsed.renewal is not None
    assert parsed.renewal.error is not None
    assert len(parsed.renewal.error) == 500
    assert parsed.csr is None

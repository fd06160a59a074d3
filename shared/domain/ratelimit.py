"""Token buckets on an injected clock (pure: no threads, no sleeping).

A bucket holds at most ``capacity`` tokens and refills at ``rate`` tokens per second of
the given :class:`~shared.ports.Clock`, so a ``ScaledClock`` or ``ManualClock`` makes a
per-minute limit testable in seconds. Taking more than is available raises
:class:`~shared.domain.errors.ThrottledError` with the seconds to wait in ``retry_after``.
"""

from __future__ import annotations

import math
import threading
from datetime import datetime
from typing import TYPE_CHECKING

from shared.domain.errors import ThrottledError

if TYPE_CHECKING:
    from shared.ports import Clock


_EPSILON = 1e-9  # float slack when refilled tokens should equal what is asked


class TokenBucket:
    """A thread-safe token bucket that refills continuously on ``clock``."""

    def __init__(
        self,
        rate: float,
        capacity: float,
        clock: Clock,
        *,
        name: str = "bucket",
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.rate = float(rate)
        self.capacity = float(capacity)
        self.name = name
        self._clock = clock
        self._tokens = float(capacity)
        self._last: datetime = clock.now()
        self._lock = threading.Lock()

    @classmethod
    def per_minute(cls, per_minute: float, clock: Clock, *, name: str = "bucket") -> TokenBucket:
        """A bucket allowing ``per_minute`` operations in any minute (burst = one minute)."""
        return cls(per_minute / 60.0, max(1.0, per_minute), clock, name=name)

    @classmethod
    def per_second(cls, per_second: float, clock: Clock, *, name: str = "bucket") -> TokenBucket:
        """A bucket allowing ``per_second`` operations per second (burst = one second)."""
        return cls(per_second, max(1.0, per_second), clock, name=name)

    def _refill(self) -> None:
        now = self._clock.now()
        elapsed = (now - self._last).total_seconds()
        if elapsed > 0:
            self._tokens = min(self.capacity, self._tokens + elapsed * self.rate)
            self._last = now

    def available(self) -> float:
        """Tokens available now."""
        with self._lock:
            self._refill()
            return self._tokens

    def try_take(self, n: float = 1.0) -> float:
        """Take ``n`` tokens if available and return 0.0; otherwise take nothing and
        return the seconds until ``n`` tokens will be there."""
        if n <= 0:
            raise ValueError("n must be positive")
        if n > self.capacity:
            raise ValueError(f"{n} tokens exceed the capacity {self.capacity} of {self.name}")
        with self._lock:
            self._refill()
            if self._tokens >= n - _EPSILON:
                self._tokens = max(0.0, self._tokens - n)
                return 0.0
            # rounded up to a whole microsecond: waiting exactly this long must find the
            # tokens there (a clock may not move for a shorter sleep)
            return math.ceil((n - self._tokens) / self.rate * 1e6) / 1e6

    def take(self, n: float = 1.0) -> None:
        """Take ``n`` tokens or raise ThrottledError(retry_after=seconds to wait)."""
        wait = self.try_take(n)
        if wait > 0:
            raise ThrottledError(
                f"{self.name}: rate limit exceeded ({self.rate * 60:g}/min, burst "
                f"{self.capacity:g}); retry after {wait:.3f} s",
                retry_after=wait,
            )

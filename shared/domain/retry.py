"""One retry helper for every port call the rotation service makes.

A :class:`~shared.domain.errors.ThrottledError` (429/503) is retried after sleeping its
``retry_after`` on the injected :class:`~shared.ports.Clock`, up to a bound; when the
bound is reached the last ThrottledError is raised again unchanged. It is retryable by
nature: the rotation service writes its state only after a step's side effects
succeeded, so the record stays in its current state and a redelivered message (or the
sweep) carries on from there. Every other error passes through at once.

Also here: the exponential back-off used for devices that are offline.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from shared.domain.errors import ThrottledError

if TYPE_CHECKING:
    from shared.ports import Clock

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long a throttled call is retried.

    ``max_attempts`` counts calls (1 = no retry). A single wait is capped at
    ``max_wait_seconds``; once the waits of one call would pass ``max_total_seconds``
    the helper gives up, so a function invocation never sleeps past its own timeout.
    """

    max_attempts: int = 4
    max_wait_seconds: float = 30.0
    max_total_seconds: float = 90.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.max_wait_seconds < 0 or self.max_total_seconds < 0:
            raise ValueError("waits must not be negative")


class Retrier:
    """Calls a function, sleeping on the clock and retrying while it is throttled."""

    def __init__(self, clock: Clock, policy: RetryPolicy | None = None) -> None:
        self.clock = clock
        self.policy = policy or RetryPolicy()
        self.throttled = 0  # throttle answers seen (for metrics and tests)

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        waited = 0.0
        attempt = 1
        while True:
            try:
                return fn(*args, **kwargs)
            except ThrottledError as exc:
                self.throttled += 1
                wait = min(max(exc.retry_after, 0.0), self.policy.max_wait_seconds)
                name = getattr(fn, "__qualname__", repr(fn))
                if attempt >= self.policy.max_attempts or waited + wait > (
                    self.policy.max_total_seconds
                ):
                    logger.warning(
                        "%s still throttled after %d attempt(s) and %.1f s; giving up for now",
                        name,
                        attempt,
                        waited,
                    )
                    raise
                logger.info("%s throttled (attempt %d); retrying in %.1f s", name, attempt, wait)
                self.clock.sleep(wait)
                waited += wait
                attempt += 1


def backoff(
    attempts: int,
    *,
    base: timedelta,
    cap: timedelta,
    key: str = "",
    jitter: float = 0.1,
) -> timedelta:
    """Exponential back-off ``base * 2**(attempts-1)`` capped at ``cap``.

    A deterministic jitter of up to ``jitter`` (a fraction) derived from ``key`` (e.g. the
    device id) spreads devices that went offline together.
    """
    if attempts < 1:
        return timedelta(0)
    if base <= timedelta(0) or cap < base:
        raise ValueError("backoff needs 0 < base <= cap")
    exponent = min(attempts - 1, 32)
    delay: timedelta = min(base * (2**exponent), cap)
    if jitter and key:
        digest = hashlib.sha256(key.encode()).digest()
        fraction = int.from_bytes(digest[:4], "big") / 0xFFFFFFFF
        delay = delay * (1 - jitter * fraction)
    return delay

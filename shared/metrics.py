"""Metrics sinks that need no service: a no-op one and a counting one (local runs, tests).

Both satisfy :class:`shared.ports.Metrics`.
"""

from __future__ import annotations


class NullMetrics:
    def increment(self, name: str, value: int = 1, **dimensions: str) -> None:
        return None


class CountingMetrics:
    """Counts by metric name (local runs and tests)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def increment(self, name: str, value: int = 1, **dimensions: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + value

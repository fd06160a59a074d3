"""Metrics sinks that need no service: a no-op one and a counting one (local runs, tests).

Both satisfy :class:`shared.ports.Metrics`.
"""

from __future__ import annotations


class NullMetrics:
    def increment(self, name: str, value: int = 1, **dimensions: str) -> None:
        return None


class CountingMetrics:
    """Counts by metric name, and by name and dimensions (local runs and tests)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        #: (name, sorted dimension items) -> count
        self.by_dimensions: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}

    def increment(self, name: str, value: int = 1, **dimensions: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + value
        key = (name, tuple(sorted(dimensions.items())))
        self.by_dimensions[key] = self.by_dimensions.get(key, 0) + value

    def dimensions(self, name: str) -> dict[tuple[tuple[str, str], ...], int]:
        """The counts of ``name`` by its dimensions."""
        return {dims: n for (metric, dims), n in self.by_dimensions.items() if metric == name}

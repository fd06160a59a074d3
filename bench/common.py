"""Shared shape of benchmark results: each section module returns a list of BenchRow."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BenchRow:
    key: str  # machine-readable key in docs/benchmarks.json
    value: float
    unit: str  # e.g. "certs/s", "MiB", "ratio"
    description: str  # what was measured, for the table
    target: str = ""  # the target it is held to, human-readable ("" when none)

"""The end-to-end benchmark's CPU figures."""

from __future__ import annotations

import hashlib
import os

import pytest

from bench.e2e import _cpu_rows
from local.stack import cpu_seconds


def test_cpu_seconds_counts_this_process() -> None:
    before = cpu_seconds()["python"]
    digest = b""
    for _ in range(20_000):
        digest = hashlib.sha256(digest).digest()
    assert cpu_seconds()["python"] > before


def test_cpu_rows_per_rotation_and_bound() -> None:
    rows = {r.key: r.value for r in _cpu_rows({"python": 3.0, "azurite": 1.0}, 100, "1k")}
    assert rows["e2e_cpu_ms_per_rotation_1k_python"] == pytest.approx(30.0)
    assert rows["e2e_cpu_ms_per_rotation_1k_azurite"] == pytest.approx(10.0)
    # 40 ms of CPU per rotation: each core does 25 rotations/s at most
    cores = os.cpu_count() or 1
    assert rows["e2e_cpu_bound_rotations_per_s_1k"] == pytest.approx(25.0 * cores)


def test_cpu_rows_without_azurite_give_no_bound() -> None:
    rows = {r.key for r in _cpu_rows({"python": 3.0}, 100, "1k")}
    assert rows == {"e2e_cpu_ms_per_rotation_1k_python"}

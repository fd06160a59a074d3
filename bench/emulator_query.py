"""Paged twin queries over a large emulated fleet: throughput and memory.

The fleet is built directly through the hub's bulk-load helper (not through DPS
registration). Every device reports ``x509`` like a real agent; expiry dates spread
over 90 days. A fleet classification by expiry runs three paged queries that partition
the fleet (expired, expiring within 30 days, healthy) and counts the twins returned per
second. Peak memory of one paged query (pages dropped as they arrive, as the daily
sweep does) is traced with tracemalloc at 100k and at 1M devices: it must stay flat.

Run alone: ``.venv/bin/python -m bench.emulator_query``.
"""

from __future__ import annotations

import gc
import sys
import time
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.common import BenchRow
from local.emulator import FleetEmulator
from shared.clock import ManualClock

NOW = datetime(2026, 6, 1, tzinfo=UTC)
PAGE = 1000


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


# 120 distinct expiry dates (shared strings, as the sweep would see them)
_NOT_AFTER = [sys.intern(_iso(NOW + timedelta(days=d - 30))) for d in range(120)]
_NOT_BEFORE = [sys.intern(_iso(NOW + timedelta(days=d - 120))) for d in range(120)]


def _rows(start: int, stop: int) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for i in range(start, stop):
        tp = f"{i * 2654435761 % (1 << 256):064x}"
        day = i % 120
        yield (
            f"dev-{i:07d}",
            tp,
            {
                "x509": {
                    "thumbprint": tp,
                    "serialNumber": f"{i:x}",
                    "notBefore": _NOT_BEFORE[day],
                    "notAfter": _NOT_AFTER[day],
                }
            },
        )


def _queries() -> list[str]:
    now = _iso(NOW)
    soon = _iso(NOW + timedelta(days=30))
    field = "properties.reported.x509.notAfter"
    return [
        f"SELECT * FROM devices WHERE {field} < '{now}'",
        f"SELECT * FROM devices WHERE {field} >= '{now}' AND {field} < '{soon}'",
        f"SELECT * FROM devices WHERE {field} >= '{soon}'",
    ]


def _drain(emu: FleetEmulator, query: str) -> int:
    n = 0
    cont: str | None = None
    while True:
        page = emu.hub.query_twins(query, page_size=PAGE, continuation=cont)
        n += len(page.items)
        cont = page.continuation
        if cont is None:
            return n


def _peak_mib(emu: FleetEmulator, query: str) -> float:
    gc.collect()
    tracemalloc.start()
    try:
        _drain(emu, query)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / (1024 * 1024)


def run(sizes: tuple[int, int] = (100_000, 1_000_000)) -> list[BenchRow]:
    small, large = sizes
    emu = FleetEmulator(ManualClock(NOW), enforce_limits=False)
    expiring = _queries()[1]

    emu.bulk_load(_rows(0, small))
    peak_small = _peak_mib(emu, expiring)

    t0 = time.perf_counter()
    emu.bulk_load(_rows(small, large))
    build_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    counts_gc = [_drain(emu, q) for q in _queries()]
    per_s_gc = large / (time.perf_counter() - t0)

    # the loaded fleet lives as long as the process: keep it out of the cyclic GC's
    # full collections, as a long-running local stack does after loading
    gc.collect()
    gc.freeze()
    try:
        t0 = time.perf_counter()
        counts = [_drain(emu, q) for q in _queries()]
        elapsed = time.perf_counter() - t0
        if sum(counts) != large or counts != counts_gc:
            raise AssertionError(f"classification returned {counts} for {large} devices")
        per_s = large / elapsed
        peak_large = _peak_mib(emu, expiring)
    finally:
        gc.unfreeze()
    del emu
    gc.collect()
    return [
        BenchRow(
            "emulator_query_records_per_s",
            round(per_s),
            "records/s",
            f"twins returned per second classifying {large:,} devices by expiry with three "
            f"paged queries (pages of {PAGE}; {counts[0]:,} expired, {counts[1]:,} expiring, "
            f"{counts[2]:,} healthy; each query scans the whole fleet; fleet frozen out "
            "of the cyclic GC after loading)",
            ">= 100,000",
        ),
        BenchRow(
            "emulator_query_records_per_s_gc",
            round(per_s_gc),
            "records/s",
            "the same classification with the fleet still tracked by the cyclic GC",
        ),
        BenchRow(
            "emulator_query_peak_mib_100k",
            round(peak_small, 2),
            "MiB",
            f"peak traced memory of one paged expiry query over {small:,} devices",
            "flat",
        ),
        BenchRow(
            "emulator_query_peak_mib_1m",
            round(peak_large, 2),
            "MiB",
            f"peak traced memory of the same query over {large:,} devices",
            "flat (close to the 100k figure)",
        ),
        BenchRow(
            "emulator_bulk_load_per_s",
            round((large - small) / build_s),
            "devices/s",
            "devices added per second through the bulk-load helper",
        ),
    ]


if __name__ == "__main__":
    for row in run():
        print(f"{row.key:36} {row.value:>14,} {row.unit:10} {row.description}")

"""Service limits the emulator enforces, per tier and unit count (sources in docs/emulator.md).

Each limit is a token bucket on the emulator's clock. Limits Microsoft states per minute
get a one-minute burst ("operation throttles are applied in minute ranges"); limits
stated per second get a one-second burst.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.domain.ratelimit import TokenBucket
from shared.ports import Clock

# names of the buckets (also accepted as keys of FleetEmulator(limits=...))
DPS_REGISTRATIONS = "dps.registrations"
DPS_SERVICE_OPS = "dps.service_operations"
HUB_IDENTITY_OPS = "hub.identity_operations"
HUB_CONNECTIONS = "hub.new_connections"
HUB_TWIN_READS = "hub.twin_reads"
HUB_TWIN_UPDATES = "hub.twin_updates"
HUB_DIRECT_METHODS = "hub.direct_methods"
HUB_QUERIES = "hub.queries"
HUB_JOB_OPS = "hub.job_operations"
HUB_JOB_DEVICE_OPS = "hub.job_device_operations"

#: the two readings of how DPS counts a bulk enrollment operation (not documented)
BULK_READINGS = ("call", "item")

TIERS = ("F1", "B1", "B2", "B3", "S1", "S2", "S3")

#: Concurrent jobs per tier: "Maximum concurrent jobs is 1 (for Free and S1), 5 (for S2),
#: and 10 (for S3)"; jobs are not available in the basic tier (IoT Hub quotas and
#: throttling, "Other limits"). Per hub, not per unit.
MAX_CONCURRENT_JOBS = {"F1": 1, "S1": 1, "S2": 5, "S3": 10, "B1": 0, "B2": 0, "B3": 0}


def max_concurrent_jobs(tier: str) -> int:
    """How many jobs (queued, scheduled or running) a hub of ``tier`` holds at once."""
    tier = tier.upper()
    if tier not in TIERS:
        raise ValueError(f"unknown IoT Hub tier {tier!r}; expected one of {', '.join(TIERS)}")
    return MAX_CONCURRENT_JOBS[tier]


@dataclass(frozen=True)
class Limit:
    per_second: float
    per_minute_burst: bool  # True: the documented figure is per minute (burst = 1 min)

    def bucket(self, clock: Clock, name: str) -> TokenBucket:
        if self.per_minute_burst:
            return TokenBucket.per_minute(self.per_second * 60.0, clock, name=name)
        return TokenBucket.per_second(self.per_second, clock, name=name)


def _per_min(n: float) -> Limit:
    return Limit(n / 60.0, True)


def _per_s(n: float) -> Limit:
    return Limit(n, False)


def hub_limits(tier: str, units: int) -> dict[str, Limit]:
    """IoT Hub operation throttles for ``tier`` with ``units`` units."""
    tier = tier.upper()
    if tier not in TIERS:
        raise ValueError(f"unknown IoT Hub tier {tier!r}; expected one of {', '.join(TIERS)}")
    if units < 1:
        raise ValueError("units must be at least 1")
    level = 1 if tier in ("F1", "B1", "S1") else 2 if tier in ("B2", "S2") else 3
    if level == 3:
        return {
            HUB_IDENTITY_OPS: _per_min(5000 * units),
            HUB_CONNECTIONS: _per_s(6000 * units),
            HUB_TWIN_READS: _per_s(500 * units),
            HUB_TWIN_UPDATES: _per_s(250 * units),
            # 24 MB/s/unit metered in 4 KB units
            HUB_DIRECT_METHODS: _per_s(24 * 1024 / 4 * units),
            HUB_QUERIES: _per_min(1000 * units),
            HUB_JOB_OPS: _per_min(5000 * units),
            HUB_JOB_DEVICE_OPS: _per_s(50 * units),
        }
    if level == 2:
        return {
            HUB_IDENTITY_OPS: _per_min(100 * units),
            HUB_CONNECTIONS: _per_s(120 * units),
            HUB_TWIN_READS: _per_s(max(100, 10 * units)),
            HUB_TWIN_UPDATES: _per_s(max(50, 5 * units)),
            HUB_DIRECT_METHODS: _per_s(480 / 4 * units),  # 480 KB/s/unit, 4 KB units
            HUB_QUERIES: _per_min(20 * units),
            HUB_JOB_OPS: _per_min(100 * units),
            HUB_JOB_DEVICE_OPS: _per_s(max(10, 1 * units)),
        }
    return {
        HUB_IDENTITY_OPS: _per_min(100 * units),
        HUB_CONNECTIONS: _per_s(max(100, 12 * units)),
        HUB_TWIN_READS: _per_s(100),
        HUB_TWIN_UPDATES: _per_s(50),
        HUB_DIRECT_METHODS: _per_s(160 / 4 * units),  # 160 KB/s/unit, 4 KB units
        HUB_QUERIES: _per_min(20 * units),
        HUB_JOB_OPS: _per_min(100 * units),
        HUB_JOB_DEVICE_OPS: _per_s(10),
    }


def dps_limits() -> dict[str, Limit]:
    """Device Provisioning Service limits per service instance."""
    return {
        DPS_REGISTRATIONS: _per_min(1000),
        DPS_SERVICE_OPS: _per_min(1000),
    }


class Limiter:
    """The emulator's set of buckets; ``enabled=False`` turns every check into a no-op."""

    def __init__(
        self,
        clock: Clock,
        tier: str,
        units: int,
        *,
        enabled: bool = True,
        overrides: dict[str, float] | None = None,
        dps_bulk_counts: str = "call",
    ) -> None:
        if dps_bulk_counts not in BULK_READINGS:
            raise ValueError(f"dps_bulk_counts must be one of {', '.join(BULK_READINGS)}")
        #: how a DPS bulk operation is charged: "call" (one operation) or "item" (one per
        #: enrollment). Microsoft's limits page counts "service operations" and is silent
        #: on bulk calls (includes/iot-dps-limits.md), so both readings can be run.
        self.dps_bulk_counts = dps_bulk_counts
        table = {**dps_limits(), **hub_limits(tier, units)}
        for name, per_second in (overrides or {}).items():
            if name not in table:
                raise ValueError(f"unknown limit {name!r}; known: {', '.join(sorted(table))}")
            if per_second <= 0:
                raise ValueError(f"limit {name} must be positive")
            table[name] = Limit(per_second, table[name].per_minute_burst)
        self.enabled = enabled
        self.tier = tier.upper()
        self.max_concurrent_jobs = max_concurrent_jobs(tier)
        self.limits = table
        self.buckets = {name: lim.bucket(clock, name) for name, lim in table.items()}
        #: operations admitted on each bucket (limits on or off): what the callers spent
        self.spent: dict[str, float] = dict.fromkeys(table, 0.0)

    def take(self, name: str, n: float = 1.0) -> None:
        """Consume ``n`` from bucket ``name`` or raise ThrottledError(retry_after)."""
        if self.enabled:
            self.buckets[name].take(n)
        self.spent[name] += n

    def take_bulk(self, name: str, items: int) -> None:
        """Charge one bulk call of ``items`` enrollments as :attr:`dps_bulk_counts` says."""
        self.take(name, float(items) if self.dps_bulk_counts == "item" else 1.0)

    def try_take(self, name: str, n: float = 1.0) -> float:
        wait = self.buckets[name].try_take(n) if self.enabled else 0.0
        if wait <= 0:
            self.spent[name] += n
        return wait

    def spent_snapshot(self) -> dict[str, float]:
        """A copy of :attr:`spent` (subtract two to count what happened between them)."""
        return dict(self.spent)

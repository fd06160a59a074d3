"""Each Azure budget a rotation spends, with its documented limit per tier, unit and
instance, and the source of every number (docs/performance.md lists them). The planner
that uses them is :mod:`shared.domain.budget`. Pure: no SDK, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Budget(StrEnum):
    """A metered Azure budget (the names match the emulator's buckets)."""

    DPS_REGISTRATIONS = "dps.registrations"
    DPS_SERVICE_OPS = "dps.service_operations"
    HUB_IDENTITY_OPS = "hub.identity_operations"
    HUB_TWIN_READS = "hub.twin_reads"
    HUB_TWIN_UPDATES = "hub.twin_updates"
    HUB_DIRECT_METHODS = "hub.direct_methods"  # in 4 KB meter units
    HUB_QUERIES = "hub.queries"
    HUB_JOB_OPS = "hub.job_operations"
    HUB_JOB_DEVICE_OPS = "hub.job_device_operations"
    HUB_CONCURRENT_JOBS = "hub.concurrent_jobs"  # a count of jobs at once, not a rate
    SIGNATURES = "signing.signatures"
    STORAGE_REQUESTS = "storage.requests"


#: Budgets whose limit is a number of things at once, not a rate: a rotation does not
#: spend them, the campaign must not hold more than the limit (``Plan.concurrent``).
CONCURRENT_BUDGETS = frozenset({Budget.HUB_CONCURRENT_JOBS})

# --------------------------------------------------------------------------- sources

SRC_HUB = "learn.microsoft.com/azure/iot-hub/iot-hub-devguide-quotas-throttling"
SRC_DPS = (
    "learn.microsoft.com/azure/iot-dps/about-iot-dps#quotas-and-limits (includes/iot-dps-limits.md)"
)
SRC_KEY_VAULT = "learn.microsoft.com/azure/key-vault/general/service-limits"
SRC_MANAGED_HSM = "learn.microsoft.com/azure/key-vault/managed-hsm/scaling-guidance"
SRC_STORAGE = "learn.microsoft.com/azure/storage/tables/scalability-targets"

HUB_TIERS = ("F1", "S1", "S2", "S3")
SIGNING_BACKENDS = ("key-vault", "managed-hsm", "none")
#: Managed HSM sign operations per second with one partition, by curve (scaling guidance)
MANAGED_HSM_SIGNS_PER_S = {"P-256": 330.0, "P-256K": 330.0, "P-384": 160.0, "P-521": 200.0}
#: Key Vault HSM-protected EC keys: 2,000 "all other transactions" per 10 s per vault
KEY_VAULT_HSM_EC_PER_10S = 2000.0
#: Table storage: 20,000 transactions per second per account (1 KiB entities; some regions
#: allow 40,000 — the lower figure is used)
STORAGE_REQUESTS_PER_S = 20_000.0


@dataclass(frozen=True)
class Limit:
    """One budget's documented limit for the configuration, as a rate per minute (or a
    count for :data:`CONCURRENT_BUDGETS`)."""

    budget: Budget
    per_minute: float
    stated_as: str  # Microsoft's wording: "100/min/unit", "50/sec", "160 KB/sec/unit"
    scope: str  # what it is per, with the multiplier applied: "hub S1 x1", "2 DPS instances"
    source: str


@dataclass(frozen=True)
class Configuration:
    """What the fleet runs on."""

    hub_tier: str = "S1"
    hub_units: int = 1
    dps_instances: int = 1
    signing: str = "key-vault"  # "key-vault" | "managed-hsm" | "none" (PKCS#11, file)
    signing_units: int = 1  # vaults, or Managed HSM partitions counted on
    curve: str = "P-384"
    storage_accounts: int = 1

    def __post_init__(self) -> None:
        tier = self.hub_tier.upper()
        if tier == "FREE":
            tier = "F1"
        if tier not in HUB_TIERS:
            raise ValueError(f"unknown hub tier {self.hub_tier!r}; one of {', '.join(HUB_TIERS)}")
        object.__setattr__(self, "hub_tier", tier)
        for name in ("hub_units", "dps_instances", "signing_units", "storage_accounts"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1")
        if tier == "F1" and self.hub_units != 1:
            raise ValueError("a free hub has exactly one unit")
        if self.signing not in SIGNING_BACKENDS:
            raise ValueError(f"unknown signing {self.signing!r}; one of {SIGNING_BACKENDS}")
        if self.signing == "managed-hsm" and self.curve not in MANAGED_HSM_SIGNS_PER_S:
            raise ValueError(f"no Managed HSM figure for curve {self.curve!r}")

    def label(self) -> str:
        dps = f"{self.dps_instances} DPS instance" + ("s" if self.dps_instances > 1 else "")
        return f"{self.hub_tier}x{self.hub_units}, {dps}"


def hub_limits(tier: str, units: int) -> dict[Budget, Limit]:
    """IoT Hub's operation throttles for ``tier`` with ``units`` units (per minute)."""
    cfg = Configuration(hub_tier=tier, hub_units=units)
    tier, u = cfg.hub_tier, cfg.hub_units
    scope = f"hub {tier}x{u}"

    def lim(budget: Budget, per_minute: float, stated: str) -> Limit:
        return Limit(budget, per_minute, stated, scope, SRC_HUB)

    if tier == "S3":
        return {
            Budget.HUB_IDENTITY_OPS: lim(Budget.HUB_IDENTITY_OPS, 5000 * u, "5,000/min/unit"),
            Budget.HUB_TWIN_READS: lim(Budget.HUB_TWIN_READS, 500 * 60 * u, "500/sec/unit"),
            Budget.HUB_TWIN_UPDATES: lim(Budget.HUB_TWIN_UPDATES, 250 * 60 * u, "250/sec/unit"),
            # 24 MB/sec/unit metered in 4 KB: 6,144 calls of <= 4 KB per second per unit
            Budget.HUB_DIRECT_METHODS: lim(
                Budget.HUB_DIRECT_METHODS, 24 * 1024 / 4 * 60 * u, "24 MB/sec/unit, 4 KB meter"
            ),
            Budget.HUB_QUERIES: lim(Budget.HUB_QUERIES, 1000 * u, "1,000/min/unit"),
            Budget.HUB_JOB_OPS: lim(Budget.HUB_JOB_OPS, 5000 * u, "5,000/min/unit"),
            Budget.HUB_JOB_DEVICE_OPS: lim(Budget.HUB_JOB_DEVICE_OPS, 50 * 60 * u, "50/sec/unit"),
            Budget.HUB_CONCURRENT_JOBS: lim(Budget.HUB_CONCURRENT_JOBS, 10, "10 concurrent"),
        }
    if tier == "S2":
        return {
            Budget.HUB_IDENTITY_OPS: lim(Budget.HUB_IDENTITY_OPS, 100 * u, "100/min/unit"),
            Budget.HUB_TWIN_READS: lim(
                Budget.HUB_TWIN_READS, max(100, 10 * u) * 60, "higher of 100/sec or 10/sec/unit"
            ),
            Budget.HUB_TWIN_UPDATES: lim(
                Budget.HUB_TWIN_UPDATES, max(50, 5 * u) * 60, "higher of 50/sec or 5/sec/unit"
            ),
            Budget.HUB_DIRECT_METHODS: lim(
                Budget.HUB_DIRECT_METHODS, 480 / 4 * 60 * u, "480 KB/sec/unit, 4 KB meter"
            ),
            Budget.HUB_QUERIES: lim(Budget.HUB_QUERIES, 20 * u, "20/min/unit"),
            Budget.HUB_JOB_OPS: lim(Budget.HUB_JOB_OPS, 100 * u, "100/min/unit"),
            Budget.HUB_JOB_DEVICE_OPS: lim(
                Budget.HUB_JOB_DEVICE_OPS, max(10, u) * 60, "higher of 10/sec or 1/sec/unit"
            ),
            Budget.HUB_CONCURRENT_JOBS: lim(Budget.HUB_CONCURRENT_JOBS, 5, "5 concurrent"),
        }
    # Free and S1 share a column
    return {
        Budget.HUB_IDENTITY_OPS: lim(Budget.HUB_IDENTITY_OPS, 100 * u, "100/min/unit"),
        Budget.HUB_TWIN_READS: lim(Budget.HUB_TWIN_READS, 100 * 60, "100/sec"),
        Budget.HUB_TWIN_UPDATES: lim(Budget.HUB_TWIN_UPDATES, 50 * 60, "50/sec"),
        Budget.HUB_DIRECT_METHODS: lim(
            Budget.HUB_DIRECT_METHODS, 160 / 4 * 60 * u, "160 KB/sec/unit, 4 KB meter"
        ),
        Budget.HUB_QUERIES: lim(Budget.HUB_QUERIES, 20 * u, "20/min/unit"),
        Budget.HUB_JOB_OPS: lim(Budget.HUB_JOB_OPS, 100 * u, "100/min/unit"),
        Budget.HUB_JOB_DEVICE_OPS: lim(Budget.HUB_JOB_DEVICE_OPS, 10 * 60, "10/sec"),
        Budget.HUB_CONCURRENT_JOBS: lim(Budget.HUB_CONCURRENT_JOBS, 1, "1 concurrent"),
    }


def limits(config: Configuration) -> dict[Budget, Limit]:
    """Every budget's limit for ``config``; a budget without a documented limit (signing
    through PKCS#11 or a file key) is absent."""
    out = hub_limits(config.hub_tier, config.hub_units)
    d = config.dps_instances
    dps_scope = f"{d} DPS instance" + ("s" if d > 1 else "")
    out[Budget.DPS_REGISTRATIONS] = Limit(
        Budget.DPS_REGISTRATIONS, 1000.0 * d, "1,000/min/service", dps_scope, SRC_DPS
    )
    out[Budget.DPS_SERVICE_OPS] = Limit(
        Budget.DPS_SERVICE_OPS, 1000.0 * d, "1,000/min/service", dps_scope, SRC_DPS
    )
    s = config.signing_units
    if config.signing == "key-vault":
        out[Budget.SIGNATURES] = Limit(
            Budget.SIGNATURES,
            KEY_VAULT_HSM_EC_PER_10S * 6 * s,
            "2,000 per 10 s per vault (HSM-protected EC key)",
            f"{s} vault" + ("s" if s > 1 else ""),
            SRC_KEY_VAULT,
        )
    elif config.signing == "managed-hsm":
        per_s = MANAGED_HSM_SIGNS_PER_S[config.curve]
        out[Budget.SIGNATURES] = Limit(
            Budget.SIGNATURES,
            per_s * 60 * s,
            f"{per_s:g} {config.curve} signs/sec with one partition",
            f"{s} partition" + ("s" if s > 1 else ""),
            SRC_MANAGED_HSM,
        )
    a = config.storage_accounts
    out[Budget.STORAGE_REQUESTS] = Limit(
        Budget.STORAGE_REQUESTS,
        STORAGE_REQUESTS_PER_S * 60 * a,
        "20,000 transactions/sec per account",
        f"{a} storage account" + ("s" if a > 1 else ""),
        SRC_STORAGE,
    )
    return out

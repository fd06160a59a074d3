"""The budget planner: how fast a fleet-wide re-roll may go without being throttled.

Every Azure service a rotation calls meters it against a documented limit: DPS per
instance, IoT Hub per tier and unit, the issuing key per Key Vault vault or Managed HSM
partition, the storage account. One rotation spends a fixed amount on each (the
:class:`RotationCost` vector, an input: measured today, smaller after optimisations).
The bound on a campaign is the smallest ``limit / cost`` over the budgets a rotation
spends; the budget that gives it is the *binding* budget. A campaign runs below the
bound, at ``1 - headroom`` of each limit, so the fleet's everyday traffic (renewals,
reconnects, operators) still fits.

Every limit carries its source (docs/performance.md lists them). Pure: no SDK, no I/O.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shared.domain.budget_limits import (
    CONCURRENT_BUDGETS as CONCURRENT_BUDGETS,
)
from shared.domain.budget_limits import (
    HUB_TIERS as HUB_TIERS,
)
from shared.domain.budget_limits import (
    KEY_VAULT_HSM_EC_PER_10S as KEY_VAULT_HSM_EC_PER_10S,
)
from shared.domain.budget_limits import (
    MANAGED_HSM_SIGNS_PER_S as MANAGED_HSM_SIGNS_PER_S,
)
from shared.domain.budget_limits import (
    SIGNING_BACKENDS as SIGNING_BACKENDS,
)
from shared.domain.budget_limits import (
    SRC_DPS as SRC_DPS,
)
from shared.domain.budget_limits import (
    SRC_HUB as SRC_HUB,
)
from shared.domain.budget_limits import (
    SRC_KEY_VAULT as SRC_KEY_VAULT,
)
from shared.domain.budget_limits import (
    SRC_MANAGED_HSM as SRC_MANAGED_HSM,
)
from shared.domain.budget_limits import (
    SRC_STORAGE as SRC_STORAGE,
)
from shared.domain.budget_limits import (
    STORAGE_REQUESTS_PER_S as STORAGE_REQUESTS_PER_S,
)
from shared.domain.budget_limits import (
    Budget as Budget,
)
from shared.domain.budget_limits import (
    Configuration as Configuration,
)
from shared.domain.budget_limits import (
    Limit as Limit,
)
from shared.domain.budget_limits import (
    hub_limits as hub_limits,
)
from shared.domain.budget_limits import (
    limits as limits,
)
from shared.domain.ratelimit import TokenBucket

if TYPE_CHECKING:
    from shared.ports import Clock


def format_duration(minutes: float) -> str:
    """``42 min``, ``16.7 h``, ``21.5 d``."""
    if math.isinf(minutes):
        return "never"
    if minutes < 90:
        return f"{minutes:.0f} min"
    hours = minutes / 60
    if hours < 72:
        return f"{hours:.1f} h"
    return f"{hours / 24:.1f} d"


# --------------------------------------------------------------------------- cost


@dataclass(frozen=True)
class RotationCost:
    """What one rotation spends on each budget (operations; 4 KB meter units for direct
    methods). Budgets not named cost nothing."""

    spend: Mapping[Budget, float]
    label: str = "custom"

    def __post_init__(self) -> None:
        clean: dict[Budget, float] = {}
        for key, value in self.spend.items():
            budget = Budget(key)
            if budget in CONCURRENT_BUDGETS:
                raise ValueError(f"{budget} is a count, not something a rotation spends")
            if value < 0 or not math.isfinite(value):
                raise ValueError(f"cost of {budget} must be a finite number >= 0, got {value}")
            if value:
                clean[budget] = float(value)
        object.__setattr__(self, "spend", clean)

    def __getitem__(self, budget: Budget) -> float:
        return self.spend.get(budget, 0.0)

    def with_spend(self, label: str | None = None, **changes: float) -> RotationCost:
        """A copy with some budgets' cost replaced (keys: the Budget member names,
        lower-case, e.g. ``hub_identity_ops=2.1``)."""
        spend = dict(self.spend)
        for name, value in changes.items():
            spend[Budget[name.upper()]] = value
        return RotationCost(spend, label or self.label)

    def batched(
        self, budget: Budget, calls: float, per_call: int, label: str | None = None
    ) -> RotationCost:
        """A copy where ``calls`` of the operations on ``budget`` go ``per_call`` at a time
        (e.g. DPS bulk enrollment writes: 10 enrollments a call)."""
        if per_call < 1:
            raise ValueError("per_call must be at least 1")
        if calls > self[budget] + 1e-9:
            raise ValueError(f"{budget} spends {self[budget]:g}, fewer than {calls:g} calls")
        spend = dict(self.spend)
        spend[budget] = self[budget] - calls + calls / per_call
        return RotationCost(spend, label or self.label)

    def without(self, budget: Budget, calls: float, label: str | None = None) -> RotationCost:
        """A copy that spends ``calls`` fewer operations on ``budget``."""
        if calls > self[budget] + 1e-9:
            raise ValueError(f"{budget} spends {self[budget]:g}, fewer than {calls:g}")
        spend = dict(self.spend)
        spend[budget] = max(0.0, self[budget] - calls)
        return RotationCost(spend, label or self.label)

    def to_dict(self) -> dict[str, float]:
        return {b.value: v for b, v in sorted(self.spend.items())}


#: Page size of the campaign's twin query (the hub returns at most 1,000 twins a page in
#: certroll's queries): one query per 1,000 devices.
QUERY_PAGE_SIZE = 1000

#: One rotation today, measured on the emulator with its limits on (1,000-device demo,
#: every call counted against its budget; issue 18), plus the campaign's twin query at
#: one page per :data:`QUERY_PAGE_SIZE` devices.
MEASURED_COST = RotationCost(
    {
        Budget.HUB_IDENTITY_OPS: 3.1,
        Budget.DPS_SERVICE_OPS: 3.5,
        Budget.HUB_TWIN_UPDATES: 3.0,
        Budget.HUB_DIRECT_METHODS: 1.0,
        Budget.DPS_REGISTRATIONS: 1.0,
        Budget.SIGNATURES: 1.0,
        Budget.STORAGE_REQUESTS: 18.3,
        Budget.HUB_QUERIES: 1 / QUERY_PAGE_SIZE,
    },
    label="measured",
)


def parse_cost_overrides(items: Iterable[str], base: RotationCost = MEASURED_COST) -> RotationCost:
    """``["hub.identity_operations=2.1", ...]`` applied to ``base`` (ValueError when malformed)."""
    spend = dict(base.spend)
    changed = False
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"expected BUDGET=OPS, got {item!r}")
        try:
            budget = Budget(name.strip())
        except ValueError:
            known = ", ".join(b.value for b in Budget if b not in CONCURRENT_BUDGETS)
            raise ValueError(f"unknown budget {name.strip()!r}; one of {known}") from None
        spend[budget] = float(value)
        changed = True
    return RotationCost(spend, "custom" if changed else base.label)


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class BudgetLine:
    """One budget in a plan."""

    limit: Limit
    cost: float  # per rotation
    bound_per_min: float | None  # rotations/min this budget allows at its limit (None: unspent)
    paced_per_min: float  # what the campaign spends here per minute at the plan's pace
    share: float  # paced spend / limit

    @property
    def budget(self) -> Budget:
        return self.limit.budget

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget": self.budget.value,
            "limit_per_min": self.limit.per_minute,
            "limit_stated_as": self.limit.stated_as,
            "scope": self.limit.scope,
            "source": self.limit.source,
            "cost_per_rotation": self.cost,
            "bound_rotations_per_min": self.bound_per_min,
            "spend_per_min_at_pace": self.paced_per_min,
            "share_of_limit_at_pace": self.share,
        }


@dataclass(frozen=True)
class Plan:
    """A campaign's bound and pace for one configuration and rotation cost."""

    config: Configuration
    cost: RotationCost
    devices: int
    headroom: float
    lines: tuple[BudgetLine, ...]
    bound_per_min: float  # at the documented limits
    binding: Budget
    concurrent: Mapping[Budget, Limit] = field(default_factory=dict)

    @property
    def pace_per_min(self) -> float:
        """The rate the campaign runs at: each budget at most ``1 - headroom`` of its limit."""
        return self.bound_per_min * (1.0 - self.headroom)

    @property
    def eta_minutes_at_bound(self) -> float:
        return self.devices / self.bound_per_min

    @property
    def eta_minutes(self) -> float:
        """Minutes for ``devices`` at the pace."""
        return self.devices / self.pace_per_min if self.pace_per_min > 0 else math.inf

    def line(self, budget: Budget) -> BudgetLine:
        for line in self.lines:
            if line.budget is budget:
                return line
        raise KeyError(budget)

    def pacer(self, burst_seconds: float = 10.0) -> PacerSpec:
        return pacer_spec(self, burst_seconds)

    def to_dict(self) -> dict[str, Any]:
        return {
            "configuration": {
                "hub_tier": self.config.hub_tier,
                "hub_units": self.config.hub_units,
                "dps_instances": self.config.dps_instances,
                "signing": self.config.signing,
                "signing_units": self.config.signing_units,
                "curve": self.config.curve,
                "storage_accounts": self.config.storage_accounts,
            },
            "devices": self.devices,
            "headroom": self.headroom,
            "cost": {"label": self.cost.label, "per_rotation": self.cost.to_dict()},
            "bound_rotations_per_min": self.bound_per_min,
            "binding_budget": self.binding.value,
            "pace_rotations_per_min": self.pace_per_min,
            "eta_minutes_at_bound": self.eta_minutes_at_bound,
            "eta_minutes": self.eta_minutes,
            "eta_at_bound": format_duration(self.eta_minutes_at_bound),
            "eta": format_duration(self.eta_minutes),
            "budgets": [line.to_dict() for line in self.lines],
            "concurrent": {
                b.value: {"limit": lim.per_minute, "stated_as": lim.stated_as, "source": lim.source}
                for b, lim in self.concurrent.items()
            },
            "pacer": self.pacer().to_dict(),
        }


def plan(
    config: Configuration,
    devices: int,
    cost: RotationCost = MEASURED_COST,
    headroom: float = 0.1,
) -> Plan:
    """The bound (rotations/min at the documented limits), the binding budget, and the
    pace (``1 - headroom`` of the bound) for re-rolling ``devices`` devices.

    A budget the cost spends but ``config`` has no documented limit for (signing through
    PKCS#11) does not bound the plan: ValueError only if nothing bounds it at all.
    """
    if devices < 0:
        raise ValueError("devices must be >= 0")
    if not 0.0 <= headroom < 1.0:
        raise ValueError("headroom must be in [0, 1)")
    table = limits(config)
    bounds: dict[Budget, float] = {}
    for budget, limit in table.items():
        if budget in CONCURRENT_BUDGETS:
            continue
        spent = cost[budget]
        if spent > 0:
            bounds[budget] = limit.per_minute / spent
    if not bounds:
        raise ValueError("the rotation cost spends no budget with a documented limit")
    # ties: the first in Budget order binds (deterministic)
    order = list(Budget)
    binding = min(bounds, key=lambda b: (bounds[b], order.index(b)))
    bound = bounds[binding]
    pace = bound * (1.0 - headroom)
    lines = []
    for budget in Budget:
        if budget in CONCURRENT_BUDGETS or budget not in table:
            continue
        limit = table[budget]
        spend = cost[budget] * pace
        lines.append(
            BudgetLine(
                limit=limit,
                cost=cost[budget],
                bound_per_min=bounds.get(budget),
                paced_per_min=spend,
                share=spend / limit.per_minute,
            )
        )
    concurrent = {b: table[b] for b in CONCURRENT_BUDGETS if b in table}
    return Plan(config, cost, devices, headroom, tuple(lines), bound, binding, concurrent)


# --------------------------------------------------------------------------- pacer


@dataclass(frozen=True)
class BucketSpec:
    """One token bucket of the pacer: ``rate_per_min`` tokens a minute, at most ``burst``
    held; a rotation takes ``cost`` tokens."""

    budget: Budget
    rate_per_min: float
    burst: float
    cost: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget": self.budget.value,
            "rate_per_min": self.rate_per_min,
            "burst": self.burst,
            "cost_per_rotation": self.cost,
        }


@dataclass(frozen=True)
class PacerSpec:
    """Token buckets a campaign takes from before it starts a rotation: one per budget a
    rotation spends, each refilled at ``1 - headroom`` of that budget's limit. Taking a
    rotation's cost from every bucket admits it; the binding budget's bucket is the one
    that makes the campaign wait."""

    buckets: tuple[BucketSpec, ...]
    rotations_per_min: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "rotations_per_min": self.rotations_per_min,
            "buckets": [b.to_dict() for b in self.buckets],
        }

    def build(self, clock: Clock) -> Pacer:
        return Pacer(self, clock)


def pacer_spec(p: Plan, burst_seconds: float = 10.0) -> PacerSpec:
    """The pacer for plan ``p``: bursts of ``burst_seconds`` of each budget's rate (never
    less than one rotation's cost)."""
    if burst_seconds <= 0:
        raise ValueError("burst_seconds must be positive")
    buckets = []
    for line in p.lines:
        if line.cost <= 0:
            continue
        rate = line.limit.per_minute * (1.0 - p.headroom)
        burst = max(1.0, line.cost, rate / 60.0 * burst_seconds)
        buckets.append(BucketSpec(line.budget, rate, burst, line.cost))
    return PacerSpec(tuple(buckets), p.pace_per_min)


class Pacer:
    """The buckets of a :class:`PacerSpec` on a clock (no sleeping: callers wait)."""

    def __init__(self, spec: PacerSpec, clock: Clock) -> None:
        self.spec = spec
        self._lock = threading.Lock()
        self._buckets: list[tuple[BucketSpec, TokenBucket]] = [
            (b, TokenBucket(b.rate_per_min / 60.0, b.burst, clock, name=b.budget.value))
            for b in spec.buckets
        ]

    def try_admit(self, rotations: int = 1) -> float:
        """Admit ``rotations`` rotations (take their cost from every bucket) and return 0.0,
        or take nothing and return the seconds to wait before asking again."""
        if rotations < 1:
            raise ValueError("rotations must be at least 1")
        with self._lock:
            wait = 0.0
            for spec, bucket in self._buckets:
                need = spec.cost * rotations
                if need > bucket.capacity:
                    raise ValueError(
                        f"{rotations} rotations need {need:g} of {spec.budget}, more than "
                        f"its burst {bucket.capacity:g}"
                    )
                have = bucket.available()
                if have < need - 1e-9:
                    wait = max(wait, (need - have) / bucket.rate)
            if wait > 0:
                return math.ceil(wait * 1e6) / 1e6
            for spec, bucket in self._buckets:
                bucket.try_take(spec.cost * rotations)
            return 0.0


#: One campaign rotation after the reductions of docs/performance.md ("Spending less per
#: rotation"), measured on the emulator (``make bench``, section campaign: S3 x1, 10,000
#: devices, 30 % of the fleet in a CA enrollment group, every admitted operation counted
#: by the emulator's limit buckets): no hub identity operation (DPS registration writes
#: the identity); DPS service operations: the finish's read of an individual enrollment
#: (0.7), the enroll and finish writes in bulk calls of up to ten, the campaign's pages of
#: the enrollment query (the enroll step starts from them) — a bulk call counted as one
#: operation, which Microsoft does not document (:data:`CAMPAIGN_COST_BULK_PER_ITEM` is
#: the other reading); 5 twin updates (3 desired patches, 2 reported by the device), 1
#: twin read (the device reads its desired twin after it reconnects). The campaign
#: engine paces with it.
CAMPAIGN_COST = RotationCost(
    {
        Budget.DPS_REGISTRATIONS: 1.0,
        Budget.DPS_SERVICE_OPS: 0.9,
        Budget.HUB_TWIN_READS: 1.0,
        Budget.HUB_TWIN_UPDATES: 5.0,
        Budget.HUB_DIRECT_METHODS: 1.0,
        Budget.SIGNATURES: 1.0,
        Budget.STORAGE_REQUESTS: 23.8,
        Budget.HUB_QUERIES: 1 / QUERY_PAGE_SIZE,
    },
    label="campaign (measured)",
)

#: :data:`CAMPAIGN_COST` had DPS counted each enrollment of a bulk call as one service
#: operation (measured in the same run: the same calls, items counted instead).
CAMPAIGN_COST_BULK_PER_ITEM = CAMPAIGN_COST.with_spend(
    label="campaign, bulk counted per enrollment", dps_service_ops=2.1
)

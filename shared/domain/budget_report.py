"""The budget planner's output: the text ``certroll campaign plan`` prints and the table
docs/performance.md carries (a test keeps the two equal). The arithmetic is in
:mod:`shared.domain.budget`."""

from __future__ import annotations

from collections.abc import Iterable

from shared.domain.budget import (
    CAMPAIGN_COST,
    CAMPAIGN_COST_BULK_PER_ITEM,
    MEASURED_COST,
    Budget,
    Configuration,
    Plan,
    RotationCost,
    format_duration,
    plan,
)

# --------------------------------------------------------------------------- output


def _rate(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def render_plan(p: Plan) -> str:
    """The plan as text: the bound, the binding budget, the ETA and each budget's figures."""
    out = [
        f"configuration: hub {p.config.hub_tier}x{p.config.hub_units}, "
        f"{p.config.dps_instances} DPS instance(s), signing {p.config.signing}"
        + (f" x{p.config.signing_units}" if p.config.signing != "none" else ""),
        f"devices: {p.devices:,}   rotation cost: {p.cost.label}   headroom: {p.headroom:.0%}",
        f"bound: {p.bound_per_min:,.1f} rotations/min, binding budget {p.binding.value}",
        f"pace: {p.pace_per_min:,.1f} rotations/min ({1 - p.headroom:.0%} of the bound)",
        f"eta: {format_duration(p.eta_minutes)} at the pace "
        f"({format_duration(p.eta_minutes_at_bound)} at the bound)",
        "",
        f"{'budget':<28}{'limit/min':>12}{'per rotation':>14}{'bound/min':>12}"
        f"{'at pace':>10}  limit as stated",
    ]
    for line in p.lines:
        mark = " *" if line.budget is p.binding else ""
        out.append(
            f"{line.budget.value + mark:<28}{_rate(line.limit.per_minute):>12}"
            f"{line.cost:>14.3g}{_rate(line.bound_per_min):>12}{line.share:>10.0%}"
            f"  {line.limit.stated_as} ({line.limit.scope})"
        )
    for budget, lim in p.concurrent.items():
        out.append(
            f"{budget.value:<28}{lim.per_minute:>12g}{'-':>14}{'-':>12}{'-':>10}"
            f"  {lim.stated_as}: jobs at once, a rotation runs none"
        )
    out.append("")
    out.append("* binding budget. Sources: docs/performance.md.")
    return "\n".join(out)


#: The configurations docs/performance.md tabulates (issue 18).
DOC_CONFIGURATIONS: tuple[Configuration, ...] = (
    Configuration("S1", 1, 1),
    Configuration("S1", 1, 4),
    Configuration("S1", 10, 1),
    Configuration("S1", 10, 2),
    Configuration("S1", 10, 4),
    Configuration("S3", 1, 1),
    Configuration("S3", 1, 2),
    Configuration("S3", 1, 4),
)


#: An illustration of a reduced vector (not a measurement): the hub identity write that
#: DPS re-registration already makes dropped, one DPS enrollment write sent in a bulk
#: operation of ten.
EXAMPLE_REDUCED_COST = MEASURED_COST.without(Budget.HUB_IDENTITY_OPS, 1).batched(
    Budget.DPS_SERVICE_OPS, calls=1, per_call=10, label="reduced (example)"
)

#: The rotation costs docs/performance.md tabulates.
DOC_COSTS: tuple[RotationCost, ...] = (
    MEASURED_COST,
    EXAMPLE_REDUCED_COST,
    CAMPAIGN_COST,
    CAMPAIGN_COST_BULK_PER_ITEM,
)


def markdown_table(
    configs: Iterable[Configuration] = DOC_CONFIGURATIONS,
    costs: Iterable[RotationCost] = (MEASURED_COST,),
    devices: int = 1_000_000,
    headroom: float = 0.1,
) -> str:
    """The table docs/performance.md carries (a test keeps the two equal)."""
    rows = [
        "| configuration | rotation cost | bound (rotations/min) | binding budget "
        f"| {devices:,} devices at the bound | at {1 - headroom:.0%} pace |",
        "|---|---|---:|---|---:|---:|",
    ]
    cost_list = list(costs)
    for config in configs:
        for cost in cost_list:
            p = plan(config, devices, cost, headroom)
            rows.append(
                f"| {config.label()} | {cost.label} | {p.bound_per_min:,.1f} "
                f"| {p.binding.value} | {format_duration(p.eta_minutes_at_bound)} "
                f"| {format_duration(p.eta_minutes)} |"
            )
    return "\n".join(rows)

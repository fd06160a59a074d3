"""Device-side faults: clocks skewed by minutes, devices offline for hours."""

from __future__ import annotations

from datetime import timedelta

from local.device.simulator import FleetSimulator
from local.soak.plan import FaultPlan

SKEW_SECONDS = (30, 240)  # within the issuer's 300 s backdate (CERTROLL_BACKDATE_SECONDS)
OFFLINE_HOURS = (1.0, 6.0)


def skew_clocks(sim: FleetSimulator, plan: FaultPlan, device_ids: list[str]) -> dict[str, float]:
    """Give a share of the devices a clock off by minutes, ahead or behind; the offsets."""
    chosen = plan.rng.sample(device_ids, round(plan.rates.skew * len(device_ids)))
    offsets: dict[str, float] = {}
    for device_id in sorted(chosen):
        seconds = plan.rng.randint(*SKEW_SECONDS) * plan.rng.choice((-1, 1))
        sim.agents[device_id].clock_skew = timedelta(seconds=seconds)
        offsets[device_id] = seconds
    plan.count("device_clock_skew", len(offsets))
    return offsets


def offline_wave(sim: FleetSimulator, plan: FaultPlan, device_ids: list[str]) -> list[str]:
    """Power off a share of the devices, each for its own number of hours."""
    online = [d for d in device_ids if not sim.agents[d].offline]
    chosen = sorted(
        plan.rng.sample(online, min(len(online), round(plan.rates.offline * len(device_ids))))
    )
    for device_id in chosen:
        hours = plan.rng.uniform(*OFFLINE_HOURS)
        sim.take_offline([device_id], timedelta(hours=hours))
    plan.count("device_offline_hours", len(chosen))
    return chosen

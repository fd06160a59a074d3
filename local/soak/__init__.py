"""``certroll soak``: faults at scale against the local stack, and proof nothing is lost
(docs/reliability.md, "Soak")."""

from local.soak.plan import FaultPlan, FaultRates, all_kinds
from local.soak.run import SoakOptions, SoakResult, run_soak

__all__ = ["FaultPlan", "FaultRates", "SoakOptions", "SoakResult", "all_kinds", "run_soak"]

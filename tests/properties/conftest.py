"""Hypothesis settings profiles for the property-based tests of the inbound parsers.

``fast`` (the default, what ``make test`` runs): a few hundred generated inputs per
property. ``thorough``: thousands per property, for a deliberate run::

    HYPOTHESIS_PROFILE=thorough .venv/bin/pytest -q tests/properties
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    "database": None,
    "derandomize": False,
}
settings.register_profile("fast", max_examples=300, **_COMMON)
settings.register_profile("thorough", max_examples=5000, **_COMMON)
# ``make mutation``: a fixed sample per property, so a mutant's verdict is reproducible
settings.register_profile("mutation", max_examples=20, **{**_COMMON, "derandomize": True})
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))

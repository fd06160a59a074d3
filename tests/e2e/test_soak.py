"""A short soak end to end: faults of every kind while a fleet rotates, and nothing lost.

Runs on its own Azurite (started, restarted mid-run and removed by the soak), so it does
not need the shared one. ``certroll soak --devices 1000 --seed 7`` is the full run
(docs/reliability.md, "Soak")."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from local.soak import FaultRates, SoakOptions, all_kinds, run_soak
from shared.settings import Settings

DEVICES = 200
SEED = 11
#: higher than the defaults, so that every kind strikes at least once in a short run
RATES = dataclasses.replace(
    FaultRates(), dps_call=0.06, hub_call=0.04, storage_call=0.006, signing_key_call=0.15,
    worker_kill=0.3,
)  # fmt: skip
KEYS = {
    "devices",
    "faults_injected",
    "rotations_completed",
    "lost",
    "double_issuances",
    "max_gap_seconds",
    "invariants_ok",
}


@pytest.mark.slow
def test_a_short_soak_injects_every_fault_and_loses_nothing(tmp_path: Path) -> None:
    settings = Settings.from_env({"CERTROLL_HOME": str(tmp_path)})
    result = run_soak(settings, SoakOptions(devices=DEVICES, seed=SEED, rates=RATES))
    summary = result.summary
    assert set(summary) >= KEYS
    json.dumps(summary)  # what --json prints
    failed = [i for i in summary["invariants"] if not i["ok"]]
    assert summary["invariants_ok"], failed
    assert result.ok
    assert summary["devices"] == DEVICES
    assert summary["lost"] == 0
    assert summary["double_issuances"] == 0
    assert summary["rotations_completed"] == DEVICES - 1  # all but the disallowed device
    injected = summary["faults_injected"]
    assert set(injected) == set(all_kinds())
    assert {k: n for k, n in injected.items() if n == 0} == {}
    assert len(summary["invariants"]) == 8

"""``certroll demo --ca-roll`` end to end on a small fleet: the fleet moves to a new
issuing CA through the operator API and every check of the demo passes."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from local.demo import DemoOptions, run_demo
from local.stack import drop_run_storage, run_settings
from shared.settings import Settings


@pytest.mark.azurite
@pytest.mark.parametrize("mode", ["normal", "compromise"])
def test_demo_ca_roll_moves_a_small_fleet_to_a_new_ca(
    azurite: str, tmp_path: Path, mode: str
) -> None:
    run_id = uuid.uuid4().hex[:12]
    settings = Settings.from_env({"CERTROLL_HOME": str(tmp_path), "CERTROLL_STORAGE": azurite})
    options = DemoOptions(
        devices=12,
        ca_roll=True,
        ca_roll_mode=mode,
        key_backend="file",
        run_id=run_id,
        progress=False,
    )
    try:
        result = run_demo(settings, options)
    finally:
        drop_run_storage(run_settings(Settings({**settings.values}), run_id))
    failed = [c for c in result.checks if not c.ok]
    assert not failed, failed
    names = {c.name for c in result.checks}
    assert "every device's certificate chains to the new CA and is valid now" in names
    assert any(n.startswith("the old CA is") for n in names)
    assert ("the root CRL revokes the old issuing CA" in names) is (mode == "compromise")
    summary = result.summary
    assert summary["rolled"] == summary["devices"] == 12
    assert summary["failed"] == 0
    assert summary["certificates_issued"] >= 12
    assert summary["new_ca"] == "issuing-2"

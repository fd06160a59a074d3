"""The demo end to end: 1,000 devices rotated by the functions on the local stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

from local.demo import METRIC_KEYS, SUMMARY_KEYS, DemoOptions, run_demo
from local.ledger import read_ledger_rows
from local.stack import drop_run_storage, local_storage, run_settings
from shared.bootstrap import CRL_NAME
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
# the console script's entry point, run by this interpreter from the checkout
CERTROLL = [sys.executable, "-c", "import sys; from cli.main import main; sys.exit(main())"]
DEVICES = 1000


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CERTROLL_", "SOFTHSM2"))}
    env["CERTROLL_HOME"] = str(home)
    return env


@pytest.mark.slow
@pytest.mark.azurite
def test_demo_rotates_1000_devices(tmp_path: Path) -> None:
    run_id = uuid.uuid4().hex[:12]
    report = tmp_path / "report.html"
    settings = run_settings(Settings.from_env({"CERTROLL_HOME": str(tmp_path)}), run_id)
    try:
        done = subprocess.run(
            [*CERTROLL, "demo", "--devices", str(DEVICES), "--json",
             "--no-progress", "--run-id", run_id, "--report", str(report)],
            cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=900,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-4000:]
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        assert list(summary) == [*SUMMARY_KEYS, "metrics"]
        metrics = summary["metrics"]
        assert set(METRIC_KEYS) <= set(metrics)
        assert metrics["certroll.rotations"]["outcome=completed,trigger=expiring"] == DEVICES - 1
        assert metrics["certroll.disallowed"] == {"": 1}
        assert summary["devices"] == DEVICES
        assert summary["renewed"] == DEVICES - 1
        assert summary["failed"] == 0
        assert summary["disallowed"] == 1
        assert summary["reconciled"] == 1
        assert summary["certificates_issued"] == summary["renewed"]
        assert summary["duplicate_events"] > 0
        assert summary["disallowed_reconnect_attempts"] > 0
        assert summary["disallowed_reconnect_rejected"] == summary["disallowed_reconnect_attempts"]
        assert summary["max_gap_seconds"] >= 0
        assert summary["elapsed_seconds"] > 0

        # the ledger and the CRL, read back independently of the demo process
        rows = read_ledger_rows(settings)
        by_device: dict[str, list[dict[str, object]]] = defaultdict(list)
        for row in rows:
            by_device[row["device_id"]].append(row)
        assert len(by_device) == DEVICES
        revoked_devices = [
            d for d, recs in by_device.items() if any(r["status"] == "revoked" for r in recs)
        ]
        assert len(revoked_devices) == 1
        others = [d for d in by_device if d != revoked_devices[0]]
        assert all(len(by_device[d]) == 2 for d in others)
        assert all(
            sorted(str(r["status"]) for r in by_device[d]) == ["active", "superseded"]
            for d in others
        )
        assert all(r["status"] == "revoked" for r in by_device[revoked_devices[0]])

        pki = tmp_path / "demo" / "pki"
        root = x509.load_pem_x509_certificate((pki / "root.pem").read_bytes())
        issuing = x509.load_pem_x509_certificate((pki / "issuing.pem").read_bytes())
        issuing.verify_directly_issued_by(root)
        storage, _ = local_storage(settings)
        crl = x509.load_der_x509_crl(storage.crl_publisher.fetch(CRL_NAME))
        assert crl.is_signature_valid(issuing.public_key())
        ledger = storage.ledger
        for record in ledger.list_for_device(revoked_devices[0]):
            assert crl.get_revoked_certificate_by_serial_number(int(record.serial, 16))
        now = datetime.now(UTC)
        for device_id in others[:50]:
            active = [r for r in ledger.list_for_device(device_id) if r.status == "active"]
            assert len(active) == 1
            assert active[0].trigger != "provision"
            leaf = x509.load_pem_x509_certificate(active[0].pem.encode())
            leaf.verify_directly_issued_by(issuing)
            assert leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc
            assert crl.get_revoked_certificate_by_serial_number(leaf.serial_number) is None

        html = report.read_text(encoding="utf-8")
        assert f"Before: {DEVICES} devices" in html
        assert f"After: {DEVICES - 1} devices" in html
    finally:
        drop_run_storage(settings)


@pytest.mark.azurite
@pytest.mark.parametrize("transport", ["http", "https"])
def test_demo_over_the_production_adapters(tmp_path: Path, transport: str) -> None:
    """A small fleet with --transport http or https: DPS/IoT Hub adapters over the
    emulator's REST front end (https: a loopback server certificate they trust)."""
    run_id = uuid.uuid4().hex[:12]
    base = Settings.from_env({"CERTROLL_HOME": str(tmp_path / "home")})
    try:
        result = run_demo(
            base,
            DemoOptions(devices=12, transport=transport, key_backend="file", run_id=run_id,
                        progress=False, offline_fraction=0.2),
        )
        failed = [c for c in result.checks if not c.ok]
        assert failed == []
        assert result.transport == transport
        assert result.summary["renewed"] == 11
        assert result.summary["failed"] == 0
        assert result.summary["disallowed"] == 1
        assert result.summary["reconciled"] == 1
        assert result.summary["certificates_issued"] == 11
        assert result.summary["disallowed_reconnect_attempts"] > 0
        assert (
            result.summary["disallowed_reconnect_rejected"]
            == result.summary["disallowed_reconnect_attempts"]
        )
        assert len(result.after) == 11
        assert result.after_at is not None
        assert result.before_at is not None
        assert min(result.after) > max(result.before)
        assert set(METRIC_KEYS) <= set(result.metrics)
        rotations = result.metrics["certroll.rotations"]
        assert rotations["outcome=completed,trigger=expiring"] == 11
        assert result.metrics["certroll.devices_by_status"]["status=disallowed"] == 1
        assert result.metrics["certroll.devices_by_status"]["status=ok"] == 11
    finally:
        drop_run_storage(run_settings(base, run_id))


def test_demo_refuses_bad_options() -> None:
    from shared.domain.errors import InvalidRequestError

    for bad in ({"devices": 1}, {"transport": "carrier-pigeon"}, {"group_fraction": 1.5}):
        with pytest.raises(InvalidRequestError):
            DemoOptions(**bad)  # type: ignore[arg-type]

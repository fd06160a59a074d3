"""The fleet report from a ledger: the snapshot, the HTML, ``certroll report`` on Azurite's
configured storage, and the page as headless Chromium renders it."""

from __future__ import annotations

import re
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cli.main import main
from local.report import render_fleet_report
from shared.adapters.memory import MemoryAuditLog, MemoryLedger, MemoryRotationStore
from shared.domain.fleet import build_snapshot, expiry_bucket
from shared.domain.model import (
    AuditEvent,
    CertificateRecord,
    CertificateStatus,
    RotationRecord,
    RotationState,
)
from shared.domain.policy import RotationPolicy
from shared.ports import AuditLog, CertificateLedger, RotationStateStore

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
CHROMIUM = Path("/usr/bin/chromium")
KEY_OLD = "https://vault.example/keys/issuing/1"
KEY_NEW = "https://vault.example/keys/issuing/2"


def _cert(device_id: str, n: int, *, days_left: float, key: str, status: str) -> CertificateRecord:
    issued = NOW - timedelta(days=30 - days_left)
    serial = f"{abs(hash((device_id, n))) % 16**12:012x}"
    return CertificateRecord(
        serial=serial,
        device_id=device_id,
        thumbprint_sha256=(serial * 6)[:64],
        not_before=issued,
        not_after=issued + timedelta(days=30),
        csr_sha256=f"{n:064x}",
        issuer_key_id=key,
        trigger="expiring",
        request_id=f"req-{serial}",
        status=CertificateStatus(status),
        pem="-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        issued_at=issued,
    )


def populate(state: RotationStateStore, ledger: CertificateLedger, audit: AuditLog) -> None:
    """Six devices, one per status, and a disallow and a reconcile in the audit log."""
    plan = [
        # device, days left on its certificate, state, extra record fields
        ("dev-ok", 25.0, RotationState.IDLE, {}),
        ("dev-late", 5.0, RotationState.IDLE, {}),
        ("dev-overdue", -2.0, RotationState.IDLE, {}),
        (
            "dev-stuck",
            9.0,
            RotationState.DELIVERED,
            {"deadline": NOW - timedelta(hours=3), "reason": "ca-roll", "request_id": "r1"},
        ),
        ("dev-failed", 8.0, RotationState.FAILED, {"last_error": "csr_rejected: weak key"}),
        (
            "dev-gone",
            20.0,
            RotationState.DISALLOWED,
            {"disallowed_reason": "reported stolen", "disallowed_by": "alice"},
        ),
    ]
    for i, (device_id, days_left, rotation_state, extra) in enumerate(plan):
        key = KEY_OLD if device_id == "dev-overdue" else KEY_NEW
        status = "revoked" if rotation_state is RotationState.DISALLOWED else "active"
        cert = ledger.add(_cert(device_id, i, days_left=days_left, key=key, status="issued"))
        ledger.set_status(cert.serial, CertificateStatus(status))
        if i == 0:  # a superseded predecessor under the old key
            old = ledger.add(_cert(device_id, 100, days_left=-8, key=KEY_OLD, status="issued"))
            ledger.set_status(old.serial, CertificateStatus.SUPERSEDED)
        state.put(
            RotationRecord(
                device_id=device_id,
                state=rotation_state,
                current_serial=cert.serial,
                current_not_after=cert.not_after,
                updated_at=NOW - timedelta(hours=1),
                **extra,
            )
        )
    audit.append(
        AuditEvent("disallow", "ok", "api:alice", "dev-gone", detail={"reason": "reported stolen"},
                   at=NOW - timedelta(hours=2))
    )
    audit.append(
        AuditEvent("reconcile", "rejected", "system:rotation", "dev-ok",
                   detail={"result": "unknown_certificate", "code": 401003},
                   at=NOW - timedelta(hours=1))
    )


def test_snapshot_statuses_buckets_and_issuers() -> None:
    state, ledger, audit = MemoryRotationStore(), MemoryLedger(), MemoryAuditLog()
    populate(state, ledger, audit)
    policy = RotationPolicy(renewal_jitter=0.0)
    snap = build_snapshot(
        records=state.list(),
        certificates=ledger.list_all(),
        audit=audit.list(None, 100),
        current_key_id=KEY_NEW,
        policy=policy,
        now=NOW,
    )
    assert snap.devices == 6
    assert snap.certificates == 7
    assert {p.device_id: p.status for p in snap.problems} == {
        "dev-late": "late",
        "dev-overdue": "overdue",
        "dev-stuck": "stuck",
        "dev-failed": "failed",
        "dev-gone": "disallowed",
    }
    assert dict(snap.statuses) == {
        "ok": 1, "late": 1, "overdue": 1, "stuck": 1, "failed": 1, "disallowed": 1
    }
    reasons = {p.device_id: p.reason for p in snap.problems}
    assert reasons["dev-failed"] == "csr_rejected: weak key"
    assert reasons["dev-gone"] == "reported stolen"
    assert reasons["dev-late"].startswith("renewal due since")
    # the disallowed device's certificate is revoked: not in the expiry histogram
    assert sum(snap.expiry_days.values()) == 5
    assert snap.expiry_buckets["expired"] == 1
    assert snap.certificates_by_issuer[KEY_OLD] == {"active": 1, "superseded": 1}
    assert snap.certificates_by_issuer[KEY_NEW] == {"active": 4, "revoked": 1}
    assert snap.in_flight == {"ca-roll": 1}
    assert (snap.on_current_key, snap.on_other_key) == (5, 1)
    assert [e.device_id for e in snap.recent_disallows] == ["dev-gone"]
    assert [e.detail["result"] for e in snap.recent_reconciles] == ["unknown_certificate"]


@pytest.mark.parametrize(
    ("days", "bucket"),
    [(-1, "expired"), (0, "0-3"), (3, "0-3"), (4, "4-7"), (14, "8-14"), (30, "15-30"),
     (31, "31-90"), (400, "91+")],
)
def test_expiry_buckets(days: int, bucket: str) -> None:
    assert expiry_bucket(days) == bucket


def _html() -> str:
    state, ledger, audit = MemoryRotationStore(), MemoryLedger(), MemoryAuditLog()
    populate(state, ledger, audit)
    snap = build_snapshot(
        records=state.list(),
        certificates=ledger.list_all(),
        audit=audit.list(None, 100),
        current_key_id=KEY_NEW,
        now=NOW,
    )
    return render_fleet_report(snap, source="test ledger <&>")


def test_report_is_one_self_contained_page() -> None:
    page = _html()
    assert page.startswith("<!doctype html>")
    assert "<script" not in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "test ledger &lt;&amp;&gt;" in page
    for section in (
        "Devices by status",
        "Devices that need attention",
        "Certificates per issuing CA",
        "Recent disallows",
        "Recent reconciles",
    ):
        assert f"<h2>{section}</h2>" in page
    for text in ("dev-stuck", "csr_rejected: weak key", "reported stolen", "unknown_certificate",
                 KEY_OLD, "<svg"):
        assert text in page


@pytest.mark.azurite
def test_certroll_report_reads_the_configured_storage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from local.stack import drop_run_storage
    from shared.bootstrap import Services
    from shared.settings import Settings

    prefix = f"rep{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("CERTROLL_HOME", str(tmp_path))
    monkeypatch.setenv("CERTROLL_TABLE_PREFIX", prefix)
    settings = Settings.from_env()
    services = Services(settings)
    try:
        populate(services.state, services.ledger, services.audit)
        out = tmp_path / "fleet.html"
        assert main(["report", "--html", str(out)]) == 0
        page = out.read_text(encoding="utf-8")
        assert f"tables {prefix}* of the configured storage" in page
        assert "6 devices" in page
        assert "dev-failed" in page
        assert "csr_rejected: weak key" in page
        assert "reported stolen" in page
    finally:
        drop_run_storage(settings)


def test_empty_storage_is_reported_as_not_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CERTROLL_HOME", str(tmp_path))
    monkeypatch.setenv("CERTROLL_STORAGE", "memory")
    assert main(["report", "--html", str(tmp_path / "x.html"), "--run-id", "none"]) == 3
    assert "no device and no certificate" in capsys.readouterr().err


@pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="headless Chromium is missing: install the Debian package chromium (make install "
    "does as root)",
)
def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    page = tmp_path / "fleet.html"
    page.write_text(_html(), encoding="utf-8")
    shot = tmp_path / "fleet.png"
    common = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        [*common, "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    # the browser parsed the page: the tables and the chart are in its DOM
    assert "dev-overdue" in dom
    assert dom.count("<tr>") >= 10
    assert "<rect" in dom
    subprocess.run(
        [*common, f"--screenshot={shot}", "--window-size=1200,1800", page.as_uri()],
        capture_output=True, timeout=120, check=True,
    )
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG")
    assert len(data) > 10_000

"""The local stack's helpers (no Azurite needed)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from local.ledger import ledger_snapshot
from local.stack import (
    LocalStack,
    _device_of,
    choose_key_backend,
    demo_times,
    load_or_create_function_key,
    run_settings,
)
from shared.domain.errors import InvalidRequestError
from shared.settings import Settings

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def test_demo_times_put_the_rotation_before_now() -> None:
    birth, start = demo_times(T0, age=timedelta(days=22), margin=timedelta(hours=3))
    assert start == T0 - timedelta(hours=3)
    assert birth == start - timedelta(days=22)


@pytest.mark.parametrize(
    ("message", "device"),
    [
        ({"properties": {"deviceId": "a"}, "systemProperties": {}}, "a"),
        ({"properties": {}, "systemProperties": {"iothub-connection-device-id": "b"}}, "b"),
        ({"eventType": "Microsoft.Devices.DeviceConnected", "data": {"deviceId": "c"}}, "c"),
        ({"subject": "devices/d"}, "devices/d"),
        ({"body": {"records": []}}, ""),
    ],
)
def test_messages_are_partitioned_by_device(message: dict[str, object], device: str) -> None:
    assert _device_of(message) == device


def test_run_settings_name_everything_after_the_run() -> None:
    base = Settings.from_env({})
    named = run_settings(base, "abc123")
    assert named.get("CERTROLL_TABLE_PREFIX") == "certrollabc123"
    assert named.get("CERTROLL_WORK_QUEUE") == "certroll-rotation-abc123"
    assert named.get("CERTROLL_PKI_CONTAINER") == "pki-abc123"
    for bad in ("", "ABC", "a-b", "x" * 17):
        with pytest.raises(InvalidRequestError):
            run_settings(base, bad)


def test_key_backend_follows_an_existing_pki(tmp_path: Path) -> None:
    (tmp_path / "pki").mkdir()
    (tmp_path / "pki" / "pki.json").write_text(json.dumps({"backend": "file"}))
    assert choose_key_backend(tmp_path) == "file"
    assert choose_key_backend(tmp_path, "file") == "file"
    with pytest.raises(InvalidRequestError):
        choose_key_backend(tmp_path, "pkcs11")
    with pytest.raises(InvalidRequestError):
        choose_key_backend(tmp_path / "new", "hsm-in-the-cloud")


def test_function_key_is_private_and_kept(tmp_path: Path) -> None:
    key, path = load_or_create_function_key(tmp_path)
    assert len(key) >= 32
    assert path.stat().st_mode & 0o777 == 0o600
    again, _ = load_or_create_function_key(tmp_path)
    assert again == key


def test_bad_stack_options_are_refused(tmp_path: Path) -> None:
    settings = Settings.from_env({"CERTROLL_HOME": str(tmp_path)})
    with pytest.raises(InvalidRequestError):
        LocalStack(settings, transport="smoke-signals")
    with pytest.raises(InvalidRequestError):
        LocalStack(settings, duplicate_fraction=2.0)
    with pytest.raises(InvalidRequestError):
        LocalStack(settings, partitions=0)
    with pytest.raises(InvalidRequestError):
        LocalStack(settings, run_id="Bad-Id")


def test_ledger_snapshot_pairs_old_and_new_certificates() -> None:
    day = timedelta(days=1)
    rows = [
        {"device_id": "a", "issued_at": T0, "not_after": T0 + 30 * day, "status": "superseded"},
        {
            "device_id": "a",
            "issued_at": T0 + 20 * day,
            "not_after": T0 + 50 * day,
            "status": "active",
        },
        {"device_id": "b", "issued_at": T0, "not_after": T0 + 30 * day, "status": "active"},
        {"device_id": "c", "issued_at": T0, "not_after": T0 + 30 * day, "status": "revoked"},
    ]
    snap = ledger_snapshot(rows, T0 + 21 * day)
    assert snap.devices == 3
    assert snap.certificates == 4
    assert snap.renewed == 1
    assert snap.revoked == 1
    assert sorted(snap.after) == [T0 + 30 * day, T0 + 50 * day]
    assert sorted(snap.before) == [T0 + 30 * day, T0 + 30 * day]
    assert snap.before_at == T0 + 20 * day


def test_an_empty_work_queue_is_polled_again_after_a_while_or_when_the_timer_fires(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import local.stack as stack_module

    now = [100.0]
    monkeypatch.setattr(stack_module.time, "monotonic", lambda: now[0])
    stack = LocalStack(Settings.from_env({"CERTROLL_HOME": str(tmp_path)}), partitions=1)

    class Host:
        polls = 0
        queued = 0

        def pump_queue(self, max_messages: int) -> int:
            assert max_messages == 1
            self.polls += 1
            taken, self.queued = min(self.queued, 1), max(self.queued - 1, 0)
            return taken

        def fire_timer(self) -> int:
            self.queued += 3  # the sweep fans out
            return 1

    host = Host()
    stack.devhost = host  # type: ignore[assignment]
    try:
        assert stack._pump_queue() == 0
        assert host.polls == 1
        assert stack._pump_queue() == 0  # idle: not polled again yet
        assert host.polls == 1
        stack.fire_timer()
        assert stack._pump_queue() == 3  # polled at once, and drained
        polls = host.polls
        assert stack._pump_queue() == 0  # the drain found it empty, one more look
        assert stack._pump_queue() == 0
        assert host.polls == polls + 1
        now[0] += stack_module.QUEUE_IDLE_POLL_SECONDS
        host.queued = 1  # sent by someone else meanwhile
        assert stack._pump_queue() == 1
    finally:
        stack.close()

"""The rotation subcommands of ``certroll`` against a recording service."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from cli import common, rotation
from cli.main import main
from shared.adapters.memory import MemoryRotationStore
from shared.bootstrap import Services
from shared.domain.errors import (
    ConcurrencyError,
    DeviceDisallowedError,
    InvalidRequestError,
    NotFoundError,
    ServiceError,
    ThrottledError,
)
from shared.domain.model import RotationRecord, RotationState, Trigger
from shared.render import to_jsonable
from tests.functions.fakes import FakeRotation
from tests.support.pki import make_csr

pytestmark = pytest.mark.usefixtures("services")


def run(*argv: str) -> tuple[int, str, str]:
    """``certroll *argv``: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(autouse=True)
def os_user(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(common.getpass, "getuser", lambda: "ops1")
    return "ops1"


def test_the_module_lists_the_rotation_commands() -> None:
    assert {c.name for c in rotation.COMMANDS} == {"disallow", "allow", "renew", "status", "sweep"}


def test_disallow_records_os_user_as_actor(fake_rotation: FakeRotation) -> None:
    code, out, err = run("disallow", "dev-1", "--reason", "  stolen ", "--json")
    assert (code, err) == (0, "")
    assert json.loads(out)["deviceId"] == "dev-1"
    assert fake_rotation.calls == [("disallow", ("dev-1", "stolen", "cli:ops1"))]


def test_disallow_with_actor(fake_rotation: FakeRotation) -> None:
    code, out, _ = run("disallow", "dev-1", "--reason", "r", "--actor", "carol")
    assert code == 0
    assert "revokedSerials:" in out
    assert fake_rotation.calls == [("disallow", ("dev-1", "r", "cli:carol"))]


@pytest.mark.parametrize(
    ("argv", "code_text"),
    [
        (("disallow", "bad/id", "--reason", "r"), "device_id_invalid"),
        (("disallow", "dev-1", "--reason", "  "), "reason_required"),
        (("disallow", "dev-1", "--reason", "x" * 501), "reason_too_long"),
        (("renew", "a b"), "device_id_invalid"),
        (("allow", "x" * 129), "device_id_invalid"),
        (("status", "dev/1"), "device_id_invalid"),
        (("sweep", "--batch-size", "0"), "batch_size_invalid"),
    ],
)
def test_bad_input_exits_2_and_changes_nothing(
    argv: tuple[str, ...], code_text: str, fake_rotation: FakeRotation
) -> None:
    code, out, err = run(*argv)
    assert code == 2
    assert out == ""
    assert err.startswith(f"rejected: {code_text}: ")
    assert fake_rotation.calls == []


def test_argparse_refuses_unknown_renew_reason(fake_rotation: FakeRotation) -> None:
    code, _, err = run("renew", "dev-1", "--reason", "cli")
    assert code == 2
    assert "invalid choice" in err
    assert fake_rotation.calls == []


@pytest.mark.parametrize(
    ("error", "code", "prefix"),
    [
        (NotFoundError("no device dev-1"), 3, "not found: no device dev-1"),
        (DeviceDisallowedError("dev-1 is disallowed"), 2, "refused: dev-1 is disallowed"),
        (InvalidRequestError("x_bad", "nope"), 2, "rejected: x_bad: nope"),
        (ThrottledError("DPS 429", retry_after=2.5), 5, "throttled: DPS 429; try again in 2.5 s"),
        (ServiceError("hub 500", 500), 1, "failed: hub 500"),
        (ConcurrencyError("record changed"), 5, "conflict: record changed; try again"),
    ],
)
@pytest.mark.parametrize("command", ["allow", "renew", "status"])
def test_service_errors_give_exit_codes(
    command: str, error: Exception, code: int, prefix: str, fake_rotation: FakeRotation
) -> None:
    method = {"allow": "allow", "renew": "start_renewal", "status": "status"}[command]
    fake_rotation.fail[method] = error
    got, out, err = run(command, "dev-1")
    assert got == code
    assert out == ""
    assert err.strip() == prefix


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (("renew", "dev-1"), Trigger.MANUAL),
        (("renew", "dev-1", "--reason", "ca-roll"), Trigger.CA_ROLL),
    ],
)
def test_renew(argv: tuple[str, ...], reason: Trigger, fake_rotation: FakeRotation) -> None:
    code, out, _ = run(*argv, "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["state"] == "csr_requested"
    assert "etag" not in doc
    assert fake_rotation.calls == [("start_renewal", ("dev-1", reason, "cli:ops1"))]


def test_allow(fake_rotation: FakeRotation) -> None:
    code, out, _ = run("allow", "dev-1")
    assert code == 0
    assert "state: csr_requested" in out
    assert fake_rotation.calls == [("allow", ("dev-1", "cli:ops1"))]


def test_allow_with_csr_file(tmp_path: Path, fake_rotation: FakeRotation) -> None:
    pem = make_csr("dev-1").decode()
    csr_file = tmp_path / "dev-1.csr"
    csr_file.write_text(pem)
    code, out, err = run("allow", "dev-1", "--csr", str(csr_file), "--actor", "carol", "--json")
    assert (code, err) == (0, "")
    assert json.loads(out)["device_id"] == "dev-1"
    assert fake_rotation.calls == [("allow", ("dev-1", "cli:carol", pem))]


@pytest.mark.parametrize(
    ("content", "code_text"),
    [
        pytest.param(None, "csr_unreadable", id="missing"),
        pytest.param(b"", "csr_invalid", id="empty"),
        pytest.param(
            lambda: make_csr("dev-1", encoding=serialization.Encoding.DER), "csr_invalid", id="der"
        ),
        pytest.param(b"\xff" * 100, "csr_invalid", id="binary"),
        pytest.param(b"x" * 8193, "csr_too_large", id="too-large"),
    ],
)
def test_allow_with_a_bad_csr_file_exits_2_and_changes_nothing(
    tmp_path: Path, content: Any, code_text: str, fake_rotation: FakeRotation
) -> None:
    csr_file = tmp_path / "device.csr"
    if content is not None:
        csr_file.write_bytes(content() if callable(content) else content)
    code, out, err = run("allow", "dev-1", "--csr", str(csr_file))
    assert code == 2
    assert out == ""
    assert err.startswith(f"rejected: {code_text}: "), err
    assert fake_rotation.calls == []


def test_status_of_one_device(fake_rotation: FakeRotation) -> None:
    code, out, _ = run("status", "dev-1", "--json")
    assert code == 0
    assert json.loads(out) == {
        "deviceId": "dev-1",
        "state": "idle",
        "updatedAt": "2026-03-01T12:00:00Z",
    }


def test_status_of_the_fleet_counts_states(services: Services, fake_rotation: FakeRotation) -> None:
    store = MemoryRotationStore()
    for i, state in enumerate(
        [RotationState.IDLE] * 3 + [RotationState.DELIVERED, RotationState.DISALLOWED]
    ):
        store.put(RotationRecord(device_id=f"d{i}", state=state))
    services.__dict__["state"] = store
    code, out, _ = run("status", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["total"] == 5
    assert doc["states"]["idle"] == 3
    assert doc["states"]["delivered"] == 1
    assert doc["states"]["disallowed"] == 1
    assert doc["states"]["failed"] == 0
    assert set(doc["states"]) == {s.value for s in RotationState}
    code, text, _ = run("status")
    assert code == 0
    lines = dict(line.split() for line in text.splitlines())
    assert lines["idle"] == "3"
    assert lines["total"] == "5"
    assert fake_rotation.calls == []


@pytest.mark.parametrize(("flags", "dry_run"), [((), False), (("--dry-run",), True)])
def test_sweep(flags: tuple[str, ...], dry_run: bool, fake_rotation: FakeRotation) -> None:
    code, out, _ = run("sweep", *flags, "--json", "--batch-size", "50")
    assert code == 0
    assert json.loads(out) == {"counts": {"expiring": 2}, "dryRun": dry_run}
    assert fake_rotation.calls == [("sweep", (dry_run, 50))]


def test_sweep_dry_run_text_says_nothing_changed(fake_rotation: FakeRotation) -> None:
    code, out, _ = run("sweep", "--dry-run")
    assert code == 0
    assert out.splitlines()[0] == "dry run: nothing was changed"
    assert "expiring: 2" in out


def test_to_jsonable_renders_nested_values() -> None:
    from datetime import datetime, timedelta, timezone

    record = RotationRecord(
        device_id="d",
        state=RotationState.FAILED,
        etag="e",
        csr_pem="PEM",
        updated_at=datetime(2026, 1, 1, 1, 0, tzinfo=timezone(timedelta(hours=1))),
    )
    data: Any = to_jsonable({"r": record, "s": {Trigger.MANUAL}, "n": None})
    assert data["r"]["state"] == "failed"
    assert data["r"]["updated_at"] == "2026-01-01T00:00:00Z"
    assert "etag" not in data["r"]
    assert "csr_pem" not in data["r"]
    assert data["s"] == ["manual"]
    assert data["n"] is None


def test_certroll_main_runs_rotation_commands(
    fake_rotation: FakeRotation, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["disallow", "dev-1", "--reason", "lost", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["deviceId"] == "dev-1"
    fake_rotation.fail["status"] = NotFoundError("no device dev-2")
    assert main(["status", "dev-2"]) == 3
    assert "not found: no device dev-2" in capsys.readouterr().err
    assert main(["renew", "bad id"]) == 2
    assert fake_rotation.calls == [
        ("disallow", ("dev-1", "lost", "cli:ops1")),
        ("status", ("dev-2",)),
    ]

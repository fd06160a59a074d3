"""``certroll serve``: the HTTP API through the dev host, as an operator reaches it."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from local.demo import call_api, principal_header
from local.serve import ServeOptions, run_serve
from local.stack import drop_run_storage, run_settings
from local.token_issuer import LocalTokenIssuer
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
# the console script's entry point, run by this interpreter from the checkout
CERTROLL = [sys.executable, "-c", "import sys; from cli.main import main; sys.exit(main())"]
OPERATOR = "Certroll.Operator"


class Served:
    def __init__(self, url: str, key: str, home: Path, token: str) -> None:
        self.url = url
        self.key = key
        self.home = home
        self.token = token  # an operator token minted by `certroll token`

    def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        return call_api(self.url, method, path, **kwargs)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("serve")
    run_id = uuid.uuid4().hex[:12]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CERTROLL_", "SOFTHSM2"))}
    env["CERTROLL_HOME"] = str(home)
    errors = home / "serve-stderr.log"
    with errors.open("w", encoding="utf-8") as err:
        proc = subprocess.Popen(
            [*CERTROLL, "serve", "--port", "0", "--devices", "3",
             "--key-backend", "file", "--run-id", run_id],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True,
        )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip())
            if line.startswith("Ctrl-C stops"):
                break
        header = next((x for x in lines if x.startswith("certroll dev host on ")), None)
        assert header is not None, "\n".join(lines) + errors.read_text(encoding="utf-8")
        url = header.removeprefix("certroll dev host on ").strip()
        key_line = next(x for x in lines if "function key:" in x)
        key_path = Path(key_line.split("function key:", 1)[1].strip())
        assert key_path.parent == home
        assert oct(key_path.stat().st_mode & 0o777) == "0o600"
        minted = subprocess.run(
            [*CERTROLL, "token", "--name", "operator@example.com"],
            cwd=ROOT, env=env, capture_output=True, text=True, check=True,
        )
        yield Served(url, key_path.read_text(encoding="utf-8").strip(), home,
                     minted.stdout.strip())
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        rc = proc.returncode
        drop_run_storage(run_settings(Settings.from_env({"CERTROLL_HOME": str(home)}), run_id))
    assert rc == 0, errors.read_text(encoding="utf-8")


def _wait_for_device(served: Served, device_id: str) -> tuple[int, Any]:
    deadline = time.monotonic() + 30
    while True:
        status, body = served.call("GET", f"/api/devices/{device_id}", function_key=served.key,
                                   token=served.token)
        # answered once the device registered; its rotation record follows DeviceCreated
        ready = status == 200 and isinstance(body, dict) and body.get("rotation")
        if ready or time.monotonic() > deadline:
            return status, body
        time.sleep(0.2)


@pytest.mark.azurite
def test_api_needs_the_function_key(served: Served) -> None:
    for key in (None, "not-the-key"):
        status, _ = served.call("GET", "/api/devices/dev-00000", function_key=key,
                                token=served.token)
        assert status == 401
    status, _ = served.call("POST", "/api/devices/dev-00000/disallow", function_key=None,
                            body={"reason": "x"}, token=served.token)
    assert status == 401


@pytest.mark.azurite
def test_api_refuses_a_forged_principal_and_a_token_without_the_role(served: Served) -> None:
    forged = principal_header("mallory@example.com", OPERATOR)
    status, body = served.call(
        "POST", "/api/devices/dev-00001/disallow", function_key=served.key,
        principal=forged, principal_name="mallory@example.com",
        body={"reason": "should not happen"},
    )
    assert status == 401
    assert body["error"]["code"] == "unauthenticated"
    reader = LocalTokenIssuer(served.home).mint("reader@example.com", ("Certroll.Reader",))
    status, body = served.call(
        "POST", "/api/devices/dev-00001/disallow", function_key=served.key, token=reader,
        principal=forged, body={"reason": "should not happen"},
    )
    assert status == 403
    assert body["error"]["code"] == "forbidden"
    status, body = _wait_for_device(served, "dev-00001")
    assert status == 200
    assert body["rotation"]["state"] != "disallowed"
    assert body["hubIdentity"]["status"] == "enabled"


@pytest.mark.azurite
def test_api_answers_for_a_real_device(served: Served) -> None:
    status, body = _wait_for_device(served, "dev-00002")
    assert status == 200, body
    assert body["deviceId"] == "dev-00002"
    assert body["hubIdentity"]["status"] == "enabled"
    status, body = served.call("GET", "/api/devices/no-such-device", function_key=served.key,
                               token=served.token)
    assert status == 404
    assert body["error"]["code"] == "not_found"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.azurite
def test_serve_listens_on_the_port_asked_for(tmp_path: Path) -> None:
    """``certroll serve --port N`` (``make serve``: 7071) answers on N, not on a free port."""
    port = _free_port()
    run_id = uuid.uuid4().hex[:12]
    settings = Settings.from_env({"CERTROLL_HOME": str(tmp_path)})
    out = io.StringIO()
    stop = threading.Event()
    options = ServeOptions(port=port, key_backend="file", run_id=run_id, poll_seconds=0.05)
    server = threading.Thread(target=run_serve, args=(settings, options),
                              kwargs={"stop": stop, "out": out})
    server.start()
    try:
        deadline = time.monotonic() + 120
        while "Ctrl-C stops." not in out.getvalue() and server.is_alive():
            assert time.monotonic() < deadline, out.getvalue()
            time.sleep(0.05)
        banner = out.getvalue().splitlines()
        assert banner[0] == f"certroll dev host on http://127.0.0.1:{port}", banner
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        stop.set()
        server.join(timeout=60)
        drop_run_storage(run_settings(settings, run_id))
    assert not server.is_alive()

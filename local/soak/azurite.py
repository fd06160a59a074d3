"""A soak-private Azurite: its own free loopback ports and its own data directory, so
restarting it mid-run disturbs no one else's storage (the shared one on 10000-10002
stays up). Data is kept on disk (``--location``) and survives the restart."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from shared.domain.errors import CertrollError

logger = logging.getLogger(__name__)

#: Azurite's well-known development account (docs: "Use the Azurite emulator")
DEV_ACCOUNT = "devstoreaccount1"
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


def find_azurite(start: Path | None = None) -> Path:
    """``node_modules/.bin/azurite`` of this checkout (``make install`` puts it there)."""
    base = start or Path(__file__).resolve().parents[2]
    candidate = base / "node_modules" / ".bin" / "azurite"
    if candidate.exists():
        return candidate
    found = shutil.which("azurite")
    if found:
        return Path(found)
    raise CertrollError(f"azurite not found in {candidate.parent}; run `make install`")


class PrivateAzurite:
    """Start, stop (SIGTERM: Azurite saves its databases and exits) and restart."""

    def __init__(self, binary: Path | None = None) -> None:
        self.binary = binary or find_azurite()
        self._tmp = tempfile.TemporaryDirectory(prefix="certroll-soak-azurite-")
        self.location = Path(self._tmp.name)
        self.ports = {"blob": _free_port(), "queue": _free_port(), "table": _free_port()}
        self._proc: subprocess.Popen[bytes] | None = None
        #: every stop: (seconds it took, whether SIGKILL ended it). Azurite writes its
        #: table and queue databases on a graceful exit and otherwise every 5 s (LokiJS
        #: autosave), so a killed Azurite comes back without the writes it acknowledged
        #: since its last save: storage that Azure does not have.
        self.stops: list[tuple[float, bool]] = []

    @property
    def connection_string(self) -> str:
        p = self.ports
        return (
            f"DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{p['blob']}/{DEV_ACCOUNT};"
            f"QueueEndpoint=http://127.0.0.1:{p['queue']}/{DEV_ACCOUNT};"
            f"TableEndpoint=http://127.0.0.1:{p['table']}/{DEV_ACCOUNT};"
        )

    def start(self, timeout: float = 30.0) -> None:
        if self._proc is not None:
            return
        p = self.ports
        args = [
            str(self.binary),
            "--silent",
            "--disableTelemetry",
            "--skipApiVersionCheck",
            "--loose",
            "--location",
            str(self.location),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(p["blob"]),
            "--queueHost",
            "127.0.0.1",
            "--queuePort",
            str(p["queue"]),
            "--tableHost",
            "127.0.0.1",
            "--tablePort",
            str(p["table"]),
        ]
        log = open(self.location / "azurite.log", "ab")
        self._proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(_open(port) for port in p.values()):
                logger.info("soak Azurite up on %s (pid %d)", p, self._proc.pid)
                return
            if self._proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise CertrollError(f"the soak's Azurite did not start; see {self.location}/azurite.log")

    def stop(self, timeout: float = 20.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        began = time.monotonic()
        killed = False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            killed = True
            logger.warning(
                "the soak's Azurite did not exit %.0f s after SIGTERM; killed (writes since "
                "its last save are lost)",
                timeout,
            )
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        self.stops.append((round(time.monotonic() - began, 2), killed))

    def restart(self, down_seconds: float = 1.0) -> None:
        """Stop, stay down ``down_seconds``, start again on the same ports and data."""
        self.stop()
        time.sleep(down_seconds)
        self.start()

    def close(self) -> None:
        self.stop()
        self._tmp.cleanup()

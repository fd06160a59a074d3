"""The emulator's REST front end over TLS on loopback, for Microsoft's own service SDKs.

The server certificate comes from certroll's local PKI (``generate_pki`` issuing CA,
``local.emulator.http.tls.loopback_tls``); the SDKs trust that CA file only.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from local.emulator import FleetEmulator
from local.emulator.http import RunningServer, serve
from local.emulator.http.tls import loopback_tls
from shared.clock import ManualClock
from shared.pki.local_ca import generate_pki

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SAS_KEY = base64.b64encode(b"emulator-does-not-check-this-key!").decode()


@dataclass
class TlsFleet:
    emulator: FleetEmulator
    clock: ManualClock
    server: RunningServer
    ca_file: Path

    @property
    def hub_connection_string(self) -> str:
        return (
            f"HostName={self.server.host};SharedAccessKeyName=iothubowner;SharedAccessKey={SAS_KEY}"
        )


@pytest.fixture
def tls_fleet(tmp_path: Path) -> Iterator[TlsFleet]:
    clock = ManualClock(START)
    emulator = FleetEmulator(clock, enforce_limits=False)
    pki = generate_pki(now=datetime.now(UTC))
    tls = loopback_tls(
        pki.issuing_certificate,
        pki.issuing_key,
        root=pki.root_certificate,
        directory=tmp_path / "tls",
    )
    server = serve(emulator, ssl_context=tls.context)
    try:
        yield TlsFleet(emulator, clock, server, tls.ca_file)
    finally:
        server.close()

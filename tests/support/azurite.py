"""Azurite for tests: the one probe, the ``azurite`` fixture (defined in tests/conftest.py),
and unique resource names so parallel runs never share a table, queue or container."""

from __future__ import annotations

import socket
import uuid

import pytest

from shared.settings import AZURITE_CONNECTION_STRING

HOST = "127.0.0.1"
#: blob, queue, table
PORTS = (10000, 10001, 10002)


def unreachable_port(timeout: float = 0.5) -> int | None:
    """The first of Azurite's ports that does not accept a connection, else None."""
    for port in PORTS:
        try:
            with socket.create_connection((HOST, port), timeout=timeout):
                pass
        except OSError:
            return port
    return None


def azurite_reachable() -> bool:
    return unreachable_port() is None


def require_azurite() -> str:
    """Azurite's connection string; fails the test clearly when Azurite is not running."""
    port = unreachable_port()
    if port is not None:
        pytest.fail(f"Azurite is not reachable on {HOST}:{port}: run `make azurite`")
    return AZURITE_CONNECTION_STRING


def unique_name(kind: str, prefix: str = "ct") -> str:
    """A fresh resource name valid for tables (alphanumeric) and queues/containers."""
    return f"{prefix}{kind}{uuid.uuid4().hex[:16]}"

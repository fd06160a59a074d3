"""One loopback token issuer for the test session, and what the API settings need to trust it."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from local.token_issuer import LocalTokenIssuer

OPERATOR_ROLE = "Certroll.Operator"


@functools.cache
def issuer() -> LocalTokenIssuer:
    home = Path(tempfile.mkdtemp(prefix="certroll-tokens-"))
    found = LocalTokenIssuer(home)
    found.serve()
    atexit.register(shutil.rmtree, home, True)
    atexit.register(found.close)
    return found


def auth_settings() -> dict[str, str]:
    """``CERTROLL_AUTH_*`` settings trusting :func:`issuer`."""
    return issuer().settings_values()


def token(
    name: str = "alice@example.com", roles: tuple[str, ...] = (OPERATOR_ROLE,), **kw: Any
) -> str:
    return issuer().mint(name, roles, **kw)


def oid_of(name: str) -> str:
    """The ``oid`` the issuer gives the user ``name`` (stable per name)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"certroll-local:{name}"))


def actor_of(name: str) -> str:
    """The audit actor of the delegated token of user ``name``."""
    return f"oid:{oid_of(name)} ({name})"

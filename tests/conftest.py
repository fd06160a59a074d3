"""Fixtures every test folder shares."""

from __future__ import annotations

import pytest

from tests.support.azurite import require_azurite


@pytest.fixture(scope="session")
def azurite() -> str:
    """Azurite's connection string; fails clearly when Azurite is not running."""
    return require_azurite()

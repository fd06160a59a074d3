from __future__ import annotations

import pytest

from tests.unit.rotation.fakes import World


@pytest.fixture
def world() -> World:
    return World()

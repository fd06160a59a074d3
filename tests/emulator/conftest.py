from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from local.emulator import FleetEmulator
from shared.clock import ManualClock
from tests.emulator.support import Ca, make_root

T0 = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def emu(clock: ManualClock) -> FleetEmulator:
    """An emulator with limits off (the limit tests build their own)."""
    return FleetEmulator(clock, enforce_limits=False)


@pytest.fixture(scope="session")
def root() -> Ca:
    return make_root("certroll test root", T0 - timedelta(days=30))


@pytest.fixture(scope="session")
def issuing(root: Ca) -> Ca:
    return root.sub_ca("certroll test issuing", T0 - timedelta(days=10))

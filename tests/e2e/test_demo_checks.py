"""The demo's check that DPS and the hub refuse the disallowed device (no Azurite needed)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from local.demo import SUMMARY_KEYS, Comeback, try_comeback
from local.emulator import HubConnectError, RegistrationError


class _Session:
    def __init__(self) -> None:
        self.closed = False

    def disconnect(self) -> None:
        self.closed = True


class _Emulator:
    """DPS and hub that refuse (or, when told, let in) one device."""

    def __init__(self, *, dps_refuses: bool, hub_refuses: bool) -> None:
        self.dps_refuses = dps_refuses
        self.hub_refuses = hub_refuses
        self.sessions: list[_Session] = []

    def register(self, device_id: str, chain: Any) -> None:
        if self.dps_refuses:
            raise RegistrationError(401, 401002, f"{device_id} is disabled")

    def connect(self, device_id: str, chain: Any, agent: Any) -> _Session:
        if self.hub_refuses:
            raise HubConnectError(403012, f"{device_id} is disabled")
        session = _Session()
        self.sessions.append(session)
        return session


def _comeback(*, dps_refuses: bool, hub_refuses: bool) -> tuple[Comeback, _Emulator]:
    emulator = _Emulator(dps_refuses=dps_refuses, hub_refuses=hub_refuses)
    stack: Any = SimpleNamespace(emulator=emulator)
    sim: Any = SimpleNamespace(agents={"dev-7": SimpleNamespace(chain=b"chain")})
    return try_comeback(stack, sim, "dev-7"), emulator


def test_every_attempt_refused_passes() -> None:
    first, _ = _comeback(dps_refuses=True, hub_refuses=True)
    second, _ = _comeback(dps_refuses=True, hub_refuses=True)
    total = first + second
    assert total == Comeback(attempts=4, refused=4)
    check = total.check()
    assert check.ok
    assert check.name == "disallowed device refused by DPS and hub"
    assert check.detail == "4 of 4 attempts refused"


@pytest.mark.parametrize(("dps_refuses", "hub_refuses"), [(True, False), (False, True)])
def test_one_attempt_let_in_fails_the_check(dps_refuses: bool, hub_refuses: bool) -> None:
    """Two refusals of four attempts used to pass the check."""
    first, emulator = _comeback(dps_refuses=dps_refuses, hub_refuses=hub_refuses)
    second, _ = _comeback(dps_refuses=dps_refuses, hub_refuses=hub_refuses)
    total = first + second
    assert total == Comeback(attempts=4, refused=2)
    assert not total.check().ok
    assert all(s.closed for s in emulator.sessions)


def test_no_attempt_is_not_a_pass() -> None:
    assert not Comeback().check().ok


def test_the_summary_reports_attempts_beside_refusals() -> None:
    keys = list(SUMMARY_KEYS)
    attempts = keys.index("disallowed_reconnect_attempts")
    assert keys[attempts + 1] == "disallowed_reconnect_rejected"

"""A 1,000-device fleet under one CA enrollment group plus a few individual enrollments,
registering and connecting at the documented limits; one group member is disallowed by
a disabled individual enrollment holding its certificate."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TypeVar

import pytest
from cryptography import x509

from local.emulator import (
    CONNECTIONS,
    LIFECYCLE,
    FleetEmulator,
    HubConnectError,
    RegistrationError,
    RegistrationResult,
)
from shared.clock import ManualClock
from shared.domain.model import EnrollmentGroup, IndividualEnrollment, ProvisioningStatus
from tests.emulator.conftest import T0
from tests.emulator.support import Ca, RecordingHandler, self_signed, slot, thumbprint

R = TypeVar("R")

GROUP_SIZE = 1000
BLOCKED = "dev-0500"


def _retrying(clock: ManualClock, call: Callable[[], R]) -> tuple[R, int]:
    """Call, sleeping on the emulator's clock for Retry-After on 429; (result, 429 count)."""
    throttled = 0
    while True:
        try:
            return call(), throttled
        except (RegistrationError, HubConnectError) as exc:
            if exc.status != 429 or exc.retry_after is None:
                raise
            throttled += 1
            clock.sleep(exc.retry_after)


def test_fleet_of_1000(clock: ManualClock, issuing: Ca) -> None:
    emu = FleetEmulator(clock)  # S1, 1 unit, limits enforced
    emu.add_verified_ca("issuing", issuing.cert)
    emu.dps.put_group(EnrollmentGroup("fleet", ca_primary="issuing"))

    group_certs: dict[str, x509.Certificate] = {
        f"dev-{i:04d}": issuing.issue(f"dev-{i:04d}", T0) for i in range(GROUP_SIZE)
    }
    individual_certs = {f"solo-{i}": self_signed(f"solo-{i}", T0) for i in range(5)}
    for rid, cert in individual_certs.items():
        emu.dps.put_individual(IndividualEnrollment(rid, primary=slot(cert)))
    # disallow one group member: a disabled individual enrollment holding its certificate
    emu.dps.put_individual(
        IndividualEnrollment(
            BLOCKED,
            primary=slot(group_certs[BLOCKED]),
            provisioning_status=ProvisioningStatus.DISABLED,
        )
    )

    results: dict[str, RegistrationResult] = {}
    refused: dict[str, RegistrationError] = {}
    throttled = 0
    for rid, cert in [*group_certs.items(), *individual_certs.items()]:
        try:
            results[rid], n = _retrying(clock, lambda r=rid, c=cert: emu.register(r, [c]))
            throttled += n
        except RegistrationError as exc:
            refused[rid] = exc

    assert set(refused) == {BLOCKED}
    assert refused[BLOCKED].status == 403
    assert refused[BLOCKED].registration_status == "disabled"
    assert len(results) == GROUP_SIZE - 1 + 5
    assert throttled > 0  # 1,005 registrations exceed DPS's 1,000 per minute
    assert {r.enrollment for rid, r in results.items() if rid.startswith("dev-")} == {"group:fleet"}
    assert {r.enrollment for rid, r in results.items() if rid.startswith("solo-")} == {
        f"individual:{rid}" for rid in individual_certs
    }
    created = emu.events.drain(LIFECYCLE)
    assert len(created) == len(results)
    assert all(e["eventType"] == "Microsoft.Devices.DeviceCreated" for e in created)

    sessions = {}
    for rid, cert in [*group_certs.items(), *individual_certs.items()]:
        if rid == BLOCKED:
            continue
        sessions[rid], _ = _retrying(
            clock, lambda r=rid, c=cert: emu.connect(r, [c], RecordingHandler())
        )
    assert all(s.connected for s in sessions.values())
    assert emu.hub.get_device("dev-0001").primary_thumbprint == thumbprint(group_certs["dev-0001"])

    with pytest.raises(HubConnectError) as err:
        _retrying(clock, lambda: emu.connect(BLOCKED, [group_certs[BLOCKED]], RecordingHandler()))
    assert err.value.code == 401003
    (batch,) = emu.events.drain(CONNECTIONS)
    assert json.loads(batch["records"][0]["properties"])["deviceId"] == BLOCKED

    connected = emu.hub.count("SELECT * FROM devices WHERE connectionState = 'Connected'")
    assert connected == GROUP_SIZE - 1 + 5

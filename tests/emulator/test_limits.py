from __future__ import annotations

import pytest

from local.emulator import FleetEmulator, HubConnectError, RegistrationError
from local.emulator import limits as lim
from shared.clock import ManualClock, ScaledClock
from shared.domain.errors import ThrottledError
from shared.domain.model import DeviceIdentity, IndividualEnrollment
from shared.domain.ratelimit import TokenBucket
from tests.emulator.conftest import T0
from tests.emulator.support import RecordingHandler, self_signed, slot


def test_token_bucket_refills_on_the_clock(clock: ManualClock) -> None:
    b = TokenBucket.per_minute(60, clock, name="t")
    for _ in range(60):
        b.take()
    with pytest.raises(ThrottledError) as err:
        b.take()
    assert err.value.retry_after == pytest.approx(1.0)
    assert b.try_take() == pytest.approx(1.0)
    clock.advance(0.5)
    assert b.try_take() == pytest.approx(0.5)
    clock.advance(0.5)
    b.take()
    clock.advance(3600)
    assert b.available() == pytest.approx(60)  # never above capacity


@pytest.mark.parametrize(("rate", "capacity"), [(0, 1), (-1, 5), (1, 0)])
def test_token_bucket_rejects_bad_settings(
    clock: ManualClock, rate: float, capacity: float
) -> None:
    with pytest.raises(ValueError, match="must be"):
        TokenBucket(rate, capacity, clock)


def test_documented_figures() -> None:
    s1 = lim.hub_limits("S1", 2)
    assert s1[lim.HUB_IDENTITY_OPS].per_second * 60 == pytest.approx(200)
    assert s1[lim.HUB_CONNECTIONS].per_second == 100  # higher of 100/s or 12/s/unit
    assert lim.hub_limits("S1", 9)[lim.HUB_CONNECTIONS].per_second == 108
    assert s1[lim.HUB_DIRECT_METHODS].per_second == 80  # 160 KB/s/unit in 4 KB units
    s3 = lim.hub_limits("S3", 1)
    assert s3[lim.HUB_IDENTITY_OPS].per_second * 60 == pytest.approx(5000)
    assert lim.dps_limits()[lim.DPS_REGISTRATIONS].per_second * 60 == pytest.approx(1000)
    with pytest.raises(ValueError, match="tier"):
        lim.hub_limits("X9", 1)


def test_dps_registrations_throttle_at_1000_per_minute(clock: ManualClock) -> None:
    emu = FleetEmulator(clock)
    cert = self_signed("dev-1", T0)
    statuses = set()
    for _ in range(1000):  # refusals consume the budget too
        try:
            emu.register("dev-1", [cert])
        except RegistrationError as exc:
            statuses.add(exc.status)
    assert statuses == {401}
    with pytest.raises(RegistrationError) as err:
        emu.register("dev-1", [cert])
    assert err.value.status == 429
    assert err.value.error_code == 429001
    assert err.value.retry_after == pytest.approx(0.06)
    clock.advance(0.06)
    with pytest.raises(RegistrationError) as again:
        emu.register("dev-1", [cert])
    assert again.value.status == 401  # admitted to attestation again


def test_identity_operations_s1_vs_s3(clock: ManualClock) -> None:
    s1 = FleetEmulator(clock, tier="S1", units=1)
    s1.hub.create_device(DeviceIdentity("d", primary_thumbprint="a" * 64))
    for _ in range(99):
        s1.hub.get_device("d")
    with pytest.raises(ThrottledError) as err:
        s1.hub.get_device("d")
    assert err.value.retry_after == pytest.approx(0.6)
    s3 = FleetEmulator(clock, tier="S3", units=1)
    s3.hub.create_device(DeviceIdentity("d", primary_thumbprint="a" * 64))
    for _ in range(1000):
        s3.hub.get_device("d")


def test_scaled_clock_makes_a_minute_limit_testable_in_milliseconds() -> None:
    clock = ScaledClock(factor=600.0, start=T0)
    emu = FleetEmulator(clock, limits_override={lim.HUB_IDENTITY_OPS: 10 / 60})
    emu.hub.create_device(DeviceIdentity("d", primary_thumbprint="a" * 64))
    calls = 1
    throttled = 0
    while calls < 25:
        try:
            emu.hub.get_device("d")
            calls += 1
        except ThrottledError as exc:
            throttled += 1
            clock.sleep(exc.retry_after)  # ~6 s emulated = ~10 ms real
    assert throttled >= 1
    assert (clock.now() - T0).total_seconds() >= 6 * (25 - 10) * 0.9


def test_connections_and_twin_updates_throttle(clock: ManualClock) -> None:
    emu = FleetEmulator(clock, limits_override={lim.HUB_CONNECTIONS: 2, lim.HUB_TWIN_UPDATES: 3})
    cert = self_signed("dev-1", T0)
    emu.dps.put_individual(IndividualEnrollment("dev-1", primary=slot(cert)))
    emu.register("dev-1", [cert])
    s = emu.connect("dev-1", [cert], RecordingHandler())
    s = emu.connect("dev-1", [cert], RecordingHandler())
    with pytest.raises(HubConnectError) as err:
        emu.connect("dev-1", [cert], RecordingHandler())
    assert err.value.code == 429001
    assert err.value.retry_after == pytest.approx(0.5)
    for i in range(3):
        s.report({"i": i})
    with pytest.raises(ThrottledError):
        s.report({"i": 9})
    assert emu.hub.get_twin("dev-1").reported == {"i": 2}  # the refused patch changed nothing


def test_unknown_override_is_rejected(clock: ManualClock) -> None:
    with pytest.raises(ValueError, match="unknown limit"):
        FleetEmulator(clock, limits_override={"nope": 1})


def test_limits_off(clock: ManualClock) -> None:
    emu = FleetEmulator(clock, enforce_limits=False)
    emu.hub.create_device(DeviceIdentity("d", primary_thumbprint="a" * 64))
    for _ in range(500):
        emu.hub.get_device("d")

"""Duplicate, coalesced and out-of-order events; crashes and 429s at every port call."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from shared.domain.commands import StartRenewal, TwinReported
from shared.domain.errors import ThrottledError
from shared.domain.model import CertificateStatus, RotationRecord, RotationState, Trigger
from shared.domain.policy import RotationPolicy
from shared.domain.retry import RetryPolicy
from shared.domain.rotation import RotationService
from tests.unit.rotation.fakes import Crash, Device, Faults, World, thumb

DEVICE = "dev-1"


def _setup(world: World) -> Device:
    dev = world.add_device(DEVICE)
    world.service().on_twin_reported(TwinReported.parse(DEVICE, dev.section()))
    return dev


def _steps(world: World, dev: Device) -> list[Callable[[RotationService], object]]:
    """One rotation as the service sees it: trigger, CSR answer, install report."""

    def start(svc: RotationService) -> object:
        return svc.start_renewal(StartRenewal(DEVICE, Trigger.MANUAL, "op"))

    def csr(svc: RotationService) -> object:
        answer = dev.answer()
        return svc.on_twin_reported(TwinReported.parse(DEVICE, answer)) if answer else None

    def installed(svc: RotationService) -> object:
        if dev.delivered() is None:
            return None
        return svc.on_twin_reported(TwinReported.parse(DEVICE, dev.install()))

    return [start, csr, installed]


def _converged(world: World, dev: Device) -> None:
    rec = world.state.get(DEVICE)
    assert rec is not None
    assert rec.state is RotationState.IDLE, rec
    certs = world.ledger.list_for_device(DEVICE)
    new = [c for c in certs if c.request_id != "initial"]
    assert len(new) == 1, [c.request_id for c in certs]
    assert new[0].status is CertificateStatus.ACTIVE
    assert rec.current_serial == new[0].serial
    assert thumb(dev.cert) == new[0].thumbprint_sha256
    enr = world.enrollments.individual[DEVICE]
    held = {s.thumbprint_sha256 for s in (enr.primary, enr.secondary) if s is not None}
    assert held == {new[0].thumbprint_sha256}
    completed = {e.event_id for e in world.events.events if e.event_type == "RotationCompleted"}
    assert len(completed) == 1


def _recover(world: World, dev: Device, pending: list[Callable[[RotationService], object]]) -> None:
    """A fresh service instance re-drives: redelivery of the interrupted step, the rest,
    then the sweep's ``advance`` until the device has nothing left to do."""
    svc = world.service()
    for step in pending:
        step(svc)
    for _ in range(4):
        rec = world.state.get(DEVICE)
        assert rec is not None
        if rec.state is RotationState.IDLE:
            return
        svc.advance(DEVICE)
        for step in _steps(world, dev)[1:]:
            step(svc)


def test_clean_run_converges(world: World) -> None:
    dev = _setup(world)
    faults = Faults()
    svc = world.service(faults)
    for step in _steps(world, dev):
        step(svc)
    _converged(world, dev)
    assert faults.calls > 20


def _count_calls() -> int:
    world = World()
    dev = _setup(world)
    faults = Faults()
    svc = world.service(faults)
    for step in _steps(world, dev):
        step(svc)
    return faults.calls


TOTAL_CALLS = _count_calls()


@pytest.mark.parametrize("crash_at", range(1, TOTAL_CALLS + 1))
def test_crash_between_any_two_calls_converges(crash_at: int) -> None:
    world = World()
    dev = _setup(world)
    faults = Faults(crash_at=crash_at)
    svc = world.service(faults)
    steps = _steps(world, dev)
    crashed = False
    for index, step in enumerate(steps):
        try:
            step(svc)
        except Crash:
            crashed = True
            _recover(world, dev, steps[index:])
            break
    assert crashed, f"no crash at call {crash_at}"
    _converged(world, dev)


@pytest.mark.parametrize("throttle_at", range(1, TOTAL_CALLS + 1))
def test_one_429_at_any_call_is_waited_out(throttle_at: int) -> None:
    world = World()
    dev = _setup(world)
    faults = Faults(throttle_at=throttle_at, throttle_times=1)
    svc = world.service(faults)
    start = world.clock.now()
    for step in _steps(world, dev):
        step(svc)
    _converged(world, dev)
    assert svc.retrier.throttled == 1
    assert (world.clock.now() - start).total_seconds() == pytest.approx(2.0)


@pytest.mark.parametrize("throttle_at", range(1, TOTAL_CALLS + 1, 3))
def test_lasting_429_keeps_state_and_redelivery_converges(throttle_at: int) -> None:
    world = World(RotationPolicy(retry=RetryPolicy(max_attempts=3)))
    dev = _setup(world)
    faults = Faults(throttle_at=throttle_at, throttle_times=3)
    svc = world.service(faults)
    steps = _steps(world, dev)
    for index, step in enumerate(steps):
        before = world.state.get(DEVICE)
        try:
            step(svc)
        except ThrottledError:
            after = world.state.get(DEVICE)
            assert after is not None
            assert before is not None
            # a 429 never fails a rotation
            assert after.state is not RotationState.FAILED
            _recover(world, dev, steps[index:])
            break
    else:
        pytest.fail("the throttling did not reach the caller")
    _converged(world, dev)


def _record(world: World) -> RotationRecord:
    rec = world.state.get(DEVICE)
    assert rec is not None
    return rec


def test_duplicate_events_are_harmless(world: World) -> None:
    dev = _setup(world)
    svc = world.service()
    svc.start_renewal(StartRenewal(DEVICE, Trigger.MANUAL, "op"))
    answer = dev.answer()
    assert answer is not None
    first = svc.on_twin_reported(TwinReported.parse(DEVICE, answer))
    again = svc.on_twin_reported(TwinReported.parse(DEVICE, answer))
    assert again.state is first.state
    assert again.new_serial == first.new_serial
    install = dev.install()
    svc.on_twin_reported(TwinReported.parse(DEVICE, install))
    svc.on_twin_reported(TwinReported.parse(DEVICE, install))
    svc.on_twin_reported(TwinReported.parse(DEVICE, answer))
    _converged(world, dev)


def test_out_of_order_old_reports_change_nothing(world: World) -> None:
    dev = _setup(world)
    svc = world.service()
    old_section = dev.section()
    svc.start_renewal(StartRenewal(DEVICE, Trigger.MANUAL, "op"))
    answer = dev.answer()
    assert answer is not None
    svc.on_twin_reported(TwinReported.parse(DEVICE, answer))
    svc.on_twin_reported(TwinReported.parse(DEVICE, dev.install()))
    done = _record(world)
    world.clock.advance(25 * 86400)  # the old certificate would be due by now
    late = svc.on_twin_reported(TwinReported.parse(DEVICE, old_section, twin_version=2))
    late_csr = svc.on_twin_reported(TwinReported.parse(DEVICE, answer, twin_version=3))
    assert late.etag == done.etag
    assert late_csr.etag == done.etag
    assert _record(world).state is RotationState.IDLE
    _converged(world, dev)


def test_coalesced_report_with_certificate_only_confirms(world: World) -> None:
    dev = _setup(world)
    svc = world.service()
    svc.start_renewal(StartRenewal(DEVICE, Trigger.MANUAL, "op"))
    answer = dev.answer()
    assert answer is not None
    svc.on_twin_reported(TwinReported.parse(DEVICE, answer))
    install = dev.install()
    # the renewal result got lost in coalescing; the certificate facts alone confirm
    only_cert = {k: v for k, v in install.items() if k != "renewal"}
    svc.on_twin_reported(TwinReported.parse(DEVICE, only_cert))
    _converged(world, dev)


def test_second_csr_for_same_request_is_not_issued(world: World) -> None:
    dev = _setup(world)
    svc = world.service()
    started = svc.start_renewal(StartRenewal(DEVICE, Trigger.MANUAL, "op"))
    answer = dev.answer()
    assert answer is not None
    svc.on_twin_reported(TwinReported.parse(DEVICE, answer))
    other = Device(world, DEVICE).new_csr("other")
    svc.on_twin_reported(
        TwinReported.parse(DEVICE, {"csr": {"requestId": started.request_id, "pem": other}})
    )
    assert len(world.ledger.list_for_device(DEVICE)) == 2
    assert any(a.action == "csr_ignored" for a in world.audit.list(DEVICE))


def test_lost_race_is_decided_again(world: World) -> None:
    dev = _setup(world)
    svc = world.service()
    inner = world.state.put
    raced = {"done": False}

    def racing_put(record: RotationRecord) -> RotationRecord:
        if not raced["done"] and record.state is RotationState.CSR_REQUESTED:
            raced["done"] = True
            # someone else starts a rotation first
            stored = world.state.get(DEVICE)
            assert stored is not None
            inner(
                dataclasses.replace(
                    stored,
                    state=RotationState.CSR_REQUESTED,
                    request_id="other-request",
                    reason="expiring",
                )
            )
        return inner(record)

    world.state.put = racing_put  # type: ignore[method-assign]
    rec = svc.start_renewal(StartRenewal(DEVICE, Trigger.MANUAL, "op"))
    assert rec.request_id == "other-request"
    assert dev.renewal_request() == "other-request"

"""A rotation confirmed when driven (by the twin's renewal result alone, or not by an old
request's result), a connection with no hub identity left, a certificate the slot rule
refuses at enrollment, a record without its new thumbprint, the hub identity of an
allowed device, a continued sweep meeting a deleted twin, and the log lines that
name what went wrong."""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any

import pytest

from shared.domain.commands import (
    Allow,
    DeviceConnected,
    Disallow,
    OperatorCsr,
    StartRenewal,
    Sweep,
    TwinReported,
)
from shared.domain.errors import JobQuotaExceededError, ServiceError
from shared.domain.messages import parse_rotate_message
from shared.domain.model import RegistrationState, RotationState, Trigger
from shared.domain.rotation import RotationService
from tests.support.pki import make_csr
from tests.unit.rotation.fakes import ROTATION_LOGGER, Device, World, rotation_log_lines, thumb
from tests.unit.rotation.test_batching import _csr_reports, _in_batch, _started
from tests.unit.rotation.test_flow import _bulk_batch, _rotate, adopt

DAY = 86400.0


def _sent(world: World, dev: Device, svc: RotationService) -> str:
    """Rotation of ``dev`` up to reprovision_sent; its request id."""
    started = svc.start_renewal(StartRenewal(dev.device_id, Trigger.MANUAL, "op"))
    answer = dev.answer()
    assert answer is not None
    svc.on_twin_reported(TwinReported.parse(dev.device_id, answer))
    rec = world.state.get(dev.device_id)
    assert rec is not None
    assert rec.state is RotationState.REPROVISION_SENT
    assert started.request_id is not None
    return started.request_id


# --------------------------------------------------------------------------- confirmation


def test_a_rotation_driven_after_the_device_reported_installed_is_confirmed_as_reported(
    world: World,
) -> None:
    """The twin still shows the old certificate, but the renewal result of this request
    says installed: driving the record confirms it, and the audit says how."""
    dev, svc = world.ready()
    rid = _sent(world, dev, svc)
    world.registry.report("dev-1", {"x509": {"renewal": {"requestId": rid, "status": "installed"}}})
    done = svc.advance("dev-1")
    assert done.state is RotationState.IDLE
    [audit] = [e for e in world.audit.list("dev-1", limit=1000) if e.action == "rotation_complete"]
    assert audit.detail["confirmedBy"] == "reported"


def test_an_old_requests_installed_result_does_not_confirm_the_current_one(
    world: World,
) -> None:
    dev, svc = world.ready()
    _sent(world, dev, svc)
    world.registry.report(
        "dev-1", {"x509": {"renewal": {"requestId": "an-old-request", "status": "installed"}}}
    )
    driven = svc.advance("dev-1")
    assert driven.state is RotationState.REPROVISION_SENT


def test_a_connection_of_a_device_without_a_hub_identity_confirms_nothing(
    world: World,
) -> None:
    dev, svc = world.ready()
    _sent(world, dev, svc)
    world.clock.advance(60)
    world.enrollments.registrations["dev-1"] = RegistrationState(
        "dev-1", "assigned", device_id="dev-1", last_updated=world.clock.now()
    )
    del world.registry.devices["dev-1"]
    svc.on_device_connected(DeviceConnected("dev-1", world.clock.now()))
    rec = world.state.get("dev-1")
    assert rec is not None
    assert rec.state is RotationState.REPROVISION_SENT


# --------------------------------------------------------------------------- enrollment


def test_a_certificate_the_slot_rule_refuses_fails_the_rotation_at_enrollment(
    world: World,
) -> None:
    dev, svc = world.ready()
    other, _ = world.ready("dev-2")
    world.registry.online.discard("dev-1")
    _sent_offline = svc.start_renewal(StartRenewal("dev-1", Trigger.MANUAL, "op"))
    answer = dev.answer()
    assert answer is not None
    delivered = svc.on_twin_reported(TwinReported.parse("dev-1", answer))
    assert delivered.state is RotationState.DELIVERED
    [foreign] = world.ledger.list_for_device("dev-2")
    world.state.put(
        dataclasses.replace(
            delivered,
            state=RotationState.ISSUED,
            new_serial=foreign.serial,
            new_thumbprint=thumb(other.cert),
            deadline=None,
        )
    )
    failed = svc.advance("dev-1")
    assert failed.state is RotationState.FAILED
    [audit] = [e for e in world.audit.list("dev-1", limit=1000) if e.action == "rotation_failed"]
    assert (audit.detail["code"], audit.detail["error"]) == (
        "foreign_certificate",
        f"certificate {foreign.serial} may not be enrolled (foreign_certificate)",
    )


def test_a_record_issued_without_its_new_thumbprint_is_not_enrolled(world: World) -> None:
    dev, svc = world.ready()
    world.registry.online.discard("dev-1")
    svc.start_renewal(StartRenewal("dev-1", Trigger.MANUAL, "op"))
    answer = dev.answer()
    assert answer is not None
    delivered = svc.on_twin_reported(TwinReported.parse("dev-1", answer))
    world.state.put(
        dataclasses.replace(
            delivered, state=RotationState.ISSUED, new_thumbprint=None, deadline=None
        )
    )
    with pytest.raises(ValueError, match=r"^dev-1: record in issued has no new certificate$"):
        svc.advance("dev-1")


def test_an_allowed_device_holds_its_new_thumbprint_alone_in_the_primary_slot(
    world: World,
) -> None:
    world.ready()
    svc = world.service()
    svc.disallow(Disallow("dev-1", "stolen", "ops"))
    allowed = svc.allow(Allow("dev-1", "ops", OperatorCsr.parse(make_csr("dev-1").decode())))
    assert allowed.new_thumbprint is not None
    ident = world.registry.devices["dev-1"]
    assert (ident.primary_thumbprint, ident.secondary_thumbprint) == (
        allowed.new_thumbprint,
        None,
    )


# --------------------------------------------------------------------------- the sweep


def test_a_continued_sweep_lists_as_silent_an_idle_device_whose_twin_is_gone(
    world: World,
) -> None:
    world.ready("gone")
    del world.registry.twins["gone"]
    world.clock.advance(31 * DAY)
    plan = world.service().sweep(
        Sweep(dry_run=True, continuation="5", started_at=world.clock.now())
    )
    assert plan.silent == ["gone"]


# --------------------------------------------------------------------------- log lines


def test_refused_bulk_writes_are_logged_with_their_status(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    svc, devices = _started(world, 12)
    world.enrollments.fail_bulk = {"dev-03"}
    with caplog.at_level(logging.INFO, logger=ROTATION_LOGGER):
        _in_batch(svc, _csr_reports(devices))
    [line] = [m for m in rotation_log_lines(caplog) if m.startswith("bulk enrollment writes:")]
    assert re.fullmatch(
        r"bulk enrollment writes: 11 landed, 1 refused \(written one by one\): dev-03 412", line
    ), line


def test_an_offline_device_is_logged_with_why_the_reprovision_missed(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    dev, svc = world.ready()
    started = svc.start_renewal(StartRenewal("dev-1", Trigger.MANUAL, "op"))
    answer = dev.answer()
    assert answer is not None
    world.registry.online.discard("dev-1")
    with caplog.at_level(logging.INFO, logger=ROTATION_LOGGER):
        svc.on_twin_reported(TwinReported.parse("dev-1", answer))
    prefix = f"device dev-1 request {started.request_id}: device offline"
    assert [m for m in rotation_log_lines(caplog) if m.startswith(prefix) and "; next try in " in m]


def test_a_transient_failure_in_a_batch_is_logged_with_its_error(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    devs = [world.add_device(f"dev-{i}") for i in range(2)]
    svc = world.service()
    for dev in devs:
        adopt(svc, dev)
    inner = world.registry.patch_desired

    def patch_desired(device_id: str, *args: Any, **kwargs: Any) -> Any:
        if device_id == "dev-1":
            raise ServiceError("IoT Hub patch_desired dev-1: HTTP 500", status=500)
        return inner(device_id, *args, **kwargs)

    world.registry.patch_desired = patch_desired  # type: ignore[method-assign]
    message = {"kind": "rotate", "deviceIds": ["dev-0", "dev-1"], "reason": "manual"}
    with caplog.at_level(logging.WARNING, logger=ROTATION_LOGGER), pytest.raises(ServiceError):
        svc.process_batch(parse_rotate_message(message))
    [line] = [m for m in rotation_log_lines(caplog) if m.endswith("; the message will come back")]
    assert line.startswith("device dev-1: ")
    assert "HTTP 500" in line


def test_a_refused_job_is_logged_with_the_hubs_answer(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.policy = type(world.policy)(bulk_threshold=2, max_concurrent_jobs=5)
    svc, devs = _bulk_batch(world, 2)

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise JobQuotaExceededError("429004 ThrottlingMaxActiveJobCountExceeded", 10)

    world.registry.schedule_method_job = refuse  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger=ROTATION_LOGGER):
        _rotate(svc, devs)
    assert (
        "reprovision by direct method for 2 devices: the hub refused one more job (429004)"
        in rotation_log_lines(caplog)
    )

"""What a rotation tells: its events field by field, the audit entries of an adopted or
refused certificate and of a reconcile, the counters of DPS bulk writes, and the log
lines an operator reads when something is skipped, left for later or not counted."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from shared.domain.commands import DeviceCreated, Disallow, StartRenewal, Sweep, TwinReported
from shared.domain.errors import ConcurrencyError, NotFoundError
from shared.domain.messages import parse_rotate_message
from shared.domain.model import ConnectionFailure, MethodResult, Trigger
from shared.domain.rotation import RotationService
from shared.domain.rotation.context import iso
from tests.support.pki import make_csr
from tests.unit.rotation.fakes import ROTATION_LOGGER, World, _section, rotation_log_lines, thumb
from tests.unit.rotation.test_batching import _csr_reports, _in_batch, _started
from tests.unit.rotation.test_flow import _bulk_batch, _rotate, adopt, rotate


def _always_changing(world: World) -> None:
    def put(*_args: Any, **_kwargs: Any) -> Any:
        raise ConcurrencyError("etag mismatch")

    world.state.put = put  # type: ignore[method-assign]


# --------------------------------------------------------------------------- events


def test_the_completed_event_carries_the_new_certificate_and_its_request(world: World) -> None:
    dev, svc = world.ready()
    before = world.state.get("dev-1")
    assert before is not None
    svc.start_renewal(StartRenewal("dev-1", Trigger.MANUAL, "op"))
    answer = dev.answer()
    assert answer is not None
    delivered = svc.on_twin_reported(TwinReported.parse("dev-1", answer))
    svc.on_twin_reported(TwinReported.parse("dev-1", dev.install()))
    completed = world.events.events[-1]
    assert completed.event_type == "RotationCompleted"
    assert completed.event_id == f"{delivered.request_id}/completed"
    assert completed.data == {
        "deviceId": "dev-1",
        "requestId": delivered.request_id,
        "serial": delivered.new_serial,
        "thumbprint": thumb(dev.cert),
        "previousSerial": before.current_serial,
        "notAfter": iso(dev.cert.not_valid_after_utc),
        "reason": "manual",
    }


def test_the_failed_event_names_its_request(world: World) -> None:
    dev, svc = world.ready()
    started = svc.start_renewal(StartRenewal("dev-1", Trigger.MANUAL, "op"))
    svc.on_twin_reported(TwinReported.parse("dev-1", dev.fail("DPS said no")))
    [failed] = world.events.events
    assert failed.event_type == "RotationFailed"
    assert failed.event_id == f"{started.request_id}/failed"
    assert failed.data["requestId"] == started.request_id


# --------------------------------------------------------------------------- audits


def test_an_adopted_certificate_is_audited_with_what_it_replaced(world: World) -> None:
    dev = world.add_device("dev-1")
    svc = world.service()
    svc.on_twin_reported(TwinReported.parse("dev-1", dev.section()))
    [first] = world.audits("adopt_certificate")
    assert (first.outcome, first.detail) == (
        "ok",
        {
            "thumbprint": thumb(dev.cert),
            "serial": format(dev.cert.serial_number, "x"),
            "issuedByCertroll": True,
            "previous": None,
            "previousRetired": False,
        },
    )
    old = thumb(dev.cert)
    dev.cert = dev.self_made_certificate()  # the device now runs on one of its own
    svc.on_twin_reported(TwinReported.parse("dev-1", dev.section()))
    second = world.audits("adopt_certificate")[0]
    assert second.detail["thumbprint"] == thumb(dev.cert)
    assert second.detail["previous"] == old


def test_a_revoked_certificate_reported_again_is_refused_with_its_status(world: World) -> None:
    dev, svc = world.ready()
    old_section, old_serial = dev.section(), format(dev.cert.serial_number, "x")
    rotate(svc, dev, Trigger.COMPROMISE)
    svc.on_twin_reported(TwinReported.parse("dev-1", old_section))
    [refused] = world.audits("unexpected_certificate")
    assert (refused.outcome, refused.detail) == (
        "rejected",
        {"thumbprint": old_section["thumbprint"], "serial": old_serial, "status": "revoked"},
    )


def test_a_refused_401_is_audited_with_its_code(world: World) -> None:
    _dev, svc = world.ready()
    svc.disallow(Disallow("dev-1", "stolen", "ops"))
    failure = ConnectionFailure(device_id="dev-1", code=401003, at=world.clock.now())
    svc.on_connection_failure(failure)
    [entry] = world.audits("reconcile")
    assert (entry.outcome, entry.detail) == (
        "rejected",
        {"result": "device_disallowed", "code": 401003},
    )


def test_each_bulk_write_is_counted_with_its_refused_items(world: World) -> None:
    svc, devices = _started(world, 12)
    world.enrollments.fail_bulk = {"dev-03"}
    _in_batch(svc, _csr_reports(devices))
    assert world.metrics.dimensions("certroll.dps_bulk_write") == {
        (("refused", "1"),): 1,  # the first ten, dev-03 refused
        (("refused", "0"),): 1,  # the last two
    }


# --------------------------------------------------------------------------- log lines


def test_a_report_of_a_superseded_certificate_is_logged_with_both_serials(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    dev, svc = world.ready()
    old_section, old_serial = dev.section(), format(dev.cert.serial_number, "x")
    done = rotate(svc, dev)
    with caplog.at_level(logging.INFO, logger=ROTATION_LOGGER):
        svc.on_twin_reported(TwinReported.parse("dev-1", old_section))
    assert (
        f"device dev-1: report of superseded {old_serial} ignored (current {done.current_serial})"
    ) in rotation_log_lines(caplog)


def test_a_report_of_an_older_certificate_is_logged_as_stale_with_both_serials(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """A certificate certroll issued the device before its current one (never
    superseded: the device never ran on it) is reported: nothing changes."""
    earlier = world.issuer.issue(
        "dev-1", make_csr("dev-1").decode(), request_id="earlier", trigger="cli", actor="test"
    )
    world.clock.advance(1)
    dev, svc = world.ready()
    current = format(dev.cert.serial_number, "x")
    with caplog.at_level(logging.INFO, logger=ROTATION_LOGGER):
        kept = svc.on_twin_reported(TwinReported.parse("dev-1", _section(earlier.certificate)))
    assert kept.current_serial == current
    serial = format(earlier.certificate.serial_number, "x")
    assert (
        f"device dev-1: stale report of {serial} ignored (current {current})"
        in rotation_log_lines(caplog)
    )


def test_a_disallowed_devices_report_is_logged_as_not_acted_on(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    dev, svc = world.ready()
    svc.disallow(Disallow("dev-1", "stolen", "ops"))
    with caplog.at_level(logging.INFO, logger=ROTATION_LOGGER):
        svc.on_twin_reported(TwinReported.parse("dev-1", dev.section()))
    assert "device dev-1 is disallowed; its twin report is not acted on" in rotation_log_lines(
        caplog
    )


def test_a_lost_race_names_the_operation_decided_again(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    dev, svc = world.ready()
    stale = world.state.get("dev-1")
    assert stale is not None
    stale.current_not_after = None  # the report has something to write
    world.state.put(stale)
    _always_changing(world)
    with caplog.at_level(logging.INFO, logger=ROTATION_LOGGER), pytest.raises(ConcurrencyError):
        svc.on_twin_reported(TwinReported.parse("dev-1", dev.section()))
    assert "device dev-1: record changed during twin report; deciding again" in rotation_log_lines(
        caplog
    )


def test_a_device_created_event_whose_record_keeps_changing_says_so(world: World) -> None:
    world.add_device("dev-1")
    svc = world.service()
    _always_changing(world)
    with pytest.raises(
        ConcurrencyError, match=r"^dev-1: the rotation record kept changing during device created\Z"
    ):
        svc.on_device_created(DeviceCreated("dev-1"))


def test_a_renewal_request_missing_from_the_twin_is_written_again_and_logged(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    dev, svc = world.ready()
    started = svc.start_renewal(StartRenewal("dev-1", Trigger.MANUAL, "op"))
    world.registry.twins["dev-1"].desired["x509"].pop("renewal")  # someone cleared it
    with caplog.at_level(logging.INFO, logger=ROTATION_LOGGER):
        svc.advance("dev-1")
    assert (
        f"device dev-1: renewal request {started.request_id} written again"
        in rotation_log_lines(caplog)
    )
    assert dev.renewal_request() == started.request_id


def test_a_real_sweep_logs_each_expiring_issuing_ca(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.ready()
    svc = world.service()
    ca = world.authority.certificate
    world.clock.advance((ca.not_valid_after_utc - world.clock.now()).total_seconds() - 86400)
    with caplog.at_level(logging.WARNING, logger=ROTATION_LOGGER):
        plan = svc.sweep(Sweep())
    [item] = plan.ca_expiring
    assert f"issuing CA {item['subject']} expires {item['notAfter']}" in rotation_log_lines(caplog)
    assert item["subject"] == ca.subject.rfc4514_string()


def test_a_batch_device_that_cannot_be_started_is_logged_with_the_error(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.ready()
    svc = world.service()
    message = {"kind": "rotate", "deviceIds": ["dev-1", "ghost"], "reason": "manual"}
    with caplog.at_level(logging.WARNING, logger=ROTATION_LOGGER):
        result = svc.process_batch(parse_rotate_message(message))
    error = result.errors["ghost"]
    assert error.startswith("NotFoundError: ")
    assert f"device ghost: {error.removeprefix('NotFoundError: ')}" in rotation_log_lines(caplog)


def test_a_direct_reprovision_that_fails_is_left_to_the_sweep_and_logged(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.policy = type(world.policy)(bulk_threshold=2, max_concurrent_jobs=1)
    svc, devs = _bulk_batch(world, 3)
    world.registry.schedule_method_job("someone-elses", "deviceId IN ['x']", "ping", {})

    def on_method(device_id: str, _method: str, _payload: Any) -> MethodResult:
        if device_id == "dev-1":
            raise NotFoundError("no device dev-1")
        return MethodResult(200, None)

    world.registry.on_method = on_method
    with caplog.at_level(logging.WARNING, logger=ROTATION_LOGGER):
        _rotate(svc, devs)
    assert "device dev-1: reprovision left to the sweep: no device dev-1" in rotation_log_lines(
        caplog
    )


class _Campaigns:
    """A campaign outcomes port that cannot count, nor read its enrollment copies."""

    def is_done(self, campaign_id: str, device_id: str) -> bool:
        return False

    def report(self, device_id: str, outcome: str, campaign_id: str | None = None) -> None:
        raise OSError("campaign table unreachable")

    def known_enrollment(self, device_id: str) -> Any:
        raise OSError("campaign table unreachable")


def test_a_campaign_port_that_fails_is_logged_and_the_rotation_goes_on(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    dev = world.add_device("dev-1")
    deps = world.deps()
    deps.campaigns = _Campaigns()
    svc = RotationService(deps)
    adopt(svc, dev)
    with caplog.at_level(logging.INFO, logger=ROTATION_LOGGER):
        done = rotate(svc, dev)
    assert done.current_thumbprint == thumb(dev.cert)
    lines = rotation_log_lines(caplog)
    assert "device dev-1: the campaign's enrollment copy unreadable" in lines
    assert "campaign outcome of dev-1 not counted" in lines

"""Details an operator relies on: what a failed rotation records and publishes, the words
of a refusal, the actor and code of an audit entry, a metric that cannot be recorded,
a CA expiring within the day, a group member's disabled enrollment made from its
latest certificate, the staging rule of the bulk enrollment writes, and the log lines
that name the error they report."""

from __future__ import annotations

import dataclasses
import logging
from datetime import timedelta

import pytest

from shared.domain.commands import (
    Allow,
    Disallow,
    OperatorCsr,
    StartRenewal,
    Status,
    Sweep,
    TwinReported,
)
from shared.domain.errors import NotFoundError
from shared.domain.model import (
    ConnectionFailure,
    IndividualEnrollment,
    RotationState,
    Trigger,
)
from shared.domain.rotation.admissible import refusal
from shared.domain.rotation.batching import EnrollmentWriteBatch
from tests.support.pki import make_csr
from tests.unit.rotation.fakes import ROTATION_LOGGER, Device, World, rotation_log_lines, thumb

DAY = 86400.0


# --------------------------------------------------------------------------- a failure


def test_a_failed_rotation_is_audited_and_published_with_its_code_and_words(
    world: World,
) -> None:
    dev, svc = world.ready()
    started = svc.start_renewal(StartRenewal("dev-1", Trigger.MANUAL, "op"))
    svc.on_twin_reported(TwinReported.parse("dev-1", dev.fail("DPS said no")))
    [audit] = world.audits("rotation_failed")
    assert audit.device_id == "dev-1"
    assert audit.request_id == started.request_id
    assert (audit.detail["code"], audit.detail["error"]) == (
        "registration_failed",
        "DPS said no",
    )
    [failed] = world.events.events
    assert failed.subject == "devices/dev-1"
    assert failed.data["deviceId"] == "dev-1"
    assert (failed.data["code"], failed.data["error"]) == ("registration_failed", "DPS said no")


# --------------------------------------------------------------------------- refusals


def test_a_certificate_before_its_not_before_instant_is_not_yet_valid(world: World) -> None:
    world.ready()
    rec = world.state.get("dev-1")
    [cert] = world.ledger.list_for_device("dev-1")
    early = cert.not_before - timedelta(seconds=1)
    assert refusal(cert, "dev-1", rec, early) == "not_yet_valid"


def test_the_status_of_an_unknown_device_names_it(world: World) -> None:
    svc = world.service()
    with pytest.raises(NotFoundError) as err:
        svc.status(Status("ghost"))
    assert str(err.value) == "device ghost is not known to certroll, the hub or DPS"


# --------------------------------------------------------------------------- audits


def test_the_sweep_is_audited_as_the_system_sweep(world: World) -> None:
    world.ready()
    svc = world.service()
    svc.sweep(Sweep())
    [audit] = [e for e in world.audit.list(limit=100) if e.action == "sweep"]
    assert audit.actor == "system:sweep"


def test_a_renewal_due_on_a_twin_report_is_started_by_the_twin_and_counted(
    world: World,
) -> None:
    dev, svc = world.ready()
    world.clock.advance(29 * DAY)
    started = svc.on_twin_reported(TwinReported.parse("dev-1", dev.section()))
    assert started.state is RotationState.CSR_REQUESTED
    assert started.reason == Trigger.EXPIRING.value
    assert world.metrics.counts["certroll.renewal_due"] == 1
    actors = {e.actor for e in world.audit.list("dev-1", limit=1000) if e.request_id}
    assert "system:twin" in actors


def test_a_different_csr_for_the_same_request_is_audited_as_rejected(world: World) -> None:
    dev, svc = world.ready()
    svc.start_renewal(StartRenewal("dev-1", Trigger.MANUAL, "op"))
    answer = dev.answer()
    assert answer is not None
    svc.on_twin_reported(TwinReported.parse("dev-1", answer))
    rid = answer["csr"]["requestId"]
    other = {"csr": {"requestId": rid, "pem": Device(world, "dev-1").new_csr("other")}}
    svc.on_twin_reported(TwinReported.parse("dev-1", other))
    [ignored] = world.audits("csr_ignored")
    assert ignored.outcome == "rejected"


# --------------------------------------------------------------------------- metrics


def test_a_metric_that_cannot_be_recorded_is_logged_by_name(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(name: str, value: int = 1, **dimensions: str) -> None:
        raise RuntimeError("metrics backend down")

    world.metrics.increment = broken  # type: ignore[method-assign]
    _dev, svc = world.ready()
    with caplog.at_level(logging.ERROR, logger=ROTATION_LOGGER):
        svc.start_renewal(StartRenewal("dev-1", Trigger.MANUAL, "op"))
    assert "metric certroll.rotation_started could not be recorded" in rotation_log_lines(caplog)


# --------------------------------------------------------------------------- the CA


def test_a_ca_expiring_within_the_day_has_no_day_left(world: World) -> None:
    world.ready()
    svc = world.service()
    ca = world.authority.certificate
    world.clock.advance((ca.not_valid_after_utc - world.clock.now()).total_seconds() - 3600)
    [warning] = svc.sweep(Sweep(dry_run=True)).ca_expiring
    assert warning["daysLeft"] == 0


# --------------------------------------------------------------------------- access


def test_a_group_member_without_a_known_serial_is_disabled_with_its_latest_certificate(
    world: World,
) -> None:
    world.add_device("dev-g", group=True)
    later = world.issuer.issue(
        "dev-g", make_csr("dev-g").decode(), request_id="later", trigger="cli", actor="test"
    )
    assert len(world.ledger.list_for_device("dev-g")) == 2
    result = world.service().disallow(Disallow("dev-g", "stolen", "ops"))
    assert result.enrollment == "created_disabled"
    enr = world.enrollments.individual["dev-g"]
    assert enr.primary is not None
    assert enr.primary.thumbprint_sha256 == thumb(later.certificate)
    assert enr.secondary is None


def test_an_allow_with_an_operator_csr_binds_the_request_to_that_csr(world: World) -> None:
    _dev, svc = world.ready()
    svc.disallow(Disallow("dev-1", "stolen", "ops"))
    csr = OperatorCsr.parse(make_csr("dev-1").decode())
    allowed = svc.allow(Allow("dev-1", "ops", csr))
    assert allowed.csr_sha256 == csr.sha256


# --------------------------------------------------------------------------- batching


def test_a_write_for_a_device_already_written_in_bulk_is_not_staged() -> None:
    batch = EnrollmentWriteBatch()
    batch.landed["dev-1"] = IndividualEnrollment("dev-1", etag="e")
    batch.refused["dev-2"] = "412"
    assert batch.accepts(IndividualEnrollment("dev-3", etag="e"))
    assert not batch.accepts(IndividualEnrollment("dev-1", etag="e"))
    assert not batch.accepts(IndividualEnrollment("dev-2", etag="e"))


# --------------------------------------------------------------------------- reconcile


def test_a_reconciled_401_is_audited_with_its_code(world: World) -> None:
    _dev, svc = world.ready()
    world.enrollments.individual["dev-1"] = dataclasses.replace(
        world.enrollments.individual["dev-1"], primary=None
    )
    svc.on_connection_failure(
        ConnectionFailure(device_id="dev-1", code=401003, at=world.clock.now())
    )
    [audit] = [e for e in world.audits("reconcile") if e.outcome == "ok"]
    assert audit.detail["code"] == 401003
    assert audit.detail["result"] == "reconciled"


def test_a_401_of_a_disallowed_device_is_logged_as_not_reconciled(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    _dev, svc = world.ready()
    svc.disallow(Disallow("dev-1", "stolen", "ops"))
    with caplog.at_level(logging.WARNING, logger=ROTATION_LOGGER):
        svc.on_connection_failure(
            ConnectionFailure(device_id="dev-1", code=401003, at=world.clock.now())
        )
    assert "device dev-1: 401003 not reconciled (disallowed)" in rotation_log_lines(caplog)

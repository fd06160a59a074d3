"""Edges an operator or a device would notice: what a disallow publishes and when it
counts as a change, a failed rotation leaving the older certificates alone, the sweep
reading past a twin without a certificate and counting a deadline reached exactly, the
words of a refused CSR, a restart keeping its reason, a CA-authenticated device let back
in with thumbprints, the slot rule keeping the certificate in use, a SHA-1 hub thumbprint
of a retired certificate taken out, and the chain delivered with its last line ended."""

from __future__ import annotations

import copy
import dataclasses
import logging
from datetime import timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from shared.domain.campaign import KnownEnrollment
from shared.domain.certs import sha1_thumbprint
from shared.domain.commands import (
    Allow,
    DeviceConnected,
    DeviceCreated,
    Disallow,
    OperatorCsr,
    StartRenewal,
    Sweep,
    TwinReported,
)
from shared.domain.errors import ConcurrencyError, ServiceError
from shared.domain.messages import parse_rotate_message
from shared.domain.model import (
    AuthType,
    CertificateSlot,
    CertificateStatus,
    ConnectionFailure,
    IndividualEnrollment,
    ProvisioningStatus,
    RotationState,
    Trigger,
)
from shared.domain.rotation import RotationService
from shared.domain.rotation.steps import leaf_chain, leaf_chain_list
from tests.support.pki import make_csr
from tests.unit.rotation.fakes import Device, World, thumb
from tests.unit.rotation.test_batching import _csr_reports, _in_batch
from tests.unit.rotation.test_flow import adopt
from tests.unit.rotation.test_rare_paths import _CampaignCopies

DAY = 86400.0


def _rotate(svc: RotationService, dev: Device) -> None:
    svc.start_renewal(StartRenewal(dev.device_id, Trigger.MANUAL, "op"))
    answer = dev.answer()
    assert answer is not None
    svc.on_twin_reported(TwinReported.parse(dev.device_id, answer))
    done = svc.on_twin_reported(TwinReported.parse(dev.device_id, dev.install()))
    assert done.state is RotationState.IDLE


# --------------------------------------------------------------------------- disallow


def test_the_disallow_event_names_who_disallowed_the_device_and_why(world: World) -> None:
    world.ready()
    svc = world.service()
    result = svc.disallow(Disallow("dev-1", "device reported stolen", "sec@example.com"))
    [event] = world.events_of("DeviceDisallowed")
    assert event.data["actor"] == "sec@example.com"
    assert event.data["reason"] == "device reported stolen"
    # an idle device had no request to cancel: none is named, not an empty one
    assert event.data["cancelledRequestId"] is None
    assert result.to_dict()["cancelledRequestId"] is None
    [entry] = world.audits("disallow")
    assert entry.detail["cancelledRequestId"] is None


def test_a_disallow_that_did_not_finish_is_finished_by_repeating_it(world: World) -> None:
    """Everything was already disabled and revoked, but the record says the disallow did
    not finish: repeating it is a change (published, audited) that completes the record."""
    world.ready()
    svc = world.service()
    svc.disallow(Disallow("dev-1", "stolen", "sec"))
    rec = world.state.get("dev-1")
    assert rec is not None
    world.state.put(dataclasses.replace(rec, last_error="disallow in progress"))
    events = len(world.events_of("DeviceDisallowed"))
    again = svc.disallow(Disallow("dev-1", "stolen", "sec"))
    assert again.changed
    assert again.revoked == ()  # revoked the first time
    assert len(world.events_of("DeviceDisallowed")) == events + 1
    assert world.audits("disallow")[0].outcome == "ok"
    after = world.state.get("dev-1")
    assert after is not None
    assert after.state is RotationState.DISALLOWED
    assert after.last_error is None


def test_an_enrollment_enabled_again_after_a_disallow_is_disabled_by_repeating_it(
    world: World,
) -> None:
    world.ready()
    svc = world.service()
    svc.disallow(Disallow("dev-1", "stolen", "sec"))
    enr = world.enrollments.individual["dev-1"]
    world.enrollments.individual["dev-1"] = dataclasses.replace(
        enr, provisioning_status=ProvisioningStatus.ENABLED
    )
    again = svc.disallow(Disallow("dev-1", "stolen", "sec"))
    assert again.changed
    assert again.enrollment == "disabled"
    assert world.enrollments.individual["dev-1"].provisioning_status is (
        ProvisioningStatus.DISABLED
    )
    assert world.audits("disallow")[0].outcome == "ok"
    _first, second = world.events_of("DeviceDisallowed")
    # the record was disallowed already: no request was cancelled this time either
    assert second.data["cancelledRequestId"] is None
    assert again.to_dict()["cancelledRequestId"] is None


def test_an_allow_with_a_csr_whose_record_keeps_changing_names_the_device(
    world: World,
) -> None:
    """The record left ``disallowed``; binding the operator's CSR then loses every race."""
    world.ready()
    svc = world.service()
    svc.disallow(Disallow("dev-1", "stolen", "ops"))
    inner = world.state.put

    def put(rec: Any, *args: Any, **kwargs: Any) -> Any:
        if rec.state is RotationState.CSR_RECEIVED:
            raise ConcurrencyError("etag mismatch")
        return inner(rec, *args, **kwargs)

    world.state.put = put  # type: ignore[method-assign]
    csr = OperatorCsr.parse(make_csr("dev-1").decode())
    with pytest.raises(
        ConcurrencyError, match=r"^dev-1: the rotation record kept changing during allow\Z"
    ):
        svc.allow(Allow("dev-1", "ops", csr))


def test_a_ca_authenticated_device_let_back_in_is_switched_to_its_new_thumbprint(
    world: World,
) -> None:
    _dev, svc = world.ready("dev-1", auth=AuthType.CERTIFICATE_AUTHORITY)
    svc.disallow(Disallow("dev-1", "stolen", "ops"))
    svc.allow(Allow("dev-1", "ops", OperatorCsr.parse(make_csr("dev-1").decode())))
    rec = world.state.get("dev-1")
    assert rec is not None
    assert rec.new_thumbprint is not None
    ident = world.registry.devices["dev-1"]
    assert ident.auth_type is AuthType.SELF_SIGNED  # a revoked leaf of the CA stays out
    assert (ident.primary_thumbprint, ident.secondary_thumbprint) == (
        rec.new_thumbprint.lower(),
        None,
    )


def test_the_issued_event_names_the_certificate(world: World) -> None:
    dev, svc = world.ready()
    svc.start_renewal(StartRenewal("dev-1", Trigger.MANUAL, "op"))
    answer = dev.answer()
    assert answer is not None
    rec = svc.on_twin_reported(TwinReported.parse("dev-1", answer))
    [event] = world.events_of("CertificateIssued")
    assert event.data["serial"] == rec.new_serial
    assert event.data["thumbprint"] == rec.new_thumbprint
    assert event.data["requestId"] == rec.request_id


# --------------------------------------------------------------------------- failure


def test_a_failed_rotation_leaves_the_devices_older_certificates_as_they_were(
    world: World,
) -> None:
    dev, svc = world.ready()
    first = thumb(dev.cert)
    _rotate(svc, dev)
    # the current certificate alone, in the primary slot (as an operator may leave it)
    pem = dev.cert.public_bytes(serialization.Encoding.PEM).decode()
    enr = world.enrollments.individual["dev-1"]
    world.enrollments.individual["dev-1"] = dataclasses.replace(
        enr, primary=CertificateSlot(thumbprint_sha256=thumb(dev.cert), pem=pem), secondary=None
    )
    svc.start_renewal(StartRenewal("dev-1", Trigger.MANUAL, "op"))
    answer = dev.answer()
    assert answer is not None
    svc.on_twin_reported(TwinReported.parse("dev-1", answer))
    failed = svc.on_twin_reported(TwinReported.parse("dev-1", dev.fail("DPS said no")))
    assert failed.state is RotationState.FAILED
    statuses = {c.thumbprint_sha256: c.status for c in world.ledger.list_for_device("dev-1")}
    assert statuses[first] is CertificateStatus.SUPERSEDED
    assert statuses[thumb(dev.cert)] is CertificateStatus.ACTIVE
    assert statuses[failed.new_thumbprint or ""] is CertificateStatus.FAILED


def test_a_failed_rotation_restarted_keeps_its_reason(world: World) -> None:
    dev, svc = world.ready()
    svc.start_renewal(StartRenewal("dev-1", Trigger.EXPIRING, "op"))
    svc.on_twin_reported(TwinReported.parse("dev-1", dev.fail()))
    restarted = svc.advance("dev-1")
    assert restarted.state is RotationState.CSR_REQUESTED
    assert restarted.reason == Trigger.EXPIRING.value
    [_, started] = world.audits("rotation_start")
    assert started.detail["reason"] == Trigger.EXPIRING.value


def test_a_rotation_started_is_audited_with_its_reason(world: World) -> None:
    world.ready()
    svc = world.service()
    svc.start_renewal(StartRenewal("dev-1", Trigger.MANUAL, "op"))
    [started] = world.audits("rotation_start")
    assert started.detail["reason"] == "manual"


# --------------------------------------------------------------------------- CSRs


def test_a_different_csr_for_the_same_request_is_refused_in_words(world: World) -> None:
    dev, svc = world.ready()
    svc.start_renewal(StartRenewal("dev-1", Trigger.MANUAL, "op"))
    answer = dev.answer()
    assert answer is not None
    svc.on_twin_reported(TwinReported.parse("dev-1", answer))
    rid = answer["csr"]["requestId"]
    other = {"csr": {"requestId": rid, "pem": Device(world, "dev-1").new_csr("other")}}
    svc.on_twin_reported(TwinReported.parse("dev-1", other))
    [ignored] = world.audits("csr_ignored")
    assert ignored.request_id == rid
    assert ignored.detail["reason"] == "a different CSR was already accepted for this request"


def test_a_connect_while_the_twin_holds_an_answer_to_an_old_request_keeps_waiting(
    world: World,
) -> None:
    dev, svc = world.ready()
    svc.start_renewal(StartRenewal("dev-1", Trigger.MANUAL, "op"))
    rid = dev.renewal_request()
    world.registry.report(
        "dev-1", {"x509": {"csr": {"requestId": "old", "pem": dev.new_csr("old")}}}
    )
    rec = svc.on_device_connected(DeviceConnected("dev-1", world.clock.now()))
    assert rec is not None
    assert rec.state is RotationState.CSR_REQUESTED
    assert rec.request_id == rid
    assert dev.renewal_request() == rid


def test_a_twin_report_is_logged_with_its_version(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    dev = world.add_device("dev-1")
    svc = world.service()
    with caplog.at_level(logging.DEBUG, logger="shared.domain.rotation"):
        svc.on_twin_reported(TwinReported.parse("dev-1", dev.section(), twin_version=7))
    assert "device dev-1 reported x509 (twin version 7)" in [r.getMessage() for r in caplog.records]


# --------------------------------------------------------------------------- sweep


def test_the_sweep_reads_past_a_twin_that_reports_no_certificate(world: World) -> None:
    world.ready("a-none")
    world.ready("b-due")
    # the query matches its notAfter, but without a thumbprint it names no certificate
    section = world.registry.twins["a-none"].reported["x509"]
    world.registry.twins["a-none"].reported["x509"] = {"notAfter": section["notAfter"]}
    world.clock.advance(31 * DAY)
    plan = world.service().sweep(Sweep(dry_run=True))
    assert plan.overdue == ["b-due"]  # from its twin, read after the one without


def test_a_rotation_whose_deadline_is_now_is_stuck(world: World) -> None:
    dev, svc = world.ready()
    world.registry.online.discard("dev-1")
    svc.start_renewal(StartRenewal("dev-1", Trigger.MANUAL, "op"))
    answer = dev.answer()
    assert answer is not None
    rec = svc.on_twin_reported(TwinReported.parse("dev-1", answer))
    assert rec.state is RotationState.DELIVERED
    assert rec.deadline is not None
    world.clock.advance((rec.deadline - world.clock.now()).total_seconds())
    assert world.clock.now() == rec.deadline
    assert "dev-1" in svc.sweep(Sweep(dry_run=True)).stuck


# --------------------------------------------------------------------------- slots


def test_the_certificate_in_use_keeps_its_slot_when_the_other_expires_later(
    world: World,
) -> None:
    """Both slots full: the new certificate goes where the one in use is not, even when
    the one in use expires first."""
    dev, svc = world.ready()
    current = thumb(dev.cert)
    later = world.add_device("other")  # another certificate, issued later
    world.clock.advance(DAY)
    enr = world.enrollments.individual["dev-1"]
    world.enrollments.individual["dev-1"] = dataclasses.replace(
        enr,
        secondary=CertificateSlot(
            thumbprint_sha256=thumb(later.cert),
            not_after=later.cert.not_valid_after_utc + timedelta(days=365),
        ),
    )
    svc.start_renewal(StartRenewal("dev-1", Trigger.MANUAL, "op"))
    answer = dev.answer()
    assert answer is not None
    rec = svc.on_twin_reported(TwinReported.parse("dev-1", answer))
    assert rec.slot == "secondary"
    enrolled = world.enrollments.individual["dev-1"]
    assert enrolled.primary is not None
    assert enrolled.primary.thumbprint_sha256 == current


def test_a_sha1_hub_thumbprint_of_a_superseded_certificate_is_taken_out(world: World) -> None:
    dev, svc = world.ready()
    old = dev.cert
    _rotate(svc, dev)
    new = thumb(dev.cert)
    world.registry.devices["dev-1"].secondary_thumbprint = sha1_thumbprint(old).upper()
    svc.on_connection_failure(
        ConnectionFailure(device_id="dev-1", code=401003, at=world.clock.now())
    )
    ident = world.registry.devices["dev-1"]
    assert (ident.primary_thumbprint, ident.secondary_thumbprint) == (new, None)


def test_a_chain_holding_the_leaf_is_delivered_with_its_last_line_ended(world: World) -> None:
    dev = world.add_device("dev-1")
    issued = world.issuer.issue(
        "dev-1", dev.new_csr("r"), request_id="r", trigger="cli", actor="test"
    )
    chain = leaf_chain(issued).rstrip("\n")
    unended = dataclasses.replace(issued, chain_pem=chain)
    assert leaf_chain(unended) == chain + "\n"
    parts = leaf_chain_list(unended)
    assert len(parts) == len(leaf_chain_list(issued))
    assert all(p.endswith("-----END CERTIFICATE-----\n") for p in parts)


# --------------------------------------------------------------------------- bulk


def test_a_bulk_batch_finishing_an_issued_rotation_defers_its_reprovision(world: World) -> None:
    world.policy = type(world.policy)(bulk_threshold=2)
    devs = [world.add_device(f"dev-{i}") for i in range(2)]
    svc = world.service()
    for dev in devs:
        adopt(svc, dev)
        svc.start_renewal(StartRenewal(dev.device_id, Trigger.MANUAL, "op"))
        answer = dev.answer()
        assert answer is not None
        world.registry.online.discard(dev.device_id)
        svc.on_twin_reported(TwinReported.parse(dev.device_id, answer))
        world.registry.online.add(dev.device_id)
        rec = world.state.get(dev.device_id)
        assert rec is not None
        # stopped before the enrollment was written (a crash after the signature)
        world.state.put(dataclasses.replace(rec, state=RotationState.ISSUED, slot=None))
    result = svc.process_batch(
        parse_rotate_message(
            {"kind": "rotate", "deviceIds": [d.device_id for d in devs], "reason": "expiring"}
        )
    )
    assert result.reprovision_job is not None
    _condition, method, _payload = world.registry.jobs[result.reprovision_job]
    assert method == "reprovision"
    for dev in devs:
        rec = world.state.get(dev.device_id)
        assert rec is not None
        assert rec.state is RotationState.REPROVISION_SENT


def test_a_batch_writes_from_the_campaigns_copies_without_reading_the_enrollments(
    world: World,
) -> None:
    devices = [world.add_device(f"dev-{i:02}") for i in range(2)]
    campaigns = _CampaignCopies()
    deps = world.deps()
    deps.campaigns = campaigns
    svc = RotationService(deps)
    for dev in devices:
        adopt(svc, dev)
        svc.start_renewal(StartRenewal(dev.device_id, Trigger.MANUAL, "op"))
        campaigns.copies[dev.device_id] = KnownEnrollment(
            copy.deepcopy(world.enrollments.individual[dev.device_id])
        )
    reports = _csr_reports(devices)
    reads: list[str] = []
    inner = world.enrollments.get_individual

    def get_individual(registration_id: str) -> IndividualEnrollment:
        reads.append(registration_id)
        return inner(registration_id)

    world.enrollments.get_individual = get_individual  # type: ignore[method-assign]
    _in_batch(svc, reports)
    assert reads == []
    for dev in devices:
        rec = world.state.get(dev.device_id)
        assert rec is not None
        assert rec.slot == "secondary"
        slot = world.enrollments.individual[dev.device_id].secondary
        assert slot is not None
        assert slot.thumbprint_sha256 == rec.new_thumbprint


def test_a_device_created_without_a_hub_identity_gets_an_empty_record(world: World) -> None:
    world.add_device("dev-1")
    del world.registry.devices["dev-1"]  # deleted again before the event was handled
    rec = world.service().on_device_created(DeviceCreated("dev-1"))
    assert rec.state is RotationState.IDLE
    assert rec.current_serial is None


def test_a_bulk_redelivery_whose_job_failed_is_stuck_at_once(world: World) -> None:
    """Unconfirmed past the deadline, a bulk batch sends the devices back to delivered,
    due at once; the job call then fails, and the next sweep lists them as stuck."""
    world.policy = type(world.policy)(bulk_threshold=2)
    devs = [world.add_device(f"dev-{i}") for i in range(2)]
    svc = world.service()
    for dev in devs:
        adopt(svc, dev)
        svc.start_renewal(StartRenewal(dev.device_id, Trigger.MANUAL, "op"))
        answer = dev.answer()
        assert answer is not None
        sent = svc.on_twin_reported(TwinReported.parse(dev.device_id, answer))
        assert sent.state is RotationState.REPROVISION_SENT
    world.clock.advance(DAY / 2)  # past the confirmation deadline, not yet stale

    def schedule_method_job(*_args: Any, **_kwargs: Any) -> Any:
        raise ServiceError("IoT Hub answered 500")

    world.registry.schedule_method_job = schedule_method_job  # type: ignore[method-assign]
    with pytest.raises(ServiceError):
        svc.process_batch(
            parse_rotate_message(
                {"kind": "rotate", "deviceIds": [d.device_id for d in devs], "reason": "expiring"}
            )
        )
    for dev in devs:
        rec = world.state.get(dev.device_id)
        assert rec is not None
        assert rec.state is RotationState.DELIVERED
        assert rec.deadline == world.clock.now()
    assert sorted(svc.sweep(Sweep(dry_run=True)).stuck) == ["dev-0", "dev-1"]

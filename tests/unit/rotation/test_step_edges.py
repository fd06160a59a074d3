"""Edges of the forward steps: a CSR accepted while the issuer is throttled and the same
answer redelivered, a reprovision call the device refuses, the slot rule with one
expiry known, what a finished rotation audits and tells its campaign."""

from __future__ import annotations

import dataclasses
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.domain.commands import Allow, Disallow, StartRenewal, TwinReported
from shared.domain.errors import ConcurrencyError, ThrottledError
from shared.domain.model import MethodResult, RotationState, Trigger
from shared.domain.rotation import RotationService
from shared.domain.rotation.admissible import admissible_certificates
from shared.domain.rotation.slots import choose_slot
from tests.unit.rotation.fakes import Device, World, thumb
from tests.unit.rotation.test_flow import adopt
from tests.unit.rotation.test_sweep_batch_edges import Campaigns


def _asked(world: World, device_id: str = "dev-1", **kw: Any) -> tuple[Device, RotationService]:
    dev = world.add_device(device_id, **kw)
    svc = world.service()
    adopt(svc, dev)
    svc.start_renewal(StartRenewal(device_id, Trigger.MANUAL, "op"))
    return dev, svc


def test_a_csr_taken_while_the_issuer_is_throttled_waits_then_resumes_on_redelivery(
    world: World,
) -> None:
    dev, svc = _asked(world)
    answer = dev.answer()
    assert answer is not None
    issue = world.issuer.issue

    def throttled(*_args: Any, **_kwargs: Any) -> Any:
        raise ThrottledError("429 from the HSM", retry_after=1.0)

    world.issuer.issue = throttled  # type: ignore[method-assign]
    received_at = world.clock.now()
    with pytest.raises(ThrottledError):
        svc.on_twin_reported(TwinReported.parse("dev-1", answer))
    rec = world.state.get("dev-1")
    assert rec is not None
    assert rec.state is RotationState.CSR_RECEIVED
    assert rec.deadline == received_at + world.policy.work_timeout
    world.issuer.issue = issue  # type: ignore[method-assign]
    resumed = svc.on_twin_reported(TwinReported.parse("dev-1", answer))
    assert resumed.state is RotationState.REPROVISION_SENT
    assert not [e for e in world.audit.list("dev-1", limit=100) if e.action == "csr_ignored"]


def test_a_refused_reprovision_call_is_recorded_and_counted(world: World) -> None:
    dev, svc = _asked(world)
    world.registry.on_method = lambda _d, _m, _p: MethodResult(404, None)
    answer = dev.answer()
    assert answer is not None
    rec = svc.on_twin_reported(TwinReported.parse("dev-1", answer))
    assert rec.state is RotationState.DELIVERED
    assert rec.last_error == "reprovision answered 404"
    assert rec.deadline is not None
    assert rec.deadline > world.clock.now()
    assert world.metrics.counts["certroll.device_offline"] == 1


T1 = datetime(2026, 1, 1, tzinfo=UTC)
T2 = datetime(2026, 2, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("args", "slot"),
    [
        (("a", "b", "a"), "secondary"),
        (("a", "b", "b"), "primary"),
        ((None, "b", None), "primary"),
        (("a", None, None), "secondary"),
        (("a", "b", None, T1, T2), "primary"),
        (("a", "b", None, T2, T1), "secondary"),
        (("a", "b", None, T1, T1), "primary"),
        (("a", "b", None, T1, None), "secondary"),
        (("a", "b", None, None, T1), "secondary"),
        (("a", "b", None), "secondary"),
    ],
)
def test_the_slot_rule(args: tuple[Any, ...], slot: str) -> None:
    assert choose_slot(*args) == slot


def test_a_finished_rotation_audits_its_evidence_and_tells_its_campaigns(world: World) -> None:
    campaigns = Campaigns(done=set())
    dev = world.add_device("dev-1")
    deps = world.deps()
    deps.campaigns = campaigns
    svc = RotationService(deps)
    adopt(svc, dev)
    svc.start_renewal(StartRenewal("dev-1", Trigger.MANUAL, "op"))
    answer = dev.answer()
    assert answer is not None
    svc.on_twin_reported(TwinReported.parse("dev-1", answer))
    new_thumb = thumb(dev.delivered())  # type: ignore[arg-type]
    [write] = [e for e in world.audit.list("dev-1", limit=100) if e.action == "slot_write"]
    assert (write.outcome, write.detail["thumbprint"], write.detail["oldRemoved"]) == (
        "ok",
        new_thumb,
        False,
    )
    enr = world.enrollments.individual["dev-1"]
    assert new_thumb in {s.thumbprint_sha256 for s in (enr.primary, enr.secondary) if s is not None}
    svc.on_twin_reported(TwinReported.parse("dev-1", dev.install()))
    [done] = [e for e in world.audit.list("dev-1", limit=100) if e.action == "rotation_complete"]
    assert done.outcome == "ok"
    assert done.detail["confirmedBy"] == "installed"
    assert campaigns.reports == [("dev-1", "completed", None)]


def test_a_group_members_certificate_goes_to_its_group(world: World) -> None:
    dev, svc = _asked(world, group=True)
    answer = dev.answer()
    assert answer is not None
    rec = svc.on_twin_reported(TwinReported.parse("dev-1", answer))
    assert rec.slot == "group"
    [write] = [e for e in world.audit.list("dev-1", limit=100) if e.action == "slot_write"]
    assert write.detail["slot"] == "group"


def test_a_compromise_rotation_leaves_only_the_new_thumbprint_on_the_hub(world: World) -> None:
    dev = world.add_device("dev-1")
    svc = world.service()
    adopt(svc, dev)
    old = thumb(dev.cert)
    svc.start_renewal(StartRenewal("dev-1", Trigger.COMPROMISE, "op"))
    answer = dev.answer()
    assert answer is not None
    svc.on_twin_reported(TwinReported.parse("dev-1", answer))
    report = dev.install()
    new = thumb(dev.cert)
    ident = world.registry.devices["dev-1"]
    ident.primary_thumbprint, ident.secondary_thumbprint = new, old  # the old one lingers
    done = svc.on_twin_reported(TwinReported.parse("dev-1", report))
    assert done.state is RotationState.IDLE
    ident = world.registry.devices["dev-1"]
    assert (ident.primary_thumbprint, ident.secondary_thumbprint) == (new, None)


def _always_changing(world: World) -> None:
    def put(*_args: Any, **_kwargs: Any) -> Any:
        raise ConcurrencyError("etag mismatch")

    world.state.put = put  # type: ignore[method-assign]


def test_a_renewal_whose_record_keeps_changing_says_so(world: World) -> None:
    dev = world.add_device("dev-1")
    svc = world.service()
    adopt(svc, dev)
    _always_changing(world)
    with pytest.raises(
        ConcurrencyError, match=r"^dev-1: the rotation record kept changing during start\Z"
    ):
        svc.start_renewal(StartRenewal("dev-1", Trigger.MANUAL, "op"))


def test_an_allow_whose_record_keeps_changing_says_so(world: World) -> None:
    dev = world.add_device("dev-1")
    svc = world.service()
    adopt(svc, dev)
    svc.disallow(Disallow("dev-1", "stolen", "ops"))
    _always_changing(world)
    with pytest.raises(
        ConcurrencyError, match=r"^dev-1: the rotation record kept changing during allow\Z"
    ):
        svc.allow(Allow("dev-1", "ops"))


def test_the_current_certificate_comes_first_even_when_issued_later(world: World) -> None:
    dev = world.add_device("dev-1")
    svc = world.service()
    adopt(svc, dev)
    svc.start_renewal(StartRenewal("dev-1", Trigger.MANUAL, "op"))
    answer = dev.answer()
    assert answer is not None
    rec = svc.on_twin_reported(TwinReported.parse("dev-1", answer))
    certs = world.ledger.list_for_device("dev-1")
    current = next(c for c in certs if c.serial == rec.current_serial)
    new = next(c for c in certs if c.serial == rec.new_serial)
    # the current certificate recorded after the new one (an adopted or re-recorded one)
    shifted = dataclasses.replace(current, issued_at=new.issued_at + timedelta(seconds=1))
    found = admissible_certificates("dev-1", rec, [new, shifted], world.clock.now())
    assert [c.serial for c in found] == [current.serial, new.serial]


def test_the_renewal_request_and_every_event_follow_the_device_contract(world: World) -> None:
    dev, svc = _asked(world)
    rec = world.state.get("dev-1")
    assert rec is not None
    renewal = world.registry.twins["dev-1"].desired["x509"]["renewal"]
    assert renewal == {
        "requestId": rec.request_id,
        "reason": "manual",
        "keyAlgorithm": world.policy.key_algorithm,
    }
    answer = dev.answer()
    assert answer is not None
    svc.on_twin_reported(TwinReported.parse("dev-1", answer))
    svc.on_twin_reported(TwinReported.parse("dev-1", dev.install()))
    events = world.events.events
    assert [e.event_type for e in events] == ["CertificateIssued", "RotationCompleted"]
    assert all(e.data["deviceId"] == "dev-1" for e in events)
    assert all(e.subject == "devices/dev-1" for e in events)


def test_a_request_driven_before_its_deadline_counts_no_wait(world: World) -> None:
    """Driving a csr_requested record early (the queue worker, ``advance``) asks the
    device again if need be but counts a wait and moves the deadline only once it passed."""
    _dev, svc = _asked(world)
    asked = world.state.get("dev-1")
    assert asked is not None
    assert asked.deadline is not None
    world.clock.advance(60)
    early = svc.advance("dev-1")
    assert early.state is RotationState.CSR_REQUESTED
    assert (early.attempts, early.deadline) == (asked.attempts, asked.deadline)
    world.clock.advance((asked.deadline - world.clock.now()).total_seconds())
    due = svc.advance("dev-1")
    assert due.state is RotationState.CSR_REQUESTED
    assert due.attempts == asked.attempts + 1
    assert due.deadline == world.clock.now() + world.policy.rotation_deadline


def test_a_report_with_nothing_new_writes_nothing_and_a_new_expiry_is_kept(
    world: World,
) -> None:
    dev = world.add_device("dev-1")
    svc = world.service()
    adopted = adopt(svc, dev)
    again = svc.on_twin_reported(TwinReported.parse("dev-1", dev.section()))
    assert (again.etag, again.updated_at) == (adopted.etag, adopted.updated_at)
    stale = world.state.get("dev-1")
    assert stale is not None
    stale.current_not_after = None  # a record written before the expiry was kept
    world.state.put(stale)
    seen = svc.on_twin_reported(TwinReported.parse("dev-1", dev.section()))
    assert seen.current_not_after == dev.cert.not_valid_after_utc
    assert seen.etag != adopted.etag


def test_a_twin_report_whose_record_keeps_changing_says_so(world: World) -> None:
    dev = world.add_device("dev-1")
    svc = world.service()
    adopt(svc, dev)
    stale = world.state.get("dev-1")
    assert stale is not None
    stale.current_not_after = None  # the report has something to write
    world.state.put(stale)
    section = dev.section()
    _always_changing(world)
    with pytest.raises(
        ConcurrencyError, match=r"^dev-1: the rotation record kept changing during twin report\Z"
    ):
        svc.on_twin_reported(TwinReported.parse("dev-1", section))


def test_each_state_change_and_an_answer_to_an_old_request_are_logged(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    dev = world.add_device("dev-1")
    svc = world.service()
    adopt(svc, dev)
    with caplog.at_level(logging.INFO, logger="shared.domain.rotation"):
        started = svc.start_renewal(StartRenewal("dev-1", Trigger.MANUAL, "op"))
        stale = {"csr": {"requestId": "old-request", "pem": dev.new_csr("old-request")}}
        svc.on_twin_reported(TwinReported.parse("dev-1", stale))
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("shared.domain.rotation")]
    assert f"device dev-1 request {started.request_id}: idle -> csr_requested" in lines
    assert (
        f"device dev-1: CSR for request old-request ignored (current request {started.request_id})"
    ) in lines

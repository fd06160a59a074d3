"""Rotation paths the common flows do not take: a record stored in ``enrolled``, an answer
found on the twin by the queue worker, certificates recorded out of time order, an issuer
refusing a disallowed device, a repeated disallow of a group member, an allow after an
unfinished disallow, the campaign's enrollment copy, and the edges of the slot rule and
of the reconcile's allowance."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest

from shared.domain.campaign import KnownEnrollment
from shared.domain.commands import Allow, Disallow, StartRenewal, Sweep, TwinReported
from shared.domain.errors import DeviceDisallowedError, InvalidRequestError
from shared.domain.model import (
    AuthType,
    CertificateSlot,
    CertificateStatus,
    ConnectionFailure,
    DeviceIdentity,
    IndividualEnrollment,
    RotationState,
    Trigger,
)
from shared.domain.rotation import RotationService
from shared.domain.rotation.admissible import admissible_certificates, refusal
from shared.domain.rotation.batching import EnrollmentWriteBatch, EnrollmentWriteWaits
from shared.domain.rotation.slots import enrollment_slot_for
from shared.domain.rotation.transitions import DISALLOW_IN_PROGRESS
from tests.unit.rotation.fakes import Device, World, thumb
from tests.unit.rotation.test_flow import adopt

DAY = 86400.0


def _asked(world: World) -> tuple[Device, RotationService]:
    dev, svc = world.ready()
    svc.start_renewal(StartRenewal("dev-1", Trigger.MANUAL, "op"))
    return dev, svc


def _failure(world: World, device_id: str = "dev-1") -> ConnectionFailure:
    return ConnectionFailure(device_id=device_id, code=401003, at=world.clock.now())


# --------------------------------------------------------------------------- forward steps


def test_a_record_stored_in_enrolled_is_delivered_when_driven(world: World) -> None:
    """Issue, enroll and deliver are written once, at the end; a record stored in
    ``enrolled`` (by an earlier version) is delivered from where it stands."""
    dev, svc = _asked(world)
    answer = dev.answer()
    assert answer is not None
    world.registry.online.discard("dev-1")
    delivered = svc.on_twin_reported(TwinReported.parse("dev-1", answer))
    assert delivered.state is RotationState.DELIVERED
    world.registry.twins["dev-1"].desired["x509"].pop("issued")
    world.state.put(dataclasses.replace(delivered, state=RotationState.ENROLLED, deadline=None))
    world.registry.online.add("dev-1")
    driven = svc.advance("dev-1")
    assert driven.state is RotationState.REPROVISION_SENT
    sent = dev.delivered()
    assert sent is not None
    assert thumb(sent) == delivered.new_thumbprint


def test_the_queue_worker_takes_an_answer_already_on_the_twin(world: World) -> None:
    """The device answered but its twin-change event was lost: driving the request
    reads the answer from the twin and issues."""
    dev, svc = _asked(world)
    assert dev.answer() is not None  # reported, never handed to on_twin_reported
    driven = svc.advance("dev-1")
    assert driven.state is RotationState.REPROVISION_SENT
    assert dev.delivered() is not None


def test_an_issuer_refusing_a_disallowed_device_fails_the_rotation_with_its_words(
    world: World,
) -> None:
    dev, svc = _asked(world)

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise DeviceDisallowedError("device dev-1 is disallowed at the issuer")

    world.issuer.issue = refuse  # type: ignore[method-assign]
    answer = dev.answer()
    assert answer is not None
    failed = svc.on_twin_reported(TwinReported.parse("dev-1", answer))
    assert failed.state is RotationState.FAILED
    assert failed.last_error is not None
    assert "device dev-1 is disallowed at the issuer" in failed.last_error
    [event] = world.events.events
    assert (event.data["code"], event.data["error"]) == (
        "device_disallowed",
        "device dev-1 is disallowed at the issuer",
    )


def test_a_current_certificate_recorded_after_the_new_one_is_still_superseded(
    world: World,
) -> None:
    """The worker that signs the new certificate runs an hour behind the one that
    recorded the current one: finishing supersedes the current one all the same."""
    dev, svc = world.ready()
    old = thumb(dev.cert)
    world.clock.advance(-3600)
    svc.start_renewal(StartRenewal("dev-1", Trigger.MANUAL, "op"))
    answer = dev.answer()
    assert answer is not None
    svc.on_twin_reported(TwinReported.parse("dev-1", answer))
    done = svc.on_twin_reported(TwinReported.parse("dev-1", dev.install()))
    assert done.state is RotationState.IDLE
    by_thumb = {c.thumbprint_sha256: c for c in world.ledger.list_for_device("dev-1")}
    assert by_thumb[thumb(dev.cert)].issued_at < by_thumb[old].issued_at
    assert by_thumb[old].status is CertificateStatus.SUPERSEDED
    assert by_thumb[thumb(dev.cert)].status is CertificateStatus.ACTIVE


class _CampaignCopies:
    """A campaign outcomes port holding enrollment copies by device id."""

    def __init__(self) -> None:
        self.copies: dict[str, KnownEnrollment] = {}

    def is_done(self, campaign_id: str, device_id: str) -> bool:
        return False

    def report(self, device_id: str, outcome: str, campaign_id: str | None = None) -> None:
        return None

    def known_enrollment(self, device_id: str) -> KnownEnrollment | None:
        return self.copies.get(device_id)


def test_the_campaigns_copy_of_the_device_enrollment_saves_its_read(world: World) -> None:
    dev = world.add_device("dev-1")
    campaigns = _CampaignCopies()
    deps = world.deps()
    deps.campaigns = campaigns
    svc = RotationService(deps)
    adopt(svc, dev)
    svc.start_renewal(StartRenewal("dev-1", Trigger.MANUAL, "op"))
    campaigns.copies["dev-1"] = KnownEnrollment(
        copy.deepcopy(world.enrollments.individual["dev-1"])
    )
    reads: list[str] = []
    inner = world.enrollments.get_individual

    def get_individual(registration_id: str) -> IndividualEnrollment:
        reads.append(registration_id)
        return inner(registration_id)

    world.enrollments.get_individual = get_individual  # type: ignore[method-assign]
    answer = dev.answer()
    assert answer is not None
    enrolled = svc.on_twin_reported(TwinReported.parse("dev-1", answer))
    assert enrolled.state is RotationState.REPROVISION_SENT
    assert reads == []  # the enroll step wrote from the campaign's copy
    slot = getattr(world.enrollments.individual["dev-1"], enrolled.slot or "")
    assert slot.thumbprint_sha256 == enrolled.new_thumbprint


# --------------------------------------------------------------------------- slots


def _slot(thumbprint: str) -> CertificateSlot:
    return CertificateSlot(thumbprint_sha256=thumbprint)


@pytest.mark.parametrize(
    ("primary", "secondary", "keep", "slot"),
    [
        (None, "n", "c", "secondary"),  # already in the secondary, the primary empty
        ("x", "n", None, "secondary"),  # already there, nothing to keep
        ("n", None, "c", "primary"),
        ("c", None, "c", "secondary"),  # not there: the slot rule
    ],
)
def test_the_enrollment_slot_of_a_certificate_is_where_it_already_is(
    primary: str | None, secondary: str | None, keep: str | None, slot: str
) -> None:
    enr = IndividualEnrollment(
        "dev-1",
        primary=_slot(primary) if primary else None,
        secondary=_slot(secondary) if secondary else None,
    )
    assert enrollment_slot_for(enr, "n", keep) == slot


def test_a_staged_write_names_its_device() -> None:
    batch = EnrollmentWriteBatch()
    with pytest.raises(EnrollmentWriteWaits) as waits:
        batch.stage(IndividualEnrollment("dev-7", etag="e"))
    assert waits.value.device_id == "dev-7"
    assert str(waits.value) == "dev-7: enrollment write staged for the batch's bulk call"


def test_a_certificate_is_expired_from_its_not_after_instant(world: World) -> None:
    _dev, _svc = world.ready()
    rec = world.state.get("dev-1")
    [cert] = world.ledger.list_for_device("dev-1")
    assert refusal(cert, "dev-1", rec, cert.not_after) == "expired_certificate"
    assert refusal(cert, "dev-1", rec, cert.not_before) is None


def test_no_certificate_is_admissible_without_a_rotation_record(world: World) -> None:
    world.add_device("dev-1")
    certs = world.ledger.list_for_device("dev-1")
    assert certs
    assert admissible_certificates("dev-1", None, certs, world.clock.now()) == []


# --------------------------------------------------------------------------- reconcile


def test_the_allowance_is_per_device_and_read_from_its_latest_20_entries(world: World) -> None:
    world.ready("dev-1")
    world.ready("dev-2")
    svc = world.service()
    for device_id in ("dev-1", "dev-2"):
        enr = world.enrollments.individual[device_id]
        world.enrollments.individual[device_id] = dataclasses.replace(enr, primary=None)
    reads: list[tuple[Any, ...]] = []
    inner = world.audit.list

    def audit_list(*args: Any, **kwargs: Any) -> Any:
        reads.append((*args, *kwargs.values()))
        return inner(*args, **kwargs)

    world.audit.list = audit_list  # type: ignore[method-assign]
    assert svc.on_connection_failure(_failure(world, "dev-1")).action == "reconciled"
    # another device reconciled a moment ago: this one is not held back by it
    assert svc.on_connection_failure(_failure(world, "dev-2")).action == "reconciled"
    assert reads == [("dev-1", 20), ("dev-2", 20)]


def test_a_rate_limited_401_keeps_its_code(world: World) -> None:
    world.ready()
    svc = world.service()
    enr = world.enrollments.individual["dev-1"]
    world.enrollments.individual["dev-1"] = dataclasses.replace(enr, primary=None)
    assert svc.on_connection_failure(_failure(world)).action == "reconciled"
    limited = svc.on_connection_failure(_failure(world))
    assert (limited.device_id, limited.code, limited.action) == ("dev-1", 401003, "rate_limited")


# --------------------------------------------------------------------------- access


def test_a_repeated_disallow_recreates_a_group_members_deleted_enrollment(world: World) -> None:
    world.ready("dev-g", group=True)
    svc = world.service()
    first = svc.disallow(Disallow("dev-g", "stolen", "ops"))
    assert (first.enrollment, first.changed) == ("created_disabled", True)
    del world.enrollments.individual["dev-g"]  # someone deleted it since
    again = svc.disallow(Disallow("dev-g", "stolen", "ops"))
    assert (again.enrollment, again.hub_identity, again.revoked) == (
        "created_disabled",
        "already_disabled",
        (),
    )
    assert again.changed is True
    assert "dev-g" in world.enrollments.individual


def test_a_device_without_certificates_is_disallowed_without_an_enrollment(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.registry.create_device(
        DeviceIdentity(
            device_id="dev-x", auth_type=AuthType.SELF_SIGNED, primary_thumbprint="ab" * 32
        )
    )
    svc = world.service()
    with caplog.at_level("WARNING", logger="shared.domain.rotation"):
        result = svc.disallow(Disallow("dev-x", "stolen", "ops"))
    assert (result.enrollment, result.changed) == ("none", True)
    assert "dev-x" not in world.enrollments.individual
    assert "device dev-x: no certificate to put in a disabled enrollment" in [
        r.getMessage() for r in caplog.records
    ]


def test_an_allow_after_an_unfinished_disallow_asks_for_the_disallow_again(
    world: World,
) -> None:
    world.ready()
    svc = world.service()
    svc.disallow(Disallow("dev-1", "stolen", "ops"))
    rec = world.state.get("dev-1")
    assert rec is not None
    world.state.put(dataclasses.replace(rec, last_error=DISALLOW_IN_PROGRESS))  # it crashed
    with pytest.raises(InvalidRequestError) as refused:
        svc.allow(Allow("dev-1", "ops"))
    assert (refused.value.code, refused.value.message) == (
        "disallow_incomplete",
        "device dev-1: the disallow did not finish; repeat it first",
    )


# --------------------------------------------------------------------------- sweep


def test_a_continued_sweep_is_handed_its_page_batch_and_time_settings(world: World) -> None:
    for name in ("a", "b", "c"):
        world.ready(name)
    svc = world.service()
    world.clock.advance(31 * DAY)
    inner = world.registry.query_twins

    def slow_query(*args: Any, **kwargs: Any) -> Any:
        world.clock.advance(10)
        return inner(*args, **kwargs)

    world.registry.query_twins = slow_query  # type: ignore[method-assign]
    plan = svc.sweep(Sweep(page_size=1, batch_size=7, time_budget_s=5))
    [continuation] = [m for m in world.queue.receive(100) if m["kind"] == "sweep"]
    assert continuation["continuation"] == plan.continuation
    assert (
        continuation["pageSize"],
        continuation["batchSize"],
        continuation["timeBudgetSeconds"],
    ) == (1, 7, 5)


# --------------------------------------------------------------------------- adoption


def test_adopting_a_missed_renewal_clears_the_old_thumbprint_from_the_hub_identity(
    world: World,
) -> None:
    """A renewal whose confirmation was missed (the record failed meanwhile) is adopted
    from the device's report: every slot is checked, the hub identity's too, whatever the
    rotation's reason (a manual one leaves the identity to DPS on a normal finish)."""
    dev, svc = _asked(world)
    old = thumb(dev.cert)
    answer = dev.answer()
    assert answer is not None
    rec = svc.on_twin_reported(TwinReported.parse("dev-1", answer))
    world.state.put(dataclasses.replace(rec, state=RotationState.FAILED))
    report = dev.install()  # registered: the identity holds the new thumbprint alone
    world.registry.devices["dev-1"].secondary_thumbprint = old  # put back meanwhile
    svc.on_twin_reported(TwinReported.parse("dev-1", report))
    ident = world.registry.devices["dev-1"]
    assert {ident.primary_thumbprint, ident.secondary_thumbprint} == {thumb(dev.cert), None}

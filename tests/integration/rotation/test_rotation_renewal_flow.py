"""Renewal end to end: individual enrollments alternate slots, group members leave the
group alone; the device reconnects with the new certificate."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from shared.domain.commands import StartRenewal
from shared.domain.errors import NotFoundError
from shared.domain.model import (
    AuthType,
    CertificateRecord,
    CertificateStatus,
    RotationState,
    Trigger,
)
from shared.ports import CertificateLedger
from tests.integration.rotation.stack import Stack, StackOptions
from tests.support.softhsm import SOFTHSM

pytestmark = pytest.mark.azurite


def _sha256(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def _issues_for(stack: Stack, device_id: str) -> dict[str, int]:
    """Successful signatures per request id, from the audit log (``issue`` ``ok``)."""
    counts: dict[str, int] = {}
    for entry in stack.services.audit.list(device_id, 200):
        if entry.action == "issue" and entry.outcome == "ok":
            rid = entry.request_id or ""
            counts[rid] = counts.get(rid, 0) + 1
    return counts


def _ledger(ledger: CertificateLedger, device_id: str) -> list[CertificateRecord]:
    return ledger.list_for_device(device_id)


@pytest.fixture(
    params=[
        pytest.param(StackOptions("rest", "file"), id="rest-file"),
        pytest.param(StackOptions("inproc", "file"), id="inproc-file"),
        pytest.param(
            StackOptions("rest", "softhsm"),
            id="rest-softhsm",
            marks=[
                pytest.mark.softhsm,
                pytest.mark.skipif(not SOFTHSM.exists(), reason="SoftHSM2 is not installed"),
            ],
        ),
    ]
)
def stack_options(request: pytest.FixtureRequest) -> StackOptions:
    options: StackOptions = request.param
    return options


def test_individual_enrollment_alternates_slots_over_two_rotations(stack: Stack) -> None:
    sim = stack.simulator(2)
    assert sim.start() == 2
    stack.run(sim, stack.all_idle(sim.device_ids))  # DeviceCreated + first reports
    device_id = sim.device_ids[0]
    other = sim.device_ids[1]
    agent = sim.agents[device_id]
    first = agent.certificate
    first_thumb = _sha256(first.public_bytes(Encoding.DER))
    rec = stack.record(device_id)
    assert rec.current_thumbprint == first_thumb
    enr = stack.services.enrollments.get_individual(device_id)
    assert enr.primary is not None
    assert enr.primary.thumbprint_sha256 == first_thumb
    assert enr.secondary is None

    expected_slots = ["secondary", "primary"]
    seen_thumbs = [first_thumb]
    registrations_before = agent.timeline.registrations
    for round_no, slot in enumerate(expected_slots, start=1):
        stack.clock.advance(3600)
        started = stack.service.start_renewal(StartRenewal(device_id, Trigger.MANUAL, "cli:test"))
        request_id = started.request_id
        assert started.state is RotationState.CSR_REQUESTED
        assert request_id

        # stop as soon as the new certificate is enrolled and delivered, before the device
        # reprovisions: both slots hold a certificate the device may use
        def delivered(request_id: str = request_id) -> bool:
            return stack.record(device_id).state in (
                RotationState.DELIVERED,
                RotationState.REPROVISION_SENT,
            )

        stack.run(sim, delivered)
        mid = stack.record(device_id)
        assert mid.slot == slot
        new_thumb = mid.new_thumbprint
        assert new_thumb is not None
        assert new_thumb not in seen_thumbs
        enr = stack.services.enrollments.get_individual(device_id)
        slots = {
            "primary": enr.primary.thumbprint_sha256 if enr.primary else None,
            "secondary": enr.secondary.thumbprint_sha256 if enr.secondary else None,
        }
        assert slots[slot] == new_thumb
        other_slot = "primary" if slot == "secondary" else "secondary"
        assert slots[other_slot] == seen_thumbs[-1]  # the certificate in use stays
        ident = stack.services.registry.get_device(device_id)
        assert ident.auth_type is AuthType.SELF_SIGNED
        # the hub identity is left to DPS: the device's registration with the new
        # certificate puts it there (docs/performance.md, spending less per rotation)
        assert {ident.primary_thumbprint, ident.secondary_thumbprint} == {seen_thumbs[-1], None}

        stack.run(sim, stack.all_idle([device_id]))
        done = stack.record(device_id)
        assert done.current_thumbprint == new_thumb
        assert done.request_id is None
        assert _sha256(agent.certificate.public_bytes(Encoding.DER)) == new_thumb
        assert agent.connected
        assert agent.renewal_outcome(request_id) == "installed"
        enr = stack.services.enrollments.get_individual(device_id)
        after = {
            "primary": enr.primary.thumbprint_sha256 if enr.primary else None,
            "secondary": enr.secondary.thumbprint_sha256 if enr.secondary else None,
        }
        assert after == {slot: new_thumb, other_slot: None}, f"round {round_no}"
        ident = stack.services.registry.get_device(device_id)
        assert (ident.primary_thumbprint, ident.secondary_thumbprint) == (new_thumb, None)
        seen_thumbs.append(new_thumb)

        records = _ledger(stack.services.ledger, device_id)
        assert [r.thumbprint_sha256 for r in records] == seen_thumbs
        assert [r.status for r in records] == [CertificateStatus.SUPERSEDED] * round_no + [
            CertificateStatus.ACTIVE
        ]
        assert _issues_for(stack, device_id)[request_id] == 1
        completed = [
            e
            for e in stack.sink.events
            if e.event_type == "RotationCompleted" and e.data.get("requestId") == request_id
        ]
        assert len(completed) == 1
        assert completed[0].data["thumbprint"] == new_thumb

    # the device registered once per rotation through DPS and connected with each certificate
    assert agent.timeline.registrations == registrations_before + 2
    assert [use.thumbprint for use in agent.timeline.certificates] == seen_thumbs
    assert agent.timeline.renewals_failed == 0
    assert stack.emulator.dps.get_registration_state(device_id).status == "assigned"
    # the other device was left alone
    assert stack.record(other).request_id is None
    assert len(_ledger(stack.services.ledger, other)) == 1


@pytest.mark.parametrize(
    "stack_options", [pytest.param(StackOptions("rest", "file"), id="rest-file")]
)
def test_group_member_renews_without_touching_the_group(stack: Stack) -> None:
    sim = stack.simulator(1, group_fraction=1.0)
    assert sim.start() == 1
    stack.run(sim, stack.all_idle(sim.device_ids))
    device_id = sim.device_ids[0]
    agent = sim.agents[device_id]
    old_thumb = _sha256(agent.certificate.public_bytes(Encoding.DER))
    group_before = stack.services.enrollments.get_group(sim.group_id)
    reg_before = stack.services.enrollments.get_registration_state(device_id)
    registrations = agent.timeline.registrations
    stack.clock.advance(60)

    started = stack.service.start_renewal(StartRenewal(device_id, Trigger.MANUAL, "cli:test"))
    assert started.request_id
    stack.run(sim, stack.all_idle([device_id]))

    rec = stack.record(device_id)
    new_thumb = _sha256(agent.certificate.public_bytes(Encoding.DER))
    assert new_thumb != old_thumb
    assert rec.current_thumbprint == new_thumb
    assert agent.renewal_outcome(started.request_id) == "installed"
    # the group is untouched, no individual enrollment appeared
    group_after = stack.services.enrollments.get_group(sim.group_id)
    assert group_after.etag == group_before.etag
    assert group_after.primary == group_before.primary
    assert group_after.secondary == group_before.secondary
    with pytest.raises(NotFoundError):
        stack.services.enrollments.get_individual(device_id)
    slot_writes = [e for e in stack.services.audit.list(device_id, 50) if e.action == "slot_write"]
    assert [e.detail["slot"] for e in slot_writes] == ["group"]
    # the device registered again through the group and connects with the new certificate
    assert agent.timeline.registrations == registrations + 1
    reg_after = stack.services.enrollments.get_registration_state(device_id)
    assert reg_after.last_updated is not None
    assert reg_before.last_updated is not None
    assert reg_after.last_updated > reg_before.last_updated
    ident = stack.services.registry.get_device(device_id)
    assert (ident.primary_thumbprint, ident.secondary_thumbprint) == (new_thumb, None)
    assert agent.connected
    records = stack.services.ledger.list_for_device(device_id)
    assert [r.status for r in records] == [CertificateStatus.SUPERSEDED, CertificateStatus.ACTIVE]
    assert _issues_for(stack, device_id)[started.request_id] == 1

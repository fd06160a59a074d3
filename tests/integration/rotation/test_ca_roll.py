"""The CA roll on the rotation stack (in-memory storage, the emulator in process): each
step, its idempotency and resumption, refusals out of order, compromise mode."""

from __future__ import annotations

import json

import pytest
from cryptography import x509

from functions.parsing.work_queue import parse_any_work_message
from local.device.simulator import FleetSimulator
from shared.adapters.ca_roll_store import MemoryCaRollStore
from shared.adapters.memory import MemoryCampaignStore
from shared.domain.ca_roll import (
    CaRollIncompleteError,
    CaRollStepError,
    CaStatus,
    RollMode,
    RollState,
    RollStep,
)
from shared.domain.certs import sha256_thumbprint
from shared.domain.errors import NotFoundError
from shared.domain.messages import CampaignStep, RotateBatch
from shared.domain.model import CertificateStatus, RevocationReason
from shared.pki.ca_roll import CaRoll
from shared.pki.local_ca import ROOT_CRL_NAME
from tests.integration.rotation.stack import Stack, StackOptions

ACTOR = "operator:test"


@pytest.fixture
def stack_options() -> StackOptions:
    return StackOptions(fleet="inproc", storage="memory")


@pytest.fixture
def roll_stack(stack: Stack) -> Stack:
    """The stack with the emulator's CA certificates and a CA-roll store and campaign
    store that outlive a restart (memory storage is otherwise per worker)."""
    stack.fleet_overrides.update(
        ca_certificate_services=(stack.emulator.dps_certificates, stack.emulator.hub_certificates),
        ca_rolls=MemoryCaRollStore(),
        storage=stack.services.storage,
    )
    campaigns = MemoryCampaignStore()
    stack.restart()
    _use_campaigns(stack, campaigns)
    stack.fleet_overrides["_campaigns"] = campaigns
    return stack


def _use_campaigns(stack: Stack, campaigns: MemoryCampaignStore) -> None:
    # the campaign engine over a store that outlives a restart of the stack's services
    stack.services.__dict__["campaigns"] = campaigns


def restart(stack: Stack) -> CaRoll:
    campaigns = stack.fleet_overrides.pop("_campaigns")
    stack.restart()
    stack.fleet_overrides["_campaigns"] = campaigns
    _use_campaigns(stack, campaigns)
    return stack.services.ca_roll


def provision(stack: Stack, n: int = 6) -> FleetSimulator:
    sim = stack.simulator(n, group_fraction=0.5)
    sim.start(wait=True)
    stack.pump()
    return sim


def drain_queue(stack: Stack, sim: FleetSimulator, device_ids: list[str]) -> None:
    """Run the queued work and the devices until every listed device is idle again."""
    service = stack.services.rotation
    for _ in range(1000):  # as rotation_worker does: a campaign's run queues what follows
        messages = stack.services.queue.receive(32)
        if not messages:
            break
        for message in messages:
            work = parse_any_work_message(json.dumps(message))
            if isinstance(work, CampaignStep):
                stack.services.campaign_service.run(work.campaign_id)
            elif isinstance(work, RotateBatch):
                service.process_batch(work)
    stack.run(sim, stack.all_idle(device_ids))


def roll_to_trusted(roll: CaRoll, mode: RollMode = RollMode.NORMAL) -> None:
    roll.prepare(ACTOR, mode=mode)
    roll.install(ACTOR)
    roll.verify(ACTOR)
    roll.trust(ACTOR)


def chain_issuer(sim: FleetSimulator, device_id: str) -> x509.Certificate:
    return sim.agents[device_id].chain[1]


def test_steps_move_the_fleet_to_the_new_ca(roll_stack: Stack) -> None:
    stack = roll_stack
    sim = provision(stack)
    ids = sorted(sim.agents)
    roll = stack.services.ca_roll
    old_issuing = stack.services.authority.certificate

    prepared = roll.prepare(ACTOR)
    assert prepared.record.state is RollState.PREPARED
    assert "BEGIN CERTIFICATE REQUEST" in prepared.detail["csr"]
    installed = roll.install(ACTOR)
    new_cert = x509.load_pem_x509_certificate(
        installed.record.new.certificate_pem.encode()  # type: ignore[union-attr]
    )
    new_cert.verify_directly_issued_by(stack.services.authority.root)  # type: ignore[arg-type]

    verified = roll.verify(ACTOR)
    assert verified.record.state is RollState.VERIFIED
    for certs in (stack.emulator.dps_certificates, stack.emulator.hub_certificates):
        info = certs.get(verified.record.new.service_name)
        assert info.verified

    trusted = roll.trust(ACTOR)
    groups = trusted.detail["groups"]
    assert groups == [sim.group_id]
    group = stack.emulator.dps.get_group(sim.group_id)
    assert group.secondary is not None  # new CA beside the old one
    assert stack.services.issuer.authority.certificate == new_cert

    started = roll.reissue(ACTOR)
    assert started.record.state is RollState.REISSUING
    assert started.detail["devices"] == len(ids)
    with pytest.raises(CaRollIncompleteError):
        roll.retire(ACTOR)
    drain_queue(stack, sim, ids)
    for device_id in ids:
        assert chain_issuer(sim, device_id) == new_cert
    assert roll.remaining() == []

    retired = roll.retire(ACTOR)
    record = retired.record
    assert record.state is RollState.IDLE
    assert record.old.status is CaStatus.RETIRED
    group = stack.emulator.dps.get_group(sim.group_id)
    assert group.secondary is None
    assert group.primary is not None
    assert group.primary.thumbprint_sha256 == sha256_thumbprint(new_cert)
    final = x509.load_der_x509_crl(stack.services.crl_publisher.fetch(record.old.crl_name))
    assert final.is_signature_valid(old_issuing.public_key())  # type: ignore[arg-type]
    assert final.next_update_utc == old_issuing.not_valid_after_utc
    # every device reconnects with its new certificate (DPS admits the new CA)
    for device_id in ids:
        agent = sim.agents[device_id]
        stack.emulator.register(device_id, agent.chain)


def test_each_step_is_idempotent_and_resumes_after_a_restart(roll_stack: Stack) -> None:
    stack = roll_stack
    provision(stack, 2)
    roll = stack.services.ca_roll
    first = roll.prepare(ACTOR)
    again = restart(stack).prepare(ACTOR)
    assert not again.changed
    assert again.record.new.key_id == first.record.new.key_id
    roll = restart(stack)
    roll.install(ACTOR)
    roll = restart(stack)
    roll.verify(ACTOR)
    # a repeated verify after a crash that lost the record write proves nothing twice
    assert not roll._prove(stack.emulator.dps_certificates, roll.status().new)
    roll = restart(stack)
    trusted = roll.trust(ACTOR)
    # a new worker issues under the new CA: the record says which CA is active
    roll = restart(stack)
    assert stack.services.issuer.authority.key_id == trusted.record.new.key_id
    assert stack.services.authority.key_id == trusted.record.new.key_id
    first_campaign = roll.reissue(ACTOR)
    second = restart(stack).reissue(ACTOR)
    assert not second.changed
    assert second.record.campaign_ids == first_campaign.record.campaign_ids


@pytest.mark.parametrize(
    ("done", "step"),
    [
        (0, RollStep.INSTALL),
        (0, RollStep.TRUST),
        (0, RollStep.RETIRE),
        (1, RollStep.VERIFY),
        (2, RollStep.REISSUE),
        (3, RollStep.PREPARE),
    ],
)
def test_a_step_out_of_order_is_refused_and_changes_nothing(
    roll_stack: Stack, done: int, step: RollStep
) -> None:
    roll = roll_stack.services.ca_roll
    steps = [roll.prepare, roll.install, roll.verify]
    for run in steps[:done]:
        run(ACTOR)
    before = roll.status()
    with pytest.raises(CaRollStepError) as caught:
        roll.run(step, ACTOR)
    assert caught.value.code == "ca_roll_out_of_order"
    assert caught.value.step is step
    after = roll.status()
    assert after.state is before.state
    assert after.etag == before.etag


def test_compromise_mode_revokes_the_old_ca_in_the_root_crl(roll_stack: Stack) -> None:
    stack = roll_stack
    sim = provision(stack, 4)
    ids = sorted(sim.agents)
    roll = stack.services.ca_roll
    old_issuing = stack.services.authority.certificate
    old_serials = {d: sim.agents[d].certificate.serial_number for d in ids}
    roll_to_trusted(roll, RollMode.COMPROMISE)
    group = stack.emulator.dps.get_group(sim.group_id)
    assert group.secondary is None  # the old CA left the group at once
    record = roll.status()
    assert group.primary is not None
    roll.reissue(ACTOR)
    drain_queue(stack, sim, ids)
    retired = roll.retire(ACTOR)
    assert retired.record.old.status is CaStatus.REVOKED
    root_crl = x509.load_der_x509_crl(stack.services.crl_publisher.fetch(ROOT_CRL_NAME))
    root = stack.services.authority.root
    assert root is not None
    assert root_crl.is_signature_valid(root.public_key())  # type: ignore[arg-type]
    entry = root_crl.get_revoked_certificate_by_serial_number(old_issuing.serial_number)
    assert entry is not None
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason is x509.ReasonFlags.ca_compromise
    # the devices' old certificates are revoked (compromise) and listed in the old CA's CRL
    final = x509.load_der_x509_crl(stack.services.crl_publisher.fetch(record.old.crl_name))
    for device_id in ids:
        old = [
            r
            for r in stack.services.ledger.list_for_device(device_id)
            if int(r.serial, 16) == old_serials[device_id]
        ]
        assert old
        assert old[0].status is CertificateStatus.REVOKED
        assert old[0].revocation_reason is RevocationReason.KEY_COMPROMISE
        assert final.get_revoked_certificate_by_serial_number(old_serials[device_id]) is not None


def test_a_second_roll_retires_the_first_new_ca_from_dps_and_the_hub(roll_stack: Stack) -> None:
    stack = roll_stack
    sim = provision(stack, 3)
    ids = sorted(sim.agents)
    roll = stack.services.ca_roll
    for _generation in (2, 3):
        roll_to_trusted(roll)
        roll.reissue(ACTOR)
        drain_queue(stack, sim, ids)
        roll.retire(ACTOR)
    record = roll.status()
    assert [ca.status for ca in record.cas] == [
        CaStatus.RETIRED,
        CaStatus.RETIRED,
        CaStatus.ACTIVE,
    ]
    assert record.rolls_completed == 2
    second = record.entry("issuing-2")
    for certs in (stack.emulator.dps_certificates, stack.emulator.hub_certificates):
        with pytest.raises(NotFoundError):
            certs.get(second.service_name)
        assert certs.get(record.entry("issuing-3").service_name).verified
    third_pem = record.entry("issuing-3").certificate_pem or ""
    third = x509.load_pem_x509_certificate(third_pem.encode())
    for device_id in ids:
        assert chain_issuer(sim, device_id) == third


def test_a_device_that_reports_no_certificate_still_blocks_retire(roll_stack: Stack) -> None:
    stack = roll_stack
    sim = provision(stack, 3)
    quiet = sorted(sim.agents)[0]
    stack.emulator.session(quiet).report({"x509": None})  # type: ignore[union-attr]
    roll = stack.services.ca_roll
    roll_to_trusted(roll)
    roll.reissue(ACTOR)
    assert quiet in roll.remaining()
    with pytest.raises(CaRollIncompleteError) as err:
        roll.retire(ACTOR)
    assert quiet in err.value.sample
    forced = roll.retire(ACTOR, force=True)
    assert forced.detail["remaining"] >= 1


def test_during_the_overlap_each_ca_publishes_its_own_crl(roll_stack: Stack) -> None:
    stack = roll_stack
    sim = provision(stack, 2)
    old_device, other = sorted(sim.agents)
    old_serial = sim.agents[old_device].certificate.serial_number
    old_issuing = stack.services.authority.certificate
    roll = stack.services.ca_roll
    roll_to_trusted(roll)
    record = roll.status()
    issuer = stack.services.issuer
    issuer.revoke(format(old_serial, "x"), RevocationReason.KEY_COMPROMISE, ACTOR)
    issuer.publish_crl()
    publisher = stack.services.crl_publisher
    old_crl = x509.load_der_x509_crl(publisher.fetch(record.old.crl_name))
    new_crl = x509.load_der_x509_crl(publisher.fetch(record.new.crl_name))
    new_cert = x509.load_pem_x509_certificate((record.new.certificate_pem or "").encode())
    assert old_crl.is_signature_valid(old_issuing.public_key())  # type: ignore[arg-type]
    assert new_crl.is_signature_valid(new_cert.public_key())  # type: ignore[arg-type]
    assert old_crl.get_revoked_certificate_by_serial_number(old_serial) is not None
    assert new_crl.get_revoked_certificate_by_serial_number(old_serial) is None
    # leaves of the new CA point at the new CA's CRL
    roll.reissue(ACTOR)
    drain_queue(stack, sim, [old_device, other])
    leaf = sim.agents[other].certificate
    points = leaf.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    uri = points[0].full_name[0].value  # type: ignore[index]
    assert uri == publisher.url_for(record.new.crl_name)

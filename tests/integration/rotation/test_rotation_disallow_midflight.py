"""Disallow while a rotation is in flight: DPS, hub, ledger and the published CRL all say
no, the device can neither register nor connect, and a repeat changes nothing."""

from __future__ import annotations

import urllib.request
from typing import Any

import pytest
from cryptography import x509

from local.device import contract
from local.emulator import HubConnectError, RegistrationError
from shared.domain.commands import Disallow, StartRenewal
from shared.domain.model import (
    CertificateStatus,
    DeviceStatus,
    ProvisioningStatus,
    RevocationReason,
    RotationState,
    Trigger,
)
from tests.integration.rotation.stack import Stack

pytestmark = pytest.mark.azurite


class _NoHandler:
    def on_desired(self, patch: dict[str, Any], version: int) -> None:
        raise AssertionError("a refused connection gets no twin updates")

    def on_method(self, name: str, payload: Any) -> tuple[int, Any]:
        raise AssertionError("a refused connection gets no method calls")


def _fetch(url: str) -> bytes:
    assert url.startswith("http://127.0.0.1:10000/")
    with urllib.request.urlopen(url, timeout=10) as response:  # anonymous blob read
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/pkix-crl"
        body: bytes = response.read()
        return body


@pytest.mark.parametrize("membership", ["individual", "group"])
def test_disallow_mid_rotation_blocks_everywhere(stack: Stack, membership: str) -> None:
    sim = stack.simulator(1, group_fraction=1.0 if membership == "group" else 0.0)
    assert sim.start() == 1
    stack.run(sim, stack.all_idle(sim.device_ids))
    device_id = sim.device_ids[0]
    agent = sim.agents[device_id]
    old_chain = agent.chain
    stack.clock.advance(3600)

    started = stack.service.start_renewal(StartRenewal(device_id, Trigger.MANUAL, "cli:test"))
    request_id = started.request_id
    assert request_id is not None
    stack.run(
        sim,
        lambda: (
            stack.record(device_id).state
            in (RotationState.DELIVERED, RotationState.REPROVISION_SENT)
        ),
    )
    mid = stack.record(device_id)
    assert mid.new_serial is not None
    assert agent.renewal_outcome(request_id) is None  # not installed yet
    issuing = stack.services.authority.certificate
    new_leaf = x509.load_pem_x509_certificate(
        stack.services.ledger.get(mid.new_serial).pem.encode()
    )
    new_chain = [new_leaf, issuing]
    serials = {mid.current_serial, mid.new_serial}
    assert None not in serials
    group_before = (
        stack.services.enrollments.get_group(sim.group_id) if membership == "group" else None
    )

    result = stack.service.disallow(Disallow(device_id, "device reported stolen", "operator:alice"))

    assert result.changed
    assert result.cancelled_request_id == request_id
    assert set(result.revoked) == serials
    assert result.hub_identity == "disabled"
    # DPS
    enr = stack.services.enrollments.get_individual(device_id)
    assert enr.provisioning_status is ProvisioningStatus.DISABLED
    held = {s.thumbprint_sha256 for s in (enr.primary, enr.secondary) if s is not None}
    if membership == "individual":
        assert result.enrollment == "disabled"
    else:
        assert result.enrollment == "created_disabled"
        assert held == {contract.thumbprint(old_chain[0]), contract.thumbprint(new_leaf)}
        group_after = stack.services.enrollments.get_group(sim.group_id)
        assert group_before is not None
        assert group_after.etag == group_before.etag
    # hub
    ident = stack.services.registry.get_device(device_id)
    assert ident.status is DeviceStatus.DISABLED
    # ledger and record
    for serial in serials:
        record = stack.services.ledger.get(serial or "")
        assert record.status is CertificateStatus.REVOKED
        assert record.revocation_reason is RevocationReason.KEY_COMPROMISE
    rec = stack.record(device_id)
    assert rec.state is RotationState.DISALLOWED
    assert rec.last_error is None
    assert rec.disallowed_by == "operator:alice"
    # the CRL, read where the certificates' distribution point says
    assert result.crl_url is not None
    cdp = new_leaf.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert [n.value for n in cdp[0].full_name or []] == [result.crl_url]
    crl = x509.load_der_x509_crl(_fetch(result.crl_url))
    assert crl.is_signature_valid(issuing.public_key())  # type: ignore[arg-type]
    listed = {format(r.serial_number, "x"): r for r in crl}
    assert serials <= set(listed)
    for serial in serials:
        reason = listed[serial or ""].extensions.get_extension_for_class(x509.CRLReason)
        assert reason.value.reason is x509.ReasonFlags.key_compromise
    disallowed_events = [e for e in stack.sink.events if e.event_type == "DeviceDisallowed"]
    assert len(disallowed_events) == 1

    # the device tries to come back: refused
    for _ in range(20):
        sim.step_all()
        stack.pump()
        stack.clock.advance(120)
    assert not agent.connected
    # the hub closed its link before it could install: nothing was installed
    assert agent.renewal_outcome(request_id) is None
    assert contract.thumbprint(agent.certificate) == contract.thumbprint(old_chain[0])
    assert agent.timeline.last_connect_failure == 403012
    for chain in (old_chain, new_chain):
        with pytest.raises(RegistrationError) as refused:
            stack.emulator.register(device_id, chain)
        assert refused.value.status == 403
        with pytest.raises(HubConnectError) as closed:
            stack.emulator.connect(device_id, chain, _NoHandler())
        assert closed.value.code == 403012
    stack.pump()
    # 403012s reach certroll as audit-only records; nothing changes
    noop = [
        e
        for e in stack.services.audit.list(device_id, 200)
        if e.action == "reconcile" and e.detail.get("result") == "disabled_device"
    ]
    assert noop
    assert {e.outcome for e in noop} == {"noop"}
    assert stack.record(device_id).state is RotationState.DISALLOWED

    # a repeat is a no-op
    enr_etag = stack.services.enrollments.get_individual(device_id).etag
    ident_etag = stack.services.registry.get_device(device_id).etag
    rec_etag = stack.record(device_id).etag
    again = stack.service.disallow(Disallow(device_id, "device reported stolen", "operator:alice"))
    assert not again.changed
    assert again.revoked == ()
    assert stack.services.enrollments.get_individual(device_id).etag == enr_etag
    assert stack.services.registry.get_device(device_id).etag == ident_etag
    assert stack.record(device_id).etag == rec_etag
    assert len([e for e in stack.sink.events if e.event_type == "DeviceDisallowed"]) == 1
    latest = stack.services.audit.list(device_id, 1)[0]
    assert (latest.action, latest.outcome) == ("disallow", "noop")

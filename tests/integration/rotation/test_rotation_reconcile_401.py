"""The 401 path: the hub's Connections log, parsed as the function parses it, reconciles a
device that already uses a certificate certroll issued; an unknown one gets an audit only."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from local.device import contract
from shared.domain.model import CertificateStatus
from tests.integration.rotation.stack import (
    Stack,
    install_out_of_band,
    new_credentials,
)

pytestmark = pytest.mark.azurite


def _slots(stack: Stack, device_id: str) -> tuple[str | None, str | None]:
    enr = stack.services.enrollments.get_individual(device_id)
    return (
        enr.primary.thumbprint_sha256 if enr.primary else None,
        enr.secondary.thumbprint_sha256 if enr.secondary else None,
    )


def _reconciles(stack: Stack, device_id: str) -> list[dict[str, object]]:
    return [
        {"outcome": e.outcome, **e.detail}
        for e in reversed(stack.services.audit.list(device_id, 100))
        if e.action == "reconcile"
    ]


@pytest.mark.parametrize("routing", ["at_once", "after_backoff"])
def test_device_that_already_rolled_gets_back_in(stack: Stack, routing: str) -> None:
    sim = stack.simulator(1)
    assert sim.start() == 1
    stack.run(sim, stack.all_idle(sim.device_ids))
    device_id = sim.device_ids[0]
    agent = sim.agents[device_id]
    old_thumb = contract.thumbprint(agent.certificate)
    assert _slots(stack, device_id) == (old_thumb, None)
    stack.clock.advance(3600)

    # certroll issued a certificate the device installed, but neither DPS nor the hub
    # holds it (the enrollment step never ran)
    key, chain = new_credentials(stack, device_id, "reflash-1")
    new_thumb = contract.thumbprint(chain[0])
    issued = stack.services.ledger.find_by_thumbprint(new_thumb)
    assert issued is not None
    assert issued.status is CertificateStatus.ISSUED
    agent.go_offline()
    install_out_of_band(agent, key, chain)
    if routing == "at_once":
        stack.route_connections_at_once()
    registrations = agent.timeline.registrations
    agent.go_online()
    stack.run(sim, lambda: agent.connected, idle_step=10)

    # one 401003 went through the Connections-log parsing into on_connection_failure
    assert [(f.device_id, f.code, f.thumbprint) for f in stack.failures_seen] == [
        (device_id, 401003, new_thumb)
    ]
    assert stack.routing_errors == []
    assert _reconciles(stack, device_id) == [
        {
            "outcome": "ok",
            "result": "reconciled",
            "serial": issued.serial,
            "changed": ["enrollment.secondary", "hub_identity"],
        }
    ]
    # the enrollment keeps the certificate the device may still fall back to
    assert _slots(stack, device_id) == (old_thumb, new_thumb)
    assert agent.timeline.self_reprovisions == 1
    assert contract.thumbprint(agent.certificate) == new_thumb
    ident = stack.services.registry.get_device(device_id)
    if routing == "at_once":
        # the device's own reprovision (DPS with the new certificate) succeeded at once
        assert agent.timeline.registrations == registrations + 1
        assert (ident.primary_thumbprint, ident.secondary_thumbprint) == (new_thumb, None)
    else:
        # its own reprovision was refused before the reconcile; the retry got in
        assert agent.timeline.registrations == registrations
        assert agent.timeline.connect_failures == 1
        assert {ident.primary_thumbprint, ident.secondary_thumbprint} == {old_thumb, new_thumb}
        # and a reprovision through DPS with it now works too
        result = stack.emulator.hub.invoke_method(device_id, "reprovision", {"requestId": "r1"})
        assert result.status == 200
        stack.run(sim, lambda: agent.timeline.registrations == registrations + 1)
        assert agent.connected
    # the device reported its certificate; certroll now tracks it as current
    stack.pump()
    rec = stack.record(device_id)
    assert rec.current_thumbprint == new_thumb
    assert stack.services.ledger.get(issued.serial).status is CertificateStatus.ACTIVE
    # a repeated 401 within the interval is not reconciled twice
    assert len(_reconciles(stack, device_id)) == 1


def _self_signed(
    device_id: str, now: datetime
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def test_unknown_certificate_gets_only_an_audit_record(stack: Stack) -> None:
    sim = stack.simulator(1)
    assert sim.start() == 1
    stack.run(sim, stack.all_idle(sim.device_ids))
    device_id = sim.device_ids[0]
    agent = sim.agents[device_id]
    old_thumb = contract.thumbprint(agent.certificate)
    enr_before = stack.services.enrollments.get_individual(device_id)
    ident_before = stack.services.registry.get_device(device_id)
    rec_before = stack.record(device_id)
    ledger_before = stack.services.ledger.list_for_device(device_id)
    events_before = len(stack.sink.events)
    stack.clock.advance(3600)

    key, cert = _self_signed(device_id, stack.clock.now())
    agent.go_offline()
    install_out_of_band(agent, key, [cert])
    agent.go_online()
    stack.run(
        sim, lambda: bool(stack.failures_seen) and not stack.emulator.events.pending("connections")
    )
    stack.pump()

    presented = contract.thumbprint(cert)
    assert [(f.code, f.thumbprint) for f in stack.failures_seen] == [(401003, presented)]
    assert _reconciles(stack, device_id) == [
        {
            "outcome": "rejected",
            "result": "unknown_certificate",
            "code": 401003,
            "thumbprint": presented,
        }
    ]
    assert not agent.connected
    enr_after = stack.services.enrollments.get_individual(device_id)
    assert enr_after.etag == enr_before.etag
    assert _slots(stack, device_id) == (old_thumb, None)
    ident_after = stack.services.registry.get_device(device_id)
    assert ident_after.etag == ident_before.etag
    assert (ident_after.primary_thumbprint, ident_after.secondary_thumbprint) == (old_thumb, None)
    rec_after = stack.record(device_id)
    assert rec_after.etag == rec_before.etag
    assert stack.services.ledger.list_for_device(device_id) == ledger_before
    assert len(stack.sink.events) == events_before

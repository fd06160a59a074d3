"""The 401 path end to end: the hub's Connections log (only the fields Microsoft documents:
the device id and the result), parsed as the function parses it, makes the enrollment and
hub identity hold the certificates the device may use -- and never a retired one."""

from __future__ import annotations

import dataclasses
import json

import azure.functions as func
import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from functions.hub_events import handle_connection_logs
from local.device import contract
from shared.domain.commands import StartRenewal
from shared.domain.model import CertificateSlot, CertificateStatus, Trigger
from tests.integration.rotation.stack import Stack, install_out_of_band
from tests.support.connections_log import connect_error

pytestmark = pytest.mark.azurite


def _slots(stack: Stack, device_id: str) -> tuple[str | None, str | None]:
    enr = stack.services.enrollments.get_individual(device_id)
    return (
        enr.primary.thumbprint_sha256 if enr.primary else None,
        enr.secondary.thumbprint_sha256 if enr.secondary else None,
    )


def _hub(stack: Stack, device_id: str) -> set[str]:
    ident = stack.services.registry.get_device(device_id)
    return {t.lower() for t in (ident.primary_thumbprint, ident.secondary_thumbprint) if t}


def _reconciles(stack: Stack, device_id: str | None) -> list[dict[str, object]]:
    return [
        {"outcome": e.outcome, **e.detail}
        for e in reversed(stack.services.audit.list(device_id, 100))
        if e.action == "reconcile"
    ]


@pytest.mark.parametrize("routing", ["at_once", "after_backoff"])
def test_a_restored_enrollment_gets_the_current_certificate_back(
    stack: Stack, routing: str
) -> None:
    """An operator restored the enrollment and hub identity from before the rotation: the
    device, on its new certificate, is refused (401003); the reconcile puts its current
    certificate back and takes the superseded one out; the device gets back in."""
    sim = stack.simulator(1)
    assert sim.start() == 1
    stack.run(sim, stack.all_idle(sim.device_ids))
    device_id = sim.device_ids[0]
    agent = sim.agents[device_id]
    old = contract.thumbprint(agent.certificate)
    old_pem = agent.certificate.public_bytes(Encoding.PEM).decode()
    stack.clock.advance(3600)
    stack.service.start_renewal(StartRenewal(device_id, Trigger.MANUAL, "cli:test"))
    stack.run(sim, stack.all_idle([device_id]))
    new = contract.thumbprint(agent.certificate)
    assert new != old
    current = stack.record(device_id).current_serial

    enr = stack.services.enrollments.get_individual(device_id)
    stack.services.enrollments.put_individual(
        dataclasses.replace(
            enr,
            primary=CertificateSlot(thumbprint_sha256=old, pem=old_pem),
            secondary=None,
        )
    )
    ident = stack.services.registry.get_device(device_id)
    stack.services.registry.update_device(
        dataclasses.replace(ident, primary_thumbprint=old, secondary_thumbprint=None)
    )
    if routing == "at_once":
        stack.route_connections_at_once()
    agent.go_offline()
    agent.go_online()
    stack.run(sim, lambda: agent.connected, idle_step=10)

    assert [(f.device_id, f.code) for f in stack.failures_seen] == [(device_id, 401003)]
    assert stack.routing_errors == []
    [done] = _reconciles(stack, device_id)
    assert done["outcome"] == "ok"
    assert done["result"] == "reconciled"
    assert done["serials"] == [current]
    assert _slots(stack, device_id) == (new, None)
    assert _hub(stack, device_id) == {new}
    assert contract.thumbprint(agent.certificate) == new
    assert agent.connected


def test_a_superseded_certificate_does_not_get_back_in(stack: Stack) -> None:
    """After a normal rotation, a connect with the old key and certificate is refused
    (401003); the reconcile does not put the old thumbprint back, and the second try is
    refused too."""
    sim = stack.simulator(1)
    assert sim.start() == 1
    stack.run(sim, stack.all_idle(sim.device_ids))
    device_id = sim.device_ids[0]
    agent = sim.agents[device_id]
    old_key, old_chain = agent._key, agent.chain
    old = contract.thumbprint(old_chain[0])
    stack.clock.advance(3600)
    stack.service.start_renewal(StartRenewal(device_id, Trigger.MANUAL, "cli:test"))
    stack.run(sim, stack.all_idle([device_id]))
    new = contract.thumbprint(agent.certificate)
    statuses = {c.thumbprint_sha256: c.status for c in stack.services.ledger.list_for_device(
        device_id
    )}
    assert statuses[old] is CertificateStatus.SUPERSEDED

    stack.route_connections_at_once()
    agent.go_offline()
    install_out_of_band(agent, old_key, old_chain)
    agent.go_online()
    stack.run(sim, lambda: len(stack.failures_seen) >= 2, idle_step=10)
    stack.pump()

    assert not agent.connected
    assert {f.code for f in stack.failures_seen} == {401003}
    assert {r["result"] for r in _reconciles(stack, device_id)} <= {"already_consistent"}
    assert old not in _slots(stack, device_id)
    assert _hub(stack, device_id) == {new}


def test_a_flood_for_invented_device_ids_writes_one_audit_row(stack: Stack) -> None:
    """One Connections event with thousands of documented 401003 records for device ids
    certroll never saw, through the trigger's handler: one audit entry, nothing else."""
    before = len(stack.services.audit.list(None, 10_000))
    records = [connect_error(f"invented-{i}") for i in range(2000)]
    event = func.EventHubEvent(body=json.dumps({"records": records}).encode())
    assert handle_connection_logs([event], stack.service) == 2000
    after = stack.services.audit.list(None, 10_000)
    assert len(after) == before + 1
    [entry] = _reconciles(stack, None)
    assert entry["result"] == "unknown_device"
    assert entry["count"] == 2000

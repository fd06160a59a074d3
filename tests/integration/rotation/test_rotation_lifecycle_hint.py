"""With DeviceConnected published as IoT Hub publishes it (late, periodic, only for devices
that subscribed to C2D or sent telemetry), a fleet still rotates: no step waits on it."""

from __future__ import annotations

import pytest

from local.device import contract
from shared.domain.commands import StartRenewal
from shared.domain.model import Trigger
from tests.integration.rotation.stack import Stack, StackOptions

pytestmark = pytest.mark.azurite


@pytest.fixture
def stack_options() -> StackOptions:
    return StackOptions(fleet="inproc", connection_events="snapshot")


def test_a_fleet_rotates_with_snapshot_connection_events(stack: Stack) -> None:
    sim = stack.simulator(3)
    assert sim.start() == 3
    stack.run(sim, stack.all_idle(sim.device_ids))
    before = {d: contract.thumbprint(a.certificate) for d, a in sim.agents.items()}
    stack.clock.advance(3600)
    for device_id in sim.device_ids:
        stack.service.start_renewal(StartRenewal(device_id, Trigger.MANUAL, "cli:test"))
    stack.run(sim, stack.all_idle(sim.device_ids))
    for device_id, agent in sim.agents.items():
        now = contract.thumbprint(agent.certificate)
        assert now != before[device_id]
        assert stack.record(device_id).current_thumbprint == now

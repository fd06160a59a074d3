"""The simulated fleet every local run starts with: devices enrolled through the
emulator, each with a first certificate the stack's issuer signs (ledger trigger
``provision``), all connected before the run goes on. Used by the demo, the CA-roll
demo and the soak."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from local.device.simulator import FleetSimulator
from shared.domain.errors import CertrollError

#: ledger trigger of the certificates the fleet starts with
PROVISION_TRIGGER = "provision"


def provision_fleet(
    stack: Any,
    *,
    devices: int,
    group_fraction: float,
    seed: int,
    actor: str,
    max_rounds: int,
    drain: Callable[[Any, FleetSimulator], Any],
) -> FleetSimulator:
    """``devices`` agents (ids ``dev-…``) provisioned and connected; CertrollError when
    any did not connect within ``max_rounds``."""
    services = stack.services
    authority = services.authority
    issuer = services.issuer

    def issue_initial(device_id: str, csr_pem: str) -> str:
        issued = issuer.issue(
            device_id,
            csr_pem,
            request_id=str(uuid.uuid4()),
            trigger=PROVISION_TRIGGER,
            actor=actor,
        )
        return str(issued.chain_pem)

    sim = FleetSimulator(
        stack.emulator,
        issue_initial,
        devices,
        group_fraction=group_fraction,
        seed=seed,
        trust_anchor=authority.root or authority.chain[-1],
        id_prefix="dev-",
    )
    connected = sim.start(wait=True, max_rounds=max_rounds)
    drain(stack, sim)
    if connected != devices:
        raise CertrollError(f"only {connected} of {devices} devices connected")
    return sim

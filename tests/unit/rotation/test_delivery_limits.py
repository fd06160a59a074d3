"""What certroll writes into the desired twin fits IoT Hub's limits: the chain is a list
of PEM certificates, each a string well under 4 KB, and the section under 32 KB."""

from __future__ import annotations

import json

from cryptography import x509

from shared.domain.commands import StartRenewal, TwinReported
from shared.domain.model import Trigger
from tests.unit.rotation.fakes import World


def test_the_delivered_chain_is_a_list_of_pems_within_the_twin_limits(world: World) -> None:
    dev = world.add_device("dev-1")
    svc = world.service()
    svc.on_twin_reported(TwinReported.parse("dev-1", dev.section()))
    svc.start_renewal(StartRenewal("dev-1", Trigger.MANUAL, "op"))
    answer = dev.answer()
    assert answer is not None
    svc.on_twin_reported(TwinReported.parse("dev-1", answer))
    desired = dev.twin.desired["x509"]
    chain = desired["issued"]["certificate"]
    assert isinstance(chain, list)
    assert len(chain) >= 2  # the leaf, then the issuing CA
    for pem in chain:
        assert len(pem.encode()) <= 4096
        assert len(x509.load_pem_x509_certificates(pem.encode())) == 1
    assert x509.load_pem_x509_certificate(chain[0].encode()) == dev.delivered()
    assert len(json.dumps(dev.twin.desired, separators=(",", ":"))) <= 32 * 1024

"""Storage comes as one bundle, built only by the bootstrap."""

from __future__ import annotations

from shared.adapters.memory import MemoryLedger, MemoryWorkQueue
from shared.bootstrap import Services, StorageBundle, memory_storage
from shared.settings import Settings


def test_memory_setting_builds_the_memory_bundle() -> None:
    services = Services(Settings.from_env({"CERTROLL_STORAGE": "memory"}))
    assert isinstance(services.storage, StorageBundle)
    assert isinstance(services.ledger, MemoryLedger)
    assert isinstance(services.queue, MemoryWorkQueue)
    assert services.ledger is services.storage.ledger


def test_a_bundle_passed_in_serves_every_storage_port() -> None:
    bundle = memory_storage()
    services = Services(Settings.from_env({"CERTROLL_STORAGE": "unused"}), storage=bundle)
    assert (
        services.ledger,
        services.state,
        services.audit,
        services.crl_publisher,
        services.queue,
    ) == (bundle.ledger, bundle.state, bundle.audit, bundle.crl_publisher, bundle.queue)


def test_a_single_port_can_still_be_replaced() -> None:
    ledger = MemoryLedger()
    services = Services(Settings.from_env({"CERTROLL_STORAGE": "memory"}), ledger=ledger)
    assert services.ledger is ledger
    assert services.state is services.storage.state

"""Fixtures that yield every implementation of each storage port.

Each fixture is parametrized: ``memory`` (the in-memory fake) and ``azurite`` (the Azure
adapter against Azurite on loopback, marked ``azurite``). Azurite resources get unique
names per test and are deleted afterwards, so parallel runs do not collide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueServiceClient

from shared.adapters.blob import BlobCrlPublisher
from shared.adapters.campaigns import TableCampaignStore
from shared.adapters.memory import (
    MemoryAuditLog,
    MemoryCampaignStore,
    MemoryCrlPublisher,
    MemoryLedger,
    MemoryRotationStore,
    MemoryWorkQueue,
)
from shared.adapters.queues import StorageWorkQueue
from shared.adapters.tables import TableAuditLog, TableLedger, TableRotationStore
from shared.ports import (
    AuditLog,
    CampaignStore,
    CertificateLedger,
    CrlPublisher,
    RotationStateStore,
    WorkQueue,
)

IMPLEMENTATIONS = [
    pytest.param("memory", id="memory"),
    pytest.param("azurite", id="azurite", marks=pytest.mark.azurite),
]


@pytest.fixture(params=IMPLEMENTATIONS)
def ledger(request: pytest.FixtureRequest) -> Iterator[CertificateLedger]:
    if request.param == "memory":
        yield MemoryLedger()
        return
    service: TableServiceClient = request.getfixturevalue("tables")
    yield TableLedger(service, request.getfixturevalue("table_name"))


@pytest.fixture(params=IMPLEMENTATIONS)
def state_store(request: pytest.FixtureRequest) -> Iterator[RotationStateStore]:
    if request.param == "memory":
        yield MemoryRotationStore()
        return
    service: TableServiceClient = request.getfixturevalue("tables")
    yield TableRotationStore(service, request.getfixturevalue("table_name"))


@pytest.fixture(params=IMPLEMENTATIONS)
def audit_log(request: pytest.FixtureRequest) -> Iterator[AuditLog]:
    if request.param == "memory":
        yield MemoryAuditLog()
        return
    service: TableServiceClient = request.getfixturevalue("tables")
    yield TableAuditLog(service, request.getfixturevalue("table_name"))


@pytest.fixture(params=IMPLEMENTATIONS)
def publisher(request: pytest.FixtureRequest) -> CrlPublisher:
    if request.param == "memory":
        return MemoryCrlPublisher()
    service: BlobServiceClient = request.getfixturevalue("blobs")
    return BlobCrlPublisher(service, request.getfixturevalue("container_name"))


@pytest.fixture(params=IMPLEMENTATIONS)
def work_queue(request: pytest.FixtureRequest) -> WorkQueue:
    if request.param == "memory":
        return MemoryWorkQueue()
    service: QueueServiceClient = request.getfixturevalue("queues")
    return StorageWorkQueue(service, request.getfixturevalue("queue_name"))


@pytest.fixture(params=IMPLEMENTATIONS)
def campaign_store_factory(request: pytest.FixtureRequest) -> Iterator[Callable[[], CampaignStore]]:
    """Makes store instances over one backing store (a new instance = a restarted process)."""
    if request.param == "memory":
        backing = MemoryCampaignStore()
        yield lambda: MemoryCampaignStore(backing.records, backing.devices)
        return
    service: TableServiceClient = request.getfixturevalue("tables")
    name: str = request.getfixturevalue("table_name")
    yield lambda: TableCampaignStore(service, name)


@pytest.fixture
def campaign_store(campaign_store_factory: Callable[[], CampaignStore]) -> CampaignStore:
    return campaign_store_factory()

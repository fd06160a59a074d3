"""Fixtures that yield every implementation of each storage port.

Each fixture is parametrized: ``memory`` (the in-memory fake) and ``azurite`` (the Azure
adapter against Azurite on loopback, marked ``azurite``). Azurite resources get unique
names per test and are deleted afterwards, so parallel runs do not collide.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Iterator

import pytest
from azure.core.exceptions import ResourceNotFoundError
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
from shared.adapters.queues import StorageWorkQueue, poison_queue_name
from shared.adapters.tables import TableAuditLog, TableLedger, TableRotationStore
from shared.ports import (
    AuditLog,
    CampaignStore,
    CertificateLedger,
    CrlPublisher,
    RotationStateStore,
    WorkQueue,
)
from shared.settings import AZURITE_CONNECTION_STRING

IMPLEMENTATIONS = [
    pytest.param("memory", id="memory"),
    pytest.param("azurite", id="azurite", marks=pytest.mark.azurite),
]


def azurite_reachable() -> bool:
    for port in (10000, 10001, 10002):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                pass
        except OSError:
            return False
    return True


@pytest.fixture(scope="session")
def azurite() -> str:
    """Azurite's connection string; fails clearly when Azurite is not running."""
    if not azurite_reachable():
        pytest.fail("Azurite is not reachable on 127.0.0.1:10000-10002: run `make azurite`")
    return AZURITE_CONNECTION_STRING


def unique_name(kind: str) -> str:
    """A fresh resource name valid for tables (alphanumeric) and queues/containers."""
    return f"ct{kind}{uuid.uuid4().hex[:16]}"


@pytest.fixture
def table_service(azurite: str) -> TableServiceClient:
    return TableServiceClient.from_connection_string(azurite)


@pytest.fixture
def fresh_table(table_service: TableServiceClient) -> Iterator[str]:
    name = unique_name("t")
    yield name
    table_service.delete_table(name)
    table_service.delete_table(f"{name}Index")  # a ledger's look-ups (no error when absent)


@pytest.fixture(params=IMPLEMENTATIONS)
def ledger(request: pytest.FixtureRequest) -> Iterator[CertificateLedger]:
    if request.param == "memory":
        yield MemoryLedger()
        return
    service: TableServiceClient = request.getfixturevalue("table_service")
    yield TableLedger(service, request.getfixturevalue("fresh_table"))


@pytest.fixture(params=IMPLEMENTATIONS)
def state_store(request: pytest.FixtureRequest) -> Iterator[RotationStateStore]:
    if request.param == "memory":
        yield MemoryRotationStore()
        return
    service: TableServiceClient = request.getfixturevalue("table_service")
    yield TableRotationStore(service, request.getfixturevalue("fresh_table"))


@pytest.fixture(params=IMPLEMENTATIONS)
def audit_log(request: pytest.FixtureRequest) -> Iterator[AuditLog]:
    if request.param == "memory":
        yield MemoryAuditLog()
        return
    service: TableServiceClient = request.getfixturevalue("table_service")
    yield TableAuditLog(service, request.getfixturevalue("fresh_table"))


@pytest.fixture(params=IMPLEMENTATIONS)
def publisher(request: pytest.FixtureRequest) -> Iterator[CrlPublisher]:
    if request.param == "memory":
        yield MemoryCrlPublisher()
        return
    service = BlobServiceClient.from_connection_string(request.getfixturevalue("azurite"))
    name = unique_name("c")
    yield BlobCrlPublisher(service, name)
    try:
        service.delete_container(name)
    except ResourceNotFoundError:
        pass


@pytest.fixture(params=IMPLEMENTATIONS)
def work_queue(request: pytest.FixtureRequest) -> Iterator[WorkQueue]:
    if request.param == "memory":
        yield MemoryWorkQueue()
        return
    service = QueueServiceClient.from_connection_string(request.getfixturevalue("azurite"))
    name = unique_name("q")
    yield StorageWorkQueue(service, name)
    for queue in (name, poison_queue_name(name)):
        try:
            service.delete_queue(queue)
        except ResourceNotFoundError:
            pass


@pytest.fixture(params=IMPLEMENTATIONS)
def campaign_store_factory(request: pytest.FixtureRequest) -> Iterator[Callable[[], CampaignStore]]:
    """Makes store instances over one backing store (a new instance = a restarted process)."""
    if request.param == "memory":
        records = MemoryCampaignStore().records
        yield lambda: MemoryCampaignStore(records)
        return
    connection: str = request.getfixturevalue("azurite")
    name: str = request.getfixturevalue("fresh_table")
    yield lambda: TableCampaignStore(TableServiceClient.from_connection_string(connection), name)


@pytest.fixture
def campaign_store(campaign_store_factory: Callable[[], CampaignStore]) -> CampaignStore:
    return campaign_store_factory()

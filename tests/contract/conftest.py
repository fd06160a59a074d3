"""Fixtures that yield every implementation of each storage port.

Each fixture is parametrized: ``memory`` (the in-memory fake) and ``azurite`` (the Azure
adapter against Azurite on loopback, marked ``azurite``). Azurite resources get unique
names per test and are deleted afterwards, so parallel runs do not collide.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueServiceClient

from shared.adapters.blob import BlobCrlPublisher
from shared.adapters.memory import (
    MemoryAuditLog,
    MemoryCrlPublisher,
    MemoryLedger,
    MemoryRotationStore,
    MemoryWorkQueue,
)
from shared.adapters.queues import StorageWorkQueue, poison_queue_name
from shared.adapters.tables import TableAuditLog, TableLedger, TableRotationStore
from shared.ports import AuditLog, CertificateLedger, CrlPublisher, RotationStateStore, WorkQueue
from tests.support.azurite import unique_name

IMPLEMENTATIONS = [
    pytest.param("memory", id="memory"),
    pytest.param("azurite", id="azurite", marks=pytest.mark.azurite),
]


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

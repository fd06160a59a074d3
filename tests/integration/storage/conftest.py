"""Azurite fixtures for the storage adapter integration tests (unique names per test)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueServiceClient

from tests.support.azurite import unique_name


def unique(kind: str) -> str:
    return unique_name(kind, prefix="it")


@pytest.fixture
def tables(azurite: str) -> TableServiceClient:
    return TableServiceClient.from_connection_string(azurite)


@pytest.fixture
def table_name(tables: TableServiceClient) -> Iterator[str]:
    name = unique("t")
    yield name
    tables.delete_table(name)
    tables.delete_table(f"{name}Index")  # a ledger's look-ups (no error when absent)


@pytest.fixture
def blobs(azurite: str) -> BlobServiceClient:
    return BlobServiceClient.from_connection_string(azurite)


@pytest.fixture
def container_name(blobs: BlobServiceClient) -> Iterator[str]:
    name = unique("c")
    yield name
    try:
        blobs.delete_container(name)
    except ResourceNotFoundError:
        pass


@pytest.fixture
def queues(azurite: str) -> QueueServiceClient:
    return QueueServiceClient.from_connection_string(azurite)


@pytest.fixture
def queue_name(queues: QueueServiceClient) -> Iterator[str]:
    name = unique("q")
    yield name
    for each in (name, name + "-poison"):
        try:
            queues.delete_queue(each)
        except ResourceNotFoundError:
            pass

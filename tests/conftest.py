"""Fixtures every test folder shares: Azurite, its service clients, and fresh resource
names that are deleted after the test (so parallel runs never meet)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueServiceClient

from tests.support.azurite import require_azurite, unique_name


@pytest.fixture(scope="session")
def azurite() -> str:
    """Azurite's connection string; fails clearly when Azurite is not running."""
    return require_azurite()


@pytest.fixture
def tables(azurite: str) -> TableServiceClient:
    return TableServiceClient.from_connection_string(azurite)


@pytest.fixture
def table_name(tables: TableServiceClient) -> Iterator[str]:
    name = unique_name("t")
    yield name
    tables.delete_table(name)
    tables.delete_table(f"{name}Index")  # a ledger's look-ups (no error when absent)


@pytest.fixture
def blobs(azurite: str) -> BlobServiceClient:
    return BlobServiceClient.from_connection_string(azurite)


@pytest.fixture
def container_name(blobs: BlobServiceClient) -> Iterator[str]:
    name = unique_name("c")
    yield name
    with contextlib.suppress(ResourceNotFoundError):
        blobs.delete_container(name)


@pytest.fixture
def queues(azurite: str) -> QueueServiceClient:
    return QueueServiceClient.from_connection_string(azurite)


@pytest.fixture
def queue_name(queues: QueueServiceClient) -> Iterator[str]:
    name = unique_name("q")
    yield name
    for each in (name, name + "-poison"):
        with contextlib.suppress(ResourceNotFoundError):
            queues.delete_queue(each)

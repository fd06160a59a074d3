"""The local stack's loopback transport against Azurite: every kind of request the
adapters send goes through its short path, and the answers are the SDK's own."""

from __future__ import annotations

from typing import Any

import pytest
import requests
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueServiceClient

from local.stack import STORAGE_CALLS, loopback_transport
from tests.integration.storage.conftest import unique

pytestmark = pytest.mark.azurite


def test_tables_blobs_and_queues_round_trip_without_the_session_merge(
    azurite: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("requests.Session.request's full path was taken")

    monkeypatch.setattr(requests.Session, "merge_environment_settings", refuse)
    before = STORAGE_CALLS.value

    tables = TableServiceClient.from_connection_string(azurite, transport=loopback_transport())
    table = tables.create_table(unique("t"))
    try:
        table.create_entity({"PartitionKey": "p", "RowKey": "r", "name": "gr\u00fc\u00df"})
        with pytest.raises(ResourceExistsError):
            table.create_entity({"PartitionKey": "p", "RowKey": "r"})
        table.submit_transaction(
            [("create", {"PartitionKey": "p", "RowKey": f"t{i}"}) for i in range(3)]
        )
        assert table.get_entity("p", "r")["name"] == "gr\u00fc\u00df"
        assert len(list(table.query_entities("PartitionKey eq 'p'"))) == 4
        with pytest.raises(ResourceNotFoundError):
            table.get_entity("p", "missing")
    finally:
        tables.delete_table(table.table_name)

    blobs = BlobServiceClient.from_connection_string(azurite, transport=loopback_transport())
    container = blobs.create_container(unique("c"))
    try:
        body = bytes(range(256)) * 4096  # 1 MiB, streamed back
        container.upload_blob("crl/issuing.crl", body, overwrite=True)
        assert container.download_blob("crl/issuing.crl").readall() == body
    finally:
        container.delete_container()

    queues = QueueServiceClient.from_connection_string(azurite, transport=loopback_transport())
    queue = queues.create_queue(unique("q"))
    try:
        queue.send_message("work")
        assert [m.content for m in queue.receive_messages()] == ["work"]
    finally:
        queue.delete_queue()

    assert STORAGE_CALLS.value - before >= 15

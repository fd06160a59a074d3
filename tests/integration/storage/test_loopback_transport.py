"""The local stack's storage transport (libcurl) against Azurite: every kind of request
the adapters send goes through it, the SDK's answers and errors are its own, and the
requests/urllib3 path is never taken."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import requests
from azure.core import MatchConditions
from azure.core.exceptions import (
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
)
from azure.data.tables import TableServiceClient, UpdateMode
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueServiceClient

from local.curl_transport import CurlTransport
from local.stack import STORAGE_CALLS, loopback_transport
from shared.settings import AZURITE_CONNECTION_STRING
from tests.support.azurite import unique_name as unique

pytestmark = pytest.mark.azurite


@pytest.fixture(autouse=True)
def _no_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("a request went through requests/urllib3")

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", refuse)


def test_tables_blobs_and_queues_round_trip(azurite: str) -> None:
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
        row = table.get_entity("p", "r")
        assert row["name"] == "gr\u00fc\u00df"
        row["name"] = "changed"
        table.update_entity(
            row,
            mode=UpdateMode.REPLACE,
            etag=row.metadata["etag"],
            match_condition=MatchConditions.IfNotModified,
        )
        with pytest.raises(ResourceModifiedError):  # the old ETag no longer matches
            table.update_entity(
                row,
                mode=UpdateMode.REPLACE,
                etag=row.metadata["etag"],
                match_condition=MatchConditions.IfNotModified,
            )
        assert len(list(table.query_entities("PartitionKey eq 'p'"))) == 4
        table.delete_entity("p", "t0")
        with pytest.raises(ResourceNotFoundError):
            table.get_entity("p", "t0")
    finally:
        tables.delete_table(table.table_name)

    blobs = BlobServiceClient.from_connection_string(azurite, transport=loopback_transport())
    container = blobs.create_container(unique("c"))
    try:
        body = bytes(range(256)) * 4096  # 1 MiB, read back in ranges
        container.upload_blob("crl/issuing.crl", body, overwrite=True)
        blob = container.get_blob_client("crl/issuing.crl")
        assert blob.get_blob_properties().size == len(body)  # HEAD
        assert blob.download_blob().readall() == body
        assert blob.download_blob(offset=1000, length=24).readall() == body[1000:1024]
        with pytest.raises(ResourceNotFoundError):
            container.get_blob_client("missing").download_blob()
    finally:
        container.delete_container()

    queues = QueueServiceClient.from_connection_string(azurite, transport=loopback_transport())
    queue = queues.create_queue(unique("q"))
    try:
        queue.send_message("work")
        [message] = queue.receive_messages()
        assert message.content == "work"
        queue.delete_message(message)
        assert list(queue.receive_messages()) == []
    finally:
        queue.delete_queue()

    assert STORAGE_CALLS.value - before >= 20


def test_nothing_listening_is_a_request_error_the_sdk_retries() -> None:
    with socket.socket() as probe:  # a loopback port with nothing behind it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    conn = AZURITE_CONNECTION_STRING.replace("127.0.0.1:10002", f"127.0.0.1:{port}")
    assert conn != AZURITE_CONNECTION_STRING
    tables = TableServiceClient.from_connection_string(
        conn, transport=CurlTransport(), retry_total=0
    )
    with pytest.raises(ServiceRequestError):
        tables.get_table_client("t").get_entity("p", "r")

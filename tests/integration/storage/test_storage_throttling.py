"""Every storage adapter turns a throttling or failing service into certroll's typed errors.

A loopback HTTP server stands in for the storage account and answers every request
with the configured status; the SDK clients are built with ``retry_total=0``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from azure.core.credentials import AzureNamedKeyCredential
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueServiceClient

from shared.adapters.blob import CRL_CONTENT_TYPE, BlobCrlPublisher
from shared.adapters.queues import StorageWorkQueue
from shared.adapters.tables import TableAuditLog, TableLedger, TableRotationStore
from shared.domain.errors import ServiceError, ThrottledError
from shared.domain.model import AuditEvent, RotationRecord
from shared.settings import AZURITE_CONNECTION_STRING

# Azurite's published development key (not a secret); the stand-in never checks it.
KEY = AZURITE_CONNECTION_STRING.split("AccountKey=")[1].split(";")[0]


class Answer:
    status = 429
    headers: dict[str, str] = {}


@pytest.fixture
def failing_account() -> Iterator[tuple[str, Answer]]:
    answer = Answer()

    class Handler(BaseHTTPRequestHandler):
        def _reply(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            self.send_response(answer.status)
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_MERGE = do_HEAD = _reply

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/devstoreaccount1", answer
    server.shutdown()
    server.server_close()
    thread.join(5)


def _credential() -> AzureNamedKeyCredential:
    return AzureNamedKeyCredential("devstoreaccount1", KEY)


def _operations(url: str) -> dict[str, Callable[[], object]]:
    tables = TableServiceClient(endpoint=url, credential=_credential(), retry_total=0)
    blobs = BlobServiceClient(url, credential=_credential(), retry_total=0)
    queues = QueueServiceClient(url, credential=_credential(), retry_total=0)
    return {
        "ledger.get": lambda: TableLedger(tables, "t1").get("01"),
        "state.put": lambda: TableRotationStore(tables, "t2").put(RotationRecord("dev")),
        "audit.append": lambda: TableAuditLog(tables, "t3").append(AuditEvent("a", "ok", "x")),
        "publisher.publish": lambda: BlobCrlPublisher(blobs, "pki").publish(
            "crl/a.crl", b"x", CRL_CONTENT_TYPE
        ),
        "queue.send": lambda: StorageWorkQueue(queues, "q1").send({"deviceId": "d"}),
    }


OPERATIONS = ["ledger.get", "state.put", "audit.append", "publisher.publish", "queue.send"]


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize(
    ("status", "headers", "retry_after"),
    [(429, {"Retry-After": "4"}, 4.0), (503, {"x-ms-retry-after-ms": "250"}, 0.25)],
)
def test_throttling_becomes_throttled_error(
    failing_account: tuple[str, Answer],
    operation: str,
    status: int,
    headers: dict[str, str],
    retry_after: float,
) -> None:
    url, answer = failing_account
    answer.status, answer.headers = status, headers
    with pytest.raises(ThrottledError) as info:
        _operations(url)[operation]()
    assert info.value.retry_after == retry_after


@pytest.mark.parametrize("operation", OPERATIONS)
def test_server_error_becomes_service_error(
    failing_account: tuple[str, Answer], operation: str
) -> None:
    url, answer = failing_account
    answer.status, answer.headers = 500, {}
    with pytest.raises(ServiceError) as info:
        _operations(url)[operation]()
    assert info.value.status == 500


def test_unreachable_account_is_a_service_error() -> None:
    with pytest.raises(ServiceError, match="unreachable"):
        _operations("http://127.0.0.1:9/devstoreaccount1")["ledger.get"]()

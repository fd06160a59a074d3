"""Blob publisher and work queue against Azurite: what anonymous clients and the
Functions queue trigger actually see."""

from __future__ import annotations

import base64
import json
import urllib.request

import pytest
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueServiceClient

from shared.adapters.blob import (
    CERT_CACHE_CONTROL,
    CRL_CACHE_CONTROL,
    CRL_CONTENT_TYPE,
    PEM_CONTENT_TYPE,
    BlobCrlPublisher,
)
from shared.adapters.queues import StorageWorkQueue, decode_message, encode_message
from shared.domain.errors import InvalidRequestError

pytestmark = pytest.mark.azurite


def http_get(url: str) -> tuple[bytes, dict[str, str]]:
    with urllib.request.urlopen(url, timeout=5) as response:  # loopback Azurite only
        return response.read(), {k.lower(): v for k, v in response.headers.items()}


def test_crl_is_publicly_readable_with_headers(
    blobs: BlobServiceClient, container_name: str
) -> None:
    publisher = BlobCrlPublisher(blobs, container_name)
    url = publisher.publish("crl/issuing.crl", b"\x30\x03\x02\x01\x01", CRL_CONTENT_TYPE)
    assert url == f"http://127.0.0.1:10000/devstoreaccount1/{container_name}/crl/issuing.crl"
    body, headers = http_get(url)  # no credentials at all
    assert body == b"\x30\x03\x02\x01\x01"
    assert headers["content-type"] == CRL_CONTENT_TYPE
    assert headers["cache-control"] == CRL_CACHE_CONTROL
    pem_url = publisher.publish("ca/issuing.pem", b"-----BEGIN", PEM_CONTENT_TYPE)
    body, headers = http_get(pem_url)
    assert body == b"-----BEGIN"
    assert headers["content-type"] == PEM_CONTENT_TYPE
    assert headers["cache-control"] == CERT_CACHE_CONTROL


def test_existing_container_is_reused(blobs: BlobServiceClient, container_name: str) -> None:
    blobs.create_container(container_name)
    publisher = BlobCrlPublisher(blobs, container_name, "https://pki.example.com/x/")
    assert publisher.publish("crl/a.crl", b"a", CRL_CONTENT_TYPE) == (
        "https://pki.example.com/x/crl/a.crl"
    )
    assert publisher.fetch("crl/a.crl") == b"a"


@pytest.mark.parametrize("name", ["", "/abs", "a/../b", "dir/"])
def test_bad_blob_names_are_rejected(
    blobs: BlobServiceClient, container_name: str, name: str
) -> None:
    publisher = BlobCrlPublisher(blobs, container_name)
    with pytest.raises(ValueError, match="invalid blob name"):
        publisher.publish(name, b"x", CRL_CONTENT_TYPE)
    assert container_name not in {c.name for c in blobs.list_containers()}


def test_queue_messages_are_base64_json(queues: QueueServiceClient, queue_name: str) -> None:
    queue = StorageWorkQueue(queues, queue_name)
    queue.send({"deviceId": "dev-ü", "reason": "expiring"})
    (raw,) = queues.get_queue_client(queue_name).peek_messages()
    decoded = json.loads(base64.b64decode(raw.content).decode("utf-8"))
    assert decoded == {"deviceId": "dev-ü", "reason": "expiring"}
    assert queue.approximate_count() == 1
    assert queue.receive() == [decoded]
    assert queue.approximate_count() == 0


def test_malformed_message_moves_to_poison(queues: QueueServiceClient, queue_name: str) -> None:
    queue = StorageWorkQueue(queues, queue_name)
    queue.send({"deviceId": "good"})
    queues.get_queue_client(queue_name).send_message("not json at all")
    assert queue.receive() == [{"deviceId": "good"}]
    assert queue.receive() == []
    assert queue.peek_poison() == [{"raw": "not json at all"}]


def test_peek_poison_decodes_and_leaves_messages(
    queues: QueueServiceClient, queue_name: str
) -> None:
    queue = StorageWorkQueue(queues, queue_name)
    poison = queues.get_queue_client(queue.poison_queue_name)
    poison.create_queue()
    poison.send_message(encode_message({"deviceId": "p1"}))
    poison.send_message(json.dumps({"deviceId": "p2"}))  # plain JSON is accepted too
    assert queue.peek_poison() == [{"deviceId": "p1"}, {"deviceId": "p2"}]
    assert len(queue.peek_poison(max_messages=1)) == 1
    assert queue.peek_poison() == [{"deviceId": "p1"}, {"deviceId": "p2"}]


@pytest.mark.parametrize("content", ["[1, 2]", "bm90IGpzb24=", ""])
def test_decode_message_rejects_non_objects(content: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        decode_message(content)
    assert info.value.code == "message_malformed"

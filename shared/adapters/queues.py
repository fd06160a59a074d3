"""Storage queue adapter for the rotation work queue.

Wire format: each message is a JSON object, UTF-8 encoded, then base64 encoded. That is
what the Azure Functions queue trigger expects by default (``messageEncoding: base64``
in host.json, extension bundle v4+), so a Function bound to the queue receives the JSON
text unchanged. Storage queue messages hold at most 64 KiB, so the JSON may be at most
48 KiB before encoding.

The Functions host moves a message that failed ``maxDequeueCount`` times to
``<queue>-poison`` (same content); :meth:`StorageWorkQueue.peek_poison` reads those for
diagnostics without removing them.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
from typing import Any

from azure.core.exceptions import AzureError, ResourceExistsError
from azure.storage.queue import QueueClient, QueueServiceClient

from shared.adapters.storage_clients import raise_storage_error
from shared.domain.errors import InvalidRequestError
from shared.ports import WorkQueue

logger = logging.getLogger(__name__)

#: Largest message a storage queue accepts (after base64 encoding).
MAX_MESSAGE_BYTES = 64 * 1024
#: How long a received message stays invisible before it is deleted by ``receive``.
VISIBILITY_TIMEOUT_SECONDS = 30


def poison_queue_name(name: str) -> str:
    """The queue the Functions host moves repeatedly failing messages to."""
    return name + "-poison"


def encode_message(message: dict[str, Any]) -> str:
    """``message`` as base64(UTF-8 JSON); InvalidRequestError when it would not fit."""
    if not isinstance(message, dict):
        raise TypeError("a work message must be a dict")
    text = json.dumps(message, separators=(",", ":"), sort_keys=True)
    encoded = base64.b64encode(text.encode("utf-8")).decode("ascii")
    if len(encoded) > MAX_MESSAGE_BYTES:
        raise InvalidRequestError(
            "message_too_large",
            f"work message is {len(encoded)} bytes encoded; a storage queue takes at most "
            f"{MAX_MESSAGE_BYTES}",
        )
    return encoded


def decode_message(content: str | bytes) -> dict[str, Any]:
    """Parse a queue message: base64(JSON) first, plain JSON as a fallback.

    InvalidRequestError when it is neither, or not a JSON object.
    """
    text = content.decode("utf-8", "replace") if isinstance(content, bytes) else content
    candidates = []
    try:
        candidates.append(base64.b64decode(text.encode("ascii"), validate=True).decode("utf-8"))
    except (binascii.Error, UnicodeError, ValueError):
        pass
    candidates.append(text)
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    raise InvalidRequestError("message_malformed", "queue message is not a base64 JSON object")


class StorageWorkQueue(WorkQueue):
    """The rotation work queue on Azure Storage queues (created on first use)."""

    def __init__(self, service: QueueServiceClient, queue_name: str) -> None:
        self._service = service
        self.queue_name = queue_name
        self.poison_queue_name = poison_queue_name(queue_name)
        self._ready: set[str] = set()
        self._lock = threading.Lock()

    def _queue(self, name: str | None = None) -> QueueClient:
        name = name or self.queue_name
        client = self._service.get_queue_client(name)
        if name not in self._ready:
            with self._lock:
                if name not in self._ready:
                    try:
                        client.create_queue()
                        logger.info("created queue %s", name)
                    except ResourceExistsError:
                        pass
                    except AzureError as exc:
                        raise_storage_error(exc, f"create queue {name}")
                    self._ready.add(name)
        return client

    def send(self, message: dict[str, Any]) -> None:
        encoded = encode_message(message)
        try:
            self._queue().send_message(encoded)
        except AzureError as exc:
            raise_storage_error(exc, f"send to queue {self.queue_name}")

    def receive(self, max_messages: int = 32) -> list[dict[str, Any]]:
        if max_messages <= 0:
            return []
        queue = self._queue()
        received: list[dict[str, Any]] = []
        try:
            for msg in queue.receive_messages(
                messages_per_page=min(32, max_messages),
                max_messages=max_messages,
                visibility_timeout=VISIBILITY_TIMEOUT_SECONDS,
            ):
                try:
                    received.append(decode_message(msg.content))
                except InvalidRequestError:
                    logger.warning(
                        "queue %s: message %s is malformed; moved to %s",
                        self.queue_name,
                        msg.id,
                        self.poison_queue_name,
                    )
                    self._queue(self.poison_queue_name).send_message(msg.content)
                queue.delete_message(msg)
        except AzureError as exc:
            raise_storage_error(exc, f"receive from queue {self.queue_name}")
        return received

    def peek_poison(self, max_messages: int = 32) -> list[dict[str, Any]]:
        """Up to ``max_messages`` (at most 32) poison messages, left in place.

        A message that does not decode is returned as ``{"raw": <content>}``.
        """
        peeked: list[dict[str, Any]] = []
        try:
            for msg in self._queue(self.poison_queue_name).peek_messages(
                max_messages=max(1, min(32, max_messages))
            ):
                try:
                    peeked.append(decode_message(msg.content))
                except InvalidRequestError:
                    peeked.append({"raw": msg.content})
        except AzureError as exc:
            raise_storage_error(exc, f"peek queue {self.poison_queue_name}")
        return peeked

    def approximate_count(self) -> int:
        """The service's approximate message count (for metrics and diagnostics)."""
        try:
            props = self._queue().get_queue_properties()
        except AzureError as exc:
            raise_storage_error(exc, f"properties of queue {self.queue_name}")
        return int(props.approximate_message_count or 0)

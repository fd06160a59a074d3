"""The emulator's outbound event streams, by topic.

Topics:

- ``lifecycle``: Event Grid schema events from the hub's system topic
  (``Microsoft.Devices.DeviceCreated``, ``DeviceConnected``, ``DeviceDisconnected``).
- ``twin_changes``: routed ``TwinChangeEvents`` messages (what an Event Hub endpoint
  receives), optionally coalesced per device while undrained.
- ``connections``: Azure Monitor resource-log batches (category ``Connections``) for
  failed device connects.

Events are queued in publication order; ``drain`` takes them off, ``subscribe`` adds a
callback that runs for every new event (never while the emulator holds its lock).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

LIFECYCLE = "lifecycle"
TWIN_CHANGES = "twin_changes"
CONNECTIONS = "connections"
TOPICS = (LIFECYCLE, TWIN_CHANGES, CONNECTIONS)

Event = dict[str, Any]
Callback = Callable[[Event], None]
Merger = Callable[[Event, Event], Event]


class EventBus:
    def __init__(self) -> None:
        self._queues: dict[str, deque[tuple[str | None, Event]]] = {t: deque() for t in TOPICS}
        self._subscribers: dict[str, list[Callback]] = {t: [] for t in TOPICS}
        self._lock = threading.Lock()

    def _check(self, topic: str) -> None:
        if topic not in self._queues:
            raise ValueError(f"unknown topic {topic!r}; topics are {', '.join(TOPICS)}")

    def subscribe(self, topic: str, callback: Callback) -> None:
        """Call ``callback(event)`` for every event published on ``topic`` from now on.

        Events are still queued for ``drain``.
        """
        self._check(topic)
        with self._lock:
            self._subscribers[topic].append(callback)

    def unsubscribe(self, topic: str, callback: Callback) -> None:
        self._check(topic)
        with self._lock:
            self._subscribers[topic].remove(callback)

    def drain(self, topic: str, max_items: int | None = None) -> list[Event]:
        """Remove and return the queued events of ``topic``, oldest first."""
        self._check(topic)
        if max_items is not None and max_items < 0:
            raise ValueError("max_items must not be negative")
        with self._lock:
            q = self._queues[topic]
            n = len(q) if max_items is None else min(max_items, len(q))
            return [q.popleft()[1] for _ in range(n)]

    def pending(self, topic: str) -> int:
        self._check(topic)
        with self._lock:
            return len(self._queues[topic])

    # -- used by the emulator -------------------------------------------------------

    def append(
        self,
        topic: str,
        event: Event,
        *,
        key: str | None = None,
        merge: Merger | None = None,
    ) -> Event:
        """Queue ``event``. When ``merge`` is given and the newest queued event of the
        topic has the same ``key``, the two are merged into one queued event instead.
        Returns the event that is now queued (for :meth:`notify`)."""
        self._check(topic)
        with self._lock:
            q = self._queues[topic]
            if merge is not None and key is not None and q and q[-1][0] == key:
                merged = merge(q[-1][1], event)
                q[-1] = (key, merged)
                return merged
            q.append((key, event))
            return event

    def notify(self, topic: str, event: Event) -> None:
        """Run the subscribers of ``topic`` for ``event`` (outside the emulator's lock)."""
        with self._lock:
            callbacks = list(self._subscribers[topic])
        for cb in callbacks:
            try:
                cb(event)
            except Exception:
                logger.exception("subscriber of %s failed on an event", topic)

"""The local stack with the plumbing's faults: Event Hub batches duplicated, reordered and
coalesced, Event Grid events lost, work-queue workers killed mid-batch, and a poison
queue whose every message keeps its reason.

Worker concurrency is the local stack's own: ``partitions`` threads deliver Event Hub
batches side by side and as many pull the work queue at once, so a device's queue work,
twin changes and lifecycle events contend for its record, as on a scaled-out Flex
Consumption app.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from azure.core.exceptions import AzureError

from local.soak.plan import FaultPlan
from local.soak.ports import KillSwitch, WorkerKilled
from local.stack import EVENT_GRID, LocalStack, _device_of
from shared.domain.errors import CertrollError

logger = logging.getLogger(__name__)

#: a killed worker's message shows again once its visibility timeout ends; the Functions
#: host's lease is 10 minutes (docs/reliability.md cites the source), compressed here to
#: this many real seconds so the run need not wait for it
KILLED_VISIBILITY_SECONDS = 3
KILL_AFTER_CALLS = (2, 40)  # the worker dies after this many port calls of its invocation


class SoakStack(LocalStack):
    def __init__(self, *args: Any, plan: FaultPlan, kill: KillSwitch, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.plan = plan
        self.kill = kill
        self.armed: Callable[[], bool] = lambda: False
        self._carry: dict[str, list[dict[str, Any]]] = {}
        self._pass = 0
        self.killed_messages: set[str] = set()
        self.redelivered_after_kill: set[str] = set()
        self.poisoned: list[tuple[str, str]] = []  # (message id, reason)

    # ----------------------------------------------------------------- set-up

    def start(self, **kwargs: Any) -> SoakStack:
        super().start(**kwargs)
        host = self.devhost
        for name, fn in list(host.functions.items()):
            if fn.trigger_type == "queueTrigger":
                host.functions[name] = dataclasses.replace(fn, call=self._killable(fn.call))
        original = host._poison

        def poison(queue_name: str, message: Any, exc: Exception) -> None:
            self.poisoned.append((str(message.id), f"{type(exc).__name__}: {exc}"))
            original(queue_name, message, exc)

        host._poison = poison  # type: ignore[method-assign]
        return self

    def _killable(self, call: Callable[..., Any]) -> Callable[..., Any]:
        def run(**kwargs: Any) -> Any:
            msg = next(iter(kwargs.values()))
            if msg.id in self.killed_messages:
                self.redelivered_after_kill.add(msg.id)
            stream = f"kill/{msg.id}/{msg.dequeue_count}"
            if not (self.armed() and self.plan.chance(stream, self.plan.rates.worker_kill)):
                return call(**kwargs)
            self.kill.arm(self.plan.draw(stream).randint(*KILL_AFTER_CALLS))
            try:
                return call(**kwargs)
            except WorkerKilled:
                self.plan.count("worker_killed")
                self.killed_messages.add(msg.id)
                queue = self.devhost.queue_service.get_queue_client(
                    self.settings.get("CERTROLL_WORK_QUEUE")
                )
                queue.update_message(
                    msg.id,
                    pop_receipt=msg.pop_receipt,
                    visibility_timeout=KILLED_VISIBILITY_SECONDS,
                )
                raise
            finally:
                self.kill.disarm()

        return run

    def fire_timer(self) -> int:
        """The timer fires; a failed invocation is logged and the next one comes on
        schedule, as the Functions host does."""
        try:
            return super().fire_timer()
        except Exception as exc:
            logger.warning("daily_sweep failed: %s", exc)
            return 0

    # ----------------------------------------------------------------- event faults

    def pump(self) -> Any:
        self._pass += 1
        return super().pump()

    def _plan(
        self,
        lanes: list[list[tuple[int, str, list[dict[str, Any]]]]],
        target: str,
        messages: list[dict[str, Any]],
        batch_size: int,
    ) -> None:
        if not self.armed():
            super()._plan(lanes, target, messages, batch_size)
            return
        rates = self.plan.rates
        if target == EVENT_GRID:
            kept = []
            for event in messages:
                if self.plan.chance(f"eventgrid/{_device_of(event)}", rates.eventgrid_drop):
                    self.plan.count("eventgrid_dropped")
                else:
                    kept.append(event)
            super()._plan(lanes, target, kept, batch_size)
            return
        # coalesced: some messages wait and arrive in one batch with the next pass's
        messages = self._carry.pop(target, []) + messages
        now, later = [], []
        for message in messages:
            stream = f"coalesce/{target}/{_device_of(message)}"
            if self.plan.chance(stream, rates.batch_coalesce):
                later.append(message)
            else:
                now.append(message)
        if later:
            self.plan.count("eventhub_coalesced", len(later))
            self._carry[target] = later
        before = [len(lane) for lane in lanes]
        super()._plan(lanes, target, now, batch_size)
        for lane, start in zip(lanes, before, strict=True):
            for _, _, batch in lane[start:]:
                self._disturb(target, batch)

    def _disturb(self, target: str, batch: list[dict[str, Any]]) -> None:
        """Duplicate some messages of ``batch`` and shuffle it, in place."""
        rng = self.plan.draw(f"batch/{target}/{self._pass}/{_device_of(batch[0])}")
        rates = self.plan.rates
        if rng.random() < rates.batch_duplicate:
            again = rng.sample(batch, max(1, len(batch) // 10))
            batch.extend(again)
            self.plan.count("eventhub_duplicated", len(again))
        if len(batch) > 1 and rng.random() < rates.batch_reorder:
            rng.shuffle(batch)
            self.plan.count("eventhub_reordered")

    def pending(self) -> int:
        return super().pending() + sum(len(v) for v in self._carry.values())

    # ----------------------------------------------------------------- the work queue

    def _pump_queue(self) -> int:
        """As the local stack's, with killed workers and storage outages survived: a
        killed invocation ends its worker's drain; a receive that fails (Azurite
        restarting) leaves the queue to the next pass."""

        def one() -> int:
            try:
                return self.devhost.pump_queue(max_messages=1)
            except WorkerKilled:
                return 1
            except (AzureError, CertrollError) as exc:
                logger.warning("work queue not reachable: %s", exc)
                return 0

        def drain() -> int:
            handled = 0
            while (n := one()) > 0:
                handled += n
            return handled

        first = one()
        if first == 0:
            return 0
        return first + sum(self._pool().map(lambda _: drain(), range(self.partitions)))

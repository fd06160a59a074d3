"""A stand-in for the campaign engine: re-issue every device a twin query selects by
putting it on the rotation work queue, as the daily sweep does.

:class:`QueueReissue` implements :class:`shared.domain.ca_roll.CampaignRunner`, the
interface the CA roll starts its re-issue step through. It is not paced and does not
pause: it pages through the query once, enqueuing ``{"kind": "rotate", "deviceIds",
"reason"}`` batches for ``rotation_worker`` (``FleetWork.process_batch`` starts a
renewal for an idle or failed device and drives one in flight), writing the query's
continuation into the campaign record after every page so a crash resumes where it
stopped. ``status`` counts the devices the query still selects. The campaign engine
(paced by the budget planner, pausable, abortable) takes its place behind the same
interface.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Callable, Iterator

from shared.domain.campaign import Campaign, CampaignState, Checkpoint, new_campaign
from shared.domain.errors import ThrottledError
from shared.domain.messages import rotate_message
from shared.domain.model import Trigger, Twin
from shared.ports import CampaignStore, Clock, DeviceRegistry, WorkQueue

logger = logging.getLogger(__name__)

PAGE_SIZE = 1000  # twins per query page (the hub's maximum)
BATCH_SIZE = 100  # devices per work-queue message, as the sweep sends them
MAX_THROTTLED_WAITS = 8


class QueueReissue:
    """Campaigns as work-queue batches (see the module docstring)."""

    def __init__(
        self,
        registry: DeviceRegistry,
        queue: WorkQueue,
        store: CampaignStore,
        clock: Clock,
        *,
        batch_size: int = BATCH_SIZE,
        select: Callable[[Twin], bool] = lambda _twin: True,
    ) -> None:
        self.registry = registry
        self.queue = queue
        self.store = store
        self.clock = clock
        self.batch_size = batch_size
        self.select = select

    def _page(self, query: str, continuation: str | None) -> tuple[list[Twin], str | None]:
        for attempt in range(MAX_THROTTLED_WAITS):
            try:
                page = self.registry.query_twins(query, PAGE_SIZE, continuation)
                return list(page.items), page.continuation
            except ThrottledError as exc:
                if attempt == MAX_THROTTLED_WAITS - 1:
                    raise
                self.clock.sleep(min(exc.retry_after, 30.0))
        raise AssertionError("unreachable")  # pragma: no cover

    def _twins(self, query: str) -> Iterator[Twin]:
        continuation: str | None = None
        while True:
            items, continuation = self._page(query, continuation)
            yield from items
            if not continuation:
                return

    def start(self, selection: str, reason: Trigger, actor: str) -> str:
        """Create the campaign record, then enqueue every selected device; the id."""
        now = self.clock.now()
        campaign_id = f"{reason.value}-{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        campaign = self.store.put(
            new_campaign(campaign_id, selection, reason.value, at=now, by=actor)
        )
        return self.resume(campaign).campaign_id

    def resume(self, campaign: Campaign) -> Campaign:
        """Enqueue the pages not yet enqueued (from the record's checkpoint)."""
        reason = Trigger(campaign.reason)
        checkpoint = campaign.checkpoint
        while not checkpoint.query_done:
            items, continuation = self._page(campaign.query, checkpoint.continuation)
            ids = [t.device_id for t in items if self.select(t)]
            now = self.clock.now()
            for start in range(0, len(ids), self.batch_size):
                self.queue.send(rotate_message(ids[start : start + self.batch_size], reason, now))
            checkpoint = dataclasses.replace(
                checkpoint,
                continuation=continuation,
                pages_read=checkpoint.pages_read + 1,
                query_done=not continuation,
                enqueued=checkpoint.enqueued + len(ids),
            )
            campaign = self.store.put(
                dataclasses.replace(campaign, checkpoint=checkpoint, updated_at=now)
            )
        logger.info(
            "campaign %s: %d devices enqueued (%s)",
            campaign.campaign_id,
            checkpoint.enqueued,
            campaign.reason,
        )
        return campaign

    def remaining(self, selection: str) -> list[str]:
        """The devices the query still selects."""
        return [t.device_id for t in self._twins(selection) if self.select(t)]

    def status(self, campaign_id: str) -> Campaign:
        """The record, with ``completed`` = enqueued minus the devices still selected;
        ``completed`` once none is left (a record enqueued partly is resumed first)."""
        campaign = self.store.get(campaign_id)
        if campaign.state is not CampaignState.RUNNING:
            return campaign
        if not campaign.checkpoint.query_done:
            campaign = self.resume(campaign)
        left = len(self.remaining(campaign.query))
        done = max(0, campaign.checkpoint.enqueued - left)
        checkpoint: Checkpoint = dataclasses.replace(campaign.checkpoint, completed=done)
        state = CampaignState.COMPLETED if left == 0 else CampaignState.RUNNING
        if checkpoint == campaign.checkpoint and state is campaign.state:
            return campaign
        return self.store.put(
            dataclasses.replace(
                campaign, checkpoint=checkpoint, state=state, updated_at=self.clock.now()
            )
        )

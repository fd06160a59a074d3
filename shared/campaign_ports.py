"""The campaign ports: what the rotation tells the campaigns, and the campaign store.
Re-exported by :mod:`shared.ports` with the other ports."""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Protocol

from shared.domain.campaign import (
    Campaign,
    CampaignState,
    EnrollmentPassProgress,
    KnownEnrollment,
)
from shared.domain.errors import ConcurrencyError
from shared.domain.model import IndividualEnrollment


class CampaignOutcomes(Protocol):
    """What the rotation tells the campaigns: a device's rotation ended (``completed``,
    ``failed``) or had nothing to do (``skipped``). Counted once per campaign and device."""

    def is_done(self, campaign_id: str, device_id: str) -> bool:
        """The device already has an outcome in the campaign (a batch enqueued again
        after a crash starts no second rotation)."""
        ...

    def report(self, device_id: str, outcome: str, campaign_id: str | None = None) -> None:
        """Count the outcome in ``campaign_id``, or in every active campaign holding the
        device. Never raises."""
        ...

    def known_enrollment(self, device_id: str) -> KnownEnrollment | None:
        """The device's individual enrollment as an active campaign's completed pass over
        the enrollment query read it (with its ETag); None when none did."""
        ...


class CampaignStore(abc.ABC):
    """Re-roll campaigns and their checkpoints (Table storage in Azure), one record per
    campaign, changed only with ETag-checked writes."""

    @abc.abstractmethod
    def get(self, campaign_id: str) -> Campaign:
        """NotFoundError when unknown."""

    @abc.abstractmethod
    def put(self, campaign: Campaign) -> Campaign:
        """Create (``campaign.etag is None``: ConflictError if present) or replace with
        If-Match (ConcurrencyError when the stored ETag differs). Returns the record with
        its new ETag."""

    @abc.abstractmethod
    def list(self, states: set[CampaignState] | None = None) -> list[Campaign]:
        """Campaigns in any of ``states`` (all when None), newest first."""

    # the campaign's devices: one row per (campaign, device), its outcome set once

    @abc.abstractmethod
    def add_devices(self, campaign_id: str, device_ids: Sequence[str]) -> int:
        """Make each device a member of the campaign, outcome ``pending``; a device that
        already is one keeps its row (a page read again after a crash changes nothing).
        Returns how many were new."""

    @abc.abstractmethod
    def device_outcome(self, campaign_id: str, device_id: str) -> str | None:
        """``pending``, ``completed``, ``failed`` or ``skipped``; None when the device is
        not a member."""

    @abc.abstractmethod
    def record_outcome(self, campaign_id: str, device_id: str, outcome: str) -> bool:
        """Set a pending member's outcome; True when this call set it. False when the
        device is not a member or already has one (a redelivered rotation counts once)."""

    @abc.abstractmethod
    def count_outcomes(self, campaign_id: str) -> dict[str, int]:
        """Members by outcome (a full count, for repairing the checkpoint's counters)."""

    # the campaign's read of the DPS enrollment query (campaign_enrollments.py)

    @abc.abstractmethod
    def put_enrollments(
        self,
        campaign_id: str,
        enrollments: Sequence[IndividualEnrollment],
        progress: EnrollmentPassProgress,
    ) -> None:
        """Keep one page of the enrollment query (each enrollment with its ETag and
        document, replacing an earlier copy), then ``progress``."""

    @abc.abstractmethod
    def enrollment_pass(self, campaign_id: str) -> EnrollmentPassProgress | None:
        """How far the pass got; None before its first page."""

    @abc.abstractmethod
    def enrollment(self, campaign_id: str, registration_id: str) -> IndividualEnrollment | None:
        """The enrollment as the pass read it; None when the pass did not list it."""

    def update(
        self,
        campaign_id: str,
        change: Callable[[Campaign], Campaign],
        attempts: int = 8,
    ) -> Campaign:
        """Read, apply ``change`` (a pure function of the record, e.g.
        :func:`shared.domain.campaign.record_outcomes`) and write back with If-Match,
        again on a ConcurrencyError up to ``attempts`` times. ``change`` returning the
        record it was given writes nothing. Errors ``change`` raises pass through."""
        for attempt in range(attempts):
            current = self.get(campaign_id)
            changed = change(current)
            if changed is current:
                return current
            try:
                return self.put(changed)
            except ConcurrencyError:
                if attempt == attempts - 1:
                    raise
        raise ConcurrencyError(f"campaign {campaign_id} kept changing")  # attempts < 1

"""A re-roll campaign: re-issue every device a twin query selects, resumably.

The campaign is one record (``CampaignStore``, Table storage in Azure) with a checkpoint:
the continuation token of the twin query's next page and the counts of devices enqueued,
completed and failed. Whoever runs the campaign reads the record, does one step (a page
of the query enqueued, or a batch of outcomes counted) and writes the record back with
an ETag check, so a restart (a new process, a new store instance) goes on from the last
written checkpoint and two runners never both advance it.

States::

    running --pause--> paused --resume--> running
    running|paused --abort--> aborted            (by an operator or the abort criteria)
    running --last outcome counted--> completed

``aborted`` and ``completed`` are final. The abort criteria follow AWS IoT Jobs' abort
configuration: once at least ``min_executed`` devices have an outcome, the campaign aborts
when ``failure_percentage`` or more of them failed.

Pure: the functions here return new records and never do I/O.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from shared.domain.errors import ConflictError, InvalidRequestError
from shared.domain.model import IndividualEnrollment

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_QUERY_CHARS = 8000
MAX_REASON_CHARS = 500


class CampaignState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    ABORTED = "aborted"
    COMPLETED = "completed"


FINAL_STATES = frozenset({CampaignState.ABORTED, CampaignState.COMPLETED})

#: A campaign device's outcome (one row per campaign and device in the store).
PENDING = "pending"
COMPLETED = "completed"
FAILED = "failed"
SKIPPED = "skipped"
OUTCOMES = (COMPLETED, FAILED, SKIPPED)


@dataclass(frozen=True)
class AbortCriteria:
    """Abort when at least ``failure_percentage`` % of the devices with an outcome failed,
    once at least ``min_executed`` have one (AWS IoT Jobs: ``thresholdPercentage``,
    ``minNumberOfExecutedThings``)."""

    min_executed: int = 100
    failure_percentage: float = 10.0

    def __post_init__(self) -> None:
        if self.min_executed < 1:
            raise ValueError("min_executed must be at least 1")
        if not 0.0 < self.failure_percentage <= 100.0:
            raise ValueError("failure_percentage must be in (0, 100]")

    def tripped(self, completed: int, failed: int) -> bool:
        executed = completed + failed
        if executed < self.min_executed or executed == 0:
            return False
        return failed * 100.0 >= self.failure_percentage * executed


@dataclass(frozen=True)
class Checkpoint:
    """Where the campaign is: the twin query's next page and the device counts."""

    continuation: str | None = None  # the next page's continuation token (None: first page)
    pages_read: int = 0
    query_done: bool = False  # the last page has been read and enqueued
    enqueued: int = 0
    completed: int = 0
    failed: int = 0
    skipped: int = 0  # enqueued but nothing to do (disallowed, gone from the hub)

    @property
    def executed(self) -> int:
        """Devices with an outcome (completed, failed or skipped)."""
        return self.completed + self.failed + self.skipped

    @property
    def in_flight(self) -> int:
        return max(0, self.enqueued - self.executed)


@dataclass
class Campaign:
    """One campaign record (``etag`` set by the store)."""

    campaign_id: str
    query: str  # the IoT Hub twin query selecting the devices
    reason: str  # the rotation trigger, e.g. "ca-roll", "compromise"
    created_at: datetime
    updated_at: datetime
    created_by: str
    state: CampaignState = CampaignState.RUNNING
    abort_criteria: AbortCriteria = field(default_factory=AbortCriteria)
    checkpoint: Checkpoint = field(default_factory=Checkpoint)
    devices_expected: int | None = None  # when known (e.g. a count query), for the ETA
    rate_per_min: float | None = None  # the pace the planner gave (rotations/min)
    note: str | None = None  # why it paused or aborted
    etag: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["state"] = self.state.value
        out["created_at"] = self.created_at.isoformat()
        out["updated_at"] = self.updated_at.isoformat()
        return out


def new_campaign(
    campaign_id: str,
    query: str,
    reason: str,
    *,
    at: datetime,
    by: str,
    abort_criteria: AbortCriteria | None = None,
    devices_expected: int | None = None,
    rate_per_min: float | None = None,
) -> Campaign:
    """A running campaign at its first page (InvalidRequestError on malformed input)."""
    if not _ID.fullmatch(campaign_id or ""):
        raise InvalidRequestError(
            "campaign_id_invalid", "a campaign id is 1-128 letters, digits, '.', '_' or '-'"
        )
    if not query.strip() or len(query) > MAX_QUERY_CHARS:
        raise InvalidRequestError(
            "campaign_query_invalid", f"the query must be 1-{MAX_QUERY_CHARS} characters"
        )
    if not reason.strip() or len(reason) > MAX_REASON_CHARS:
        raise InvalidRequestError(
            "campaign_reason_invalid", f"the reason must be 1-{MAX_REASON_CHARS} characters"
        )
    if at.tzinfo is None:
        raise ValueError("at must be timezone-aware")
    if devices_expected is not None and devices_expected < 0:
        raise InvalidRequestError("campaign_devices_invalid", "devices_expected must be >= 0")
    if rate_per_min is not None and not (rate_per_min > 0 and math.isfinite(rate_per_min)):
        raise InvalidRequestError("campaign_rate_invalid", "rate_per_min must be positive")
    return Campaign(
        campaign_id=campaign_id,
        query=query,
        reason=reason,
        created_at=at,
        updated_at=at,
        created_by=by,
        abort_criteria=abort_criteria or AbortCriteria(),
        devices_expected=devices_expected,
        rate_per_min=rate_per_min,
    )


def _require(c: Campaign, allowed: set[CampaignState], action: str) -> None:
    if c.state not in allowed:
        raise ConflictError(f"campaign {c.campaign_id} is {c.state.value}: cannot {action}")


def pause(c: Campaign, *, at: datetime, note: str | None = None) -> Campaign:
    """Stop advancing (devices already enqueued still finish and are counted)."""
    if c.state is CampaignState.PAUSED:
        return c
    _require(c, {CampaignState.RUNNING}, "pause")
    return dataclasses.replace(c, state=CampaignState.PAUSED, updated_at=at, note=note)


def resume(c: Campaign, *, at: datetime) -> Campaign:
    """Go on from the checkpoint."""
    if c.state is CampaignState.RUNNING:
        return c
    _require(c, {CampaignState.PAUSED}, "resume")
    return _maybe_complete(
        dataclasses.replace(c, state=CampaignState.RUNNING, updated_at=at, note=None), at
    )


def abort(c: Campaign, *, at: datetime, note: str) -> Campaign:
    """End the campaign: nothing more is enqueued (final)."""
    if c.state is CampaignState.ABORTED:
        return c
    _require(c, {CampaignState.RUNNING, CampaignState.PAUSED}, "abort")
    return dataclasses.replace(c, state=CampaignState.ABORTED, updated_at=at, note=note)


def record_page(c: Campaign, *, enqueued: int, continuation: str | None, at: datetime) -> Campaign:
    """A page of the query has been enqueued (``enqueued`` devices); ``continuation`` is
    the next page's token, None after the last page. Only a running campaign advances."""
    _require(c, {CampaignState.RUNNING}, "enqueue")
    if c.checkpoint.query_done:
        raise ConflictError(f"campaign {c.campaign_id} has read its last page")
    if enqueued < 0:
        raise ValueError("enqueued must be >= 0")
    cp = dataclasses.replace(
        c.checkpoint,
        continuation=continuation,
        pages_read=c.checkpoint.pages_read + 1,
        query_done=continuation is None,
        enqueued=c.checkpoint.enqueued + enqueued,
    )
    return _maybe_complete(dataclasses.replace(c, checkpoint=cp, updated_at=at), at)


def record_outcomes(
    c: Campaign, *, completed: int = 0, failed: int = 0, skipped: int = 0, at: datetime
) -> Campaign:
    """Count devices whose rotation finished (``completed``), gave up (``failed``) or
    had nothing to do (``skipped``: disallowed, unknown; not part of the abort criteria).

    Counted in any state but ``completed`` (rotations enqueued before a pause or an abort
    still end). A running campaign whose abort criteria trip becomes ``aborted``; one that
    has read its last page and counted every enqueued device becomes ``completed``.
    """
    if completed < 0 or failed < 0 or skipped < 0:
        raise ValueError("counts must be >= 0")
    _require(
        c, {CampaignState.RUNNING, CampaignState.PAUSED, CampaignState.ABORTED}, "count outcomes"
    )
    cp = dataclasses.replace(
        c.checkpoint,
        completed=c.checkpoint.completed + completed,
        failed=c.checkpoint.failed + failed,
        skipped=c.checkpoint.skipped + skipped,
    )
    out = dataclasses.replace(c, checkpoint=cp, updated_at=at)
    if out.state in (CampaignState.RUNNING, CampaignState.PAUSED) and c.abort_criteria.tripped(
        cp.completed, cp.failed
    ):
        rotated = cp.completed + cp.failed
        pct = 100.0 * cp.failed / rotated
        return dataclasses.replace(
            out,
            state=CampaignState.ABORTED,
            note=f"abort criteria: {cp.failed} of {rotated} failed ({pct:.1f} % >= "
            f"{c.abort_criteria.failure_percentage:g} %)",
        )
    return _maybe_complete(out, at)


def _maybe_complete(c: Campaign, at: datetime) -> Campaign:
    cp = c.checkpoint
    if c.state is CampaignState.RUNNING and cp.query_done and cp.executed >= cp.enqueued:
        return dataclasses.replace(c, state=CampaignState.COMPLETED, updated_at=at)
    return c


# --------------------------------------------------------------------------- progress


@dataclass(frozen=True)
class KnownEnrollment:
    """A device's individual enrollment as the campaign's pass read it (None: it had
    none)."""

    enrollment: IndividualEnrollment | None


@dataclass(frozen=True)
class EnrollmentPassProgress:
    """How far a campaign's pass over the enrollment query got (campaign_enrollments.py)."""

    continuation: str | None
    done: bool
    pages: int
    at: datetime


@dataclass(frozen=True)
class Progress:
    """What ``certroll campaign status`` shows."""

    state: CampaignState
    enqueued: int
    completed: int
    failed: int
    skipped: int
    in_flight: int
    total: int | None  # devices expected, when known (the enqueued count once the query ended)
    fraction: float | None  # executed / total
    failure_percentage: float  # of the devices with an outcome
    eta_minutes: float | None  # at the planned rate, for the devices without an outcome

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["state"] = self.state.value
        return out


def progress(c: Campaign) -> Progress:
    """Progress and ETA (at ``rate_per_min``) of ``c``."""
    cp = c.checkpoint
    total: int | None
    if cp.query_done:
        total = cp.enqueued
    elif c.devices_expected is not None:
        total = max(c.devices_expected, cp.enqueued)
    else:
        total = None
    fraction = None if total is None else (1.0 if total == 0 else min(1.0, cp.executed / total))
    eta: float | None = None
    if c.state is CampaignState.COMPLETED:
        eta = 0.0
    elif c.state is CampaignState.RUNNING and total is not None and c.rate_per_min:
        eta = max(0, total - cp.executed) / c.rate_per_min
    rotated = cp.completed + cp.failed
    failure = 100.0 * cp.failed / rotated if rotated else 0.0
    return Progress(
        state=c.state,
        enqueued=cp.enqueued,
        completed=cp.completed,
        failed=cp.failed,
        skipped=cp.skipped,
        in_flight=cp.in_flight,
        total=total,
        fraction=fraction,
        failure_percentage=failure,
        eta_minutes=eta,
    )

"""Enrollment writes of several devices sent together: DPS bulk operations, at most ten
enrollments a call, mode ``updateIfMatchETag`` (docs/performance.md, "Spending less per
rotation").

A batch of device events (one Event Hubs delivery of twin reports) is handled in two
passes. In the first, a step that would write an individual enrollment (the enroll
step's new certificate, the finish's emptied old slot) stages the write here and stops
with :class:`EnrollmentWriteWaits`: nothing that follows the write has happened, so the
device is told nothing yet (a finish has already marked the ledger, which it does before
its slot write, and its second pass finds that done). The staged writes then go out in
bulk calls, each item conditional on the ETag of the read it was computed from. In the
second pass the stopped events are handled again: a step whose write landed goes on from
there without reading the enrollment again; one whose item was refused (412: the
enrollment changed since it was read; 404: it is gone) takes the single-enrollment path,
a fresh read and a conditional write, as outside a batch.

The zero-downtime rule holds because a step never passes its enrollment write: the
enroll step delivers the certificate only in the second pass, after DPS accepted the
write that added it, and the finish runs only once the device runs on the new
certificate (its ledger marks and its slot clean-up cost the device nothing). Each
device has at most one staged write per batch (a second event of the same device waits
for the second pass too), so a device's writes keep their order.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

from shared.domain.errors import ConcurrencyError
from shared.domain.model import MAX_BULK_ENROLLMENTS, IndividualEnrollment
from shared.domain.rotation.context import RotationContext

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class EnrollmentWriteWaits(Exception):
    """A step staged its enrollment write and stops until the batch's bulk call."""

    def __init__(self, device_id: str) -> None:
        super().__init__(f"{device_id}: enrollment write staged for the batch's bulk call")
        self.device_id = device_id


@dataclass
class EnrollmentWriteBatch:
    """The enrollment writes one batch of events stages, and what became of them."""

    #: staged writes in the order the steps made them, one per device
    staged: dict[str, IndividualEnrollment] = field(default_factory=dict)
    #: what DPS accepted, by registration id (the written enrollment, its new ETag unknown)
    landed: dict[str, IndividualEnrollment] = field(default_factory=dict)
    #: refused items (registration id -> HTTP status): the single path handles them
    refused: dict[str, int] = field(default_factory=dict)
    #: True while the first pass runs: writes are staged; afterwards none is
    staging: bool = True

    def stage(self, enrollment: IndividualEnrollment) -> None:
        """Stage ``enrollment`` (a write computed from a read carrying its ETag) and stop
        the step. A device that already has a staged write stops without a second one."""
        rid = enrollment.registration_id
        if rid not in self.staged:
            self.staged[rid] = enrollment
        raise EnrollmentWriteWaits(rid)

    def accepts(self, enrollment: IndividualEnrollment) -> bool:
        """Whether a write of ``enrollment`` is staged rather than made now."""
        rid = enrollment.registration_id
        return (
            self.staging
            and bool(enrollment.etag)
            and enrollment.etag != "*"
            and rid not in self.landed
            and rid not in self.refused
        )

    def calls(self) -> list[list[IndividualEnrollment]]:
        """The staged writes in bulk calls of at most ten, in staging order."""
        items = list(self.staged.values())
        return [
            items[i : i + MAX_BULK_ENROLLMENTS] for i in range(0, len(items), MAX_BULK_ENROLLMENTS)
        ]


def write_or_stage(
    ctx: RotationContext, updated: IndividualEnrollment, batch: EnrollmentWriteBatch | None
) -> bool:
    """Write ``updated`` (computed from a read carrying its ETag): staged for the batch's
    bulk call when the batch takes it (the step stops here), else now. False when the
    enrollment changed since the read (read again and decide again)."""
    if batch is not None and batch.accepts(updated):
        batch.stage(updated)  # raises EnrollmentWriteWaits
    try:
        ctx.call(ctx.deps.enrollments.put_individual, updated)
    except ConcurrencyError:
        return False
    return True


_current: contextvars.ContextVar[EnrollmentWriteBatch | None] = contextvars.ContextVar(
    "certroll_enrollment_write_batch", default=None
)


def current_batch() -> EnrollmentWriteBatch | None:
    """The batch the running event belongs to (None: writes are made one by one)."""
    return _current.get()


@contextmanager
def open_batch() -> Iterator[EnrollmentWriteBatch]:
    batch = EnrollmentWriteBatch()
    token = _current.set(batch)
    try:
        yield batch
    finally:
        _current.reset(token)


BulkWrite = Callable[[Sequence[IndividualEnrollment]], Sequence[tuple[str, int]]]


def handle_batch(items: Sequence[T], handle: Callable[[T], R], bulk_write: BulkWrite) -> list[R]:
    """Handle ``items`` in two passes around the bulk calls (see the module docstring).

    ``handle`` handles one item and returns its outcome; it lets
    :class:`EnrollmentWriteWaits` through. ``bulk_write`` makes one bulk call and returns
    the refused items as (registration id, status). Returns the outcomes in item order."""
    outcomes: dict[int, R] = {}
    with open_batch() as batch:
        waiting: list[int] = []
        for index, item in enumerate(items):
            try:
                outcomes[index] = handle(item)
            except EnrollmentWriteWaits:
                waiting.append(index)
        batch.staging = False
        for call in batch.calls():
            refused = dict(bulk_write(call))
            for enrollment in call:
                rid = enrollment.registration_id
                if rid in refused:
                    batch.refused[rid] = refused[rid]
                else:
                    batch.landed[rid] = enrollment
        if batch.refused:
            logger.info(
                "bulk enrollment writes: %d landed, %d refused (written one by one): %s",
                len(batch.landed),
                len(batch.refused),
                ", ".join(f"{rid} {status}" for rid, status in sorted(batch.refused.items())),
            )
        for index in waiting:
            outcomes[index] = handle(items[index])
    return [outcomes[i] for i in range(len(items))]

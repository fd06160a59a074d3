"""The ETag-checked read-modify-write of one device's rotation record.

A use case reads the record, decides, does its side effects and saves the changes with
the ETag it read. When another writer got there first the save raises
:class:`ConcurrencyError` (``ConflictError`` when both created it), and the decision is
made again on a fresh read::

    for attempt in uow.attempts(device_id, "twin report"):
        with attempt as rec:
            return decide(rec)           # may call uow.save(rec, changes)
    raise uow.kept_changing(device_id, "twin report")

A caller that has just read the record passes it (``read=uow.read(device_id)``) so the
first attempt does not read again; its ETag makes a stale read a lost race like any
other.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from shared.domain.errors import ConcurrencyError, ConflictError
from shared.domain.model import RotationRecord
from shared.domain.rotation.transitions import apply
from shared.ports import Clock, RotationStateStore

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: re-reads after a lost race before giving up
MAX_ATTEMPTS = 6

#: how a port call is made (through the throttle retrier)
Call = Callable[..., Any]


@dataclass(frozen=True)
class RecordRead:
    """A record as it was just read; ``record`` None: the device has none."""

    record: RotationRecord | None


class RecordAttempt:
    """One try of a read-modify-write: ``with attempt as rec`` gives the record; a lost
    race inside the block ends it quietly so the loop tries again."""

    def __init__(self, record: RotationRecord | None, device_id: str, what: str) -> None:
        self._record = record
        self._device_id = device_id
        self._what = what
        self.lost_race = False

    def __enter__(self) -> RotationRecord | None:
        return self._record

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc_type is not None and issubclass(exc_type, ConcurrencyError | ConflictError):
            logger.info(
                "device %s: record changed during %s; deciding again", self._device_id, self._what
            )
            self.lost_race = True
            return True
        return False


class RecordUnitOfWork:
    """Reads and ETag-checked writes of rotation records, with the retry loop."""

    def __init__(self, store: RotationStateStore, clock: Clock, call: Call) -> None:
        self._store = store
        self._clock = clock
        self._call = call

    def get(self, device_id: str) -> RotationRecord | None:
        record: RotationRecord | None = self._call(self._store.get, device_id)
        return record

    def read(self, device_id: str) -> RecordRead:
        return RecordRead(self.get(device_id))

    def save(self, rec: RotationRecord, changes: dict[str, Any] | None = None) -> RotationRecord:
        """Write ``rec`` with ``changes`` (ETag-checked; created when ``rec.etag`` is None)."""
        new = apply(rec, changes or {})
        new.updated_at = self._clock.now()
        saved: RotationRecord = self._call(self._store.put, new)
        logger.info(
            "device %s request %s: %s -> %s",
            rec.device_id,
            saved.request_id,
            rec.state.value,
            saved.state.value,
        )
        return saved

    def attempts(
        self, device_id: str, what: str, *, read: RecordRead | None = None
    ) -> Iterator[RecordAttempt]:
        """Up to :data:`MAX_ATTEMPTS` tries, each on a fresh read (the first on ``read``)."""
        for _ in range(MAX_ATTEMPTS):
            record = read.record if read is not None else self.get(device_id)
            read = None
            yield RecordAttempt(record, device_id, what)

    def run(
        self,
        device_id: str,
        what: str,
        action: Callable[[RotationRecord | None], T],
        *,
        read: RecordRead | None = None,
    ) -> T:
        """``action`` on the current record, again on a fresh read after a lost race."""
        for attempt in self.attempts(device_id, what, read=read):
            with attempt as rec:
                return action(rec)
        raise self.kept_changing(device_id, what)

    @staticmethod
    def kept_changing(device_id: str, what: str) -> ConcurrencyError:
        return ConcurrencyError(f"{device_id}: the rotation record kept changing during {what}")

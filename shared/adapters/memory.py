"""In-memory implementations of the storage ports, for unit tests and quick local runs.

They keep the same semantics the Table/Blob/Queue adapters keep (idempotent ledger
writes, ETag checks, append-only audit) so one contract suite runs against both.
"""

from __future__ import annotations

import base64
import copy
import itertools
import json
import threading
import uuid
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from shared.domain.campaign import (
    OUTCOMES,
    PENDING,
    Campaign,
    CampaignState,
    EnrollmentPassProgress,
)
from shared.domain.errors import (
    ConcurrencyError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
)
from shared.domain.model import (
    AuditEvent,
    CertificateRecord,
    CertificateStatus,
    DomainEvent,
    IndividualEnrollment,
    RevocationReason,
    RotationRecord,
    RotationState,
    status_change_allowed,
)
from shared.ports import (
    AuditLog,
    CampaignStore,
    CertificateLedger,
    CrlPublisher,
    EventSink,
    RotationStateStore,
    WorkQueue,
)


class MemoryLedger(CertificateLedger):
    def __init__(self) -> None:
        self._by_serial: dict[str, CertificateRecord] = {}
        self._by_csr: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def find_by_csr(self, device_id: str, csr_sha256: str) -> CertificateRecord | None:
        serial = self._by_csr.get((device_id, csr_sha256))
        return copy.copy(self._by_serial[serial]) if serial else None

    def add(self, record: CertificateRecord) -> CertificateRecord:
        with self._lock:
            key = (record.device_id, record.csr_sha256)
            if key in self._by_csr:
                return copy.copy(self._by_serial[self._by_csr[key]])
            if record.serial in self._by_serial:
                raise ConflictError(f"serial {record.serial} already recorded")
            self._by_serial[record.serial] = copy.copy(record)
            self._by_csr[key] = record.serial
            return copy.copy(record)

    def get(self, serial: str) -> CertificateRecord:
        try:
            return copy.copy(self._by_serial[serial])
        except KeyError:
            raise NotFoundError(f"no certificate with serial {serial}") from None

    def find_by_thumbprint(self, thumbprint_sha256: str) -> CertificateRecord | None:
        for rec in self._by_serial.values():
            if rec.thumbprint_sha256 == thumbprint_sha256:
                return copy.copy(rec)
        return None

    def list_for_device(self, device_id: str) -> list[CertificateRecord]:
        recs = [copy.copy(r) for r in self._by_serial.values() if r.device_id == device_id]
        return sorted(recs, key=lambda r: r.issued_at)

    def set_status(
        self,
        serial: str,
        status: CertificateStatus,
        *,
        reason: RevocationReason | None = None,
        at: datetime | None = None,
    ) -> CertificateRecord:
        with self._lock:
            rec = self._by_serial.get(serial)
            if rec is None:
                raise NotFoundError(f"no certificate with serial {serial}")
            if not status_change_allowed(rec.status, CertificateStatus(status)):
                return copy.copy(rec)
            rec.status = status
            if status is CertificateStatus.REVOKED:
                rec.revoked_at = at or datetime.now(UTC)
                rec.revocation_reason = reason or RevocationReason.UNSPECIFIED
            return copy.copy(rec)

    def set_statuses(
        self,
        device_id: str,
        changes: Mapping[str, CertificateStatus],
        listed: Sequence[CertificateRecord] = (),
    ) -> dict[str, CertificateRecord]:
        wanted = {serial: CertificateStatus(status) for serial, status in changes.items()}
        if CertificateStatus.REVOKED in wanted.values():
            raise ValueError("set_statuses does not revoke; use set_status")
        with self._lock:
            for serial in wanted:
                rec = self._by_serial.get(serial)
                if rec is None or rec.device_id != device_id:
                    raise NotFoundError(f"device {device_id} has no certificate {serial}")
            out: dict[str, CertificateRecord] = {}
            for serial, status in wanted.items():
                rec = self._by_serial[serial]
                if status_change_allowed(rec.status, status):
                    rec.status = status
                out[serial] = copy.copy(rec)
            return out

    def list_revoked(self) -> Iterator[CertificateRecord]:
        revoked = [r for r in self._by_serial.values() if r.status is CertificateStatus.REVOKED]
        return iter([copy.copy(r) for r in revoked])

    def list_all(self) -> Iterator[CertificateRecord]:
        with self._lock:
            return iter([copy.copy(r) for r in self._by_serial.values()])


class MemoryRotationStore(RotationStateStore):
    def __init__(self) -> None:
        self._records: dict[str, RotationRecord] = {}
        self._lock = threading.Lock()

    def get(self, device_id: str) -> RotationRecord | None:
        rec = self._records.get(device_id)
        return copy.copy(rec) if rec else None

    def put(self, record: RotationRecord) -> RotationRecord:
        with self._lock:
            stored = self._records.get(record.device_id)
            if record.etag is None:
                if stored is not None:
                    raise ConflictError(f"rotation record for {record.device_id} exists")
            elif stored is None or stored.etag != record.etag:
                raise ConcurrencyError(f"rotation record for {record.device_id} changed")
            new = copy.copy(record)
            new.etag = uuid.uuid4().hex
            self._records[record.device_id] = new
            return copy.copy(new)

    def list(
        self,
        states: set[RotationState] | None = None,
        updated_before: datetime | None = None,
    ) -> Iterator[RotationRecord]:
        for rec in list(self._records.values()):
            if states is not None and rec.state not in states:
                continue
            if updated_before is not None and (
                rec.updated_at is None or rec.updated_at >= updated_before
            ):
                continue
            yield copy.copy(rec)


class MemoryAuditLog(AuditLog):
    def __init__(self) -> None:
        self._events: list[AuditEvent] = []
        self._lock = threading.Lock()

    def append(self, event: AuditEvent) -> None:
        stored = copy.deepcopy(event)
        # the table adapter stores detail as JSON: keep exactly what survives that
        stored.detail = json.loads(json.dumps(event.detail, default=str, sort_keys=True))
        if stored.at is None:
            stored.at = datetime.now(UTC)
        with self._lock:
            self._events.append(stored)

    def list(self, device_id: str | None = None, limit: int = 100) -> list[AuditEvent]:
        chosen = (e for e in reversed(self._events) if device_id in (None, e.device_id))
        return [copy.deepcopy(e) for e in itertools.islice(chosen, limit)]


class MemoryCrlPublisher(CrlPublisher):
    def __init__(self, base_url: str = "http://127.0.0.1:10000/devstoreaccount1/pki") -> None:
        self.base_url = base_url.rstrip("/")
        self.objects: dict[str, tuple[bytes, str]] = {}

    def publish(self, name: str, data: bytes, content_type: str) -> str:
        self.objects[name] = (data, content_type)
        return self.url_for(name)

    def url_for(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    def fetch(self, name: str) -> bytes:
        try:
            return self.objects[name][0]
        except KeyError:
            raise NotFoundError(f"{name} is not published") from None


class MemoryWorkQueue(WorkQueue):
    def __init__(self) -> None:
        self._messages: deque[dict[str, Any]] = deque()
        self._lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        # the storage queue carries base64(JSON): same limits, same round trip
        if not isinstance(message, dict):
            raise TypeError("a work message must be a dict")
        text = json.dumps(message, separators=(",", ":"), sort_keys=True)
        if len(base64.b64encode(text.encode("utf-8"))) > 64 * 1024:
            raise InvalidRequestError(
                "message_too_large", "work message exceeds the 64 KiB storage queue limit"
            )
        with self._lock:
            self._messages.append(json.loads(text))

    def receive(self, max_messages: int = 32) -> list[dict[str, Any]]:
        with self._lock:
            n = min(max_messages, len(self._messages))
            return [self._messages.popleft() for _ in range(n)]


class MemoryEventSink(EventSink):
    def __init__(self) -> None:
        self.events: list[DomainEvent] = []

    def publish(self, events: list[DomainEvent]) -> None:
        self.events.extend(events)


class MemoryCampaignStore(CampaignStore):
    """Campaign records in a dict, with the Table adapter's ETag semantics.

    ``backing``: the dict of another instance's records (``store.records``), so a new
    instance over it reads what an earlier one wrote, as a restarted process reads the
    table."""

    def __init__(
        self,
        backing: dict[str, Campaign] | None = None,
        devices: dict[tuple[str, str], str] | None = None,
    ) -> None:
        self.records: dict[str, Campaign] = {} if backing is None else backing
        self._campaigns = self.records
        #: (campaign id, device id) -> outcome; pass another instance's to share it
        self.devices: dict[tuple[str, str], str] = {} if devices is None else devices
        #: the enrollment query's pages, by (campaign id, registration id), and progress
        self.enrollments: dict[tuple[str, str], IndividualEnrollment] = {}
        self.passes: dict[str, EnrollmentPassProgress] = {}
        self._lock = threading.Lock()

    def add_devices(self, campaign_id: str, device_ids: Sequence[str]) -> int:
        new = 0
        with self._lock:
            for device_id in device_ids:
                if (campaign_id, device_id) not in self.devices:
                    self.devices[(campaign_id, device_id)] = PENDING
                    new += 1
        return new

    def device_outcome(self, campaign_id: str, device_id: str) -> str | None:
        return self.devices.get((campaign_id, device_id))

    def record_outcome(self, campaign_id: str, device_id: str, outcome: str) -> bool:
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        with self._lock:
            if self.devices.get((campaign_id, device_id)) != PENDING:
                return False
            self.devices[(campaign_id, device_id)] = outcome
            return True

    def count_outcomes(self, campaign_id: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for (cid, _), outcome in list(self.devices.items()):
            if cid == campaign_id:
                counts[outcome] = counts.get(outcome, 0) + 1
        return counts

    def put_enrollments(
        self,
        campaign_id: str,
        enrollments: Sequence[IndividualEnrollment],
        progress: EnrollmentPassProgress,
    ) -> None:
        with self._lock:
            for e in enrollments:
                self.enrollments[(campaign_id, e.registration_id)] = copy.deepcopy(e)
            self.passes[campaign_id] = progress

    def enrollment_pass(self, campaign_id: str) -> EnrollmentPassProgress | None:
        return self.passes.get(campaign_id)

    def enrollment(self, campaign_id: str, registration_id: str) -> IndividualEnrollment | None:
        found = self.enrollments.get((campaign_id, registration_id))
        return copy.deepcopy(found) if found is not None else None

    def get(self, campaign_id: str) -> Campaign:
        stored = self._campaigns.get(campaign_id)
        if stored is None:
            raise NotFoundError(f"campaign {campaign_id} not found")
        return copy.deepcopy(stored)

    def put(self, campaign: Campaign) -> Campaign:
        with self._lock:
            stored = self._campaigns.get(campaign.campaign_id)
            if campaign.etag is None:
                if stored is not None:
                    raise ConflictError(f"campaign {campaign.campaign_id} exists")
            elif stored is None or stored.etag != campaign.etag:
                raise ConcurrencyError(f"campaign {campaign.campaign_id} changed")
            new = copy.deepcopy(campaign)
            new.etag = uuid.uuid4().hex
            self._campaigns[campaign.campaign_id] = new
            return copy.deepcopy(new)

    def list(self, states: set[CampaignState] | None = None) -> list[Campaign]:
        found = [
            copy.deepcopy(c)
            for c in list(self._campaigns.values())
            if states is None or c.state in states
        ]
        found.sort(key=lambda c: (c.created_at, c.campaign_id), reverse=True)
        return found

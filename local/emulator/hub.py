"""The emulated IoT Hub, service side: implements :class:`shared.ports.DeviceRegistry`."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import re
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from local.emulator import limits
from local.emulator.core import Core, check_section_size, validate_patch
from local.emulator.jobs import JobRecord
from local.emulator.query import compile_condition, compile_query
from local.emulator.store import DeviceRecord, json_copy, merge_patch, new_etag, twin_etag
from shared.domain.errors import (
    ConcurrencyError,
    ConflictError,
    DeviceOfflineError,
    InvalidRequestError,
    JobQuotaExceededError,
    NotFoundError,
)
from shared.domain.model import (
    AuthType,
    DeviceIdentity,
    DeviceStatus,
    JobStatus,
    MethodResult,
    Page,
    Twin,
)
from shared.ports import DeviceRegistry

logger = logging.getLogger(__name__)

_DEVICE_ID = re.compile(r"[A-Za-z0-9\-:.+%_#*?!(),=@$']{1,128}")
_THUMBPRINT = re.compile(r"(?:[0-9A-Fa-f]{40}|[0-9A-Fa-f]{64})")
_METHOD_NAME = re.compile(r"[A-Za-z0-9_\-.$]{1,100}")
MAX_PAGE_SIZE = 1000  # hub queries return at most 1000 items per page
ACTIVE_JOB_STATES = frozenset({"queued", "scheduled", "running"})


def check_device_id(device_id: Any) -> str:
    if not isinstance(device_id, str) or not _DEVICE_ID.fullmatch(device_id):
        raise InvalidRequestError(
            "device_id_invalid",
            f"device id {device_id!r} must be 1-128 letters, digits or -:.+%_#*?!(),=@$'",
        )
    return device_id


#: Device fields the emulator models itself; every other field of a PUT body is the
#: operator's (``capabilities``, ``deviceScope``, ``parentScopes``...): stored as sent and
#: returned, and replaced by the next PUT, as the hub's replace semantics have it.
MODELLED_DEVICE_FIELDS = frozenset(
    {
        "deviceId",
        "etag",
        "status",
        "statusReason",
        "authentication",
        "generationId",
        "connectionState",
        "connectionStateUpdatedTime",
        "statusUpdatedTime",
        "lastActivityTime",
        "cloudToDeviceMessageCount",
    }
)


def operator_fields(document: Any) -> dict[str, Any] | None:
    """The fields of an identity document the emulator keeps as sent (None: none)."""
    if not isinstance(document, dict):
        return None
    kept = {k: json_copy(v) for k, v in document.items() if k not in MODELLED_DEVICE_FIELDS}
    return kept or None


def _identity_fields(identity: DeviceIdentity) -> dict[str, Any]:
    """The device record fields an identity write sets (validated; changes nothing)."""
    check_device_id(identity.device_id)
    primary = _check_thumbprint(identity.primary_thumbprint, "primary")
    secondary = _check_thumbprint(identity.secondary_thumbprint, "secondary")
    status = DeviceStatus(identity.status)
    auth = AuthType(identity.auth_type).value
    if auth == AuthType.SELF_SIGNED and primary is None and secondary is None:
        raise InvalidRequestError(
            "thumbprint_missing",
            "a selfSigned identity needs a primary or secondary thumbprint",
        )
    return {
        "status": status,
        "status_reason": identity.status_reason,
        "auth_type": auth,
        "primary_tp": primary,
        "secondary_tp": secondary,
        "document": operator_fields(identity.document),
    }


def _check_thumbprint(tp: str | None, slot: str) -> str | None:
    if tp is None:
        return None
    if not isinstance(tp, str) or not _THUMBPRINT.fullmatch(tp):
        raise InvalidRequestError(
            "thumbprint_invalid", f"{slot} thumbprint must be 40 or 64 hex digits"
        )
    return tp.lower()


def identity_of(d: DeviceRecord) -> DeviceIdentity:
    return DeviceIdentity(
        device_id=d.device_id,
        status=DeviceStatus(d.status),
        auth_type=AuthType(d.auth_type),
        primary_thumbprint=d.primary_tp,
        secondary_thumbprint=d.secondary_tp,
        status_reason=d.status_reason,
        connection_state=d.connection_state,
        etag=d.etag,
        document=json_copy(d.document) if d.document else None,
    )


def _encode_cont(index: int, query: str) -> str:
    raw = json.dumps({"i": index, "q": binascii.crc32(query.encode())})
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _decode_cont(token: str, query: str) -> int:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        index, qhash = int(data["i"]), int(data["q"])
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise InvalidRequestError(
            "continuation_invalid", "the continuation token is not valid"
        ) from exc
    if index < 0 or qhash != binascii.crc32(query.encode()):
        raise InvalidRequestError(
            "continuation_invalid", "the continuation token belongs to another query"
        )
    return index


# --------------------------------------------------------------------------- hub


class EmulatedHub(DeviceRegistry):
    """IoT Hub identities, twins, direct methods and jobs over the emulator's state."""

    def __init__(self, core: Core) -> None:
        self._core = core

    # -- identities -----------------------------------------------------------------

    def _get(self, device_id: str) -> DeviceRecord:
        d = self._core.devices.get(device_id)
        if d is None:
            raise NotFoundError(f"device {device_id} is not registered in the hub (404001)")
        return d

    def get_device(self, device_id: str) -> DeviceIdentity:
        self._core.run_due_jobs()
        with self._core.txn():
            self._core.limiter.take(limits.HUB_IDENTITY_OPS)
            return identity_of(self._get(device_id))

    def create_device(self, identity: DeviceIdentity) -> DeviceIdentity:
        fields = _identity_fields(identity)
        self._core.run_due_jobs()
        with self._core.txn() as post:
            self._core.limiter.take(limits.HUB_IDENTITY_OPS)
            if identity.device_id in self._core.devices:
                raise ConflictError(f"device {identity.device_id} already exists (409001)")
            d = self._core.add_device(identity.device_id)
            for name, value in fields.items():
                setattr(d, name, value)
            self._core.emit(
                post,
                "lifecycle",
                self._core.lifecycle_event("DeviceCreated", d, {"twin": self._core.twin_json(d)}),
            )
            return identity_of(d)

    def update_device(self, identity: DeviceIdentity) -> DeviceIdentity:
        fields = _identity_fields(identity)
        self._core.run_due_jobs()
        with self._core.txn() as post:
            self._core.limiter.take(limits.HUB_IDENTITY_OPS)
            d = self._get(identity.device_id)
            if identity.etag not in (None, "*") and identity.etag != d.etag:
                raise ConcurrencyError(
                    f"device {identity.device_id} changed since it was read (412002)"
                )
            for name, value in fields.items():
                setattr(d, name, value)
            d.etag = new_etag()
            if fields["status"] == DeviceStatus.DISABLED:
                self._core.drop_session(post, d)  # the hub closes a disabled device's link
            return identity_of(d)

    def list_devices(self, top: int = 1000) -> list[DeviceIdentity]:
        """Up to ``top`` identities (1-1000), in creation order: ``GET /devices``."""
        if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= 1000:
            raise InvalidRequestError("top_invalid", "top must be 1-1000")
        self._core.run_due_jobs()
        with self._core.txn():
            self._core.limiter.take(limits.HUB_IDENTITY_OPS)
            out: list[DeviceIdentity] = []
            for d in self._core.order:
                if d is not None:
                    out.append(identity_of(d))
                    if len(out) >= top:
                        break
            return out

    def delete_device(self, device_id: str, etag: str | None = None) -> None:
        """Delete an identity and its twin (If-Match on ``etag`` unless None or '*')."""
        self._core.run_due_jobs()
        with self._core.txn() as post:
            self._core.limiter.take(limits.HUB_IDENTITY_OPS)
            d = self._get(device_id)
            if etag not in (None, "*") and etag != d.etag:
                raise ConcurrencyError(f"device {device_id} changed since it was read (412002)")
            self._core.drop_session(post, d)
            del self._core.devices[device_id]
            self._core.order[d.index] = None

    # -- twins ------------------------------------------------------------------------

    def get_twin(self, device_id: str) -> Twin:
        self._core.run_due_jobs()
        with self._core.txn():
            self._core.limiter.take(limits.HUB_TWIN_READS)
            return self._core.twin_of(self._get(device_id))

    def patch_desired(self, device_id: str, patch: dict[str, Any], etag: str | None = None) -> Twin:
        validate_patch(patch, "desired patch")
        self._core.run_due_jobs()
        with self._core.txn() as post:
            self._core.limiter.take(limits.HUB_TWIN_UPDATES)
            d = self._get(device_id)
            if etag not in (None, "*") and etag != twin_etag(d.version):
                raise ConcurrencyError(f"twin of {device_id} changed since it was read (412)")
            merged = merge_patch(d.desired or {}, patch)
            check_section_size(merged, "desired patch")
            d.desired = merged
            d.desired_version += 1
            d.version += 1
            self._core.twin_change(post, d, "desired", json_copy(patch))
            session = d.session
            if session is not None:
                handler, sent, version = session.handler, json_copy(patch), d.desired_version
                post.append(lambda: handler.on_desired(sent, version))
            return self._core.twin_of(d)

    def update_tags(self, device_id: str, patch: dict[str, Any], etag: str | None = None) -> Twin:
        """Merge-patch the twin's tags (not part of the port; for tests and tools)."""
        validate_patch(patch, "tags patch")
        with self._core.txn():
            self._core.limiter.take(limits.HUB_TWIN_UPDATES)
            d = self._get(device_id)
            if etag not in (None, "*") and etag != twin_etag(d.version):
                raise ConcurrencyError(f"twin of {device_id} changed since it was read (412)")
            d.tags = merge_patch(d.tags or {}, patch)
            d.version += 1
            return self._core.twin_of(d)

    def query_twins(
        self, query: str, page_size: int = 1000, continuation: str | None = None
    ) -> Page[Twin]:
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
            raise InvalidRequestError("page_size_invalid", "page_size must be a positive integer")
        page_size = min(page_size, MAX_PAGE_SIZE)
        predicate = compile_query(query)
        start = 0 if continuation is None else _decode_cont(continuation, query)
        self._core.run_due_jobs()
        core = self._core
        with core.txn():
            core.limiter.take(limits.HUB_QUERIES)
            order = core.order
            end = len(order)
            items: list[Twin] = []
            i = start
            twin_of = core.twin_of
            while i < end:
                d = order[i]
                i += 1
                if d is not None and predicate(d):
                    items.append(twin_of(d))
                    if len(items) >= page_size:
                        break
            token = _encode_cont(i, query) if i < end else None
            return Page(items=items, continuation=token)

    def count(self, query: str = "SELECT * FROM devices") -> int:
        """How many devices match ``query`` (no throttling; for tests and tools)."""
        predicate = compile_query(query)
        with self._core.txn():
            return sum(1 for d in self._core.order if d is not None and predicate(d))

    # -- direct methods -----------------------------------------------------------------

    def invoke_method(
        self,
        device_id: str,
        method_name: str,
        payload: Any,
        connect_timeout: int = 10,
        response_timeout: int = 30,
    ) -> MethodResult:
        if not isinstance(method_name, str) or not _METHOD_NAME.fullmatch(method_name):
            raise InvalidRequestError("method_name_invalid", f"bad method name {method_name!r}")
        try:
            size = len(json.dumps(payload))
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError("payload_invalid", "the payload is not JSON") from exc
        if size > 128 * 1024:
            raise InvalidRequestError("payload_invalid", "the payload exceeds 128 KB")
        if not 5 <= response_timeout <= 300 or not 0 <= connect_timeout <= 300:
            raise InvalidRequestError(
                "timeout_invalid", "responseTimeout must be 5-300 s and connectTimeout 0-300 s"
            )
        self._core.run_due_jobs()
        with self._core.txn():
            metered = max(1, math.ceil(size / 4096))  # direct methods are metered in 4 KB units
            bucket = self._core.limiter.buckets[limits.HUB_DIRECT_METHODS]
            self._core.limiter.take(limits.HUB_DIRECT_METHODS, min(metered, bucket.capacity))
            d = self._get(device_id)
            session = d.session
            if session is None:
                raise DeviceOfflineError(f"device {device_id} is not online (404103)")
            handler = session.handler
        try:
            status, answer = handler.on_method(method_name, json_copy(payload))
        except Exception as exc:
            logger.exception("device %s failed method %s", device_id, method_name)
            raise DeviceOfflineError(
                f"device {device_id} did not answer {method_name} (504101 timeout)"
            ) from exc
        return MethodResult(int(status), json_copy(answer))

    # -- jobs ----------------------------------------------------------------------------

    def schedule_method_job(
        self,
        job_id: str,
        query_condition: str,
        method_name: str,
        payload: Any,
        start_time: datetime | None = None,
        max_execution_seconds: int = 3600,
    ) -> JobStatus:
        if not isinstance(job_id, str) or not re.match(r"^[A-Za-z0-9\-_.]{1,128}$", job_id):
            raise InvalidRequestError("job_id_invalid", f"bad job id {job_id!r}")
        if not isinstance(method_name, str) or not _METHOD_NAME.fullmatch(method_name):
            raise InvalidRequestError("method_name_invalid", f"bad method name {method_name!r}")
        if max_execution_seconds < 1:
            raise InvalidRequestError("job_invalid", "max_execution_seconds must be positive")
        if start_time is not None and start_time.tzinfo is None:
            raise InvalidRequestError("job_invalid", "start_time must be timezone-aware")
        predicate = compile_condition(query_condition)
        try:
            json.dumps(payload)
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError("payload_invalid", "the payload is not JSON") from exc
        self._core.run_due_jobs()  # a finished job no longer counts against the tier
        with self._core.txn():
            self._core.limiter.take(limits.HUB_JOB_OPS)
            if job_id in self._core.jobs:
                raise ConflictError(f"job {job_id} already exists")
            limiter = self._core.limiter
            if limiter.enabled:
                active = sum(1 for j in self._core.jobs.values() if j.status in ACTIVE_JOB_STATES)
                if active >= limiter.max_concurrent_jobs:
                    if limiter.max_concurrent_jobs == 0:
                        raise InvalidRequestError(
                            "jobs_unavailable", f"a {limiter.tier} hub has no jobs (basic tier)"
                        )
                    raise JobQuotaExceededError(
                        f"the hub runs {active} job(s), the most a {limiter.tier} hub allows "
                        "(429004 ThrottlingMaxActiveJobCountExceeded)",
                        retry_after=self._job_wait(),
                    )
            now = self._core.now()
            start = start_time or now
            job = JobRecord(
                job_id=job_id,
                condition=query_condition,
                predicate=predicate,
                method_name=method_name,
                payload=json_copy(payload),
                start_time=start,
                deadline=start + timedelta(seconds=max_execution_seconds),
                status="queued" if start <= now else "scheduled",
            )
            self._core.jobs[job_id] = job
            view = job.view()
        return view

    def _job_wait(self) -> float:
        """Seconds until the first active job must end (its deadline), at least 1."""
        now = self._core.now()
        deadlines = [
            (j.deadline - now).total_seconds()
            for j in self._core.jobs.values()
            if j.status in ACTIVE_JOB_STATES
        ]
        return max(1.0, min(deadlines, default=1.0))

    def list_jobs(self) -> list[JobStatus]:
        """Every job the hub keeps, in creation order (one jobs operation)."""
        self._core.run_due_jobs()
        with self._core.txn():
            self._core.limiter.take(limits.HUB_JOB_OPS)
            return [j.view() for j in self._core.jobs.values()]

    def active_jobs(self) -> list[JobStatus]:
        """Jobs that count against the tier's concurrent-job limit (queued, scheduled,
        running), in creation order."""
        return [j for j in self.list_jobs() if j.status in ACTIVE_JOB_STATES]

    def max_concurrent_jobs(self) -> int:
        """The tier's concurrent-job limit (not part of the port)."""
        return self._core.limiter.max_concurrent_jobs

    def get_job(self, job_id: str) -> JobStatus:
        self._core.run_due_jobs()
        with self._core.txn():
            self._core.limiter.take(limits.HUB_JOB_OPS)
            job = self._core.jobs.get(job_id)
            if job is None:
                raise NotFoundError(f"job {job_id} does not exist")
            return job.view()

    def job_results(self, job_id: str) -> dict[str, MethodResult | None]:
        """Per-device outcome of a job (None: offline or no answer)."""
        with self._core.txn():
            job = self._core.jobs.get(job_id)
            if job is None:
                raise NotFoundError(f"job {job_id} does not exist")
            return dict(job.results)

    def run_due_jobs(self) -> int:
        return self._core.run_due_jobs()

    # -- bulk load ----------------------------------------------------------------------

    def bulk_load(self, rows: Iterable[tuple[str, str | None, dict[str, Any] | None]]) -> int:
        """Add many devices directly (no limits, no events): rows of
        ``(device_id, primary_thumbprint, reported)``. The reported dicts are stored as
        given (not copied): do not change them afterwards. Returns the count added."""
        n = 0
        with self._core.txn():
            devices = self._core.devices
            for device_id, thumbprint, reported in rows:
                if device_id in devices:
                    raise ConflictError(f"device {device_id} already exists")
                d = self._core.add_device(device_id)
                d.primary_tp = thumbprint
                d.set_reported(reported)
                n += 1
        return n

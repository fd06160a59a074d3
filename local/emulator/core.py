"""Shared state of the fleet emulator: one lock, the clock, limits, events, and the
device-side session objects.

Every public operation runs as a transaction (:meth:`Core.txn`): state changes happen
under the one lock; event subscribers and device handlers run after the lock is
released, so a handler that calls back into the emulator cannot deadlock it.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from cryptography import x509

from local.emulator import events as topics
from local.emulator.events import Event, EventBus, Merger
from local.emulator.jobs import JobRecord, run_jobs
from local.emulator.limits import Limiter
from local.emulator.store import (
    DeviceRecord,
    StoredCert,
    copy_two_level,
    json_copy,
    merge_patch,
    twin_etag,
)
from shared.domain.errors import InvalidRequestError, ServiceError
from shared.domain.model import Twin
from shared.ports import Clock

logger = logging.getLogger(__name__)

Post = list[Callable[[], None]]

SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
RESOURCE_GROUP = "certroll-local"


# --------------------------------------------------------------------------- errors


class RegistrationError(ServiceError):
    """A DPS device registration failed (``status`` is the HTTP status, ``error_code``
    the DPS error code, e.g. 401002 unauthorized, 429001 throttled)."""

    def __init__(
        self,
        status: int,
        error_code: int,
        message: str,
        *,
        registration_status: str = "failed",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{error_code}: {message}", status)
        self.error_code = error_code
        self.message = message
        self.registration_status = registration_status
        self.retry_after = retry_after


class HubConnectError(ServiceError):
    """The hub refused a device connection (``code`` 401003 IoTHubUnauthorized,
    403012 DeviceDisabled, 429001 throttled)."""

    def __init__(self, code: int, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(f"{code}: {message}", code // 1000)
        self.code = code
        self.message = message
        self.retry_after = retry_after


# --------------------------------------------------------------------------- device side


class DeviceHandler(Protocol):
    """What a connected device does when the hub calls it.

    Implementations must not call back into the emulator synchronously: record the work
    and do it in the device's own step.
    """

    def on_desired(self, patch: dict[str, Any], version: int) -> None: ...

    def on_method(self, name: str, payload: Any) -> tuple[int, Any]: ...


@dataclass(frozen=True)
class RegistrationResult:
    """The outcome of a successful DPS registration (``status`` is ``assigned``)."""

    registration_id: str
    status: str
    assigned_hub: str
    device_id: str
    substatus: str  # initialAssignment | reprovisionedToInitialAssignment | deviceDataReset
    etag: str
    last_updated: datetime
    enrollment: str = ""  # "individual:<id>" or "group:<id>"


class DeviceSession:
    """A device's live connection to the emulated hub."""

    def __init__(self, core: Core, device_id: str, handler: DeviceHandler, thumbprint: str):
        self._core = core
        self.device_id = device_id
        self.handler = handler
        self.thumbprint = thumbprint  # SHA-256 of the certificate the device connected with
        self.connected = True
        self.active = False  # subscribed to C2D or sent telemetry

    def report(self, patch: dict[str, Any]) -> int:
        """Merge-patch the reported properties; returns the new reported ``$version``."""
        return self._core.report(self, patch)

    def get_twin(self) -> Twin:
        return self._core.session_twin(self)

    def disconnect(self) -> None:
        self._core.disconnect(self)

    def subscribe_c2d(self) -> None:
        """The device subscribes to cloud-to-device messages. IoT Hub reports a
        connection through Event Grid only once the device has done this or sent
        telemetry (iot-hub-event-grid.md); the ``snapshot`` mode models that."""
        self._core.session_active(self)

    def send_telemetry(self, body: Any = None) -> None:
        """A device-to-cloud message (not routed anywhere by the emulator); it makes the
        connection reportable like :meth:`subscribe_c2d`."""
        self._core.session_active(self)

    def __repr__(self) -> str:
        return f"DeviceSession({self.device_id!r}, connected={self.connected})"


# --------------------------------------------------------------------------- helpers


def iso(t: datetime) -> str:
    """ISO-8601 UTC with 7 fractional digits and Z, as IoT Hub writes times."""
    t = t.astimezone(UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond:06d}0Z"


_KEY_FORBIDDEN = set(".$ ")
#: IoT Hub twin limits (iot-hub-devguide-device-twins.md): each string value at most
#: 4 KB; tags, desired and reported properties at most 32 KB each
TWIN_STRING_MAX_BYTES = 4 * 1024
TWIN_SECTION_MAX_BYTES = 32 * 1024


def check_section_size(section: dict[str, Any], what: str) -> None:
    """A twin section (after a patch is merged) within 32 KB; read-only ``$`` members
    (``$version``, ``$metadata``) do not count."""
    counted = {k: v for k, v in section.items() if not k.startswith("$")}
    size = len(json.dumps(counted, separators=(",", ":")).encode("utf-8"))
    if size > TWIN_SECTION_MAX_BYTES:
        raise InvalidRequestError(
            "patch_invalid", f"{what} would make the section {size} bytes; at most 32 KB"
        )


def validate_patch(patch: Any, what: str) -> dict[str, Any]:
    """A JSON object with twin-legal keys; InvalidRequestError otherwise."""
    if not isinstance(patch, dict):
        raise InvalidRequestError("patch_invalid", f"{what} must be a JSON object")

    def check(value: Any, depth: int) -> None:
        if depth > 10:
            raise InvalidRequestError("patch_invalid", f"{what} nests deeper than 10 levels")
        if isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, str) or not k or len(k) > 1024:
                    raise InvalidRequestError("patch_invalid", f"{what}: bad key {k!r}")
                if _KEY_FORBIDDEN & set(k) or any(ord(c) < 32 for c in k):
                    raise InvalidRequestError(
                        "patch_invalid", f"{what}: key {k!r} contains '.', '$', space or a control"
                    )
                check(v, depth + 1)
        elif isinstance(value, list):
            for v in value:
                check(v, depth + 1)
        elif isinstance(value, str) and len(value.encode("utf-8")) > TWIN_STRING_MAX_BYTES:
            raise InvalidRequestError(
                "patch_invalid", f"{what}: a string value exceeds 4 KB ({len(value)} characters)"
            )
        elif value is not None and not isinstance(value, str | int | float | bool):
            raise InvalidRequestError(
                "patch_invalid", f"{what}: {type(value).__name__} is not a JSON value"
            )

    check(patch, 0)
    try:
        size = len(json.dumps(patch))
    except (TypeError, ValueError) as exc:  # pragma: no cover - check() catches these
        raise InvalidRequestError("patch_invalid", f"{what} is not JSON") from exc
    if size > 32 * 1024:
        raise InvalidRequestError("patch_invalid", f"{what} exceeds 32 KB")
    return patch


def strip_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: strip_nulls(v) for k, v in value.items() if v is not None}
    return value


def merge_twin_events(old: Event, new: Event) -> Event:
    """Coalesce two undrained twin-change notifications of one device into one."""
    merged: Event = json.loads(json.dumps(new))
    old_props = old["body"]["properties"]
    new_props = merged["body"]["properties"]
    for section in ("reported", "desired"):
        if section in old_props or section in new_props:
            base = {k: v for k, v in old_props.get(section, {}).items() if k != "$version"}
            patch = {k: v for k, v in new_props.get(section, {}).items() if k != "$version"}
            combined = _merge_keep_nulls(base, patch)
            version = new_props.get(section, old_props.get(section, {})).get("$version")
            combined["$version"] = version
            new_props[section] = combined
    return merged


def _merge_keep_nulls(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge_keep_nulls(out[k], v)
        else:
            out[k] = v
    return out


# --------------------------------------------------------------------------- core


@dataclass
class EnrollmentRecord:
    """An enrollment as stored: the info-only view plus the slot certificates."""

    view: Any  # IndividualEnrollment | EnrollmentGroup with info-only slots
    primary: StoredCert | None = None
    secondary: StoredCert | None = None
    created: datetime | None = None


@dataclass
class Core:
    clock: Clock
    limiter: Limiter
    bus: EventBus
    hub_host: str
    id_scope: str
    is_revoked: Callable[[x509.Certificate], bool] | None = None
    coalesce: bool = False
    #: "immediate": DeviceConnected/Disconnected at each connect and disconnect.
    #: "snapshot": as IoT Hub documents them (iot-hub-event-grid.md, "Limitations for
    #: device connected and device disconnected events"): a connection is reported only
    #: once the device subscribed to cloud-to-device messages or sent telemetry, and state
    #: is published as a periodic snapshot (``snapshot_seconds``), so events come late,
    #: and a connect and disconnect within one period are not reported at all.
    connection_events: str = "immediate"
    snapshot_seconds: float = 60.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    # DPS
    individuals: dict[str, EnrollmentRecord] = field(default_factory=dict)
    groups: dict[str, EnrollmentRecord] = field(default_factory=dict)
    registrations: dict[str, Any] = field(default_factory=dict)  # id -> RegistrationState
    # registration id -> the enrollment that admitted it ("individual:<id>" | "group:<id>")
    registration_sources: dict[str, str] = field(default_factory=dict)
    verified_cas: dict[str, StoredCert] = field(default_factory=dict)  # in DPS and hub
    # name -> CaCertificateRecord (local/emulator/certificates.py), per service
    dps_certificates: dict[str, Any] = field(default_factory=dict)
    hub_certificates: dict[str, Any] = field(default_factory=dict)
    # hub
    devices: dict[str, DeviceRecord] = field(default_factory=dict)
    order: list[DeviceRecord | None] = field(default_factory=list)
    jobs: dict[str, JobRecord] = field(default_factory=dict)
    _local: threading.local = field(default_factory=threading.local)
    # snapshot mode: devices whose connection state changed since the last snapshot, the
    # state last published per device, and when the next snapshot is due
    _snap_dirty: dict[str, DeviceRecord] = field(default_factory=dict)
    _snap_published: dict[str, bool] = field(default_factory=dict)
    _snap_next: datetime | None = None

    def verified_ca(self, service: str, name: str) -> StoredCert | None:
        """The CA certificate ``name`` if ``service`` (dps | hub) holds it verified."""
        found = self.verified_cas.get(name)
        if found is not None:
            return found
        rec = getattr(self, f"{service}_certificates").get(name)
        return rec.cert if rec is not None and rec.verified else None

    def verified_anchors(self, service: str) -> list[x509.Certificate]:
        """Every CA certificate ``service`` holds verified."""
        anchors = [c.cert for c in self.verified_cas.values()]
        table = getattr(self, f"{service}_certificates")
        anchors.extend(r.cert.cert for r in table.values() if r.verified)
        return anchors

    @property
    def hub_name(self) -> str:
        return self.hub_host.split(".", 1)[0]

    @property
    def hub_resource_id(self) -> str:
        return (
            f"/SUBSCRIPTIONS/{SUBSCRIPTION}/RESOURCEGROUPS/{RESOURCE_GROUP}/PROVIDERS/"
            f"MICROSOFT.DEVICES/IOTHUBS/{self.hub_name}"
        ).upper()

    def now(self) -> datetime:
        return self.clock.now()

    @contextmanager
    def txn(self) -> Iterator[Post]:
        """Hold the lock for the body; afterwards (also on error) run the queued calls."""
        post: Post = []
        try:
            with self.lock:
                yield post
        finally:
            for fn in post:
                try:
                    fn()
                except Exception:
                    logger.exception("callback after an emulator operation failed")

    def emit(
        self,
        post: Post,
        topic: str,
        event: Event,
        *,
        key: str | None = None,
        merge: Merger | None = None,
    ) -> None:
        queued = self.bus.append(topic, event, key=key, merge=merge)
        post.append(lambda: self.bus.notify(topic, queued))

    # -- hub records --------------------------------------------------------------

    def add_device(self, device_id: str) -> DeviceRecord:
        """A new device record (lock held; the caller checked it is absent)."""
        d = DeviceRecord(device_id, len(self.order))
        self.devices[device_id] = d
        self.order.append(d)
        return d

    def twin_of(self, d: DeviceRecord) -> Twin:
        # positional for speed: device_id, desired, reported, desired_version,
        # reported_version, tags, status, connection_state, etag
        return Twin(
            d.device_id,
            json_copy(d.desired) if d.desired else {},
            (copy_two_level(r) if d.reported_flat else json_copy(r)) if (r := d.reported) else {},
            d.desired_version,
            d.reported_version,
            json_copy(d.tags) if d.tags else {},
            d.status,
            d.connection_state,
            twin_etag(d.version),
        )

    def twin_json(self, d: DeviceRecord) -> dict[str, Any]:
        """The twin in the service's JSON shape (used in DeviceCreated events)."""
        return {
            "deviceId": d.device_id,
            "etag": twin_etag(d.version),
            "deviceEtag": d.etag,
            "status": d.status,
            "connectionState": d.connection_state,
            "authenticationType": d.auth_type,
            "x509Thumbprint": {
                "primaryThumbprint": d.primary_tp,
                "secondaryThumbprint": d.secondary_tp,
            },
            "version": d.version,
            "properties": {
                "desired": {**(d.desired or {}), "$version": d.desired_version},
                "reported": {**(d.reported or {}), "$version": d.reported_version},
            },
        }

    def lifecycle_event(self, event_type: str, d: DeviceRecord, data: dict[str, Any]) -> Event:
        return {
            "id": str(uuid.uuid4()),
            "topic": self.hub_resource_id,
            "subject": f"devices/{d.device_id}",
            "eventType": f"Microsoft.Devices.{event_type}",
            "eventTime": iso(self.now()),
            "data": {"deviceId": d.device_id, "moduleId": "", "hubName": self.hub_name, **data},
            "dataVersion": "",
            "metadataVersion": "1",
        }

    def connection_event(self, post: Post, event_type: str, d: DeviceRecord) -> None:
        if self.connection_events == "snapshot":
            self._snap_dirty[d.device_id] = d
            if self._snap_next is None:
                self._snap_next = self._snapshot_after(self.now())
            return
        self._publish_connection(post, event_type, d)

    def _snapshot_after(self, moment: datetime) -> datetime:
        period = self.snapshot_seconds
        epoch = moment.timestamp()
        return datetime.fromtimestamp((epoch // period + 1) * period, UTC)

    def session_active(self, s: DeviceSession) -> None:
        """The session subscribed to C2D or sent telemetry (snapshot mode reports it)."""
        with self.txn():
            d = self._live(s)
            if not s.active:
                s.active = True
                if self.connection_events == "snapshot":
                    self._snap_dirty[d.device_id] = d
                    if self._snap_next is None:
                        self._snap_next = self._snapshot_after(self.now())

    def publish_snapshots(self) -> int:
        """Snapshot mode: at each due period boundary, publish the connection state of
        the devices whose state changed (only what differs from the last published
        state); returns how many events were published."""
        if self.connection_events != "snapshot":
            return 0
        published = 0
        with self.txn() as post:
            now = self.now()
            if self._snap_next is None or now < self._snap_next:
                return 0
            for device_id, d in list(self._snap_dirty.items()):
                s = d.session
                connected = s is not None and s.connected and s.active
                if connected == self._snap_published.get(device_id, False):
                    continue
                self._snap_published[device_id] = connected
                kind = "DeviceConnected" if connected else "DeviceDisconnected"
                self._publish_connection(post, kind, d)
                published += 1
            self._snap_dirty.clear()
            self._snap_next = None
        return published

    def _publish_connection(self, post: Post, event_type: str, d: DeviceRecord) -> None:
        d.conn_seq += 1
        seq = f"{d.generation:032X}{d.conn_seq:032X}"
        self.emit(
            post,
            topics.LIFECYCLE,
            self.lifecycle_event(
                event_type, d, {"deviceConnectionStateEventInfo": {"sequenceNumber": seq}}
            ),
        )

    def twin_change(self, post: Post, d: DeviceRecord, section: str, patch: dict[str, Any]) -> None:
        version = d.reported_version if section == "reported" else d.desired_version
        now = iso(self.now())
        event: Event = {
            "body": {
                "version": d.version,
                "properties": {section: {**patch, "$version": version}},
            },
            "properties": {
                "hubName": self.hub_name,
                "deviceId": d.device_id,
                "operationTimestamp": now,
                "iothub-message-schema": "twinChangeNotification",
                "opType": "updateTwin",
            },
            "systemProperties": {
                "iothub-connection-device-id": d.device_id,
                "iothub-message-source": "twinChangeEvents",
                "iothub-enqueuedtime": now,
            },
        }
        if self.coalesce:
            self.emit(post, topics.TWIN_CHANGES, event, key=d.device_id, merge=merge_twin_events)
        else:
            self.emit(post, topics.TWIN_CHANGES, event)

    def drop_session(self, post: Post, d: DeviceRecord) -> None:
        """Close the device's current session, if any (lock held)."""
        s = d.session
        if s is None:
            return
        s.connected = False
        d.session = None
        d.connection_state = "Disconnected"
        self.connection_event(post, "DeviceDisconnected", d)

    # -- session operations ---------------------------------------------------------

    def _live(self, s: DeviceSession) -> DeviceRecord:
        from shared.domain.errors import DeviceOfflineError

        d = self.devices.get(s.device_id)
        if not s.connected or d is None or d.session is not s:
            s.connected = False
            raise DeviceOfflineError(f"the session of {s.device_id} is closed; connect again")
        return d

    def report(self, s: DeviceSession, patch: dict[str, Any]) -> int:
        from local.emulator import limits

        validate_patch(patch, "reported patch")
        self.run_due_jobs()
        with self.txn() as post:
            d = self._live(s)
            self.limiter.take(limits.HUB_TWIN_UPDATES)
            merged = merge_patch(d.reported or {}, patch)
            check_section_size(merged, "reported patch")
            d.set_reported(merged)
            d.reported_version += 1
            d.version += 1
            self.twin_change(post, d, "reported", json_copy(patch))
            return d.reported_version

    def session_twin(self, s: DeviceSession) -> Twin:
        from local.emulator import limits

        with self.txn():
            d = self._live(s)
            self.limiter.take(limits.HUB_TWIN_READS)
            return self.twin_of(d)

    def disconnect(self, s: DeviceSession) -> None:
        with self.txn() as post:
            d = self.devices.get(s.device_id)
            if d is not None and d.session is s:
                self.drop_session(post, d)
            s.connected = False

    # -- jobs -----------------------------------------------------------------------

    def run_due_jobs(self) -> int:
        """Run the due work of scheduled method jobs (and, in snapshot mode, publish a due
        connection-state snapshot); returns the device calls made."""
        if self.connection_events == "snapshot" and not getattr(self._local, "in_jobs", False):
            self.publish_snapshots()
        if not self.jobs or getattr(self._local, "in_jobs", False):
            return 0
        self._local.in_jobs = True
        try:
            return run_jobs(self)
        finally:
            self._local.in_jobs = False

"""The reference device agent: what a well-behaved device does with certroll's contract.

One :class:`DeviceAgent` is one device. It holds its key and certificate chain, talks to
the fleet emulator's device side (DPS registration, hub connection, twin, direct
methods) and follows docs/device-contract.md:

- desired ``x509.renewal`` -> fresh key on the device, CSR (CN = device id) reported as
  ``x509.csr``;
- desired ``x509.issued`` -> the chain is checked (key, CN, chain to the trust anchor,
  validity) and staged, or refused with ``renewal.status = failed``;
- direct method ``reprovision`` -> register through DPS with the staged certificate,
  reconnect, report it; if that fails, go back to the old key and certificate and
  report the failure (rollback);
- 401 at connect -> reprovision by itself with the newest certificate it has, falling
  back to the old one.

Callbacks from the hub (:meth:`on_desired`, :meth:`on_method`) only record work; the
work is done in :meth:`step`, so the emulator is never re-entered from a callback and
thousands of agents can be driven from one thread.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from local.device import contract
from local.device.contract import (
    SECTION,
    ContractError,
    DeviceKey,
    IssuedDelivery,
    RenewalRequest,
)
from shared.domain.errors import CertrollError, ThrottledError
from shared.domain.model import Twin
from shared.ports import Clock

logger = logging.getLogger(__name__)

#: Backoff after a failed (re)connect or self-reprovision: first, factor, cap (seconds).
#: Each wait is stretched by a random 0-25 % so a fleet refused at once does not come back
#: at once.
RETRY_FIRST_SECONDS = 30.0
RETRY_FACTOR = 2.0
RETRY_CAP_SECONDS = 3600.0
RETRY_JITTER = 0.25
#: After a 429 the device waits Retry-After plus a random share of a window that doubles
#: with each consecutive 429 (from 1 s up to this cap), so throttled devices spread out.
THROTTLE_WINDOW_CAP_SECONDS = 120.0
#: ``renewal.error`` is cut to this length (the schema allows 1024).
MAX_ERROR_CHARS = 1000


# --------------------------------------------------------------------------- what the agent needs


class RegistrationResultLike(Protocol):
    @property
    def status(self) -> str: ...

    @property
    def device_id(self) -> str: ...


class SessionLike(Protocol):
    @property
    def connected(self) -> bool: ...

    def report(self, patch: dict[str, Any]) -> int: ...

    def get_twin(self) -> Twin: ...

    def disconnect(self) -> None: ...

    def subscribe_c2d(self) -> None: ...


class FleetLike(Protocol):
    """The device side of the fleet emulator (``local.emulator.FleetEmulator``)."""

    clock: Clock

    def register(
        self, registration_id: str, chain: Sequence[x509.Certificate]
    ) -> RegistrationResultLike: ...

    def connect(
        self, device_id: str, chain: Sequence[x509.Certificate], handler: Any
    ) -> SessionLike: ...


# --------------------------------------------------------------------------- timeline


@dataclass
class CertificateUse:
    """One certificate the device connected with, from first connection until replaced."""

    thumbprint: str
    serial: str
    not_after: datetime
    first_used_at: datetime
    until: datetime | None = None


@dataclass
class DeviceTimeline:
    """What happened to one device's connectivity and certificates.

    A *gap* is time the device wanted a hub connection and had none (rotations, 401s,
    refused certificates); time spent deliberately offline is counted apart.
    """

    first_connected_at: datetime | None = None
    last_connected_at: datetime | None = None
    gap_started_at: datetime | None = None
    max_gap_seconds: float = 0.0
    offline_seconds: float = 0.0
    offline_since: datetime | None = None
    certificates: list[CertificateUse] = field(default_factory=list)
    connect_failures: int = 0
    last_connect_failure: int | None = None
    #: every refusal: (when, refused thumbprint, HTTP status, a session was up meanwhile)
    refusals: list[tuple[datetime, str, int | None, bool]] = field(default_factory=list)
    registrations: int = 0
    csrs_made: int = 0
    renewals_installed: int = 0
    renewals_failed: int = 0
    self_reprovisions: int = 0

    def gap_seconds(self, now: datetime) -> float:
        """The longest gap so far, counting a gap still open at ``now``."""
        if self.gap_started_at is None:
            return self.max_gap_seconds
        return max(self.max_gap_seconds, (now - self.gap_started_at).total_seconds())


# --------------------------------------------------------------------------- agent state


@dataclass
class _PendingCsr:
    request_id: str
    key: DeviceKey
    csr_pem: str


@dataclass
class _Staged:
    request_id: str
    key: DeviceKey
    chain: list[x509.Certificate]
    #: DPS accepted it (the hub connect was throttled): the hub identity names it now
    registered: bool = False


@dataclass
class _Attempt:
    ok: bool
    code: str | None = None  # contract error code on failure
    error: str | None = None
    throttled_for: float | None = None
    status: int | None = None  # 401003, 403012, 401, ... when the service gave one
    registered: bool = False  # the DPS registration succeeded


class DeviceAgent:
    """One device (implements the emulator's ``DeviceHandler``)."""

    def __init__(
        self,
        device_id: str,
        emulator: FleetLike,
        key: DeviceKey,
        chain: list[x509.Certificate],
        trust_anchor: x509.Certificate,
        *,
        key_algorithm: str = contract.DEFAULT_KEY_ALGORITHM,
        answer_delay: timedelta = timedelta(0),
        on_work: Callable[[DeviceAgent], None] | None = None,
    ) -> None:
        if not chain:
            raise ValueError("chain must hold at least the device certificate")
        if contract.common_name(chain[0].subject) != device_id:
            raise ValueError(f"the certificate's CN is not the device id {device_id!r}")
        if key_algorithm not in contract.KEY_ALGORITHMS:
            raise ValueError(f"unknown key algorithm {key_algorithm!r}")
        self.device_id = device_id
        self.registration_id = device_id
        self.emulator = emulator
        self.clock = emulator.clock
        self.trust_anchor = trust_anchor
        self.key_algorithm = key_algorithm
        self.answer_delay = answer_delay
        self.on_work = on_work
        self.timeline = DeviceTimeline()
        #: how far the device's wall clock is off; it judges certificate validity by it
        #: (its timers run on the shared clock, as a device's monotonic timers would)
        self.clock_skew = timedelta(0)

        self._key: DeviceKey = key
        self._chain: list[x509.Certificate] = list(chain)
        self._session: SessionLike | None = None
        self._offline = False
        self._started = False
        self._registered = False
        self._retry_at: datetime | None = None
        self._backoff = RETRY_FIRST_SECONDS
        self._throttled_in_a_row = 0
        self._rng = random.Random(device_id)

        self._lock = threading.Lock()
        self._inbox_desired: list[tuple[dict[str, Any], int]] = []
        self._inbox_methods: list[str] = []

        self._desired: dict[str, Any] = {}
        self._desired_dirty = False
        self._renewal_due: tuple[RenewalRequest, datetime] | None = None
        self._pending: _PendingCsr | None = None
        self._staged: _Staged | None = None
        self._finished: dict[str, str] = {}  # request id -> "installed" | "failed"
        self._seen_deliveries: set[tuple[str, str]] = set()
        self._reprovision_wanted: list[str] = []
        self._outbox: dict[str, Any] = {}
        self._reported_thumbprint: str | None = None
        self._twin_read_needed = False
        self._twin_read_at: datetime | None = None
        self._flush_at: datetime | None = None

    # ----------------------------------------------------------------- read-only views

    @property
    def certificate(self) -> x509.Certificate:
        """The certificate the device uses now."""
        return self._chain[0]

    @property
    def chain(self) -> list[x509.Certificate]:
        return list(self._chain)

    @property
    def connected(self) -> bool:
        return self._session is not None and self._session.connected

    @property
    def offline(self) -> bool:
        return self._offline

    @property
    def pending_request_id(self) -> str | None:
        return self._pending.request_id if self._pending else None

    @property
    def staged_request_id(self) -> str | None:
        return self._staged.request_id if self._staged else None

    def public_key_der(self) -> bytes:
        """The current public key (SubjectPublicKeyInfo DER); the private key stays here."""
        return self._key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)

    def renewal_outcome(self, request_id: str) -> str | None:
        """How ``request_id`` ended here: "installed", "failed", or None (running/unknown)."""
        return self._finished.get(request_id)

    # ----------------------------------------------------------------- DeviceHandler

    def on_desired(self, patch: dict[str, Any], version: int) -> None:
        """Record a desired-properties patch; the work happens in :meth:`step`."""
        with self._lock:
            self._inbox_desired.append((patch, version))
        self._wake()

    def on_method(self, name: str, payload: Any) -> tuple[int, Any]:
        """Answer a direct method at once; the reprovision itself happens in :meth:`step`."""
        if name != contract.REPROVISION_METHOD:
            return 404, {"accepted": False, "error": f"unknown method {name!r}"}
        try:
            request_id = contract.parse_reprovision(payload)
        except ContractError as exc:
            logger.warning("device %s refused reprovision: %s", self.device_id, exc)
            return 400, {"accepted": False, "error": str(exc)}
        with self._lock:
            self._inbox_methods.append(request_id)
        logger.info("device %s accepted reprovision request %s", self.device_id, request_id)
        self._wake()
        return 200, {"requestId": request_id, "accepted": True}

    def _wake(self) -> None:
        if self.on_work is not None:
            self.on_work(self)

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> bool:
        """First boot: register through DPS, connect, report ``x509``. True when connected.

        A failure is retried by :meth:`step` with backoff.
        """
        self._started = True
        attempt = self._register_and_connect(self._key, self._chain)
        if not attempt.ok:
            self._schedule_retry(attempt)
            return False
        self.step()  # what the desired twin already asks for
        return self.connected

    def go_offline(self) -> None:
        """Drop the connection on purpose (power off, no network): methods are not answered."""
        now = self.clock.now()
        self._offline = True
        self.timeline.offline_since = now
        if self._session is not None:
            self._session.disconnect()
            self._session = None
        # deliberate: not a gap (close one that was open, keeping its length)
        self.timeline.max_gap_seconds = self.timeline.gap_seconds(now)
        self.timeline.gap_started_at = None

    def go_online(self) -> None:
        """Come back: the next :meth:`step` reconnects (and reads the full desired twin)."""
        if not self._offline:
            return
        now = self.clock.now()
        self._offline = False
        if self.timeline.offline_since is not None:
            self.timeline.offline_seconds += (now - self.timeline.offline_since).total_seconds()
        self.timeline.offline_since = None
        self._retry_at = None
        self._open_gap(now)
        self._wake()

    def step(self) -> datetime | None:
        """Do the pending work now. Returns when the agent next needs a step even if no new
        input arrives (a delayed answer, a retry), or None."""
        if self._offline or not self._started:
            return None
        now = self.clock.now()
        with self._lock:
            patches, self._inbox_desired = self._inbox_desired, []
            methods, self._inbox_methods = self._inbox_methods, []
        for patch, _version in patches:
            self._merge_desired(patch)
        self._reprovision_wanted.extend(methods)

        if self._session is not None and not self._session.connected:
            self._lost_connection(now)
        if self._session is None:
            if self._retry_at is not None and now < self._retry_at:
                return self.next_due()
            self._reconnect()
            if self._session is None:
                return self.next_due()

        self.timeline.last_connected_at = now
        if self._twin_read_needed and (self._twin_read_at is None or self._twin_read_at <= now):
            self._read_twin()
        if self._desired_dirty:
            self._desired_dirty = False
            self._handle_desired(now)
        if self._renewal_due is not None and self._renewal_due[1] <= now:
            request, _ = self._renewal_due
            self._renewal_due = None
            self._answer_renewal(request)
        if self._reprovision_wanted and (self._retry_at is None or self._retry_at <= now):
            wanted, self._reprovision_wanted = self._reprovision_wanted, []
            self._reprovision(wanted[-1])
        self._flush()
        return self.next_due()

    def next_due(self) -> datetime | None:
        """When the agent next needs a :meth:`step` without new input (None: only on input)."""
        if self._desired_dirty and self._session is not None:
            return self.clock.now()
        times: list[datetime] = []
        if self._reprovision_wanted and self._retry_at is not None:
            times.append(self._retry_at)
        if self._renewal_due is not None:
            times.append(self._renewal_due[1])
        if self._twin_read_needed and self._twin_read_at is not None:
            times.append(self._twin_read_at)
        if self._outbox and self._session is not None:
            times.append(self._flush_at or self.clock.now())
        if self._session is None and not self._offline and self._retry_at is not None:
            times.append(self._retry_at)
        return min(times) if times else None

    # ----------------------------------------------------------------- desired handling

    def _merge_desired(self, patch: dict[str, Any]) -> None:
        if SECTION not in patch:
            return
        value = patch[SECTION]
        if value is None:
            self._desired = {}
        elif isinstance(value, dict):
            _merge_patch(self._desired, value)
        else:
            logger.warning("device %s ignores desired x509 that is not an object", self.device_id)
            return
        self._desired_dirty = True

    def _handle_desired(self, now: datetime) -> None:
        renewal = self._desired.get("renewal")
        if renewal is not None:
            self._consider_renewal(renewal, now)
        issued = self._desired.get("issued")
        if issued is not None:
            self._consider_issued(issued, now)

    def _consider_renewal(self, value: Any, now: datetime) -> None:
        try:
            request = contract.parse_renewal(value, self.key_algorithm)
        except ContractError as exc:
            request_id = value.get("requestId") if isinstance(value, dict) else None
            if contract.is_request_id(request_id) and request_id not in self._finished:
                self._fail(request_id, exc.code, exc.message)
            else:
                logger.warning("device %s ignores a malformed renewal: %s", self.device_id, exc)
            return
        rid = request.request_id
        if rid in self._finished:
            return
        if self._pending is not None and self._pending.request_id == rid:
            return
        if self._staged is not None and self._staged.request_id == rid:
            return
        if self._renewal_due is not None and self._renewal_due[0].request_id == rid:
            return
        self._renewal_due = (request, now + self.answer_delay)

    def _answer_renewal(self, request: RenewalRequest) -> None:
        rid = request.request_id
        try:
            key = contract.generate_key(request.key_algorithm)
        except ContractError as exc:
            self._fail(rid, exc.code, exc.message)
            return
        csr = contract.build_csr(self.device_id, key)
        pem = csr.public_bytes(Encoding.PEM).decode()
        self._pending = _PendingCsr(rid, key, pem)
        self.timeline.csrs_made += 1
        logger.info(
            "device %s made a %s key and CSR for request %s (%s)",
            self.device_id,
            request.key_algorithm,
            rid,
            request.reason,
        )
        self._report({SECTION: {"csr": {"requestId": rid, "pem": pem}}})

    def _consider_issued(self, value: Any, now: datetime) -> None:
        try:
            delivery = contract.parse_issued(value)
        except ContractError as exc:
            request_id = value.get("requestId") if isinstance(value, dict) else None
            if contract.is_request_id(request_id) and request_id not in self._finished:
                self._fail(request_id, exc.code, exc.message)
            else:
                logger.warning("device %s ignores a malformed delivery: %s", self.device_id, exc)
            return
        rid = delivery.request_id
        digest = hashlib.sha256(
            f"{delivery.not_after}\n{delivery.certificate_pem}".encode()
        ).hexdigest()
        if (rid, digest) in self._seen_deliveries:
            return
        self._seen_deliveries.add((rid, digest))
        if self._finished.get(rid) == "installed":
            return
        if self._staged is not None and self._staged.request_id == rid:
            return
        if self._pending is None or self._pending.request_id != rid:
            self._fail(rid, "request_unknown", f"no CSR of this device is waiting for {rid}")
            return
        self._stage(delivery, self._pending, now)

    def _stage(self, delivery: IssuedDelivery, pending: _PendingCsr, now: datetime) -> None:
        try:
            chain = contract.check_delivery(
                delivery,
                device_id=self.device_id,
                pending_key=pending.key,
                trust_anchor=self.trust_anchor,
                now=now + self.clock_skew,  # validity by the device's own wall clock
            )
        except ContractError as exc:
            # keep the pending key: a corrected delivery for the same request may follow
            self._fail(delivery.request_id, exc.code, exc.message)
            return
        self._staged = _Staged(delivery.request_id, pending.key, chain)
        self._pending = None
        self._finished.pop(delivery.request_id, None)
        logger.info(
            "device %s staged certificate %s for request %s",
            self.device_id,
            contract.serial_hex(chain[0].serial_number),
            delivery.request_id,
        )

    # ----------------------------------------------------------------- reprovisioning

    def _reprovision(self, request_id: str) -> None:
        """The ``reprovision`` method's work: install the staged certificate, or register
        again with the current one when nothing is staged."""
        if self._staged is not None:
            self._install(self._staged)
            return
        if self._finished.get(request_id) == "installed":
            self._report({SECTION: {"renewal": _renewal(request_id, "installed")}})
            return
        attempt = self._register_and_connect(self._key, self._chain)
        if not attempt.ok:
            self._schedule_retry(attempt)

    def _install(self, staged: _Staged) -> None:
        rid = staged.request_id
        attempt = self._register_and_connect(staged.key, staged.chain)
        if attempt.throttled_for is not None:
            # not the certificate's fault: keep it staged and try again later
            staged.registered = staged.registered or attempt.registered
            self._reprovision_wanted.append(rid)
            self._schedule_retry(attempt, keep_session=True)
            return
        if attempt.ok:
            self._adopt(staged)
            return
        # rollback: back to the old key and certificate
        self._staged = None
        self._finished[rid] = "failed"
        self.timeline.renewals_failed += 1
        logger.warning(
            "device %s could not use the certificate of request %s (%s); keeps the old one",
            self.device_id,
            rid,
            attempt.error,
        )
        self._report({SECTION: {"renewal": _renewal(rid, "failed", attempt.code, attempt.error)}})
        # the hub refused a certificate DPS had accepted: the hub identity names the new
        # one now, so the old one goes through the hub again (and DPS when it is refused)
        # while the current connection, if any, stays up
        if attempt.code == "connect_failed" or not self.connected:
            back = self._connect_or_reregister(self._key, self._chain)
            if not back.ok:
                self._schedule_retry(back)

    def _adopt(self, staged: _Staged) -> None:
        """The staged certificate works: it becomes the device's, the old key is dropped."""
        self._key, self._chain = staged.key, staged.chain
        self._staged = None
        self._finished[staged.request_id] = "installed"
        self.timeline.renewals_installed += 1
        logger.info(
            "device %s installed certificate %s (request %s)",
            self.device_id,
            contract.serial_hex(staged.chain[0].serial_number),
            staged.request_id,
        )
        self._report(
            {
                SECTION: {
                    **contract.certificate_section(staged.chain[0]),
                    "csr": None,
                    "renewal": _renewal(staged.request_id, "installed"),
                }
            }
        )
        self._reported_thumbprint = contract.thumbprint(staged.chain[0])

    def _reconnect(self) -> None:
        """Connect with the current certificate -- the staged one first when DPS has
        registered it, which put its thumbprint on the hub identity in place of the
        current one's; on 401/404 reprovision by itself."""
        if not self._registered:  # first boot not finished yet
            attempt = self._register_and_connect(self._key, self._chain)
            if not attempt.ok:
                self._schedule_retry(attempt)
            return
        staged = self._staged
        if staged is not None and staged.registered:
            attempt = self._connect(staged.key, staged.chain)
            if attempt.ok:
                self._adopt(staged)
                return
            if attempt.throttled_for is not None:
                self._schedule_retry(attempt)
                return
        attempt = self._connect(self._key, self._chain)
        if attempt.ok:
            return
        if attempt.throttled_for is None and _wants_reprovision(attempt.status):
            self.timeline.self_reprovisions += 1
            logger.info(
                "device %s got %s at connect: reprovisions by itself",
                self.device_id,
                attempt.status,
            )
            candidates: list[tuple[DeviceKey, list[x509.Certificate], _Staged | None]] = []
            if self._staged is not None:
                candidates.append((self._staged.key, self._staged.chain, self._staged))
            candidates.append((self._key, self._chain, None))
            for key, chain, staged in candidates:
                attempt = self._register_and_connect(key, chain)
                if attempt.ok:
                    if staged is not None:
                        self._adopt(staged)
                    self._backoff = RETRY_FIRST_SECONDS
                    return
                if attempt.throttled_for is not None:
                    break
        self._schedule_retry(attempt)

    def _connect_or_reregister(self, key: DeviceKey, chain: list[x509.Certificate]) -> _Attempt:
        attempt = self._connect(key, chain)
        if attempt.ok or attempt.throttled_for is not None:
            return attempt
        if _wants_reprovision(attempt.status):
            return self._register_and_connect(key, chain)
        return attempt

    def _register_and_connect(self, key: DeviceKey, chain: list[x509.Certificate]) -> _Attempt:
        """DPS registration with ``chain`` then a hub connection with it. The current
        session stays up during registration (DPS is a separate connection) and until the
        hub accepts the new one."""
        try:
            result = self.emulator.register(self.registration_id, chain)
        except CertrollError as exc:
            wait = _throttled_for(exc)
            if wait is not None:
                return _Attempt(False, throttled_for=wait, error=str(exc))
            return _Attempt(
                False, "registration_failed", f"registration refused: {exc}", status=_status(exc)
            )
        self.timeline.registrations += 1
        self._registered = True
        if result.status != "assigned":
            return _Attempt(False, "registration_failed", f"registration ended {result.status!r}")
        if result.device_id and result.device_id != self.device_id:
            logger.warning(
                "device %s was registered as %s; keeps its own id",
                self.device_id,
                result.device_id,
            )
        attempt = self._connect(key, chain)
        attempt.registered = True
        return attempt

    def _connect(self, key: DeviceKey, chain: list[x509.Certificate]) -> _Attempt:
        """A hub connection with ``chain``. The current connection stays up meanwhile: the
        hub closes it when it accepts the new one (one connection per device), and a
        refused or throttled attempt leaves it as it was."""
        now = self.clock.now()
        try:
            session = self.emulator.connect(self.device_id, chain, self)
        except CertrollError as exc:
            if not self.connected:
                self._open_gap(now)
            wait = _throttled_for(exc)
            if wait is not None:
                return _Attempt(False, throttled_for=wait, error=str(exc))
            self.timeline.connect_failures += 1
            self.timeline.last_connect_failure = _status(exc)
            self.timeline.refusals.append(
                (now, contract.thumbprint(chain[0]).lower(), _status(exc), self.connected)
            )
            return _Attempt(False, "connect_failed", f"connect refused: {exc}", status=_status(exc))
        self._session = session
        # like an SDK client that listens for cloud-to-device messages: IoT Hub reports
        # DeviceConnected only for a device that did this or sent telemetry
        with contextlib.suppress(CertrollError):
            session.subscribe_c2d()
        self._on_connected(chain, now)
        return _Attempt(True)

    def _on_connected(self, chain: list[x509.Certificate], now: datetime) -> None:
        tl = self.timeline
        if tl.first_connected_at is None:
            tl.first_connected_at = now
        if tl.gap_started_at is not None:
            tl.max_gap_seconds = max(tl.max_gap_seconds, (now - tl.gap_started_at).total_seconds())
            tl.gap_started_at = None
        tl.last_connected_at = now
        self._retry_at = None
        self._backoff = RETRY_FIRST_SECONDS
        self._throttled_in_a_row = 0
        leaf = chain[0]
        thumb = contract.thumbprint(leaf)
        if not tl.certificates or tl.certificates[-1].thumbprint != thumb:
            if tl.certificates:
                tl.certificates[-1].until = now
            tl.certificates.append(
                CertificateUse(
                    thumb, contract.serial_hex(leaf.serial_number), leaf.not_valid_after_utc, now
                )
            )
        if self._reported_thumbprint != thumb and chain is self._chain:
            self._report({SECTION: contract.certificate_section(leaf)})
            self._reported_thumbprint = thumb
        self._twin_read_needed = True
        self._read_twin()
        self._flush()

    def _read_twin(self) -> None:
        """Read the full desired twin, as a device does after every (re)connect."""
        if self._session is None:
            return
        try:
            twin = self._session.get_twin()
        except CertrollError as exc:
            throttled = _throttled_for(exc)
            wait = RETRY_FIRST_SECONDS if throttled is None else self._throttle_delay(throttled)
            self._twin_read_at = self.clock.now() + timedelta(seconds=wait)
            logger.info("device %s could not read its twin (%s)", self.device_id, exc)
            return
        self._twin_read_needed = False
        self._twin_read_at = None
        self._throttled_in_a_row = 0
        section = twin.desired.get(SECTION)
        self._desired = dict(section) if isinstance(section, dict) else {}
        self._desired_dirty = True

    def _lost_connection(self, now: datetime) -> None:
        self._session = None
        self._open_gap(now)

    def _open_gap(self, now: datetime) -> None:
        if self.timeline.first_connected_at is not None and self.timeline.gap_started_at is None:
            self.timeline.gap_started_at = now

    def _schedule_retry(self, attempt: _Attempt, *, keep_session: bool = False) -> None:
        now = self.clock.now()
        if attempt.throttled_for is not None:
            delay = self._throttle_delay(attempt.throttled_for)
        else:
            delay = self._backoff * (1 + self._rng.uniform(0, RETRY_JITTER))
            self._backoff = min(self._backoff * RETRY_FACTOR, RETRY_CAP_SECONDS)
        self._retry_at = now + timedelta(seconds=delay)
        if keep_session and self.connected:
            return
        logger.info(
            "device %s not connected (%s); retries at %s",
            self.device_id,
            attempt.error,
            contract.format_time(self._retry_at),
        )

    def _throttle_delay(self, retry_after: float) -> float:
        # the exponent is capped: 2.0**1024 overflows a float
        window = min(2.0 ** min(self._throttled_in_a_row, 16), THROTTLE_WINDOW_CAP_SECONDS)
        self._throttled_in_a_row += 1
        return max(retry_after, 0.001) + self._rng.uniform(0, window)

    # ----------------------------------------------------------------- reporting

    def _fail(self, request_id: str, code: str, message: str) -> None:
        self._finished[request_id] = "failed"
        self.timeline.renewals_failed += 1
        logger.warning(
            "device %s refused request %s: %s: %s", self.device_id, request_id, code, message
        )
        self._report({SECTION: {"renewal": _renewal(request_id, "failed", code, message)}})

    def _report(self, patch: dict[str, Any]) -> None:
        _merge(self._outbox, patch)
        self._flush()

    def _flush(self) -> None:
        if not self._outbox or not self.connected:
            return
        patch, self._outbox = copy.deepcopy(self._outbox), {}
        assert self._session is not None
        try:
            self._session.report(patch)
        except CertrollError as exc:
            throttled = _throttled_for(exc)
            wait = RETRY_FIRST_SECONDS if throttled is None else self._throttle_delay(throttled)
            self._flush_at = self.clock.now() + timedelta(seconds=wait)
            logger.info("device %s could not report (%s); will retry", self.device_id, exc)
            _merge(patch, self._outbox)
            self._outbox = patch
            return
        self._flush_at = None
        self._throttled_in_a_row = 0


def _renewal(
    request_id: str, status: str, code: str | None = None, error: str | None = None
) -> dict[str, Any]:
    if error is not None and len(error) > MAX_ERROR_CHARS:
        error = error[: MAX_ERROR_CHARS - 1] + "…"
    return {"requestId": request_id, "status": status, "error": error, "errorCode": code}


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    for name, value in patch.items():
        if isinstance(value, dict) and isinstance(target.get(name), dict):
            _merge(target[name], value)
        else:
            target[name] = value


def _merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """JSON merge patch (RFC 7396) of ``patch`` into ``target``: None deletes."""
    for name, value in patch.items():
        if value is None:
            target.pop(name, None)
        elif isinstance(value, dict):
            current = target.get(name)
            if not isinstance(current, dict):
                current = {}
                target[name] = current
            _merge_patch(current, value)
        else:
            target[name] = copy.deepcopy(value)


def _status(exc: Exception) -> int | None:
    """The service status an emulator error carries (``code`` for the hub, ``status`` for
    DPS), when it carries one."""
    for attribute in ("code", "status"):
        value = getattr(exc, attribute, None)
        if isinstance(value, int):
            return value
    return None


def _throttled_for(exc: Exception) -> float | None:
    """Seconds to wait when ``exc`` says "too many requests" (429), else None."""
    if isinstance(exc, ThrottledError):
        return max(exc.retry_after, 0.001)
    retry_after = getattr(exc, "retry_after", None)
    if _status(exc) in (429, 429001) or getattr(exc, "status", None) == 429:
        return max(float(retry_after or 1.0), 0.001)
    return None


def _wants_reprovision(status: int | None) -> bool:
    """401 (401003 IoTHubUnauthorized) and 404 (identity unknown) send the device to DPS;
    403 (403012 DeviceDisabled) does not: DPS would not help a disabled device."""
    if status is None:
        return False
    family = status // 1000 if status >= 1000 else status
    return family in (401, 404)

"""Fault-injecting wrappers over the ports the rotation service uses.

Each wrapper answers like the port it wraps and, when the :class:`~local.soak.plan.FaultPlan`
says so, fails a call with the very error the production adapter raises for that HTTP
outcome, built by the adapter's own translator:

- DPS and IoT Hub (``shared.adapters._azure_rest.raise_status_error`` and the pipeline's
  transport-error branch): 429 with a ``Retry-After`` header and 503 -> ``ThrottledError``;
  500 -> ``ServiceError(status=500)``; a timeout or a connection reset before a response
  -> ``ServiceError``;
- storage (``shared.adapters.storage_clients.raise_storage_error``): 429/503 ->
  ``ThrottledError``; 500 -> ``ServiceError``; ``ServiceResponseError`` (timeout) and
  ``ServiceRequestError`` (connection reset) -> ``ServiceError`` "storage is unreachable";
- the signing key (``shared.adapters.keyvault._translate``, Key Vault's mapping): 429 ->
  ``ThrottledError``; 500/503, timeout, reset -> ``SigningError``.

A timed-out *write* is applied first half of the time (the response was lost, not the
request), which is what makes idempotency matter. The rotation-state wrapper also plays
a concurrent writer: just before a conditional ``put`` it rewrites the record itself, so
the ``put`` meets a real 412 from storage. Every call also ticks the worker-kill countdown
(:class:`WorkerKilled`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from local.soak.plan import FaultPlan
from shared.domain.errors import CertrollError, ServiceError
from shared.pki.keys import DigestSigningEcKey

READ_PREFIXES = ("get", "list", "find", "query", "fetch", "peek", "count", "active", "url_for")
RETRY_AFTER_SECONDS = ("1", "2", "5", "10")


class WorkerKilled(BaseException):
    """The worker process died here: nothing after this point of the invocation runs
    (a ``BaseException``, so no ``except Exception`` of the product catches it)."""


class _Response:
    """The parts of an HTTP response the adapters' translators read."""

    def __init__(self, status: int, headers: dict[str, str]) -> None:
        self.status_code = status
        self.headers = headers
        self.reason = {429: "Too Many Requests", 500: "Internal Server Error"}.get(
            status, "Service Unavailable"
        )


class KillSwitch:
    """Per-thread countdown of port calls after which the current invocation dies."""

    def __init__(self) -> None:
        self._local = threading.local()

    def arm(self, calls: int) -> None:
        self._local.left = calls

    def disarm(self) -> None:
        self._local.left = None

    def tick(self) -> None:
        left = getattr(self._local, "left", None)
        if left is None:
            return
        if left <= 0:
            self._local.left = None
            raise WorkerKilled("the worker died mid-batch")
        self._local.left = left - 1


def _subject(args: tuple[Any, ...]) -> str:
    """The device (or other subject) a call is about, for the per-call fault stream."""
    for arg in args[:1]:
        if isinstance(arg, str):
            return arg
        for name in ("device_id", "registration_id", "group_id"):
            value = getattr(arg, name, None)
            if isinstance(value, str):
                return value
    return "-"


def _headers(fault: str, rng_pick: str) -> dict[str, str]:
    return {"Retry-After": rng_pick} if fault == "429" else {}


def fleet_error(service: str, what: str, fault: str, retry_after: str) -> CertrollError:
    """The error the DPS / IoT Hub adapter raises for ``fault`` on ``what``."""
    from shared.adapters._azure_rest import raise_status_error

    if fault == "timeout":
        return ServiceError(f"{what}: {ServiceResponseError('Read timed out')}")
    if fault == "reset":
        return ServiceError(f"{what}: {ServiceRequestError('Connection reset by peer')}")
    status = int(fault)
    try:
        raise_status_error(
            _Response(status, _headers(fault, retry_after)),  # type: ignore[arg-type]
            f"{service} {what}: HTTP {status}",
        )
    except CertrollError as exc:
        return exc
    raise AssertionError("raise_status_error returned")  # pragma: no cover


def _azure_error(fault: str, retry_after: str) -> Exception:
    if fault == "timeout":
        return ServiceResponseError("Read timed out")
    if fault == "reset":
        return ServiceRequestError("Connection reset by peer")
    exc = HttpResponseError(message=f"HTTP {fault}")
    exc.status_code = int(fault)
    exc.response = _Response(int(fault), _headers(fault, retry_after))  # type: ignore[assignment]
    return exc


def storage_error(what: str, fault: str, retry_after: str) -> CertrollError:
    """The error the storage adapters raise for ``fault`` on ``what``."""
    from shared.adapters.storage_clients import raise_storage_error

    try:
        raise_storage_error(_azure_error(fault, retry_after), what)  # type: ignore[arg-type]
    except CertrollError as exc:
        return exc
    raise AssertionError("raise_storage_error returned")  # pragma: no cover


def signing_error(key_id: str, fault: str, retry_after: str) -> CertrollError:
    """The error the Key Vault signing key raises for ``fault``."""
    from shared.adapters.keyvault import _translate

    error = _translate(_azure_error(fault, retry_after), key_id, "signing")  # type: ignore[arg-type]
    assert isinstance(error, CertrollError)
    return error


class FaultyPort:
    """Any port object, with faults injected into its calls (see the module docstring)."""

    def __init__(
        self,
        inner: Any,
        port: str,
        plan: FaultPlan,
        kill: KillSwitch,
        make_error: Callable[[str, str, str], CertrollError],
        armed: Callable[[], bool],
    ) -> None:
        self._inner = inner
        self._port = port
        self._plan = plan
        self._kill = kill
        self._make_error = make_error
        self._armed = armed

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._inner, name)
        if not callable(target) or name.startswith("_"):
            return target

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._call(name, target, args, kwargs)

        return call

    def _call(self, name: str, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not self._armed():
            return target(*args, **kwargs)
        self._kill.tick()
        subject = _subject(args)
        struck = self._plan.port_fault(self._port, f"{name}/{subject}")
        if struck is None:
            return self._before(name, args, target, kwargs)
        fault, applied = struck
        rng = self._plan.draw(f"retry-after/{self._port}/{subject}")
        error = self._make_error(f"{name} {subject}", fault, rng.choice(RETRY_AFTER_SECONDS))
        if applied and not name.startswith(READ_PREFIXES):
            self._before(name, args, target, kwargs)  # done; the answer never arrives
        raise error

    def _before(self, name: str, args: tuple[Any, ...], target: Any, kwargs: dict[str, Any]) -> Any:
        return target(*args, **kwargs)


class FaultyStateStore(FaultyPort):
    """The rotation-state store, with a concurrent writer that wins some races."""

    def _before(self, name: str, args: tuple[Any, ...], target: Any, kwargs: dict[str, Any]) -> Any:
        record = args[0] if args else None
        if (
            name == "put"
            and getattr(record, "etag", None)
            and self._plan.chance(f"etag/{record.device_id}", self._plan.rates.etag_conflict)
        ):
            current = self._inner.get(record.device_id)
            if current is not None and current.etag == record.etag:
                self._inner.put(current)  # the other writer: same content, new ETag
                self._plan.count("etag_conflict")
        return target(*args, **kwargs)


class FaultySigningKey(DigestSigningEcKey):
    """The issuing key, failing as Key Vault does, and out entirely during ``outage``."""

    def __init__(
        self,
        inner: ec.EllipticCurvePrivateKey,
        plan: FaultPlan,
        kill: KillSwitch,
        armed: Callable[[], bool],
        now: Callable[[], datetime],
        outage: tuple[datetime, timedelta] | None,
    ) -> None:
        self.inner = inner
        self._plan = plan
        self._kill = kill
        self._armed = armed
        self._now = now
        #: (from, for): the key goes out at its first signature from ``from`` on, for
        #: ``for`` of clock time (so a clock that jumps cannot skip the outage)
        self.outage = outage
        self._outage_ends: datetime | None = None
        self.backend_name = getattr(inner, "backend_name", "remote")

    @property
    def key_id(self) -> str:
        return str(getattr(self.inner, "key_id", "soak-key"))

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.inner.public_key()

    def _sign_digest(self, digest: bytes, algorithm: hashes.HashAlgorithm) -> bytes:
        if self._armed():
            self._kill.tick()
            if self._out(self._now()):
                self._plan.count("signing_key_outage")
                raise signing_error(self.key_id, "503", "10")
            struck = self._plan.port_fault("signing_key", "sign")
            if struck is not None:
                raise signing_error(self.key_id, struck[0], "2")
        return self.inner.sign(digest, ec.ECDSA(utils.Prehashed(algorithm)))

    def _out(self, now: datetime) -> bool:
        if self.outage is None or now < self.outage[0]:
            return False
        if self._outage_ends is None:
            self._outage_ends = now + self.outage[1]
        return now < self._outage_ends

"""The telemetry ports: metrics with low-cardinality dimensions and the spans of a
rotation's trace (Azure Monitor through OpenTelemetry in the Function App, in-memory
readers locally; ``shared/adapters/otel.py``). Re-exported by :mod:`shared.ports`."""

from __future__ import annotations

import abc
import contextlib
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

if TYPE_CHECKING:
    from shared.domain.model import RotationRecord


P = ParamSpec("P")
R = TypeVar("R")

#: dimension names that would make a metric's cardinality grow with the fleet; adapters
#: drop them (per-device detail belongs in traces and the audit log, not in metrics)
HIGH_CARDINALITY_DIMENSIONS = frozenset(
    {"device_id", "deviceId", "request_id", "requestId", "serial", "thumbprint", "job_id"}
)


class Telemetry(abc.ABC):
    """Metrics with low-cardinality dimensions (never a device id).

    ``increment`` is the rotation service's ``Metrics`` protocol; ``record`` adds a value
    to a histogram; ``set_gauge`` sets the current reading of an observable gauge for one
    combination of dimensions (the exporter reads the latest readings when it collects).
    A telemetry adapter never raises into the caller's work.
    """

    @abc.abstractmethod
    def increment(self, name: str, value: int = 1, **dimensions: str) -> None: ...

    @abc.abstractmethod
    def record(self, name: str, value: float, **dimensions: str) -> None: ...

    @abc.abstractmethod
    def set_gauge(self, name: str, value: float, **dimensions: str) -> None: ...


class NullTelemetry(Telemetry):
    def increment(self, name: str, value: int = 1, **dimensions: str) -> None:
        return None

    def record(self, name: str, value: float, **dimensions: str) -> None:
        return None

    def set_gauge(self, name: str, value: float, **dimensions: str) -> None:
        return None


class Tracer(abc.ABC):
    """Spans for the rotation service without an SDK in the domain.

    ``rotation(request_id, name)`` opens a span in the trace of one rotation: every
    adapter derives that trace's id from the request id, so the steps of one rotation
    are one trace across function invocations and workers. ``wrap(fn)`` returns ``fn``
    running inside a span named after the service it calls (one span per attempt, so a
    throttled call that is retried shows each try).
    """

    @abc.abstractmethod
    def span(
        self, name: str, **attributes: str | int
    ) -> contextlib.AbstractContextManager[None]: ...

    @abc.abstractmethod
    def rotation(
        self, request_id: str | None, name: str, **attributes: str | int
    ) -> contextlib.AbstractContextManager[None]: ...

    def wrap(self, fn: Callable[P, R]) -> Callable[P, R]:
        service, operation = call_name(fn)

        @functools.wraps(fn)
        def traced(*args: P.args, **kwargs: P.kwargs) -> R:
            with self.span(f"{service}.{operation}", service=service):
                return fn(*args, **kwargs)

        return traced


class NullTracer(Tracer):
    def span(self, name: str, **attributes: str | int) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def rotation(
        self, request_id: str | None, name: str, **attributes: str | int
    ) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def wrap(self, fn: Callable[P, R]) -> Callable[P, R]:
        return fn


def in_rotation_trace(method: Callable[..., R]) -> Callable[..., R]:
    """Run a ``RotationService`` method that takes a record first inside a span of that
    record's rotation trace (``deps.tracer.rotation``)."""

    @functools.wraps(method)
    def traced(self: Any, rec: RotationRecord, *args: Any, **kwargs: Any) -> R:
        tracer: Tracer = self.deps.tracer
        name = method.__name__.strip("_")
        with tracer.rotation(rec.request_id, name, device_id=rec.device_id, state=rec.state.value):
            return method(self, rec, *args, **kwargs)

    return traced


#: the port a service call goes to (by the port's class name, so this module needs no
#: import of the ports), named as operators know it
_SERVICES: tuple[tuple[str, str], ...] = (
    ("DeviceRegistry", "iothub"),
    ("EnrollmentStore", "dps"),
    ("CertificateLedger", "ledger"),
    ("RotationStateStore", "state"),
    ("AuditLog", "audit"),
    ("WorkQueue", "queue"),
    ("CrlPublisher", "crl"),
    ("EventSink", "events"),
)


def call_name(fn: Callable[..., Any]) -> tuple[str, str]:
    """(service, operation) of a port call: ``(iothub, patch_desired)``; the issuer is
    ``issuer`` (it signs with the HSM); anything else is ``other``."""
    owner = getattr(fn, "__self__", None)
    operation = getattr(fn, "__name__", "call")
    if owner is None:
        return "other", operation.strip("<>")
    bases = {cls.__name__ for cls in type(owner).__mro__}
    for port, service in _SERVICES:
        if port in bases:
            return service, operation
    if type(owner).__name__.endswith("Issuer") or hasattr(owner, "publish_crl"):
        return "issuer", operation
    return "other", operation

"""OpenTelemetry adapters of the telemetry ports (``Telemetry``, ``Tracer``).

- :class:`OtelTelemetry` records counters, histograms and observable gauges on a meter;
  it never raises into the rotation it measures, and drops dimensions that name a device
  or a request (``shared.ports.HIGH_CARDINALITY_DIMENSIONS``).
- :class:`OtelTracer` opens spans; a rotation's spans share one trace whose id is derived
  from the request id, so one rotation is one trace across the function invocations it
  passes through (Application Insights: ``operation_Id``). A throttled service call
  (``ThrottledError``) is counted as ``certroll.throttled{service}``.
- :func:`in_memory` wires both to in-memory readers (the demo and tests read them);
  :func:`azure_monitor` to Application Insights through Microsoft's distro
  (``azure-monitor-opentelemetry``), authenticated with the app's managed identity.

docs/operations.md lists every metric and span.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import metrics as otel_metrics
from opentelemetry import trace as otel_trace
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    InMemoryMetricReader,
    MetricsData,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

from shared.domain.errors import ThrottledError
from shared.ports import HIGH_CARDINALITY_DIMENSIONS, Telemetry, Tracer, call_name

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

SERVICE_NAME = "certroll"
INSTRUMENTATION_SCOPE = "certroll"

#: the rotation service's per-outcome counters, recorded as one counter
#: ``certroll.rotations{trigger, outcome[, code]}``
_ROTATION_OUTCOMES = {
    "certroll.rotation_started": "started",
    "certroll.rotation_completed": "completed",
    "certroll.rotation_failed": "failed",
}
ROTATIONS = "certroll.rotations"
THROTTLED = "certroll.throttled"

_UNITS = {
    "certroll.rotation.due_to_confirmed": "s",
    "certroll.ca.days_to_expiry": "d",
}


def _clean(dimensions: Mapping[str, object]) -> dict[str, str]:
    return {
        k: str(v) for k, v in dimensions.items() if k not in HIGH_CARDINALITY_DIMENSIONS
    }


class OtelTelemetry(Telemetry):
    """Counters, histograms and observable gauges on one OpenTelemetry meter (a gauge
    reading is exported once, see :meth:`_observe`)."""

    def __init__(self, meter: Meter) -> None:
        self._meter = meter
        self._lock = threading.Lock()
        self._counters: dict[str, Any] = {}
        self._histograms: dict[str, Any] = {}
        self._gauges: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}

    def increment(self, name: str, value: int = 1, **dimensions: str) -> None:
        try:
            outcome = _ROTATION_OUTCOMES.get(name)
            if outcome is not None:
                dims: dict[str, object] = {
                    "trigger": dimensions.pop("reason", "") or "unknown",
                    "outcome": outcome,
                    **dimensions,
                }
                name = ROTATIONS
            else:
                dims = dict(dimensions)
            with self._lock:
                counter = self._counters.get(name)
                if counter is None:
                    counter = self._meter.create_counter(name, unit="1")
                    self._counters[name] = counter
            counter.add(value, _clean(dims))
        except Exception:  # telemetry never breaks the work it measures
            logger.exception("metric %s could not be recorded", name)

    def record(self, name: str, value: float, **dimensions: str) -> None:
        try:
            with self._lock:
                histogram = self._histograms.get(name)
                if histogram is None:
                    histogram = self._meter.create_histogram(name, unit=_UNITS.get(name, "1"))
                    self._histograms[name] = histogram
            histogram.record(value, _clean(dimensions))
        except Exception:
            logger.exception("metric %s could not be recorded", name)

    def set_gauge(self, name: str, value: float, **dimensions: str) -> None:
        try:
            key = tuple(sorted(_clean(dimensions).items()))
            with self._lock:
                readings = self._gauges.get(name)
                if readings is None:
                    readings = self._gauges[name] = {}
                    self._meter.create_observable_gauge(
                        name, callbacks=[functools.partial(self._observe, name)],
                        unit=_UNITS.get(name, "1"),
                    )
                readings[key] = float(value)
        except Exception:
            logger.exception("gauge %s could not be set", name)

    def _observe(self, name: str, options: CallbackOptions) -> Iterable[Observation]:
        """Each reading is observed once: the next collection after ``set_gauge`` exports
        it, later ones do not repeat it. A worker that set the fleet gauges yesterday then
        cannot answer today's alert query with yesterday's numbers."""
        with self._lock:
            readings = list(self._gauges.get(name, {}).items())
            self._gauges[name] = {}
        return [Observation(value, dict(key)) for key, value in readings]


def rotation_trace_id(request_id: str) -> int:
    """The 128-bit trace id of a rotation: the request id itself when it is 32 hex digits
    (``uuid4().hex``), else the first 16 bytes of its SHA-256."""
    text = request_id.replace("-", "").lower()
    if len(text) == 32:
        try:
            value = int(text, 16)
        except ValueError:
            value = 0
        if value:
            return value
    return int.from_bytes(hashlib.sha256(request_id.encode()).digest()[:16], "big") or 1


def _rotation_root(request_id: str) -> SpanContext:
    span_id = int.from_bytes(hashlib.sha256(b"span:" + request_id.encode()).digest()[:8], "big")
    return SpanContext(
        trace_id=rotation_trace_id(request_id),
        span_id=span_id or 1,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )


class OtelTracer(Tracer):
    """Spans on an OpenTelemetry tracer; throttled calls counted on ``telemetry``."""

    def __init__(self, tracer: otel_trace.Tracer, telemetry: Telemetry) -> None:
        self._tracer = tracer
        self._telemetry = telemetry
        #: (port class, operation) -> (span name, service, span attributes)
        self._names: dict[tuple[type, str], tuple[str, str, dict[str, str]]] = {}

    @contextlib.contextmanager
    def span(self, name: str, **attributes: str | int) -> Iterator[None]:
        attrs = {f"certroll.{k}": v for k, v in attributes.items()}
        with self._tracer.start_as_current_span(name, attributes=attrs):
            yield

    @contextlib.contextmanager
    def rotation(
        self, request_id: str | None, name: str, **attributes: str | int
    ) -> Iterator[None]:
        attrs: dict[str, str | int] = {f"certroll.{k}": v for k, v in attributes.items()}
        if request_id is None:
            with self._tracer.start_as_current_span(f"rotation.{name}", attributes=attrs):
                yield
            return
        attrs["certroll.request_id"] = request_id
        parent = otel_trace.set_span_in_context(NonRecordingSpan(_rotation_root(request_id)))
        with self._tracer.start_as_current_span(
            f"rotation.{name}", context=parent, kind=SpanKind.INTERNAL, attributes=attrs
        ):
            yield

    def wrap(self, fn: Callable[P, R]) -> Callable[P, R]:
        """``fn`` inside a CLIENT span named ``<service>.<operation>``, one per call.

        The rotation service wraps every port call as it makes it, about 25 a rotation,
        so this stays lean: the span's name and attributes are worked out once per port
        class and operation, and the span is started and made current directly rather
        than through ``start_as_current_span``'s generator-based context manager
        (docs/performance.md)."""
        owner = getattr(fn, "__self__", None)
        key = (type(owner), getattr(fn, "__name__", "call"))
        named = self._names.get(key)
        if named is None:
            service, operation = call_name(fn)
            named = self._names[key] = (
                f"{service}.{operation}",
                service,
                {"certroll.service": service},
            )
        span_name, service, attributes = named
        tracer = self._tracer
        telemetry = self._telemetry

        def traced(*args: P.args, **kwargs: P.kwargs) -> R:
            span = tracer.start_span(span_name, kind=SpanKind.CLIENT, attributes=attributes)
            token = otel_context.attach(otel_trace.set_span_in_context(span))
            try:
                return fn(*args, **kwargs)
            except ThrottledError:
                span.set_status(Status(StatusCode.ERROR, "throttled"))
                span.set_attribute("certroll.throttled", True)
                telemetry.increment(THROTTLED, service=service)
                raise
            except Exception as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise
            finally:
                otel_context.detach(token)
                span.end()

        traced.__qualname__ = getattr(fn, "__qualname__", span_name)  # the retry's log
        traced.__name__ = key[1]
        traced.__wrapped__ = fn  # type: ignore[attr-defined]
        return traced


# --------------------------------------------------------------------------- wiring


class RecentSpans(SpanExporter):
    """Keeps the latest ``limit`` finished spans in memory (a long local run stays bounded)."""

    def __init__(self, limit: int = 20_000) -> None:
        self._spans: collections.deque[ReadableSpan] = collections.deque(maxlen=limit)
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            self._spans.extend(spans)
        return SpanExportResult.SUCCESS

    def get_finished_spans(self) -> list[ReadableSpan]:
        with self._lock:
            return list(self._spans)

    def clear(self) -> None:
        with self._lock:
            self._spans.clear()

    def shutdown(self) -> None:
        return None


@dataclass
class Instrumentation:
    """The telemetry ports as wired (``shared.bootstrap.Services.instrumentation``)."""

    telemetry: Telemetry
    tracer: Tracer
    kind: str  # "memory" | "azure-monitor" | "none"
    reader: InMemoryMetricReader | None = None
    spans: RecentSpans | None = None
    _providers: list[Any] = field(default_factory=list)
    keep: tuple[Any, ...] = ()  # providers that must live as long as this object

    def metrics(self) -> dict[str, Any]:
        """The in-memory metrics as ``{name: {"dim=value,...": value}}`` (histograms:
        count/sum/min/max); empty when the metrics go to an exporter."""
        if self.reader is None:
            return {}
        return summarize(self.reader.get_metrics_data())

    def flush(self) -> None:
        """Export what is buffered now (end of a short-lived invocation)."""
        for provider in self._providers:
            with contextlib.suppress(Exception):
                provider.force_flush()


def _key(attributes: Mapping[str, Any] | None) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted((attributes or {}).items()))


def summarize(data: MetricsData | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if data is None:
        return out
    for resource_metrics in data.resource_metrics:
        for scope in resource_metrics.scope_metrics:
            for metric in scope.metrics:
                values: dict[str, Any] = out.setdefault(metric.name, {})
                points = metric.data
                if isinstance(points, Sum | Gauge):
                    for p in points.data_points:
                        values[_key(p.attributes)] = p.value
                elif isinstance(points, Histogram):
                    for h in points.data_points:
                        values[_key(h.attributes)] = {
                            "count": h.count,
                            "sum": round(h.sum, 3),
                            "min": round(h.min, 3),
                            "max": round(h.max, 3),
                        }
    return dict(sorted(out.items()))


def _resource() -> Resource:
    return Resource.create({"service.name": SERVICE_NAME})


def in_memory(span_limit: int = 20_000) -> Instrumentation:
    """Private providers with an in-memory metric reader and span store; nothing is set
    globally, so two stacks (or tests) in one process do not share readings."""
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader], resource=_resource())
    spans = RecentSpans(span_limit)
    tracer_provider = TracerProvider(resource=_resource())
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    telemetry = OtelTelemetry(meter_provider.get_meter(INSTRUMENTATION_SCOPE))
    tracer = OtelTracer(tracer_provider.get_tracer(INSTRUMENTATION_SCOPE), telemetry)
    # nothing to flush: the readers are read in place (a flush would consume the
    # once-only gauge readings before anyone reads them)
    instrumentation = Instrumentation(telemetry, tracer, "memory", reader, spans)
    instrumentation.keep = (meter_provider, tracer_provider)
    return instrumentation


def managed_identity_client_id(auth_string: str) -> str | None:
    """``ClientId`` of ``APPLICATIONINSIGHTS_AUTHENTICATION_STRING`` (``Authorization=AAD``
    alone: the system-assigned identity, None). The exporter reads the same setting the
    same way (azure-monitor-opentelemetry-exporter ``export/_base.py``)."""
    parts = dict(p.split("=", 1) for p in auth_string.split(";") if "=" in p)
    lowered = {k.strip().lower(): v.strip() for k, v in parts.items()}
    if lowered.get("authorization") != "AAD":
        raise ValueError(
            "APPLICATIONINSIGHTS_AUTHENTICATION_STRING must be 'Authorization=AAD' "
            "(optionally ';ClientId=<user-assigned identity client id>')"
        )
    return lowered.get("clientid") or None


def azure_monitor(env: Mapping[str, str]) -> Instrumentation:
    """Configure Microsoft's Azure Monitor distro and use its global providers.

    Ingestion is authenticated with the managed identity that
    ``APPLICATIONINSIGHTS_AUTHENTICATION_STRING`` names (the Application Insights
    resource has local authentication disabled, and the identity holds Monitoring
    Metrics Publisher on it). Logs stay with the Functions host, which already sends
    them; the distro sends metrics and spans."""
    from azure.identity import ManagedIdentityCredential
    from azure.monitor.opentelemetry import configure_azure_monitor

    connection_string = env["APPLICATIONINSIGHTS_CONNECTION_STRING"]
    client_id = managed_identity_client_id(
        env.get("APPLICATIONINSIGHTS_AUTHENTICATION_STRING") or "Authorization=AAD"
    )
    credential = (
        ManagedIdentityCredential(client_id=client_id)
        if client_id
        else ManagedIdentityCredential()
    )
    configure_azure_monitor(
        connection_string=connection_string,
        credential=credential,
        disable_logging=True,
        resource=_resource(),
    )
    meter_provider = otel_metrics.get_meter_provider()
    tracer_provider = otel_trace.get_tracer_provider()
    telemetry = OtelTelemetry(otel_metrics.get_meter(INSTRUMENTATION_SCOPE))
    tracer = OtelTracer(otel_trace.get_tracer(INSTRUMENTATION_SCOPE), telemetry)
    return Instrumentation(
        telemetry, tracer, "azure-monitor", _providers=[meter_provider, tracer_provider]
    )


def from_environment(env: Mapping[str, str] | None = None) -> Instrumentation:
    """Azure Monitor when the platform setting ``APPLICATIONINSIGHTS_CONNECTION_STRING``
    is present (the Function App), else in memory (the local stack, tests)."""
    source = os.environ if env is None else env
    if source.get("APPLICATIONINSIGHTS_CONNECTION_STRING"):
        return _azure_monitor_once(source)
    return in_memory()


_configured: Instrumentation | None = None
_configure_lock = threading.Lock()


def _azure_monitor_once(env: Mapping[str, str]) -> Instrumentation:
    """The distro sets global providers: configure it once per worker process."""
    global _configured
    with _configure_lock:
        if _configured is None:
            _configured = azure_monitor(env)
        return _configured

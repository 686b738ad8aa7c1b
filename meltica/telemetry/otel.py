"""OpenTelemetry export over OTLP/HTTP: spans at the pipeline's edges, and the
compiled counters as OTel metrics (docs/tracing.md).

`resolve` turns the ``telemetry`` section and the standard ``OTEL_*``
variables into `OtelSettings` (an ``OTEL_*`` variable that is set wins over
its ``telemetry.*`` key).  With no endpoint from either, tracing is off: the
engine builds no `Otel`, every component's ``tracer`` stays None and the
listeners' sampling threshold is 0, so nothing is created or exported.

`Otel` owns a `TracerProvider` whose `BatchSpanProcessor` queue is bounded
(``telemetry.trace_queue_size``): a span that finds the queue full is dropped
and counted, and an export that fails (collector down, timeout) is counted,
never retried past the exporter's own deadline and never felt by the event
loop, which only appends to the queue.  Its counters are ``Sample``\\ s
(``otel_spans_total{outcome}``, ``otel_span_queue``), exported like every
other counter.

The per-batch sampling decision is taken in the listener (compiled; see
meltica/adapters/binance/listener.pyx); a sampled batch calls `BatchTracer`
twice, before and after its hand-off, and the span it makes names itself in
the ``trace`` field of every event of the batch (a W3C ``traceparent``).
The low-rate edges (control requests, REST calls, resync episodes,
connection lifecycle) are traced whenever tracing is on; NATS publish
acknowledgements are traced for the sampled batches' events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from time import perf_counter_ns
from typing import Any, Final
from urllib.parse import urlsplit

from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import SpanKind, Tracer
from opentelemetry.trace.span import Span

from meltica import __version__
from meltica.config import TelemetryConfig
from meltica.errors import ConfigError
from meltica.log import root as _root_log
from meltica.telemetry import catalog
from meltica.telemetry.metrics import Sample
from meltica.telemetry.spans import traceparent_of

log = _root_log.getChild("otel")

__all__ = [
    "BatchTracer",
    "Otel",
    "OtelSettings",
    "resolve",
    "sample_threshold",
]

# Spans per OTLP request; the queue (trace_queue_size) may be smaller.
_EXPORT_BATCH: Final = 512
# How long the exporter gives one OTLP request (and its retries), seconds.
_EXPORT_TIMEOUT_S: Final = 5.0
# At stop: how long a last flush of spans and metrics may take, seconds.
_STOP_TIMEOUT_S: Final = 5.0

_RATIO_SAMPLERS: Final = ("traceidratio", "parentbased_traceidratio")
_FIXED_SAMPLERS: Final = {
    "always_on": 1.0,
    "parentbased_always_on": 1.0,
    "always_off": 0.0,
    "parentbased_always_off": 0.0,
}


# ------------------------------------------------------------------ settings


@dataclass(frozen=True, slots=True)
class OtelSettings:
    """The effective OpenTelemetry settings and where each came from."""

    endpoint: str | None  # OTLP/HTTP base URL (``/v1/traces`` is appended); None: off
    service_name: str
    ratio: float
    queue_size: int
    metrics_interval_s: float
    resource: Mapping[str, str] = field(default_factory=dict)  # from OTEL_RESOURCE_ATTRIBUTES
    sources: Mapping[str, str] = field(default_factory=dict)  # setting -> where from

    @property
    def enabled(self) -> bool:
        return self.endpoint is not None

    def describe(self) -> str:
        if self.endpoint is None:
            return "off"
        return (
            f"{self.endpoint} ({self.sources['endpoint']}), service {self.service_name!r}, "
            f"batch sample ratio {self.ratio:g} ({self.sources['ratio']})"
        )


def _env(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    return value.strip() if value is not None and value.strip() else None


def resolve(cfg: TelemetryConfig, env: Mapping[str, str] | None = None) -> OtelSettings:
    """Merge ``telemetry.*`` with the ``OTEL_*`` variables; an ``OTEL_*``
    variable that is set (non-empty) wins.  Raises `ConfigError` naming the
    variable for a value it cannot use."""
    env = os.environ if env is None else env
    sources: dict[str, str] = {}

    endpoint = _env(env, "OTEL_EXPORTER_OTLP_ENDPOINT")
    if endpoint is not None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"OTEL_EXPORTER_OTLP_ENDPOINT: expected an http(s) URL, got {endpoint!r}"
            )
        sources["endpoint"] = "OTEL_EXPORTER_OTLP_ENDPOINT"
    else:
        endpoint = cfg.otlp_endpoint
        sources["endpoint"] = "telemetry.otlp_endpoint"
    disabled = (_env(env, "OTEL_SDK_DISABLED") or "").lower() == "true"
    if disabled:
        endpoint = None
        sources["endpoint"] = "OTEL_SDK_DISABLED"

    service = _env(env, "OTEL_SERVICE_NAME")
    sources["service_name"] = "OTEL_SERVICE_NAME" if service else "telemetry.service_name"
    service = service or cfg.service_name

    ratio = cfg.trace_sample_ratio
    sources["ratio"] = "telemetry.trace_sample_ratio"
    sampler = _env(env, "OTEL_TRACES_SAMPLER")
    if sampler is not None:
        name = sampler.lower()
        if name in _FIXED_SAMPLERS:
            ratio = _FIXED_SAMPLERS[name]
        elif name in _RATIO_SAMPLERS:
            arg = _env(env, "OTEL_TRACES_SAMPLER_ARG")
            ratio = 1.0  # the specification's default argument
            if arg is not None:
                try:
                    ratio = float(arg)
                except ValueError:
                    ratio = math.nan
                if not 0.0 <= ratio <= 1.0:
                    raise ConfigError(
                        f"OTEL_TRACES_SAMPLER_ARG: expected a ratio in [0, 1], got {arg!r}"
                    )
        else:
            known = ", ".join([*_FIXED_SAMPLERS, *_RATIO_SAMPLERS])
            raise ConfigError(f"OTEL_TRACES_SAMPLER: expected one of {known}, got {sampler!r}")
        sources["ratio"] = "OTEL_TRACES_SAMPLER"

    resource: dict[str, str] = {}
    raw = _env(env, "OTEL_RESOURCE_ATTRIBUTES")
    if raw is not None:
        for item in raw.split(","):
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(
                    f"OTEL_RESOURCE_ATTRIBUTES: expected key=value,..., got {item.strip()!r}"
                )
            resource[key.strip()] = value.strip()
    return OtelSettings(
        endpoint=endpoint,
        service_name=service,
        ratio=ratio,
        queue_size=cfg.trace_queue_size,
        metrics_interval_s=cfg.otlp_metrics_interval_s,
        resource=resource,
        sources=sources,
    )


def sample_threshold(ratio: float) -> int:
    """The listener's per-batch threshold: a batch is sampled when its 64-bit
    random draw (never 0) is <= this; 0 samples nothing, 2**64-1 everything."""
    if ratio <= 0.0:
        return 0
    if ratio >= 1.0:
        return (1 << 64) - 1
    return max(1, min((1 << 64) - 1, int(ratio * 2.0**64)))


# ------------------------------------------------------------------ counted export


class _Counts:
    """Spans handed to the processor, dropped (queue full), exported, failed."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.lock = threading.Lock()
        self.pending = 0  # queued, not yet taken by an export
        self.queued = 0
        self.dropped = 0
        self.exported = 0
        self.failed = 0
        self.metric_exports = 0
        self.metric_failures = 0
        self.export_cpu_ns = 0  # CPU time of the span export calls (their thread's)
        self.metrics_cpu_ns = 0  # CPU time of the metric rounds (snapshot, collect, export)


class _CountingExporter(SpanExporter):
    """Counts what each export call takes from the queue and how it ended."""

    def __init__(self, inner: SpanExporter, counts: _Counts) -> None:
        self._inner = inner
        self._counts = counts
        self._stopped = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        c = self._counts
        n = len(spans)
        with c.lock:
            c.pending = max(0, c.pending - n)
        t0 = time.thread_time_ns()
        if self._stopped:
            result = SpanExportResult.FAILURE
        else:
            try:
                result = self._inner.export(spans)
            except Exception:  # the exporter's own bug must not kill the worker
                result = SpanExportResult.FAILURE
        with c.lock:
            c.export_cpu_ns += time.thread_time_ns() - t0
            if result is SpanExportResult.SUCCESS:
                c.exported += n
            else:
                c.failed += n
        return result

    def shutdown(self) -> None:
        self._stopped = True
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


class _CountingMetricExporter(MetricExporter):
    """Counts metric export rounds by outcome (the reader ignores the result)."""

    def __init__(self, inner: MetricExporter, counts: _Counts) -> None:
        super().__init__(
            preferred_temporality=inner._preferred_temporality,
            preferred_aggregation=inner._preferred_aggregation,
        )
        self._inner = inner
        self._counts = counts

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        try:
            result = self._inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        except Exception:
            result = MetricExportResult.FAILURE
        with self._counts.lock:
            if result is MetricExportResult.SUCCESS:
                self._counts.metric_exports += 1
            else:
                self._counts.metric_failures += 1
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._inner.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._inner.shutdown(timeout_millis=timeout_millis, **kwargs)


class _BoundedProcessor(SpanProcessor):
    """A `BatchSpanProcessor` behind an admission count: a span finding
    ``capacity`` spans queued is dropped here (counted, no log line per span)."""

    def __init__(self, inner: BatchSpanProcessor, counts: _Counts) -> None:
        self._inner = inner
        self._counts = counts

    def on_start(self, span: Any, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        c = self._counts
        with c.lock:
            if c.pending >= c.capacity:
                c.dropped += 1
                return
            c.pending += 1
            c.queued += 1
        self._inner.on_end(span)

    def shutdown(self) -> None:
        self._inner.shutdown()  # type: ignore[no-untyped-call]

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


# ------------------------------------------------------------------ batch spans


class BatchTracer:
    """What a listener calls for a batch it sampled (one per market).

    ``begin(t_recv_ns)`` starts the span (at the batch's socket read time)
    and returns it with its ``traceparent``; ``end(...)`` records the counts
    and stage times and ends it at the bus publish.
    """

    def __init__(self, tracer: Tracer, market: str) -> None:
        self._tracer = tracer
        self.market = market
        self.sampled = 0  # batches traced
        self.spent_ns = 0  # time spent in begin and end (perf_counter_ns)

    def begin(self, t_recv_ns: int) -> tuple[Span, str]:
        t0 = perf_counter_ns()
        span = self._tracer.start_span(
            "meltica.batch",
            kind=SpanKind.CONSUMER,
            start_time=t_recv_ns,
            attributes={"meltica.market": self.market},
        )
        tp = traceparent_of(span.get_span_context())
        self.spent_ns += perf_counter_ns() - t0
        return span, tp

    def end(
        self,
        span: Span,
        t_handoff_ns: int,
        t_published_ns: int,
        events_in: int,
        events_out: int,
        frames: int,
        nbytes: int,
    ) -> None:
        t0 = perf_counter_ns()
        t_recv_ns = getattr(span, "start_time", None) or t_handoff_ns
        span.set_attributes(
            {
                "meltica.frames": frames,
                "meltica.bytes": nbytes,
                "meltica.events.parsed": events_in,
                "meltica.events.published": events_out,
                "meltica.stage.read_to_handoff_ns": max(0, t_handoff_ns - t_recv_ns),
                "meltica.stage.handoff_to_publish_ns": max(0, t_published_ns - t_handoff_ns),
            }
        )
        span.add_event("parsed", timestamp=t_handoff_ns)
        span.add_event("published", timestamp=t_published_ns)
        span.end(end_time=t_published_ns)
        self.sampled += 1
        self.spent_ns += perf_counter_ns() - t0


# ------------------------------------------------------------------ metrics bridge


class _MetricsBridge:
    """OTel observable instruments reading a snapshot of ``Sample``\\ s.

    The snapshot is taken on the event loop (where the counters live), then
    the reader collects and exports in a worker thread; an instrument is
    made the first time its name appears (counter -> ObservableCounter,
    anything else -> ObservableGauge), with the family's declared help as its
    description and its declared unit in UCUM (``s``, ``By``, ``1``).  OTel
    names counters without Prometheus' ``_total`` suffix: ``ws_frames_total``
    on ``/metrics`` is the instrument ``meltica.ws_frames``.
    """

    def __init__(self, meter: Meter, prefix: str = "meltica.") -> None:
        self._meter = meter
        self._prefix = prefix
        self._snapshot: dict[str, list[Sample]] = {}
        self._made: set[str] = set()
        self.instruments = 0

    def update(self, samples: Iterable[Sample]) -> None:
        snap: dict[str, list[Sample]] = {}
        for s in samples:
            snap.setdefault(s.name, []).append(s)
        self._snapshot = snap
        for name, group in snap.items():
            if name not in self._made:
                self._make(name, group[0])

    def _make(self, name: str, first: Sample) -> None:
        self._made.add(name)

        def observe(options: CallbackOptions, name: str = name) -> Iterable[Observation]:
            return [Observation(s.value, dict(s.labels)) for s in self._snapshot.get(name, ())]

        unit = _UCUM.get(first.unit, first.unit or "1")
        if first.kind == "counter":
            self._meter.create_observable_counter(
                self._prefix + name.removesuffix("_total"),
                [observe],
                unit=unit,
                description=first.help,
            )
        else:
            self._meter.create_observable_gauge(
                self._prefix + name, [observe], unit=unit, description=first.help
            )
        self.instruments += 1


# the catalogue's base units in UCUM, as OTel names them
_UCUM: Final[Mapping[str, str]] = {"seconds": "s", "bytes": "By", "": "1"}


# ------------------------------------------------------------------ exporter logs


class _OncePerInterval(logging.Filter):
    """Lets one record through per interval; counts the others and says so in
    the next one.  Failed exports are counted (otel_spans_total, ...): a collector
    that stays down must not write a log line per attempt."""

    def __init__(self, interval_s: float = 60.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._next = 0.0
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now < self._next:
            self.suppressed += 1
            return False
        self._next = now + self.interval_s
        if self.suppressed:
            record.msg = (
                f"{record.msg} [and {self.suppressed} more OpenTelemetry export messages "
                f"in the last {self.interval_s:g} s; failures are counted in "
                "meltica_otel_spans_total and meltica_otel_metric_exports_total]"
            )
            self.suppressed = 0
        return True


_EXPORT_LOGGERS: Final = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.exporter.otlp.proto.http",
    "opentelemetry.sdk._shared_internal",
)


def _quiet_exporter_logs() -> None:
    for name in _EXPORT_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _OncePerInterval) for f in logger.filters):
            logger.addFilter(_OncePerInterval())


# ------------------------------------------------------------------ the whole


class Otel:
    """Tracer and meter providers exporting over OTLP/HTTP (module docstring).

    ``span_exporter`` / ``metric_exporter``: injectable for tests (default:
    the OTLP/HTTP exporters at ``<endpoint>/v1/traces`` and ``/v1/metrics``).
    """

    def __init__(
        self,
        settings: OtelSettings,
        *,
        instance: str | None = None,
        span_exporter: SpanExporter | None = None,
        metric_exporter: MetricExporter | None = None,
    ) -> None:
        if settings.endpoint is None:
            raise ValueError("Otel needs an endpoint (tracing is off without one)")
        self.settings = settings
        base = settings.endpoint.rstrip("/")
        attrs: dict[str, str] = {"service.version": __version__}
        if instance:
            attrs["service.instance.id"] = instance
        attrs.update(settings.resource)
        attrs["service.name"] = settings.service_name
        # resolve() already read OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME
        self.resource = Resource(attrs)
        self.counts = _Counts(settings.queue_size)
        _quiet_exporter_logs()
        if span_exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            span_exporter = OTLPSpanExporter(
                endpoint=f"{base}/v1/traces", timeout=_EXPORT_TIMEOUT_S
            )
        self._span_exporter = _CountingExporter(span_exporter, self.counts)
        bsp = BatchSpanProcessor(
            self._span_exporter,
            max_queue_size=settings.queue_size,
            max_export_batch_size=min(_EXPORT_BATCH, settings.queue_size),
            schedule_delay_millis=1000,
        )
        self.provider = TracerProvider(resource=self.resource, sampler=ALWAYS_ON)
        self.provider.add_span_processor(_BoundedProcessor(bsp, self.counts))
        self.tracer: Tracer = self.provider.get_tracer("meltica", __version__)
        if metric_exporter is None:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                OTLPMetricExporter,
            )

            metric_exporter = OTLPMetricExporter(
                endpoint=f"{base}/v1/metrics", timeout=_EXPORT_TIMEOUT_S
            )
        # collected on demand (see _metrics_loop): no reader thread of its own
        self.reader = PeriodicExportingMetricReader(
            _CountingMetricExporter(metric_exporter, self.counts), export_interval_millis=math.inf
        )
        self.meter_provider = MeterProvider(resource=self.resource, metric_readers=[self.reader])
        self.bridge = _MetricsBridge(self.meter_provider.get_meter("meltica", __version__))
        self._samples: Callable[[], Iterable[Sample]] | None = None
        self._task: asyncio.Task[None] | None = None
        self.batch_tracers: list[BatchTracer] = []

    # -- pieces handed to components

    @property
    def threshold(self) -> int:
        return sample_threshold(self.settings.ratio)

    def batch_tracer(self, market: str) -> BatchTracer:
        bt = BatchTracer(self.tracer, market)
        self.batch_tracers.append(bt)
        return bt

    def attach(self, engine: Any) -> None:
        """Hand the tracer to an engine's components (before it starts); the
        NATS publisher, made at start, gets it there."""
        for market, manager in engine.managers.items():
            manager.tracer = self.tracer
            manager.batch_tracer = self.batch_tracer(market)
            manager.sample_threshold = self.threshold
        engine.rest.tracer = self.tracer
        engine.conductor.tracer = self.tracer
        engine.control.tracer = self.tracer

    # -- lifecycle

    async def start(self, samples: Callable[[], Iterable[Sample]]) -> None:
        """Start exporting ``samples()`` as OTel metrics every metrics interval."""
        self._samples = samples
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._metrics_loop(), name="otel-metrics"
            )

    async def _metrics_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.metrics_interval_s)
            await self.export_metrics()

    async def export_metrics(self) -> None:
        """Snapshot the counters here (on the loop), collect and export in a thread."""
        if self._samples is None:
            return
        t0 = time.thread_time_ns()
        self.bridge.update(list(self._samples()))
        snapshot_ns = time.thread_time_ns() - t0
        try:
            # the exporter's outcome is counted by _CountingMetricExporter
            await asyncio.to_thread(self._collect)
        except Exception as exc:  # a collection error: logged and counted, never raised
            with self.counts.lock:
                self.counts.metric_failures += 1
            log.debug("OTLP metrics collection failed: %s", exc)
        with self.counts.lock:
            self.counts.metrics_cpu_ns += snapshot_ns

    def _collect(self) -> None:
        t0 = time.thread_time_ns()
        try:
            self.reader.collect(_EXPORT_TIMEOUT_S * 1000)
        finally:
            with self.counts.lock:
                self.counts.metrics_cpu_ns += time.thread_time_ns() - t0

    async def stop(self) -> None:
        """A last metrics export and span flush (bounded), then shut down."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(Exception, TimeoutError):
            await asyncio.wait_for(self.export_metrics(), _STOP_TIMEOUT_S)
        with contextlib.suppress(Exception, TimeoutError):
            await asyncio.wait_for(
                asyncio.to_thread(self.provider.force_flush, int(_STOP_TIMEOUT_S * 1000)),
                _STOP_TIMEOUT_S,
            )
        # shutdown joins the export thread: bounded, and off the loop
        self._span_exporter._stopped = True
        with contextlib.suppress(Exception, TimeoutError):
            await asyncio.wait_for(asyncio.to_thread(self._shutdown), _STOP_TIMEOUT_S)

    def _shutdown(self) -> None:
        self.provider.shutdown()
        self.meter_provider.shutdown(timeout_millis=_STOP_TIMEOUT_S * 1000)

    # -- counters

    def samples(self) -> Iterator[Sample]:
        """The exporter's own counters (families declared in meltica/telemetry/catalog.py)."""
        c = self.counts
        for outcome, value in (
            ("exported", c.exported),
            ("failed", c.failed),
            ("dropped", c.dropped),
        ):
            yield catalog.sample("otel_spans_total", value, outcome=outcome)
        yield catalog.sample("otel_span_queue", c.pending)
        yield catalog.sample(
            "otel_batches_sampled_total", sum(bt.sampled for bt in self.batch_tracers)
        )
        yield catalog.sample(
            "otel_batch_span_seconds_total",
            sum(bt.spent_ns for bt in self.batch_tracers) / 1e9,
        )
        yield catalog.sample("otel_span_export_cpu_seconds_total", c.export_cpu_ns / 1e9)
        yield catalog.sample("otel_metrics_cpu_seconds_total", c.metrics_cpu_ns / 1e9)
        for outcome, value in (("ok", c.metric_exports), ("failed", c.metric_failures)):
            yield catalog.sample("otel_metric_exports_total", value, outcome=outcome)

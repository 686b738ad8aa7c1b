"""Prometheus ``/metrics``, ``/healthz`` and ``/readyz`` on the engine's event loop.

Nothing here is on the hot path: components keep plain counters (C integers in
``_core``, ints in Python) and a scrape reads them through one callable that
yields `Sample`s.  Latency histograms are `Histogram` objects fed once per
batch.  The server is aiohttp, bound to loopback unless configured otherwise.

A scrape shares the event loop with the data: with the whole market's books
(~27k samples) one read-and-format in one go held the loop ~260 ms.  ``/metrics``
therefore reads the samples in slices of at most `SCRAPE_SLICE_S` and formats
them `RENDER_CHUNK` at a time, giving the loop back between slices; the body is
the same text ``generate_latest`` gives.
"""

from __future__ import annotations

import asyncio
import bisect
import gc
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

PREFIX = "meltica_"

# /metrics hands the loop back at least this often while reading samples, and after
# formatting this many samples (~1 ms on the 2-core dev VM)
SCRAPE_SLICE_S = 0.001
RENDER_CHUNK = 200

# Latency buckets in seconds: 10 µs .. 10 s, roughly 1-2.5-5 per decade.
LATENCY_BUCKETS: tuple[float, ...] = (
    *(m * 10.0**e for e in range(-5, 1) for m in (1.0, 2.5, 5.0)),
    10.0,
)


@dataclass(frozen=True, slots=True)
class Sample:
    """One metric value of a family declared in `meltica.telemetry.catalog`.

    ``kind`` is ``counter`` or ``gauge``; ``name`` is without the ``meltica_``
    prefix (counters end in ``_total``); ``unit`` is the base unit the name ends
    with (``seconds``, ``bytes``) or "" for counts.  Any exporter (Prometheus
    here, OpenTelemetry elsewhere) can read these fields alone."""

    name: str
    kind: str
    help: str
    value: float
    labels: tuple[tuple[str, str], ...] = ()
    unit: str = ""


@dataclass
class Histogram:
    """A cumulative histogram of seconds with fixed buckets (fed per batch, not per event).

    The compiled per-batch paths update ``counts``, ``total`` and ``n`` in place
    as `observe` does (meltica/telemetry/_histogram.pyx): change both together."""

    name: str
    help: str
    labels: tuple[tuple[str, str], ...] = ()
    buckets: Sequence[float] = LATENCY_BUCKETS
    unit: str = "seconds"
    kind: str = "histogram"
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, seconds: float, count: int = 1) -> None:
        """Record `count` observations of `seconds`."""
        self.counts[bisect.bisect_left(self.buckets, seconds)] += count
        self.total += seconds * count
        self.n += count


def _families(samples: Iterable[Sample], histograms: Iterable[Histogram]) -> Iterator[Metric]:
    grouped: dict[str, list[Sample]] = {}
    for s in samples:
        grouped.setdefault(s.name, []).append(s)
    for name, group in grouped.items():
        first = group[0]
        label_names = [k for k, _ in first.labels]
        fam: CounterMetricFamily | GaugeMetricFamily
        if first.kind == "counter":
            # prometheus-client takes the name without _total and adds it back
            fam = CounterMetricFamily(
                PREFIX + name.removesuffix("_total"),
                first.help,
                labels=label_names,
                unit=first.unit,
            )
        else:
            fam = GaugeMetricFamily(PREFIX + name, first.help, labels=label_names, unit=first.unit)
        for s in group:
            fam.add_metric([v for _, v in s.labels], s.value)
        yield fam
    by_name: dict[str, list[Histogram]] = {}
    for h in histograms:
        by_name.setdefault(h.name, []).append(h)
    for name, hs in by_name.items():
        hfam = HistogramMetricFamily(
            PREFIX + name, hs[0].help, labels=[k for k, _ in hs[0].labels], unit=hs[0].unit
        )
        for h in hs:
            cumulative, acc = [], 0
            for bound, c in zip([*h.buckets, math.inf], h.counts, strict=True):
                acc += c
                cumulative.append(("+Inf" if bound == math.inf else repr(bound), acc))
            hfam.add_metric([v for _, v in h.labels], cumulative, sum_value=h.total)
        yield hfam


class StatsCollector(Collector):
    """A prometheus-client collector reading `Sample`s and `Histogram`s at scrape time."""

    def __init__(
        self,
        samples: Callable[[], Iterable[Sample]],
        histograms: Callable[[], Iterable[Histogram]] = lambda: (),
    ) -> None:
        self._samples = samples
        self._histograms = histograms

    def collect(self) -> Iterator[Metric]:
        yield from _families(self._samples(), self._histograms())

    async def read_sliced(self) -> tuple[dict[str, list[Sample]], list[Histogram]]:
        """The samples grouped by name, read giving the loop back every `SCRAPE_SLICE_S`.

        A reader that walks a live mapping which changes while it waits raises
        RuntimeError: the samples are then read again in one go."""
        loop = asyncio.get_running_loop()
        grouped: dict[str, list[Sample]] = {}
        deadline = loop.time() + SCRAPE_SLICE_S
        try:
            for i, sample in enumerate(self._samples()):
                grouped.setdefault(sample.name, []).append(sample)
                if i & 15 == 15 and loop.time() >= deadline:
                    await asyncio.sleep(0)
                    deadline = loop.time() + SCRAPE_SLICE_S
        except RuntimeError:
            grouped = {}
            for sample in self._samples():
                grouped.setdefault(sample.name, []).append(sample)
        return grouped, list(self._histograms())


class _Families:
    """What ``generate_latest`` reads from a registry: a fixed list of families."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


async def render_sliced(collector: StatsCollector, runtime: CollectorRegistry) -> bytes:
    """``generate_latest`` of ``collector`` then ``runtime``, made in slices (see the module)."""
    # the tens of thousands of samples a scrape holds would make the collector walk
    # them again and again (generation 2 pauses of ~3 ms at 2,400 books): it waits
    # until the body is made (nothing a scrape allocates forms a cycle)
    enabled = gc.isenabled()
    gc.disable()
    try:
        grouped, histograms = await collector.read_sliced()
        parts: list[bytes] = []
        for group in grouped.values():
            for start in range(0, len(group), RENDER_CHUNK):
                chunk = group[start : start + RENDER_CHUNK]
                text = generate_latest(_Families(_families(chunk, ())))
                if start:  # the family's # HELP and # TYPE lines come once, with its first chunk
                    text = text.split(b"\n", 2)[2]
                parts.append(text)
                await asyncio.sleep(0)
        parts.append(generate_latest(_Families(_families((), histograms))))
        parts.append(generate_latest(runtime))
    finally:
        if enabled:
            gc.enable()
    return b"".join(parts)


class MetricsServer:
    """Serves ``/metrics`` (Prometheus text), ``/healthz`` (the loop answers) and
    ``/readyz`` (200 once `ready()` is true, else 503 with the lines of
    `not_ready()`, which say why).  `routes` adds more handlers (``/tail``).
    `shutdown_timeout_s` bounds how long `stop` waits for handlers still
    running (their owners end streaming ones first)."""

    def __init__(
        self,
        collector: StatsCollector,
        *,
        host: str = "127.0.0.1",
        port: int = 9464,
        ready: Callable[[], bool] = lambda: True,
        not_ready: Callable[[], Iterable[str]] = lambda: (),
        routes: Callable[[web.Application], None] | None = None,
        shutdown_timeout_s: float = 1.0,
    ) -> None:
        self.collector = collector
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        # process_* (CPU, memory, file descriptors), python_gc_*, python_info: in the
        # registry and, for the sliced /metrics, on their own
        self.runtime = CollectorRegistry(auto_describe=False)
        for runtime in (
            ProcessCollector(registry=self.runtime),
            GCCollector(registry=self.runtime),
            PlatformCollector(registry=self.runtime),
        ):
            self.registry.register(runtime)
        self.host = host
        self.port = port
        self._ready = ready
        self._not_ready = not_ready
        self.shutdown_timeout_s = shutdown_timeout_s
        self._routes = routes
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        if self._runner is not None:
            return
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        if self._routes is not None:
            self._routes(app)
        # handler_cancellation: a client that hangs up cancels its handler, so a
        # streaming one (/tail) waiting for data ends at once.  The short
        # shutdown_timeout bounds what a handler still running at stop may take
        # (streams are ended by their owner before stop; see TailEndpoint.close).
        runner = web.AppRunner(
            app,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=self.shutdown_timeout_s,
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        server = site._server
        if server is not None and self.port == 0:
            sockets = getattr(server, "sockets", None) or ()
            for sock in sockets:
                self.port = sock.getsockname()[1]
                break
        self._runner = runner

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def _metrics(self, request: web.Request) -> web.Response:
        body = await render_sliced(self.collector, self.runtime)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        if self._ready():
            return web.Response(text="ready\n")
        reasons = "".join(f"{line}\n" for line in self._not_ready())
        return web.Response(status=503, text="not ready\n" + reasons)

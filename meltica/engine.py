"""The gateway: adapters -> Dispatcher -> Conductor -> Data Bus, wired from config.

`Engine` builds every component of docs/pipeline.md from a `Config`, starts
them in dependency order and stops them in reverse.  ``start``/``stop`` are
idempotent; ``run`` starts, waits for SIGINT/SIGTERM (or `request_stop`) and
stops cleanly: connections are closed first (their last frames are flushed
through the pipeline), then the Conductor's timers, the REST session and the
HTTP endpoint (whose open ``/tail`` streams it ends itself).  Everything
runs on one event loop (uvloop in the CLI).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast

from aiohttp import web
from nats.aio.client import Client as NatsClient

from meltica import __version__
from meltica._core.dispatch import DispatchTable
from meltica._core.events import Control
from meltica._core.parser import SIMD_KERNEL, SIMD_REASON
from meltica.adapters.binance.backfill import HoleOutcome, TradeBackfill
from meltica.adapters.binance.instruments import InstrumentRegistry
from meltica.adapters.binance.rest import REST_MAX_PENDING, BinanceRest, depth_limit, depth_weight
from meltica.adapters.binance.streams import VOCABULARY, channel_of
from meltica.adapters.binance.ws import ConnectionManager
from meltica.broker import connect as broker_connect
from meltica.broker import gateway_id
from meltica.bus.control import InProcessControlBus
from meltica.bus.control_http import ControlEndpoint
from meltica.bus.control_nats import NatsControlResponder
from meltica.bus.data import InMemoryDataBus
from meltica.bus.nats import NatsPublisher, ensure_stream
from meltica.conductor import Conductor
from meltica.conductor.audit import BookAuditor
from meltica.config import Config, Market
from meltica.control import ControlReply, ControlRequest
from meltica.dispatcher.dispatcher import MAX_STREAMS_PER_REQUEST, Dispatcher
from meltica.errors import MelticaError
from meltica.gaps import LOST, OUTCOMES, GapManifest
from meltica.gateway import BookQuery, GatewayControl
from meltica.log import root as _root_log
from meltica.shard import parse_shard
from meltica.snapshot import MemorySnapshotStore
from meltica.snapshot.redis_store import RedisSnapshotWriter
from meltica.telemetry.catalog import histogram, sample, stats_samples
from meltica.telemetry.metrics import Histogram, MetricsServer, Sample, StatsCollector
from meltica.telemetry.otel import Otel, resolve
from meltica.telemetry.tail import TailEndpoint

log = _root_log.getChild("engine")

__all__ = ["Engine", "StartupError"]

# channels whose holes are found by their ids, not by connection outages: diff
# depth (the Conductor's continuity check)
ID_CHECKED_CHANNELS = frozenset({"depth"})
# and those the trade backfill checks by id when binance.backfill.enabled
BACKFILLED_CHANNELS = frozenset({"trade", "agg_trade"})

# at shutdown, how long the JetStream publisher may wait for outstanding acks
NATS_FLUSH_TIMEOUT_S = 10.0


class StartupError(MelticaError, RuntimeError):
    """The gateway could not start (exchangeInfo unreachable, subscription refused, ...)."""

    reason = "startup"


class _BookTracker:
    """What the Dispatcher calls on depth (un)subscription: the Conductor, with the
    instrument's tick/step exponents from exchangeInfo when known."""

    def __init__(
        self, conductor: Conductor, instruments: InstrumentRegistry, venues: dict[str, str]
    ) -> None:
        self._conductor = conductor
        self._instruments = instruments
        self._venues = venues

    def track(self, market: str, symbol: str) -> None:
        inst = self._instruments.get(market, symbol)
        price_exp = getattr(inst, "price_exp", None)
        qty_exp = getattr(inst, "qty_exp", None)
        self._conductor.track(
            market, symbol, price_exp=price_exp, qty_exp=qty_exp, venue=self._venues[market]
        )

    def untrack(self, market: str, symbol: str) -> None:
        self._conductor.untrack(market, symbol)

    def resync(self, market: str, symbol: str) -> None:
        self._conductor.resync(market, symbol)


class Engine:
    """One gateway process.  ``config`` is the effective `Config`.

    ``subscribe_on_start``: subscribe the configured symbols x streams of every
    market during `start` (the CLI's ``run``); ``replay`` subscribes its own.
    """

    def __init__(self, config: Config, *, subscribe_on_start: bool = True) -> None:
        self.config = config
        self._subscribe_on_start = subscribe_on_start
        b = config.binance
        self.markets: tuple[Market, ...] = tuple(b.markets)
        # at start every book of a market queues one depth snapshot at once, and the weight
        # budget lets them out over minutes (the whole spot market: 1,920 books against 600
        # snapshots a minute): the queue holds them all, plus the usual bound for the rest,
        # so that none fails with RestQueueFull and sleeps in the snapshot back-off
        books = max((len(b.market(m).symbols) for m in self.markets), default=0)
        self.rest = BinanceRest.from_config(
            b,
            request_timeout_s=b.rest_request_timeout_s,
            retry_deadline_s=b.rest_retry_deadline_s,
            max_pending=REST_MAX_PENDING + books,
            api_key=b.backfill.api_key or None,
        )
        self.instruments = InstrumentRegistry(self.rest)
        self.bus = InMemoryDataBus(
            config.bus.capacity,
            policy=config.bus.policy,
            batch_size=config.bus.batch_size,
            on_pause=self._pause_reading,
            on_resume=self._resume_reading,
        )
        self.store = MemorySnapshotStore(
            config.snapshot.max_entries, default_ttl_s=config.snapshot.ttl_s
        )
        sc = config.snapshot
        # snapshot.backend redis: the in-memory store above stays written from C;
        # the writer copies each batch's book states to Redis off the hot path
        self.redis_store: RedisSnapshotWriter | None = (
            RedisSnapshotWriter(
                sc.redis_url,
                key_prefix=sc.key_prefix,
                ttl_s=sc.ttl_s,
                queue_max=sc.redis_queue_max,
                timeout_s=sc.redis_timeout_s,
            )
            if sc.backend == "redis"
            else None
        )
        c = config.conductor
        self.conductor = Conductor(
            self.bus.publish_batch,
            self._fetch_snapshot,
            store=self.store,
            book_depth=c.book_depth,
            publish_interval_ms=c.publish_interval_ms,
            snapshot_buffer_max=c.snapshot_buffer_max,
            snapshot_wait_tail=c.snapshot_wait_tail or None,
            snapshot_retry_s=c.snapshot_retry_s,
            snapshot_retry_max_s=c.snapshot_retry_max_s,
            snapshot_ttl_s=config.snapshot.ttl_s,
            analytics=c.analytics,
            mirror=None if self.redis_store is None else self.redis_store.offer,
            depth_limit=self._depth_limit,
            publish_unverified=c.publish_unverified,
        )
        # audits of live books against low-priority snapshots (docs/conductor.md)
        self.auditor = BookAuditor(
            self.conductor,
            self._fetch_audit_snapshot,
            interval_s=c.audit_interval_s,
            affordable=self._audit_affordable,
            limit=self._depth_limit,
        )
        # every hole in what the exchange sent, with its outcome (docs/gaps.md)
        self.gaps = GapManifest(config.gaps.max_entries, config.gaps.path)
        self.conductor.gaps = self.gaps
        self.auditor.on_resync = self._on_audit_resync
        self.table = DispatchTable()
        self.managers: dict[str, ConnectionManager] = {}
        for market in self.markets:
            self.managers[market] = self._manager(market)
            self.managers[market].on_outage = functools.partial(self._on_outage, market)
        self.dispatcher = Dispatcher(
            self.table,
            self.managers,
            self.instruments,
            self.conductor.on_events,
            vocabulary=VOCABULARY,
            conductor=_BookTracker(
                self.conductor,
                self.instruments,
                {m: getattr(b.market(m), "venue", "binance") for m in self.markets},
            ),
            depth_speed_ms={m: b.market(m).depth_speed_ms for m in self.markets},
            ack_timeout_s=max(10.0, 4 * b.ack_timeout_s),
        )
        for manager in self.managers.values():
            # frames go straight to the Dispatcher: one Python call less per batch
            manager.set_sink(self.dispatcher.on_events)
        # trade id holes the table records are filled from REST (docs/rest.md)
        self.backfill: TradeBackfill | None = None
        if b.backfill.enabled:
            self.backfill = TradeBackfill(
                self.rest,
                self.dispatcher.on_events,
                venues={m: getattr(b.market(m), "venue", "binance") for m in self.markets},
                max_ids=b.backfill.max_ids,
                max_age_s=b.backfill.max_age_s,
                max_holes=b.backfill.max_holes,
                max_batch=max(64, self.config.bus.capacity // 32),
                paused=lambda: self.bus.paused,
                on_outcome=self._on_hole_outcome,
            )
            self.backfill.attach(self.table)
        self.gateway_id = gateway_id(config.gateway)
        # gateway.shard: the symbols this gateway subscribes and answers for (meltica/shard.py)
        self.shard = parse_shard(config.gateway.shard)
        self.books = BookQuery(
            self.conductor, self.store, self.markets, self.shard, gateway=self.gateway_id
        )
        self.control = InProcessControlBus(
            GatewayControl(self.dispatcher, self.books, self.shard, health=self.not_ready),
            gateway=self.gateway_id,
        )
        # OpenTelemetry over OTLP/HTTP (docs/tracing.md): off without an endpoint
        self.otel: Otel | None = None
        otel_settings = resolve(config.telemetry)
        if otel_settings.enabled:
            self.otel = Otel(otel_settings, instance=self.gateway_id)
            self.otel.attach(self)
        self.tail = TailEndpoint(self.bus)
        # the Control Bus on the shared NATS connection (bus.backend nats)
        self.control_nats: NatsControlResponder | None = None
        t = config.telemetry
        self.control_http = ControlEndpoint(
            self.control, host=t.metrics_host, token=t.control_token
        )
        self.metrics: MetricsServer | None = None
        if t.metrics_enabled:
            self.metrics = MetricsServer(
                StatsCollector(self.samples, self.histograms),
                host=t.metrics_host,
                port=t.metrics_port,
                ready=self.ready,
                not_ready=self.not_ready,
                routes=self.add_routes,
            )
        # the per-stage latency histograms (docs/metrics.md)
        self.exchange_latency: dict[str, Histogram] = {
            m: histogram("exchange_latency_seconds", market=m) for m in self.markets
        }
        self.dispatcher.gate.event_latency = self.exchange_latency
        self.pipeline_latency = histogram("pipeline_latency_seconds")
        self.bus.latency = self.pipeline_latency
        self.delivery_latency: dict[str, Histogram] = {}
        self.bus.delivery_latency = self._delivery_histogram
        # bus.backend nats: the shared NATS client and the JetStream publisher
        # (a block consumer of the ring), made in start()
        self.nats: NatsClient | None = None
        self.nats_bus: NatsPublisher | None = None
        self._state = "new"
        self._stopping: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._frozen = False  # start-up objects frozen out of the collector (gc.freeze)
        self.started_ns = 0

    # ------------------------------------------------------------ wiring

    def _manager(self, market: Market) -> ConnectionManager:
        b = self.config.binance
        m = b.market(market)
        urls: str | dict[str, str]
        if market == "usdm":
            urls = {"public": b.usdm.public_ws_url, "market": b.usdm.market_ws_url}
        else:  # spot, and COIN-M (one path for every stream kind)
            urls = m.ws_base_url
        return ConnectionManager(
            urls,
            market=market,
            venue=getattr(m, "venue", "binance"),
            sink=self._no_sink,
            on_control=self._on_control,
            time_unit=m.time_unit,
            max_streams_per_connection=m.max_streams_per_connection,
            control_msgs_per_second=m.control_msgs_per_second,
            silence_timeout_s=m.silence_timeout_s,
            ping_interval_s=m.ping_interval_s,
            pong_timeout_s=m.pong_timeout_s,
            reconnect_initial_s=b.reconnect_initial_s,
            reconnect_max_s=b.reconnect_max_s,
            rotate_after_s=b.rotate_after_s,
            max_frame_bytes=self.config.parser.max_frame_bytes,
            ack_timeout_s=b.ack_timeout_s,
            overlap_max_s=b.overlap_max_s,
            # a hand-off from one connection stays well inside the bus's reserve (the
            # quarter of its capacity left once a block consumer pauses the readers)
            max_batch=max(64, self.config.bus.capacity // 32),
        )

    @staticmethod
    def _no_sink(batch: list[Any]) -> None:  # replaced by the Dispatcher in __init__
        raise RuntimeError("connection manager used before the engine wired its sink")

    def _on_control(self, event: Control) -> None:
        self.dispatcher.on_events([event])

    def _on_outage(self, market: str, stream: str, from_ns: int, to_ns: int, cause: str) -> None:
        """A stream's time without a connection.  Diff depth is left to the
        Conductor, whose continuity check finds the exact update ids missed, and
        trades to the backfill (when on), which finds and fills them by id."""
        try:
            symbol, channel = channel_of(market, stream)
        except MelticaError:
            return  # not a per-symbol stream
        if channel in ID_CHECKED_CHANNELS or (
            self.backfill is not None and channel in BACKFILLED_CHANNELS
        ):
            return
        self.gaps.record(market, symbol, channel, cause, LOST, from_ns=from_ns, to_ns=to_ns)

    def _on_audit_resync(self, record: dict[str, Any]) -> None:
        """An audit found a book wrong and resynced it: the update ids it may have
        been wrong over go into the manifest."""
        self.gaps.record(
            record["market"],
            record["symbol"],
            record["stream"],
            record["cause"],
            record["outcome"],
            first_id=record["first_id"],
            last_id=record["last_id"],
        )

    def _on_hole_outcome(self, hole: HoleOutcome) -> None:
        """A trade id hole filled from REST, or lost (with why), into the manifest."""
        self.gaps.record(
            hole.market,
            hole.symbol,
            hole.kind,
            "continuity",
            hole.outcome,
            first_id=hole.first,
            last_id=hole.last,
            reason=hole.reason,
            detected_ns=hole.found_ns,
        )

    def _fetch_snapshot(
        self, market: str, symbol: str, on_sent: Callable[[], None] | None = None
    ) -> Any:
        return self.rest.depth_snapshot(market, symbol, urgent=True, on_sent=on_sent)

    def _fetch_audit_snapshot(self, market: str, symbol: str) -> Any:
        return self.rest.depth_snapshot(market, symbol, low=True)

    def _depth_limit(self, market: str) -> int:
        """Levels per side of this engine's depth snapshots of ``market``."""
        n = self.config.binance.market(cast(Market, market)).depth_snapshot_limit
        return depth_limit(market, n, n)

    def _audit_affordable(self, market: str) -> bool:
        """Room in the market's REST window for an audit snapshot twice over (the
        other half stays for resyncs)."""
        return self.rest.headroom(market) >= 2 * depth_weight(market, self._depth_limit(market))

    def _pause_reading(self) -> None:
        for manager in self.managers.values():
            manager.pause_reading()

    def _resume_reading(self) -> None:
        for manager in self.managers.values():
            manager.resume_reading()

    # ------------------------------------------------------------ lifecycle

    @property
    def state(self) -> str:
        return self._state

    async def start(self) -> None:
        """Load instruments, open the HTTP endpoint, start connections, subscribe."""
        if self._state in ("starting", "running"):
            return
        self._state = "starting"
        self._stopping = asyncio.Event()
        self.started_ns = time.time_ns()
        try:
            if self.config.bus.backend == "nats":
                await self._start_nats()
            if self.redis_store is not None:
                await self.redis_store.start()
            for market in self.markets:
                try:
                    await self.instruments.refresh(market)
                except MelticaError as exc:
                    raise StartupError(f"exchangeInfo for {market} failed: {exc}") from exc
            if self.metrics is not None:
                await self.metrics.start()
            if self.otel is not None:
                await self.otel.start(self.samples)
                log.info("OpenTelemetry export: %s", self.otel.settings.describe())
            log.info(
                "meltica-engine %s starting: markets %s, %d symbols, metrics %s, "
                "simdjson kernel %s (%s)",
                __version__,
                ",".join(self.markets),
                sum(len(self.config.binance.market(m).symbols) for m in self.markets),
                f"{self.metrics.url}/metrics" if self.metrics is not None else "off",
                SIMD_KERNEL,
                SIMD_REASON,
            )
            # before any data: what start-up built lives as long as the process
            self._freeze_heap()
            for manager in self.managers.values():
                await manager.start()
            if self.nats is not None:
                self.control_nats = NatsControlResponder(self.nats, self.control, self.gateway_id)
                await self.control_nats.start()
            refresh: dict[str, float] = {
                m: self.config.binance.market(m).exchange_info_refresh_s for m in self.markets
            }
            loop = asyncio.get_running_loop()
            # start() has just loaded every market: the first refresh is one interval away
            self._tasks.append(
                loop.create_task(self.instruments.run(refresh, loaded=True), name="instruments")
            )
            self._tasks.append(loop.create_task(self.auditor.run(), name="book-audit"))
            if self._subscribe_on_start:
                for market in self.markets:
                    m = self.config.binance.market(market)
                    mine = tuple(s for s in m.symbols if self.shard.owns(market, s))
                    if not mine:
                        log.info("%s: no configured symbol in shard %s", market, self.shard)
                        continue
                    log.debug("subscribing %s: %s x %s", market, mine, m.streams)
                    # A control request carries at most MAX_STREAMS_PER_REQUEST streams: the
                    # whole market (thousands of symbols) goes in as many requests as needed.
                    step = max(1, MAX_STREAMS_PER_REQUEST // max(1, len(m.streams)))
                    for i in range(0, len(mine), step):
                        reply = await self.request(
                            ControlRequest(
                                "subscribe",
                                market=market,
                                symbols=mine[i : i + step],
                                channels=tuple(m.streams),
                            )
                        )
                        if not reply.ok:
                            raise StartupError(f"subscribing {market} failed: {reply.error}")
            if self._subscribe_on_start:
                # the books and streams just subscribed live as long too: the second
                # collection walks only what was allocated since the first freeze
                self._freeze_heap()
        except BaseException:
            await self.stop()
            raise
        self._state = "running"
        log.info(
            "running: %d streams subscribed, %d books tracked",
            sum(m.stats().get("streams", 0) for m in self.managers.values()),
            len(self.conductor.status()["instruments"]),
        )

    async def stop(self) -> None:
        """Stop everything (idempotent): connections first, so their last frames flush."""
        if self._state in ("stopped", "new"):
            self._state = "stopped"
            self.gaps.close()
            return
        if self._state == "stopping":
            return
        self._state = "stopping"
        log.info("stopping")
        for manager in self.managers.values():
            with contextlib.suppress(Exception):
                await manager.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.backfill is not None:
            await self.backfill.stop()
        await self.conductor.stop()
        # what is still open is written as open: the run ended before its outcome
        self.gaps.close()
        if self.redis_store is not None:
            await self.redis_store.stop()
        if self.control_nats is not None:
            await self.control_nats.stop()
            self.control_nats = None
        await self._stop_nats()
        await self.control.close()
        await self.rest.close()
        # streaming responses never end by themselves: end them before the server
        # waits for its handlers
        await self.tail.close()
        if self.metrics is not None:
            await self.metrics.stop()
        self.dispatcher.cancel_waits()
        if self.otel is not None:
            await self.otel.stop()
        self._state = "stopped"
        log.info("stopped")
        if self._frozen:
            gc.unfreeze()  # what this run froze may be garbage now: collectable again
            self._frozen = False
        if self._stopping is not None:
            self._stopping.set()

    def _freeze_heap(self) -> None:
        """Collect once, then move every surviving object out of the collector's reach.

        A full (generation 2) collection walks every tracked object: over the ~70k that
        imports and start-up leave in a gateway process it holds the loop for ~25 ms
        (docs/benchmarks.md, "End to end"), however little running allocates.  Frozen
        (``gc.freeze``), they are no longer walked: the collections that running triggers
        see only what it allocated since.  ``start`` freezes before its connections open
        and again once the configured symbols are subscribed; ``stop`` unfreezes.
        """
        gc.collect()
        gc.freeze()
        self._frozen = True

    def request_stop(self, reason: str = "requested") -> None:
        """Ask `run` to stop (signal handlers call this)."""
        if self._stopping is not None and not self._stopping.is_set():
            log.info("stop %s", reason)
            self._stopping.set()

    async def run(self, *, duration_s: float | None = None) -> None:
        """Start, run until SIGINT/SIGTERM, `request_stop` or `duration_s`, then stop."""
        loop = asyncio.get_running_loop()
        await self.start()
        assert self._stopping is not None
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self.request_stop, f"on {sig.name}")
                installed.append(sig)
        try:
            try:
                await asyncio.wait_for(self._stopping.wait(), duration_s)
            except TimeoutError:
                log.info("stop after --duration %ss", duration_s)
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            await self.stop()

    async def _start_nats(self) -> None:
        """Connect, make sure the stream exists, start publishing (before any
        exchange subscription, so the first event already has its way out)."""
        self.nats = await broker_connect(self.config.nats, name=f"meltica-{self.gateway_id}")
        venues = {getattr(self.config.binance.market(m), "venue", "binance") for m in self.markets}
        await ensure_stream(self.nats, self.config.nats, venues)
        self.nats_bus = NatsPublisher(self.nats, self.config.nats, self.bus)
        self.nats_bus.tracer = self.otel.tracer if self.otel is not None else None
        await self.nats_bus.start()

    async def _stop_nats(self) -> None:
        """Flush the JetStream window (bounded wait for the acks), then close."""
        if self.nats_bus is not None:
            with contextlib.suppress(Exception):
                await self.nats_bus.close(NATS_FLUSH_TIMEOUT_S)
        if self.nats is not None:
            with contextlib.suppress(Exception):
                await self.nats.close()
            self.nats = None

    # ------------------------------------------------------------ control plane

    async def request(self, req: ControlRequest) -> ControlReply:
        """A control-plane request through the Control Bus."""
        return await self.control.request(req)

    async def subscribe_streams(self, market: str, streams: Iterable[str]) -> ControlReply:
        """Subscribe Binance stream names (grouped into symbol x channel requests)."""
        by_channel: dict[str, list[str]] = {}
        for stream in streams:
            symbol, channel = channel_of(market, stream)
            by_channel.setdefault(channel, []).append(symbol)
        reply: ControlReply | None = None
        for channel, symbols in sorted(by_channel.items()):
            reply = await self.request(
                ControlRequest(
                    "subscribe", market=market, symbols=tuple(symbols), channels=(channel,)
                )
            )
            if not reply.ok:
                return reply
        if reply is None:
            raise StartupError(f"no streams to subscribe on {market}")
        return reply

    # ------------------------------------------------------------ health and metrics

    def ready(self) -> bool:
        """Running, every market connected, every tracked book live."""
        return not self.not_ready()

    def not_ready(self) -> list[str]:
        """Why the gateway is not ready, one line per cause (empty: ready).

        A book line says its state and, while snapshots keep failing to sync
        it, why (``stale_snapshot``, ``snapshot_failed``, ``snapshot_rejected``),
        how many attempts in a row and when the next fetch is due.
        """
        if self._state != "running":
            return [f"engine {self._state}"]
        out = []
        for market, manager in self.managers.items():
            st = manager.stats()
            if st.get("streams", 0) and not st.get("connections", 0):
                out.append(f"{market}: no connection")
        instruments = self.conductor.status().get("instruments", {})
        for key, inst in instruments.items():
            state = inst.get("state")
            if state == "live":
                continue
            line = f"{key}: {state}"
            if inst.get("retry_streak"):
                line += f", {inst['sync_issue']} x{inst['retry_streak']}"
                if inst.get("retry_in_s") is not None:
                    line += f", next snapshot in {inst['retry_in_s']:.1f} s"
            out.append(line)
        if self.redis_store is not None:
            out.extend(self.redis_store.not_ready())
        return out

    def histograms(self) -> Iterator[Histogram]:
        """Every latency histogram (declared in meltica/telemetry/catalog.py)."""
        yield from self.exchange_latency.values()
        yield self.pipeline_latency
        yield from self.delivery_latency.values()
        yield from self.rest.histograms()
        yield from self.dispatcher.propagation.values()

    def _delivery_histogram(self, group: str) -> Histogram:
        h = self.delivery_latency.get(group)
        if h is None:
            h = self.delivery_latency[group] = histogram(
                "bus_delivery_latency_seconds", consumer=group
            )
        return h

    def samples(self) -> Iterator[Sample]:
        """Every counter and gauge, read at scrape time; each family is declared
        (type, unit, HELP, labels) in meltica/telemetry/catalog.py."""
        yield sample("build_info", 1, version=__version__)
        for market, manager in self.managers.items():
            yield from stats_samples("ws", manager.stats(), market=market)
            for reason, n in manager.disconnects_by_reason().items():
                yield sample("ws_disconnects_total", n, market=market, reason=reason)
            for reason, n in manager.parse_rejects().items():
                yield sample("ws_parse_rejects_total", n, market=market, reason=reason)
        yield from self.rest.samples()
        if self.backfill is not None:
            yield from stats_samples("backfill", self.backfill.stats())
        yield from stats_samples("dispatch", self.dispatcher.stats())
        for reason, n in self.table.drops().items():
            yield sample("dispatch_dropped_total", n, reason=reason)
        cstat = self.conductor.status()
        yield from stats_samples("conductor", cstat["counters"])
        for market in self.markets:
            for outcome, n in self.auditor.outcomes(market).items():
                yield sample("book_audits_total", n, market=market, outcome=outcome)
        for hook, reasons in cstat["hook_errors"].items():
            for reason, n in reasons.items():
                yield sample("analytics_hook_errors_total", n, hook=hook, reason=reason)
        now = time.time_ns()
        for key, inst in cstat["instruments"].items():
            market, symbol = key.split(":", 1)
            yield from stats_samples(
                "book", {k: inst[k] for k in _BOOK_STATS}, market=market, symbol=symbol
            )
            live = inst.get("state") == "live"
            yield sample("book_live", int(live), market=market, symbol=symbol)
            # age: since the local receive of the newest update in the book's last
            # published output (grows while a live book gets no updates)
            book = self.conductor.book(market, symbol)
            fused = book.last_fused if book is not None else None
            if live and fused is not None and fused.ts_recv > 0:
                age = max(0, now - fused.ts_recv) / 1e9
                yield sample("book_age_seconds", age, market=market, symbol=symbol)
        yield from stats_samples("bus", self.bus.stats())
        for group, gstats in self.bus.group_stats().items():
            yield from stats_samples("bus_consumer", gstats, consumer=group)
        yield from stats_samples("snapshot", self.store.stats())
        if self.redis_store is not None:
            yield from stats_samples("snapshot_redis", self.redis_store.stats())
        for (stream, cause, outcome), n in sorted(self.gaps.counts.items()):
            yield sample("gaps_total", n, stream=stream, cause=cause, outcome=outcome)
        yield sample("gaps_open", self.gaps.summary()["by_outcome"]["open"])
        yield sample("gaps_write_errors_total", self.gaps.write_errors)
        yield from stats_samples("tail", self.tail.stats())
        if self.nats_bus is not None:
            yield from stats_samples("nats", self.nats_bus.stats())
            for reason, n in self.nats_bus.dropped.items():
                yield sample("nats_dropped_total", n, reason=reason)
        if self.otel is not None:
            yield from self.otel.samples()
        yield from stats_samples("control", self.control.stats())
        yield from stats_samples("control_http", self.control_http.stats())
        if self.control_nats is not None:
            yield from stats_samples("control_nats", self.control_nats.stats())

    # ------------------------------------------------------------ tail endpoint

    def add_routes(self, app: web.Application) -> None:
        """``GET /tail?kind=..&market=..&symbol=..``: bus events as wire JSON lines;
        ``POST /control``: the Control Bus (meltica.bus.control_http);
        ``GET /book/<market>/<SYMBOL>?depth=N``: the latest book (meltica.gateway)."""
        self.tail.add_routes(app)
        self.control_http.add_routes(app)
        self.books.add_routes(app)
        app.router.add_get("/gaps", self._gaps)

    async def _gaps(self, request: web.Request) -> web.Response:
        """``GET /gaps?market=&symbol=&outcome=&limit=``: the gap manifest as JSON."""
        q = request.query
        outcome = q.get("outcome")
        if outcome is not None and outcome not in OUTCOMES:
            return web.json_response(
                {"error": f"outcome must be one of {', '.join(OUTCOMES)}"}, status=400
            )
        try:
            limit = int(q["limit"]) if "limit" in q else None
        except ValueError:
            return web.json_response({"error": "limit must be an integer"}, status=400)
        symbol = q.get("symbol")
        entries = self.gaps.entries(
            market=q.get("market"),
            symbol=None if symbol is None else symbol.upper(),
            outcome=outcome,
            limit=limit,
        )
        return web.json_response({"summary": self.gaps.summary(), "gaps": entries})


# the per-instrument counters and gauges of Conductor.status() that are exported
_BOOK_STATS = (
    "gaps",
    "resyncs",
    "refetches",
    "buffer_overflows",
    "crossed",
    "snapshot_errors",
    "snapshot_backoffs",
    "retry_streak",
    "verified_bids",
    "verified_asks",
)

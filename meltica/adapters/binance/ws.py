"""ConnectionManager: the Binance WebSocket connections of one market.

It packs streams into connections ("slots", at most ``max_streams_per_connection``
each; USD-M streams go to the ``/public`` or ``/market`` path by kind), sends
``SUBSCRIBE``/``UNSUBSCRIBE`` batched per event-loop tick under a per-connection
message limit (pongs and pings count), tracks acks by id and retries them,
answers server pings, pings an idle connection and replaces it when no frame
answers within a deadline, reports per-stream silence, reconnects
with capped jittered backoff under Binance's connect limit, and rotates each
connection make-before-break (ws_overlap.py) before ``rotate_after_s`` or on
``serverShutdown``.  Events go to ``sink(batch)``; ``connection_state`` control
events to ``on_control(event)``.  See docs/connections.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from meltica._core.events import KIND_IDS, Control
from meltica._core.parser import PARSE_REASONS, FrameParser, Reply, classify_stream
from meltica.adapters.binance.ws_conn import Connection
from meltica.adapters.binance.ws_limits import Backoff, SlidingWindow
from meltica.adapters.binance.ws_overlap import Overlap, Residual
from meltica.errors import MelticaError, ParseError
from meltica.localseq import LocalSeq
from meltica.log import fields
from meltica.telemetry.spans import end_span, start_span

__all__ = ["ConnectionManager", "ManagerStopped", "SubscribeError", "stream_route"]

log = logging.getLogger("meltica.adapters.binance.ws")

Sink = Callable[[list[Any]], object]

_PARTIAL_DEPTH_ROUTE = 100  # parser's route kind for <s>@depth<N> (events are book_snapshot)
_N_KINDS = max(KIND_IDS.values()) + 1
# Disconnect reasons exported even while zero (others appear when they happen).
_DISCONNECT_REASONS = ("ping_timeout", "ack_timeout", "error", "frame_too_large", "rotation")
# Closes we choose for a healthy connection: not worth a warning.
_PLANNED = frozenset({"rotation", "stopping", "unsubscribed"})


class SubscribeError(MelticaError, ValueError):
    """The exchange rejected a SUBSCRIBE/UNSUBSCRIBE (its error frame is the message)."""

    reason = "subscribe"


class ManagerStopped(MelticaError, ConnectionError):
    """The manager stopped while a request was waiting."""

    reason = "stopped"


def stream_route(stream: str) -> str:
    """USD-M path class of a stream: ``public`` (bookTicker, depth*) or ``market``."""
    if stream == "!bookTicker" or stream.endswith("@bookTicker") or "@depth" in stream:
        return "public"
    return "market"


class _Slot:
    """A logical connection: a set of streams on one path, served by one physical
    connection (two during a rotation)."""

    __slots__ = (
        "active",
        "backoff",
        "down",
        "incoming",
        "name",
        "overlap",
        "reconnect",
        "rotate_after",
        "route",
        "streams",
        "url",
    )

    def __init__(self, name: str, route: str, url: str, backoff: Backoff) -> None:
        self.name = name
        self.route = route
        self.url = url
        self.streams: dict[str, None] = {}
        self.active: Connection | None = None
        self.incoming: Connection | None = None  # the rotation's new connection
        self.overlap: Overlap | None = None
        self.backoff = backoff
        self.reconnect: asyncio.Task[None] | None = None
        self.rotate_after = 0.0  # no rotation attempt before this clock time
        # while the slot has no connection: (since when, in wall-clock ns; why;
        # the streams not yet subscribed again), for the gap manifest
        self.down: tuple[int, str, set[str]] | None = None


class ConnectionManager:
    """All WebSocket connections of one market (see the module docstring).

    urls: one base URL (``wss://stream.binance.com:9443``, or the market-data-only
    host) for every stream, or ``{"public": .., "market": ..}`` (USD-M routed
    paths, e.g. ``wss://fstream.binance.com/public``).  Connections use the
    combined endpoint ``<base>/stream`` (``?timeUnit=MICROSECOND`` when
    time_unit is "us").  clock (monotonic seconds) and rng ([0, 1)) are
    injectable for tests.
    """

    def __init__(
        self,
        urls: str | Mapping[str, str],
        *,
        market: str,
        sink: Sink,
        on_control: Callable[[Control], object],
        venue: str = "binance",
        time_unit: str = "ms",
        max_streams_per_connection: int = 1024,
        control_msgs_per_second: int = 5,
        silence_timeout_s: float = 60.0,
        ping_interval_s: float = 4.0,
        pong_timeout_s: float = 4.0,
        reconnect_initial_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        rotate_after_s: float = 82800.0,
        max_frame_bytes: int = 1 << 20,
        ack_timeout_s: float = 5.0,
        overlap_max_s: float = 5.0,
        max_connects: int = 300,
        connects_window_s: float = 300.0,
        max_batch: int = 4096,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if isinstance(urls, str):
            self._urls = {"all": urls}
        else:
            if set(urls) != {"public", "market"}:
                raise ValueError("urls must be one URL or {'public': .., 'market': ..}")
            self._urls = dict(urls)
        if time_unit not in ("ms", "us"):
            raise ValueError(f"time_unit must be 'ms' or 'us', not {time_unit!r}")
        if max_streams_per_connection < 1 or control_msgs_per_second < 1:
            raise ValueError("max_streams_per_connection and control_msgs_per_second >= 1")
        if ping_interval_s <= 0 or pong_timeout_s <= 0:
            raise ValueError("ping_interval_s and pong_timeout_s must be > 0")
        self.venue = venue
        self.market = market
        self.time_unit = time_unit
        self._sink = sink
        self._on_control = on_control
        self.max_streams = max_streams_per_connection
        self.msgs_per_second = control_msgs_per_second
        self.silence_timeout_s = silence_timeout_s
        self.ping_interval_s = ping_interval_s
        self.pong_timeout_s = pong_timeout_s
        self.reconnect_initial_s = reconnect_initial_s
        self.reconnect_max_s = reconnect_max_s
        self.rotate_after_s = rotate_after_s
        self.max_frame_bytes = max_frame_bytes
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        # events per hand-off from a connection, at most (bounds what arrives after a pause)
        self.max_batch = max_batch
        self.ack_timeout_s = ack_timeout_s
        self.overlap_max_s = overlap_max_s
        self._clock = clock
        self._rng = rng
        self._connects = SlidingWindow(max_connects, connects_window_s)
        self._slots: list[_Slot] = []
        self._slot_seq = 0
        self._desired: dict[str, _Slot] = {}
        self._sub_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._unsub_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._stream_kind: dict[str, tuple[int, str] | None] = {}
        self._stream_seen: dict[str, float] = {}
        self._silent: set[str] = set()
        self._conn_of: dict[Connection, _Slot] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watchdog: asyncio.Task[None] | None = None
        self._running = False
        self._paused = False
        self._req_id = 0
        self._ctl_seq = LocalSeq()
        self._last_parse_log = -1e9
        # on_outage(stream, from_ns, to_ns, cause): a stream's time without a
        # connection, from the drop to its subscription's ack on the new one
        # (set by the engine for the gap manifest; wall-clock ns)
        self.on_outage: Callable[[str, int, int, str], object] | None = None
        # idle time and the pong deadline are judged on ticks (dead_link_bound_s)
        self._tick_s = max(
            0.02,
            min(
                1.0,
                silence_timeout_s / 4,
                ack_timeout_s / 2,
                ping_interval_s / 8,
                pong_timeout_s / 8,
            ),
        )
        self._counters: dict[str, int] = dict.fromkeys(
            (
                "connects",
                "connect_failures",
                "disconnects",
                "reconnects",
                "rotations",
                "rotations_failed",
                "server_shutdowns",
                "ping_timeouts",
                "subscribe_errors",
                "duplicates_dropped",
            ),
            0,
        )
        self._disconnects: dict[str, int] = dict.fromkeys(_DISCONNECT_REASONS, 0)
        # listener/connection counters of connections already closed
        self._closed_totals: dict[str, int] = dict.fromkeys(_CONN_COUNTERS, 0)
        # frames rejected, by error reason (the parser's, and the listener's own
        # refusals of fragmented messages)
        self._parse_rejects: dict[str, int] = dict.fromkeys(PARSE_REASONS, 0)
        # tracing (meltica/telemetry/otel.py; the engine sets these when it is on):
        # connection lifecycle spans, and each new listener's batch sampling
        self.tracer: Any = None
        self.batch_tracer: Any = None
        self.sample_threshold = 0

    # ------------------------------------------------------------ public surface

    async def start(self) -> None:
        if self._running:
            return
        self._running = True
        self._watchdog = asyncio.get_running_loop().create_task(self._watch(), name="ws-watchdog")

    async def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        conns = [c for c in self._conn_of if c.state != "closed"]
        for conn in conns:
            conn.close("stopping", "stopping")
        await asyncio.gather(*(c.wait_closed(2.0) for c in conns))
        for waiters in (*self._sub_waiters.values(), *self._unsub_waiters.values()):
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(ManagerStopped("connection manager stopped"))
        self._sub_waiters.clear()
        self._unsub_waiters.clear()
        self._control("stopped", "*", "stop")

    async def subscribe(self, streams: Iterable[str]) -> None:
        """Subscribe to Binance stream names; returns once every one is acked."""
        if not self._running:
            raise ManagerStopped("start() the connection manager first")
        wanted = list(dict.fromkeys(streams))
        added: dict[_Slot, list[str]] = {}
        for stream in wanted:
            if stream in self._desired:
                continue
            slot = self._place(stream)
            slot.streams[stream] = None
            self._desired[stream] = slot
            kind, symbol, _ = classify_stream(stream)
            if kind == _PARTIAL_DEPTH_ROUTE:
                kind = KIND_IDS["book_snapshot"]
            self._stream_kind[stream] = (kind, symbol) if symbol and 0 < kind < _N_KINDS else None
            added.setdefault(slot, []).append(stream)
        for slot, new in added.items():
            if slot.active is None and slot.reconnect is None:
                self._open(slot, 0.0)
            for conn in (slot.active, slot.incoming):
                if conn is not None and conn.state == "open":
                    conn.subscribe(new)
        waits = []
        loop = asyncio.get_running_loop()
        for stream in wanted:
            slot = self._desired[stream]
            if slot.active is not None and stream in slot.active.acked:
                continue
            fut: asyncio.Future[None] = loop.create_future()
            self._sub_waiters.setdefault(stream, []).append(fut)
            waits.append(fut)
        if waits:
            await asyncio.gather(*waits)

    async def unsubscribe(self, streams: Iterable[str]) -> None:
        """Unsubscribe; returns once the exchange acked (or the connection is gone)."""
        loop = asyncio.get_running_loop()
        by_slot: dict[_Slot, list[str]] = {}
        for stream in dict.fromkeys(streams):
            slot = self._desired.pop(stream, None)
            if slot is None:
                continue
            del slot.streams[stream]
            self._stream_kind.pop(stream, None)
            self._stream_seen.pop(stream, None)
            self._silent.discard(stream)
            for fut in self._sub_waiters.pop(stream, []):
                if not fut.done():
                    fut.set_exception(SubscribeError(f"{stream}: unsubscribed before its ack"))
            by_slot.setdefault(slot, []).append(stream)
        waits = []
        for slot, gone in by_slot.items():
            if not slot.streams:
                self._retire(slot)  # closing the connection unsubscribes everything
                continue
            for conn in (slot.active, slot.incoming):
                if conn is not None and conn.state == "open":
                    conn.unsubscribe(gone)
            active = slot.active
            if active is not None and active.state == "open":
                for stream in gone:
                    done: asyncio.Future[None] = loop.create_future()
                    self._unsub_waiters.setdefault(stream, []).append(done)
                    waits.append(done)
        if waits:
            await asyncio.gather(*waits)

    def streams(self) -> frozenset[str]:
        return frozenset(self._desired)

    def pause_reading(self) -> None:
        """Back-pressure: stop reading every connection's socket."""
        self._paused = True
        for conn in self._conn_of:
            conn.listener.pause_reading()

    def resume_reading(self) -> None:
        self._paused = False
        now = self._clock()
        for conn in self._conn_of:
            conn.listener.resume_reading()
            conn.last_activity = now

    def stats(self) -> dict[str, int | float]:
        totals = dict(self._closed_totals)
        conns = list(self._conn_of)
        for conn in conns:
            for key, value in _conn_counters(conn).items():
                totals[key] += value
        out: dict[str, int | float] = {**self._counters, **totals}
        out["connections"] = sum(1 for c in conns if c.state == "open")
        out["slots"] = len(self._slots)
        out["streams"] = len(self._desired)
        out["streams_acked"] = sum(len(s.active.acked) for s in self._slots if s.active is not None)
        out["streams_silent"] = len(self._silent)
        out["rotating"] = sum(1 for s in self._slots if s.incoming is not None)
        out["paused"] = int(self._paused)
        out["connects_last_window"] = self._connects.used(self._clock())
        return out

    @property
    def dead_link_bound_s(self) -> float:
        """Longest a connection that stops delivering frames stays in use: its last
        frame is noticed within a watchdog tick, a ping is asked for on the first tick
        ``ping_interval_s`` later, and the connection is dropped and replaced on the
        first tick ``pong_timeout_s`` after that if no frame came meanwhile."""
        return self.ping_interval_s + self.pong_timeout_s + 3 * self._tick_s

    def disconnects_by_reason(self) -> dict[str, int]:
        """Disconnects of open connections so far, per reason label (see ws_conn.py)."""
        return dict(self._disconnects)

    def parse_rejects(self) -> dict[str, int]:
        """Frames rejected on every connection (closed ones too), by error reason;
        every reason of ``PARSE_REASONS`` is present.  Sums to ``parse_errors``."""
        return dict(self._parse_rejects)

    def silent_streams(self) -> frozenset[str]:
        """Streams quiet for silence_timeout_s while their connection had data."""
        return frozenset(self._silent)

    # ------------------------------------------------------------ slots and connections

    def _url(self, route: str) -> str:
        url = self._urls[route].rstrip("/") + "/stream"
        return url + "?timeUnit=MICROSECOND" if self.time_unit == "us" else url

    def _place(self, stream: str) -> _Slot:
        route = "all" if "all" in self._urls else stream_route(stream)
        for slot in self._slots:
            if slot.route == route and len(slot.streams) < self.max_streams:
                return slot
        name = f"{self.market}-{self._slot_seq}"
        self._slot_seq += 1
        backoff = Backoff(self.reconnect_initial_s, self.reconnect_max_s, self._rng)
        slot = _Slot(name, route, self._url(route), backoff)
        self._slots.append(slot)
        return slot

    def _retire(self, slot: _Slot) -> None:
        if slot in self._slots:
            self._slots.remove(slot)
        if slot.reconnect is not None:
            slot.reconnect.cancel()
            slot.reconnect = None
        for conn in (slot.incoming, slot.active):
            if conn is not None:
                conn.close("no streams left", "unsubscribed")
        slot.incoming = slot.active = None
        slot.overlap = None

    def _next_id(self) -> int:
        self._req_id += 1
        return self._req_id

    def set_sink(self, sink: Sink) -> None:
        """Point the manager at another sink; only before the first connection
        (the engine wires its Dispatcher after making the managers)."""
        if self._conn_of:
            raise RuntimeError("set_sink() after connections were made")
        self._sink = sink

    def _new_conn(self, slot: _Slot, sink: Sink) -> Connection:
        parser = FrameParser(
            venue=self.venue,
            market=self.market,
            stream=None,
            time_unit=self.time_unit,
            max_frame_bytes=self.max_frame_bytes,
        )
        conn = Connection(
            self,
            slot.name,
            slot.url,
            parser,
            sink,
            msgs_per_second=self.msgs_per_second,
            ack_timeout_s=self.ack_timeout_s,
            max_frame_bytes=self.max_frame_bytes,
            clock=self._clock,
            next_id=self._next_id,
        )
        conn.listener.max_batch = self.max_batch
        conn.listener.sample_threshold = self.sample_threshold
        conn.listener.tracer = self.batch_tracer
        conn.last_activity = self._clock()
        track: list[set[str] | None] = [None] * _N_KINDS
        for kind in KIND_IDS.values():
            if kind < _N_KINDS:
                track[kind] = set()
        conn.listener.track_symbols = track
        self._conn_of[conn] = slot
        return conn

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _open(self, slot: _Slot, delay: float) -> None:
        """(Re)connect a slot with no live connection, after ``delay`` seconds."""
        conn = self._new_conn(slot, self._sink)
        slot.active = conn

        async def run() -> None:
            try:
                if delay > 0:
                    await asyncio.sleep(delay)
                await self._connect(conn)
            finally:
                if slot.reconnect is asyncio.current_task():
                    slot.reconnect = None

        slot.reconnect = self._spawn(run(), f"ws-connect-{slot.name}")

    async def _connect(self, conn: Connection) -> None:
        while True:
            wait = self._connects.delay(self._clock())
            if wait <= 0:
                break
            log.warning(
                "%s: connect limit reached, waiting %.1fs",
                conn.name,
                wait,
                extra=self._fields(conn),
            )
            await asyncio.sleep(wait)
        self._connects.record(self._clock())
        self._counters["connects"] += 1
        span = start_span(
            self.tracer,
            "ws.connect",
            attributes={
                "meltica.market": self.market,
                "meltica.connection": conn.name,
                "url.full": conn.url,
            },
        )
        try:
            await conn.connect(self.ack_timeout_s)
        except asyncio.CancelledError:
            end_span(span, error="cancelled")
            conn.abort("cancelled", "stopping")
            raise
        except Exception as exc:  # OSError, TimeoutError, picows handshake errors
            end_span(span, error=exc)
            self._counters["connect_failures"] += 1
            log.info(
                "%s: connect to %s failed: %s", conn.name, conn.url, exc, extra=self._fields(conn)
            )
            conn.abort(f"connect failed: {type(exc).__name__}", "connect_failed")
        else:
            end_span(span)

    # ------------------------------------------------------------ Connection callbacks

    def _on_open(self, conn: Connection) -> None:
        slot = self._conn_of.get(conn)
        if slot is None:
            conn.close("orphan", "orphan")
            return
        conn.last_activity = self._clock()
        if self._paused:
            conn.listener.pause_reading()
        self._control("connected", conn.name, "rotation" if conn is slot.incoming else "open")
        if slot.streams:
            conn.subscribe(list(slot.streams))

    def _on_acked(self, conn: Connection, method: str, streams: list[str]) -> None:
        slot = self._conn_of.get(conn)
        if slot is None:
            return
        now = self._clock()
        if method == "SUBSCRIBE":
            slot.backoff.reset()
            if slot.down is not None:
                self._back_up(slot, streams)
            for stream in streams:
                self._stream_seen.setdefault(stream, now)
                for fut in self._sub_waiters.pop(stream, []):
                    if not fut.done():
                        fut.set_result(None)
        else:
            for stream in streams:
                self._resolve_unsub(stream)

    def _back_up(self, slot: _Slot, streams: list[str]) -> None:
        """Streams subscribed again after an outage: report each one's time down."""
        assert slot.down is not None
        since, cause, waiting = slot.down
        now = time.time_ns()
        for stream in streams:
            if stream in waiting:
                waiting.discard(stream)
                if self.on_outage is not None:
                    try:
                        self.on_outage(stream, since, now, cause)
                    except Exception:
                        log.exception("%s: on_outage failed", self.market)
        # streams unsubscribed meanwhile never come back: the outage ends with the rest
        waiting.intersection_update(slot.streams)
        if not waiting:
            slot.down = None

    def _resolve_unsub(self, stream: str) -> None:
        for fut in self._unsub_waiters.pop(stream, []):
            if not fut.done():
                fut.set_result(None)

    def _on_request_error(self, conn: Connection, streams: list[str], reply: Reply) -> None:
        self._counters["subscribe_errors"] += 1
        slot = self._conn_of.get(conn)
        error = SubscribeError(f"{conn.name}: code {reply.code}: {reply.msg}")
        for stream in streams:
            if slot is not None and self._desired.get(stream) is slot:
                del self._desired[stream]
                slot.streams.pop(stream, None)
            for fut in self._sub_waiters.pop(stream, []) + self._unsub_waiters.pop(stream, []):
                if not fut.done():
                    fut.set_exception(error)

    def _on_server_shutdown(self, conn: Connection) -> None:
        self._counters["server_shutdowns"] += 1
        conn.rotate_wanted = True
        slot = self._conn_of.get(conn)
        if slot is not None and conn is slot.active:
            self._rotate(slot, "server_shutdown")

    def _on_parse_error(self, conn: Connection, exc: BaseException) -> None:
        if isinstance(exc, ParseError):  # what the listener counts in parse_errors
            self._parse_rejects[exc.reason] = self._parse_rejects.get(exc.reason, 0) + 1
        now = self._clock()
        if now - self._last_parse_log >= 1.0:
            self._last_parse_log = now
            log.warning("%s: frame skipped: %s", conn.name, exc, extra=self._fields(conn))

    def _on_closed(self, conn: Connection, reason: str) -> None:
        slot = self._conn_of.pop(conn, None)
        for key, value in _conn_counters(conn).items():
            self._closed_totals[key] += value
        for stream in list(self._unsub_waiters):
            if slot is None or stream not in slot.streams:
                self._resolve_unsub(stream)
        if slot is None:
            return
        lived = self._clock() - conn.opened_at if conn.opened_at else 0.0
        if conn.opened_at:
            label = conn.reason_label or "error"
            if self.tracer is not None:
                end_span(
                    start_span(
                        self.tracer,
                        "ws.drop",
                        attributes={
                            "meltica.market": self.market,
                            "meltica.connection": conn.name,
                            "meltica.reason": label,
                            "meltica.detail": reason,
                            "meltica.lived_s": lived,
                        },
                    )
                )
            self._counters["disconnects"] += 1
            self._disconnects[label] = self._disconnects.get(label, 0) + 1
            level = logging.INFO if label in _PLANNED else logging.WARNING
            self._control("disconnected", conn.name, reason, level, label)
        if not self._running or slot not in self._slots:
            return
        overlap = slot.overlap
        if conn is slot.incoming:
            # the rotation's new connection failed: the old one keeps everything
            slot.incoming = None
            slot.overlap = None
            self._counters["rotations_failed"] += 1
            slot.rotate_after = self._clock() + slot.backoff.next_delay()
            old = slot.active
            if overlap is not None and old is not None:
                self._install(old, overlap.new_gone())
            self._control("rotation_failed", conn.name, reason)
            return
        if conn is not slot.active:
            return
        if slot.incoming is not None:
            # the old connection is gone: the new one carries on
            new = slot.incoming
            slot.active, slot.incoming, slot.overlap = new, None, None
            if overlap is not None:
                self._install(new, overlap.old_gone())
                self._counters["duplicates_dropped"] += overlap.dropped
            self._counters["rotations"] += 1
            self._control("rotated", new.name, reason)
            return
        slot.active = None
        if not slot.streams:
            return
        if slot.down is None:
            slot.down = (time.time_ns(), conn.reason_label or "error", set(slot.streams))
        if lived >= self.reconnect_max_s:
            slot.backoff.reset()
        delay = slot.backoff.next_delay()
        self._counters["reconnects"] += 1
        self._control("reconnecting", conn.name, f"{reason}; retry in {delay:.2f}s")
        self._open(slot, delay)

    def _install(self, conn: Connection, residual: Residual) -> None:
        """Give a connection the residual filter, then the raw sink once it is no longer
        needed (or after overlap_max_s)."""
        conn.listener.flush_now()
        if residual.done:
            conn.listener.sink = self._sink
            return
        conn.listener.sink = residual

        def release() -> None:
            if conn.listener.sink is residual:
                conn.listener.sink = self._sink
                self._counters["duplicates_dropped"] += residual.dropped

        asyncio.get_running_loop().call_later(self.overlap_max_s, release)

    # ------------------------------------------------------------ rotation

    def _rotate(self, slot: _Slot, reason: str) -> None:
        old = slot.active
        if slot.incoming is not None or old is None or old.state != "open":
            return
        overlap = Overlap(self._sink)
        old.listener.flush_now()
        old.listener.sink = overlap.on_old
        new = self._new_conn(slot, overlap.on_new)
        slot.incoming, slot.overlap = new, overlap
        self._control("rotating", old.name, reason)
        span = start_span(
            self.tracer,
            "ws.rotate",
            attributes={
                "meltica.market": self.market,
                "meltica.connection": old.name,
                "meltica.reason": reason,
            },
        )
        self._spawn(self._traced_rotation(slot, old, new, overlap, span), f"ws-rotate-{slot.name}")

    async def _traced_rotation(
        self, slot: _Slot, old: Connection, new: Connection, overlap: Overlap, span: Any
    ) -> None:
        try:
            await self._rotation(slot, old, new, overlap)
        except BaseException as exc:
            end_span(span, error=exc)
            raise
        rotated = slot.active is new or slot.incoming is new
        end_span(span, error=None if rotated else "rotation failed", new_connection=new.name)

    async def _rotation(
        self, slot: _Slot, old: Connection, new: Connection, overlap: Overlap
    ) -> None:
        await self._connect(new)
        # subscribed: every stream acked (a timeout aborts; _on_closed then keeps old)
        deadline = self._clock() + 4 * self.ack_timeout_s
        while new.state in ("connecting", "open") and not set(slot.streams) <= new.acked:
            if self._clock() > deadline:
                new.abort("rotation: subscribe timed out", "ack_timeout")
                return
            await asyncio.sleep(self._tick_s / 4)
        if new.state != "open" or slot.incoming is not new:
            return
        # overlap: until every stream seen has switched, or overlap_max_s
        deadline = self._clock() + self.overlap_max_s
        while slot.incoming is new and overlap.groups_pending() and self._clock() < deadline:
            await asyncio.sleep(self._tick_s / 4)
        if slot.incoming is new:
            old.close("rotated", "rotation")
            await old.wait_closed(2.0)

    # ------------------------------------------------------------ watchdog

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._tick_s)
            try:
                self._tick(self._clock())
            except Exception:  # never let the watchdog die
                log.exception("connection watchdog failed")

    def _tick(self, now: float) -> None:
        for slot in list(self._slots):
            for conn in (slot.active, slot.incoming):
                if conn is None or conn.state != "open":
                    continue
                conn.check_acks(now)
                self._check_silence(conn, now)
            active = slot.active
            if (
                active is not None
                and active.state == "open"
                and slot.incoming is None
                and now >= slot.rotate_after
                and (active.rotate_wanted or now - active.opened_at >= self.rotate_after_s)
            ):
                self._rotate(slot, "server_shutdown" if active.rotate_wanted else "age")
            if active is not None and active.state == "open":
                self._check_streams(active, now)

    def _check_silence(self, conn: Connection, now: float) -> None:
        """Dead-link detection: any frame (data, reply, ping, pong) proves the link;
        after ping_interval_s without one we ping, and pong_timeout_s after asking
        for that ping without a frame the connection is dropped.  Binance answers
        client pings; the ping counts against the message limit like any message."""
        frames = conn.listener.frames
        if frames != conn.last_frames or self._paused:
            conn.last_frames = frames
            conn.last_activity = now
            conn.pinged_at = 0.0
            return
        if conn.pinged_at:
            if now - conn.pinged_at >= self.pong_timeout_s:
                self._counters["ping_timeouts"] += 1
                conn.abort(
                    f"no frame for {now - conn.last_activity:.1f}s and no pong within "
                    f"{self.pong_timeout_s:g}s",
                    "ping_timeout",
                )
        elif now - conn.last_activity >= self.ping_interval_s:
            conn.pinged_at = now
            conn.send_ping()

    def _check_streams(self, conn: Connection, now: float) -> None:
        """Per-stream silence: reported (stats, log), not acted on (see docs/connections.md)."""
        track = conn.listener.track_symbols
        if track is None:
            return
        had_data = any(track)
        for stream in conn.acked:
            ks = self._stream_kind.get(stream)
            if ks is None:
                continue
            seen = track[ks[0]]
            if seen is not None and ks[1] in seen:
                self._stream_seen[stream] = now
                if stream in self._silent:
                    self._silent.discard(stream)
                    log.info(
                        "%s: %s flows again", conn.name, stream, extra=self._fields(conn, stream)
                    )
            elif (
                had_data
                and stream not in self._silent
                and now - self._stream_seen.get(stream, now) >= self.silence_timeout_s
            ):
                self._silent.add(stream)
                log.warning(
                    "%s: %s silent for %.0fs while the connection has data",
                    conn.name,
                    stream,
                    now - self._stream_seen.get(stream, now),
                    extra=self._fields(conn, stream),
                )
        for seen in track:
            if seen:
                seen.clear()

    def _fields(self, conn: Connection, stream: str | None = None) -> dict[str, str]:
        """A log line's ``extra``: this market, the connection and a stream's symbol."""
        symbol = stream.split("@", 1)[0].upper() if stream and "@" in stream else None
        return fields(market=self.market, symbol=symbol, connection=conn.name)

    # ------------------------------------------------------------ control events

    def _control(
        self,
        state: str,
        connection: str,
        reason: str,
        level: int = logging.INFO,
        label: str = "",
    ) -> None:
        event = Control(
            "connection_state",
            venue=self.venue,
            market=self.market,
            symbol="*",
            seq=self._ctl_seq.next(),
            ts_recv=time.time_ns(),
            reason=reason,
            state=state,
            connection=connection,
        )
        where = fields(market=self.market, connection=connection)
        if label:
            log.log(level, "%s: %s [%s] (%s)", connection, state, label, reason, extra=where)
        else:
            log.log(level, "%s: %s (%s)", connection, state, reason, extra=where)
        try:
            self._on_control(event)
        except Exception:
            log.exception("on_control failed")


_CONN_COUNTERS = (
    "frames",
    "bytes",
    "events",
    "batches",
    "replies",
    "parse_errors",
    "fragmented",
    "fragmented_refused",
    "pings",
    "pongs",
    "pongs_sent",
    "msgs_sent",
    "ack_timeouts",
)


def _conn_counters(conn: Connection) -> dict[str, int]:
    lst = conn.listener
    return {
        "frames": lst.frames,
        "bytes": lst.bytes,
        "events": lst.events,
        "batches": lst.batches,
        "replies": lst.replies,
        "parse_errors": lst.parse_errors,
        "fragmented": lst.fragmented,
        "fragmented_refused": lst.fragmented_refused,
        "pings": lst.pings,
        "pongs": lst.pongs,
        "pongs_sent": conn.pongs_sent,
        "msgs_sent": conn.msgs_sent,
        "ack_timeouts": conn.ack_timeouts,
    }

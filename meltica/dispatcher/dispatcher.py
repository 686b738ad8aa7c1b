"""The Dispatcher: the hot entry of every batch and the control-plane handlers.

``on_events(batch)`` runs the dispatch table (meltica/_core/dispatch.pyx) over a
listener batch and hands what stays to ``downstream`` (the Conductor) in one call.
``subscribe`` / ``unsubscribe`` / ``list`` / ``resync`` / ``status`` take a
``ControlRequest`` and return a ``ControlReply``: validated (market, channel, symbol
against the instrument registry), idempotent, applied to the table and the
exchange subscriptions (a ConnectionManager per market) all or nothing, with the
measured propagation time.  Mutating requests on the same instrument never
interleave: a per-(market, symbol) lock, taken in a fixed order, serialises them
in arrival order.  Channel, stream and symbol names come from the ``Vocabulary``
the engine hands in (Binance's, from the adapter); this module imports no adapter.
See docs/control-plane.md.
"""

from __future__ import annotations

import asyncio
import builtins
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Protocol

from opentelemetry import trace

from meltica._core.dispatch import DispatchTable
from meltica.control import ControlReply, ControlRequest
from meltica.dispatcher._gate import Gate
from meltica.errors import MelticaError
from meltica.telemetry.catalog import histogram
from meltica.telemetry.metrics import Histogram
from meltica.telemetry.spans import HELD_SPANS

__all__ = [
    "BookTracker",
    "Dispatcher",
    "InstrumentLookup",
    "Route",
    "Subscriber",
    "Vocabulary",
]

log = logging.getLogger("meltica.dispatcher")

RouteKey = tuple[str, str, str, str | None]
InstrumentKey = tuple[str, str]  # (market, SYMBOL)

# Binance allows 1024 streams per connection; one request may ask for at most that.
MAX_STREAMS_PER_REQUEST = 1024


class Route(Protocol):
    """What a channel's events carry: the event kind and its qualifier (or None)."""

    @property
    def kind(self) -> str: ...

    @property
    def qualifier(self) -> str | None: ...


class Vocabulary(Protocol):
    """An exchange's names, as the Dispatcher needs them (``streams.VOCABULARY``).

    Invalid names raise ``ValueError`` (with a message fit for the reply).
    """

    @property
    def markets(self) -> tuple[str, ...]:
        """Markets it has names for."""
        ...

    @property
    def book_channel(self) -> str:
        """The channel whose (un)subscription starts / stops the Conductor's book."""
        ...

    def is_channel(self, market: str, channel: str) -> bool: ...

    def channel_list(self, market: str) -> str:
        """The market's channels, for an error message."""
        ...

    def symbol_key(self, symbol: str) -> str:
        """The one spelling of ``symbol`` (``BTCUSDT``); ValueError if it is not one."""
        ...

    def stream_name(
        self, market: str, symbol: str, channel: str, *, depth_speed_ms: int = ...
    ) -> str: ...

    def route_of(self, market: str, channel: str) -> Route: ...


class Subscriber(Protocol):
    """The exchange side of one market (``ConnectionManager``)."""

    async def subscribe(self, streams: Iterable[str]) -> None: ...

    async def unsubscribe(self, streams: Iterable[str]) -> None: ...

    def streams(self) -> frozenset[str]: ...


class InstrumentLookup(Protocol):
    """Symbol validity (``InstrumentRegistry``)."""

    def get(self, market: str, symbol: str) -> object | None: ...


class BookTracker(Protocol):
    """The Conductor's control surface; each may return an awaitable."""

    def track(self, market: str, symbol: str) -> object: ...

    def untrack(self, market: str, symbol: str) -> object: ...

    def resync(self, market: str, symbol: str) -> object: ...


class _Invalid(MelticaError, ValueError):
    """A request the Dispatcher refuses (its message is the reply's error)."""

    reason = "invalid_request"


async def _maybe_await(value: object) -> object:
    if inspect.isawaitable(value):
        return await value
    return value


class _KeyedLocks:
    """FIFO locks per key; ``hold(keys)`` takes them in sorted order (no deadlock).

    Taking a free asyncio lock does not yield, so requests that conflict run in
    the order they arrived.
    """

    def __init__(self) -> None:
        self._locks: dict[InstrumentKey, asyncio.Lock] = {}
        self._users: dict[InstrumentKey, int] = {}

    @asynccontextmanager
    async def hold(self, keys: Iterable[InstrumentKey]) -> AsyncIterator[None]:
        ordered = sorted(set(keys))
        for k in ordered:
            self._users[k] = self._users.get(k, 0) + 1
            if k not in self._locks:
                self._locks[k] = asyncio.Lock()
        taken: builtins.list[asyncio.Lock] = []
        try:
            for k in ordered:
                lock = self._locks[k]
                await lock.acquire()
                taken.append(lock)
            yield
        finally:
            for lock in reversed(taken):
                lock.release()
            for k in ordered:
                self._users[k] -= 1
                if not self._users[k]:  # nobody waits: forget the lock (bounded memory)
                    del self._users[k]
                    del self._locks[k]

    def __len__(self) -> int:
        return len(self._locks)


class Dispatcher:
    """Routes batches through the dispatch table; serves the control plane.

    ``subscriber``: market -> object with ``async subscribe(streams)``,
    ``async unsubscribe(streams)``, ``streams()``.  ``instruments``: ``get(market,
    symbol) -> object | None``.  ``downstream(batch)``: the next stage.  ``clock``: ns,
    for propagation times.  ``conductor``: ``track`` / ``untrack`` on (un)subscription
    of the vocabulary's book channel (``depth``), ``resync`` for resync requests.
    ``depth_speed_ms``: market -> configured depth speed.  ``ack_timeout_s`` bounds the wait for the
    exchange; past it the request fails and is rolled back.  ``vocabulary``: the
    exchange's channel, stream and symbol names.
    """

    def __init__(
        self,
        table: DispatchTable,
        subscriber: Mapping[str, Subscriber],
        instruments: InstrumentLookup,
        downstream: Callable[[builtins.list[Any]], object],
        clock: Callable[[], int] = time.monotonic_ns,
        *,
        vocabulary: Vocabulary,
        conductor: BookTracker | None = None,
        depth_speed_ms: Mapping[str, int] | None = None,
        ack_timeout_s: float = 10.0,
    ) -> None:
        if ack_timeout_s <= 0:
            raise ValueError("ack_timeout_s must be positive")
        for market in subscriber:
            if market not in vocabulary.markets:
                raise ValueError(f"no stream vocabulary for market {market!r}")
        self._vocab = vocabulary
        self._book_channel = vocabulary.book_channel
        self.table = table
        self._subscriber = dict(subscriber)
        self._instruments = instruments
        self._clock = clock
        self._conductor = conductor
        self._depth_speed = {m: 100 for m in self._subscriber} | dict(depth_speed_ms or {})
        self._ack_timeout_s = ack_timeout_s
        self._locks = _KeyedLocks()
        # (market, SYMBOL) -> channel -> Binance stream, for what the exchange acked
        self._subs: dict[InstrumentKey, dict[str, str]] = {}
        # route -> channels feeding it (depth5/10/20 share one route)
        self._route_channels: dict[RouteKey, set[str]] = {}
        self._ids: dict[InstrumentKey, int] = {}
        self._next_id = 1
        self.counters: dict[str, int] = dict.fromkeys(
            ("requests", "failed", "rejected", "rollbacks", "rollback_errors", "batches"), 0
        )
        self.last_propagation_ns: int | None = None
        self._waits: set[asyncio.Task[None]] = set()  # traced requests' first-event waits
        self.max_propagation_ns = 0
        # op -> control_propagation_seconds histogram (subscribe, unsubscribe)
        self.propagation: dict[str, Histogram] = {}
        # the hot path, compiled: filter a batch through the table and pass
        # what stays on, once, with no Python frame (meltica/dispatcher/_gate.pyx)
        # the compiled per-batch path; the engine sets gate.event_latency
        self.gate = Gate(table, downstream)
        self.on_events: Callable[[builtins.list[Any]], None] = self.gate.on_events

    # ------------------------------------------------------------ control plane

    async def handle(self, req: ControlRequest) -> ControlReply:
        """Serve any request (the Control Bus calls this)."""
        handler = {
            "subscribe": self.subscribe,
            "unsubscribe": self.unsubscribe,
            "list": self.list,
            "resync": self.resync,
            "status": self.status,
        }.get(req.op)
        if handler is None:  # book: the gateway's (meltica.gateway.GatewayControl)
            return self._reject(req, f"{req.op} is not served here (a gateway serves it)")
        return await handler(req)

    async def subscribe(self, req: ControlRequest) -> ControlReply:
        """Subscribe every symbol x channel; ok once the exchange acked all of them.

        Order: routes go into the table first (so the first events after the ack are
        never dropped as unrouted), the Conductor starts tracking new ``depth`` books,
        then the exchange is asked and awaited.  On any failure the table, the
        Conductor and the exchange are rolled back to what they were.
        """
        t0 = self._clock()
        try:
            market, symbols, channels = self._validate(req, need_registry=True)
        except _Invalid as exc:
            return self._reject(req, str(exc))
        keys = [(market, s) for s in symbols]
        async with self._locks.hold(keys):
            new: builtins.list[tuple[str, str, str]] = []
            for sym in symbols:
                have = self._subs.get((market, sym), {})
                for ch in channels:
                    if ch not in have:
                        new.append((sym, ch, self._stream(market, sym, ch)))
            if not new:
                return self._done(req, t0, {"added": [], "subscribed": self._pairs(market, keys)})
            added_routes = self._routes_add(market, new)
            books = sorted({s for s, ch, _ in new if ch == self._book_channel})
            try:
                for sym in books:
                    await self._conductor_call("track", market, sym)
                await asyncio.wait_for(
                    self._subscriber[market].subscribe([st for _, _, st in new]),
                    self._ack_timeout_s,
                )
            except (Exception, asyncio.CancelledError) as exc:
                await self._rollback_subscribe(market, new, added_routes, books)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                return self._fail(req, f"subscribe failed at the exchange: {_describe(exc)}")
            for sym, ch, stream in new:
                self._subs.setdefault((market, sym), {})[ch] = stream
            span = trace.get_current_span()
            if span.is_recording():
                # a traced control request (meltica/bus/control.py): its span goes
                # on to the first event of the new routes through the table
                span.add_event("exchange_ack", {"meltica.streams": len(new)})
                self._first_event(span, [r for r, _ in added_routes])
            return self._done(
                req,
                t0,
                {
                    "added": [f"{market}:{s}:{ch}" for s, ch, _ in new],
                    "streams": [st for _, _, st in new],
                    "subscribed": self._pairs(market, keys),
                },
                propagated=True,
            )

    async def unsubscribe(self, req: ControlRequest) -> ControlReply:
        """Unsubscribe every symbol x channel; idempotent.

        Order: the exchange first, then the table, so a failed unsubscribe leaves the
        table as the exchange has it.  Events of a removed route that still arrive are
        counted as unrouted and dropped.
        """
        t0 = self._clock()
        try:
            market, symbols, channels = self._validate(req, need_registry=False)
        except _Invalid as exc:
            return self._reject(req, str(exc))
        keys = [(market, s) for s in symbols]
        async with self._locks.hold(keys):
            gone = [
                (sym, ch, self._subs[(market, sym)][ch])
                for sym in symbols
                for ch in channels
                if ch in self._subs.get((market, sym), {})
            ]
            if not gone:
                return self._done(req, t0, {"removed": [], "subscribed": self._pairs(market, keys)})
            error: str | None = None
            try:
                await asyncio.wait_for(
                    self._subscriber[market].unsubscribe([st for _, _, st in gone]),
                    self._ack_timeout_s,
                )
            except (Exception, asyncio.CancelledError) as exc:
                # the exchange side may have dropped some: keep the table as it is there
                still = self._subscriber[market].streams()
                removed = [g for g in gone if g[2] not in still]
                self._forget(market, removed)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                error = (
                    f"unsubscribe failed at the exchange: {_describe(exc)} "
                    f"({len(removed)} of {len(gone)} streams removed)"
                )
                gone = removed
            else:
                self._forget(market, gone)
            for sym in sorted({s for s, ch, _ in gone if ch == self._book_channel}):
                await self._conductor_call("untrack", market, sym)
            if error is not None:
                return self._fail(req, error)
            return self._done(
                req,
                t0,
                {
                    "removed": [f"{market}:{s}:{ch}" for s, ch, _ in gone],
                    "streams": [st for _, _, st in gone],
                    "subscribed": self._pairs(market, keys),
                },
                propagated=True,
            )

    async def resync(self, req: ControlRequest) -> ControlReply:
        """Ask the Conductor to resync the books of ``symbols`` (subscribed to depth)."""
        t0 = self._clock()
        if self._conductor is None:
            return self._reject(req, "resync needs a conductor; none is configured")
        try:
            market = self._market(req.market)
            symbols = self._symbols(req.symbols)
        except _Invalid as exc:
            return self._reject(req, str(exc))
        missing = [s for s in symbols if self._book_channel not in self._subs.get((market, s), {})]
        if missing:
            return self._reject(
                req, f"not subscribed to {market} depth, no book to resync: {', '.join(missing)}"
            )
        done = []
        for sym in symbols:
            if await self._conductor_call("resync", market, sym) is not False:
                done.append(sym)
        return self._done(req, t0, {"resynced": done})

    async def status(self, req: ControlRequest) -> ControlReply:
        """Counters of the table and the Dispatcher; the routes of ``symbols`` if given."""
        t0 = self._clock()
        try:
            market = None if req.market is None else self._market(req.market)
            symbols = set(self._symbols(req.symbols, allow_empty=True))
        except _Invalid as exc:
            return self._reject(req, str(exc))
        result: dict[str, Any] = {
            "table": self.table.stats(),
            "dispatcher": self.stats(),
            "exchange_streams": {m: len(s.streams()) for m, s in self._subscriber.items()},
        }
        if symbols or market is not None:
            result["routes"] = [
                e
                for e in self.table.entries()
                if (market is None or e["market"] == market)
                and (not symbols or e["symbol"] in symbols)
            ]
        return self._done(req, t0, result)

    async def list(self, req: ControlRequest) -> ControlReply:
        """Subscriptions per market and symbol, and the exchange's own stream list."""
        t0 = self._clock()
        try:
            markets = [self._market(req.market)] if req.market is not None else self._markets()
            symbols = set(self._symbols(req.symbols, allow_empty=True))
        except _Invalid as exc:
            return self._reject(req, str(exc))
        subs: dict[str, dict[str, builtins.list[str]]] = {m: {} for m in markets}
        for (m, sym), chans in sorted(self._subs.items()):
            if m in subs and chans and (not symbols or sym in symbols):
                subs[m][sym] = sorted(chans)
        exchange = {m: sorted(self._subscriber[m].streams()) for m in markets}
        return self._done(req, t0, {"subscriptions": subs, "exchange_streams": exchange})

    # ------------------------------------------------------------ reading

    def subscriptions(self) -> dict[InstrumentKey, frozenset[str]]:
        """(market, SYMBOL) -> subscribed channels."""
        return {k: frozenset(v) for k, v in self._subs.items() if v}

    def instrument_id(self, market: str, symbol: str) -> int | None:
        try:
            return self._ids.get((market, self._vocab.symbol_key(symbol)))
        except ValueError:
            return None

    def stats(self) -> dict[str, int | None]:
        return {
            **self.counters,
            "instruments": len(self._ids),
            "last_propagation_ns": self.last_propagation_ns,
            "max_propagation_ns": self.max_propagation_ns,
        }

    # ------------------------------------------------------------ internals

    def _markets(self) -> builtins.list[str]:
        return sorted(self._subscriber)

    def _market(self, market: str | None) -> str:
        if market is None:
            raise _Invalid(f"request needs a market (known: {', '.join(self._markets())})")
        if market not in self._subscriber:
            raise _Invalid(f"unknown market {market!r} (known: {', '.join(self._markets())})")
        return market

    def _symbols(self, symbols: Iterable[str], *, allow_empty: bool = False) -> builtins.list[str]:
        try:
            out = list(dict.fromkeys(self._vocab.symbol_key(s) for s in symbols))
        except ValueError as exc:
            raise _Invalid(str(exc)) from None
        if not out and not allow_empty:
            raise _Invalid("request needs at least one symbol")
        return out

    def _validate(
        self, req: ControlRequest, *, need_registry: bool
    ) -> tuple[str, builtins.list[str], builtins.list[str]]:
        market = self._market(req.market)
        symbols = self._symbols(req.symbols)
        channels = list(dict.fromkeys(req.channels))
        if not channels:
            raise _Invalid("request needs at least one channel")
        bad = [c for c in channels if not self._vocab.is_channel(market, c)]
        if bad:
            raise _Invalid(
                f"unknown {market} channel(s): {', '.join(map(repr, bad))} "
                f"(known: {self._vocab.channel_list(market)})"
            )
        if len(symbols) * len(channels) > MAX_STREAMS_PER_REQUEST:
            raise _Invalid(
                f"request asks for {len(symbols) * len(channels)} streams; "
                f"at most {MAX_STREAMS_PER_REQUEST} per request"
            )
        if need_registry:
            unknown = [s for s in symbols if self._instruments.get(market, s) is None]
            if unknown:
                raise _Invalid(f"unknown {market} symbol(s): {', '.join(unknown)}")
        return market, symbols, channels

    def _stream(self, market: str, symbol: str, channel: str) -> str:
        return self._vocab.stream_name(
            market, symbol, channel, depth_speed_ms=self._depth_speed[market]
        )

    def _route(self, market: str, symbol: str, channel: str) -> RouteKey:
        r = self._vocab.route_of(market, channel)
        return (market, symbol, r.kind, r.qualifier)

    def _label(self, route: RouteKey) -> str:
        return "+".join(sorted(self._route_channels.get(route, ())))

    def _routes_add(
        self, market: str, new: builtins.list[tuple[str, str, str]]
    ) -> builtins.list[tuple[RouteKey, str]]:
        """Add the routes of ``new`` to the table at once; returns (route, channel) added."""
        added: builtins.list[tuple[RouteKey, str]] = []
        for sym, ch, _ in new:
            route = self._route(market, sym, ch)
            self._route_channels.setdefault(route, set()).add(ch)
            added.append((route, ch))
        for sym, _, _ in new:
            if (market, sym) not in self._ids:
                self._ids[(market, sym)] = self._next_id
                self._next_id += 1
        self.table.update(
            add=[
                (*route, self._ids[(route[0], route[1])], self._label(route))
                for route in dict.fromkeys(r for r, _ in added)
            ]
        )
        return added

    def _first_event(self, span: Any, routes: builtins.list[RouteKey]) -> None:
        """Watch for the first event of any of ``routes`` through the table (polled:
        only traced requests do this), for at most the ack timeout; it is an event
        of ``span``, which the requester ends once this watch is done."""
        keys = list(dict.fromkeys(routes))

        def delivered() -> int:
            total = 0
            for key in keys:
                entry = self.table.get(*key)
                if entry is not None:
                    total += entry["delivered"]
            return total

        async def wait() -> None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self._ack_timeout_s
            seen = False
            try:
                while loop.time() < deadline:
                    if delivered():
                        seen = True
                        span.add_event("first_event")
                        break
                    await asyncio.sleep(0.005)
            finally:
                span.set_attribute("meltica.first_event", seen)

        task = asyncio.get_running_loop().create_task(wait(), name="control-first-event")
        HELD_SPANS[id(span)] = task
        self._waits.add(task)
        task.add_done_callback(self._waits.discard)

    def cancel_waits(self) -> None:
        """End the first-event waits of traced requests (at shutdown)."""
        for task in list(self._waits):
            task.cancel()

    def _routes_remove(self, pairs: Iterable[tuple[RouteKey, str]]) -> None:
        """Take channels off their routes; routes left without a channel leave the table."""
        remove: builtins.list[RouteKey] = []
        relabel: builtins.list[RouteKey] = []
        for route, ch in pairs:
            chans = self._route_channels.get(route)
            if chans is None:
                continue
            chans.discard(ch)
            if chans:
                relabel.append(route)
            else:
                del self._route_channels[route]
                remove.append(route)
        self.table.update(
            add=[
                (*r, self._ids[(r[0], r[1])], self._label(r))
                for r in dict.fromkeys(relabel)
                if r in self._route_channels
            ],
            remove=remove,
        )

    def _release_ids(self, market: str, symbols: Iterable[str]) -> None:
        # under the instrument's lock no other request has routes of it in flight
        for sym in symbols:
            if not self._subs.get((market, sym)):
                self._subs.pop((market, sym), None)
                self._ids.pop((market, sym), None)

    def _forget(self, market: str, gone: builtins.list[tuple[str, str, str]]) -> None:
        self._routes_remove((self._route(market, s, ch), ch) for s, ch, _ in gone)
        for sym, ch, _ in gone:
            self._subs.get((market, sym), {}).pop(ch, None)
        self._release_ids(market, {s for s, _, _ in gone})

    async def _rollback_subscribe(
        self,
        market: str,
        new: builtins.list[tuple[str, str, str]],
        added: builtins.list[tuple[RouteKey, str]],
        books: builtins.list[str],
    ) -> None:
        self.counters["rollbacks"] += 1
        self._routes_remove(added)
        self._release_ids(market, {s for s, _, _ in new})
        for sym in books:
            try:
                await self._conductor_call("untrack", market, sym)
            except Exception:
                self.counters["rollback_errors"] += 1
                log.exception("rollback: untrack %s %s failed", market, sym)
        # whatever the exchange acked of a failed request is taken back
        try:
            await asyncio.wait_for(
                self._subscriber[market].unsubscribe([st for _, _, st in new]),
                self._ack_timeout_s,
            )
        except Exception as exc:
            self.counters["rollback_errors"] += 1
            log.warning(
                "rollback: unsubscribe of %d %s streams failed: %s",
                len(new),
                market,
                _describe(exc),
            )

    async def _conductor_call(self, name: str, market: str, symbol: str) -> object:
        if self._conductor is None:
            return None
        return await _maybe_await(getattr(self._conductor, name)(market, symbol))

    def _pairs(self, market: str, keys: Iterable[InstrumentKey]) -> dict[str, builtins.list[str]]:
        return {k[1]: sorted(self._subs.get(k, {})) for k in keys if self._subs.get(k)}

    def _done(
        self, req: ControlRequest, t0: int, result: dict[str, Any], *, propagated: bool = False
    ) -> ControlReply:
        self.counters["requests"] += 1
        elapsed = self._clock() - t0
        if propagated:
            self.last_propagation_ns = elapsed
            self.max_propagation_ns = max(self.max_propagation_ns, elapsed)
            h = self.propagation.get(req.op)
            if h is None:
                h = self.propagation[req.op] = histogram("control_propagation_seconds", op=req.op)
            h.observe(elapsed / 1e9)
        return ControlReply(req.request_id, True, None, result, elapsed)

    def _reject(self, req: ControlRequest, error: str) -> ControlReply:
        self.counters["requests"] += 1
        self.counters["rejected"] += 1
        return ControlReply.failure(req, error)

    def _fail(self, req: ControlRequest, error: str) -> ControlReply:
        self.counters["requests"] += 1
        self.counters["failed"] += 1
        log.warning("control %s %s: %s", req.op, req.request_id, error)
        return ControlReply.failure(req, error)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no ack before the timeout"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

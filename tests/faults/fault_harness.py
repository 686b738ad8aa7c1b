"""The fault suite's harness: one fault, a real gateway, a real consumer, and the checks a
user cares about (docs/faults.md).

`run_fault` starts the fake exchange (``meltica/replay``) serving a deterministic synthetic
market with a `FaultPlan`, a gateway (`Engine`, in process) pointed at it and a bus consumer
that keeps every event, replays the whole synthetic timeline through them, and returns an
`Outcome`: the events delivered, the gap manifest, ``/readyz``, ``/metrics`` and the fake's
counters.  `Reference` recomputes, from a second copy of the same synthetic market that no
fault touched, what the exchange sent: every trade id with its price and quantity, and the
book after every depth update (`bookref.RefBook`).  The `Outcome.assert_*` methods compare
the two:

- every trade id of the source delivered exactly once, with the source's price and
  quantity, except ids inside a gap-manifest entry with outcome ``lost`` (exact id range);
- no event key delivered twice;
- no crossed book published, and every published book snapshot equal to the reference
  book at its update id (the levels it publishes are the reference's best ones);
- readiness and the disconnect counter tell the truth; the gateway kept flowing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp
from bookref import RefBook
from brokers import stream_messages
from bus_collector import Collector
from prometheus_client.parser import text_string_to_metric_families

from meltica.commands.common import local_overrides
from meltica.config import load_config
from meltica.engine import Engine
from meltica.replay.exchange import FakeExchange
from meltica.replay.faults import FaultPlan
from meltica.replay.source import MarketSource, StreamFrame
from meltica.replay.synthetic import SyntheticMarket

TRADE_KINDS = ("trade", "agg_trade")
# trade backfill by id (refills what a disconnect or dropped frames lost, and lists what it
# cannot refill as lost with its exact id range): until it exists, a fault that loses
# trades can only meet the trade contract by luck
# the payload field holding a trade's id, by channel
_ID_FIELD = {"trade": "t", "agg_trade": "a"}
_STREAM_CHANNEL = {"trade": "trade", "aggTrade": "agg_trade"}
DEFAULT_STREAMS = {
    "spot": ["trade", "agg_trade", "book_ticker", "depth"],
    "usdm": ["agg_trade", "book_ticker", "depth"],
}
BOOK_DEPTH = 20


# ---------------------------------------------------------------- sources


class Edited:
    """A MarketSource: ``inner`` with its frame sequence passed through ``edit``
    (a generator function), for faults that live in the data rather than the link:
    impossible values, replayed stale frames, a quiet market."""

    def __init__(
        self,
        inner: SyntheticMarket,
        edit: Callable[[Iterator[StreamFrame]], Iterator[StreamFrame]],
    ) -> None:
        self.inner = inner
        self.edit = edit
        self.markets = inner.markets

    def symbols(self, market: str) -> list[str]:
        return self.inner.symbols(market)

    def streams(self, market: str) -> set[str]:
        return self.inner.streams(market)

    def exchange_info(self, market: str) -> dict[str, Any]:
        return self.inner.exchange_info(market)

    def depth_snapshot(self, market: str, symbol: str, limit: int) -> bytes | None:
        return self.inner.depth_snapshot(market, symbol, limit)

    def frames(self) -> Iterator[StreamFrame]:
        return self.edit(self.inner.frames())


def channel_of_stream(stream: str) -> str:
    """``btcusdt@aggTrade`` -> ``agg_trade``; ``...@depth@100ms`` -> ``depth``."""
    name = stream.split("@")[1]
    if name in _STREAM_CHANNEL:
        return _STREAM_CHANNEL[name]
    if name == "depth":
        return "depth"
    return name


# ---------------------------------------------------------------- the reference


Levels = tuple[tuple[Decimal, Decimal], ...]


class Reference:
    """What the exchange sent, recomputed from an untouched copy of the source.

    ``trades[(market, symbol, channel)]`` maps each trade id to (price, qty);
    ``books[(market, symbol)]`` maps each update id the book passed through (the
    initial snapshot's and every depth frame's ``u``) to its best ``depth`` levels.
    """

    def __init__(self, source: SyntheticMarket, depth: int = BOOK_DEPTH) -> None:
        self.trades: dict[tuple[str, str, str], dict[int, tuple[Decimal, Decimal]]] = {}
        self.books: dict[tuple[str, str], dict[int, tuple[Levels, Levels]]] = {}
        refs: dict[tuple[str, str], RefBook] = {}
        for market in source.markets:
            for symbol in source.symbols(market):
                body = source.depth_snapshot(market, symbol, 5000)
                assert body is not None
                snap = json.loads(body)
                ref = RefBook(futures=market != "spot")
                assert ref.load(snap["lastUpdateId"], _levels(snap["bids"]), _levels(snap["asks"]))
                refs[(market, symbol)] = ref
                self.books[(market, symbol)] = {snap["lastUpdateId"]: _top(ref, depth)}
        for frame in source.frames():
            channel = channel_of_stream(frame.stream)
            if channel not in ("trade", "agg_trade", "depth"):
                continue
            d = json.loads(frame.payload)
            symbol = d["s"]
            if channel == "depth":
                ref = refs[(frame.market, symbol)]
                if ref.futures and d["pu"] == ref.last:
                    # futures ids are not consecutive: the first event after the
                    # snapshot is the one whose pu is the snapshot's id
                    ref.bridged = True
                status = ref.apply(d["U"], d["u"], d.get("pu"), _levels(d["b"]), _levels(d["a"]))
                assert status in ("applied", "synced"), (frame, status)
                self.books[(frame.market, symbol)][d["u"]] = _top(ref, depth)
            else:
                book = self.trades.setdefault((frame.market, symbol, channel), {})
                book[d[_ID_FIELD[channel]]] = (Decimal(d["p"]), Decimal(d["q"]))


def _levels(raw: Sequence[Sequence[str]]) -> list[tuple[Decimal, Decimal]]:
    return [(Decimal(p), Decimal(q)) for p, q in raw]


def _top(ref: RefBook, depth: int) -> tuple[Levels, Levels]:
    bids = tuple(sorted(ref.bids.items(), reverse=True)[:depth])
    asks = tuple(sorted(ref.asks.items())[:depth])
    return bids, asks


# ---------------------------------------------------------------- a run


@dataclass
class Scenario:
    """One fault run: the synthetic market, the fault plan and the gateway's config."""

    faults: Sequence[str] = ()
    markets: tuple[str, ...] = ("spot",)
    symbols: int = 1
    seed: int = 5
    duration_s: float = 6.0  # synthetic seconds of market
    speed: float = 2.0  # replay speed: the run takes about duration_s / speed
    start_ns: int = 1_700_000_000_000_000_000
    streams: dict[str, list[str]] = field(default_factory=lambda: dict(DEFAULT_STREAMS))
    overrides: Sequence[str] = ()
    ws_options: dict[str, Any] | None = None
    rest_options: dict[str, Any] | None = None
    edit: Callable[[Iterator[StreamFrame]], Iterator[StreamFrame]] | None = None
    # called on the built engine before it starts (e.g. a short rotation age)
    setup: Callable[[Engine], None] | None = None
    # runs next to the replay, with the engine and the outcome being collected
    during: Callable[[Engine, Outcome], Awaitable[None]] | None = None
    # the gateway's WebSocket URLs instead of the fake's (e.g. through a proxy), and what
    # to await once the run is over
    route: (
        Callable[[FakeExchange], Awaitable[tuple[dict[str, str], Callable[[], Awaitable[None]]]]]
        | None
    ) = None
    # wait for the gateway to be ready again at the end (False: a fault that keeps it down)
    expect_ready: bool = True
    timeout_s: float = 90.0

    def source(self) -> SyntheticMarket:
        return SyntheticMarket(
            markets=self.markets,
            symbols_per_market=self.symbols,
            seed=self.seed,
            start_ns=self.start_ns,
            duration_s=self.duration_s,
        )


@dataclass
class Outcome:
    scenario: Scenario
    reference: Reference
    events: list[Any] = field(default_factory=list)
    gaps: list[dict[str, Any]] = field(default_factory=list)
    gap_summary: dict[str, Any] = field(default_factory=dict)
    readyz: tuple[int, str] = (0, "")
    metrics: dict[tuple[str, frozenset[tuple[str, str]]], float] = field(default_factory=dict)
    manager_stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    fake_connections: dict[str, int] = field(default_factory=dict)
    rest_faults: dict[str, int] = field(default_factory=dict)  # REST faults the fake applied
    rest_requests: dict[str, int] = field(default_factory=dict)  # requests the fake got, by path
    not_ready: list[str] = field(default_factory=list)
    # trade ids the source never sent that a test expects delivered (a corrupt id the
    # dispatch table passes on before the next event disproves it, docs/control-plane.md)
    foreign_trade_ids: set[int] = field(default_factory=set)

    # ------------------------------------------------------------ reading

    def metric(self, name: str, **labels: str) -> float:
        """The sum of ``name`` over the series whose labels include ``labels``."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.metrics.items() if n == name and want <= ls)

    def metrics_for_consumer(self, name: str) -> dict[str, float]:
        """``meltica_bus_consumer_*{consumer=name}`` by counter (``dropped``, ``gaps``, ...)."""
        prefix = "meltica_bus_consumer_"
        out: dict[str, float] = {}
        for (n, ls), v in self.metrics.items():
            if n.startswith(prefix) and dict(ls).get("consumer") == name:
                out[n[len(prefix) :].removesuffix("_total")] = v
        return out

    def data(self) -> list[Any]:
        return [e for e in self.events if e.venue != "meltica" and e.kind != "connection_state"]

    def lost_ranges(self, market: str, symbol: str, channel: str) -> list[tuple[int, int]]:
        return [
            (g["first_id"], g["last_id"])
            for g in self.gaps
            if g["outcome"] == "lost"
            and (g["market"], g["symbol"], g["stream"]) == (market, symbol, channel)
            and g["first_id"] is not None
        ]

    # ------------------------------------------------------------ what a user cares about

    def assert_trades_exact(self) -> None:
        """Every trade id of the source delivered exactly once with its price and
        quantity, except the ids inside a ``lost`` manifest entry (exact range), and no
        id the source never sent."""
        delivered: dict[tuple[str, str, str], Counter[int]] = {}
        for e in self.events:
            if e.kind in TRADE_KINDS and e.venue != "meltica":
                if e.trade_id in self.foreign_trade_ids:
                    continue
                key = (e.market, e.symbol, e.kind)
                delivered.setdefault(key, Counter())[e.trade_id] += 1
                ref = self.reference.trades.get(key, {})
                assert e.trade_id in ref, f"{key}: trade {e.trade_id} was never sent"
                assert (e.price.decimal, e.qty.decimal) == ref[e.trade_id], (key, e.trade_id)
        checked = 0
        for key, ids in self.reference.trades.items():
            market, symbol, channel = key
            if channel not in self.scenario.streams.get(market, ()):
                continue
            got = delivered.get(key, Counter())
            twice = sorted(i for i, n in got.items() if n > 1)
            assert not twice, f"{key}: trade ids delivered more than once: {twice[:10]}"
            lost = self.lost_ranges(market, symbol, channel)
            missing = sorted(set(ids) - set(got))
            unexplained = [i for i in missing if not any(a <= i <= b for a, b in lost)]
            assert not unexplained, (
                f"{key}: {len(unexplained)} of {len(ids)} trade ids never delivered and in no "
                f"lost manifest entry: {_ranges(unexplained)[:5]}"
            )
            # a lost range names exactly the ids that went missing
            for a, b in lost:
                assert not any(a <= i <= b for i in got), f"{key}: lost [{a},{b}] was delivered"
            checked += len(ids)
        assert checked > 0, "the source sent no trade: the check proves nothing"

    def assert_no_duplicate_keys(self) -> None:
        keys = Counter(e.key for e in self.data())
        twice = sorted(k for k, n in keys.items() if n > 1)
        assert not twice, f"event keys delivered twice: {twice[:10]}"

    def assert_books_match_reference(self) -> int:
        """No crossed book published; every published book snapshot equals the
        reference book at its update id.  Returns how many were compared."""
        compared = 0
        for e in self.events:
            if e.kind != "book_snapshot" or e.source != "book":
                continue
            bids = tuple((p.decimal, q.decimal) for p, q in e.bids)
            asks = tuple((p.decimal, q.decimal) for p, q in e.asks)
            assert not (bids and asks and bids[0][0] >= asks[0][0]), f"crossed book {e.key}"
            ref = self.reference.books[(e.market, e.symbol)].get(e.update_id)
            assert ref is not None, f"{e.key}: update id {e.update_id} the book never had"
            ref_bids, ref_asks = ref
            assert bids == ref_bids[: len(bids)] and asks == ref_asks[: len(asks)], e.key
            assert len(bids) == min(BOOK_DEPTH, len(ref_bids)), (e.key, len(bids))
            assert len(asks) == min(BOOK_DEPTH, len(ref_asks)), (e.key, len(asks))
            compared += 1
        assert compared > 0, "no book snapshot was published: the check proves nothing"
        return compared

    def assert_ready_and_flowing(self) -> None:
        """/readyz says ready, and every subscribed symbol's data kept coming to the
        end of the source (its last trade id was delivered or is in a lost range)."""
        status, body = self.readyz
        assert status == 200, f"/readyz {status}: {body} ({self.not_ready})"
        for key, ids in self.reference.trades.items():
            market, symbol, channel = key
            if channel not in self.scenario.streams.get(market, ()):
                continue
            last = max(ids)
            got = any(
                e.kind == channel and e.symbol == symbol and e.trade_id == last for e in self.events
            ) or any(a <= last <= b for a, b in self.lost_ranges(market, symbol, channel))
            assert got, f"{key}: the source's last trade {last} never arrived"

    def assert_user_properties(self) -> None:
        """Everything a user cares about after a fault the gateway recovers from."""
        self.assert_no_duplicate_keys()
        self.assert_books_match_reference()
        self.assert_ready_and_flowing()
        self.assert_trades_exact()

    def assert_recovered_properties(self) -> None:
        """`assert_user_properties` for a fault that loses frames (a disconnect, dropped
        frames): the trades it removed come back from REST by id (the backfill)."""
        self.assert_user_properties()

    def disconnects(self, market: str = "spot") -> dict[str, float]:
        return {
            dict(ls)["reason"]: v
            for (n, ls), v in self.metrics.items()
            if n == "meltica_ws_disconnects_total" and dict(ls).get("market") == market and v
        }


def _ranges(ids: Sequence[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for i in ids:
        if out and out[-1][1] == i - 1:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out


async def stream_events(url: str, stream: str = "MELTICA") -> list[dict[str, Any]]:
    """Every event in the JetStream stream, in order, read by a consumer of our own;
    each message's Nats-Msg-Id is its event's key."""
    events = []
    for m in await stream_messages(url, stream):
        ev = json.loads(m.data)
        assert m.headers["Nats-Msg-Id"] == ev["key"]
        events.append(ev)
    return events


def engine_overrides(
    fake: FakeExchange, source: MarketSource, sc: Scenario, ws_urls: dict[str, str] | None = None
) -> list[str]:
    symbols = {m: source.symbols(m) for m in sc.markets}
    return [
        *local_overrides(
            ws_urls or {m: fake.ws_url(m) for m in sc.markets},
            fake.rest_url,
            symbols=symbols,
            streams={m: sc.streams[m] for m in sc.markets},
        ),
        "telemetry.metrics_port=0",
        "binance.reconnect_initial_s=0.05",
        "binance.reconnect_max_s=0.5",
        f"conductor.book_depth={BOOK_DEPTH}",
        *sc.overrides,
    ]


async def _wait(pred: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def scrape(engine: Engine, out: Outcome) -> None:
    """/readyz, /metrics and /gaps over HTTP, as an operator sees them."""
    assert engine.metrics is not None
    url = engine.metrics.url
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/readyz") as resp:
            out.readyz = (resp.status, await resp.text())
        async with http.get(f"{url}/metrics") as resp:
            text = await resp.text()
        async with http.get(f"{url}/gaps") as resp:
            body = await resp.json()
    out.gaps = body["gaps"]
    out.gap_summary = body["summary"]
    out.metrics = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            out.metrics[key] = out.metrics.get(key, 0.0) + s.value


async def run_fault_async(sc: Scenario) -> Outcome:
    source = sc.source()
    served: MarketSource = source if sc.edit is None else Edited(source, sc.edit)
    out = Outcome(scenario=sc, reference=Reference(sc.source()))
    fake = FakeExchange(
        served,
        speed=sc.speed,
        faults=FaultPlan.parse(sc.faults),
        start="manual",
        ws_options=sc.ws_options,
        rest_options=sc.rest_options,
    )
    await fake.start()
    urls, cleanup = await sc.route(fake) if sc.route is not None else (None, None)
    engine = Engine(load_config(None, env={}, overrides=engine_overrides(fake, served, sc, urls)))
    if sc.setup is not None:
        sc.setup(engine)
    col = Collector(engine, "fault-suite")
    out.events = col.events
    during: asyncio.Task[None] | None = None
    try:
        await engine.start()
        fake.begin()
        if sc.during is not None:
            during = asyncio.get_running_loop().create_task(sc.during(engine, out))
        await asyncio.wait_for(fake.finished.wait(), sc.timeout_s)
        if during is not None:
            await asyncio.wait_for(during, sc.timeout_s)
        if sc.expect_ready:
            await _wait(engine.ready, 30, f"readiness ({engine.not_ready()})")
        await _settle(col)
        out.not_ready = engine.not_ready()
        await scrape(engine, out)
        out.manager_stats = {m: mgr.stats() for m, mgr in engine.managers.items()}
        out.fake_connections = {m: s.counters.connections_opened for m, s in fake.ws.items()}
        out.rest_faults = dict(fake.rest.counters.faults)
        out.rest_requests = dict(fake.rest.counters.requests)
    finally:
        if during is not None and not during.done():
            during.cancel()
            with contextlib.suppress(BaseException):
                await during
        await engine.stop()
        await col.close()
        if cleanup is not None:
            await cleanup()
        await fake.stop()
    return out


async def _settle(col: Collector, quiet_s: float = 0.5, timeout_s: float = 15.0) -> None:
    """Until no event arrived for ``quiet_s`` (the pipeline drained)."""
    deadline = time.monotonic() + timeout_s
    seen = -1
    while time.monotonic() < deadline and seen != len(col.events):
        seen = len(col.events)
        await asyncio.sleep(quiet_s)


def run_fault(sc: Scenario) -> Outcome:
    from aio import run

    return run(lambda: run_fault_async(sc), timeout=sc.timeout_s + 60)

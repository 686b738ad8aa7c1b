"""DispatchTable (meltica/_core/dispatch.pyx): routing, dedup, atomic updates.

A small dict-based reference model states the dedup rule per kind and the
implausible-jump guard; hypothesis compares the compiled table against it.  On
the real captures, with every stream subscribed, only true duplicates may be
dropped, a replayed make-before-break overlap must collapse to exactly one copy
of every event, and one injected frame with a corrupt id must not cost a single
real event.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meltica._core.dispatch import JUMP_BOUNDS, DispatchTable, route_key_of
from meltica._core.events import Control, Derived, Event, event_from_wire
from meltica._core.parser import FrameParser, classify_stream
from meltica.replay.source import CaptureSource, StreamFrame, combined_frame

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# the guard's bounds, as documented in dispatch.pxd: ids 2**20, times (ns) one hour
ID_BOUND, TIME_BOUND = 2**20, 3_600 * 10**9
BOUNDS = dict.fromkeys(
    ("trade", "agg_trade", "book_ticker", "book_delta", "book_snapshot"), ID_BOUND
)
BOUNDS |= dict.fromkeys(("kline", "ticker", "mark_price", "liquidation"), TIME_BOUND)
PARTIAL_DEPTH_ROUTE = 100
KIND_NAMES = {1: "trade", 2: "agg_trade", 3: "book_ticker", 4: "book_delta", 6: "kline"}
KIND_NAMES |= {7: "ticker", 8: "mark_price", 9: "liquidation"}

# ------------------------------------------------------------------ event factories


def _common(kind: str, market: str, symbol: str, seq: int | None, e: int | None) -> dict[str, Any]:
    return {
        "v": 1,
        "venue": "binance",
        "market": market,
        "symbol": symbol,
        "kind": kind,
        "seq": seq,
        "ts_event": e,
        "ts_transaction": None,
        "ts_recv": 0,
        "trace": None,
    }


def trade(seq: int, market: str = "spot", symbol: str = "BTCUSDT", kind: str = "trade") -> Event:
    d = _common(kind, market, symbol, seq, 1) | {
        "trade_id": seq,
        "price": "1.5",
        "qty": "2",
        "side": "buy",
    }
    if kind == "agg_trade":
        d |= {"first_trade_id": seq, "last_trade_id": seq}
    return event_from_wire(d)


def book(
    kind: str,
    seq: int,
    market: str = "spot",
    symbol: str = "BTCUSDT",
    levels: int = 5,
    source: str = "stream",
) -> Event:
    rows = [[str(100 + i), "1"] for i in range(levels)]
    d = _common(kind, market, symbol, seq, 1) | {
        "update_id": seq,
        "first_update_id": None,
        "prev_update_id": None,
        "bids": rows,
        "asks": rows[:2],
    }
    if kind == "book_ticker":
        d = _common(kind, market, symbol, seq, None) | {
            "update_id": seq,
            "bid_price": "1",
            "bid_qty": "1",
            "ask_price": "2",
            "ask_qty": "1",
        }
    if kind == "book_snapshot":
        d["source"] = source
    return event_from_wire(d)


def kline(
    open_time: int,
    e: int | None,
    closed: bool = False,
    interval: str = "1m",
    market: str = "spot",
    symbol: str = "BTCUSDT",
    last_trade: int = 7,
) -> Event:
    d = _common("kline", market, symbol, open_time, e) | {
        "interval": interval,
        "open_time": open_time,
        "close_time": min(open_time + 59, INT64_MAX),
        "first_trade_id": 1,
        "last_trade_id": last_trade,
        "trades": 3,
        "closed": closed,
    }
    d |= dict.fromkeys(
        ("open", "high", "low", "close", "volume", "quote_volume", "taker_buy_volume"), "1"
    )
    d["taker_buy_quote_volume"] = "1"
    return event_from_wire(d)


def ticker(
    e: int,
    window: str = "24h",
    market: str = "spot",
    symbol: str = "BTCUSDT",
    last_trade: int | None = None,
) -> Event:
    d = _common("ticker", market, symbol, e, e) | {"window": window, "last_price": "1"}
    d["last_trade_id"] = last_trade
    return event_from_wire(d)


def mark(e: int, market: str = "usdm", symbol: str = "BTCUSDT") -> Event:
    return event_from_wire(_common("mark_price", market, symbol, e, e) | {"mark_price": "1"})


def liquidation(e: int, t: int | None, market: str = "usdm", symbol: str = "BTCUSDT") -> Event:
    d = _common("liquidation", market, symbol, e, e) | {"side": "sell", "qty": "1"}
    d["ts_transaction"] = t
    return event_from_wire(d)


def control(kind: str = "gap", market: str = "spot", symbol: str = "BTCUSDT") -> Event:
    return Control(kind, venue="binance", market=market, symbol=symbol, seq=1, ts_recv=0)


def route(market: str, symbol: str, kind: str, q: str | None = None, iid: int = 1) -> tuple:
    return (market, symbol, kind, q, iid, f"{kind}:{q}")


# ------------------------------------------------------------------ reference model


def order_of(ev: Any) -> tuple[int, tuple[int, int]]:
    """(bucket, ordering key) of an exchange event: the documented rule, in Python."""
    kind = ev.kind
    if kind == "book_snapshot":
        n = max(ev.n_bids, ev.n_asks)
        return (0 if n <= 5 else 1 if n <= 10 else 2), (ev.seq, 0)
    if kind == "kline":
        if ev.closed:
            sub = INT64_MAX
        else:
            sub = ev.ts_event if ev.ts_event is not None else ev.last_trade_id
        return 0, (ev.open_time, sub)
    if kind == "ticker":
        lt = ev.last_trade_id
        return 0, (ev.seq, INT64_MIN if lt is None else lt)
    if kind == "liquidation":
        t = ev.ts_transaction
        return 0, (ev.seq, INT64_MIN if t is None else t)
    return 0, (ev.seq, 0)


class Guard:
    """One (route, bucket): the last key delivered and the implausible-jump guard."""

    def __init__(self, key: tuple[int, int]) -> None:
        # a route's first key is pending, jumped from nothing (anchor None)
        self.last, self.pending, self.anchor = key, True, None
        self.void: tuple[int, int] | None = None

    def offer(self, key: tuple[int, int], bound: int) -> str:
        """'keep', 'duplicate' or 'rewind' (kept, the pending jump disproved)."""
        last = self.last
        if not self.pending or key > last:
            if key <= last:
                return "duplicate"
            if key[0] - last[0] > bound:
                if key == self.void:
                    return "duplicate"
                self.pending, self.anchor = True, last
            else:
                self.pending = False
            self.last = key
            return "keep"
        if self.anchor is not None and key <= self.anchor:
            return "duplicate"
        if last[0] - key[0] > bound:
            self.void, self.last = last, key
            if self.anchor is not None and key[0] - self.anchor[0] <= bound:
                self.pending = False
            return "rewind"
        return "duplicate"


class Reference:
    """The table's contract as a dict: route -> {bucket: Guard}."""

    def __init__(self) -> None:
        self.routes: dict[tuple, dict[int, Guard]] = {}
        self.counts = dict.fromkeys(("accepted", "unrouted", "duplicates", "passed"), 0)
        self.counts["implausible"] = 0
        self.per_route: dict[tuple, list[int]] = {}

    def update(self, add: list[tuple], remove: list[tuple]) -> None:
        for key in remove:
            self.routes.pop(key, None)
            self.per_route.pop(key, None)
        for spec in add:
            key = spec[:4]
            if key not in self.routes:
                self.routes[key] = {}
                self.per_route[key] = [0, 0, 0]

    def accept(self, batch: list[Any]) -> list[Any]:
        out = []
        for ev in batch:
            if ev.kind in ("gap", "resync_started", "resync_done", "stale", "connection_state"):
                self.counts["passed"] += 1
                out.append(ev)
                continue
            if ev.kind == "book_snapshot" and ev.source != "stream":
                self.counts["passed"] += 1
                out.append(ev)
                continue
            q = ev.interval if ev.kind == "kline" else ev.window if ev.kind == "ticker" else None
            key = (ev.market, ev.symbol, ev.kind, q)
            state = self.routes.get(key)
            if state is None:
                self.counts["unrouted"] += 1
                continue
            bucket, order = order_of(ev)
            guard = state.get(bucket)
            if guard is None:
                state[bucket] = Guard(order)
                verdict = "keep"
            else:
                verdict = guard.offer(order, BOUNDS[ev.kind])
            if verdict == "duplicate":
                self.counts["duplicates"] += 1
                self.per_route[key][1] += 1
                continue
            if verdict == "rewind":
                self.counts["implausible"] += 1
                self.per_route[key][2] += 1
            self.counts["accepted"] += 1
            self.per_route[key][0] += 1
            out.append(ev)
        return out


# ------------------------------------------------------------------ semantics


def test_accept_filters_in_place_and_counts() -> None:
    t = DispatchTable()
    assert t.update(add=[route("spot", "BTCUSDT", "trade")]) == (1, 0)
    batch = [trade(1), trade(2), trade(2), trade(1, symbol="ETHUSDT"), trade(3, market="usdm")]
    same = batch
    kept = [batch[0], batch[1]]
    assert t.accept(batch) == 2
    assert batch is same and batch == kept
    assert t.stats() == {
        "routes": 1,
        "accepted": 2,
        "unrouted": 2,
        "duplicates": 1,
        "passed": 0,
        "invalid": 0,
        "implausible": 0,
        "holes": 0,
        "holes_dropped": 0,
    }
    entry = t.get("spot", "btcusdt", "trade")
    assert entry is not None
    assert (entry["last_seq"], entry["delivered"], entry["duplicates"]) == (2, 2, 1)
    assert entry["instrument_id"] == 1 and entry["channel"] == "trade:None"


def test_empty_and_all_dropped_batches() -> None:
    t = DispatchTable()
    batch: list[Any] = []
    assert t.accept(batch) == 0 and batch == []
    batch = [trade(1), trade(2)]
    assert t.accept(batch) == 0 and batch == []
    assert t.unrouted == 2


def test_control_events_derived_events_and_meltica_snapshots_always_pass() -> None:
    t = DispatchTable()
    evs = [control(k) for k in ("gap", "resync_started", "resync_done", "stale")]
    evs.append(control("connection_state", market="", symbol=""))
    evs.append(book("book_snapshot", 5, source="rest"))
    evs.append(book("book_snapshot", 5, source="book"))
    evs.append(Derived("binance", "spot", "BTCUSDT", "mid", 5, None, 1, {"mid": "1"}))
    batch = list(evs)
    assert t.accept(batch) == len(evs) and batch == evs
    assert t.passed == len(evs) and t.unrouted == 0


def test_non_events_are_dropped_and_counted() -> None:
    t = DispatchTable()
    t.update(add=[route("spot", "BTCUSDT", "trade")])
    ev = trade(1)
    batch: list[Any] = [None, "x", ev, 3]
    assert t.accept(batch) == 1 and batch == [ev]
    assert t.invalid == 3


def test_kline_updates_sharing_an_open_time_all_pass() -> None:
    t = DispatchTable()
    t.update(add=[route("spot", "BTCUSDT", "kline", "1m"), route("spot", "BTCUSDT", "kline", "5m")])
    stream = [kline(0, 2), kline(0, 4), kline(0, 6, closed=True), kline(60, 6), kline(60, 8)]
    batch = list(stream)
    assert t.accept(batch) == 5
    # replayed: every one is a duplicate, the closing update too
    batch = [kline(0, 4), kline(0, 6, closed=True), kline(60, 8), kline(0, 7)]
    assert t.accept(batch) == 0 and t.duplicates == 4
    # another interval is another route; an interval nobody routes is unrouted
    batch = [kline(0, 2, interval="5m"), kline(0, 2, interval="1h")]
    assert t.accept(batch) == 1 and t.unrouted == 1
    # without an event time the last trade id orders the updates of a candle
    t.update(add=[route("spot", "ETHUSDT", "kline", "1m")])
    batch = [kline(0, None, symbol="ETHUSDT", last_trade=k) for k in (5, 6, 6, 7)]
    assert t.accept(batch) == 3


def test_ticker_mark_price_liquidation_rules() -> None:
    t = DispatchTable()
    t.update(
        add=[
            route("spot", "BTCUSDT", "ticker", "24h"),
            route("spot", "BTCUSDT", "ticker", "mini"),
            route("usdm", "BTCUSDT", "mark_price"),
            route("usdm", "BTCUSDT", "liquidation"),
        ]
    )
    # mini and 24h tickers of one second are different routes; a repeat is a duplicate
    batch = [ticker(1000, "24h", last_trade=5), ticker(1000, "mini"), ticker(1000, "mini")]
    assert t.accept(batch) == 2
    # same event time, more trades: newer; fewer: not
    batch = [ticker(1000, "24h", last_trade=6), ticker(1000, "24h", last_trade=4)]
    assert t.accept(batch) == 1
    batch = [mark(5), mark(5), mark(4), mark(6)]
    assert t.accept(batch) == 2
    batch = [liquidation(5, 1), liquidation(5, 2), liquidation(5, 2), liquidation(5, None)]
    assert t.accept(batch) == 2
    assert t.duplicates == 1 + 1 + 2 + 2


def test_partial_depth_buckets_share_one_route() -> None:
    t = DispatchTable()
    t.update(add=[route("spot", "BTCUSDT", "book_snapshot")])
    # depth5 / depth10 / depth20 at one update id: all delivered once
    batch = [book("book_snapshot", 10, levels=n) for n in (5, 10, 20, 20, 5)]
    assert t.accept(batch) == 3 and t.duplicates == 2
    # a slower depth20 behind a faster depth5 is not held against it
    batch = [book("book_snapshot", 12, levels=5), book("book_snapshot", 11, levels=20)]
    assert t.accept(batch) == 2
    entry = t.get("spot", "BTCUSDT", "book_snapshot")
    assert entry is not None and entry["last_seqs"] == [12, 10, 11] and entry["last_seq"] == 12


def keys(batch: list[Any]) -> list[int]:
    return [e.seq for e in batch]


def test_jump_bounds_are_the_documented_ones() -> None:
    assert JUMP_BOUNDS == BOUNDS


def test_one_corrupt_trade_id_cannot_silence_a_route() -> None:
    t = DispatchTable()
    t.update(add=[route("spot", "BTCUSDT", "trade")])
    batch = [trade(i) for i in (100, 101, INT64_MAX, 102, 103)]
    # the corrupt one is delivered (it cannot be told from a real jump yet); the
    # real trades after it disprove it and are all delivered
    assert t.accept(batch) == 5 and keys(batch) == [100, 101, INT64_MAX, 102, 103]
    assert t.drops() == {"duplicate": 0, "unrouted": 0, "invalid": 0, "implausible": 1}
    # the same frame replayed is a duplicate; so is what came before the jump
    batch = [trade(101), trade(INT64_MAX), trade(102), trade(104)]
    assert t.accept(batch) == 1 and keys(batch) == [104]
    assert t.drops()["duplicate"] == 3 and t.implausible == 1
    entry = t.get("spot", "BTCUSDT", "trade")
    assert entry is not None and entry["last_seq"] == 104
    assert (entry["delivered"], entry["duplicates"], entry["implausible"]) == (6, 3, 1)


def test_a_corrupt_first_event_cannot_silence_a_route() -> None:
    t = DispatchTable()
    t.update(add=[route("spot", "BTCUSDT", "agg_trade"), route("spot", "ETHUSDT", "agg_trade")])
    batch = [
        trade(INT64_MAX, kind="agg_trade"),
        trade(5, kind="agg_trade"),
        trade(6, kind="agg_trade"),
    ]
    assert t.accept(batch) == 3 and t.implausible == 1
    # a real first event followed by one just below it: a duplicate, as always
    batch = [trade(n, symbol="ETHUSDT", kind="agg_trade") for n in (100, 99, 101)]
    assert t.accept(batch) == 2 and keys(batch) == [100, 101] and t.implausible == 1


@pytest.mark.parametrize("kind", sorted(BOUNDS))
def test_every_kind_recovers_from_one_corrupt_key(kind: str) -> None:
    bound = BOUNDS[kind]
    base = 10**15

    def make(seq: int) -> Event:
        if kind in ("trade", "agg_trade"):
            return trade(seq, kind=kind)
        if kind in ("book_ticker", "book_delta", "book_snapshot"):
            return book(kind, seq)
        if kind == "kline":
            return kline(seq, 1)
        if kind == "ticker":
            return ticker(seq)
        if kind == "mark_price":
            return mark(seq, market="spot")
        return liquidation(seq, 1, market="spot")

    q = "1m" if kind == "kline" else "24h" if kind == "ticker" else None
    t = DispatchTable()
    t.update(add=[route("spot", "BTCUSDT", kind, q)])
    step = 1 if kind in ("trade", "agg_trade") else bound // 4
    real = [base + i * step for i in range(6)]
    batch = [make(real[0]), make(real[1]), make(INT64_MAX), *(make(k) for k in real[2:])]
    assert t.accept(batch) == 7 and t.implausible == 1 and t.duplicates == 0
    # a key just past the bound is a jump too; one just inside it is taken at face value
    batch = [make(real[-1] + bound), make(real[-1] + bound + step)]
    assert t.accept(batch) == 2 and t.implausible == 1


def test_real_jumps_are_confirmed_and_overlaps_stay_duplicates() -> None:
    t = DispatchTable()
    t.update(add=[route("spot", "BTCUSDT", "trade")])
    after = 101 + 10**7  # an outage: ten million trades missed, then the stream goes on
    batch = [trade(n) for n in (100, 101, after, after + 1)]
    assert t.accept(batch) == 4 and t.implausible == 0
    # reconnect overlap replays, before and around the jump: all duplicates
    batch = [trade(n) for n in (100, 101, after - 3, after, after + 1, after + 2)]
    assert t.accept(batch) == 1 and keys(batch) == [after + 2]
    assert t.duplicates == 5 and t.implausible == 0
    # replays right after a jump, before the next real event settles it
    jump = after + 2 + 10**8
    batch = [trade(jump), trade(after + 2), trade(jump - 10), trade(jump), trade(jump + 1)]
    assert t.accept(batch) == 2 and keys(batch) == [jump, jump + 1]
    assert t.duplicates == 8 and t.implausible == 0


def test_partial_depth_guards_each_bucket() -> None:
    t = DispatchTable()
    t.update(add=[route("spot", "BTCUSDT", "book_snapshot")])
    batch = [book("book_snapshot", 10, levels=5), book("book_snapshot", 10, levels=20)]
    batch += [book("book_snapshot", INT64_MAX, levels=20), book("book_snapshot", 11, levels=5)]
    batch += [book("book_snapshot", 11, levels=20), book("book_snapshot", 12, levels=20)]
    assert t.accept(batch) == 6 and t.implausible == 1
    entry = t.get("spot", "BTCUSDT", "book_snapshot")
    assert entry is not None and entry["last_seqs"] == [11, None, 12]


def test_update_validates_everything_before_applying() -> None:
    t = DispatchTable()
    t.update(add=[route("spot", "BTCUSDT", "trade")])
    bad_specs: list[Any] = [
        [route("spot", "ETHUSDT", "trade"), route("nyse", "IBM", "trade")],
        [route("spot", "ETHUSDT", "trade"), route("spot", "ETHUSDT", "kline", "7m")],
        [route("spot", "ETHUSDT", "trade"), route("spot", "ETHUSDT", "ticker", "2h")],
        [route("spot", "ETHUSDT", "trade"), route("spot", "ETHUSDT", "trade", "1m")],
        [route("spot", "ETHUSDT", "trade"), route("spot", "ETHUSDT", "gap")],
        [route("spot", "ETHUSDT", "trade"), ("spot", "ETHUSDT", "trade", None, "1", "c")],
        [route("spot", "ETHUSDT", "trade"), ("spot", "", "trade", None, 1, "c")],
        [route("spot", "ETHUSDT", "trade"), ("spot", "ETHUSDT", "trade")],
    ]
    for specs in bad_specs:
        with pytest.raises((ValueError, TypeError)):
            t.update(add=specs, remove=[("spot", "BTCUSDT", "trade")])
        assert t.routes() == [("spot", "BTCUSDT", "trade", None)]
    with pytest.raises(ValueError, match="unknown market"):
        t.update(remove=[("spot", "BTCUSDT", "trade"), ("moon", "X", "trade")])
    assert len(t) == 1


def test_update_semantics() -> None:
    t = DispatchTable()
    t.update(add=[route("spot", "BTCUSDT", "trade", iid=7)])
    batch = [trade(5)]
    t.accept(batch)
    # re-adding keeps the dedup state, takes the new metadata
    assert t.update(add=[("spot", "BTCUSDT", "trade", None, 9, "trade2")]) == (0, 0)
    entry = t.get("spot", "BTCUSDT", "trade")
    assert entry is not None and (entry["instrument_id"], entry["channel"]) == (9, "trade2")
    batch = [trade(5)]
    assert t.accept(batch) == 0
    # removing an absent route is a no-op; remove + add in one update starts afresh
    assert t.update(remove=[("usdm", "BTCUSDT", "trade")]) == (0, 0)
    key = ("spot", "BTCUSDT", "trade")
    assert t.update(add=[route(*key)], remove=[key]) == (1, 1)
    batch = [trade(5)]
    assert t.accept(batch) == 1
    assert ("spot", "BTCUSDT", "trade") in t and ("spot", "BTCUSDT", "agg_trade") not in t
    assert ("nope",) not in t
    # entries are reused; the node goes when its last route does
    t.update(remove=[key])
    assert len(t) == 0 and t.routes() == [] and t.get(*key) is None
    t.update(add=[route("usdm", "ETHUSDT", "book_delta")])
    assert t.entries()[0]["symbol"] == "ETHUSDT" and len(t) == 1


def test_route_key_of() -> None:
    assert route_key_of(kline(0, 1, interval="5m")) == ("spot", "BTCUSDT", "kline", "5m")
    assert route_key_of(ticker(1, "mini")) == ("spot", "BTCUSDT", "ticker", "mini")
    assert route_key_of(trade(1)) == ("spot", "BTCUSDT", "trade", None)
    assert route_key_of(control()) is None
    assert route_key_of(book("book_snapshot", 1, source="rest")) is None


# ------------------------------------------------------------------ hypothesis vs reference

MARKETS = ("spot", "usdm")
SYMBOLS = ("BTCUSDT", "ETHUSDT", "XRPUSDT")
ROUTE_KEYS = [
    (m, s, k, q)
    for m in MARKETS
    for s in SYMBOLS
    for k, q in (
        ("trade", None),
        ("agg_trade", None),
        ("book_ticker", None),
        ("book_delta", None),
        ("book_snapshot", None),
        ("kline", "1m"),
        ("kline", "5m"),
        ("ticker", "24h"),
        ("ticker", "mini"),
        ("mark_price", None),
        ("liquidation", None),
    )
]

# small keys, and keys far apart (further than every bound) or close to a far one
FAR = (2**44 - 1, 2**44, 2**44 + 1, 2**44 + 2**43, 2**62, INT64_MAX)
seqs = st.one_of(st.integers(0, 6), st.integers(0, 6), st.sampled_from(FAR))


@st.composite
def events(draw: st.DrawFn) -> Event:
    m, s = draw(st.sampled_from(MARKETS)), draw(st.sampled_from(SYMBOLS))
    kind = draw(
        st.sampled_from(
            [
                "trade",
                "agg_trade",
                "book_ticker",
                "book_delta",
                "book_snapshot",
                "kline",
                "ticker",
                "mark_price",
                "liquidation",
                "gap",
            ]
        )
    )
    seq = draw(seqs)
    if kind in ("trade", "agg_trade"):
        return trade(seq, m, s, kind)
    if kind in ("book_ticker", "book_delta"):
        return book(kind, seq, m, s)
    if kind == "book_snapshot":
        source = draw(st.sampled_from(["stream", "stream", "rest"]))
        return book(kind, seq, m, s, levels=draw(st.integers(0, 25)), source=source)
    if kind == "kline":
        interval = draw(st.sampled_from(["1m", "5m", "1h"]))
        e = draw(st.one_of(st.none(), seqs))
        closed = draw(st.booleans())
        return kline(seq, e, closed, interval, m, s, last_trade=draw(seqs))
    if kind == "ticker":
        window = draw(st.sampled_from(["24h", "mini", "1h"]))
        return ticker(seq, window, m, s, draw(st.one_of(st.none(), seqs)))
    if kind == "mark_price":
        return mark(seq, m, s)
    if kind == "liquidation":
        return liquidation(seq, draw(st.one_of(st.none(), seqs)), m, s)
    return control("gap", m, s)


ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("update"),
            st.lists(st.sampled_from(ROUTE_KEYS), max_size=8),
            st.lists(st.sampled_from(ROUTE_KEYS), max_size=4),
        ),
        st.tuples(st.just("batch"), st.lists(events(), max_size=30)),
    ),
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_table_matches_reference(program: list[tuple[Any, ...]]) -> None:
    t, ref = DispatchTable(), Reference()
    for op in program:
        if op[0] == "update":
            add = [(*k, 1, "c") for k in op[1]]
            t.update(add=add, remove=op[2])
            ref.update(add, op[2])
            assert sorted(t.routes(), key=repr) == sorted(ref.routes, key=repr)
        else:
            batch = list(op[1])
            expected = ref.accept(op[1])
            assert t.accept(batch) == len(expected)
            assert [id(e) for e in batch] == [id(e) for e in expected]
    stats = t.stats()
    assert {k: stats[k] for k in ref.counts} == ref.counts
    for key, counts in ref.per_route.items():
        entry = t.get(*key)
        assert entry is not None
        assert [entry["delivered"], entry["duplicates"], entry["implausible"]] == counts


# ------------------------------------------------------------------ real captures


def capture_files(root: Path) -> list[Path]:
    files = sorted(root.glob("hftbacktest/examples/*/*.gz"))
    files += sorted(root.glob("cryptofeed/sample_data/*.ws.1.0"))
    return files


def routed_table(source: CaptureSource) -> DispatchTable:
    """A table with a route for every stream the capture carries."""
    t = DispatchTable()
    add = []
    for stream in source.streams(source.market):
        kind, symbol, q = classify_stream(stream)
        assert kind and symbol, stream
        if kind == PARTIAL_DEPTH_ROUTE:
            add.append((source.market, symbol, "book_snapshot", None, 0, stream))
        else:
            q = q if KIND_NAMES[kind] in ("kline", "ticker") else None
            add.append((source.market, symbol, KIND_NAMES[kind], q, 0, stream))
    t.update(add=add)
    return t


def parsed(source: CaptureSource, frames: Iterator[StreamFrame], chunk: int) -> Iterator[list]:
    parser = FrameParser(venue=source.venue, market=source.market)
    batch: list[Any] = []
    for i, frame in enumerate(frames, 1):
        parser.parse_into(combined_frame(frame), frame.ts_ns, batch)
        if i % chunk == 0:
            yield batch
            batch = []
    yield batch


def content(ev: Any) -> dict[str, Any]:
    w = ev.to_wire()
    del w["ts_recv"]
    return w


def test_captures_drop_only_true_duplicates(captures_dir: Path) -> None:
    files = capture_files(captures_dir)
    assert len(files) >= 10
    total = 0
    for path in files:
        source = CaptureSource(path)
        t = routed_table(source)
        delivered: dict[str, Any] = {}
        for batch in parsed(source, source.frames(), chunk=64):
            original = list(batch)
            t.accept(batch)
            kept = {id(e) for e in batch}
            for ev in original:
                if id(ev) in kept:
                    assert ev.key not in delivered, f"{path.name}: {ev.key} delivered twice"
                    delivered[ev.key] = ev
                else:
                    earlier = delivered.get(ev.key)
                    assert earlier is not None, f"{path.name}: dropped {ev.key}, never delivered"
                    assert content(earlier) == content(ev), f"{path.name}: dropped new {ev.key}"
        assert t.unrouted == 0 and t.invalid == 0 and t.implausible == 0, path.name
        assert t.accepted == len(delivered)
        total += t.accepted
    assert total > 300_000


def overlap_order(n: int, start_new: int, end_old: int, rng: random.Random) -> Iterator[tuple]:
    """A make-before-break delivery: the old connection carries frames [0, end_old), the
    new one [start_new, n); the new one never runs ahead of the old while both live."""
    o, m = 0, start_new
    while o < end_old or m < n:
        new_ok = m < n and (m < o or o >= end_old)
        old_ok = o < end_old
        if old_ok and (not new_ok or rng.random() < 0.5):
            yield ("old", o)
            o += 1
        else:
            yield ("new", m)
            m += 1


@pytest.mark.parametrize(
    "name",
    [
        "cryptofeed/sample_data/BINANCE_FUTURES.ws.1.0",
        "cryptofeed/sample_data/BINANCE.ws.1.0",
        "hftbacktest/examples/usdm/btcusdt_20240718.gz",
        "hftbacktest/examples/spot/btcusdt_20230405.dat.gz",
    ],
)
def test_replayed_overlap_is_deduplicated_exactly(captures_dir: Path, name: str) -> None:
    source = CaptureSource(captures_dir / name)
    frames = [combined_frame(f) for f in islice(source.frames(), 6000)]
    n = len(frames)
    single = FrameParser(venue=source.venue, market=source.market)
    expected = [e.key for f in frames for e in single.parse(f)]
    rng = random.Random(n)
    for start_new, end_old in ((n // 4, 3 * n // 4), (0, n), (n // 2, n // 2 + 1), (10, n)):
        t = routed_table(source)
        parsers = {c: FrameParser(venue=source.venue, market=source.market) for c in ("old", "new")}
        got: list[str] = []
        batch: list[Any] = []
        sent = 0
        for conn, i in overlap_order(n, start_new, end_old, rng):
            sent += parsers[conn].parse_into(frames[i], 0, batch)
            if rng.random() < 0.1:
                t.accept(batch)
                got += [e.key for e in batch]
                batch = []
        t.accept(batch)
        got += [e.key for e in batch]
        assert got == expected
        assert t.duplicates == sent - len(expected)
        assert t.unrouted == 0


def corrupt(ev: Any) -> Event:
    """A copy of ``ev`` whose ordering key is INT64_MAX (a corrupt or hostile frame)."""
    w = ev.to_wire()
    del w["key"]
    w["seq"] = INT64_MAX
    for field in ("trade_id", "update_id", "open_time"):
        if field in w:
            w[field] = INT64_MAX
    if "close_time" in w:
        w["close_time"] = INT64_MAX
    return event_from_wire(w)


@pytest.mark.parametrize(
    "name",
    [
        "cryptofeed/sample_data/BINANCE_FUTURES.ws.1.0",
        "cryptofeed/sample_data/BINANCE.ws.1.0",
        "hftbacktest/examples/usdm/btcusdt_20240718.gz",
    ],
)
def test_an_injected_corrupt_frame_costs_no_real_event(captures_dir: Path, name: str) -> None:
    """On real streams, one corrupt copy of an event per route, anywhere: every real
    event is still delivered exactly once, and every injected one is disproved."""
    source = CaptureSource(captures_dir / name)
    frames = [combined_frame(f) for f in islice(source.frames(), 6000)]
    parser = FrameParser(venue=source.venue, market=source.market)
    events = [e for f in frames for e in parser.parse(f)]
    rng = random.Random(len(events))
    by_route: dict[Any, list[int]] = {}
    for i, ev in enumerate(events):
        by_route.setdefault(route_key_of(ev), []).append(i)
    # right after an event of a route with at least two more to come, its corrupt copy
    inject: dict[int, Event] = {}
    for rkey, ix in by_route.items():
        if rkey is not None and len(ix) >= 3:
            i = rng.choice(ix[:-2])
            inject[i] = corrupt(events[i])
    assert len(inject) >= 3
    stream: list[Any] = []
    for i, ev in enumerate(events):
        stream.append(ev)
        if i in inject:
            stream.append(inject[i])
    clean, t = routed_table(source), routed_table(source)
    expected = list(events)
    clean.accept(expected)
    got: list[Any] = []
    for k in range(0, len(stream), 64):
        batch = stream[k : k + 64]
        t.accept(batch)
        got += batch
    bogus = {id(e) for e in inject.values()}
    assert [e.key for e in got if id(e) not in bogus] == [e.key for e in expected]
    assert t.implausible == len(inject) and t.duplicates == clean.duplicates

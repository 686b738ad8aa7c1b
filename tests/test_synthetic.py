"""SyntheticMarket, the fake exchange's generated market: it must look exactly like Binance.

A reference client per book follows Binance's documented local-book procedure (docs/conductor.md)
on plain dicts, subscribing and fetching its snapshot at random moments: it must never see a
gap or a crossed book, and every bookTicker that names the update id the book is at must equal
the book's top.  Every frame goes through the product parser, every decimal is checked against
the instrument's tick and step from exchangeInfo, klines and tickers are recomputed from the
trades.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import islice
from typing import Any

import pytest

import meltica
from meltica.replay.source import MarketSource, StreamFrame, combined_frame
from meltica.replay.synthetic import DEFAULT_RATES, SyntheticMarket, _frame

NS = 1_000_000_000
NUMBER = re.compile(rb"-?\d+(\.\d+)?")  # what every numeric string must look like: no exponent
QUOTED_NUMBER = re.compile(rb'"([-+0-9.eE]*[0-9][-+0-9.eE]*)"')  # "1.5e-3" yes, "1m" no
_FIXED: dict[int, re.Pattern[str]] = {}


def _fixed_re(decimals: int) -> re.Pattern[str]:
    if decimals not in _FIXED:
        _FIXED[decimals] = re.compile(rf"-?\d+\.\d{{{decimals}}}" if decimals else r"-?\d+")
    return _FIXED[decimals]


def _mantissa(text: str) -> int:
    return int(text.replace(".", ""))


def _decimals(text: str) -> int:
    return len(text.partition(".")[2])


@dataclass
class Filters:
    """An instrument's grid, read from exchangeInfo as a client would."""

    price_dec: int  # decimals prices are printed with
    tick: int  # tick size in units of 10**-price_dec
    qty_dec: int
    step: int
    quote_dec: int  # decimals of quote amounts (volumes in the quote asset)

    def price(self, text: str, signed: bool = False) -> None:
        assert _fixed_re(self.price_dec).fullmatch(text), text
        assert signed or not text.startswith("-"), text
        assert _mantissa(text) % self.tick == 0, f"{text} not on tick"

    def qty(self, text: str) -> None:
        assert _fixed_re(self.qty_dec).fullmatch(text), text
        assert not text.startswith("-") and _mantissa(text) % self.step == 0, text

    def fixed(self, text: str, decimals: int) -> None:
        assert _fixed_re(decimals).fullmatch(text), (text, decimals)


def _filters(market: str, info: dict[str, Any]) -> dict[str, Filters]:
    out = {}
    for sym in info["symbols"]:
        f = {x["filterType"]: x for x in sym["filters"]}
        tick, step = f["PRICE_FILTER"]["tickSize"], f["LOT_SIZE"]["stepSize"]
        significant = _decimals(tick.rstrip("0")) + _decimals(step.rstrip("0"))
        out[sym["symbol"]] = Filters(
            price_dec=_decimals(tick),
            tick=_mantissa(tick),
            qty_dec=_decimals(step),
            step=_mantissa(step),
            quote_dec=8 if market == "spot" else significant,
        )
    return out


def _check_numbers(payload: bytes) -> None:
    """Every string that starts like a number is plain decimal notation (no exponent)."""
    for text in QUOTED_NUMBER.findall(payload):
        assert NUMBER.fullmatch(text), text


def _check_decimals(kind: str, d: dict[str, Any], f: Filters, market: str) -> None:
    """Prices on the tick, quantities on the step, computed values with their fixed decimals."""
    prices: list[str] = []
    qtys: list[str] = []
    fixed: list[tuple[str, int]] = []
    if kind == "depth":
        prices = [p for p, _ in d["b"] + d["a"]]
        qtys = [q for _, q in d["b"] + d["a"]]
    elif kind == "bookTicker":
        prices, qtys = [d["b"], d["a"]], [d["B"], d["A"]]
    elif kind in ("trade", "aggTrade"):
        prices, qtys = [d["p"]], [d["q"]]
    elif kind == "kline_1m":
        k = d["k"]
        prices, qtys = [k["o"], k["c"], k["h"], k["l"]], [k["v"], k["V"]]
        fixed = [(k["q"], f.quote_dec), (k["Q"], f.quote_dec)]
    elif kind == "miniTicker":
        prices, qtys = [d["c"], d["o"], d["h"], d["l"]], [d["v"]]
        fixed = [(d["q"], f.quote_dec)]
    elif kind == "ticker":
        prices, qtys = [d["c"], d["o"], d["h"], d["l"]], [d["v"], d["Q"]]
        if market == "spot":
            prices += [d["x"], d["b"], d["a"]]
            qtys += [d["B"], d["A"]]
        f.price(d["p"], signed=True)  # the change: a signed multiple of the tick
        # The weighted average is off the grid but printed like a price; the percent has 3.
        fixed = [(d["q"], f.quote_dec), (d["w"], f.price_dec), (d["P"], 3)]
    elif kind == "markPrice@1s":
        fixed = [(d[key], 8) for key in "pPir"]
    else:
        raise AssertionError(f"unexpected stream kind {kind}")
    for p in prices:
        f.price(p)
    for q in qtys:
        f.qty(q)
    for text, decimals in fixed:
        f.fixed(text, decimals)


class RefBook:
    """One client's local book, by Binance's procedure (docs/conductor.md), on plain dicts.

    It subscribes at ``subscribe_ns``, buffers ``buffer_n`` diffs, then waits ``delay`` more
    frames of its symbol (the REST round trip) before it fetches the snapshot.
    """

    def __init__(
        self,
        source: MarketSource,
        market: str,
        symbol: str,
        subscribe_ns: int,
        buffer_n: int,
        delay: int,
    ) -> None:
        self.source, self.market, self.symbol = source, market, symbol
        self.futures = market != "spot"
        self.subscribe_ns, self.buffer_n, self.delay = subscribe_ns, buffer_n, delay
        self.buffer: list[dict[str, Any]] = []
        self.synced = False
        self.first = False  # the next applied event is the first after the snapshot
        self.u = -1
        self.bids: dict[int, str] = {}  # price mantissa -> qty string
        self.asks: dict[int, str] = {}
        self.prices: dict[int, str] = {}  # price mantissa -> price string
        self.pending_bt: dict[int, tuple[str, str, str, str]] = {}
        self.gaps = self.crossed = self.applied = self.bt_checked = self.bt_mismatched = 0

    def on_frame(self, frame: StreamFrame, kind: str, d: dict[str, Any]) -> None:
        if frame.ts_ns < self.subscribe_ns:
            return
        if kind == "bookTicker":
            self.on_book_ticker(d)
        elif kind == "depth":
            if self.synced:
                self.apply(d)
            else:
                self.buffer.append(d)
        if not self.synced and len(self.buffer) >= self.buffer_n:
            if self.delay:
                self.delay -= 1
            else:
                self.sync()

    def sync(self) -> None:
        body = self.source.depth_snapshot(self.market, self.symbol, 5000)
        assert body is not None
        snap = json.loads(body)
        keys = (
            ["lastUpdateId", "E", "T", "bids", "asks"]
            if self.futures
            else ["lastUpdateId", "bids", "asks"]
        )
        assert list(snap) == keys
        last = snap["lastUpdateId"]
        # Step 3: a snapshot older than the first buffered event would need a re-fetch; the
        # source's snapshot is as of the last depth frame it sent, so it never is.
        assert last >= self.buffer[0]["U"], "stale snapshot"
        for side, book in (("bids", self.bids), ("asks", self.asks)):
            for p, q in snap[side]:
                m = _mantissa(p)
                self.prices[m] = p
                book[m] = q
        self.u = last
        self.synced = True
        self.check_crossed()
        self.check_book_ticker()
        # Step 4: drop what the snapshot already holds (spot u <= L, futures u < L).
        if self.futures:
            kept = [e for e in self.buffer if e["u"] >= last]
        else:
            kept = [e for e in self.buffer if e["u"] > last]
        self.buffer = []
        self.first = True
        for e in kept:
            self.apply(e)

    def apply(self, d: dict[str, Any]) -> None:
        if self.first:
            # The first applied event must straddle the snapshot's id.
            last = self.u
            straddles = d["U"] <= last <= d["u"] if self.futures else d["U"] <= last + 1 <= d["u"]
            if not straddles:
                self.gaps += 1
            self.first = False
        elif self.futures:
            if d["pu"] != self.u:
                self.gaps += 1
        elif d["U"] != self.u + 1:
            self.gaps += 1
        for side, book in (("b", self.bids), ("a", self.asks)):
            for p, q in d[side]:
                m = _mantissa(p)
                if _mantissa(q) == 0:
                    book.pop(m, None)
                else:
                    self.prices[m] = p
                    book[m] = q
        self.u = d["u"]
        self.applied += 1
        self.check_crossed()
        self.check_book_ticker()

    def check_book_ticker(self) -> None:
        """A bookTicker seen earlier with the id the book is now at must match its top."""
        seen = self.pending_bt.pop(self.u, None)
        if seen is not None:
            self.compare_top(seen)
        if self.pending_bt:
            self.pending_bt = {u: v for u, v in self.pending_bt.items() if u > self.u}

    def on_book_ticker(self, d: dict[str, Any]) -> None:
        top = (d["b"], d["B"], d["a"], d["A"])
        if self.synced and d["u"] == self.u:
            self.compare_top(top)
        elif not self.synced or d["u"] > self.u:
            self.pending_bt[d["u"]] = top

    def compare_top(self, top: tuple[str, str, str, str]) -> None:
        bid, ask = max(self.bids), min(self.asks)
        self.bt_checked += 1
        if top != (self.prices[bid], self.bids[bid], self.prices[ask], self.asks[ask]):
            self.bt_mismatched += 1

    def check_crossed(self) -> None:
        if self.bids and self.asks and max(self.bids) >= min(self.asks):
            self.crossed += 1


@dataclass
class Report:
    frames: int = 0
    per_kind: Counter[tuple[str, str]] = field(default_factory=Counter)
    books: list[RefBook] = field(default_factory=list)
    payloads: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)


def run_checks(source: SyntheticMarket, seed: int = 1, keep: bool = False) -> Report:
    """Iterates the whole market once, checking every frame on the way."""
    rng = random.Random(seed)
    duration_ns = round((source.duration_s or 0) * NS)
    report = Report()
    parsers = {m: meltica.FrameParser(market=m) for m in source.markets}
    pending: dict[str, list[bytes]] = {m: [] for m in source.markets}
    parsed: list[Any] = []
    filters = {m: _filters(m, source.exchange_info(m)) for m in source.markets}
    streams = {m: source.streams(m) for m in source.markets}
    clients: dict[tuple[str, str], RefBook] = {}
    for m in source.markets:
        for s in source.symbols(m):
            assert s == s.upper()
            clients[(m, s)] = RefBook(
                source,
                m,
                s,
                subscribe_ns=source.start_ns + int(rng.random() * 0.3 * duration_ns),
                buffer_n=rng.randint(1, 4),
                delay=rng.randint(0, 6),
            )
    report.books = list(clients.values())
    # The top before any frame is the initial book's; from then on bookTicker tells it.
    last_top: dict[tuple[str, str], tuple[str, str]] = {}
    for m, s in clients:
        first = json.loads(source.depth_snapshot(m, s, 1) or b"")
        last_top[(m, s)] = (first["bids"][0][0], first["asks"][0][0])
    last_ts = 0
    for frame in source.frames():
        report.frames += 1
        assert frame.ts_ns >= last_ts, "frames out of time order"
        last_ts = frame.ts_ns
        assert frame.envelope is None and frame.stream in streams[frame.market]
        batch = pending[frame.market]
        batch.append(combined_frame(frame))
        if len(batch) >= 4096:
            parsers[frame.market].parse_batch(batch, 0, parsed)
            batch.clear()
            parsed.clear()
        d = json.loads(frame.payload)
        sym_lower, _, kind = frame.stream.partition("@")
        if kind.startswith("depth"):
            kind = "depth"
        sym = d["s"]
        assert sym_lower == sym.lower()
        key = (frame.market, sym)
        report.per_kind[(frame.market, kind)] += 1
        _check_numbers(frame.payload)
        _check_decimals(kind, d, filters[frame.market][sym], frame.market)
        if kind == "bookTicker":
            assert _mantissa(d["b"]) < _mantissa(d["a"]), "crossed bookTicker"
            last_top[key] = (d["b"], d["a"])
        elif kind == "trade":
            # m: the buyer is the maker, so the taker sold into the bid.
            bid, ask = last_top[key]
            assert d["p"] == (bid if d["m"] else ask), (d, last_top[key])
        if keep:
            report.payloads.setdefault(key, []).append({"kind": kind, **d})
        clients[key].on_frame(frame, kind, d)
    for m, batch in pending.items():
        parsers[m].parse_batch(batch, 0, parsed)
        p = parsers[m]
        assert p.errors == 0 and p.unknown == 0
        assert p.events == sum(n for (mk, _), n in report.per_kind.items() if mk == m)
    # Finally every synced client's book equals the full snapshot, which is the book at the
    # last depth frame yielded: the clients missed nothing and applied nothing twice wrongly.
    for book in report.books:
        body = source.depth_snapshot(book.market, book.symbol, 5000)
        assert body is not None
        snap = json.loads(body)
        parsers[book.market].parse_rest_depth(body, book.symbol, 0)
        assert snap["lastUpdateId"] == book.u
        assert {_mantissa(p): q for p, q in snap["bids"]} == book.bids
        assert {_mantissa(p): q for p, q in snap["asks"]} == book.asks
    return report


def assert_clean(report: Report, min_checked: int) -> None:
    synced = [b for b in report.books if b.synced]
    assert len(synced) == len(report.books), "every client synced"
    assert sum(b.gaps for b in report.books) == 0
    assert sum(b.crossed for b in report.books) == 0
    checked = sum(b.bt_checked for b in report.books)
    assert checked >= min_checked, checked
    assert sum(b.bt_mismatched for b in report.books) == 0, "bookTicker != book top"


@pytest.mark.parametrize(
    ("symbols_per_market", "duration_s", "depth_levels", "min_checked"),
    [(1, 130.0, 200, 500), (100, 5.0, 200, 2000), (1000, 1.0, 50, 1000)],
    ids=["1-symbol", "100-symbols", "1000-symbols"],
)
def test_books_sync_and_every_frame_is_binance_shaped(
    symbols_per_market: int, duration_s: float, depth_levels: int, min_checked: int
) -> None:
    # 1000 symbols per market (2000 books) get a second and shallower books: the check is
    # that nothing breaks at scale, depth of book is covered by the smaller runs.
    source = SyntheticMarket(
        symbols_per_market=symbols_per_market,
        duration_s=duration_s,
        depth_levels=depth_levels,
        seed=3,
    )
    report = run_checks(source, seed=symbols_per_market)
    assert_clean(report, min_checked)
    kinds = {k for k, n in report.per_kind.items() if n}
    expected = {
        ("spot", k) for k in ("depth", "bookTicker", "trade", "aggTrade", "ticker", "miniTicker")
    } | {
        ("usdm", k)
        for k in (
            "depth",
            "bookTicker",
            "trade",
            "aggTrade",
            "ticker",
            "miniTicker",
            "markPrice@1s",
        )
    }
    assert expected <= kinds
    if duration_s >= 2:
        assert {("spot", "kline_1m"), ("usdm", "kline_1m")} <= kinds


def test_usdm_ids_skip_between_frames_and_chain_by_pu() -> None:
    source = SyntheticMarket(markets=("usdm",), symbols_per_market=2, duration_s=5.0, seed=9)
    last: dict[str, int] = {}
    skipped = chained = 0
    for frame in source.frames():
        if "@depth" not in frame.stream:
            continue
        d = json.loads(frame.payload)
        assert d["T"] <= d["E"] and d["U"] <= d["u"]
        if d["s"] in last:
            assert d["pu"] == last[d["s"]]
            chained += 1
            skipped += d["U"] != d["pu"] + 1
        last[d["s"]] = d["u"]
    assert chained > 50 and skipped > chained // 2


def test_spot_snapshot_before_any_frame_is_the_initial_book() -> None:
    source = SyntheticMarket(markets=("spot",), symbols_per_market=1, duration_s=1.0)
    body = source.depth_snapshot("spot", "btcusdt", 10)
    assert body is not None
    snap = json.loads(body)
    assert len(snap["bids"]) == len(snap["asks"]) == 10
    first = next(f for f in source.frames() if "@depth" in f.stream)
    assert json.loads(first.payload)["U"] == snap["lastUpdateId"] + 1
    assert source.depth_snapshot("spot", "NOPEUSDT", 10) is None
    assert source.depth_snapshot("usdm", "BTCUSDT", 10) is None


def test_klines_tickers_and_agg_trades_agree_with_the_trades() -> None:
    # 130 s from an epoch 40 s before a minute boundary: two closed candles per symbol.
    source = SyntheticMarket(symbols_per_market=2, duration_s=130.0, seed=5)
    report = run_checks(source, keep=True)
    closed = aggs = tickers = 0
    for (market, _), frames in report.payloads.items():
        trades = [d for d in frames if d["kind"] == "trade"]
        by_id = {d["t"]: d for d in trades}
        ids = [d["t"] for d in trades]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        last_trade: dict[str, Any] | None = None
        last_bt: dict[str, Any] | None = None
        for d in frames:
            kind = d["kind"]
            if kind == "trade":
                last_trade = d
            elif kind == "bookTicker":
                last_bt = d
            elif kind == "aggTrade":
                aggs += 1
                fills = [by_id[t] for t in range(d["f"], d["l"] + 1)]
                assert {(x["p"], x["m"], x["T"]) for x in fills} == {(d["p"], d["m"], d["T"])}
                assert sum(Decimal(x["q"]) for x in fills) == Decimal(d["q"])
            elif kind == "kline_1m" and d["k"]["x"]:
                closed += 1
                k = d["k"]
                inside = [x for x in trades if k["t"] <= x["T"] <= k["T"]]
                assert [x["t"] for x in inside] == (
                    list(range(k["f"], k["L"] + 1)) if k["n"] else []
                )
                assert k["n"] == len(inside) and k["T"] == k["t"] + 59_999
                assert d["E"] > k["T"] and k["t"] % 60_000 == 0
                if inside:
                    prices = [Decimal(x["p"]) for x in inside]
                    assert Decimal(k["o"]) == prices[0] and Decimal(k["c"]) == prices[-1]
                    assert Decimal(k["h"]) == max(prices) and Decimal(k["l"]) == min(prices)
                notional = [(Decimal(x["p"]) * Decimal(x["q"]), x) for x in inside]
                assert Decimal(k["v"]) == sum(Decimal(x["q"]) for x in inside)
                assert Decimal(k["q"]) == sum(n for n, _ in notional)
                assert Decimal(k["V"]) == sum(Decimal(x["q"]) for x in inside if not x["m"])
                assert Decimal(k["Q"]) == sum(n for n, x in notional if not x["m"])
            elif kind == "ticker" and last_trade is not None:
                tickers += 1
                assert d["c"] == last_trade["p"] and d["Q"] == last_trade["q"]
                assert d["L"] == last_trade["t"] and d["n"] == d["L"] - d["F"] + 1
                assert d["C"] == d["E"] and d["O"] == d["E"] - 86_400_000
                assert Decimal(d["p"]) == Decimal(d["c"]) - Decimal(d["o"])
                assert Decimal(d["l"]) <= Decimal(d["c"]) <= Decimal(d["h"])
                if market == "spot" and last_bt is not None:
                    assert (d["b"], d["B"], d["a"], d["A"]) == (
                        last_bt["b"],
                        last_bt["B"],
                        last_bt["a"],
                        last_bt["A"],
                    )
            elif kind == "markPrice@1s":
                assert d["T"] % (8 * 3_600_000) == 0 and d["T"] > d["E"]
    assert closed >= 8 and aggs > 1000 and tickers > 400


def _digest(source: SyntheticMarket, limit: int) -> list[tuple[int, str, str, bytes]]:
    return [(f.ts_ns, f.market, f.stream, f.payload) for f in islice(source.frames(), limit)]


def test_deterministic_for_a_seed() -> None:
    def make(seed: int) -> SyntheticMarket:
        return SyntheticMarket(symbols_per_market=3, duration_s=None, seed=seed)

    a, b = make(11), make(11)
    first = _digest(a, 20_000)
    assert first == _digest(b, 20_000)
    assert first == _digest(a, 20_000), "frames() starts the market over"
    assert first != _digest(make(12), 20_000)
    assert a.depth_snapshot("spot", "ETHUSDT", 50) == b.depth_snapshot("spot", "ETHUSDT", 50)


def test_endless_without_duration() -> None:
    source = SyntheticMarket(markets=("spot",), symbols_per_market=1, duration_s=None)
    frames = list(islice(source.frames(), 30_000))
    assert len(frames) == 30_000
    assert frames[-1].ts_ns - frames[0].ts_ns > 300 * NS  # about 80 frames/s, so ~6 min


def test_duration_bounds_the_frames() -> None:
    source = SyntheticMarket(symbols_per_market=2, duration_s=2.05)
    frames = list(source.frames())
    end = source.start_ns + round(2.05 * NS)
    assert frames and all(source.start_ns <= f.ts_ns <= end for f in frames)
    assert frames[-1].ts_ns > end - NS // 5


def test_streams_symbols_and_exchange_info() -> None:
    source = SyntheticMarket(symbols={"spot": ["btcusdt", "ABCUSDT"], "usdm": ["BTCUSDT"]})
    assert source.markets == ("spot", "usdm")
    assert source.symbols("spot") == ["BTCUSDT", "ABCUSDT"] and source.symbols("coinm") == []
    assert source.streams("usdm") == {
        "btcusdt@depth@100ms",
        "btcusdt@trade",
        "btcusdt@aggTrade",
        "btcusdt@bookTicker",
        "btcusdt@kline_1m",
        "btcusdt@ticker",
        "btcusdt@miniTicker",
        "btcusdt@markPrice@1s",
    }
    assert "abcusdt@markPrice@1s" not in source.streams("spot")
    for market in source.markets:
        info = source.exchange_info(market)
        assert info["timezone"] == "UTC" and isinstance(info["serverTime"], int)
        assert info["rateLimits"][0]["rateLimitType"] == "REQUEST_WEIGHT"
        for sym in info["symbols"]:
            assert sym["status"] == "TRADING" and sym["symbol"] == sym["baseAsset"] + "USDT"
            types = [f["filterType"] for f in sym["filters"]]
            assert types == ["PRICE_FILTER", "LOT_SIZE"]
    spot = {s["symbol"]: s["filters"] for s in source.exchange_info("spot")["symbols"]}
    usdm = {s["symbol"]: s["filters"] for s in source.exchange_info("usdm")["symbols"]}
    assert spot["BTCUSDT"][0]["tickSize"] == "0.01000000"
    assert spot["BTCUSDT"][1]["stepSize"] == "0.00001000"
    assert usdm["BTCUSDT"][0]["tickSize"] == "0.10"  # printed with 2 decimals, as Binance does
    assert usdm["BTCUSDT"][1]["stepSize"] == "0.001"


def test_tick_and_step_vary_across_generated_symbols() -> None:
    source = SyntheticMarket(symbols_per_market=12, duration_s=1.0)
    for market in source.markets:
        grids = {
            (f[0]["tickSize"], f[1]["stepSize"])
            for f in (s["filters"] for s in source.exchange_info(market)["symbols"])
        }
        assert len(grids) >= 5, grids
    usdm = {s["symbol"]: s["filters"] for s in source.exchange_info("usdm")["symbols"]}
    assert usdm["DOGEUSDT"][1]["stepSize"] == "1"
    doge = next(f for f in source.frames() if f.stream == "dogeusdt@trade" and f.market == "usdm")
    assert re.fullmatch(rb'.*"p":"0\.\d{5}","q":"\d+".*', doge.payload)


def test_rates_switch_streams_off_and_reject_unknown_keys() -> None:
    off = dict.fromkeys(DEFAULT_RATES, 0.0) | {"book_ticker": 10.0, "trade": 5.0}
    source = SyntheticMarket(markets=("spot",), symbols_per_market=2, rates=off, duration_s=3)
    assert source.streams("spot") == {
        f"{s}@{k}" for s in ("btcusdt", "ethusdt") for k in ("bookTicker", "trade")
    }
    kinds = Counter(f.stream.partition("@")[2] for f in source.frames())
    assert set(kinds) == {"bookTicker", "trade"} and kinds["trade"] > 10
    with pytest.raises(ValueError, match="unknown rate"):
        SyntheticMarket(rates={"depht": 1.0})
    with pytest.raises(ValueError, match="must be >= 0"):
        SyntheticMarket(rates={"trade": -1.0})
    with pytest.raises(ValueError, match="unsupported market"):
        SyntheticMarket(markets=("coinm",))


@pytest.mark.parametrize(
    ("interval", "spot", "usdm"),
    [
        (100, "depth@100ms", "depth@100ms"),
        (1000, "depth", "depth@1000ms"),
        (250, "depth@250ms", "depth"),
    ],
)
def test_depth_stream_names_follow_the_interval(interval: int, spot: str, usdm: str) -> None:
    source = SyntheticMarket(
        symbols_per_market=1, depth_interval_ms=interval, duration_s=interval * 15 / 1000
    )
    assert f"btcusdt@{spot}" in source.streams("spot")
    assert f"btcusdt@{usdm}" in source.streams("usdm")
    depth = [f for f in source.frames() if "@depth" in f.stream]
    assert all((f.ts_ns - source.start_ns) % (interval * 1_000_000) == 0 for f in depth)
    assert_clean(run_checks(source), 1)


def test_snapshot_limit_and_fast_frame_constructor() -> None:
    source = SyntheticMarket(markets=("usdm",), symbols_per_market=1, depth_levels=30)
    snap = json.loads(source.depth_snapshot("usdm", "BTCUSDT", 5) or b"")
    assert len(snap["bids"]) == 5 and len(snap["asks"]) == 5
    assert [_mantissa(p) for p, _ in snap["bids"]] == sorted(
        (_mantissa(p) for p, _ in snap["bids"]), reverse=True
    )
    full = json.loads(source.depth_snapshot("usdm", "BTCUSDT", 1000) or b"")
    assert len(full["bids"]) == len(full["asks"]) == 30
    made = _frame(5, "spot", "btcusdt@trade", b"{}")
    assert made == StreamFrame(5, "spot", "btcusdt@trade", b"{}")
    assert made.envelope is None and hash(made) == hash(
        StreamFrame(5, "spot", "btcusdt@trade", b"{}")
    )


def test_the_tape_holds_what_observing_every_frame_would() -> None:
    """frames() puts trades on the tape by the ids it made; a tape that parses every yielded
    frame (TradeTape.observe) ends up the same, trade for trade."""
    from meltica.replay.tape import TradeTape

    market = SyntheticMarket(
        markets=("spot", "usdm"), symbols_per_market=3, seed=11, duration_s=5.0
    )
    observed = TradeTape()
    kinds = set()
    for frame in market.frames():
        observed.observe(frame)
        kinds.add(frame.stream.rpartition("@")[2])
    assert {"trade", "aggTrade"} <= kinds
    made = {k: (st.ids, st.payloads) for k, st in market.tape._streams.items()}
    assert made == {k: (st.ids, st.payloads) for k, st in observed._streams.items()}
    assert len(market.tape) > 100

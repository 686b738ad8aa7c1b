"""A synthetic Binance market: any number of symbols on spot and USD-M, generated on the fly.

``SyntheticMarket`` is the second kind of ``MarketSource`` the fake exchange serves (the other is
a recorded capture).  ``FakeExchange`` iterates ``frames()`` and publishes each frame to the
WebSocket connections subscribed to its stream, and answers REST depth requests with
``depth_snapshot()``; so the gateway, its tests and its benchmarks see a market that behaves like
Binance (same payload shapes, same update-id rules, same decimal strings) for as many symbols
and as long as they like, without the internet and without a capture file.

Model, per instrument: a fair price random-walks; a book of integer price ticks and integer
quantity lots follows it through maker changes anywhere in the book, changes at the top and
taker orders that fill against the top.  Every book change takes the next id of the book's
update-id counter; the changes of each depth window (100 ms by default) become one diff frame
carrying the absolute quantities of the levels touched.  Trades feed the kline and the 24h
ticker.  All values are integers until they are formatted into a payload, so every price is on
the tick grid and every quantity on the step grid, exactly.

Everything is deterministic for a seed: each instrument draws from its own RNG, so output does
not depend on how many other instruments there are.  Memory is O(instruments): ``frames()``
simulates every instrument a few depth windows ahead at most and merges them by time.
"""

from __future__ import annotations

import math
import random
import zlib
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Final

from meltica.replay.source import StreamFrame
from meltica.replay.tape import TradeTape

__all__ = [
    "BINANCE_HEAD_RATES",
    "BINANCE_SYMBOLS",
    "BINANCE_ZIPF_EXPONENT",
    "DEFAULT_RATES",
    "MARKETS",
    "SCALED_RATES",
    "InstrumentSpec",
    "SyntheticMarket",
    "zipf_activity",
]

MARKETS: Final = ("spot", "usdm")

DEFAULT_RATES: Final[Mapping[str, float]] = {
    # Book changes per second anywhere in the book (inserts, quantity changes, removals);
    # they reach clients as one diff frame per depth window.
    "depth": 20.0,
    # Book changes per second at the top (quantity changes, improvements, cancels of the best
    # level); every change of the top, whatever caused it, is a bookTicker frame.  As on
    # Binance, bookTicker is the busiest stream.
    "book_ticker": 40.0,
    # Trades per second.  Taker orders arrive at the agg_trade rate and each fills about
    # trade/agg_trade times; fills of one order at one price form one aggTrade.
    "trade": 10.0,
    "agg_trade": 5.0,
    # Pushes per second of the periodic streams: kline_1m every 2 s like Binance, tickers and
    # markPrice@1s every second.
    "kline": 0.5,
    "ticker": 1.0,
    "mini_ticker": 1.0,
    "mark_price": 1.0,  # usdm only
}

# The rates ``activity`` scales: the randomly arriving events.  The periodic pushes (kline,
# tickers, mark price) keep their period whatever the symbol's activity, as on Binance.
SCALED_RATES: Final = ("depth", "book_ticker", "trade", "agg_trade")

# The whole-market shape ``SyntheticMarket.binance()`` builds by default (docs/fake-exchange.md,
# "The whole market").  Symbol counts: Binance lists about 1,500-2,000 spot and 400-500 USD-M
# symbols.  Per symbol, the rate of rank r is the rank-1 symbol's rate times r ** -exponent
# (Zipf).  The rank-1 rates are a BTCUSDT-like head: in recordings of BTCUSDT, spot carries
# ~150 bookTicker, ~33 trade and 10 depth@100ms frames/s, USD-M ~190 bookTicker and ~60 trade
# frames/s.  Every taker fill also moves the top, so bookTicker frames ~= book_ticker + trade.
# ``depth`` counts book changes, of which a 100 ms window's make one frame: the head's diffs
# carry tens of levels, and depth frames saturate at 10/s for the busiest few dozen symbols.
# An exponent of 0.9 puts rank ~20 at the rates recorded for a mid-cap USD-M symbol
# (~10 bookTicker, ~8 depth frames/s) and ranks 100-200 within 2x of recorded small caps
# (2-5 bookTicker, 4-6 depth frames/s); further down it is busier than recordings of the
# thinnest pairs, so the model errs toward more load, not less.
BINANCE_SYMBOLS: Final[Mapping[str, int]] = {"spot": 1800, "usdm": 450}
BINANCE_ZIPF_EXPONENT: Final = 0.9
BINANCE_HEAD_RATES: Final[Mapping[str, Mapping[str, float]]] = {
    "spot": {"book_ticker": 115.0, "trade": 33.0, "agg_trade": 15.0, "depth": 300.0},
    "usdm": {"book_ticker": 130.0, "trade": 60.0, "agg_trade": 25.0, "depth": 400.0},
}


def zipf_activity(count: int, exponent: float = BINANCE_ZIPF_EXPONENT) -> list[float]:
    """Per-symbol rate multipliers by rank: ``r ** -exponent`` for ranks 1..count (1.0 first)."""
    if count < 0 or not exponent >= 0:
        raise ValueError("count >= 0 and exponent >= 0")
    return [r**-exponent for r in range(1, count + 1)]


_log = math.log
_NS_PER_MS: Final = 1_000_000
_NS_PER_S: Final = 1_000_000_000
_KLINE_MS: Final = 60_000
_DAY_MS: Final = 86_400_000
_FUNDING_MS: Final = 8 * 3_600_000

# Event codes of a window, in the order events at the same instant are processed: a kline
# push at a candle boundary must close the candle before a trade of the same instant opens the
# next one.
_EV_KLINE, _EV_TICKER, _EV_MINI, _EV_MARK, _EV_DEPTH, _EV_TOP, _EV_TAKER = range(7)
_PERIODIC: Final = ("kline", "ticker", "mini_ticker", "mark_price")  # codes 0..3
# Codes 4..6 (depth, book_ticker, taker) arrive at random, exponential gaps.
_NEVER: Final = 1 << 62  # next time of a process that is off; above any ns timestamp we use


@dataclass(frozen=True, slots=True)
class InstrumentSpec:
    """What an instrument looks like: its filters, its price level and its usual sizes.

    ``tick`` and ``step`` are decimal strings (``"0.01"``, ``"1"``).  ``price_decimals`` is how
    many decimals USD-M prints prices with (Binance's ``pricePrecision``, which may exceed the
    tick's decimals: BTCUSDT has tick 0.10 and prints ``"61800.20"``); None = the tick's.
    """

    symbol: str
    base: str
    quote: str
    tick: str
    step: str
    price: str
    level_qty: str
    price_decimals: int | None = None


_SPOT_TEMPLATES: Final = (
    InstrumentSpec("BTCUSDT", "BTC", "USDT", "0.01", "0.00001", "67234.56", "0.35"),
    InstrumentSpec("ETHUSDT", "ETH", "USDT", "0.01", "0.0001", "3456.78", "4.2"),
    InstrumentSpec("DOGEUSDT", "DOGE", "USDT", "0.00001", "1", "0.16543", "25000"),
    InstrumentSpec("ETHBTC", "ETH", "BTC", "0.00001", "0.001", "0.05123", "3.1"),
    InstrumentSpec("SOLUSDT", "SOL", "USDT", "0.01", "0.001", "145.67", "60"),
    InstrumentSpec("XRPUSDT", "XRP", "USDT", "0.0001", "0.1", "0.5123", "15000"),
    InstrumentSpec("BNBUSDT", "BNB", "USDT", "0.1", "0.001", "585.3", "12"),
    InstrumentSpec("PEPEUSDT", "PEPE", "USDT", "0.00000001", "1", "0.00001234", "5000000"),
)

_USDM_TEMPLATES: Final = (
    InstrumentSpec("BTCUSDT", "BTC", "USDT", "0.1", "0.001", "67234.5", "2.5", 2),
    InstrumentSpec("ETHUSDT", "ETH", "USDT", "0.01", "0.001", "3456.78", "30"),
    InstrumentSpec("DOGEUSDT", "DOGE", "USDT", "0.00001", "1", "0.16543", "60000"),
    InstrumentSpec("SOLUSDT", "SOL", "USDT", "0.01", "1", "145.67", "300"),
    InstrumentSpec("XRPUSDT", "XRP", "USDT", "0.0001", "0.1", "0.5123", "20000"),
    InstrumentSpec("BNBUSDT", "BNB", "USDT", "0.01", "0.01", "585.34", "40"),
    InstrumentSpec("1000PEPEUSDT", "1000PEPE", "USDT", "0.0000001", "1", "0.0123456", "800000"),
    InstrumentSpec("LINKUSDT", "LINK", "USDT", "0.001", "0.01", "14.567", "900"),
)

_TEMPLATES: Final = {"spot": _SPOT_TEMPLATES, "usdm": _USDM_TEMPLATES}
_QUOTES: Final = ("USDT", "USDC", "FDUSD", "BTC", "ETH", "BNB")


_new_frame = StreamFrame.__new__
_set_ts_ns, _set_market, _set_stream, _set_payload, _set_envelope = (
    vars(StreamFrame)[name].__set__ for name in ("ts_ns", "market", "stream", "payload", "envelope")
)


def _frame(ts_ns: int, market: str, stream: str, payload: bytes) -> StreamFrame:
    """``StreamFrame(ts_ns, market, stream, payload)`` at about half the cost.

    A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``; the slot
    descriptors set the same fields directly.  It runs once per frame, and frames are what the
    fake exchange's benchmarks count.  A test checks the result equals the constructor's.
    """
    frame = _new_frame(StreamFrame)
    _set_ts_ns(frame, ts_ns)
    _set_market(frame, market)
    _set_stream(frame, stream)
    _set_payload(frame, payload)
    _set_envelope(frame, None)
    return frame


def _decimal_units(text: str) -> tuple[int, int]:
    """``"0.05"`` -> (5, 2): the value as an integer count of 10**-decimals."""
    whole, _, frac = text.partition(".")
    frac = frac.rstrip("0")
    return int(whole + frac), len(frac)


def _fixed_str(value: int, decimals: int) -> str:
    """A non-negative integer count of 10**-decimals as Binance prints it, never an exponent."""
    if decimals == 0:
        return str(value)
    text: str = f"%d.%0{decimals}d" % divmod(value, 10**decimals)
    return text


def _signed_str(value: int, decimals: int) -> str:
    return "-" + _fixed_str(-value, decimals) if value < 0 else _fixed_str(value, decimals)


def _round_div(num: int, den: int) -> int:
    """num / den rounded half to even, in integers (den > 0)."""
    q, r = divmod(num, den)
    if 2 * r > den or (2 * r == den and q & 1):
        q += 1
    return q


def _formatter(mult: int, decimals: int) -> Callable[[int], str]:
    """Formats a non-negative count of internal units, ``mult`` output units each.

    Runs for every quantity of every frame: ``%`` over ``divmod`` is the quickest exact way
    (measured against slicing ``str()`` and f-strings).
    """
    if decimals == 0:
        return lambda v: str(v * mult)
    pattern, div = f"%d.%0{decimals}d", 10**decimals
    if mult == 1:
        return lambda v: pattern % divmod(v, div)
    return lambda v: pattern % divmod(v * mult, div)


def _spec_for(market: str, symbol: str) -> InstrumentSpec:
    """The spec of a named symbol: the template of that name, else one derived from the name."""
    templates = _TEMPLATES[market]
    for spec in templates:
        if spec.symbol == symbol:
            return spec
    # crc32, not hash(): the choice must not change with PYTHONHASHSEED.
    shape = templates[zlib.crc32(symbol.encode()) % len(templates)]
    base, quote = symbol, "USDT"
    for q in _QUOTES:
        if symbol.endswith(q) and len(symbol) > len(q):
            base, quote = symbol[: -len(q)], q
            break
    return InstrumentSpec(
        symbol,
        base,
        quote,
        shape.tick,
        shape.step,
        shape.price,
        shape.level_qty,
        shape.price_decimals,
    )


def _merge_rates(
    base: Mapping[str, float], overrides: Mapping[str, float] | None
) -> dict[str, float]:
    merged = dict(base)
    for key, value in (overrides or {}).items():
        if key not in DEFAULT_RATES:
            raise ValueError(f"unknown rate {key!r} (known: {sorted(DEFAULT_RATES)})")
        if not value >= 0:
            raise ValueError(f"rate {key!r} must be >= 0, got {value!r}")
        merged[key] = float(value)
    return merged


def _generated_symbols(market: str, count: int) -> list[str]:
    templates = _TEMPLATES[market]
    names = [spec.symbol for spec in templates[:count]]
    names += [f"SYN{i}USDT" for i in range(len(names), count)]
    return names


class _Instrument:
    """One symbol of one market: its book, its counters, its candle and ticker, its RNG.

    Frames are produced one depth window at a time by ``window()``, ahead of what
    ``SyntheticMarket.frames()`` has yielded: so each window not yet published keeps the values
    its changes replaced (``pending``), and ``snapshot()`` undoes them.  A snapshot is the book
    at the last depth frame yielded, the only state a client can sync to.
    """

    __slots__ = (
        "agg_id",
        "ask_keys",
        "asks",
        "ba",
        "baq",
        "bb",
        "bbq",
        "bid_keys",
        "bids",
        "bt_ask",
        "bt_bid",
        "depth_levels",
        "fair",
        "fills_mean",
        "floor_tick",
        "fmt_price",
        "fmt_qty",
        "fmt_quote",
        "futures",
        "hooks",
        "k_L",
        "k_Q",
        "k_V",
        "k_c",
        "k_closed",
        "k_f",
        "k_h",
        "k_l",
        "k_n",
        "k_o",
        "k_q",
        "k_t",
        "k_v",
        "level_lots",
        "market",
        "next_t",
        "old_asks",
        "old_bids",
        "out",
        "pending",
        "price_cache",
        "price_ints",
        "pub_T",
        "pub_u",
        "qdec",
        "qty_fmt",
        "qty_units",
        "quote_dec",
        "rnd",
        "rng",
        "s_bt",
        "spec",
        "step_ns",
        "stream",
        "sym",
        "tdec",
        "tick_units",
        "ticker",
        "uid",
        "w_T",
        "w_U",
        "w_asks",
        "w_bids",
        "w_prev_u",
        "want",
        "want_bt",
    )

    def __init__(
        self,
        market: str,
        spec: InstrumentSpec,
        rng: random.Random,
        rates: Mapping[str, float],
        start_ns: int,
        depth_levels: int,
        depth_stream: str,
    ) -> None:
        self.market = market
        self.futures = market != "spot"
        self.spec = spec
        self.sym = spec.symbol
        self.rng = rng
        self.rnd = rng.random
        self.depth_levels = depth_levels
        tick_units, tdec = _decimal_units(spec.tick)
        step_units, qdec = _decimal_units(spec.step)
        if tick_units <= 0 or step_units <= 0:
            raise ValueError(f"{spec.symbol}: tick and step must be positive")
        self.tick_units, self.tdec = tick_units, tdec
        self.qty_units, self.qdec = step_units, qdec
        # Binance prints spot prices and quantities with 8 decimals always; USD-M with the
        # instrument's precision.  The internal unit of a price is one tick, of a quantity one
        # lot (step), of a quote amount 10**-(tdec+qdec).
        if self.futures:
            pdec = tdec if spec.price_decimals is None else spec.price_decimals
            out_qdec, self.quote_dec = qdec, tdec + qdec
        else:
            pdec = out_qdec = self.quote_dec = 8
        if pdec < tdec or out_qdec < qdec or self.quote_dec < tdec + qdec:
            raise ValueError(f"{spec.symbol}: tick/step finer than the printed decimals")
        self.price_ints = (tick_units * 10 ** (pdec - tdec), pdec)
        self.fmt_price = _formatter(tick_units * 10 ** (pdec - tdec), pdec)
        self.fmt_qty = _formatter(step_units * 10 ** (out_qdec - qdec), out_qdec)
        # The same formatting, for the hottest spots to inline: pattern % divmod(lots*mult, div)
        # ("%.0s" swallows the remainder when there are no decimals).
        self.qty_fmt = (
            f"%d.%0{out_qdec}d" if out_qdec else "%d%.0s",
            step_units * 10 ** (out_qdec - qdec),
            10**out_qdec,
        )
        self.fmt_quote = _formatter(10 ** (self.quote_dec - tdec - qdec), self.quote_dec)
        self.price_cache: dict[int, str] = {}

        sym_lower = spec.symbol.lower()
        self.stream = {
            "depth": f"{sym_lower}@{depth_stream}",
            "trade": f"{sym_lower}@trade",
            "agg_trade": f"{sym_lower}@aggTrade",
            "book_ticker": f"{sym_lower}@bookTicker",
            "kline": f"{sym_lower}@kline_1m",
            "ticker": f"{sym_lower}@ticker",
            "mini_ticker": f"{sym_lower}@miniTicker",
            "mark_price": f"{sym_lower}@markPrice@1s",
        }
        self.want = {k: rates[k] > 0 for k in DEFAULT_RATES}
        if not self.futures:
            self.want["mark_price"] = False
        self.want_bt = self.want["book_ticker"]
        self.s_bt = self.stream["book_ticker"]

        price_units, price_dec = _decimal_units(spec.price)
        tick0 = max(1, _round_div(price_units * 10**tdec, tick_units * 10**price_dec))
        lots_units, lots_dec = _decimal_units(spec.level_qty)
        self.level_lots = max(1, _round_div(lots_units * 10**qdec, step_units * 10**lots_dec))
        # Far enough above zero that the deepest bid never reaches tick 0.
        self.floor_tick = 4 * depth_levels + 16
        self.fair = max(tick0, self.floor_tick)

        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}
        self.bid_keys: list[int] = []  # ascending: best bid is the last
        self.ask_keys: list[int] = []  # ascending: best ask is the first
        self._seed_book()
        # Realistic magnitudes, so ids and trade counters look like a market that has been
        # running for years (and exercise 64-bit ids in the parser).
        self.uid = rng.randrange(10**10, 10**12)
        self.pub_u = self.w_prev_u = self.uid
        self.pub_T = start_ns // _NS_PER_MS
        # Windows simulated but whose depth frame is not yielded yet, oldest first:
        # (u, T ms, old bid quantities, old ask quantities).
        self.pending: deque[tuple[int, int, dict[int, int], dict[int, int]]] = deque()
        trade0 = rng.randrange(10**8, 10**10)
        self.agg_id = trade0 // 2
        self.w_bids: dict[int, int] = {}
        self.w_asks: dict[int, int] = {}
        self.old_bids: dict[int, int] = {}
        self.old_asks: dict[int, int] = {}
        self.w_U = 0
        self.w_T = 0

        self.bb = self.bid_keys[-1]
        self.bbq = self.bids[self.bb]
        self.ba = self.ask_keys[0]
        self.baq = self.asks[self.ba]
        self.bt_bid = f'"b":"{self.price(self.bb)}","B":"{self.fmt_qty(self.bbq)}"'
        self.bt_ask = f'"a":"{self.price(self.ba)}","A":"{self.fmt_qty(self.baq)}"'

        start_ms = start_ns // _NS_PER_MS
        # The 24h ticker starts from a plausible day of history (we have none); from then on
        # every trade is added to it.  It does not roll: runs are far shorter than a day.
        n0 = rng.randrange(50_000, 500_000)
        o0 = max(self.floor_tick, self.bb + int(rng.gauss(0, 0.02) * self.bb))
        v0 = n0 * max(1, self.level_lots // 20)
        self.ticker = {
            "o": o0,
            "x": o0 + int(rng.gauss(0, 0.001) * o0),
            "h": max(o0, self.bb) + int(abs(rng.gauss(0, 0.01)) * o0) + 1,
            "l": max(1, min(o0, self.bb) - int(abs(rng.gauss(0, 0.01)) * o0) - 1),
            "c": self.bb,
            "Q": max(1, self.level_lots // 20),
            "v": v0,
            "q": v0 * step_units * ((o0 + self.bb) // 2) * tick_units,
            "F": trade0 - n0 + 1,
            "L": trade0,
        }
        self.k_closed: tuple[int, ...] | None = None
        self._open_candle(start_ms - start_ms % _KLINE_MS, self.bb)

        # Taker orders arrive at the agg_trade rate (the trade rate when aggTrade is off).
        taker_rate = rates["agg_trade"] if rates["agg_trade"] > 0 else rates["trade"]
        self.fills_mean = (
            max(1.0, rates["trade"] / rates["agg_trade"])
            if rates["agg_trade"] > 0 and rates["trade"] > 0
            else 1.0
        )
        per_second = (
            *(rates[k] if self.want[k] else 0.0 for k in _PERIODIC),
            rates["depth"],
            rates["book_ticker"],
            taker_rate,
        )
        # Per event code: the period (periodic pushes) or mean gap (random arrivals) in ns,
        # and the next time it happens.  Periodic pushes keep whole milliseconds; kline runs on
        # the absolute grid, so its boundaries are candle boundaries; the others on a grid
        # shifted by a per-symbol phase, as Binance's are.
        phase = rng.randrange(0, 1000) * _NS_PER_MS
        self.step_ns: list[int] = []
        self.next_t: list[int] = []
        for code, rate in enumerate(per_second):
            if rate <= 0:
                self.step_ns.append(0)
                self.next_t.append(_NEVER)
            elif code < len(_PERIODIC):
                period = max(1, round(1000 / rate)) * _NS_PER_MS
                self.step_ns.append(period)
                self.next_t.append(
                    start_ns - start_ns % period + period if code == _EV_KLINE else start_ns + phase
                )
            else:
                mean = max(1, round(_NS_PER_S / rate))
                self.step_ns.append(mean)
                self.next_t.append(start_ns + self._gap(mean))
        self.out: list[StreamFrame] = []
        # id(frame) -> what yielding it does (SyntheticMarket.frames(), per batch): the trades'
        # (market, SYMBOL, kind, id) for the tape
        self.hooks: dict[int, Any] = {}

    @property
    def active(self) -> bool:
        """Whether this instrument ever produces a frame."""
        return any(t != _NEVER for t in self.next_t)

    def _gap(self, mean_ns: int) -> int:
        return 1 + int(-_log(1.0 - self.rnd()) * mean_ns)

    def _lots(self) -> int:
        """A maker level's size: exponential around the instrument's usual level."""
        return 1 + int(-_log(1.0 - self.rnd()) * self.level_lots)

    def _seed_book(self) -> None:
        """The initial book: ``depth_levels`` per side around the fair price, gaps of ~2 ticks."""
        rnd, lots = self.rnd, self.level_lots
        spread = 1 + int(rnd() * 3)
        bid = self.fair - (spread + 1) // 2
        ask = bid + spread
        bids, asks = self.bids, self.asks
        for _ in range(self.depth_levels):
            if bid > 0:
                bids[bid] = 1 + int(-_log(1.0 - rnd()) * lots)
            asks[ask] = 1 + int(-_log(1.0 - rnd()) * lots)
            bid -= 1 + int(-_log(1.0 - rnd()))
            ask += 1 + int(-_log(1.0 - rnd()))
        self.bid_keys[:] = sorted(bids)
        self.ask_keys[:] = sorted(asks)

    def price(self, tick: int) -> str:
        s = self.price_cache.get(tick)
        if s is None:
            if len(self.price_cache) > 200_000:  # a long walk; keep memory bounded
                self.price_cache.clear()
            s = self.price_cache[tick] = self.fmt_price(tick)
        return s

    def _open_candle(self, t_ms: int, price_tick: int) -> None:
        self.k_t = t_ms
        self.k_o = self.k_h = self.k_l = self.k_c = price_tick
        self.k_v = self.k_q = self.k_V = self.k_Q = self.k_n = 0
        self.k_f = self.k_L = -1

    def _roll_candle(self, t_ms: int) -> None:
        self.k_closed = (
            self.k_t,
            self.k_o,
            self.k_h,
            self.k_l,
            self.k_c,
            self.k_v,
            self.k_q,
            self.k_V,
            self.k_Q,
            self.k_n,
            self.k_f,
            self.k_L,
        )
        self._open_candle(t_ms - t_ms % _KLINE_MS, self.k_c)

    # -- book changes -----------------------------------------------------------------------

    def _set(self, is_bid: bool, tick: int, lots: int, ts: int) -> None:
        """Sets one level to an absolute quantity (0 removes it) as the book's next update id.

        Records the change for the window's diff frame and emits a bookTicker if the top moved.
        The two sides are spelled out rather than shared through variables: this is the
        innermost step of the simulation.
        """
        if is_bid:
            book = self.bids
            prev = book.get(tick, 0)
            if lots:
                if not prev:
                    insort(self.bid_keys, tick)
                book[tick] = lots
            elif prev:
                del book[tick]
                keys = self.bid_keys
                del keys[bisect_left(keys, tick)]
            else:
                return  # removing an absent level is no change
            changed = self.w_bids
            if tick not in changed:
                self.old_bids[tick] = prev
            changed[tick] = lots
        else:
            book = self.asks
            prev = book.get(tick, 0)
            if lots:
                if not prev:
                    insort(self.ask_keys, tick)
                book[tick] = lots
            elif prev:
                del book[tick]
                keys = self.ask_keys
                del keys[bisect_left(keys, tick)]
            else:
                return
            changed = self.w_asks
            if tick not in changed:
                self.old_asks[tick] = prev
            changed[tick] = lots
        uid = self.uid + 1
        if not self.w_U:
            if self.futures:
                # Futures ids skip between frames (the engine serves more than this stream);
                # clients must chain by pu, never by U == prev u + 1.
                uid += int(self.rnd() * 40)
            self.w_U = uid
        self.uid = uid
        self.w_T = ts
        if is_bid:
            if tick < self.bb:
                return
            top = self.bid_keys[-1]
            q = book[top]
            if top == self.bb and q == self.bbq:
                return
            self.bb, self.bbq = top, q
            price = self.price_cache.get(top) or self.price(top)
            pattern, mult, div = self.qty_fmt
            self.bt_bid = f'"b":"{price}","B":"{pattern % divmod(q * mult, div)}"'
        else:
            if tick > self.ba:
                return
            top = self.ask_keys[0]
            q = book[top]
            if top == self.ba and q == self.baq:
                return
            self.ba, self.baq = top, q
            price = self.price_cache.get(top) or self.price(top)
            pattern, mult, div = self.qty_fmt
            self.bt_ask = f'"a":"{price}","A":"{pattern % divmod(q * mult, div)}"'
        if not self.want_bt:
            return
        if self.futures:
            ms = ts // _NS_PER_MS
            body = (
                f'{{"e":"bookTicker","u":{uid},"s":"{self.sym}",{self.bt_bid},{self.bt_ask},'
                f'"T":{ms},"E":{ms}}}'
            )
        else:
            body = f'{{"u":{uid},"s":"{self.sym}",{self.bt_bid},{self.bt_ask}}}'
        self.out.append(_frame(ts, self.market, self.s_bt, body.encode()))

    def _pressure(self) -> float:
        """How far the fair price is above the mid, in half-spreads, clamped to [-1, 1]."""
        spread = self.ba - self.bb
        p = (2 * self.fair - self.bb - self.ba) / spread
        return -1.0 if p < -1.0 else (1.0 if p > 1.0 else p)

    def _depth_change(self, ts: int) -> None:
        """A maker change anywhere in the book, keeping about ``depth_levels`` per side."""
        rng = self.rng
        is_bid = rng.random() < 0.5
        keys = self.bid_keys if is_bid else self.ask_keys
        n = len(keys)
        target = self.depth_levels
        r = rng.random()
        if r < 0.5 and n > 1:
            # Quantity change, mostly near the top.
            i = int(n * rng.random() ** 2)
            tick = keys[-1 - i] if is_bid else keys[i]
            self._set(is_bid, tick, self._lots(), ts)
        elif (r < 0.8 and n < target * 1.2) or n < 2:
            # A new level behind the top (may land on an existing one: then it is a change).
            d = 1 + int(2 * target * rng.random() ** 2)
            tick = self.bb - d if is_bid else self.ba + d
            if tick > 0:
                self._set(is_bid, tick, self._lots(), ts)
        elif n > target:
            # Too many levels: the deepest one goes, as far-away orders get cancelled.
            self._set(is_bid, keys[0] if is_bid else keys[-1], 0, ts)
        else:
            i = int(n * rng.random() ** 2)
            tick = keys[-1 - i] if is_bid else keys[i]
            self._set(is_bid, tick, 0, ts)

    def _top_change(self, ts: int) -> None:
        """A maker change at the top: an improvement, a cancel of the best, or a new size."""
        rnd = self.rnd
        is_bid = rnd() < 0.5
        bb, ba = self.bb, self.ba
        spread = ba - bb
        # Order flow leans toward the fair price: the side behind it improves more and cancels
        # less, so the mid follows the fair price's walk.  A wide spread fills in.
        pressure = (2 * self.fair - bb - ba) / spread  # _pressure(), inlined
        pressure = -1.0 if pressure < -1.0 else (1.0 if pressure > 1.0 else pressure)
        if not is_bid:
            pressure = -pressure
        improve = 0.2 + 0.2 * pressure + (0.1 * (spread - 1) if spread > 1 else 0.0)
        r = rnd()
        if r < improve and spread > 1:
            d = 1 + int(rnd() * min(spread - 1, 3))
            lots = 1 + int(-_log(1.0 - rnd()) * self.level_lots)
            self._set(is_bid, bb + d if is_bid else ba - d, lots, ts)
        elif (
            r < improve + 0.2 - 0.2 * pressure
            and len(self.bid_keys if is_bid else self.ask_keys) > 1
        ):
            self._set(is_bid, bb if is_bid else ba, 0, ts)
        elif is_bid:
            self._set(True, bb, max(1, int(self.bbq * (0.5 + rnd()))), ts)
        else:
            self._set(False, ba, max(1, int(self.baq * (0.5 + rnd()))), ts)

    def _taker(self, ts: int) -> None:
        """A taker order: fills against the opposite top, level after level."""
        rng = self.rng
        buy = rng.random() < 0.5 + 0.3 * self._pressure()
        fills = 1
        while rng.random() * self.fills_mean > 1.0 and fills < 50:
            fills += 1
        # Taker sizes are a fraction of a typical level, so an order usually fills partly
        # at one price and sometimes walks to the next level.
        remaining = 1 + int(-_log(1.0 - rng.random()) * self.level_lots * 0.3 * fills)
        ms = ts // _NS_PER_MS
        want_trade = self.want["trade"]
        agg_tick = agg_first = agg_lots = 0
        for k in range(fills):
            if remaining <= 0:
                break
            if buy:
                tick, level, n = self.ba, self.baq, len(self.ask_keys)
            else:
                tick, level, n = self.bb, self.bbq, len(self.bid_keys)
            q = remaining if k == fills - 1 else max(1, int(remaining * rng.random()))
            q = min(q, level if n > 1 else level - 1)  # never empty a side
            if q <= 0:
                break
            remaining -= q
            trade_id = self.ticker["L"] + 1
            if agg_lots and tick != agg_tick:
                self._agg_trade(ts, ms, agg_tick, agg_lots, agg_first, trade_id - 1, buy)
                agg_lots = 0
            if not agg_lots:
                agg_tick, agg_first = tick, trade_id
            agg_lots += q
            self._account_trade(ms, tick, q, trade_id, buy)
            if want_trade:
                self._trade(ts, ms, tick, q, trade_id, buy)
            self._set(not buy, tick, level - q, ts)
        if agg_lots:
            self._agg_trade(ts, ms, agg_tick, agg_lots, agg_first, self.ticker["L"], buy)

    def _account_trade(self, ms: int, tick: int, lots: int, trade_id: int, buy: bool) -> None:
        if ms >= self.k_t + _KLINE_MS:
            self._roll_candle(ms)
        quote = tick * self.tick_units * lots * self.qty_units
        if not self.k_n:
            self.k_o = self.k_h = self.k_l = tick
            self.k_f = trade_id
        elif tick > self.k_h:
            self.k_h = tick
        elif tick < self.k_l:
            self.k_l = tick
        self.k_c = tick
        self.k_v += lots
        self.k_q += quote
        self.k_n += 1
        self.k_L = trade_id
        if buy:
            self.k_V += lots
            self.k_Q += quote
        t = self.ticker
        t["c"], t["Q"], t["L"] = tick, lots, trade_id
        t["v"] += lots
        t["q"] += quote
        if tick > t["h"]:
            t["h"] = tick
        elif tick < t["l"]:
            t["l"] = tick

    def _trade(self, ts: int, ms: int, tick: int, lots: int, trade_id: int, buy: bool) -> None:
        # m is "buyer is the maker": true when the taker sold.
        m = "false" if buy else "true"
        p, q = self.price(tick), self.fmt_qty(lots)
        if self.futures:
            body = (
                f'{{"e":"trade","E":{ms},"T":{ms},"s":"{self.sym}","t":{trade_id},"p":"{p}",'
                f'"q":"{q}","X":"MARKET","m":{m}}}'
            )
        else:
            body = (
                f'{{"e":"trade","E":{ms},"s":"{self.sym}","t":{trade_id},"p":"{p}","q":"{q}",'
                f'"T":{ms},"m":{m},"M":true}}'
            )
        frame = _frame(ts, self.market, self.stream["trade"], body.encode())
        self.hooks[id(frame)] = (self.market, self.sym, "trade", trade_id)
        self.out.append(frame)

    def _agg_trade(
        self, ts: int, ms: int, tick: int, lots: int, first: int, last: int, buy: bool
    ) -> None:
        self.agg_id += 1
        if not self.want["agg_trade"]:
            return
        m = "false" if buy else "true"
        p, q = self.price(tick), self.fmt_qty(lots)
        if self.futures:
            body = (
                f'{{"e":"aggTrade","E":{ms},"a":{self.agg_id},"s":"{self.sym}","p":"{p}",'
                f'"q":"{q}","f":{first},"l":{last},"T":{ms},"m":{m}}}'
            )
        else:
            body = (
                f'{{"e":"aggTrade","E":{ms},"s":"{self.sym}","a":{self.agg_id},"p":"{p}",'
                f'"q":"{q}","f":{first},"l":{last},"T":{ms},"m":{m},"M":true}}'
            )
        frame = _frame(ts, self.market, self.stream["agg_trade"], body.encode())
        self.hooks[id(frame)] = (self.market, self.sym, "agg_trade", self.agg_id)
        self.out.append(frame)

    # -- periodic pushes ----------------------------------------------------------------------

    def _kline(self, ts: int) -> None:
        ms = ts // _NS_PER_MS
        if ms >= self.k_t + _KLINE_MS:
            self._roll_candle(ms)
        if self.k_closed is not None:
            # The first push after a boundary carries the closed candle (x=true).
            t, o, h, lo, c, v, q, bv, bq, n, f, last = self.k_closed
            self.k_closed = None
            closed = "true"
        else:
            t, o, h, lo, c, v, q, bv, bq, n, f, last = (
                self.k_t,
                self.k_o,
                self.k_h,
                self.k_l,
                self.k_c,
                self.k_v,
                self.k_q,
                self.k_V,
                self.k_Q,
                self.k_n,
                self.k_f,
                self.k_L,
            )
            closed = "false"
        p, fq, fz = self.price, self.fmt_qty, self.fmt_quote
        body = (
            f'{{"e":"kline","E":{ms},"s":"{self.sym}","k":{{"t":{t},"T":{t + _KLINE_MS - 1},'
            f'"s":"{self.sym}","i":"1m","f":{f},"L":{last},"o":"{p(o)}","c":"{p(c)}",'
            f'"h":"{p(h)}","l":"{p(lo)}","v":"{fq(v)}","n":{n},"x":{closed},"q":"{fz(q)}",'
            f'"V":"{fq(bv)}","Q":"{fz(bq)}","B":"0"}}}}'
        )
        self.out.append(_frame(ts, self.market, self.stream["kline"], body.encode()))

    def _ticker_common(self) -> tuple[str, str, str, str, str, str]:
        t = self.ticker
        p, fq, fz = self.price, self.fmt_qty, self.fmt_quote
        return p(t["c"]), p(t["o"]), p(t["h"]), p(t["l"]), fq(t["v"]), fz(t["q"])

    def _ticker(self, ts: int) -> None:
        ms = ts // _NS_PER_MS
        t = self.ticker
        c, o, h, lo, v, q = self._ticker_common()
        mult, pdec = self.price_ints
        change = _signed_str((t["c"] - t["o"]) * mult, pdec)
        # Percent with 3 decimals and the weighted average price, in integers; w is a price
        # but not on the tick grid (it is an average), printed with the price's decimals.
        pct = _signed_str(_round_div((t["c"] - t["o"]) * 100_000, t["o"]), 3)
        # q is in 10**-(tdec+qdec); v*qty_units in 10**-qdec: the ratio is in 10**-tdec.
        w_units = _round_div(t["q"] * 10 ** (pdec - self.tdec), t["v"] * self.qty_units)
        w = _fixed_str(w_units, pdec)
        n = t["L"] - t["F"] + 1
        head = f'{{"e":"24hrTicker","E":{ms},"s":"{self.sym}","p":"{change}","P":"{pct}","w":"{w}",'
        tail = (
            f'"o":"{o}","h":"{h}","l":"{lo}","v":"{v}","q":"{q}","O":{ms - _DAY_MS},'
            f'"C":{ms},"F":{t["F"]},"L":{t["L"]},"n":{n}}}'
        )
        last = f'"c":"{c}","Q":"{self.fmt_qty(t["Q"])}",'
        if self.futures:
            body = head + last + tail
        else:
            body = f'{head}"x":"{self.price(t["x"])}",{last}{self.bt_bid},{self.bt_ask},{tail}'
        self.out.append(_frame(ts, self.market, self.stream["ticker"], body.encode()))

    def _mini_ticker(self, ts: int) -> None:
        ms = ts // _NS_PER_MS
        c, o, h, lo, v, q = self._ticker_common()
        body = (
            f'{{"e":"24hrMiniTicker","E":{ms},"s":"{self.sym}","c":"{c}","o":"{o}","h":"{h}",'
            f'"l":"{lo}","v":"{v}","q":"{q}"}}'
        )
        self.out.append(_frame(ts, self.market, self.stream["mini_ticker"], body.encode()))

    def _mark_price(self, ts: int) -> None:
        ms = ts // _NS_PER_MS
        rng = self.rng
        # Mark, index and settle prices are computed (not traded) prices: 8 decimals, off the
        # tick grid, like Binance's.
        scale = self.tick_units * 10 ** (8 - self.tdec) if self.tdec <= 8 else 1
        mid2 = (self.bb + self.ba) * scale  # twice the mid, in 10**-8
        noise = max(1, scale // 3)
        index = mid2 // 2 + int(rng.gauss(0, noise))
        mark = index + int(rng.gauss(0, noise))
        settle = index + int(rng.gauss(0, noise))
        funding = 10_000 + int(rng.gauss(0, 4_000))  # around 0.0001 per 8 h
        next_funding = ms - ms % _FUNDING_MS + _FUNDING_MS
        p, i, s = (_fixed_str(max(1, v), 8) for v in (mark, index, settle))
        body = (
            f'{{"e":"markPriceUpdate","E":{ms},"s":"{self.sym}","p":"{p}","P":"{s}","i":"{i}",'
            f'"r":"{_signed_str(funding, 8)}","T":{next_funding}}}'
        )
        self.out.append(_frame(ts, self.market, self.stream["mark_price"], body.encode()))

    # -- windows ------------------------------------------------------------------------------

    def window(self, t1: int, out: list[StreamFrame]) -> StreamFrame | None:
        """Simulates up to ``t1``: appends the frames before ``t1`` to ``out`` in time order.

        Returns the window's depth frame (at ``t1``), or None when the book did not change or
        the depth stream is off.  Its changes stay unpublished until ``publish()``.
        """
        rnd = self.rnd
        # The fair price walks once per window; the book follows it through order flow.
        self.fair = max(self.floor_tick, self.fair + round(self.rng.gauss(0, 1.0)))
        events: list[tuple[int, int]] = []
        next_t, step_ns = self.next_t, self.step_ns
        for code in range(7):
            t = next_t[code]
            if t < t1:
                step = step_ns[code]
                if code < _EV_DEPTH:
                    while t < t1:
                        events.append((t, code))
                        t += step
                else:
                    while t < t1:
                        events.append((t, code))
                        t += 1 + int(-_log(1.0 - rnd()) * step)
                next_t[code] = t
        events.sort()
        self.out = out
        self.w_bids, self.w_asks, self.old_bids, self.old_asks = {}, {}, {}, {}
        self.w_U = 0
        for ts, code in events:
            if code == _EV_TOP:
                self._top_change(ts)
            elif code == _EV_DEPTH:
                self._depth_change(ts)
            elif code == _EV_TAKER:
                self._taker(ts)
            elif code == _EV_KLINE:
                self._kline(ts)
            elif code == _EV_TICKER:
                self._ticker(ts)
            elif code == _EV_MINI:
                self._mini_ticker(ts)
            else:
                self._mark_price(ts)
        if not self.w_U:
            return None
        u, t_ms = self.uid, self.w_T // _NS_PER_MS
        if not self.want["depth"]:
            self.pub_u, self.pub_T = u, t_ms  # no diff stream: snapshots follow the book
            return None
        frame = self._depth_frame(t1)
        self.pending.append((u, t_ms, self.old_bids, self.old_asks))
        self.w_prev_u = u
        return frame

    def _depth_frame(self, ts: int) -> StreamFrame:
        pc, price = self.price_cache, self.price
        pattern, mult, div = self.qty_fmt
        # Binance's order: spot bids descending, futures bids ascending; asks ascending.
        bids = ",".join(
            [
                f'["{pc.get(t) or price(t)}","{pattern % divmod(q * mult, div)}"]'
                for t, q in sorted(self.w_bids.items(), reverse=not self.futures)
            ]
        )
        asks = ",".join(
            [
                f'["{pc.get(t) or price(t)}","{pattern % divmod(q * mult, div)}"]'
                for t, q in sorted(self.w_asks.items())
            ]
        )
        ms = ts // _NS_PER_MS
        if self.futures:
            body = (
                f'{{"e":"depthUpdate","E":{ms},"T":{self.w_T // _NS_PER_MS},"s":"{self.sym}",'
                f'"U":{self.w_U},"u":{self.uid},"pu":{self.w_prev_u},"b":[{bids}],"a":[{asks}]}}'
            )
        else:
            body = (
                f'{{"e":"depthUpdate","E":{ms},"s":"{self.sym}","U":{self.w_U},"u":{self.uid},'
                f'"b":[{bids}],"a":[{asks}]}}'
            )
        return _frame(ts, self.market, self.stream["depth"], body.encode())

    def publish(self) -> None:
        """The oldest pending depth frame is being yielded: its state becomes the snapshot's."""
        self.pub_u, self.pub_T, _, _ = self.pending.popleft()

    def snapshot(self, limit: int, now_ms: int) -> bytes:
        """The REST body of the book as of the last published depth frame."""
        bids, asks = self.bids, self.asks
        if self.pending:
            bids, asks = dict(bids), dict(asks)
            # Undo the unpublished windows, newest first, back to the published state.
            for _, _, old_bids, old_asks in reversed(self.pending):
                for book, old in ((bids, old_bids), (asks, old_asks)):
                    for tick, lots in old.items():
                        if lots:
                            book[tick] = lots
                        else:
                            book.pop(tick, None)
        pc, price = self.price_cache, self.price
        pattern, mult, div = self.qty_fmt
        b = ",".join(
            [
                f'["{pc.get(t) or price(t)}","{pattern % divmod(bids[t] * mult, div)}"]'
                for t in sorted(bids, reverse=True)[:limit]
            ]
        )
        a = ",".join(
            [
                f'["{pc.get(t) or price(t)}","{pattern % divmod(asks[t] * mult, div)}"]'
                for t in sorted(asks)[:limit]
            ]
        )
        if self.futures:
            head = f'{{"lastUpdateId":{self.pub_u},"E":{now_ms},"T":{self.pub_T},'
        else:
            head = f'{{"lastUpdateId":{self.pub_u},'
        return f'{head}"bids":[{b}],"asks":[{a}]}}'.encode()


class SyntheticMarket:
    """A ``MarketSource`` that makes up a consistent Binance market (see the module docstring).

    - ``markets``: a subset of ``MARKETS``; default both, or the keys of ``symbols``.
    - ``symbols``: the symbols per market.  Known names (BTCUSDT, DOGEUSDT, ...) get
      Binance-like filters; other names a shape picked from the name.  Without it,
      ``symbols_per_market`` symbols are made per market (the known ones, then SYN<i>USDT).
    - ``rates``: overrides ``DEFAULT_RATES`` per key, per symbol per second; 0 turns a stream
      off (it is then not in ``streams()``).  Unknown keys are an error.
    - ``seed``: the whole output is a function of the arguments; ``start_ns`` is the synthetic
      clock's start, ``duration_s`` its length (None: ``frames()`` never ends).
    - ``depth_levels``: initial levels per side; ``depth_interval_ms``: the diff window (the
      stream is ``@depth@100ms`` for 100, plain ``@depth`` at Binance's default speed).
    - ``market_rates``: per market, overrides of the rates above for that market only.
    - ``activity``: per market, one multiplier per symbol (in ``symbols(market)`` order) of the
      random-arrival rates (``SCALED_RATES``); periodic pushes keep their period.  Default 1.0
      each.  ``SyntheticMarket.binance()`` builds the whole-market shape with it.
    """

    def __init__(
        self,
        *,
        markets: Sequence[str] | None = None,
        symbols_per_market: int = 4,
        symbols: Mapping[str, Sequence[str]] | None = None,
        rates: Mapping[str, float] | None = None,
        seed: int = 0,
        start_ns: int = 1_700_000_000_000_000_000,
        duration_s: float | None = None,
        depth_levels: int = 200,
        depth_interval_ms: int = 100,
        market_rates: Mapping[str, Mapping[str, float]] | None = None,
        activity: Mapping[str, Sequence[float]] | None = None,
    ) -> None:
        if markets is None:
            markets = tuple(symbols) if symbols is not None else MARKETS
        self.markets: tuple[str, ...] = tuple(markets)
        for market in self.markets:
            if market not in MARKETS:
                raise ValueError(f"unsupported market {market!r} (one of {MARKETS})")
        if symbols is not None and set(symbols) - set(self.markets):
            raise ValueError(f"symbols for markets not in {self.markets}: {sorted(symbols)}")
        if symbols_per_market < 0 or depth_levels < 1 or depth_interval_ms < 1:
            raise ValueError("symbols_per_market >= 0, depth_levels >= 1, depth_interval_ms >= 1")
        if duration_s is not None and duration_s < 0:
            raise ValueError("duration_s must be >= 0 or None")
        merged = _merge_rates(DEFAULT_RATES, rates)
        self.rates: Mapping[str, float] = merged
        if market_rates is not None and set(market_rates) - set(self.markets):
            raise ValueError(f"market_rates for markets not in {self.markets}")
        self._market_rates = {
            m: _merge_rates(merged, (market_rates or {}).get(m)) for m in self.markets
        }
        self.seed = seed
        self.start_ns = start_ns
        self.duration_s = duration_s
        self.depth_levels = depth_levels
        self.depth_interval_ms = depth_interval_ms
        self._symbols: dict[str, list[str]] = {}
        if symbols is not None and any(isinstance(v, str) for v in symbols.values()):
            raise ValueError("symbols maps a market to a list of symbols, not to one string")
        for market in self.markets:
            names = (
                [s.upper() for s in symbols.get(market, ())]
                if symbols is not None
                else _generated_symbols(market, symbols_per_market)
            )
            if len(set(names)) != len(names):
                raise ValueError(f"duplicate symbols in {market}")
            self._symbols[market] = names
        if activity is not None and set(activity) - set(self.markets):
            raise ValueError(f"activity for markets not in {self.markets}")
        self._activity: dict[str, list[float]] = {}
        for market, weights in (activity or {}).items():
            values = [float(w) for w in weights]
            if len(values) != len(self._symbols[market]):
                raise ValueError(
                    f"activity[{market!r}] has {len(values)} values for "
                    f"{len(self._symbols[market])} symbols"
                )
            if not all(0 <= w < math.inf for w in values):
                raise ValueError(f"activity[{market!r}] values must be finite and >= 0")
            self._activity[market] = values
        self._specs = {(m, s): _spec_for(m, s) for m in self.markets for s in self._symbols[m]}
        self._position = {(m, s): i for m in self.markets for i, s in enumerate(self._symbols[m])}
        self._instruments: dict[tuple[str, str], _Instrument] = {}
        self._now_ns = start_ns
        self._reset()

    def _depth_stream(self, market: str) -> str:
        # Binance's names: the default speed has no suffix (1000 ms spot, 250 ms futures).
        default = 1000 if market == "spot" else 250
        if self.depth_interval_ms == default:
            return "depth"
        return f"depth@{self.depth_interval_ms}ms"

    def _reset(self) -> list[_Instrument]:
        # the trades the current iteration of frames() made, served by id over REST
        self.tape = TradeTape()
        insts = []
        for (market, symbol), spec in self._specs.items():
            rng = random.Random(f"{self.seed}/{market}/{symbol}")
            insts.append(
                _Instrument(
                    market,
                    spec,
                    rng,
                    self.rates_of(market, symbol),
                    self.start_ns,
                    self.depth_levels,
                    self._depth_stream(market),
                )
            )
        self._instruments = {(i.market, i.sym): i for i in insts}
        self._now_ns = self.start_ns
        self._fresh = True
        return insts

    @classmethod
    def binance(
        cls,
        *,
        spot: int = BINANCE_SYMBOLS["spot"],
        usdm: int = BINANCE_SYMBOLS["usdm"],
        exponent: float = BINANCE_ZIPF_EXPONENT,
        scale: float = 1.0,
        **kwargs: Any,
    ) -> SyntheticMarket:
        """The whole Binance market: ``spot`` and ``usdm`` symbols at a heavy-tailed rate.

        Symbol i of a market (rank i + 1; the known names first, BTCUSDT the busiest) gets
        ``BINANCE_HEAD_RATES`` times ``scale * (i + 1) ** -exponent`` for the random-arrival
        streams (trade, aggTrade, bookTicker, depth@100ms); the periodic streams (kline,
        tickers, mark price) are off unless ``rates`` turns them on.  A market with 0 symbols
        is left out.  Other keyword arguments go to the constructor (``seed``, ``duration_s``,
        ``depth_levels``...).  How the default was derived: docs/fake-exchange.md.
        """
        if not scale > 0:
            raise ValueError("scale must be > 0")
        counts = {"spot": spot, "usdm": usdm}
        markets = tuple(m for m in MARKETS if counts[m] > 0)
        rates = {k: 0.0 for k in DEFAULT_RATES if k not in SCALED_RATES}
        rates.update(kwargs.pop("rates", None) or {})
        return cls(
            markets=markets,
            symbols={m: _generated_symbols(m, counts[m]) for m in markets},
            rates=rates,
            market_rates={m: BINANCE_HEAD_RATES[m] for m in markets},
            activity={m: [scale * w for w in zipf_activity(counts[m], exponent)] for m in markets},
            **kwargs,
        )

    def rates_of(self, market: str, symbol: str) -> dict[str, float]:
        """The rates one symbol runs at, per second: the market's, times its activity."""
        rates = dict(self._market_rates[market])
        weights = self._activity.get(market)
        if weights is not None:
            factor = weights[self._position[(market, symbol.upper())]]
            for key in SCALED_RATES:
                rates[key] *= factor
        return rates

    # -- MarketSource ---------------------------------------------------------------------------

    def symbols(self, market: str) -> list[str]:
        """The market's symbols, upper case (empty for a market this source does not have)."""
        return list(self._symbols.get(market, ()))

    def streams(self, market: str) -> set[str]:
        """Every stream name that carries frames (streams whose rate is 0 are left out)."""
        out: set[str] = set()
        for (m, _), inst in self._instruments.items():
            if m == market:
                out.update(inst.stream[k] for k, on in inst.want.items() if on)
        return out

    def exchange_info(self, market: str) -> dict[str, Any]:
        """A Binance-shaped exchangeInfo body for the market's symbols."""
        futures = market != "spot"
        if futures:
            limits = [
                {
                    "rateLimitType": "REQUEST_WEIGHT",
                    "interval": "MINUTE",
                    "intervalNum": 1,
                    "limit": 2400,
                },
                {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
                {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 300},
            ]
        else:
            limits = [
                {
                    "rateLimitType": "REQUEST_WEIGHT",
                    "interval": "MINUTE",
                    "intervalNum": 1,
                    "limit": 6000,
                },
                {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
                {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
                {
                    "rateLimitType": "RAW_REQUESTS",
                    "interval": "MINUTE",
                    "intervalNum": 5,
                    "limit": 61000,
                },
            ]
        entries = []
        for symbol in self._symbols.get(market, ()):
            inst = self._instruments[(market, symbol)]
            spec = inst.spec
            mult, pdec = inst.price_ints
            qty = inst.fmt_qty
            filters = [
                {
                    "filterType": "PRICE_FILTER",
                    "minPrice": _fixed_str(mult, pdec),
                    "maxPrice": _fixed_str(1_000_000 * 10**pdec, pdec),
                    "tickSize": _fixed_str(mult, pdec),
                },
                {
                    "filterType": "LOT_SIZE",
                    "minQty": qty(1),
                    "maxQty": qty(9_000_000 * 10**inst.qdec // inst.qty_units),
                    "stepSize": qty(1),
                },
            ]
            entry: dict[str, Any] = {
                "symbol": symbol,
                "status": "TRADING",
                "baseAsset": spec.base,
                "quoteAsset": spec.quote,
            }
            if futures:
                entry.update(
                    pair=symbol,
                    contractType="PERPETUAL",
                    pricePrecision=pdec,
                    quantityPrecision=inst.qdec,
                    marginAsset=spec.quote,
                )
            else:
                entry.update(baseAssetPrecision=8, quotePrecision=8, quoteAssetPrecision=8)
            entry["filters"] = filters
            entries.append(entry)
        return {
            "timezone": "UTC",
            "serverTime": self._now_ns // _NS_PER_MS,
            "rateLimits": limits,
            "exchangeFilters": [],
            "symbols": entries,
        }

    def frames(self) -> Iterator[StreamFrame]:
        """Every frame of every symbol in ``ts_ns`` order (ties: a fixed symbol order).

        Each call starts the market over from its seed; ``depth_snapshot`` follows the most
        recently started iteration.
        """
        # The instruments the constructor built serve the first iteration; later ones restart.
        insts = list(self._instruments.values()) if self._fresh else self._reset()
        self._fresh = False
        insts = [inst for inst in insts if inst.active]
        window_ns = self.depth_interval_ms * _NS_PER_MS
        end_ns = (
            None if self.duration_s is None else self.start_ns + round(self.duration_s * _NS_PER_S)
        )
        by_time = attrgetter("ts_ns")
        record = self.tape.record
        # Every instrument's depth windows share one grid, so a run of windows of all
        # instruments is a closed time range: it is merged with one (C) sort instead of a heap
        # operation per frame.  Each instrument simulates several windows in a row (its book
        # stays in the CPU cache; this is worth a third with hundreds of books), and the batch
        # is bounded to about 2000 instrument-windows, so memory stays O(instruments).
        span = max(1, min(10, 2000 // max(1, len(insts))))
        t0 = self.start_ns
        while insts and (end_ns is None or t0 < end_ns):
            batch: list[StreamFrame] = []
            # id(frame) -> a depth frame's instrument, or a trade's tape entry (the instruments
            # add those): the frames themselves are never parsed again
            hooks: dict[int, Any] = {}
            t1 = t0
            for inst in insts:
                inst.hooks = hooks
                t1 = t0
                for _ in range(span):
                    if end_ns is not None and t1 >= end_ns:
                        break
                    t1 += window_ns
                    frame = inst.window(t1, batch)
                    if frame is not None:
                        batch.append(frame)
                        hooks[id(frame)] = inst
            t0 = t1
            batch.sort(key=by_time)  # stable: ties keep instrument order, then event order
            if end_ns is not None and t1 > end_ns:
                batch = [f for f in batch if f.ts_ns <= end_ns]
            get_hook = hooks.get
            for frame in batch:
                # A depth frame publishes its window as it goes out, so a snapshot taken
                # between two frames reflects exactly the depth frames already yielded; a
                # trade goes on the tape as it goes out (as TradeTape.observe would put it).
                hook = get_hook(id(frame))
                if hook is not None:
                    if type(hook) is tuple:
                        market, symbol, kind, tid = hook
                        record(market, symbol, kind, tid, frame.payload)
                    else:
                        hook.publish()
                self._now_ns = frame.ts_ns
                yield frame

    def depth_snapshot(self, market: str, symbol: str, limit: int) -> bytes | None:
        """The REST depth body: the book as of the last depth frame ``frames()`` yielded.

        Its ``lastUpdateId`` is that frame's ``u``, so a client that buffered diffs syncs by
        Binance's procedure (spot: the next frame has ``U == lastUpdateId + 1``; usdm: the
        buffered frame with ``u == lastUpdateId`` straddles it).  None for an unknown symbol.
        """
        inst = self._instruments.get((market, symbol.upper()))
        if inst is None:
            return None
        return inst.snapshot(max(1, limit), self._now_ns // _NS_PER_MS)

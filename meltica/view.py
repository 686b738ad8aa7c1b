"""The operator's live view: one model and one screen for ``demo`` and ``top``.

`LiveView` knows nothing about where its data comes from.  Two feeds drive it:

- events (`observe`): the Data Bus events a consumer received (``demo``: an
  in-process bus consumer; ``top``: the gateway's ``/tail`` decoded with
  ``meltica.wire.decode_lines``).  Only ``book_ticker``, ``book_snapshot`` (the
  Conductor's fused ``book`` / ``bbo`` and partial-depth ``stream`` ones; not ``rest``
  sync snapshots), ``trade`` and ``agg_trade`` are used, so both
  feeds give the same figures;
- metrics (`update_metrics`): Prometheus metric families (``demo``: the
  engine's registry; ``top``: ``/metrics`` parsed by prometheus-client), for
  connections, frame and event rates, REST weight, bus lag and drops, book
  states and latency.  Every family the view reads is named in `METRIC_NAMES`,
  and one that is missing shows ``-``.

`tick(now)` samples the counters into sliding windows: every rate on screen
is over the last `window_s` seconds (5 by default), never an average since
start.  Times are the caller's monotonic seconds, so tests drive the clock.

Prices are printed at the instrument's tick decimals and quantities at its
step decimals: exact when `set_instrument` was given the tick and step
(``demo``: the gateway's exchangeInfo; ``top --rest-url``), otherwise learnt
from the decimal strings received (the most fractional digits seen once
trailing zeros are dropped; they only grow, so columns settle after a few
updates).  The table has fixed column widths (79 cells in all) and its rows
are sorted by market and symbol, so nothing moves as values change.

Book states come from ``meltica_book_live`` and ``meltica_book_resyncs``: a
book that is not live and never resynced is still starting up (``sync``,
yellow); one that is not live after a resync is in trouble (``RESYNC``, red).
The age of a live book is the time since the view last received an update of
its top (local arrival time, so clocks of other hosts do not matter).
"""

from __future__ import annotations

import io
import math
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

from rich.console import Console, Group, JustifyMethod, RenderableType
from rich.table import Table
from rich.text import Text

__all__ = [
    "METRIC_NAMES",
    "LiveView",
    "Rate",
    "Scrape",
    "snapshot_text",
    "write_snapshot",
]

#: Every metric the view reads, by role: the one place to adjust when metric
#: names change.  Names as the exposition format writes samples (counters end
#: in ``_total``); a lookup also tries the name with ``_total`` added or
#: removed, so a counter/gauge re-declaration does not blank a column.
METRIC_NAMES: Final[Mapping[str, str]] = {
    # per market
    "ws_frames": "meltica_ws_frames_total",  # WebSocket frames received
    "ws_connections": "meltica_ws_connections",  # open connections
    "ws_slots": "meltica_ws_slots",  # connections the manager wants open
    "ws_connects": "meltica_ws_connects_total",  # connections opened since start
    "rest_weight": "meltica_rest_weight_window",  # REST weight used in the current window
    "rest_budget": "meltica_rest_weight_budget",  # the gateway's REST weight budget per window
    # gateway
    "bus_published": "meltica_bus_published_total",  # events onto the Data Bus
    "consumer_lag": "meltica_bus_consumer_lag",  # per consumer: events not yet read
    "consumer_dropped": "meltica_bus_consumer_dropped_total",  # per consumer
    "latency": "meltica_pipeline_latency_seconds",  # histogram: receive -> bus publish
    "process_start": "process_start_time_seconds",  # standard process collector
    # per market and symbol
    "book_live": "meltica_book_live",  # 1 while the book is live
    "book_gaps": "meltica_book_gaps_total",
    "book_resyncs": "meltica_book_resyncs_total",  # a live book found wrong
}

#: The table: (header, width, justify).  Widths are fixed; 72 + 7 separators = 79.
COLUMNS: Final[tuple[tuple[str, int, JustifyMethod], ...]] = (
    ("symbol", 12, "left"),
    ("bid", 11, "right"),
    ("ask", 11, "right"),
    ("mid", 11, "right"),
    ("bps", 5, "right"),
    ("last trade", 11, "right"),
    ("tr/s", 5, "right"),
    ("book", 6, "right"),
)
TABLE_WIDTH: Final = sum(w for _, w, _ in COLUMNS) + len(COLUMNS) - 1

#: Event kinds the view uses (``top`` asks ``/tail`` for these only).
VIEW_KINDS: Final = ("book_ticker", "book_snapshot", "trade", "agg_trade")

STALE_AGE_S: Final = 5.0  # a live book quiet this long is shown yellow
DEAD_AGE_S: Final = 30.0  # ... and red from here


class Rate:
    """Per-second rate of a cumulative count over a sliding window.

    `sample(now, total)` records the count at `now`; `per_s()` is the
    increase between the oldest kept sample (the newest one at least
    `window_s` old) and the latest, divided by the time between them.  A
    count that goes down (a restarted gateway) starts the window afresh.
    Memory: one point per `sample` call within the window.
    """

    __slots__ = ("_points", "window_s")

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self._points: deque[tuple[float, float]] = deque()

    def sample(self, now: float, total: float) -> None:
        pts = self._points
        if pts and total < pts[-1][1]:
            pts.clear()
        pts.append((now, total))
        edge = now - self.window_s
        while len(pts) > 2 and pts[1][0] <= edge:
            pts.popleft()

    def per_s(self) -> float | None:
        """The rate, or None before two samples."""
        pts = self._points
        if len(pts) < 2:
            return None
        (t0, v0), (t1, v1) = pts[0], pts[-1]
        if t1 <= t0:
            return None
        return (v1 - v0) / (t1 - t0)

    def rose(self) -> bool:
        """True when the count went up within the window."""
        rate = self.per_s()
        return rate is not None and rate > 0


class Scrape:
    """The samples of one scrape, looked up by role (`METRIC_NAMES`)."""

    def __init__(self, families: Iterable[Any]) -> None:
        self._by_name: dict[str, list[tuple[Mapping[str, str], float]]] = {}
        for fam in families:
            for s in fam.samples:
                self._by_name.setdefault(s.name, []).append((s.labels, s.value))

    def _names(self, role: str, suffix: str = "") -> tuple[str, ...]:
        name = METRIC_NAMES[role]
        base = name.removesuffix("_total")
        return (name + suffix, base + suffix, base + "_total" + suffix)

    def samples(self, role: str, suffix: str = "") -> list[tuple[Mapping[str, str], float]]:
        """(labels, value) of the role's family; empty when it is not exported."""
        for name in self._names(role, suffix):
            found = self._by_name.get(name)
            if found is not None:
                return found
        return []

    def by_label(self, role: str, label: str) -> dict[str, float]:
        """Values summed by one label (e.g. per market)."""
        out: dict[str, float] = {}
        for labels, value in self.samples(role):
            key = labels.get(label)
            if key is not None:
                out[key] = out.get(key, 0.0) + value
        return out

    def by_instrument(self, role: str) -> dict[tuple[str, str], float]:
        out: dict[tuple[str, str], float] = {}
        for labels, value in self.samples(role):
            m, s = labels.get("market"), labels.get("symbol")
            if m is not None and s is not None:
                out[(m, s)] = value
        return out

    def total(self, role: str) -> float | None:
        found = self.samples(role)
        return sum(v for _, v in found) if found else None

    def maximum(self, role: str) -> float | None:
        found = self.samples(role)
        return max(v for _, v in found) if found else None

    def buckets(self, role: str) -> list[tuple[float, float]]:
        """A histogram's cumulative (upper bound, count) pairs, summed over its labels."""
        acc: dict[float, float] = {}
        for labels, value in self.samples(role, "_bucket"):
            le = labels.get("le")
            if le is not None:
                bound = float(le)
                acc[bound] = acc.get(bound, 0.0) + value
        return sorted(acc.items())


def _frac_digits(value: Any) -> int:
    """Fractional digits of a decimal (`Fixed` or `Decimal`) without trailing zeros."""
    mantissa = getattr(value, "mantissa", None)
    if mantissa is not None:
        digits, m = -int(value.exponent), abs(int(mantissa))
        while digits > 0 and m % 10 == 0:
            m //= 10
            digits -= 1
        return max(0, digits)
    exp = Decimal(value).normalize().as_tuple().exponent
    return max(0, -exp) if isinstance(exp, int) else 0


def _decimal(value: Any) -> Decimal:
    d = getattr(value, "decimal", None)
    return d if isinstance(d, Decimal) else Decimal(str(value))


def _size_digits(size: Decimal | str) -> int:
    exp = Decimal(size).normalize().as_tuple().exponent
    return max(0, -exp) if isinstance(exp, int) else 0


def fmt_fixed(value: Decimal | None, digits: int | None) -> str:
    """`value` with exactly `digits` decimals (as received when `digits` is None)."""
    if value is None:
        return "-"
    if digits is None:
        return str(value)
    return f"{value:.{digits}f}"


def fmt_rate(rate: float | None) -> str:
    if rate is None:
        return "-"
    if rate < 10:
        return f"{rate:.1f}"
    return f"{rate:,.0f}"


def fmt_duration(seconds: float | None) -> str:
    """Latency for humans: 85µs, 1.2ms, 3.4s."""
    if seconds is None or math.isnan(seconds):
        return "-"
    if math.isinf(seconds):
        return ">max"
    us = seconds * 1e6
    if us < 1000:
        return f"{us:.0f}µs"
    if us < 1e6:
        ms = us / 1000
        return f"{ms:.1f}ms" if ms < 10 else f"{ms:.0f}ms"
    return f"{seconds:.1f}s"


def fmt_age(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 600:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.0f}m"


def fmt_uptime(seconds: float) -> str:
    s = int(max(0.0, seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


@dataclass
class Row:
    """What the view knows of one instrument."""

    market: str
    symbol: str
    price_digits: int | None = None  # tick decimals (None: not known yet)
    qty_digits: int | None = None  # step decimals
    exact: bool = False  # digits from exchangeInfo, not learnt from values
    bid: Decimal | None = None
    ask: Decimal | None = None
    trade_qty: Decimal | None = None
    trade_side: str = ""
    book_at: float | None = None  # local monotonic time of the last top-of-book update
    trades: int = 0
    agg_trades: int = 0
    trade_rate: Rate = field(default_factory=Rate)
    agg_rate: Rate = field(default_factory=Rate)
    live: bool | None = None  # None: no book tracked (no depth stream) or no metrics yet
    resyncs: int = 0
    gaps: int = 0

    def learn(self, price: Any = None, qty: Any = None) -> None:
        if self.exact:
            return
        if price is not None:
            d = _frac_digits(price)
            if self.price_digits is None or d > self.price_digits:
                self.price_digits = d
        if qty is not None:
            d = _frac_digits(qty)
            if self.qty_digits is None or d > self.qty_digits:
                self.qty_digits = d

    @property
    def state(self) -> str:
        """``live``, ``syncing`` (start-up), ``resyncing`` (trouble) or ``""`` (no book)."""
        if self.live is None:
            return ""
        if self.live:
            return "live"
        return "resyncing" if self.resyncs else "syncing"

    def trades_per_s(self) -> float | None:
        # a symbol streaming both trade and agg_trade is counted once, by its trades
        return (
            self.trade_rate.per_s() if self.trades or not self.agg_trades else self.agg_rate.per_s()
        )


@dataclass
class MarketState:
    connections: float | None = None
    slots: float | None = None
    connects: float | None = None  # opened since start (fewer than slots: still starting)
    frames: Rate = field(default_factory=Rate)
    rest_weight: float | None = None
    rest_budget: float | None = None

    def ws_state(self) -> str:
        """``up`` (every wanted connection open), ``connecting`` (start-up: some slot
        never connected yet), ``down`` (fewer open than wanted after all had connected)
        or ``""`` (unknown)."""
        conns, slots = self.connections, self.slots
        if conns is None:
            return ""
        if conns >= (slots or 0):
            return "up" if conns > 0 else "down"
        if self.connects is not None and self.connects < (slots or 0):
            return "connecting"
        return "down"


class LiveView:
    """The model behind the live view; `render` draws it (see the module doc)."""

    def __init__(
        self,
        title: str,
        *,
        window_s: float = 5.0,
        now: float | None = None,
        since_label: str = "up",
    ) -> None:
        self.title = title
        self.since_label = since_label  # what the view's own age is called, when shown
        self.window_s = window_s
        self.started = time.monotonic() if now is None else now
        self.rows: dict[tuple[str, str], Row] = {}
        self._sizes: dict[tuple[str, str], tuple[int, int]] = {}
        self.markets: dict[str, MarketState] = {}
        self.events = Rate(window_s)
        self.drops = Rate(window_s)
        self.gaps = Rate(window_s)
        self.drops_total: float | None = None
        self.lag: float | None = None
        self.gaps_total = 0
        self.resyncs_total = 0
        self.process_start: float | None = None  # gateway start, wall-clock seconds
        self._latency: deque[tuple[float, list[tuple[float, float]]]] = deque()
        self.scrapes = 0
        self.last_scrape: float | None = None
        #: feed -> status line shown at the bottom (``top``: metrics and tail)
        self.feeds: dict[str, str] = {}
        self.note = ""

    # -- inputs

    def row(self, market: str, symbol: str) -> Row:
        key = (market, symbol)
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = Row(
                market, symbol, trade_rate=Rate(self.window_s), agg_rate=Rate(self.window_s)
            )
            sizes = self._sizes.get(key)
            if sizes is not None:
                row.price_digits, row.qty_digits = sizes
                row.exact = True
        return row

    def set_instrument(
        self, market: str, symbol: str, tick: Decimal | str, step: Decimal | str
    ) -> None:
        """Exact decimals of an instrument's prices (tick) and quantities (step), for its
        row now or when it appears."""
        key = (market, symbol.upper())
        sizes = self._sizes[key] = (_size_digits(tick), _size_digits(step))
        row = self.rows.get(key)
        if row is not None:
            row.price_digits, row.qty_digits = sizes
            row.exact = True

    def observe(self, events: Iterable[Any], now: float) -> None:
        """Account bus events received at `now` (monotonic seconds)."""
        for ev in events:
            kind = ev.kind
            if kind == "book_ticker":
                row = self.row(ev.market, ev.symbol)
                self._top(row, ev.bid_price, ev.bid_qty, ev.ask_price, now)
            elif kind == "book_snapshot":
                if ev.source == "rest":  # a sync step, maybe older than the live book
                    continue
                bids, asks = ev.bids, ev.asks
                if bids and asks:
                    row = self.row(ev.market, ev.symbol)
                    self._top(row, bids[0][0], bids[0][1], asks[0][0], now)
            elif kind == "trade" or kind == "agg_trade":
                row = self.row(ev.market, ev.symbol)
                if kind == "trade":
                    row.trades += 1
                else:
                    row.agg_trades += 1
                row.trade_qty = _decimal(ev.qty)
                row.trade_side = ev.side
                row.learn(ev.price, ev.qty)

    @staticmethod
    def _top(row: Row, bid: Any, bid_qty: Any, ask: Any, now: float) -> None:
        row.bid, row.ask = _decimal(bid), _decimal(ask)
        row.book_at = now
        row.learn(bid, bid_qty)
        row.learn(ask)

    def update_metrics(self, families: Iterable[Any], now: float) -> None:
        """Take one scrape (prometheus-client metric families) made at `now`."""
        scrape = Scrape(families)
        self.scrapes += 1
        self.last_scrape = now
        frames = scrape.by_label("ws_frames", "market")
        conns = scrape.by_label("ws_connections", "market")
        slots = scrape.by_label("ws_slots", "market")
        connects = scrape.by_label("ws_connects", "market")
        weight = scrape.by_label("rest_weight", "market")
        budget = scrape.by_label("rest_budget", "market")
        for market in sorted({*frames, *conns, *weight}):
            ms = self.markets.get(market)
            if ms is None:
                ms = self.markets[market] = MarketState(frames=Rate(self.window_s))
            if market in frames:
                ms.frames.sample(now, frames[market])
            ms.connections = conns.get(market)
            ms.slots = slots.get(market)
            ms.connects = connects.get(market)
            ms.rest_weight = weight.get(market)
            ms.rest_budget = budget.get(market)
        published = scrape.total("bus_published")
        if published is not None:
            self.events.sample(now, published)
        self.lag = scrape.maximum("consumer_lag")
        self.drops_total = scrape.total("consumer_dropped")
        if self.drops_total is not None:
            self.drops.sample(now, self.drops_total)
        live = scrape.by_instrument("book_live")
        resyncs = scrape.by_instrument("book_resyncs")
        gaps = scrape.by_instrument("book_gaps")
        for (market, symbol), value in live.items():
            row = self.row(market, symbol)
            row.live = value >= 1
            row.resyncs = int(resyncs.get((market, symbol), 0))
            row.gaps = int(gaps.get((market, symbol), 0))
        self.gaps_total = int(sum(gaps.values()))
        self.resyncs_total = int(sum(resyncs.values()))
        self.gaps.sample(now, self.gaps_total)
        start = scrape.total("process_start")
        if start:
            self.process_start = start
        buckets = scrape.buckets("latency")
        if buckets:
            lat = self._latency
            if lat and buckets[-1][1] < lat[-1][1][-1][1]:
                lat.clear()  # the gateway restarted
            lat.append((now, buckets))
            while len(lat) > 2 and lat[1][0] <= now - self.window_s:
                lat.popleft()

    def tick(self, now: float) -> None:
        """Sample the event counters into their windows (call once per redraw)."""
        for row in self.rows.values():
            row.trade_rate.sample(now, row.trades)
            row.agg_rate.sample(now, row.agg_trades)

    # -- figures

    def latency_quantile(self, q: float) -> float | None:
        """Quantile (upper bucket bound, seconds) over the window; None without data."""
        if len(self._latency) < 2:
            return None
        old, new = self._latency[0][1], self._latency[-1][1]
        before = dict(old)
        diff = [(b, c - before.get(b, 0.0)) for b, c in new]
        total = diff[-1][1] if diff else 0.0
        if total <= 0:
            return None
        for bound, count in diff:
            if count >= q * total:
                return bound
        return math.inf

    def status(self) -> str:
        """``STARTING`` while books sync for the first time, ``LIVE`` when all is well,
        ``DEGRADED`` on a resync or a market without its connections, ``WAITING``
        before any metrics."""
        if not self.scrapes:
            return "WAITING"
        if any(r.state == "resyncing" for r in self.rows.values()):
            return "DEGRADED"
        markets = [ms.ws_state() for ms in self.markets.values()]
        if "down" in markets:
            return "DEGRADED"
        if "connecting" in markets or any(r.state == "syncing" for r in self.rows.values()):
            return "STARTING"
        return "LIVE"

    def instruments(self) -> list[Row]:
        return [r for _, r in sorted(self.rows.items()) if r.symbol and r.symbol != "*"]

    def priced(self) -> bool:
        """Every instrument has a bid and an ask."""
        rows = self.instruments()
        return bool(rows) and all(r.bid is not None and r.ask is not None for r in rows)

    # -- drawing

    def render(self, now: float, *, height: int | None = None) -> RenderableType:
        """The screen at `now`: a title line, the bus line, the column headers, then
        per market its status line and its instruments, and the feeds line.  With
        `height`, instruments that do not fit are summed up in one line."""
        rows = self.instruments()
        markets = sorted({*self.markets, *(r.market for r in rows)})
        foot = self._feed_line()
        fixed = 4 + len(markets)  # title, bus, headers, feeds and the market lines
        room = len(rows) if height is None else max(1, height - fixed)
        if len(rows) > room:
            room -= 1  # for the "... more" line
        parts: list[RenderableType] = [self._title(now), self._bus_line(), self._table(True)]
        shown = 0
        for market in markets:
            parts.append(self._market_line(market))
            table = self._table(False)
            for r in rows:
                if r.market == market and shown < room:
                    table.add_row(*self._cells(r, now))
                    shown += 1
            if table.row_count:
                parts.append(table)
        if shown < len(rows):
            parts.append(Text(f"... {len(rows) - shown} more instruments", style="dim"))
        parts.append(foot)
        return Group(*parts)

    @staticmethod
    def _table(header: bool) -> Table:
        table = Table(
            box=None,
            show_edge=False,
            show_header=header,
            pad_edge=False,
            padding=(0, 0, 0, 1),
            header_style="bold",
            expand=False,
        )
        for name, width, justify in COLUMNS:
            table.add_column(name, justify=justify, width=width, no_wrap=True, overflow="ellipsis")
        return table

    def _title(self, now: float) -> Text:
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append(self.title, style="bold")
        status = self.status()
        style = {
            "LIVE": "bold green",
            "STARTING": "bold yellow",
            "DEGRADED": "bold red",
            "WAITING": "bold yellow",
        }[status]
        t.append(f"  {status}", style=style)
        if self.process_start:  # the gateway's own start (wall clock)
            t.append(f"  up {fmt_uptime(time.time() - self.process_start)}")
        else:
            t.append(f"  {self.since_label} {fmt_uptime(now - self.started)}")
        t.append(f"  {fmt_rate(self.events.per_s())} events/s")
        return t

    def _market_line(self, market: str) -> Text:
        ms = self.markets.get(market) or MarketState()
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append(f"{market:<5}", style="bold cyan")
        conns, want = ms.connections or 0, ms.slots or ms.connections or 0
        match ms.ws_state():
            case "up":
                t.append(f" ws up {conns:.0f}/{want:.0f}", style="green")
            case "connecting":
                t.append(f" ws connecting {conns:.0f}/{want:.0f}", style="yellow")
            case "down":
                t.append(f" ws down {conns:.0f}/{want:.0f}", style="bold red")
            case _:
                t.append(" ws -")
        t.append(f"  {fmt_rate(ms.frames.per_s()):>5} frames/s")
        if ms.rest_weight is None:
            t.append("  REST -")
        else:
            budget = ms.rest_budget
            heavy = bool(budget) and ms.rest_weight >= 0.8 * (budget or 0)
            text = f"{ms.rest_weight:.0f}/{budget:.0f}" if budget else f"{ms.rest_weight:.0f}"
            t.append("  REST ")
            t.append(text, style="bold red" if heavy else "")
        rows = [r for r in self.rows.values() if r.market == market and r.live is not None]
        if rows:
            live = sum(1 for r in rows if r.state == "live")
            syncing = sum(1 for r in rows if r.state == "syncing")
            resyncing = sum(1 for r in rows if r.state == "resyncing")
            t.append(f"  books {live} live")
            if syncing:
                t.append(f" {syncing} sync", style="yellow")
            if resyncing:
                t.append(f" {resyncing} RESYNC", style="bold red")
        return t

    def _bus_line(self) -> Text:
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append(f"{'bus':<5}", style="bold")
        t.append(f" lag {'-' if self.lag is None else f'{self.lag:,.0f}'}")
        drops = "-" if self.drops_total is None else f"{self.drops_total:,.0f}"
        t.append("  drops ")
        t.append(drops, style="bold red" if self.drops.rose() else "")
        t.append("  gaps ")
        t.append(f"{self.gaps_total}", style="bold red" if self.gaps.rose() else "")
        t.append("  resyncs ")
        t.append(f"{self.resyncs_total}", style="red" if self.resyncs_total else "")
        p50, p99 = self.latency_quantile(0.5), self.latency_quantile(0.99)
        t.append(f"  recv→bus p50 {_le(p50)} p99 {_le(p99)}")
        return t

    def _feed_line(self) -> Text:
        t = Text(no_wrap=True, overflow="ellipsis", style="dim")
        items = [f"rates: last {self.window_s:g}s", *(f"{k}: {v}" for k, v in self.feeds.items())]
        if self.note:
            items.append(self.note)
        t.append("  ".join(items))
        return t

    def _cells(self, r: Row, now: float) -> list[Text]:
        pd, qd = r.price_digits, r.qty_digits
        mid: Decimal | None = None
        bps = "-"
        if r.bid is not None and r.ask is not None and r.bid > 0 and r.ask > 0:
            mid = (r.bid + r.ask) / 2
            bps = _fmt_bps((r.ask - r.bid) / mid * 10_000)
        symbol = Text(r.symbol)
        trade = Text()
        if r.trade_qty is not None:
            side = r.trade_side[:1].upper()
            trade.append(side, style="green" if side == "B" else "red")
            trade.append(" " + fmt_fixed(r.trade_qty, qd))
        else:
            trade.append("-")
        return [
            symbol,
            Text(fmt_fixed(r.bid, pd)),
            Text(fmt_fixed(r.ask, pd)),
            Text(fmt_fixed(mid, None if pd is None else pd + 1)),
            Text(bps),
            trade,
            Text(fmt_rate(r.trades_per_s())),
            self._book_cell(r, now),
        ]

    @staticmethod
    def _book_cell(r: Row, now: float) -> Text:
        state = r.state
        if state == "syncing":
            return Text("sync", style="yellow")
        if state == "resyncing":
            return Text("RESYNC", style="bold red")
        if r.book_at is None:
            return Text("-")
        age = max(0.0, now - r.book_at)
        style = "bold red" if age >= DEAD_AGE_S else "yellow" if age >= STALE_AGE_S else ""
        return Text(fmt_age(age), style=style)


def _le(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return fmt_duration(seconds) if math.isinf(seconds) else "≤" + fmt_duration(seconds)


def _fmt_bps(value: Decimal) -> str:
    v = float(value)
    if v < 1:
        return f"{v:.3f}"
    if v < 10:
        return f"{v:.2f}"
    if v < 100:
        return f"{v:.1f}"
    return f"{v:.0f}" if v < 100_000 else ">1e5"


# -- captures


def _record(view: LiveView, now: float, width: int, height: int) -> Console:
    console = Console(
        width=width,
        height=height,
        record=True,
        file=io.StringIO(),
        force_terminal=True,
        color_system="truecolor",
        legacy_windows=False,
    )
    console.print(view.render(now, height=height))
    return console


def snapshot_text(view: LiveView, now: float, *, width: int = 80, height: int = 24) -> str:
    """The frame at `now` as plain text, `width` x at most `height` cells."""
    return _record(view, now, width, height).export_text(styles=False)


def write_snapshot(
    view: LiveView, now: float, path: str | Path, *, width: int = 80, height: int = 24
) -> None:
    """Write the frame at `now`, `width` x `height` cells: SVG when `path` ends in
    ``.svg``, HTML for ``.html``, text with ANSI colours for ``.ans``, else plain text."""
    console = _record(view, now, width, height)
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".svg":
        p.write_text(console.export_svg(title=view.title), encoding="utf-8")
    elif suffix in (".html", ".htm"):
        p.write_text(console.export_html(), encoding="utf-8")
    elif suffix in (".ans", ".ansi"):
        p.write_text(console.export_text(styles=True), encoding="utf-8")
    else:
        p.write_text(console.export_text(styles=False), encoding="utf-8")

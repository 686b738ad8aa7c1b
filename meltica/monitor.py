"""What a bus consumer saw: per-symbol top of book and rates, latency, gaps.

Used by ``meltica-engine demo`` (the live terminal view), ``replay`` (the final
report) and the end-to-end benchmark.  `BusMonitor.observe(batch, now_ns)` is
called once per consumer batch; latency is the local receive time of each
event to the moment the consumer got it (``now_ns - ts_recv``), recorded in an
HdrHistogram (1 µs .. 60 s, 3 significant digits).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram
from rich.table import Table

# Kinds that say something went wrong upstream.
TROUBLE_KINDS = ("gap", "resync_started", "resync_done", "stale")


@dataclass
class SymbolView:
    """The latest we know about one instrument."""

    market: str
    symbol: str
    events: int = 0
    trades: int = 0
    bid: str = ""
    bid_qty: str = ""
    ask: str = ""
    ask_qty: str = ""
    book_update_id: int | None = None
    last_trade: str = ""


@dataclass
class BusMonitor:
    """Counts and latency of everything one consumer received."""

    latency: HdrHistogram = field(default_factory=lambda: HdrHistogram(1, 60_000_000, 3))
    symbols: dict[tuple[str, str], SymbolView] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)
    events: int = 0
    first_ns: int = 0
    last_ns: int = 0

    def observe(self, batch: Iterable[Any], now_ns: int) -> None:
        """Account one batch received at `now_ns` (wall clock, ns)."""
        if not self.first_ns:
            self.first_ns = now_ns
        self.last_ns = now_ns
        kinds = self.kinds
        record = self.latency.record_value
        for ev in batch:
            kind = ev.kind
            kinds[kind] = kinds.get(kind, 0) + 1
            self.events += 1
            ts_recv = ev.ts_recv
            if ts_recv > 0 and kind not in TROUBLE_KINDS and kind != "connection_state":
                record(max(1, (now_ns - ts_recv) // 1000))
            key = (ev.market, ev.symbol)
            view = self.symbols.get(key)
            if view is None:
                view = self.symbols[key] = SymbolView(ev.market, ev.symbol)
            view.events += 1
            if kind in ("trade", "agg_trade"):
                view.trades += 1
                view.last_trade = str(ev.price.decimal)
            elif kind == "book_ticker":
                self._top(view, ev.bid_price, ev.bid_qty, ev.ask_price, ev.ask_qty)
                view.book_update_id = ev.update_id
            elif kind == "book_snapshot" and getattr(ev, "source", "") == "book":
                bids, asks = ev.bids, ev.asks
                if bids and asks:
                    self._top(view, bids[0][0], bids[0][1], asks[0][0], asks[0][1])
                    view.book_update_id = ev.update_id

    @staticmethod
    def _top(view: SymbolView, bid: Any, bid_qty: Any, ask: Any, ask_qty: Any) -> None:
        view.bid, view.bid_qty = str(bid.decimal), str(bid_qty.decimal)
        view.ask, view.ask_qty = str(ask.decimal), str(ask_qty.decimal)

    # -- figures

    @property
    def elapsed_s(self) -> float:
        return max(1e-9, (self.last_ns - self.first_ns) / 1e9)

    def percentile_us(self, q: float) -> int:
        """Latency percentile in µs (0 when nothing was recorded)."""
        if self.latency.get_total_count() == 0:
            return 0
        return int(self.latency.get_value_at_percentile(q))

    def trouble(self) -> dict[str, int]:
        return {k: self.kinds.get(k, 0) for k in TROUBLE_KINDS}

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "events": self.events,
            "events_per_s": round(self.events / self.elapsed_s, 1),
            "by_kind": dict(sorted(self.kinds.items())),
            "latency_us": {
                "p50": self.percentile_us(50),
                "p99": self.percentile_us(99),
                "p99.9": self.percentile_us(99.9),
                "max": int(self.latency.get_max_value()),
                "count": self.latency.get_total_count(),
            },
            **self.trouble(),
            "symbols": {
                f"{m}:{s}": {"events": v.events, "trades": v.trades}
                for (m, s), v in sorted(self.symbols.items())
            },
        }

    def table(self, title: str = "Meltica", extra: dict[str, Any] | None = None) -> Table:
        """A rich table: one row per instrument plus the totals in the caption."""
        t = Table(title=title, expand=False)
        for col in ("market", "symbol", "bid", "ask", "last trade", "trades/s", "events/s"):
            t.add_column(col, justify="left" if col in ("market", "symbol") else "right")
        secs = self.elapsed_s
        for (market, symbol), v in sorted(self.symbols.items()):
            if not symbol or symbol == "*":
                continue  # connection-wide control events
            t.add_row(
                market,
                symbol,
                f"{v.bid} × {v.bid_qty}" if v.bid else "",
                f"{v.ask} × {v.ask_qty}" if v.ask else "",
                v.last_trade,
                f"{v.trades / secs:,.1f}",
                f"{v.events / secs:,.1f}",
            )
        trouble = ", ".join(f"{k} {n}" for k, n in self.trouble().items())
        parts = [
            f"events/s {self.events / secs:,.0f}",
            f"latency p50 {self.percentile_us(50):,} µs  p99 {self.percentile_us(99):,} µs",
            trouble,
        ]
        if extra:
            parts.append(", ".join(f"{k} {v}" for k, v in extra.items()))
        t.caption = "  |  ".join(parts)
        return t

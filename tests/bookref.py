"""A plain-dict order book following Binance's local-book procedure (docs/conductor.md):
the yardstick for meltica._core.book.

Decimal keys and values, no exponents, no C: obviously correct and slow.  ``apply``
returns the same status names as ``meltica._core.book.STATUS_NAMES``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from meltica._core.events import BookDepth, event_from_wire


class RefBook:
    def __init__(self, futures: bool) -> None:
        self.futures = futures
        self.bids: dict[Decimal, Decimal] = {}
        self.asks: dict[Decimal, Decimal] = {}
        self.last: int | None = None
        self.managed = False
        self.bridged = False

    def load(
        self, last: int, bids: list[tuple[Decimal, Decimal]], asks: list[tuple[Decimal, Decimal]]
    ) -> str:
        self.bids = {p: q for p, q in bids if q != 0}
        self.asks = {p: q for p, q in asks if q != 0}
        self.last = last
        self.bridged = False
        if self.crossed():
            self.bids, self.asks, self.managed = {}, {}, False
            return "crossed"
        self.managed = True
        return "applied"

    def crossed(self) -> bool:
        return bool(self.bids and self.asks) and max(self.bids) >= min(self.asks)

    def apply(
        self,
        first: int,
        u: int,
        pu: int | None,
        bids: list[tuple[Decimal, Decimal]],
        asks: list[tuple[Decimal, Decimal]],
    ) -> str:
        if not self.managed:
            return "not_managed"
        assert self.last is not None
        if not self.bridged:
            if (u < self.last) if self.futures else (u <= self.last):
                return "stale"
            lowest = self.last if self.futures else self.last + 1
            if first > lowest:
                self.managed = False
                return "unbridged"
        else:
            if u <= self.last:
                return "stale"
            if self.futures and pu is not None:
                if pu != self.last:
                    self.managed = False
                    return "gap"
            elif first > self.last + 1:
                self.managed = False
                return "gap"
        if any(q < 0 for _, q in bids + asks):
            self.managed = False
            return "bad_level"
        for side, levels in ((self.bids, bids), (self.asks, asks)):
            for p, q in levels:
                if q == 0:
                    side.pop(p, None)
                else:
                    side[p] = q
        self.last = u
        was_bridged, self.bridged = self.bridged, True
        if self.crossed():
            self.managed = False
            return "crossed"
        return "applied" if was_bridged else "synced"


def depth_event(
    kind: str,
    u: int,
    bids: Any,
    asks: Any,
    *,
    first: int | None = None,
    pu: int | None = None,
    market: str = "spot",
    symbol: str = "BTCUSDT",
    ts_recv: int = 0,
) -> BookDepth:
    """A ``book_delta`` / ``book_snapshot`` (source rest) event from wire fields."""
    d = {
        "v": 1,
        "venue": "binance",
        "market": market,
        "symbol": symbol,
        "kind": kind,
        "seq": u,
        "ts_recv": ts_recv,
        "update_id": u,
        "first_update_id": first,
        "prev_update_id": pu,
        "bids": bids,
        "asks": asks,
    }
    if kind == "book_snapshot":
        d["source"] = "rest"
    ev = event_from_wire(d)
    assert isinstance(ev, BookDepth)
    return ev

"""The fake exchange's memory of trades: what it streamed, served again by id.

Binance serves past trades by id over REST (``historicalTrades``, ``aggTrades``).  A
``TradeTape`` keeps the trades and agg trades a source has yielded (``observe`` every
frame, in stream order), per (market, SYMBOL, kind), so the fake REST server answers
``fromId`` requests from exactly what the source produced, as Binance's REST bodies.
Frames dropped or delayed by a fault are on the tape all the same: the exchange made
those trades.  The tape keeps the latest ``capacity`` trades per stream (older ones are
forgotten: a request from before them gets the oldest kept, as an exchange with a
retention limit would).  Memory: the frames' payload bytes, about 200 bytes a trade.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meltica.replay.source import StreamFrame

__all__ = ["DEFAULT_TAPE_CAPACITY", "TradeTape"]

DEFAULT_TAPE_CAPACITY = 20_000

_SUFFIX = {"@trade": "trade", "@aggTrade": "agg_trade"}


class _Stream:
    __slots__ = ("ids", "payloads")

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.payloads: list[bytes] = []  # the stream frames' own bytes, turned into REST on get


class TradeTape:
    """Trades by id, per (market, SYMBOL, kind): ``observe`` frames, ``get`` REST bodies."""

    def __init__(self, capacity: int = DEFAULT_TAPE_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"TradeTape capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._streams: dict[tuple[str, str, str], _Stream] = {}

    def observe(self, frame: StreamFrame) -> None:
        """Keep ``frame`` if it is a trade or agg trade (anything else costs one test)."""
        stream = frame.stream
        at = stream.rfind("@")
        kind = _SUFFIX.get(stream[at:]) if at > 0 else None
        if kind is None:
            return
        try:
            obj = json.loads(frame.payload)
            symbol = obj["s"]
            tid = obj["t"] if kind == "trade" else obj["a"]
        except (ValueError, KeyError, TypeError):
            return  # a malformed frame (a fault or the recording): nothing to serve
        if type(tid) is not int or not isinstance(symbol, str):
            return
        self.record(frame.market, symbol, kind, tid, frame.payload)

    def record(self, market: str, symbol: str, kind: str, tid: int, payload: bytes) -> None:
        """Keep a trade (``kind`` "trade") or agg trade ("agg_trade") whose symbol and id the
        caller knows (a source that made the payload itself); ``observe`` reads them."""
        st = self._streams.get((market, symbol, kind))
        if st is None:
            st = self._streams[(market, symbol, kind)] = _Stream()
        if st.ids and tid <= st.ids[-1]:
            return  # a repeat (a recorded reconnect overlap) or out of order: first wins
        st.ids.append(tid)
        st.payloads.append(payload)
        if len(st.ids) >= 2 * self.capacity:
            del st.ids[: -self.capacity]
            del st.payloads[: -self.capacity]

    def get(
        self, market: str, symbol: str, kind: str, from_id: int | None, limit: int
    ) -> list[dict[str, Any]] | None:
        """Up to ``limit`` REST items with id >= ``from_id`` (None: the latest ``limit``),
        oldest first; None if the stream was never seen."""
        st = self._streams.get((market, symbol, kind))
        if st is None:
            return None
        if from_id is None:
            chosen = st.payloads[-limit:]
        else:
            i = bisect_left(st.ids, from_id)
            chosen = st.payloads[i : i + limit]
        convert = _trade_item if kind == "trade" else _agg_item
        out = []
        for payload in chosen:
            try:
                out.append(convert(market, json.loads(payload)))
            except (KeyError, TypeError, InvalidOperation):
                continue  # a frame the stream carried but Binance could not have served
        return out

    def __len__(self) -> int:
        return sum(len(st.ids) for st in self._streams.values())


def _trade_item(market: str, obj: dict[str, Any]) -> dict[str, Any]:
    """A trade stream payload as Binance's historicalTrades item (docs/rest.md)."""
    price, qty = obj["p"], obj["q"]
    item: dict[str, Any] = {"id": obj["t"], "price": price, "qty": qty}
    if market != "coinm":
        # COIN-M answers baseQty instead, which needs the contract size: left out here
        item["quoteQty"] = _product(price, qty)
    item["time"] = obj["T"]
    item["isBuyerMaker"] = bool(obj["m"])
    if market == "spot":
        item["isBestMatch"] = bool(obj.get("M", True))
    return item


def _agg_item(market: str, obj: dict[str, Any]) -> dict[str, Any]:
    """An aggTrade stream payload as Binance's aggTrades item (docs/rest.md)."""
    item: dict[str, Any] = {
        "a": obj["a"],
        "p": obj["p"],
        "q": obj["q"],
        "f": obj["f"],
        "l": obj["l"],
        "T": obj["T"],
        "m": bool(obj["m"]),
    }
    if market == "spot":
        item["M"] = bool(obj.get("M", True))
    return item


def _product(price: str, qty: str) -> str:
    value = Decimal(price) * Decimal(qty)
    return format(value.normalize(), "f") if value else "0"

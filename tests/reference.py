"""Reference decoding of Binance frames: the yardstick the compiled parser is measured against.

Written straight from docs/wire-format.md (and the payload shapes of the Binance docs) with
the stdlib ``json`` module and plain ints and strings only.  It shares no code with ``meltica``
on purpose and is slow and plain on purpose: every wire field is spelled out next to the
Binance field it comes from, so a reviewer can check it against the contract line by line.

It decodes VALID frames.  Anything it does not understand raises ``ValueError`` (a frame the
product accepts and this module rejects is itself a finding); unknown event types and
subscription acks / error frames decode to ``[]``.  Impossible values (a trade price <= 0, a
negative quantity, id or depth level price...) are rejected too (``ImplausibleValue``).
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

WIRE_VERSION = 1
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)

# How many ns one unit of an exchange time is ("us" = ``timeUnit=MICROSECOND``).
NS_PER_UNIT = {"ms": 1_000_000, "us": 1_000}

DECIMAL_RE = re.compile(r"-?[0-9]+(\.[0-9]+)?")

# Ticker window by event type (used when there is no stream name).
TICKER_WINDOW_BY_EVENT = {
    "24hrTicker": "24h",
    "24hrMiniTicker": "mini",
    "1hTicker": "1h",
    "4hTicker": "4h",
    "1dTicker": "1d",
}

# Kind by event type ``e`` (used when there is no stream name).
KIND_BY_EVENT = {
    "trade": "trade",
    "aggTrade": "agg_trade",
    "bookTicker": "book_ticker",
    "depthUpdate": "book_delta",
    "kline": "kline",
    "markPriceUpdate": "mark_price",
    "forceOrder": "liquidation",
    **{e: "ticker" for e in TICKER_WINDOW_BY_EVENT},
}


# ------------------------------------------------------------------------------------------
# Field conversions


def ref_decimal(value: Any) -> str:
    """A Binance decimal string as it goes on the wire.

    Kept exactly as sent, with two exceptions (docs/wire-format.md, "Rules"): a mantissa
    that does not fit int64 loses trailing fractional zeros, one at a time, just until it
    fits (still not fitting: rejected); a negative zero loses its sign.
    """
    if not isinstance(value, str) or not DECIMAL_RE.fullmatch(value):
        raise ValueError(f"not a decimal string: {value!r}")
    text = value
    while not _fits_int64(text) and "." in text and text.endswith("0"):
        text = text.removesuffix("0").removesuffix(".")
    if not _fits_int64(text):
        raise ValueError(f"decimal does not fit int64: {value!r}")
    if text.startswith("-") and int(text.replace(".", "")) == 0:
        text = text.removeprefix("-")
    return text


def _fits_int64(text: str) -> bool:
    """Whether the mantissa (the digits, the point ignored) fits int64."""
    return INT64_MIN < int(text.replace(".", "")) <= INT64_MAX


class ImplausibleValue(ValueError):
    """A well-formed value that cannot be true (docs/wire-format.md, "Rules")."""


def ref_price(value: Any) -> str:
    """A trade's price: a decimal > 0."""
    text = ref_decimal(value)
    if Decimal(text) <= 0:
        raise ImplausibleValue(f"price is not positive: {value!r}")
    return text


def ref_nonneg_decimal(value: Any) -> str:
    """A quantity (or a price that may be 0, e.g. an empty side of the book): >= 0."""
    text = ref_decimal(value)
    if Decimal(text) < 0:
        raise ImplausibleValue(f"negative: {value!r}")
    return text


def ref_opt_nonneg_decimal(value: Any) -> str | None:
    return None if value is None else ref_nonneg_decimal(value)


def ref_id(value: Any) -> int:
    """A trade id or a book update id: an int64 >= 0 (not ``pu``, which may be -1)."""
    number = ref_int(value)
    if number < 0:
        raise ImplausibleValue(f"negative id: {value!r}")
    return number


def ref_int(value: Any) -> int:
    """An id or count: a JSON integer within int64 (a bool is not an integer)."""
    if type(value) is not int or not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"not an int64: {value!r}")
    return value


def ref_time(value: Any, time_unit: str) -> int:
    """An exchange time (ms or µs integer) in ns."""
    ns = ref_int(value) * NS_PER_UNIT[time_unit]
    if not INT64_MIN <= ns <= INT64_MAX:
        raise ValueError(f"time does not fit int64 ns: {value!r}")
    return ns


def ref_opt_time(value: Any, time_unit: str) -> int | None:
    return None if value is None else ref_time(value, time_unit)


def ref_opt_decimal(value: Any) -> str | None:
    return None if value is None else ref_decimal(value)


def ref_opt_int(value: Any) -> int | None:
    return None if value is None else ref_int(value)


def ref_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"not a string: {value!r}")
    return value


def ref_opt_str(value: Any) -> str | None:
    return None if value is None else ref_str(value)


def ref_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"not a bool: {value!r}")
    return value


def ref_levels(value: Any) -> list[list[str]]:
    """``[[price, qty], ...]`` in the exchange's order: price > 0, qty >= 0 (0 removes)."""
    if not isinstance(value, list):
        raise ValueError(f"levels are not a list: {value!r}")
    levels = []
    for level in value:
        if not isinstance(level, list) or len(level) != 2:
            raise ValueError(f"a level is not a [price, qty] pair: {level!r}")
        levels.append([ref_decimal(level[0]), ref_decimal(level[1])])
    # every level is well formed before any is judged: a malformed level anywhere in
    # the list is a NumberError in the parser, whatever the levels before it hold
    for price, qty in levels:
        ref_price(price)
        ref_nonneg_decimal(qty)
    return levels


def aggressor_side(buyer_is_maker: Any) -> str:
    """``m == true`` (buyer is maker) means the seller hit the bid."""
    return "sell" if ref_bool(buyer_is_maker) else "buy"


# ------------------------------------------------------------------------------------------
# Stream names


def kind_of_stream(stream: str) -> tuple[str | None, str | None]:
    """(kind, ticker window) named by a stream, e.g. ``btcusdt@depth20@100ms``.

    ``<symbol>@<type>[@<options>]``, or ``!<type>@arr[@1s]`` / ``!bookTicker`` for the
    all-market streams.  Unknown types give ``(None, None)``.
    """
    parts = stream.split("@")
    stream_type = parts[0][1:] if parts[0].startswith("!") else parts[1] if len(parts) > 1 else ""
    if stream_type == "trade":
        return "trade", None
    if stream_type == "aggTrade":
        return "agg_trade", None
    if stream_type == "bookTicker":
        return "book_ticker", None
    if stream_type == "depth":
        return "book_delta", None
    if stream_type in ("depth5", "depth10", "depth20"):
        return "book_snapshot", None
    if stream_type.startswith("kline_"):
        return "kline", None
    if stream_type == "ticker":
        return "ticker", "24h"
    if stream_type == "miniTicker":
        return "ticker", "mini"
    if stream_type in ("ticker_1h", "ticker_4h", "ticker_1d"):
        return "ticker", stream_type.removeprefix("ticker_")
    if stream_type == "markPrice":
        return "mark_price", None
    if stream_type == "forceOrder":
        return "liquidation", None
    return None, None


def symbol_of_stream(stream: str) -> str:
    """The upper-case symbol a per-symbol stream name starts with."""
    symbol = stream.split("@")[0]
    if not symbol or symbol.startswith("!"):
        raise ValueError(f"stream {stream!r} names no symbol")
    return symbol.upper()


# ------------------------------------------------------------------------------------------
# Events


class _Context:
    """What every event of one frame shares: where it came from and when it arrived."""

    def __init__(self, venue: str, market: str, ts_recv: int, time_unit: str) -> None:
        self.venue = venue
        self.market = market
        self.ts_recv = ts_recv
        self.time_unit = time_unit

    def time(self, value: Any) -> int:
        return ref_time(value, self.time_unit)

    def opt_time(self, value: Any) -> int | None:
        return ref_opt_time(value, self.time_unit)

    def event(
        self,
        *,
        kind: str,
        symbol: str,
        key_tail: str,
        seq: int | None,
        ts_event: int | None,
        ts_transaction: int | None,
        **fields: Any,
    ) -> dict[str, Any]:
        if not ref_str(symbol) or symbol != symbol.upper():
            raise ValueError(f"not an upper-case exchange symbol: {symbol!r}")
        return {
            "v": WIRE_VERSION,
            "venue": self.venue,
            "market": self.market,
            "symbol": symbol,
            "kind": kind,
            "key": f"{self.venue}:{self.market}:{symbol}:{kind}:{key_tail}",
            "seq": seq,
            "ts_event": ts_event,
            "ts_transaction": ts_transaction,
            "ts_recv": self.ts_recv,
            "trace": None,
            **fields,
        }


def _trade(c: _Context, d: dict[str, Any]) -> dict[str, Any]:
    trade_id = ref_id(d["t"])
    return c.event(
        kind="trade",
        symbol=d["s"],
        key_tail=str(trade_id),
        seq=trade_id,
        ts_event=c.time(d["E"]),
        ts_transaction=c.time(d["T"]),
        trade_id=trade_id,
        price=ref_price(d["p"]),
        qty=ref_nonneg_decimal(d["q"]),
        side=aggressor_side(d["m"]),
    )


def _agg_trade(c: _Context, d: dict[str, Any]) -> dict[str, Any]:
    agg_id = ref_id(d["a"])
    return c.event(
        kind="agg_trade",
        symbol=d["s"],
        key_tail=str(agg_id),
        seq=agg_id,
        ts_event=c.time(d["E"]),
        ts_transaction=c.time(d["T"]),
        trade_id=agg_id,
        first_trade_id=ref_opt_int(d.get("f")),
        last_trade_id=ref_opt_int(d.get("l")),
        price=ref_price(d["p"]),
        qty=ref_nonneg_decimal(d["q"]),
        side=aggressor_side(d["m"]),
    )


def _book_ticker(c: _Context, d: dict[str, Any]) -> dict[str, Any]:
    # spot bookTicker carries no E/T; futures carries both
    update_id = ref_id(d["u"])
    return c.event(
        kind="book_ticker",
        symbol=d["s"],
        key_tail=str(update_id),
        seq=update_id,
        ts_event=c.opt_time(d.get("E")),
        ts_transaction=c.opt_time(d.get("T")),
        update_id=update_id,
        # "0" prices: an empty side of the book
        bid_price=ref_nonneg_decimal(d["b"]),
        bid_qty=ref_nonneg_decimal(d["B"]),
        ask_price=ref_nonneg_decimal(d["a"]),
        ask_qty=ref_nonneg_decimal(d["A"]),
    )


def _book_delta(c: _Context, d: dict[str, Any]) -> dict[str, Any]:
    # spot depthUpdate has no T / pu; futures has both
    update_id = ref_id(d["u"])
    return c.event(
        kind="book_delta",
        symbol=d["s"],
        key_tail=str(update_id),
        seq=update_id,
        ts_event=c.time(d["E"]),
        ts_transaction=c.opt_time(d.get("T")),
        update_id=update_id,
        first_update_id=ref_id(d["U"]),
        prev_update_id=ref_opt_int(d.get("pu")),
        bids=ref_levels(d["b"]),
        asks=ref_levels(d["a"]),
    )


def _stream_snapshot(c: _Context, d: dict[str, Any], stream: str | None) -> dict[str, Any]:
    if "lastUpdateId" in d:
        # spot partial depth: {lastUpdateId, bids, asks}; the symbol is in the stream name
        if stream is None:
            raise ValueError("spot partial depth without a stream name has no symbol")
        update_id = ref_id(d["lastUpdateId"])
        return c.event(
            kind="book_snapshot",
            symbol=symbol_of_stream(stream),
            key_tail=f"stream:{update_id}",
            seq=update_id,
            ts_event=None,
            ts_transaction=None,
            update_id=update_id,
            first_update_id=None,
            prev_update_id=None,
            bids=ref_levels(d["bids"]),
            asks=ref_levels(d["asks"]),
            source="stream",
            verified_bids=None,
            verified_asks=None,
        )
    # futures partial depth: the depthUpdate shape
    update_id = ref_id(d["u"])
    return c.event(
        kind="book_snapshot",
        symbol=d["s"],
        key_tail=f"stream:{update_id}",
        seq=update_id,
        ts_event=c.time(d["E"]),
        ts_transaction=c.opt_time(d.get("T")),
        update_id=update_id,
        first_update_id=ref_id(d["U"]),
        prev_update_id=ref_opt_int(d.get("pu")),
        bids=ref_levels(d["b"]),
        asks=ref_levels(d["a"]),
        source="stream",
        verified_bids=None,
        verified_asks=None,
    )


def _kline(c: _Context, d: dict[str, Any]) -> dict[str, Any]:
    k = d["k"]
    interval = ref_str(k["i"])
    open_time = c.time(k["t"])
    ts_event = c.time(d["E"])
    closed = ref_bool(k["x"])
    return c.event(
        kind="kline",
        symbol=d["s"],
        key_tail=f"{interval}:{open_time}:{'x' if closed else ts_event}",
        seq=open_time,
        ts_event=ts_event,
        ts_transaction=None,
        interval=interval,
        open_time=open_time,
        close_time=c.time(k["T"]),
        first_trade_id=ref_int(k["f"]),
        last_trade_id=ref_int(k["L"]),
        open=ref_decimal(k["o"]),
        high=ref_decimal(k["h"]),
        low=ref_decimal(k["l"]),
        close=ref_decimal(k["c"]),
        volume=ref_decimal(k["v"]),
        quote_volume=ref_decimal(k["q"]),
        taker_buy_volume=ref_decimal(k["V"]),
        taker_buy_quote_volume=ref_decimal(k["Q"]),
        trades=ref_int(k["n"]),
        closed=closed,
    )


def _ticker(c: _Context, d: dict[str, Any], window: str | None) -> dict[str, Any]:
    if window is None:
        window = TICKER_WINDOW_BY_EVENT[d["e"]]
    ts_event = c.time(d["E"])
    # a field the window does not carry is null: .get() for all of them
    return c.event(
        kind="ticker",
        symbol=d["s"],
        key_tail=f"{window}:{ts_event}",
        seq=ts_event,
        ts_event=ts_event,
        ts_transaction=None,
        window=window,
        last_price=ref_opt_decimal(d.get("c")),
        open=ref_opt_decimal(d.get("o")),
        high=ref_opt_decimal(d.get("h")),
        low=ref_opt_decimal(d.get("l")),
        volume=ref_opt_decimal(d.get("v")),
        quote_volume=ref_opt_decimal(d.get("q")),
        price_change=ref_opt_decimal(d.get("p")),
        price_change_pct=ref_opt_decimal(d.get("P")),
        weighted_avg_price=ref_opt_decimal(d.get("w")),
        prev_close=ref_opt_decimal(d.get("x")),
        last_qty=ref_opt_decimal(d.get("Q")),
        bid_price=ref_opt_decimal(d.get("b")),
        bid_qty=ref_opt_decimal(d.get("B")),
        ask_price=ref_opt_decimal(d.get("a")),
        ask_qty=ref_opt_decimal(d.get("A")),
        open_time=c.opt_time(d.get("O")),
        close_time=c.opt_time(d.get("C")),
        first_trade_id=ref_opt_int(d.get("F")),
        last_trade_id=ref_opt_int(d.get("L")),
        trades=ref_opt_int(d.get("n")),
    )


def _mark_price(c: _Context, d: dict[str, Any]) -> dict[str, Any]:
    ts_event = c.time(d["E"])
    return c.event(
        kind="mark_price",
        symbol=d["s"],
        key_tail=str(ts_event),
        seq=ts_event,
        ts_event=ts_event,
        ts_transaction=None,  # markPrice's T is the next funding time
        mark_price=ref_opt_decimal(d.get("p")),
        index_price=ref_opt_decimal(d.get("i")),
        settle_price=ref_opt_decimal(d.get("P")),
        funding_rate=ref_opt_decimal(d.get("r")),
        next_funding_time=c.opt_time(d.get("T")),
    )


def _liquidation(c: _Context, d: dict[str, Any]) -> dict[str, Any]:
    o = d["o"]
    ts_event = c.time(d["E"])
    return c.event(
        kind="liquidation",
        symbol=o["s"],
        key_tail=str(ts_event),
        seq=ts_event,
        ts_event=ts_event,
        ts_transaction=c.opt_time(o.get("T")),
        side=ref_str(o["S"]).lower(),
        order_type=ref_opt_str(o.get("o")),
        time_in_force=ref_opt_str(o.get("f")),
        qty=ref_opt_nonneg_decimal(o.get("q")),
        price=ref_opt_nonneg_decimal(o.get("p")),
        avg_price=ref_opt_nonneg_decimal(o.get("ap")),
        status=ref_opt_str(o.get("X")),
        last_filled_qty=ref_opt_nonneg_decimal(o.get("l")),
        filled_qty=ref_opt_nonneg_decimal(o.get("z")),
    )


def _is_reply(msg: dict[str, Any]) -> bool:
    """Subscription ack ``{"result":..,"id":..}`` or error ``{"code":..,"msg":..}``."""
    if "e" in msg:
        return False
    return ("result" in msg and "id" in msg) or ("code" in msg and "msg" in msg)


def _kind_of_payload(d: dict[str, Any]) -> tuple[str | None, str | None]:
    """(kind, window) of a payload without a stream name, from its ``e`` (or its shape)."""
    if "e" in d:
        event_type = ref_str(d["e"])
        return KIND_BY_EVENT.get(event_type), TICKER_WINDOW_BY_EVENT.get(event_type)
    if "lastUpdateId" in d:
        return "book_snapshot", None  # spot partial depth
    if {"u", "s", "b", "B", "a", "A"} <= d.keys():
        return "book_ticker", None  # spot bookTicker has no e
    raise ValueError(f"payload of unknown shape: {sorted(d)}")


def _payload_event(
    c: _Context, d: Any, kind: str, window: str | None, stream: str | None
) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise ValueError(f"payload is not an object: {d!r}")
    if kind == "trade":
        return _trade(c, d)
    if kind == "agg_trade":
        return _agg_trade(c, d)
    if kind == "book_ticker":
        return _book_ticker(c, d)
    if kind == "book_delta":
        return _book_delta(c, d)
    if kind == "book_snapshot":
        return _stream_snapshot(c, d, stream)
    if kind == "kline":
        return _kline(c, d)
    if kind == "ticker":
        return _ticker(c, d, window)
    if kind == "mark_price":
        return _mark_price(c, d)
    if kind == "liquidation":
        return _liquidation(c, d)
    raise AssertionError(kind)


def _load(frame: bytes | str) -> Any:
    def no_constant(name: str) -> None:
        raise ValueError(f"not JSON: {name}")

    return json.loads(frame, parse_constant=no_constant)


def reference_events(
    frame: bytes | str,
    *,
    venue: str,
    market: str,
    ts_recv: int,
    time_unit: str = "ms",
    stream: str | None = None,
) -> list[dict[str, Any]]:
    """The wire-format dicts one WebSocket frame must produce, in order.

    ``frame`` is a combined-stream envelope ``{"stream":..,"data":..}`` (``data`` is a list
    for the ``!…@arr`` streams) or a raw payload (an object, or such a list); ``stream``
    names the stream of a raw ``/ws/<stream>`` connection, if known.  Acks, error frames
    and unknown event types give ``[]``.  The kind comes from the stream name when there is
    one, else from ``e``.
    """
    msg = _load(frame)
    if isinstance(msg, dict) and _is_reply(msg):
        return []
    if isinstance(msg, dict) and "stream" in msg and "data" in msg:
        stream = ref_str(msg["stream"])
        data = msg["data"]
    else:
        data = msg  # a raw payload: an object, or a list on a raw ``!…@arr`` connection
    c = _Context(venue, market, ts_recv, time_unit)
    payloads = data if isinstance(data, list) else [data]
    events = []
    for d in payloads:
        if not isinstance(d, dict):
            raise ValueError(f"payload is not an object: {d!r}")
        if stream is not None:
            kind, window = kind_of_stream(stream)
        else:
            kind, window = _kind_of_payload(d)
        if kind is None:
            continue  # unknown event type: skipped
        events.append(_payload_event(c, d, kind, window, stream))
    return events


def reference_rest_depth(
    body: bytes | str,
    *,
    venue: str,
    market: str,
    symbol: str,
    ts_recv: int,
    time_unit: str = "ms",
) -> dict[str, Any]:
    """The ``book_snapshot`` (source ``rest``) of a REST depth body for ``symbol``.

    Spot bodies are ``{lastUpdateId, bids, asks}``; futures add ``E`` and ``T``.
    """
    d = _load(body)
    if not isinstance(d, dict):
        raise ValueError("a REST depth body is a JSON object")
    c = _Context(venue, market, ts_recv, time_unit)
    update_id = ref_id(d["lastUpdateId"])
    return c.event(
        kind="book_snapshot",
        symbol=symbol,
        key_tail=f"rest:{update_id}",
        seq=update_id,
        ts_event=c.opt_time(d.get("E")),
        ts_transaction=c.opt_time(d.get("T")),
        update_id=update_id,
        first_update_id=None,
        prev_update_id=None,
        bids=ref_levels(d["bids"]),
        asks=ref_levels(d["asks"]),
        source="rest",
        verified_bids=None,
        verified_asks=None,
    )

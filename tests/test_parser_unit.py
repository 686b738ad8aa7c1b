"""FrameParser, one hand-written Binance frame per kind and shape.

Each test states the exact wire dict (docs/wire-format.md) the frame must become, plus the
Python views (Fixed / Decimal / float).  Frames follow Binance's payloads
(docs/wire-format.md); the times are made distinct (E != T) so that a swapped field cannot pass.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest

from meltica import (
    BookDepth,
    BookTicker,
    Fixed,
    FrameParser,
    Kline,
    Liquidation,
    MarkPrice,
    Reply,
    Ticker,
    Trade,
)
from meltica.errors import (
    FieldTypeError,
    FrameTooLarge,
    MalformedFrame,
    MissingField,
    NumberError,
    ParseError,
    ValueRangeError,
)

MS = 1_000_000  # ns per ms
TS_RECV = 1_723_161_254_087_896_568


def wire(
    kind: str,
    key: str,
    seq: int | None,
    ts_event: int | None,
    ts_transaction: int | None,
    *,
    market: str = "spot",
    symbol: str = "BTCUSDT",
    ts_recv: int = TS_RECV,
    **fields: Any,
) -> dict[str, Any]:
    """The expected wire dict: the common fields, then the kind's own."""
    return {
        "v": 1,
        "venue": "binance",
        "market": market,
        "symbol": symbol,
        "kind": kind,
        "key": key,
        "seq": seq,
        "ts_event": ts_event,
        "ts_transaction": ts_transaction,
        "ts_recv": ts_recv,
        "trace": None,
        **fields,
    }


def one(parser: FrameParser, frame: bytes | str | bytearray, ts_recv: int = TS_RECV) -> Any:
    events = parser.parse(frame, ts_recv)
    assert len(events) == 1, events
    return events[0]


def envelope(stream: str, data: bytes) -> bytes:
    return b'{"stream":"' + stream.encode() + b'","data":' + data + b"}"


# Trades


SPOT_TRADE = (
    b'{"e":"trade","E":1723161255343,"s":"BTCUSDT","t":3735683259,"p":"61837.63000000",'
    b'"q":"0.02000000","T":1723161255342,"m":true,"M":true}'
)
SPOT_TRADE_WIRE = wire(
    "trade",
    "binance:spot:BTCUSDT:trade:3735683259",
    3735683259,
    1723161255343 * MS,
    1723161255342 * MS,
    trade_id=3735683259,
    price="61837.63000000",
    qty="0.02000000",
    side="sell",
)


def test_spot_trade_combined() -> None:
    p = FrameParser()
    ev = one(p, envelope("btcusdt@trade", SPOT_TRADE))
    assert type(ev) is Trade
    assert ev.to_wire() == SPOT_TRADE_WIRE
    assert ev.key == "binance:spot:BTCUSDT:trade:3735683259"
    assert ev.kind == "trade"
    assert ev.seq == 3735683259
    assert ev.trade_id == 3735683259
    assert ev.first_trade_id is None
    assert ev.last_trade_id is None
    assert ev.side == "sell"
    assert (p.frames, p.events, p.unknown, p.errors, p.replies) == (1, 1, 0, 0, 0)


def test_trade_price_views() -> None:
    ev = one(FrameParser(), SPOT_TRADE)
    assert type(ev.price) is Fixed
    assert (ev.price.mantissa, ev.price.exponent) == (6183763000000, -8)
    assert str(ev.price) == "61837.63000000"
    assert ev.price.decimal == Decimal("61837.63")
    assert str(ev.price.decimal) == "61837.63000000"
    assert float(ev.price) == 61837.63
    assert ev.qty == Decimal("0.02")
    assert (ev.qty.mantissa, ev.qty.exponent) == (2000000, -8)


@pytest.mark.parametrize("stream", ["btcusdt@trade", None], ids=["raw-stream", "by-e"])
def test_spot_trade_raw(stream: str | None) -> None:
    ev = one(FrameParser(stream=stream), SPOT_TRADE)
    assert ev.to_wire() == SPOT_TRADE_WIRE


def test_usdm_trade_buyer_taker() -> None:
    frame = (
        b'{"e":"trade","E":1723161256322,"T":1723161256321,"s":"BTCUSDT","t":5266583935,'
        b'"p":"61800.30","q":"0.006","X":"MARKET","m":false}'
    )
    ev = one(FrameParser(market="usdm"), envelope("btcusdt@trade", frame))
    assert ev.to_wire() == wire(
        "trade",
        "binance:usdm:BTCUSDT:trade:5266583935",
        5266583935,
        1723161256322 * MS,
        1723161256321 * MS,
        market="usdm",
        trade_id=5266583935,
        price="61800.30",
        qty="0.006",
        side="buy",
    )


def test_spot_agg_trade() -> None:
    frame = (
        b'{"e":"aggTrade","E":1672515782136,"s":"BNBBTC","a":12345,"p":"0.001","q":"100",'
        b'"f":100,"l":105,"T":1672515782134,"m":true,"M":true}'
    )
    ev = one(FrameParser(), envelope("bnbbtc@aggTrade", frame))
    assert ev.to_wire() == wire(
        "agg_trade",
        "binance:spot:BNBBTC:agg_trade:12345",
        12345,
        1672515782136 * MS,
        1672515782134 * MS,
        symbol="BNBBTC",
        trade_id=12345,
        first_trade_id=100,
        last_trade_id=105,
        price="0.001",
        qty="100",
        side="sell",
    )
    assert (ev.first_trade_id, ev.last_trade_id) == (100, 105)
    assert ev.qty == 100


def test_usdm_agg_trade_with_extra_fields() -> None:
    # 2026 futures frames carry "nq" and "st"; both are ignored
    frame = (
        b'{"e":"aggTrade","E":1723161256330,"a":2253371219,"s":"BTCUSDT","p":"61800.20",'
        b'"q":"0.150","nq":"0.150","f":5266583936,"l":5266583938,"T":1723161256329,'
        b'"m":false,"st":0}'
    )
    ev = one(FrameParser(market="usdm"), envelope("btcusdt@aggTrade", frame))
    assert ev.to_wire() == wire(
        "agg_trade",
        "binance:usdm:BTCUSDT:agg_trade:2253371219",
        2253371219,
        1723161256330 * MS,
        1723161256329 * MS,
        market="usdm",
        trade_id=2253371219,
        first_trade_id=5266583936,
        last_trade_id=5266583938,
        price="61800.20",
        qty="0.150",
        side="buy",
    )


def test_coinm_agg_trade() -> None:
    frame = (
        b'{"e":"aggTrade","E":1591261134288,"a":424951,"s":"BTCUSD_PERP","p":"9643.5",'
        b'"q":"2","f":606073,"l":606074,"T":1591261134199,"m":false}'
    )
    ev = one(FrameParser(market="coinm", stream="btcusd_perp@aggTrade"), frame)
    assert ev.to_wire() == wire(
        "agg_trade",
        "binance:coinm:BTCUSD_PERP:agg_trade:424951",
        424951,
        1591261134288 * MS,
        1591261134199 * MS,
        market="coinm",
        symbol="BTCUSD_PERP",
        trade_id=424951,
        first_trade_id=606073,
        last_trade_id=606074,
        price="9643.5",
        qty="2",
        side="buy",
    )


# Book tickers


SPOT_BOOK_TICKER = (
    b'{"u":50093239212,"s":"BTCUSDT","b":"61837.63000000","B":"3.78826000",'
    b'"a":"61837.64000000","A":"1.54698000"}'
)
SPOT_BOOK_TICKER_WIRE = wire(
    "book_ticker",
    "binance:spot:BTCUSDT:book_ticker:50093239212",
    50093239212,
    None,
    None,
    update_id=50093239212,
    bid_price="61837.63000000",
    bid_qty="3.78826000",
    ask_price="61837.64000000",
    ask_qty="1.54698000",
)


@pytest.mark.parametrize(
    ("stream", "frame"),
    [
        (None, envelope("btcusdt@bookTicker", SPOT_BOOK_TICKER)),
        ("btcusdt@bookTicker", SPOT_BOOK_TICKER),
        (None, SPOT_BOOK_TICKER),
    ],
    ids=["combined", "raw-stream", "raw-by-shape"],
)
def test_spot_book_ticker_without_e(stream: str | None, frame: bytes) -> None:
    ev = one(FrameParser(stream=stream), frame)
    assert type(ev) is BookTicker
    assert ev.to_wire() == SPOT_BOOK_TICKER_WIRE
    assert ev.update_id == 50093239212
    assert ev.ts_event is None
    assert ev.bid_price == Fixed("61837.63")
    assert ev.ask_qty.decimal == Decimal("1.54698000")
    assert float(ev.bid_qty) == 3.78826


def test_usdm_book_ticker_with_e_and_times() -> None:
    frame = (
        b'{"e":"bookTicker","u":5123107839020,"s":"BTCUSDT","b":"61800.20","B":"2.507",'
        b'"a":"61800.30","A":"2.510","T":1723161256313,"E":1723161256314}'
    )
    ev = one(FrameParser(market="usdm"), envelope("btcusdt@bookTicker", frame))
    assert ev.to_wire() == wire(
        "book_ticker",
        "binance:usdm:BTCUSDT:book_ticker:5123107839020",
        5123107839020,
        1723161256314 * MS,
        1723161256313 * MS,
        market="usdm",
        update_id=5123107839020,
        bid_price="61800.20",
        bid_qty="2.507",
        ask_price="61800.30",
        ask_qty="2.510",
    )


# Depth


SPOT_PARTIAL = (
    b'{"lastUpdateId":160,"bids":[["0.0024","10"],["0.0023","0.5"]],"asks":[["0.0026","100"]]}'
)
SPOT_PARTIAL_WIRE = wire(
    "book_snapshot",
    "binance:spot:BTCUSDT:book_snapshot:stream:160",
    160,
    None,
    None,
    update_id=160,
    first_update_id=None,
    prev_update_id=None,
    bids=[["0.0024", "10"], ["0.0023", "0.5"]],
    asks=[["0.0026", "100"]],
    source="stream",
    verified_bids=None,
    verified_asks=None,
)


@pytest.mark.parametrize(
    ("stream", "frame"),
    [
        (None, envelope("btcusdt@depth5@100ms", SPOT_PARTIAL)),
        ("btcusdt@depth5@100ms", SPOT_PARTIAL),
    ],
    ids=["combined", "raw-stream"],
)
def test_spot_partial_depth_symbol_from_stream(stream: str | None, frame: bytes) -> None:
    ev = one(FrameParser(stream=stream), frame)
    assert type(ev) is BookDepth
    assert ev.to_wire() == SPOT_PARTIAL_WIRE
    assert ev.source == "stream"
    assert (ev.n_bids, ev.n_asks) == (2, 1)
    assert ev.bids == [(Fixed("0.0024"), Fixed("10")), (Fixed("0.0023"), Fixed("0.5"))]
    assert all(type(level) is tuple for level in ev.bids)
    assert all(type(x) is Fixed for level in ev.bids + ev.asks for x in level)
    assert str(ev.asks[0][0]) == "0.0026"
    assert ev.first_update_id is None
    assert ev.prev_update_id is None


def test_spot_partial_depth_without_stream_has_no_symbol() -> None:
    with pytest.raises(MissingField):
        FrameParser().parse(SPOT_PARTIAL)


def test_usdm_partial_depth_is_snapshot_with_ids() -> None:
    frame = (
        b'{"e":"depthUpdate","E":1723161256501,"T":1723161256493,"s":"BTCUSDT",'
        b'"U":5123107852900,"u":5123107852948,"pu":5123107852890,'
        b'"b":[["61800.20","2.909"],["61800.10","0.696"]],"a":[["61800.30","1.000"]]}'
    )
    ev = one(FrameParser(market="usdm"), envelope("btcusdt@depth10@100ms", frame))
    assert ev.to_wire() == wire(
        "book_snapshot",
        "binance:usdm:BTCUSDT:book_snapshot:stream:5123107852948",
        5123107852948,
        1723161256501 * MS,
        1723161256493 * MS,
        market="usdm",
        update_id=5123107852948,
        first_update_id=5123107852900,
        prev_update_id=5123107852890,
        bids=[["61800.20", "2.909"], ["61800.10", "0.696"]],
        asks=[["61800.30", "1.000"]],
        source="stream",
        verified_bids=None,
        verified_asks=None,
    )


def test_usdm_diff_depth_with_pu() -> None:
    frame = (
        b'{"e":"depthUpdate","E":1723161256299,"T":1723161256298,"s":"BTCUSDT",'
        b'"U":5123107832006,"u":5123107837557,"pu":5123107831937,'
        b'"b":[["58710.20","0.014"],["61510.90","0.000"]],"a":[]}'
    )
    ev = one(FrameParser(market="usdm"), envelope("btcusdt@depth@0ms", frame))
    assert ev.to_wire() == wire(
        "book_delta",
        "binance:usdm:BTCUSDT:book_delta:5123107837557",
        5123107837557,
        1723161256299 * MS,
        1723161256298 * MS,
        market="usdm",
        update_id=5123107837557,
        first_update_id=5123107832006,
        prev_update_id=5123107831937,
        bids=[["58710.20", "0.014"], ["61510.90", "0.000"]],
        asks=[],
    )
    assert ev.bids[1][1] == 0
    assert ev.asks == []


def test_spot_diff_depth_without_pu() -> None:
    frame = (
        b'{"e":"depthUpdate","E":1723161255308,"s":"BTCUSDT","U":50093239203,'
        b'"u":50093239207,"b":[["55653.87000000","0.00000000"]],'
        b'"a":[["61838.04000000","0.32332000"],["61844.30000000","0.40163000"]]}'
    )
    ev = one(FrameParser(), envelope("btcusdt@depth@100ms", frame))
    assert ev.to_wire() == wire(
        "book_delta",
        "binance:spot:BTCUSDT:book_delta:50093239207",
        50093239207,
        1723161255308 * MS,
        None,
        update_id=50093239207,
        first_update_id=50093239203,
        prev_update_id=None,
        bids=[["55653.87000000", "0.00000000"]],
        asks=[["61838.04000000", "0.32332000"], ["61844.30000000", "0.40163000"]],
    )


# REST depth snapshots


def test_rest_depth_spot() -> None:
    body = (
        b'{"lastUpdateId":1027024,"bids":[["4.00000000","431.00000000"]],'
        b'"asks":[["4.00000200","12.00000000"],["4.00000300","1.00000000"]]}'
    )
    p = FrameParser()
    ev = p.parse_rest_depth(body, "bnbbtc", 9)
    assert ev.to_wire() == wire(
        "book_snapshot",
        "binance:spot:BNBBTC:book_snapshot:rest:1027024",
        1027024,
        None,
        None,
        symbol="BNBBTC",
        ts_recv=9,
        update_id=1027024,
        first_update_id=None,
        prev_update_id=None,
        bids=[["4.00000000", "431.00000000"]],
        asks=[["4.00000200", "12.00000000"], ["4.00000300", "1.00000000"]],
        source="rest",
        verified_bids=None,
        verified_asks=None,
    )
    assert ev.source == "rest"
    assert (p.frames, p.events, p.errors) == (1, 1, 0)


def test_rest_depth_usdm_has_event_and_transaction_time() -> None:
    body = (
        '{"lastUpdateId":5123107852948,"E":1723161256501,"T":1723161256493,'
        '"bids":[["61800.20","2.909"]],"asks":[["61800.30","1.000"]]}'
    )
    ev = FrameParser(market="usdm").parse_rest_depth(body, "BTCUSDT", 9)
    assert ev.to_wire() == wire(
        "book_snapshot",
        "binance:usdm:BTCUSDT:book_snapshot:rest:5123107852948",
        5123107852948,
        1723161256501 * MS,
        1723161256493 * MS,
        market="usdm",
        ts_recv=9,
        update_id=5123107852948,
        first_update_id=None,
        prev_update_id=None,
        bids=[["61800.20", "2.909"]],
        asks=[["61800.30", "1.000"]],
        source="rest",
        verified_bids=None,
        verified_asks=None,
    )


def test_rest_depth_rejects_a_stream_frame_and_missing_asks() -> None:
    p = FrameParser()
    with pytest.raises(MalformedFrame):
        p.parse_rest_depth(envelope("btcusdt@depth5", SPOT_PARTIAL), "BTCUSDT")
    with pytest.raises(MissingField):
        p.parse_rest_depth(b'{"lastUpdateId":1,"bids":[]}', "BTCUSDT")
    assert (p.frames, p.events, p.errors) == (2, 0, 2)


# Klines

KLINE = (
    b'{"e":"kline","E":1672515782136,"s":"BNBBTC","k":{"t":1672515780000,"T":1672515839999,'
    b'"s":"BNBBTC","i":"1m","f":100,"L":200,"o":"0.0010","c":"0.0020","h":"0.0025",'
    b'"l":"0.0015","v":"1000","n":100,"x":%s,"q":"1.0000","V":"500","Q":"0.500","B":"123456"}}'
)
KLINE_FIELDS = {
    "interval": "1m",
    "open_time": 1672515780000 * MS,
    "close_time": 1672515839999 * MS,
    "first_trade_id": 100,
    "last_trade_id": 200,
    "open": "0.0010",
    "high": "0.0025",
    "low": "0.0015",
    "close": "0.0020",
    "volume": "1000",
    "quote_volume": "1.0000",
    "taker_buy_volume": "500",
    "taker_buy_quote_volume": "0.500",
    "trades": 100,
}


def test_kline_open_key_has_event_time() -> None:
    ev = one(FrameParser(), envelope("bnbbtc@kline_1m", KLINE % b"false"))
    assert type(ev) is Kline
    key = "binance:spot:BNBBTC:kline:1m:1672515780000000000:1672515782136000000"
    assert ev.to_wire() == wire(
        "kline",
        key,
        1672515780000 * MS,
        1672515782136 * MS,
        None,
        symbol="BNBBTC",
        **KLINE_FIELDS,
        closed=False,
    )
    assert ev.closed is False
    assert ev.interval == "1m"
    assert ev.open == Fixed("0.001")
    assert ev.taker_buy_quote_volume.decimal == Decimal("0.500")


def test_kline_closed_key_ends_in_x() -> None:
    ev = one(FrameParser(), envelope("bnbbtc@kline_1m", KLINE % b"true"))
    assert ev.key == "binance:spot:BNBBTC:kline:1m:1672515780000000000:x"
    assert ev.to_wire() == wire(
        "kline",
        ev.key,
        1672515780000 * MS,
        1672515782136 * MS,
        None,
        symbol="BNBBTC",
        **KLINE_FIELDS,
        closed=True,
    )
    assert ev.closed is True


# Tickers

TICKER_NULLS = dict.fromkeys(
    (
        "last_price",
        "open",
        "high",
        "low",
        "volume",
        "quote_volume",
        "price_change",
        "price_change_pct",
        "weighted_avg_price",
        "prev_close",
        "last_qty",
        "bid_price",
        "bid_qty",
        "ask_price",
        "ask_qty",
        "open_time",
        "close_time",
        "first_trade_id",
        "last_trade_id",
        "trades",
    )
)


def ticker_wire(window: str, e_ms: int, symbol: str = "BNBBTC", **fields: Any) -> dict[str, Any]:
    return wire(
        "ticker",
        f"binance:spot:{symbol}:ticker:{window}:{e_ms * MS}",
        e_ms * MS,
        e_ms * MS,
        None,
        symbol=symbol,
        window=window,
        **{**TICKER_NULLS, **fields},
    )


def test_24hr_ticker_every_field() -> None:
    frame = (
        b'{"e":"24hrTicker","E":1672515782136,"s":"BNBBTC","p":"0.0015","P":"250.00",'
        b'"w":"0.0018","x":"0.0009","c":"0.0025","Q":"10","b":"0.0024","B":"10.5",'
        b'"a":"0.0026","A":"100","o":"0.0010","h":"0.0025","l":"0.0010","v":"10000",'
        b'"q":"18","O":1672429382136,"C":1672515782135,"F":0,"L":18150,"n":18151}'
    )
    ev = one(FrameParser(), envelope("bnbbtc@ticker", frame))
    assert type(ev) is Ticker
    assert ev.to_wire() == ticker_wire(
        "24h",
        1672515782136,
        last_price="0.0025",
        open="0.0010",
        high="0.0025",
        low="0.0010",
        volume="10000",
        quote_volume="18",
        price_change="0.0015",
        price_change_pct="250.00",
        weighted_avg_price="0.0018",
        prev_close="0.0009",
        last_qty="10",
        bid_price="0.0024",
        bid_qty="10.5",
        ask_price="0.0026",
        ask_qty="100",
        open_time=1672429382136 * MS,
        close_time=1672515782135 * MS,
        first_trade_id=0,
        last_trade_id=18150,
        trades=18151,
    )
    assert ev.window == "24h"
    assert ev.last_price == Fixed("0.0025")
    assert ev.trades == 18151
    assert ev.open_time == 1672429382136 * MS


def test_usdm_24hr_ticker_lacks_book_and_prev_close() -> None:
    frame = (
        b'{"e":"24hrTicker","E":1591268262453,"s":"BTCUSDT","p":"-94.99999800",'
        b'"P":"-0.974","w":"9650.24466300","c":"9659.99000000","Q":"0.041","o":"9754.99999800",'
        b'"h":"9765.00000000","l":"9557.00000000","v":"12357.549","q":"119284012.60",'
        b'"O":1591181820000,"C":1591268262442,"F":512014,"L":615289,"n":103272}'
    )
    ev = one(FrameParser(market="usdm"), envelope("btcusdt@ticker", frame))
    assert ev.to_wire() == {
        **ticker_wire("24h", 1591268262453, symbol="BTCUSDT"),
        "market": "usdm",
        "key": "binance:usdm:BTCUSDT:ticker:24h:1591268262453000000",
        "last_price": "9659.99000000",
        "open": "9754.99999800",
        "high": "9765.00000000",
        "low": "9557.00000000",
        "volume": "12357.549",
        "quote_volume": "119284012.60",
        "price_change": "-94.99999800",
        "price_change_pct": "-0.974",
        "weighted_avg_price": "9650.24466300",
        "last_qty": "0.041",
        "open_time": 1591181820000 * MS,
        "close_time": 1591268262442 * MS,
        "first_trade_id": 512014,
        "last_trade_id": 615289,
        "trades": 103272,
    }
    assert (ev.prev_close, ev.bid_price, ev.ask_qty) == (None, None, None)


def test_mini_ticker_has_only_six_decimals() -> None:
    frame = (
        b'{"e":"24hrMiniTicker","E":1672515782136,"s":"BNBBTC","c":"0.0025","o":"0.0010",'
        b'"h":"0.0025","l":"0.0010","v":"10000","q":"18"}'
    )
    ev = one(FrameParser(), envelope("bnbbtc@miniTicker", frame))
    assert ev.to_wire() == ticker_wire(
        "mini",
        1672515782136,
        last_price="0.0025",
        open="0.0010",
        high="0.0025",
        low="0.0010",
        volume="10000",
        quote_volume="18",
    )
    assert ev.bid_price is None
    assert ev.trades is None


def test_1h_rolling_ticker() -> None:
    frame = (
        b'{"e":"1hTicker","E":1672515782136,"s":"BNBBTC","p":"0.0015","P":"250.00",'
        b'"o":"0.0010","h":"0.0025","l":"0.0010","c":"0.0025","w":"0.0018","v":"10000",'
        b'"q":"18","O":1672512182136,"C":1672515782135,"F":0,"L":18150,"n":18151}'
    )
    ev = one(FrameParser(), envelope("bnbbtc@ticker_1h", frame))
    assert ev.to_wire() == ticker_wire(
        "1h",
        1672515782136,
        last_price="0.0025",
        open="0.0010",
        high="0.0025",
        low="0.0010",
        volume="10000",
        quote_volume="18",
        price_change="0.0015",
        price_change_pct="250.00",
        weighted_avg_price="0.0018",
        open_time=1672512182136 * MS,
        close_time=1672515782135 * MS,
        first_trade_id=0,
        last_trade_id=18150,
        trades=18151,
    )


MINI_ARR = (
    b'[{"e":"24hrMiniTicker","E":1700000000001,"s":"BTCUSDT","c":"1.1","o":"1.0","h":"1.2",'
    b'"l":"0.9","v":"10","q":"11"},'
    b'{"e":"24hrMiniTicker","E":1700000000002,"s":"ETHUSDT","c":"2.1","o":"2.0","h":"2.2",'
    b'"l":"1.9","v":"20","q":"42"},'
    b'{"e":"24hrMiniTicker","E":1700000000003,"s":"BNBBTC","c":"3.1","o":"3.0","h":"3.2",'
    b'"l":"2.9","v":"30","q":"93"}]'
)
MINI_ARR_WIRE = [
    ticker_wire(
        "mini",
        1700000000000 + i,
        symbol=sym,
        last_price=f"{i}.1",
        open=f"{i}.0",
        high=f"{i}.2",
        low=f"{i - 1}.9",
        volume=f"{10 * i}",
        quote_volume=q,
    )
    for i, sym, q in ((1, "BTCUSDT", "11"), (2, "ETHUSDT", "42"), (3, "BNBBTC", "93"))
]


@pytest.mark.parametrize(
    ("stream", "frame"),
    [
        (None, envelope("!miniTicker@arr", MINI_ARR)),
        ("!miniTicker@arr", MINI_ARR),
        (None, MINI_ARR),
    ],
    ids=["combined", "raw-stream", "raw-by-e"],
)
def test_mini_ticker_array_gives_one_event_per_item(stream: str | None, frame: bytes) -> None:
    p = FrameParser(stream=stream)
    events = p.parse(frame, TS_RECV)
    assert [ev.to_wire() for ev in events] == MINI_ARR_WIRE
    assert (p.frames, p.events, p.unknown, p.errors) == (1, 3, 0, 0)


def test_rolling_ticker_array_window_from_event_type() -> None:
    item = (
        b'{"e":"4hTicker","E":1672515782136,"s":"%s","p":"1","P":"2","o":"3","h":"4",'
        b'"l":"5","c":"6","w":"7","v":"8","q":"9","O":1672501382136,"C":1672515782135,'
        b'"F":1,"L":2,"n":2}'
    )
    frame = envelope("!ticker_4h@arr", b"[" + item % b"BTCUSDT" + b"," + item % b"ETHUSDT" + b"]")
    events = FrameParser().parse(frame)
    assert [(ev.symbol, ev.window, ev.key) for ev in events] == [
        ("BTCUSDT", "4h", "binance:spot:BTCUSDT:ticker:4h:1672515782136000000"),
        ("ETHUSDT", "4h", "binance:spot:ETHUSDT:ticker:4h:1672515782136000000"),
    ]
    assert events[1].weighted_avg_price == Fixed("7")


# Futures-only kinds


MARK = (
    b'{"e":"markPriceUpdate","E":1562305380000,"s":"%s","p":"11794.15000000",'
    b'"i":"11784.62659091","P":"11784.25641265","r":"-0.00038167","T":1562306400000}'
)


def test_mark_price_negative_funding() -> None:
    ev = one(FrameParser(market="usdm"), envelope("btcusdt@markPrice@1s", MARK % b"BTCUSDT"))
    assert type(ev) is MarkPrice
    assert ev.to_wire() == wire(
        "mark_price",
        "binance:usdm:BTCUSDT:mark_price:1562305380000000000",
        1562305380000 * MS,
        1562305380000 * MS,
        None,
        market="usdm",
        mark_price="11794.15000000",
        index_price="11784.62659091",
        settle_price="11784.25641265",
        funding_rate="-0.00038167",
        next_funding_time=1562306400000 * MS,
    )
    assert ev.funding_rate.decimal == Decimal("-0.00038167")
    assert (ev.funding_rate.mantissa, ev.funding_rate.exponent) == (-38167, -8)
    assert float(ev.funding_rate) == -0.00038167
    assert ev.next_funding_time == 1562306400000 * MS


def test_mark_price_array() -> None:
    frame = b"[" + MARK % b"BTCUSDT" + b"," + MARK % b"ETHUSDT" + b"]"
    events = FrameParser(market="usdm").parse(envelope("!markPrice@arr@1s", frame))
    assert [ev.key for ev in events] == [
        "binance:usdm:BTCUSDT:mark_price:1562305380000000000",
        "binance:usdm:ETHUSDT:mark_price:1562305380000000000",
    ]


def test_force_order_usdm() -> None:
    frame = (
        b'{"e":"forceOrder","E":1568014460893,"o":{"s":"BTCUSDT","S":"SELL","o":"LIMIT",'
        b'"f":"IOC","q":"0.014","p":"9910","ap":"9910.5","X":"FILLED","l":"0.010",'
        b'"z":"0.014","T":1568014460890}}'
    )
    ev = one(FrameParser(market="usdm"), envelope("btcusdt@forceOrder", frame))
    assert type(ev) is Liquidation
    assert ev.to_wire() == wire(
        "liquidation",
        "binance:usdm:BTCUSDT:liquidation:1568014460893000000",
        1568014460893 * MS,
        1568014460893 * MS,
        1568014460890 * MS,
        market="usdm",
        side="sell",
        order_type="LIMIT",
        time_in_force="IOC",
        status="FILLED",
        qty="0.014",
        price="9910",
        avg_price="9910.5",
        last_filled_qty="0.010",
        filled_qty="0.014",
    )
    assert ev.avg_price == Decimal("9910.5")


def test_force_order_coinm_all_market() -> None:
    frame = (
        b'[{"e":"forceOrder","E":1591154240950,"o":{"s":"BTCUSD_PERP","ps":"BTCUSD",'
        b'"S":"BUY","o":"LIMIT","f":"IOC","q":"1","p":"9425.5","ap":"9496.5","X":"FILLED",'
        b'"l":"1","z":"1","T":1591154240949}}]'
    )
    ev = one(FrameParser(market="coinm"), envelope("!forceOrder@arr", frame))
    assert ev.key == "binance:coinm:BTCUSD_PERP:liquidation:1591154240950000000"
    assert (ev.market, ev.symbol, ev.side, ev.price) == (
        "coinm",
        "BTCUSD_PERP",
        "buy",
        Fixed("9425.5"),
    )
    assert ev.ts_transaction == 1591154240949 * MS


# Time unit


def test_microsecond_times_scale_by_1000() -> None:
    frame = (
        b'{"e":"trade","E":1723161255343123,"s":"BTCUSDT","t":1,"p":"1.0","q":"2.0",'
        b'"T":1723161255342456,"m":false,"M":true}'
    )
    p = FrameParser(time_unit="us")
    ev = one(p, frame)
    assert (ev.ts_event, ev.ts_transaction) == (1723161255343123000, 1723161255342456000)
    kline = one(p, envelope("bnbbtc@kline_1m", KLINE.replace(b"000,", b"000123,") % b"false"))
    assert kline.open_time == 1672515780000123 * 1000
    assert kline.key == "binance:spot:BNBBTC:kline:1m:1672515780000123000:1672515782136000"


def test_time_out_of_range_is_number_error() -> None:
    p = FrameParser()
    with pytest.raises(NumberError, match="out of range"):
        p.parse(SPOT_TRADE.replace(b'"E":1723161255343', b'"E":-1'))
    # the largest ms value whose ns still fits int64 is 9223372036854
    with pytest.raises(NumberError, match="out of range"):
        p.parse(SPOT_TRADE.replace(b'"E":1723161255343', b'"E":9223372036855'))
    ev = one(p, SPOT_TRADE.replace(b'"E":1723161255343', b'"E":9223372036854'))
    assert ev.ts_event == 9223372036854 * MS


# Replies


def test_replies_and_counters() -> None:
    p = FrameParser()
    ack = one(p, b'{"result":null,"id":1}', 5)
    assert type(ack) is Reply
    assert (ack.kind, ack.id, ack.result, ack.code, ack.msg) == ("ack", 1, None, None, None)
    assert ack.ts_recv == 5

    listing = one(p, b'{"result":["btcusdt@aggTrade","btcusdt@depth"],"id":3}')
    assert (listing.kind, listing.id) == ("ack", 3)

    named = one(p, b'{"result":null,"id":"sub-42"}')
    assert (named.kind, named.id) == ("ack", "sub-42")

    error = one(p, b'{"code":2,"msg":"Invalid request"}')
    assert (error.kind, error.code, error.msg, error.id) == ("error", 2, "Invalid request", None)

    error_id = one(p, b'{"code":0,"msg":"Unknown property","id":7}')
    assert (error_id.kind, error_id.code, error_id.id) == ("error", 0, 7)

    bye = one(p, b'{"e":"serverShutdown","E":1723161255000}')
    assert (bye.kind, bye.ts_event) == ("server_shutdown", 1723161255000 * MS)

    bye2 = one(p, envelope("!serverShutdown", b'{"e":"serverShutdown","E":1723161255001}'))
    assert (bye2.kind, bye2.ts_event) == ("server_shutdown", 1723161255001 * MS)

    assert (p.frames, p.events, p.unknown, p.errors, p.replies) == (7, 0, 0, 0, 7)


def test_list_subscriptions_reply_keeps_result_list() -> None:
    reply = one(FrameParser(), b'{"result":["btcusdt@aggTrade","btcusdt@depth"],"id":3}')
    assert (reply.kind, reply.id) == ("ack", 3)
    assert reply.result == ["btcusdt@aggTrade", "btcusdt@depth"]


def test_get_property_reply_keeps_boolean_result() -> None:
    reply = one(FrameParser(), b'{"result":true,"id":2}')
    assert (reply.kind, reply.id, reply.result) == ("ack", 2, True)


def test_ack_with_null_id_is_a_reply() -> None:
    p = FrameParser()
    reply = one(p, b'{"result":null,"id":null}')
    assert (reply.kind, reply.id, reply.result) == ("ack", None, None)
    assert (p.replies, p.unknown) == (1, 0)


def test_server_shutdown_on_a_raw_stream_connection() -> None:
    p = FrameParser(stream="btcusdt@trade")
    reply = one(p, b'{"e":"serverShutdown","E":1723161255000}')
    assert (reply.kind, reply.ts_event) == ("server_shutdown", 1723161255000 * MS)
    assert (p.replies, p.events, p.errors) == (1, 0, 0)


@pytest.mark.parametrize(
    ("frame", "kind"),
    [(b'{"result":null,"id":1}', "ack"), (b'{"code":2,"msg":"Invalid request"}', "error")],
    ids=["ack", "error"],
)
def test_replies_on_a_raw_stream_connection(frame: bytes, kind: str) -> None:
    p = FrameParser(stream="btcusdt@trade")
    assert one(p, frame).kind == kind
    assert (p.replies, p.errors) == (1, 0)


# Unknown event types


def test_unknown_event_types_are_counted_and_skipped() -> None:
    avg = (
        b'{"e":"avgPrice","E":1693907033000,"s":"BTCUSDT","i":"5m","w":"25776.86000000",'
        b'"T":1693907032213}'
    )
    ref = b'{"e":"referencePrice","s":"BTCUSDT","r":null,"t":1693907033000}'
    p = FrameParser()
    assert p.parse(avg) == []
    assert p.parse(envelope("btcusdt@avgPrice", avg)) == []
    assert p.parse(envelope("btcusdt@referencePrice", ref)) == []
    assert FrameParser(stream="btcusdt@avgPrice").parse(avg) == []
    assert (p.frames, p.events, p.unknown, p.errors, p.replies) == (3, 0, 3, 0, 0)
    assert one(p, SPOT_TRADE).to_wire() == SPOT_TRADE_WIRE


# Errors


def trade_with(old: bytes, new: bytes) -> bytes:
    assert old in SPOT_TRADE
    return SPOT_TRADE.replace(old, new)


def depth5(bids: bytes) -> bytes:
    return envelope("btcusdt@depth5", b'{"lastUpdateId":1,"bids":' + bids + b',"asks":[]}')


ERRORS = [
    ("not-json", b"not json", MalformedFrame),
    ("truncated", SPOT_TRADE[:-7], MalformedFrame),
    ("truncated-envelope", b'{"stream":"btcusdt@trade","data":{"e":"tra', MalformedFrame),
    ("trailing-garbage", SPOT_TRADE + b" x", MalformedFrame),
    ("trailing-object", SPOT_TRADE + b"{}", MalformedFrame),
    ("top-level-string", b'"trade"', MalformedFrame),
    ("top-level-number", b"42", MalformedFrame),
    ("top-level-null", b"null", MalformedFrame),
    ("missing-price", trade_with(b'"p":"61837.63000000",', b""), MissingField),
    ("missing-maker-flag", trade_with(b',"m":true', b""), MissingField),
    ("missing-data", b'{"stream":"btcusdt@trade"}', MissingField),
    ("missing-kline-k", b'{"e":"kline","E":1,"s":"BTCUSDT"}', MissingField),
    ("string-for-int", trade_with(b'"t":3735683259', b'"t":"3735683259"'), FieldTypeError),
    ("bool-for-int", trade_with(b'"t":3735683259', b'"t":true'), FieldTypeError),
    ("float-for-price", trade_with(b'"p":"61837.63000000"', b'"p":61837.63'), FieldTypeError),
    ("int-for-price", trade_with(b'"p":"61837.63000000"', b'"p":61837'), FieldTypeError),
    ("string-for-bool", trade_with(b'"m":true', b'"m":"true"'), FieldTypeError),
    ("data-not-object", b'{"stream":"btcusdt@trade","data":5}', FieldTypeError),
    ("price-exponent", trade_with(b'"61837.63000000"', b'"1e5"'), NumberError),
    ("price-letters", trade_with(b'"61837.63000000"', b'"abc"'), NumberError),
    ("price-two-dots", trade_with(b'"61837.63000000"', b'"1.2.3"'), NumberError),
    ("price-plus", trade_with(b'"61837.63000000"', b'"+1.0"'), NumberError),
    ("price-empty", trade_with(b'"61837.63000000"', b'""'), NumberError),
    ("price-escaped", trade_with(b'"61837.63000000"', b'"1\\u002e5"'), NumberError),
    ("int-overflow", trade_with(b"3735683259", b"9223372036854775808"), NumberError),
    ("int-20-digits", trade_with(b"3735683259", b"99999999999999999999"), NumberError),
    ("float-for-int", trade_with(b"3735683259", b"3735683259.5"), NumberError),
    ("level-three-items", depth5(b'[["1","2","3"]]'), MalformedFrame),
    ("level-number", depth5(b'[["1",2]]'), FieldTypeError),
    ("level-not-array", depth5(b'["1","2"]'), FieldTypeError),
    ("level-bad-decimal", depth5(b'[["1","x"]]'), NumberError),
    ("liquidation-side", b'{"e":"forceOrder","E":1,"o":{"s":"A","S":"UP"}}', MalformedFrame),
]


@pytest.mark.parametrize(("frame", "error"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_bad_frame_raises_its_class_and_parser_recovers(frame: bytes, error: type) -> None:
    assert issubclass(error, ParseError)
    assert issubclass(error, ValueError)
    p = FrameParser()
    with pytest.raises(error):
        p.parse(frame)
    assert (p.frames, p.events, p.errors) == (1, 0, 1)
    # the same parser goes on with the next good frame
    assert one(p, envelope("btcusdt@trade", SPOT_TRADE)).to_wire() == SPOT_TRADE_WIRE
    assert (p.frames, p.events, p.errors) == (2, 1, 1)


def test_int64_max_id_is_accepted() -> None:
    ev = one(FrameParser(), trade_with(b"3735683259", b"9223372036854775807"))
    assert ev.trade_id == 9223372036854775807
    assert ev.key == "binance:spot:BTCUSDT:trade:9223372036854775807"


def test_frame_over_max_frame_bytes() -> None:
    p = FrameParser(max_frame_bytes=64)
    ack = b'{"result":null,"id":1}'
    exact = ack + b" " * (64 - len(ack))
    assert one(p, exact).kind == "ack"
    with pytest.raises(FrameTooLarge, match="65 bytes"):
        p.parse(exact + b" ")
    with pytest.raises(FrameTooLarge):
        p.parse_rest_depth(b'{"lastUpdateId":1,"bids":[],"asks":[]}' + b" " * 40, "BTCUSDT")
    assert issubclass(FrameTooLarge, ParseError)
    assert (p.frames, p.replies, p.errors) == (3, 1, 2)


@pytest.mark.parametrize(
    ("frame", "error", "field"),
    [
        (trade_with(b'"p":"61837.63000000",', b""), MissingField, "'p'"),
        (trade_with(b'"t":3735683259', b'"t":"3735683259"'), FieldTypeError, "'t'"),
        (trade_with(b'"61837.63000000"', b'"1e5"'), NumberError, "'p'"),
        (trade_with(b"3735683259", b"9223372036854775808"), NumberError, "'t'"),
    ],
    ids=["missing", "type", "decimal", "overflow"],
)
def test_error_names_the_field(frame: bytes, error: type, field: str) -> None:
    with pytest.raises(error, match=field):
        FrameParser().parse(frame)


def test_error_names_envelope_and_level_fields() -> None:
    # these paths set the key code directly and do name the field
    with pytest.raises(MissingField, match="'data'"):
        FrameParser().parse(b'{"stream":"btcusdt@trade"}')
    with pytest.raises(MissingField, match="'k'"):
        FrameParser().parse(b'{"e":"kline","E":1,"s":"BTCUSDT"}')
    with pytest.raises(NumberError, match="'b'"):
        FrameParser().parse(b'{"e":"depthUpdate","E":1,"s":"A","U":1,"u":2,"b":[["1","x"]]}')


# Symbols


def test_symbols_are_interned() -> None:
    p = FrameParser()
    eth = SPOT_TRADE.replace(b"BTCUSDT", b"ETHUSDT")
    first, other, again = (one(p, f) for f in (SPOT_TRADE, eth, SPOT_TRADE))
    ticker = one(p, SPOT_BOOK_TICKER)
    assert first.symbol == "BTCUSDT"
    assert other.symbol == "ETHUSDT"
    assert again.symbol is first.symbol
    assert ticker.symbol is first.symbol


def test_interleaved_streams_and_symbols_keep_their_routes() -> None:
    # many streams and symbols, interleaved so the one-entry caches miss: each
    # frame still gets its own stream's kind and symbol, interned once
    p = FrameParser()
    symbols = [f"S{i}USDT" for i in range(40)]
    got = []
    for rnd in range(3):
        for i, sym in enumerate(symbols):
            low = sym.lower()
            trade = (
                f'{{"stream":"{low}@trade","data":{{"e":"trade","E":1,"s":"{sym}","t":{rnd},'
                '"p":"1","q":"1","T":1,"m":true}}'
            )
            ticker = (
                f'{{"stream":"{low}@bookTicker","data":{{"u":{i},"s":"{sym}","b":"1",'
                '"B":"1","a":"2","A":"1"}}'
            )
            got += [one(p, trade.encode()), one(p, ticker.encode())]
    assert [(ev.kind, ev.symbol) for ev in got] == [
        (kind, sym) for _ in range(3) for sym in symbols for kind in ("trade", "book_ticker")
    ]
    first = {ev.symbol: ev.symbol for ev in got[: 2 * len(symbols)]}
    assert all(ev.symbol is first[ev.symbol] for ev in got)


def _partial_on(sym: str) -> bytes:
    # no "s" in a partial depth frame: its symbol comes from its stream's route
    return envelope(f"{sym.lower()}@depth5", SPOT_PARTIAL)


def _trade_on(sym: str) -> bytes:
    return envelope(f"{sym.lower()}@trade", SPOT_TRADE.replace(b"BTCUSDT", sym.encode()))


def test_many_and_long_names_keep_their_routes() -> None:
    # enough streams and symbols that the parser's name tables grow many times,
    # and some names longer than a table slot holds inline (compared at their
    # stored copy), sharing a 48-byte prefix; after each new name (the tables
    # may just have grown) an older one is looked up again, twice
    p = FrameParser()
    symbols = [f"{'L' * 48}{i}" for i in range(12)] + [f"S{i}USDT" for i in range(1500)]
    by_route: dict[str, str] = {}
    by_symbol: dict[str, str] = {}
    for i, sym in enumerate(symbols):
        for s in (sym, symbols[i // 2], symbols[i // 2]):
            routed, traded = one(p, _partial_on(s)), one(p, _trade_on(s))
            assert routed.symbol == traded.symbol == s
            assert by_route.setdefault(s, routed.symbol) is routed.symbol
            assert by_symbol.setdefault(s, traded.symbol) is traded.symbol


def test_a_flood_of_names_resets_the_tables_and_they_still_route() -> None:
    # past MAX_ROUTES (65,536 in parser.pyx) distinct streams and symbols the
    # parser forgets them all, so memory stays bounded, and starts again: old
    # names come back as new ones, and every frame still gets its own symbol
    p = FrameParser()
    n = 65_536 + 300
    for i in range(n):
        assert one(p, _trade_on(f"F{i}X")).symbol == f"F{i}X"
    for i in (*range(0, n, 997), n - 1, 65_535, 65_536, 0, 1, n - 1):
        sym = f"F{i}X"
        assert one(p, _partial_on(sym)).symbol == one(p, _trade_on(sym)).symbol == sym


def test_escaped_symbol_is_decoded_or_rejected() -> None:
    frame = SPOT_TRADE.replace(b'"BTCUSDT"', b'"BTC\\u0055SDT"')
    try:
        ev = one(FrameParser(), frame)
    except ParseError:
        return
    assert ev.symbol == "BTCUSDT"


# Decimal edge cases


@pytest.mark.parametrize(
    ("text", "mantissa", "exponent", "wire_text"),
    [
        ("0.00000000", 0, -8, "0.00000000"),
        ("-0.00010000", -10000, -8, "-0.00010000"),
        ("123456789012345678", 123456789012345678, 0, "123456789012345678"),
        ("1234567890.12345678", 123456789012345678, -8, "1234567890.12345678"),
        ("92233720368.54775807", 9223372036854775807, -8, "92233720368.54775807"),
        ("-92233720368.54775807", -9223372036854775807, -8, "-92233720368.54775807"),
        # 25 digits: fits only once trailing zeros are dropped, as few as needed (19 digits
        # still fit int64 here); the value is kept
        ("12345.67890123456780000000", 1234567890123456780, -14, "12345.67890123456780"),
    ],
)
def test_decimal_edge_cases(text: str, mantissa: int, exponent: int, wire_text: str) -> None:
    # the funding rate: a decimal that may be zero or negative
    frame = MARK.replace(b'"-0.00038167"', b'"' + text.encode() + b'"') % b"BTCUSDT"
    ev = one(FrameParser(market="usdm"), frame)
    assert (ev.funding_rate.mantissa, ev.funding_rate.exponent) == (mantissa, exponent)
    assert ev.to_wire()["funding_rate"] == wire_text
    assert ev.funding_rate.decimal == Decimal(text)


@pytest.mark.parametrize(
    "text",
    [
        "9223372036854775808",
        "92233720368.54775808",
        "9999999999999999999.000000",
        "12345678901234567890.12345",
    ],
)
def test_decimal_that_does_not_fit_int64(text: str) -> None:
    with pytest.raises(NumberError):
        FrameParser().parse(trade_with(b"61837.63000000", text.encode()))


def test_frame_text_and_bytearray_inputs() -> None:
    p = FrameParser()
    assert one(p, SPOT_TRADE.decode()).to_wire() == SPOT_TRADE_WIRE
    assert one(p, bytearray(SPOT_TRADE)).to_wire() == SPOT_TRADE_WIRE
    out: list[Any] = []
    assert p.parse_into(SPOT_TRADE, TS_RECV, out) == 1
    assert [ev.to_wire() for ev in out] == [SPOT_TRADE_WIRE]
    batch: list[Any] = []
    assert p.parse_batch([SPOT_TRADE, SPOT_BOOK_TICKER], TS_RECV, batch) == 2
    assert [ev.to_wire() for ev in batch] == [SPOT_TRADE_WIRE, SPOT_BOOK_TICKER_WIRE]


def test_array_frame_with_a_bad_item_is_rejected_whole() -> None:
    # the second mini ticker has a non-numeric volume: nothing of the frame is accepted
    bad = (
        b'{"stream":"!miniTicker@arr","data":['
        b'{"e":"24hrMiniTicker","E":1,"s":"AUSDT","c":"1","o":"1","h":"1","l":"1","v":"1","q":"1"},'
        b'{"e":"24hrMiniTicker","E":1,"s":"BUSDT","c":"1","o":"1","h":"1","l":"1","v":"x","q":"1"}]}'
    )
    p = FrameParser()
    out: list[Any] = ["sentinel"]
    with pytest.raises(NumberError, match="'v'"):
        p.parse_into(bad, 0, out)
    assert out == ["sentinel"]
    assert (p.frames, p.events, p.errors) == (1, 0, 1)


@pytest.mark.parametrize("symbol", ["btcusdt", "BTC:USDT", "BTC USDT", ""])
def test_symbols_that_would_bend_keys_are_rejected(symbol: str) -> None:
    frame = (
        b'{"e":"trade","E":1,"s":"' + symbol.encode() + b'","t":1,"p":"1","q":"1","T":1,"m":true}'
    )
    p = FrameParser()
    with pytest.raises(MalformedFrame):
        p.parse(frame)
    assert p.events == 0
    # the parser keeps going
    good = b'{"e":"trade","E":1,"s":"BTCUSDT","t":1,"p":"1","q":"1","T":1,"m":true}'
    assert one(p, good).symbol == "BTCUSDT"


@pytest.mark.parametrize("levels", ["5", '"x"', "{}", "true", '"61837.63"'])
@pytest.mark.parametrize("fast_path", [True, False])
def test_depth_levels_that_are_not_lists_are_type_errors(levels: str, fast_path: bool) -> None:
    """A depth payload whose ``b``/``a`` (or ``bids``/``asks``) is not a list is rejected,
    naming the field, instead of becoming an empty side."""
    delta = (
        '{"stream":"btcusdt@depth","data":{"e":"depthUpdate","E":1,"s":"BTCUSDT","U":5,'
        '"u":9,"b":[],"a":LEVELS}}'
    )
    partial = '{"stream":"btcusdt@depth5","data":{"lastUpdateId":9,"bids":LEVELS,"asks":[]}}'
    parser = FrameParser(fast_path=fast_path)
    with pytest.raises(FieldTypeError, match="'a'"):
        parser.parse(delta.replace("LEVELS", levels).encode(), 1)
    with pytest.raises(FieldTypeError, match="'bids'"):
        parser.parse(partial.replace("LEVELS", levels).encode(), 1)
    with pytest.raises(FieldTypeError, match="'asks'"):
        parser.parse_rest_depth(f'{{"lastUpdateId":9,"bids":[],"asks":{levels}}}', "BTCUSDT")
    with pytest.raises(MissingField, match="'a'"):
        parser.parse(delta.replace("LEVELS", "null").encode(), 1)
    assert parser.errors == 4


# Implausible values: well-formed numbers that cannot be true (docs/wire-format.md,
# "Rules").  Every frame is compact, so the fast path takes it; both paths must reject
# (or accept) it the same way.

_TRADE = b'{"e":"trade","E":1,"s":"BTCUSDT","t":7,"p":"61837.63","q":"0.02","T":1,"m":true}'
_AGG = (
    b'{"e":"aggTrade","E":1,"s":"BTCUSDT","a":7,"p":"61837.63","q":"0.02","f":1,"l":2,"T":1,'
    b'"m":true}'
)
_BOOK_TICKER = b'{"u":7,"s":"BTCUSDT","b":"61837.63","B":"3.7","a":"61837.64","A":"1.5"}'
_DELTA = (
    b'{"e":"depthUpdate","E":1,"T":1,"s":"BTCUSDT","U":5,"u":9,"pu":4,'
    b'"b":[["61837.63","1.5"]],"a":[["61837.64","0.00000000"]]}'
)
_PARTIAL = b'{"lastUpdateId":9,"bids":[["61837.63","1.5"]],"asks":[["61837.64","2"]]}'
_LIQ = (
    b'{"e":"forceOrder","E":1,"o":{"s":"BTCUSDT","S":"SELL","o":"LIMIT","f":"IOC",'
    b'"q":"0.014","p":"9910","ap":"9910.5","X":"FILLED","l":"0.010","z":"0.014","T":1}}'
)


def _swap(frame: bytes, old: bytes, new: bytes) -> bytes:
    assert frame.count(old) == 1, old
    return frame.replace(old, new)


# (id, market, stream, frame, what the error says)
IMPLAUSIBLE = [
    (
        "trade-price-zero",
        "spot",
        "btcusdt@trade",
        _swap(_TRADE, b'"61837.63"', b'"0.00000000"'),
        "field 'p' is a price <= 0",
    ),
    (
        "trade-price-negative",
        "spot",
        "btcusdt@trade",
        _swap(_TRADE, b'"61837.63"', b'"-61837.63"'),
        "field 'p' is a price <= 0",
    ),
    (
        "trade-price-minus-zero",
        "spot",
        "btcusdt@trade",
        _swap(_TRADE, b'"61837.63"', b'"-0"'),
        "field 'p' is a price <= 0",
    ),
    (
        "trade-qty-negative",
        "spot",
        "btcusdt@trade",
        _swap(_TRADE, b'"0.02"', b'"-0.02"'),
        "field 'q' is negative",
    ),
    (
        "trade-id-negative",
        "spot",
        "btcusdt@trade",
        _swap(_TRADE, b'"t":7', b'"t":-7'),
        "field 't' is negative",
    ),
    (
        "agg-price-zero",
        "usdm",
        "btcusdt@aggTrade",
        _swap(_AGG, b'"61837.63"', b'"0"'),
        "field 'p' is a price <= 0",
    ),
    (
        "agg-qty-negative",
        "usdm",
        "btcusdt@aggTrade",
        _swap(_AGG, b'"0.02"', b'"-1"'),
        "field 'q' is negative",
    ),
    (
        "agg-id-negative",
        "usdm",
        "btcusdt@aggTrade",
        _swap(_AGG, b'"a":7', b'"a":-1'),
        "field 'a' is negative",
    ),
    (
        "ticker-bid-negative",
        "spot",
        "btcusdt@bookTicker",
        _swap(_BOOK_TICKER, b'"61837.63"', b'"-1"'),
        "field 'b' is negative",
    ),
    (
        "ticker-bid-qty-negative",
        "spot",
        "btcusdt@bookTicker",
        _swap(_BOOK_TICKER, b'"3.7"', b'"-3.7"'),
        "field 'B' is negative",
    ),
    (
        "ticker-ask-negative",
        "spot",
        "btcusdt@bookTicker",
        _swap(_BOOK_TICKER, b'"61837.64"', b'"-2"'),
        "field 'a' is negative",
    ),
    (
        "ticker-ask-qty-negative",
        "spot",
        "btcusdt@bookTicker",
        _swap(_BOOK_TICKER, b'"1.5"', b'"-0.1"'),
        "field 'A' is negative",
    ),
    (
        "ticker-update-id-negative",
        "spot",
        "btcusdt@bookTicker",
        _swap(_BOOK_TICKER, b'"u":7', b'"u":-7'),
        "field 'u' is negative",
    ),
    (
        "delta-bid-price-negative",
        "usdm",
        "btcusdt@depth",
        _swap(_DELTA, b'"61837.63"', b'"-61837.63"'),
        "a level of 'b' has a price <= 0",
    ),
    (
        "delta-bid-price-zero",
        "usdm",
        "btcusdt@depth",
        _swap(_DELTA, b'"61837.63"', b'"0.00"'),
        "a level of 'b' has a price <= 0",
    ),
    (
        "delta-ask-price-zero-qty-zero",
        "usdm",
        "btcusdt@depth",
        _swap(_DELTA, b'"61837.64"', b'"0"'),
        "a level of 'a' has a price <= 0",
    ),
    (
        "delta-bid-qty-negative",
        "usdm",
        "btcusdt@depth",
        _swap(_DELTA, b'"1.5"', b'"-1.5"'),
        "a level of 'b' has a negative quantity",
    ),
    (
        "delta-u-negative",
        "usdm",
        "btcusdt@depth",
        _swap(_DELTA, b'"u":9', b'"u":-9'),
        "field 'u' is negative",
    ),
    (
        "delta-U-negative",
        "usdm",
        "btcusdt@depth",
        _swap(_DELTA, b'"U":5', b'"U":-5'),
        "field 'U' is negative",
    ),
    (
        "partial-last-id-negative",
        "spot",
        "btcusdt@depth5",
        _swap(_PARTIAL, b":9,", b":-9,"),
        "field 'lastUpdateId' is negative",
    ),
    (
        "partial-ask-qty-negative",
        "spot",
        "btcusdt@depth5",
        _swap(_PARTIAL, b'"2"', b'"-2"'),
        "a level of 'asks' has a negative quantity",
    ),
    (
        "partial-bid-price-zero",
        "spot",
        "btcusdt@depth5",
        _swap(_PARTIAL, b'"61837.63"', b'"0"'),
        "a level of 'bids' has a price <= 0",
    ),
    (
        "liquidation-price-negative",
        "usdm",
        "btcusdt@forceOrder",
        _swap(_LIQ, b'"9910"', b'"-9910"'),
        "field 'p' is negative",
    ),
    (
        "liquidation-qty-negative",
        "usdm",
        "btcusdt@forceOrder",
        _swap(_LIQ, b'"q":"0.014"', b'"q":"-0.014"'),
        "field 'q' is negative",
    ),
    (
        "liquidation-avg-negative",
        "usdm",
        "btcusdt@forceOrder",
        _swap(_LIQ, b'"9910.5"', b'"-9910.5"'),
        "field 'ap' is negative",
    ),
    (
        "liquidation-last-negative",
        "usdm",
        "btcusdt@forceOrder",
        _swap(_LIQ, b'"0.010"', b'"-0.010"'),
        "field 'l' is negative",
    ),
    (
        "liquidation-filled-negative",
        "usdm",
        "btcusdt@forceOrder",
        _swap(_LIQ, b'"z":"0.014"', b'"z":"-1"'),
        "field 'z' is negative",
    ),
]


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "simdjson"])
@pytest.mark.parametrize(
    ("market", "stream", "frame", "field"),
    [c[1:] for c in IMPLAUSIBLE],
    ids=[c[0] for c in IMPLAUSIBLE],
)
def test_implausible_value_is_rejected_and_counted(
    market: str, stream: str, frame: bytes, field: str, fast_path: bool
) -> None:
    assert issubclass(ValueRangeError, ParseError) and issubclass(ValueRangeError, ValueError)
    p = FrameParser(market=market, fast_path=fast_path)
    out: list[Any] = ["sentinel"]
    with pytest.raises(ValueRangeError, match=re.escape(field)):
        p.parse_into(envelope(stream, frame), 1, out)
    assert out == ["sentinel"]
    assert (p.frames, p.events, p.errors) == (1, 0, 1)
    assert p.rejects == {"value_range": 1}
    # the fast path really judged the frame (it is compact); simdjson never does here
    assert p.fast_frames == (1 if fast_path else 0)
    # the same parser goes on with the next good frame
    assert one(p, envelope("btcusdt@trade", _TRADE)).trade_id == 7
    assert (p.frames, p.events, p.errors) == (2, 1, 1)


# (id, market, stream, frame): values that look odd but are what Binance really sends
PLAUSIBLE = [
    ("trade-qty-zero", "spot", "btcusdt@trade", _swap(_TRADE, b'"0.02"', b'"0.00000000"')),
    ("delta-qty-zero-removes", "usdm", "btcusdt@depth", _DELTA),
    ("delta-pu-minus-one", "usdm", "btcusdt@depth", _swap(_DELTA, b'"pu":4', b'"pu":-1')),
    (
        "book-ticker-empty-book",
        "spot",
        "btcusdt@bookTicker",
        b'{"u":0,"s":"BTCUSDT","b":"0.00000000","B":"0.00000000","a":"0.00000000","A":"0"}',
    ),
    (
        "liquidation-unfilled",
        "usdm",
        "btcusdt@forceOrder",
        _swap(
            _swap(_swap(_LIQ, b'"9910.5"', b'"0"'), b'"0.010"', b'"0"'), b'"z":"0.014"', b'"z":"0"'
        ),
    ),
    (
        "ticker-no-trades-and-falling",
        "spot",
        "btcusdt@ticker_1h",
        b'{"e":"1hTicker","E":1,"s":"BTCUSDT","p":"-12.5","P":"-0.02","o":"1","h":"1","l":"1",'
        b'"c":"1","w":"0","v":"0","q":"0","O":1,"C":1,"F":-1,"L":-1,"n":0}',
    ),
    (
        "kline-no-trades",
        "spot",
        "btcusdt@kline_1m",
        b'{"e":"kline","E":1,"s":"BTCUSDT","k":{"t":1,"T":2,"s":"BTCUSDT","i":"1m","f":-1,'
        b'"L":-1,"o":"1","c":"1","h":"1","l":"1","v":"0","n":0,"x":false,"q":"0","V":"0",'
        b'"Q":"0","B":"0"}}',
    ),
    ("mark-price-negative-funding", "usdm", "btcusdt@markPrice", MARK % b"BTCUSDT"),
]


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "simdjson"])
@pytest.mark.parametrize(
    ("market", "stream", "frame"), [c[1:] for c in PLAUSIBLE], ids=[c[0] for c in PLAUSIBLE]
)
def test_plausible_values_are_kept(market: str, stream: str, frame: bytes, fast_path: bool) -> None:
    p = FrameParser(market=market, fast_path=fast_path)
    one(p, envelope(stream, frame))
    assert (p.errors, p.rejects) == (0, {})


def test_depth_zero_quantity_reaches_the_event() -> None:
    ev = one(
        FrameParser(market="usdm"), envelope("btcusdt@depth", _swap(_DELTA, b'"pu":4', b'"pu":-1'))
    )
    assert ev.prev_update_id == -1
    assert ev.to_wire()["asks"] == [["61837.64", "0.00000000"]]


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "simdjson"])
def test_rest_depth_implausible_levels_and_id_are_rejected(fast_path: bool) -> None:
    p = FrameParser(market="usdm", fast_path=fast_path)
    good = b'{"lastUpdateId":9,"E":1,"T":1,"bids":[["100.5","2"]],"asks":[["101","0.5"]]}'
    assert p.parse_rest_depth(good, "BTCUSDT").update_id == 9
    with pytest.raises(ValueRangeError, match="a level of 'bids' has a negative quantity"):
        p.parse_rest_depth(_swap(good, b'"2"', b'"-2"'), "BTCUSDT")
    with pytest.raises(ValueRangeError, match="a level of 'asks' has a price <= 0"):
        p.parse_rest_depth(_swap(good, b'"101"', b'"0"'), "BTCUSDT")
    with pytest.raises(ValueRangeError, match="'lastUpdateId' is negative"):
        p.parse_rest_depth(_swap(good, b":9,", b":-9,"), "BTCUSDT")
    with pytest.raises(NumberError):
        p.parse_rest_depth(_swap(good, b'"2"', b'"x"'), "BTCUSDT")
    assert p.errors == 4
    assert p.rejects == {"value_range": 3, "number": 1}


def test_rejects_count_every_reason() -> None:
    p = FrameParser(max_frame_bytes=256)
    for frame in (
        b"not json",
        trade_with(b'"p":"61837.63000000",', b""),
        trade_with(b'"m":true', b'"m":"true"'),
        trade_with(b'"61837.63000000"', b'"1e5"'),
        trade_with(b'"61837.63000000"', b'"-1"'),
        trade_with(b'"61837.63000000"', b'"0"'),
        SPOT_TRADE + b" " * 256,
    ):
        with pytest.raises(ParseError):
            p.parse(frame)
    assert p.rejects == {
        "malformed": 1,
        "missing_field": 1,
        "field_type": 1,
        "number": 1,
        "value_range": 2,
        "oversized": 1,
    }
    assert p.errors == sum(p.rejects.values()) == 7

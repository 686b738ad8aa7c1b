"""The wire format: encode/decode round trips, decode errors, and the JSON Schema."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from meltica import Control, Derived, Event, FrameParser
from meltica._core.events import Trade, as_backfilled
from meltica.errors import ParseError, WireError
from meltica.wire import WIRE_VERSION, decode, encode, schema

TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

# One Binance frame per kind and shape, with the parser that reads it.
FRAMES: dict[str, tuple[str, bytes]] = {
    "trade": (
        "spot",
        b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1723161255343,"s":"BTCUSDT",'
        b'"t":3735683259,"p":"61837.63000000","q":"0.02000000","T":1723161255342,"m":true}}',
    ),
    "agg_trade": (
        "usdm",
        b'{"e":"aggTrade","E":1723161256330,"a":2253371219,"s":"BTCUSDT","p":"61800.20",'
        b'"q":"0.150","f":5266583936,"l":5266583938,"T":1723161256329,"m":false}',
    ),
    "book_ticker_spot": (
        "spot",
        b'{"u":50093239212,"s":"BTCUSDT","b":"61837.63000000","B":"3.78826000",'
        b'"a":"61837.64000000","A":"1.54698000"}',
    ),
    "book_ticker_usdm": (
        "usdm",
        b'{"e":"bookTicker","u":5123107839020,"s":"BTCUSDT","b":"61800.20","B":"2.507",'
        b'"a":"61800.30","A":"2.510","T":1723161256313,"E":1723161256314}',
    ),
    "book_delta": (
        "usdm",
        b'{"e":"depthUpdate","E":1723161256299,"T":1723161256298,"s":"BTCUSDT",'
        b'"U":5123107832006,"u":5123107837557,"pu":5123107831937,'
        b'"b":[["58710.20","0.014"],["61510.90","0.000"]],"a":[]}',
    ),
    "book_snapshot_stream": (
        "spot",
        b'{"stream":"btcusdt@depth5@100ms","data":{"lastUpdateId":160,'
        b'"bids":[["0.0024","10"]],"asks":[["0.0026","100"],["0.0027","0.5"]]}}',
    ),
    "kline_open": (
        "spot",
        b'{"e":"kline","E":1672515782136,"s":"BNBBTC","k":{"t":1672515780000,'
        b'"T":1672515839999,"s":"BNBBTC","i":"1m","f":100,"L":200,"o":"0.0010","c":"0.0020",'
        b'"h":"0.0025","l":"0.0015","v":"1000","n":100,"x":false,"q":"1.0000","V":"500",'
        b'"Q":"0.500","B":"123456"}}',
    ),
    "kline_closed": (
        "spot",
        b'{"e":"kline","E":1672515840001,"s":"BNBBTC","k":{"t":1672515780000,'
        b'"T":1672515839999,"s":"BNBBTC","i":"1m","f":100,"L":201,"o":"0.0010","c":"0.0021",'
        b'"h":"0.0025","l":"0.0015","v":"1001","n":101,"x":true,"q":"1.0021","V":"501",'
        b'"Q":"0.501","B":"0"}}',
    ),
    "ticker_24h": (
        "spot",
        b'{"e":"24hrTicker","E":1672515782136,"s":"BNBBTC","p":"-0.0015","P":"-25.00",'
        b'"w":"0.0018","x":"0.0009","c":"0.0025","Q":"10","b":"0.0024","B":"10",'
        b'"a":"0.0026","A":"100","o":"0.0010","h":"0.0025","l":"0.0010","v":"10000",'
        b'"q":"18","O":1672429382136,"C":1672515782135,"F":0,"L":18150,"n":18151}',
    ),
    "ticker_mini": (
        "spot",
        b'{"e":"24hrMiniTicker","E":1672515782136,"s":"BNBBTC","c":"0.0025","o":"0.0010",'
        b'"h":"0.0025","l":"0.0010","v":"10000","q":"18"}',
    ),
    "mark_price": (
        "usdm",
        b'{"e":"markPriceUpdate","E":1562305380000,"s":"BTCUSDT","p":"11794.15000000",'
        b'"i":"11784.62659091","P":"11784.25641265","r":"-0.00038167","T":1562306400000}',
    ),
    "liquidation": (
        "coinm",
        b'{"e":"forceOrder","E":1591154240950,"o":{"s":"BTCUSD_PERP","S":"BUY","o":"LIMIT",'
        b'"f":"IOC","q":"1","p":"9425.5","ap":"9496.5","X":"FILLED","l":"1","z":"1",'
        b'"T":1591154240949}}',
    ),
}
REST_BODY = (
    b'{"lastUpdateId":5123107852948,"E":1723161256501,"T":1723161256493,'
    b'"bids":[["61800.20","2.909"]],"asks":[["61800.30","1.000"]]}'
)


def parsed(name: str) -> Event:
    market, frame = FRAMES[name]
    (ev,) = FrameParser(market=market).parse(frame, 1_723_161_254_087_896_568)
    return ev


def rest_snapshot() -> Event:
    ev: Event = FrameParser(market="usdm").parse_rest_depth(REST_BODY, "btcusdt", 11)
    return ev


def control(kind: str) -> Event:
    return Control(
        kind,
        venue="binance_us",
        market="spot",
        symbol="BTCUSD",
        seq=9,
        ts_recv=12,
        reason="test",
        from_seq=3 if kind in ("gap", "gap_filled") else None,
        to_seq=8 if kind in ("gap", "gap_filled") else None,
        stale=True if kind == "stale" else None,
        state={"connection_state": "connected", "gap_filled": "filled"}.get(kind),
        connection="spot-0" if kind == "connection_state" else None,
    )


CONTROL_KINDS = ("gap", "resync_started", "resync_done", "stale", "connection_state", "gap_filled")


def derived() -> Derived:
    values = {"mid": "61800.25", "imbalance": "-0.3333333333333333333333333333"}
    return Derived("binance", "usdm", "BTCUSDT", "mid", 5123107837557, 1723161256299, 11, values)


def all_events() -> list[Event]:
    events = [parsed(name) for name in FRAMES]
    events.append(rest_snapshot())
    events.extend(control(kind) for kind in CONTROL_KINDS)
    events.append(derived())
    # backfilled trades (source rest): the one optional trade field
    for name in ("trade", "agg_trade"):
        ev = parsed(name)
        assert isinstance(ev, Trade)
        events.append(as_backfilled(ev))
    return events


def test_every_kind_is_covered() -> None:
    from meltica import KINDS

    assert sorted({ev.kind for ev in all_events()}) == sorted(KINDS)


# Round trip

ROUND_TRIP = [*FRAMES, "book_snapshot_rest"]


def build(name: str) -> Event:
    return rest_snapshot() if name == "book_snapshot_rest" else parsed(name)


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_round_trip(name: str) -> None:
    ev = build(name)
    data = encode(ev)
    assert isinstance(data, bytes)
    assert json.loads(data) == ev.to_wire()
    assert b'":' in data and b'": ' not in data and b", " not in data  # compact
    back = decode(data)
    assert type(back) is type(ev)
    assert back.to_wire() == ev.to_wire()
    assert back.key == ev.key
    assert encode(back) == data
    assert decode(data.decode()).to_wire() == ev.to_wire()


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_round_trip_keeps_local_fields(name: str) -> None:
    ev = build(name)
    ev.ts_recv = 1_723_161_254_999_999_999
    ev.trace = TRACE
    back = decode(encode(ev))
    assert (back.ts_recv, back.trace) == (1_723_161_254_999_999_999, TRACE)
    assert back.to_wire() == ev.to_wire()


def test_round_trip_keeps_decimal_text_and_views() -> None:
    ev: Any = decode(encode(parsed("mark_price")))
    assert str(ev.funding_rate) == "-0.00038167"
    assert (ev.funding_rate.mantissa, ev.funding_rate.exponent) == (-38167, -8)
    depth: Any = decode(encode(parsed("book_delta")))
    assert [tuple(map(str, lvl)) for lvl in depth.bids] == [
        ("58710.20", "0.014"),
        ("61510.90", "0.000"),
    ]


@pytest.mark.parametrize("kind", CONTROL_KINDS)
def test_control_round_trip(kind: str) -> None:
    ev = control(kind)
    back = decode(encode(ev))
    assert type(back) is Control
    assert back.to_wire() == ev.to_wire()
    assert back.key == f"binance_us:spot:BTCUSD:{kind}:9"


def test_derived_round_trip() -> None:
    ev = derived()
    back = decode(encode(ev))
    assert type(back) is Derived
    assert back.to_wire() == ev.to_wire()
    assert back.key == "binance:usdm:BTCUSDT:derived:mid:5123107837557"
    assert dict(back.values) == dict(ev.values)
    assert back.to_wire()["values"]["imbalance"] == "-0.3333333333333333333333333333"
    # a derived event is not a control event, and "derived" is no control kind
    with pytest.raises(ValueError, match="not a control kind"):
        Control("derived", venue="binance", market="spot", symbol="X", seq=1, ts_recv=1)


def test_wire_version() -> None:
    assert WIRE_VERSION == 1
    assert parsed("trade").to_wire()["v"] == 1


def test_int64_max_round_trips() -> None:
    frame = FRAMES["trade"][1].replace(b"3735683259", b"9223372036854775807")
    (ev,) = FrameParser().parse(frame)
    assert decode(encode(ev)).to_wire() == ev.to_wire()


# Decode errors


def trade_wire(**changes: Any) -> bytes:
    d = parsed("trade").to_wire()
    for name, value in changes.items():
        if value is ...:
            del d[name]
        else:
            d[name] = value
    return json.dumps(d).encode()


DECODE_ERRORS = [
    ("bad-json", b'{"v":1,', "not JSON"),
    ("empty", b"", "not JSON"),
    ("array", b"[1,2]", "JSON object"),
    ("string", b'"trade"', "JSON object"),
    ("number", b"1", "JSON object"),
    ("version-2", trade_wire(v=2), "wire version 2"),
    ("version-missing", trade_wire(v=...), "wire version None"),
    ("version-string", trade_wire(v="1"), "wire version '1'"),
    ("unknown-kind", trade_wire(kind="avg_price"), "unknown event kind 'avg_price'"),
    ("missing-kind", trade_wire(kind=...), "unknown event kind None"),
    ("list-kind", trade_wire(kind=["trade"]), r"unknown event kind \['trade'\]"),
    ("missing-price", trade_wire(price=...), "lacks 'price'"),
    ("missing-ts-recv", trade_wire(ts_recv=...), "lacks 'ts_recv'"),
    ("missing-trade-id", trade_wire(trade_id=...), "lacks 'trade_id'"),
    ("missing-symbol", trade_wire(symbol=...), "'symbol' must be a string"),
    ("float-price", trade_wire(price=61837.63), "'price' must be a decimal string"),
    ("int-qty", trade_wire(qty=1), "'qty' must be a decimal string"),
    ("exponent-price", trade_wire(price="1e5"), "'price'"),
    ("bad-side", trade_wire(side="BUY"), "'side' must be 'buy' or 'sell'"),
    ("missing-side", trade_wire(side=...), "'side' must be 'buy' or 'sell'"),
    ("string-seq", trade_wire(seq="5"), "'seq' is not an int64"),
    ("bool-trade-id", trade_wire(trade_id=True), "'trade_id' is not an int64"),
    ("float-ts", trade_wire(ts_event=1.5e18), "'ts_event' is not an int64"),
    ("int-trace", trade_wire(trace=5), "'trace' must be a string or null"),
]


@pytest.mark.parametrize(
    ("data", "match"), [e[1:] for e in DECODE_ERRORS], ids=[e[0] for e in DECODE_ERRORS]
)
def test_decode_errors(data: bytes, match: str) -> None:
    with pytest.raises(WireError, match=match) as info:
        decode(data)
    assert isinstance(info.value, ParseError)
    assert isinstance(info.value, ValueError)


def wire_of(name: str, **changes: Any) -> bytes:
    d = build(name).to_wire() if name in ROUND_TRIP else control(name).to_wire()
    d.update(changes)
    return json.dumps(d).encode()


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (wire_of("book_delta", bids=[["1.0"]]), r"'bids'\[0\] must be \[price, qty\]"),
        (wire_of("book_delta", asks=[[1.0, "2"]]), "'p' must be a decimal string"),
        (wire_of("book_delta", bids={"1.0": "2"}), "'bids' must be a list"),
        (wire_of("book_snapshot_stream", source="ws"), "'source' must be one of"),
        (wire_of("kline_open", closed=0), "'closed' must be a boolean"),
        (wire_of("kline_open", interval=None), "'interval' must be a string"),
        (wire_of("mark_price", funding_rate=-0.0003), "'funding_rate' must be a decimal"),
        (wire_of("gap", seq=None), "lacks 'seq'"),
        (json.dumps({**derived().to_wire(), "seq": None}).encode(), "lacks 'seq'"),
        (json.dumps({**derived().to_wire(), "values": {"mid": 1.5}}).encode(), "non-string"),
        (json.dumps({**derived().to_wire(), "values": {"mid": "1e5"}}).encode(), "plain"),
        (json.dumps({**derived().to_wire(), "values": ["1"]}).encode(), "must be an object"),
        (json.dumps({**derived().to_wire(), "name": ""}).encode(), "'name' must be a non"),
    ],
    ids=[
        "level-short",
        "level-float",
        "levels-dict",
        "source",
        "closed",
        "interval",
        "rate",
        "seq",
        "derived-seq",
        "derived-float",
        "derived-exponent",
        "derived-values-list",
        "derived-name",
    ],
)
def test_decode_errors_per_kind(data: bytes, match: str) -> None:
    with pytest.raises(WireError, match=match):
        decode(data)


# The decoder rejects what the schema rejects, always with WireError.
@pytest.mark.parametrize(
    ("name", "changes"),
    [
        pytest.param("liquidation", {"side": "up"}),
        pytest.param("liquidation", {"side": "BUY"}),
        pytest.param("trade", {"venue": "kraken"}),
        pytest.param("trade", {"market": "futures"}),
        pytest.param("ticker_mini", {"window": "2h"}),
        pytest.param("liquidation", {"order_type": 5}),
        pytest.param("gap", {"from_seq": "3"}),
        pytest.param("gap", {"reason": 5}),
        pytest.param("connection_state", {"state": 1}),
        pytest.param("trade", {"price": 1.5}),
        pytest.param("trade", {"side": "up"}),
        pytest.param("gap", {"ts_recv": "12"}),
    ],
    ids=[
        "liq-side-up",
        "liq-side-upper",
        "venue",
        "market",
        "window",
        "liq-order-type-int",
        "gap-from-seq-str",
        "gap-reason-int",
        "state-int",
        "trade-price-float",
        "trade-side",
        "gap-ts-recv-str",
    ],
)
def test_decode_rejects_what_the_schema_rejects(name: str, changes: dict[str, Any]) -> None:
    data = wire_of(name, **changes)
    assert not VALIDATOR.is_valid(json.loads(data))
    with pytest.raises(WireError):
        decode(data)


# JSON Schema

VALIDATOR = jsonschema.Draft202012Validator(schema())


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    s = schema()
    assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(s)


@pytest.mark.parametrize("ev", all_events(), ids=lambda ev: f"{ev.market}-{ev.kind}")
def test_every_event_validates(ev: Event) -> None:
    d = json.loads(encode(ev))
    errors = [e.message for e in VALIDATOR.iter_errors(d)]
    assert errors == []
    ev.trace = TRACE
    assert VALIDATOR.is_valid(json.loads(encode(ev)))


def test_schema_rejects_float_price() -> None:
    d = parsed("trade").to_wire()
    d["price"] = 61837.63
    with pytest.raises(jsonschema.ValidationError, match=r"61837\.63"):
        VALIDATOR.validate(d)


@pytest.mark.parametrize("key", ["key", "trace", "ts_event", "price", "side"])
def test_schema_rejects_a_missing_key(key: str) -> None:
    d = parsed("trade").to_wire()
    del d[key]
    with pytest.raises(jsonschema.ValidationError, match=f"'{key}' is a required property"):
        VALIDATOR.validate(d)


def test_schema_rejects_unknown_field_and_bad_level() -> None:
    d = parsed("trade").to_wire()
    d["extra"] = 1
    assert not VALIDATOR.is_valid(d)
    depth = parsed("book_delta").to_wire()
    depth["bids"] = [["1.0", 2.0]]
    assert not VALIDATOR.is_valid(depth)

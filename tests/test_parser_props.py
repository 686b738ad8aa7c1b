"""Property tests: the compiled FrameParser against the reference decoder.

(a) Generated VALID frames of every kind, spot and futures shapes, combined and raw: the
parser's events equal ``tests/reference.py``'s dicts exactly, and survive the wire format
(``meltica.wire.encode`` / ``decode``) unchanged.  (b) Broken frames (byte flips,
truncation, random bytes, oversized frames, numbers in the wrong form, missing fields,
wrong JSON types) never crash the parser: it returns events or raises a ``ParseError``.
"""

from __future__ import annotations

import json
import re
from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import ImplausibleValue, reference_events, reference_rest_depth

import meltica.wire
from meltica import FrameParser, Reply
from meltica.errors import FrameTooLarge, NumberError, ParseError, ValueRangeError

INT64_MAX = 2**63 - 1
# largest exchange time (per unit) whose ns value fits int64
MAX_TIME = {"ms": INT64_MAX // 1_000_000, "us": INT64_MAX // 1_000}

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ------------------------------------------------------------------------------------------
# Building blocks


def _digits(draw: st.DrawFn, min_size: int, max_size: int) -> str:
    return draw(st.text("0123456789", min_size=min_size, max_size=max_size))


@st.composite
def decimals(draw: st.DrawFn, negative: bool = False) -> str:
    """A Binance decimal string: up to 19 significant digits, sometimes padded with trailing
    fractional zeros beyond int64 (the wire form then drops just enough of them)."""
    special = draw(
        st.sampled_from(
            [
                None,
                None,
                None,
                None,
                "0.00000000",
                "0",
                "0.00000001",
                "67234.56000000",
                "922337203685477580.7",  # 19 digits, exactly int64 max
                "922337203685477580.70",  # one zero too many
                "1234567890.123456789",  # 19 digits, fits
                "1234567890.1234567890",
                "99999999.9999999999",
                "0.000000000000000001",
                "1.00000000000000000000000",
                "123456789012345678.00",
            ]
        )
    )
    if special is not None:
        text = special
    else:
        int_digits = draw(st.integers(1, 12))
        integer = str(draw(st.integers(0, 10**int_digits - 1)))
        room = 18 - len(integer.lstrip("0"))
        fraction = _digits(draw, 0, min(room, 10))
        fraction += "0" * draw(st.sampled_from([0, 0, 1, 4, 8, 12]))  # may pass 19 digits
        text = integer + ("." + fraction if fraction else "")
    if negative and draw(st.booleans()):
        text = "-" + text  # "-0.00000000" included: the wire form drops its sign
    return text


def prices() -> st.SearchStrategy[str]:
    """A trade or depth level price: a decimal > 0 (zero is implausible there)."""
    return decimals().filter(lambda text: any(ch in "123456789" for ch in text))


ids = st.integers(0, INT64_MAX)
small_ids = st.integers(0, 10**13)
# a ticker's or kline's first / last trade id: -1 when the window had no trade
trade_ids = st.one_of(ids, st.just(-1))


def times(unit: str) -> st.SearchStrategy[int]:
    return st.integers(0, MAX_TIME[unit])


@st.composite
def symbols(draw: st.DrawFn, market: str) -> str:
    base = draw(st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=2, max_size=6))
    if market == "coinm":
        return base + "USD_" + draw(st.sampled_from(["PERP", "211231", "240927"]))
    return base + draw(st.sampled_from(["USDT", "BTC", "ETH", "BUSD", "FDUSD"]))


@st.composite
def levels(draw: st.DrawFn) -> list[list[str]]:
    return draw(st.lists(st.tuples(prices(), decimals()).map(list), max_size=12))


class Shape(NamedTuple):
    """One payload and the stream it arrives on."""

    stream: str
    payload: Any


# ------------------------------------------------------------------------------------------
# Payload shapes (docs/wire-format.md); each returns a Shape


def _trade(draw: st.DrawFn, market: str, sym: str, unit: str) -> Shape:
    t = times(unit)
    if market == "spot":
        d: dict[str, Any] = {"e": "trade", "E": draw(t), "s": sym, "t": draw(ids)}
        d |= {"p": draw(prices()), "q": draw(decimals())}
        if draw(st.booleans()):  # 2023 frames still carried buyer/seller order ids
            d |= {"b": draw(ids), "a": draw(ids)}
        d |= {"T": draw(t), "m": draw(st.booleans()), "M": True}
    else:
        d = {"e": "trade", "E": draw(t), "T": draw(t), "s": sym, "t": draw(ids)}
        d |= {"p": draw(prices()), "q": draw(decimals()), "X": "MARKET"}
        d |= {"m": draw(st.booleans())}
    return Shape(f"{sym.lower()}@trade", d)


def _agg_trade(draw: st.DrawFn, market: str, sym: str, unit: str) -> Shape:
    t = times(unit)
    d: dict[str, Any] = {"e": "aggTrade", "E": draw(t), "s": sym, "a": draw(ids)}
    d |= {"p": draw(prices()), "q": draw(decimals())}
    if market != "spot" and draw(st.booleans()):
        d["nq"] = draw(decimals())  # 2026 futures extras
    d |= {"f": draw(ids), "l": draw(ids), "T": draw(t), "m": draw(st.booleans())}
    if market == "spot":
        d["M"] = True
    elif draw(st.booleans()):
        d["st"] = draw(st.integers(0, 10))
    return Shape(f"{sym.lower()}@aggTrade", d)


def _book_ticker(draw: st.DrawFn, market: str, sym: str, unit: str) -> Shape:
    d: dict[str, Any] = {"u": draw(ids), "s": sym}
    if market != "spot":
        d = {"e": "bookTicker", **d}
    d |= {"b": draw(decimals()), "B": draw(decimals())}
    d |= {"a": draw(decimals()), "A": draw(decimals())}
    if market != "spot":
        d |= {"T": draw(times(unit)), "E": draw(times(unit))}
        if draw(st.integers(0, 4)) == 0:
            return Shape("!bookTicker", d)
    return Shape(f"{sym.lower()}@bookTicker", d)


def _depth_update(draw: st.DrawFn, market: str, sym: str, unit: str) -> dict[str, Any]:
    t = times(unit)
    d: dict[str, Any] = {"e": "depthUpdate", "E": draw(t)}
    if market != "spot":
        d["T"] = draw(t)
    d |= {"s": sym, "U": draw(ids), "u": draw(ids)}
    if market != "spot":
        d["pu"] = draw(st.one_of(ids, st.just(-1)))  # -1: futures' "no previous event"
    d |= {"b": draw(levels()), "a": draw(levels())}
    if market != "spot" and draw(st.booleans()):
        d |= {"ps": sym, "st": draw(st.integers(0, 10))}
    return d


def _book_delta(draw: st.DrawFn, market: str, sym: str, unit: str) -> Shape:
    speeds = ["", "@100ms"] if market == "spot" else ["", "@100ms", "@500ms", "@0ms"]
    stream = f"{sym.lower()}@depth{draw(st.sampled_from(speeds))}"
    return Shape(stream, _depth_update(draw, market, sym, unit))


def _partial_depth(draw: st.DrawFn, market: str, sym: str, unit: str) -> Shape:
    speeds = ["", "@100ms"] if market == "spot" else ["", "@100ms", "@500ms"]
    level_count = draw(st.sampled_from(["5", "10", "20"]))
    stream = f"{sym.lower()}@depth{level_count}{draw(st.sampled_from(speeds))}"
    if market == "spot":
        d = {"lastUpdateId": draw(ids), "bids": draw(levels()), "asks": draw(levels())}
        return Shape(stream, d)
    return Shape(stream, _depth_update(draw, market, sym, unit))


def _kline(draw: st.DrawFn, market: str, sym: str, unit: str) -> Shape:
    t = times(unit)
    interval = draw(st.sampled_from(["1s", "1m", "3m", "15m", "1h", "4h", "1d", "1w", "1M"]))
    k = {"t": draw(t), "T": draw(t), "s": sym, "i": interval}
    k |= {"f": draw(trade_ids), "L": draw(trade_ids)}
    k |= {"o": draw(decimals()), "c": draw(decimals()), "h": draw(decimals())}
    k |= {"l": draw(decimals()), "v": draw(decimals()), "n": draw(small_ids)}
    k |= {"x": draw(st.booleans()), "q": draw(decimals()), "V": draw(decimals())}
    k |= {"Q": draw(decimals()), "B": "0"}
    suffix = draw(st.sampled_from(["", "", "@+08:00"])) if market == "spot" else ""
    d = {"e": "kline", "E": draw(t), "s": sym, "k": k}
    return Shape(f"{sym.lower()}@kline_{interval}{suffix}", d)


def _one_ticker(draw: st.DrawFn, market: str, sym: str, unit: str, window: str) -> dict[str, Any]:
    t = times(unit)
    signed = decimals(negative=True)
    if window == "mini":
        d: dict[str, Any] = {"e": "24hrMiniTicker", "E": draw(t), "s": sym}
        d |= {"c": draw(decimals()), "o": draw(decimals()), "h": draw(decimals())}
        d |= {"l": draw(decimals()), "v": draw(decimals()), "q": draw(decimals())}
        return d
    if window == "24h":
        d = {"e": "24hrTicker", "E": draw(t), "s": sym}
        d |= {"p": draw(signed), "P": draw(signed), "w": draw(decimals())}
        if market == "spot":
            d["x"] = draw(decimals())
        d |= {"c": draw(decimals()), "Q": draw(decimals())}
        if market == "spot":
            d |= {"b": draw(decimals()), "B": draw(decimals())}
            d |= {"a": draw(decimals()), "A": draw(decimals())}
    else:
        d = {"e": f"{window}Ticker", "E": draw(t), "s": sym}
        d |= {"p": draw(signed), "P": draw(signed), "o": draw(decimals())}
        d |= {"h": draw(decimals()), "l": draw(decimals()), "c": draw(decimals())}
        d |= {"w": draw(decimals()), "v": draw(decimals()), "q": draw(decimals())}
        d |= {"O": draw(t), "C": draw(t), "F": draw(trade_ids), "L": draw(trade_ids)}
        d["n"] = draw(small_ids)
        return d
    d |= {"o": draw(decimals()), "h": draw(decimals()), "l": draw(decimals())}
    d |= {"v": draw(decimals()), "q": draw(decimals())}
    d |= {"O": draw(t), "C": draw(t), "F": draw(trade_ids), "L": draw(trade_ids)}
    d["n"] = draw(small_ids)
    return d


TICKER_STREAM = {"24h": "ticker", "mini": "miniTicker", "1h": "ticker_1h", "4h": "ticker_4h"}
TICKER_STREAM["1d"] = "ticker_1d"


def _ticker(draw: st.DrawFn, market: str, sym: str, unit: str) -> Shape:
    windows = ["24h", "mini", "1h", "4h", "1d"] if market == "spot" else ["24h", "mini"]
    window = draw(st.sampled_from(windows))
    name = TICKER_STREAM[window]
    if draw(st.booleans()):
        return Shape(f"{sym.lower()}@{name}", _one_ticker(draw, market, sym, unit, window))
    syms = draw(st.lists(symbols(market), min_size=1, max_size=4, unique=True))
    return Shape(f"!{name}@arr", [_one_ticker(draw, market, s, unit, window) for s in syms])


def _one_mark_price(draw: st.DrawFn, sym: str, unit: str) -> dict[str, Any]:
    d: dict[str, Any] = {"e": "markPriceUpdate", "E": draw(times(unit)), "s": sym}
    d |= {"p": draw(decimals()), "i": draw(decimals()), "P": draw(decimals())}
    d |= {"r": draw(decimals(negative=True)), "T": draw(times(unit))}
    return d


def _mark_price(draw: st.DrawFn, market: str, sym: str, unit: str) -> Shape:
    speed = draw(st.sampled_from(["", "@1s"]))
    if draw(st.booleans()):
        return Shape(f"{sym.lower()}@markPrice{speed}", _one_mark_price(draw, sym, unit))
    syms = draw(st.lists(symbols(market), min_size=1, max_size=4, unique=True))
    return Shape(f"!markPrice@arr{speed}", [_one_mark_price(draw, s, unit) for s in syms])


def _liquidation(draw: st.DrawFn, market: str, sym: str, unit: str) -> Shape:
    o = {"s": sym, "S": draw(st.sampled_from(["BUY", "SELL"])), "o": "LIMIT", "f": "IOC"}
    o |= {"q": draw(decimals()), "p": draw(decimals()), "ap": draw(decimals())}
    o |= {"X": draw(st.sampled_from(["FILLED", "NEW", "PARTIALLY_FILLED"]))}
    o |= {"l": draw(decimals()), "z": draw(decimals()), "T": draw(times(unit))}
    d = {"e": "forceOrder", "E": draw(times(unit)), "o": o}
    # the all-market stream pushes single objects despite its name
    stream = draw(st.sampled_from([f"{sym.lower()}@forceOrder", "!forceOrder@arr"]))
    return Shape(stream, d)


SPOT_SHAPES = [_trade, _agg_trade, _book_ticker, _book_delta, _partial_depth, _kline, _ticker]
FUTURES_SHAPES = [*SPOT_SHAPES, _mark_price, _liquidation]


class Case(NamedTuple):
    """A frame and everything the parser is told about its connection."""

    frame: bytes
    venue: str
    market: str
    stream: str | None  # the stream of a raw /ws/<stream> connection, if known
    time_unit: str
    ts_recv: int

    def parser(self, max_frame_bytes: int = 1 << 20) -> FrameParser:
        return FrameParser(
            venue=self.venue,
            market=self.market,
            stream=self.stream,
            time_unit=self.time_unit,
            max_frame_bytes=max_frame_bytes,
        )

    def reference(self) -> list[dict[str, Any]]:
        return reference_events(
            self.frame,
            venue=self.venue,
            market=self.market,
            ts_recv=self.ts_recv,
            time_unit=self.time_unit,
            stream=self.stream,
        )


def _dumps(draw: st.DrawFn, obj: Any) -> bytes:
    separators = draw(st.sampled_from([(",", ":"), (",", ":"), (", ", ": ")]))
    return json.dumps(obj, separators=separators).encode()


@st.composite
def valid_cases(draw: st.DrawFn) -> Case:
    market = draw(st.sampled_from(["spot", "usdm", "coinm"]))
    venue = draw(st.sampled_from(["binance", "binance_us"])) if market == "spot" else "binance"
    unit = draw(st.sampled_from(["ms", "ms", "us"]))
    shape_of = draw(st.sampled_from(SPOT_SHAPES if market == "spot" else FUTURES_SHAPES))
    shape = shape_of(draw, market, draw(symbols(market)), unit)
    raw_stream = None
    if draw(st.booleans()):
        frame = _dumps(draw, {"stream": shape.stream, "data": shape.payload})
    else:
        frame = _dumps(draw, shape.payload)
        # spot partial depth names its symbol only in the stream; the others may say it
        if shape.stream.endswith(("@depth5", "@depth10", "@depth20")) or draw(st.booleans()):
            raw_stream = shape.stream
        if market == "spot" and "lastUpdateId" in shape.payload:
            raw_stream = shape.stream
    ts_recv = draw(st.integers(0, INT64_MAX))
    return Case(frame, venue, market, raw_stream, unit, ts_recv)


# ------------------------------------------------------------------------------------------
# (a) valid frames: exactly the reference, and a lossless wire round trip


def _data_events(out: list[Any]) -> list[Any]:
    assert not any(isinstance(x, Reply) for x in out), f"a data frame gave replies: {out}"
    return out


def assert_same_as_reference(events: list[Any], expected: list[dict[str, Any]]) -> None:
    got = [ev.to_wire() for ev in events]
    assert got == expected
    for ev, exp in zip(events, expected, strict=True):
        wire = meltica.wire.encode(ev)
        assert json.loads(wire) == exp
        back = meltica.wire.decode(wire)
        assert back.to_wire() == ev.to_wire() == exp


@SETTINGS
@given(valid_cases())
def test_valid_frames_match_reference(case: Case) -> None:
    expected = case.reference()
    assert expected, "the generator makes data frames only"
    events = _data_events(case.parser().parse(case.frame, case.ts_recv))
    assert_same_as_reference(events, expected)


@st.composite
def rest_bodies(draw: st.DrawFn) -> tuple[str, str, bytes, str]:
    market = draw(st.sampled_from(["spot", "usdm", "coinm"]))
    venue = draw(st.sampled_from(["binance", "binance_us"])) if market == "spot" else "binance"
    body: dict[str, Any] = {"lastUpdateId": draw(ids)}
    if market != "spot":
        body |= {"E": draw(times("ms")), "T": draw(times("ms"))}
    body |= {"bids": draw(levels()), "asks": draw(levels())}
    return venue, market, _dumps(draw, body), draw(symbols(market))


@SETTINGS
@given(rest_bodies(), st.integers(0, INT64_MAX))
def test_rest_depth_matches_reference(rest: tuple[str, str, bytes, str], ts_recv: int) -> None:
    venue, market, body, symbol = rest
    expected = reference_rest_depth(
        body, venue=venue, market=market, symbol=symbol, ts_recv=ts_recv
    )
    ev = FrameParser(venue=venue, market=market).parse_rest_depth(body, symbol, ts_recv)
    assert_same_as_reference([ev], [expected])


def _book_ticker_frame(bid_price: str) -> bytes:
    payload = {"u": 1, "s": "BTCUSDT", "b": bid_price, "B": "1", "a": "1", "A": "1"}
    return json.dumps({"stream": "btcusdt@bookTicker", "data": payload}).encode()


def _mark_price_frame(funding_rate: str) -> bytes:
    """A frame whose funding rate (a decimal that may be negative) is ``funding_rate``."""
    payload = {"e": "markPriceUpdate", "E": 1, "s": "BTCUSDT", "p": "1", "r": funding_rate}
    return json.dumps({"stream": "btcusdt@markPrice", "data": payload}).encode()


# (as sent, on the wire): exactly as sent, except that a mantissa overflowing int64 loses
# trailing fractional zeros just until it fits and a negative zero its sign
# (docs/wire-format.md, "Rules")
DECIMAL_WIRE_FORMS = [
    ("67234.56000000", "67234.56000000"),
    ("0.00000000", "0.00000000"),
    ("0", "0"),
    ("-0.00010000", "-0.00010000"),
    ("-0.00000000", "0.00000000"),
    ("-0", "0"),
    ("1.000000000000000000", "1.000000000000000000"),  # 19 digits but fits: kept
    ("1234567890.1234567890", "1234567890.123456789"),
    ("1.0000000000000000000", "1.000000000000000000"),  # one zero is enough
    ("123456789012345678.00", "123456789012345678.0"),
    ("0.10000000000000000000000", "0.1000000000000000000"),
]


@pytest.mark.parametrize(("sent", "wire"), DECIMAL_WIRE_FORMS)
def test_decimal_wire_form(sent: str, wire: str) -> None:
    frame = _mark_price_frame(sent)
    (expected,) = reference_events(frame, venue="binance", market="usdm", ts_recv=1)
    assert expected["funding_rate"] == wire
    (ev,) = FrameParser(market="usdm").parse(frame, 1)
    assert ev.to_wire()["funding_rate"] == wire
    assert_same_as_reference([ev], [expected])


@pytest.mark.parametrize(
    "sent", ["9223372036854775808", "922337203685477580.80", "-9223372036854775809", "1" * 25]
)
def test_decimal_beyond_int64_is_rejected(sent: str) -> None:
    with pytest.raises(NumberError):
        FrameParser().parse(_book_ticker_frame(sent), 1)


REPLIES = [
    b'{"result":null,"id":1}',
    b'{"result":["btcusdt@aggTrade","btcusdt@depth"],"id":3}',
    b'{"result":true,"id":2}',
    b'{"result":null,"id":"a1b2c3"}',
    b'{"code":0,"msg":"Unknown property","id":7}',
    b'{"code":2,"msg":"Invalid request: unknown variant `SUBSCRIB`"}',
    b'{"code":3,"msg":"Invalid JSON: expected value at line 1 column 1"}',
    # not an ack, but control-plane too: the parser may hand it up as a Reply
    b'{"e":"serverShutdown","E":1}',
    b'{"stream":"!serverShutdown","data":{"e":"serverShutdown","E":1}}',
]


@pytest.mark.parametrize("frame", REPLIES)
def test_replies_are_not_events(frame: bytes) -> None:
    assert reference_events(frame, venue="binance", market="spot", ts_recv=1) == []
    out = FrameParser().parse(frame, 1)
    assert all(isinstance(x, Reply) for x in out)


UNKNOWN = [
    b'{"e":"avgPrice","E":1,"s":"BTCUSDT","i":"5m","w":"1.0","T":1}',
    b'{"stream":"btcusdt@avgPrice","data":{"e":"avgPrice","E":1,"s":"BTCUSDT","i":"5m",'
    b'"w":"1.0","T":1}}',
    b'{"e":"blockTrade","E":1,"s":"BTCUSDT","t":1,"p":"1.0","q":"1.0","T":1,"m":true}',
]


@pytest.mark.parametrize("frame", UNKNOWN)
def test_unknown_event_types_are_counted_and_skipped(frame: bytes) -> None:
    assert reference_events(frame, venue="binance", market="spot", ts_recv=1) == []
    p = FrameParser()
    assert p.parse(frame, 1) == []
    assert p.unknown == 1


# ------------------------------------------------------------------------------------------
# (b) broken frames: events or ParseError, never anything else


def parse_or_parse_error(parser: FrameParser, frame: bytes, ts_recv: int = 0) -> list[Any] | None:
    """The parser's output, or None when it raised ParseError; anything else propagates."""
    try:
        return parser.parse(frame, ts_recv)
    except ParseError:
        return None


def reference_or_none(case: Case) -> list[dict[str, Any]] | None:
    try:
        return case.reference()
    except Exception:  # the reference rejects what it does not understand, any way it likes
        return None


@SETTINGS
@given(valid_cases(), st.data())
def test_byte_flips_never_crash(case: Case, data: st.DataObject) -> None:
    frame = bytearray(case.frame)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(frame) - 1))
        frame[pos] = data.draw(st.integers(0, 255))
    parse_or_parse_error(case.parser(), bytes(frame), case.ts_recv)


@SETTINGS
@given(valid_cases(), st.data())
def test_truncation_never_crashes(case: Case, data: st.DataObject) -> None:
    end = data.draw(st.integers(0, len(case.frame) - 1))
    out = parse_or_parse_error(case.parser(), case.frame[:end], case.ts_recv)
    assert out is None, f"a frame truncated at {end} was accepted: {out}"


@SETTINGS
@given(st.binary(max_size=512), st.sampled_from(["spot", "usdm", "coinm"]))
def test_random_bytes_never_crash(frame: bytes, market: str) -> None:
    parse_or_parse_error(FrameParser(market=market), frame)


MIN_FRAME_LIMIT = 64  # the smallest max_frame_bytes FrameParser accepts


@SETTINGS
@given(valid_cases())
def test_oversized_frames_are_rejected(case: Case) -> None:
    limit = max(MIN_FRAME_LIMIT, len(case.frame))
    # trailing whitespace keeps the JSON valid while making the frame as long as needed
    with pytest.raises(FrameTooLarge):
        case.parser(max_frame_bytes=limit).parse(case.frame.ljust(limit + 1), case.ts_recv)
    at_limit = case.parser(max_frame_bytes=limit).parse(case.frame.ljust(limit), case.ts_recv)
    assert [ev.to_wire() for ev in at_limit] == case.reference()


def test_frame_beyond_default_limit_is_rejected() -> None:
    level = ["67234.56000000", "0.00100000"]
    payload = {"e": "depthUpdate", "E": 1, "s": "BTCUSDT", "U": 1, "u": 2, "b": [level] * 40_000}
    frame = json.dumps({"stream": "btcusdt@depth", "data": {**payload, "a": []}}).encode()
    assert len(frame) > 1 << 20
    with pytest.raises(FrameTooLarge):
        FrameParser(max_frame_bytes=1 << 20).parse(frame, 0)


# Values that break a field: numbers in the wrong form, wrong JSON types, overflow.
BAD_VALUES = st.sampled_from(
    [
        None,
        True,
        False,
        [],
        {},
        "",
        "x",
        "1e5",
        "1.5e-3",
        "+1.0",
        ".5",
        "5.",
        "--1",
        "1.2.3",
        " 1.0",
        "NaN",
        "99999999999999999999",
        "9223372036854775808",
        "1.00000000000000000001",
        1.5,
        1e5,
        -0.0,
        1e300,
        2**63,
        2**64 + 7,
        -(2**63) - 1,
        -1,
        10**30,
        "123",
    ]
)


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside a JSON document."""
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


def _at(obj: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        obj = obj[step]
    return obj


def _json_mutation(doc: Any, data: st.DataObject) -> tuple[Any, tuple[Any, ...]]:
    """One structural mutation (replace a value, delete a key, drop a list item): the
    mutated document and the path it touched."""
    paths = _paths(doc)
    if not paths:
        return data.draw(BAD_VALUES), ()
    path = data.draw(st.sampled_from(paths))
    parent = _at(doc, path[:-1])
    if data.draw(st.sampled_from(["replace", "replace", "delete"])) == "delete":
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(BAD_VALUES)
    return doc, path


@SETTINGS
@given(valid_cases(), st.data())
def test_structural_mutations_never_crash(case: Case, data: st.DataObject) -> None:
    doc = json.loads(case.frame)
    touched = []
    for _ in range(data.draw(st.integers(1, 3))):
        doc, path = _json_mutation(doc, data)
        touched.append(path)
    mutated = case._replace(frame=json.dumps(doc).encode())
    out = parse_or_parse_error(mutated.parser(), mutated.frame, mutated.ts_recv)
    expected = reference_or_none(mutated)
    # A broken stream name or event type has no specified meaning (the reference routes
    # by the stream, the parser may check ``e`` too); otherwise, when both accept the
    # mutated frame (an optional field dropped, an ignored one changed...), they agree.
    routing_broken = any(path[-1:] in (("stream",), ("e",)) for path in touched)
    if out is not None and expected is not None and not routing_broken:
        events = [x for x in out if not isinstance(x, Reply)]
        assert [ev.to_wire() for ev in events] == expected


# ------------------------------------------------------------------------------------------
# (c) signed values: a number of a valid frame made negative or zero is accepted or
# rejected exactly as the reference says; a rejection is a ValueRangeError


def _is_time(path: tuple[Any, ...]) -> bool:
    """Exchange times (the parser rejects negative ones as NumberError, not in scope here)."""
    key = path[-1]
    return key in ("E", "T", "O", "C") or (key == "t" and "k" in path)


def _numbers(doc: Any) -> list[tuple[Any, ...]]:
    """Paths to the decimal strings and integers of a payload (not the envelope, not times)."""
    out = []
    for path in _paths(doc):
        value = _at(doc, path)
        if path[:1] == ("stream",) or _is_time(path) or isinstance(value, bool):
            continue
        if isinstance(value, int) or (isinstance(value, str) and DECIMAL.fullmatch(value)):
            out.append(path)
    return out


DECIMAL = re.compile(r"-?[0-9]+(\.[0-9]+)?")


def signed_mutation(case: Case, data: st.DataObject) -> Case | None:
    """The case with one of its numbers replaced by a negative or zero form (None: the
    frame has no number to change)."""
    doc = json.loads(case.frame)
    paths = _numbers(doc)
    if not paths:
        return None
    path = data.draw(st.sampled_from(paths))
    parent = _at(doc, path[:-1])
    value = parent[path[-1]]
    if isinstance(value, int):
        forms: list[Any] = [-1, 0, -abs(value) if value else -1]
    else:
        forms = ["0", "-0", "0.00000000", value if value.startswith("-") else "-" + value]
    parent[path[-1]] = data.draw(st.sampled_from(forms))
    return case._replace(frame=json.dumps(doc, separators=(",", ":")).encode())


@SETTINGS
@given(valid_cases(), st.data())
def test_signed_values_match_reference(case: Case, data: st.DataObject) -> None:
    mutated = signed_mutation(case, data)
    if mutated is None:
        return
    try:
        expected = mutated.reference()
    except ImplausibleValue:
        with pytest.raises(ValueRangeError):
            mutated.parser().parse(mutated.frame, mutated.ts_recv)
        return
    events = _data_events(mutated.parser().parse(mutated.frame, mutated.ts_recv))
    assert [ev.to_wire() for ev in events] == expected


@SETTINGS
@given(rest_bodies(), st.data())
def test_rest_depth_signed_values_match_reference(
    rest: tuple[str, str, bytes, str], data: st.DataObject
) -> None:
    venue, market, body, symbol = rest
    case = Case(body, venue, market, None, "ms", 1)
    mutated = signed_mutation(case, data)
    if mutated is None:
        return
    parser = FrameParser(venue=venue, market=market)
    try:
        expected = reference_rest_depth(
            mutated.frame, venue=venue, market=market, symbol=symbol, ts_recv=1
        )
    except ImplausibleValue:
        with pytest.raises(ValueRangeError):
            parser.parse_rest_depth(mutated.frame, symbol, 1)
        assert parser.rejects == {"value_range": 1}
        return
    assert parser.parse_rest_depth(mutated.frame, symbol, 1).to_wire() == expected


NUMBER_FORMS = [b"1.5", b"1e3", b"1E+3", b"-0", b"-1", b"1.0", b"0.1e1", b"9223372036854775808"]
NUMBER_FORMS += [b"18446744073709551616", b"1" * 40, b"-" + b"9" * 25, b"1e400", b"00"]


# a JSON integer token (not inside a string: Binance strings never follow ':' '[' ',')
INTEGER_TOKEN = re.compile(rb"(?<=[:\[,])\s*(-?[0-9]+)(?=\s*[,\]}])")


@SETTINGS
@given(valid_cases(), st.data())
def test_integers_in_other_number_forms_never_crash(case: Case, data: st.DataObject) -> None:
    """A JSON integer of the frame rewritten as a float, an exponent or an overflow."""
    tokens = [m.span(1) for m in INTEGER_TOKEN.finditer(case.frame)]
    if not tokens:
        return
    start, end = data.draw(st.sampled_from(tokens))
    form = data.draw(st.sampled_from(NUMBER_FORMS))
    frame = case.frame[:start] + form + case.frame[end:]
    parse_or_parse_error(case.parser(), frame, case.ts_recv)


REAL_SHAPED = [
    (
        "spot",
        b'{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1723161255208,'
        b'"s":"BTCUSDT","U":50093239189,"u":50093239202,"b":[["61737.63000000","0.00000000"]],'
        b'"a":[["61837.64000000","1.54698000"]]}}',
    ),
    (
        "spot",
        b'{"stream":"btcusdt@bookTicker","data":{"u":50093239212,"s":"BTCUSDT",'
        b'"b":"61837.63000000","B":"3.78826000","a":"61837.64000000","A":"1.54698000"}}',
    ),
    (
        "spot",
        b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1723161255343,"s":"BTCUSDT",'
        b'"t":3735683259,"p":"61837.63000000","q":"0.02000000","T":1723161255342,"m":true,'
        b'"M":true}}',
    ),
    (
        "spot",
        b'{"stream":"btcusdt@depth5","data":{"lastUpdateId":50093239218,'
        b'"bids":[["61837.63000000","3.78826000"]],"asks":[["61837.64000000","1.54698000"]]}}',
    ),
    (
        "usdm",
        b'{"stream":"btcusdt@depth@0ms","data":{"e":"depthUpdate","E":1680652700435,'
        b'"T":1680652700430,"s":"BTCUSDT","U":2710246762400,"u":2710246762461,'
        b'"pu":2710246762399,"b":[["28145.10","3.868"]],"a":[["28145.20","0.000"]]}}',
    ),
    (
        "usdm",
        b'{"stream":"btcusdt@markPrice@1s","data":{"e":"markPriceUpdate","E":1680652700000,'
        b'"s":"BTCUSDT","p":"28150.10000000","P":"28149.52391304","i":"28160.22434783",'
        b'"r":"-0.00003264","T":1680681600000}}',
    ),
    (
        "usdm",
        b'{"stream":"!forceOrder@arr","data":{"e":"forceOrder","E":1568014460893,'
        b'"o":{"s":"BTCUSDT","S":"SELL","o":"LIMIT","f":"IOC","q":"0.014","p":"9910",'
        b'"ap":"9910","X":"FILLED","l":"0.014","z":"0.014","T":1568014460893}}}',
    ),
    (
        "usdm",
        b'{"stream":"btcusdt@kline_1m","data":{"e":"kline","E":1626992741000,"s":"BTCUSDT",'
        b'"k":{"t":1626992700000,"T":1626992759999,"s":"BTCUSDT","i":"1m","f":100,"L":200,'
        b'"o":"0.0010","c":"0.0020","h":"0.0025","l":"0.0015","v":"1000","n":100,"x":false,'
        b'"q":"1.0000","V":"500","Q":"0.500","B":"123456"}}}',
    ),
    (
        "spot",
        b'{"stream":"!miniTicker@arr","data":[{"e":"24hrMiniTicker","E":1672515782136,'
        b'"s":"BNBBTC","c":"0.0025","o":"0.0010","h":"0.0025","l":"0.0010","v":"10000",'
        b'"q":"18"}]}',
    ),
]


@pytest.mark.parametrize(("market", "frame"), REAL_SHAPED)
def test_truncation_at_every_position(market: str, frame: bytes) -> None:
    expected = reference_events(frame, venue="binance", market=market, ts_recv=5)
    parser = FrameParser(market=market)
    assert [ev.to_wire() for ev in parser.parse(frame, 5)] == expected
    for end in range(len(frame)):
        # no proper prefix of a JSON object is JSON
        out = parse_or_parse_error(parser, frame[:end], 5)
        assert out is None, f"truncated at {end} and accepted: {out}"

"""Canonical event classes: Fixed, Control events, repr and the settable fields."""

from __future__ import annotations

import pickle
from decimal import Decimal
from typing import Any

import pytest

import meltica
from meltica import Control, Fixed, FrameParser
from meltica._core import events
from meltica.errors import NumberError, ParseError

TRADE = (
    b'{"e":"trade","E":1723161255343,"s":"BTCUSDT","t":3735683259,"p":"61837.63000000",'
    b'"q":"0.02000000","T":1723161255342,"m":true,"M":true}'
)


def trade() -> Any:
    (ev,) = FrameParser().parse(TRADE, 7)
    return ev


# Fixed


@pytest.mark.parametrize(
    ("text", "mantissa", "exponent"),
    [
        ("61837.63000000", 6183763000000, -8),
        ("0.00000000", 0, -8),
        ("-0.00010000", -10000, -8),
        ("100", 100, 0),
        ("-5", -5, 0),
        ("0.0000001", 1, -7),
    ],
)
def test_fixed_from_str_and_back(text: str, mantissa: int, exponent: int) -> None:
    f = Fixed(text)
    assert (f.mantissa, f.exponent) == (mantissa, exponent)
    assert str(f) == text
    assert repr(f) == f"Fixed('{text}')"
    assert f.decimal == Decimal(text)
    assert f.decimal.as_tuple().exponent == exponent
    assert float(f) == float(text)
    again = Fixed(str(f))
    assert (again.mantissa, again.exponent) == (mantissa, exponent)


def test_fixed_from_other_values() -> None:
    assert str(Fixed(Decimal("1.250"))) == "1.250"
    assert str(Fixed(3)) == "3"
    copy = Fixed(Fixed("1.50"))
    assert (copy.mantissa, copy.exponent) == (150, -2)


@pytest.mark.parametrize("text", ["abc", "1e5", "1.2.3", "+1", ".5", "1.", "", " 1", "NaN"])
def test_fixed_rejects_non_decimals(text: str) -> None:
    with pytest.raises(NumberError, match="not an exact int64 decimal"):
        Fixed(text)
    assert issubclass(NumberError, ParseError)


def test_fixed_rejects_values_beyond_int64() -> None:
    with pytest.raises(NumberError):
        Fixed("9223372036854775808")
    assert Fixed("9223372036854775807").mantissa == 9223372036854775807
    # trailing zeros are dropped only when needed to fit, as few as needed, value unchanged
    f = Fixed("1.00000000000000000000")
    assert (f.mantissa, f.exponent, str(f)) == (10**18, -18, "1.000000000000000000")


def test_fixed_equality_is_exact_across_exponents_and_types() -> None:
    assert Fixed("1.50") == Fixed("1.5")
    assert Fixed("1.50") == Fixed("1.500000")
    assert Fixed("1.50") == Decimal("1.5")
    assert Fixed("2.00") == 2
    assert Fixed("-0.00010000") == Decimal("-0.0001")
    assert Fixed("0.00000000") == 0
    assert Fixed("1.50") != Fixed("1.51")
    assert Fixed("2.00") != 3
    assert Fixed("1.5") != "1.5"


def test_fixed_hash_matches_equality() -> None:
    assert hash(Fixed("1.50")) == hash(Fixed("1.5")) == hash(Decimal("1.5"))
    assert hash(Fixed("2.000")) == hash(2)
    assert len({Fixed("1.5"), Fixed("1.50"), Fixed("1.500")}) == 1
    prices = {Fixed("61837.63000000"): "bid"}
    assert prices[Fixed("61837.63")] == "bid"
    assert prices[Decimal("61837.63")] == "bid"


def test_fixed_pickles_exactly() -> None:
    f = pickle.loads(pickle.dumps(Fixed("-0.00010000")))
    assert (f.mantissa, f.exponent, str(f)) == (-10000, -8, "-0.00010000")


def test_fixed_is_read_only() -> None:
    f: Any = Fixed("1.5")
    with pytest.raises(AttributeError):
        f.mantissa = 2


# Control events

CONTROL_CASES = [
    (
        "gap",
        {"reason": "sequence gap", "from_seq": 101, "to_seq": 105},
        {"from_seq": 101, "to_seq": 105, "stale": None, "state": None, "connection": None},
    ),
    (
        "resync_started",
        {"reason": "gap", "from_seq": 106},
        {"from_seq": 106, "to_seq": None, "stale": None, "state": None, "connection": None},
    ),
    (
        "resync_done",
        {"reason": "snapshot applied", "to_seq": 210},
        {"from_seq": None, "to_seq": 210, "stale": None, "state": None, "connection": None},
    ),
    (
        "stale",
        {"reason": "no data for 30s", "stale": True},
        {"from_seq": None, "to_seq": None, "stale": True, "state": None, "connection": None},
    ),
    (
        "connection_state",
        {"reason": "reconnect", "state": "connected", "connection": "usdm-public-0"},
        {
            "from_seq": None,
            "to_seq": None,
            "stale": None,
            "state": "connected",
            "connection": "usdm-public-0",
        },
    ),
]


@pytest.mark.parametrize(
    ("kind", "kwargs", "extra"), CONTROL_CASES, ids=[c[0] for c in CONTROL_CASES]
)
def test_control_event(kind: str, kwargs: dict[str, Any], extra: dict[str, Any]) -> None:
    ev = Control(
        kind, venue="binance", market="usdm", symbol="BTCUSDT", seq=42, ts_recv=99, **kwargs
    )
    key = f"binance:usdm:BTCUSDT:{kind}:42"
    expected = {
        "v": 1,
        "venue": "binance",
        "market": "usdm",
        "symbol": "BTCUSDT",
        "kind": kind,
        "key": key,
        "seq": 42,
        "ts_event": None,
        "ts_transaction": None,
        "ts_recv": 99,
        "trace": None,
        "reason": kwargs["reason"],
        **extra,
    }
    assert ev.to_wire() == expected
    assert ev.key == key
    assert ev.kind == kind
    assert repr(ev) == f"<Control {key}>"
    assert (ev.from_seq, ev.to_seq, ev.stale) == (
        extra["from_seq"],
        extra["to_seq"],
        extra["stale"],
    )
    back = events.event_from_wire(expected)
    assert type(back) is Control
    assert back.to_wire() == expected


def test_control_stale_false_is_kept() -> None:
    ev = Control(
        "stale",
        venue="binance",
        market="spot",
        symbol="ETHUSDT",
        seq=1,
        ts_recv=0,
        reason="data again",
        stale=False,
    )
    assert ev.stale is False
    assert ev.to_wire()["stale"] is False
    assert events.event_from_wire(ev.to_wire()).stale is False


def test_control_rejects_data_kinds() -> None:
    for kind in ("trade", "book_delta", "nonsense"):
        with pytest.raises(ValueError, match="not a control kind"):
            Control(kind, venue="binance", market="spot", symbol="BTCUSDT", seq=1, ts_recv=0)


def test_control_trace_survives_from_wire() -> None:
    ev = Control(
        "gap",
        venue="binance",
        market="spot",
        symbol="BTCUSDT",
        seq=7,
        ts_recv=5,
        reason="gap",
        from_seq=1,
        to_seq=3,
    )
    ev.trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert events.event_from_wire(ev.to_wire()).to_wire() == ev.to_wire()


# Event repr and the settable fields


def test_kinds_and_event_repr() -> None:
    assert meltica.KINDS == (
        "trade",
        "agg_trade",
        "book_ticker",
        "book_delta",
        "book_snapshot",
        "kline",
        "ticker",
        "mark_price",
        "liquidation",
        "gap",
        "resync_started",
        "resync_done",
        "stale",
        "connection_state",
        "derived",
        "gap_filled",
    )
    assert repr(trade()) == "<Trade binance:spot:BTCUSDT:trade:3735683259>"


def test_ts_recv_and_trace_are_settable() -> None:
    ev = trade()
    assert (ev.ts_recv, ev.trace) == (7, None)
    ev.ts_recv = 1_723_161_254_087_896_568
    ev.trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    wire = ev.to_wire()
    assert wire["ts_recv"] == 1_723_161_254_087_896_568
    assert wire["trace"] == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    # the key does not depend on local fields
    assert wire["key"] == "binance:spot:BTCUSDT:trade:3735683259"
    ev.trace = None
    assert ev.to_wire()["trace"] is None


def test_trace_must_be_str_or_none() -> None:
    ev = trade()
    with pytest.raises(TypeError):
        ev.trace = 5
    with pytest.raises(TypeError):
        ev.trace = b"00-abc"
    with pytest.raises(TypeError):
        ev.ts_recv = "now"
    assert (ev.ts_recv, ev.trace) == (7, None)


def test_exchange_fields_are_read_only() -> None:
    ev = trade()
    for name, value in (("symbol", "ETHUSDT"), ("venue", "binance_us"), ("market", "usdm")):
        with pytest.raises(AttributeError):
            setattr(ev, name, value)
    with pytest.raises(AttributeError):
        ev.price = Fixed("1")
    assert ev.key == "binance:spot:BTCUSDT:trade:3735683259"

"""The compiled wire codec (meltica._core.wire) against the stdlib reference.

The reference is what ``meltica.wire`` did before it was compiled: the stdlib
JSON encoder over ``Event.to_wire()`` for encoding, ``json.loads`` +
``event_from_wire`` for decoding.  The compiled encoder must give the same
bytes for every event; the compiled decoder must accept exactly what the
reference accepts, build the same events and raise the same WireErrors, and
take the compiled path (no reference call) for everything the encoder writes.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_wire import TRACE, VALIDATOR, all_events, control, derived, parsed

from meltica import Control, Derived, Event
from meltica._core import wire as cwire
from meltica._core.events import (
    KLINE_DECIMALS,
    LIQ_DECIMALS,
    MARK_DECIMALS,
    MARKETS,
    SIDES,
    SOURCE_NAMES,
    TICKER_DECIMALS,
    TICKER_INTS,
    TICKER_WINDOWS,
    VENUES,
    event_from_wire,
)
from meltica.capture import capture_info
from meltica.errors import CaptureError, WireError
from meltica.normalize import iter_events
from meltica.wire import decode, decode_lines, encode, encode_each, encode_lines

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def reference_encode(ev: Event) -> bytes:
    return _dumps(ev.to_wire()).encode()


def reference_decode(data: bytes | str) -> Event:
    try:
        obj = json.loads(data)
    except ValueError as exc:
        raise WireError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise WireError("a wire event is a JSON object")
    ev: Event = event_from_wire(obj)
    return ev


def assert_same_decode(data: bytes | str) -> None:
    """decode(data) behaves as the reference: same event, or the same WireError."""
    try:
        want = reference_decode(data)
    except WireError as exc:
        with pytest.raises(WireError) as info:
            decode(data)
        assert str(info.value) == str(exc)
        return
    got = decode(data)
    assert type(got) is type(want)
    assert got.to_wire() == want.to_wire()


# ---------------------------------------------------------------- every kind


@pytest.mark.parametrize("ev", all_events(), ids=lambda ev: f"{ev.market}-{ev.kind}")
def test_every_kind_encodes_like_the_stdlib(ev: Event) -> None:
    assert encode(ev) == reference_encode(ev)
    ev.trace = TRACE
    assert encode(ev) == reference_encode(ev)
    before = cwire.reference_decodes()
    assert decode(encode(ev)).to_wire() == ev.to_wire()
    assert cwire.reference_decodes() == before  # the compiled path read it


def test_batch_apis_agree_with_encode() -> None:
    events = all_events()
    assert encode_lines(events) == b"".join(reference_encode(e) + b"\n" for e in events)
    assert encode_lines(iter(events)) == encode_lines(events)  # any iterable
    assert encode_lines([]) == b""
    data, ends = encode_each(events)
    starts = [0, *ends[:-1]]
    assert [data[a:b] for a, b in zip(starts, ends, strict=True)] == [encode(e) for e in events]
    assert [e.to_wire() for e in decode_lines(encode_lines(events))] == [
        e.to_wire() for e in events
    ]


NASTY = ['q"uote', "back\\slash", "nl\nret\rtab\tff\fbs\b", "\x00\x01\x1f\x7f", "é€𝄞", "", " "]


@pytest.mark.parametrize("text", NASTY)
def test_nasty_strings_escape_like_the_stdlib(text: str) -> None:
    events: list[Event] = [
        Control(
            "connection_state",
            venue="binance",
            market="usdm",
            symbol="S" + text,
            seq=-5,
            ts_recv=0,
            reason=text,
            state=text,
            connection=text,
            stale=False,
        ),
        Derived("binance", "spot", "X" + text, "n" + text, 7, None, 1, {"k" + text: "-0.5"}),
    ]
    for ev in events:
        ev.trace = text
        assert encode(ev) == reference_encode(ev)
        assert VALIDATOR.is_valid(json.loads(encode(ev)))
        assert decode(encode(ev)).to_wire() == ev.to_wire()


def test_none_strings_and_empty_levels_encode_like_the_stdlib() -> None:
    ev = Control("gap", venue=None, market=None, symbol=None, seq=1, ts_recv=2, reason=None)
    assert encode(ev) == reference_encode(ev)
    assert b'"key":"None:None:None:gap:1"' in encode(ev)
    depth = decode(encode(parsed("book_delta")))
    empty = event_from_wire({**depth.to_wire(), "bids": [], "asks": []})
    assert encode(empty) == reference_encode(empty)
    assert b'"bids":[],"asks":[]' in encode(empty)


def test_remembered_event_heads_match_the_stdlib() -> None:
    """The encoder reuses the head text of recent (venue, market, symbol)
    strings: equal text in other objects, a venue or market change under the
    same symbol, more symbols than it remembers, escaped and over-long ones
    must all still give the stdlib bytes."""
    symbols = ["BTCUSDT", "ETHUSDT", 'q"x', "é€𝄞", "a\nb", "S" * 300, "", "XRPUSDT"]
    events: list[Event] = []
    for rnd in range(3):
        for i, sym in enumerate(symbols * 2):
            copy = "".join(list(sym))  # equal text, usually another object
            for venue, market in (("binance", "spot"), ("binance", "usdm"), (None, "spot")):
                kind = ("gap", "stale", "connection_state")[(i + rnd) % 3]
                events.append(
                    Control(kind, venue=venue, market=market, symbol=copy, seq=i, ts_recv=rnd)
                )
            events.append(Derived("binance", "spot", "D" + copy, "n", i, None, rnd, {"k": "1"}))
    want = [reference_encode(ev) for ev in events]
    assert encode_lines(events) == b"".join(w + b"\n" for w in want)
    assert [encode(ev) for ev in reversed(events)] == want[::-1]


def test_a_lone_surrogate_fails_as_the_stdlib_path_does() -> None:
    ev = control("gap")
    ev.trace = "\ud800"
    with pytest.raises(UnicodeEncodeError):
        reference_encode(ev)
    with pytest.raises(UnicodeEncodeError):
        encode(ev)
    with pytest.raises(UnicodeEncodeError):
        encode_lines([control("stale"), ev])
    assert encode(control("stale")) == reference_encode(control("stale"))  # buffer reset


def test_non_events_are_refused() -> None:
    with pytest.raises(TypeError):
        encode_lines([control("gap"), {"kind": "gap"}])
    with pytest.raises(TypeError):
        encode(None)  # type: ignore[arg-type]


# ---------------------------------------------------------------- hypothesis

INT64 = st.integers(-(2**63) + 1, 2**63 - 1)
OPT_INT = st.none() | INT64
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)


@st.composite
def decimals(draw: st.DrawFn) -> str:
    """A decimal string the parser keeps exactly: int64 mantissa, up to 60 fraction digits."""
    m = draw(st.integers(-(2**63) + 1, 2**63 - 1) | st.integers(-1000, 1000))
    frac = draw(st.integers(0, 60))
    digits = str(abs(m)).rjust(frac + 1, "0")
    text = digits if frac == 0 else f"{digits[:-frac]}.{digits[-frac:]}"
    return ("-" if m < 0 else "") + text


OPT_DEC = st.none() | decimals()
LEVELS = st.lists(st.lists(decimals(), min_size=2, max_size=2), max_size=4)


def kind_fields(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    if kind in ("trade", "agg_trade"):
        extra = {"first_trade_id": OPT_INT, "last_trade_id": OPT_INT} if kind == "agg_trade" else {}
        return st.fixed_dictionaries(
            {
                "trade_id": INT64,
                **extra,
                "price": decimals(),
                "qty": decimals(),
                "side": st.sampled_from(SIDES),
            }
        )
    if kind == "book_ticker":
        names = ("bid_price", "bid_qty", "ask_price", "ask_qty")
        return st.fixed_dictionaries({"update_id": INT64, **{n: decimals() for n in names}})
    if kind in ("book_delta", "book_snapshot"):
        extra = {"source": st.sampled_from(SOURCE_NAMES)} if kind == "book_snapshot" else {}
        return st.fixed_dictionaries(
            {
                "update_id": INT64,
                "first_update_id": OPT_INT,
                "prev_update_id": OPT_INT,
                "bids": LEVELS,
                "asks": LEVELS,
                **extra,
            }
        )
    if kind == "kline":
        ints = ("open_time", "close_time", "first_trade_id", "last_trade_id", "trades")
        return st.fixed_dictionaries(
            {
                "interval": TEXT,
                **{n: INT64 for n in ints},
                **{n: decimals() for n in KLINE_DECIMALS},
                "closed": st.booleans(),
            }
        )
    if kind == "ticker":
        return st.fixed_dictionaries(
            {
                "window": st.sampled_from(TICKER_WINDOWS),
                **{n: OPT_DEC for n in TICKER_DECIMALS},
                **{n: OPT_INT for n in TICKER_INTS},
            }
        )
    if kind == "mark_price":
        return st.fixed_dictionaries(
            {**{n: OPT_DEC for n in MARK_DECIMALS}, "next_funding_time": OPT_INT}
        )
    if kind == "liquidation":
        opt_text = st.none() | TEXT
        return st.fixed_dictionaries(
            {
                "side": st.sampled_from(SIDES),
                "order_type": opt_text,
                "time_in_force": opt_text,
                "status": opt_text,
                **{n: OPT_DEC for n in LIQ_DECIMALS},
            }
        )
    if kind == "derived":
        return st.fixed_dictionaries(
            {
                "name": TEXT.filter(bool),
                "values": st.dictionaries(TEXT.filter(bool), decimals(), max_size=4),
            }
        )
    return st.fixed_dictionaries(
        {
            "reason": TEXT,
            "from_seq": OPT_INT,
            "to_seq": OPT_INT,
            "stale": st.none() | st.booleans(),
            "state": st.none() | TEXT,
            "connection": st.none() | TEXT,
        }
    )


KINDS = [
    *("trade", "agg_trade", "book_ticker", "book_delta", "book_snapshot", "kline", "ticker"),
    *("mark_price", "liquidation", "gap", "resync_started", "resync_done", "stale"),
    *("connection_state", "derived"),
]


@st.composite
def wire_dicts(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(KINDS))
    made_by_meltica = kind in ("derived", *KINDS[9:14])
    d = {
        "v": 1,
        "venue": draw(st.sampled_from(VENUES)),
        "market": draw(st.sampled_from(MARKETS)),
        "symbol": draw(TEXT.filter(bool)),
        "kind": kind,
        "key": "ignored",
        "seq": draw(INT64 if made_by_meltica else OPT_INT),
        "ts_event": draw(OPT_INT),
        "ts_transaction": draw(OPT_INT),
        "ts_recv": draw(INT64),
        "trace": draw(st.none() | TEXT),
    }
    d.update(draw(kind_fields(kind)))
    return d


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(wire_dicts())
def test_generated_events_encode_like_the_stdlib_and_round_trip(d: dict[str, Any]) -> None:
    ev = event_from_wire(d)
    data = encode(ev)
    assert data == reference_encode(ev)
    assert VALIDATOR.is_valid(json.loads(data))
    before = cwire.reference_decodes()
    back = decode(data)
    assert cwire.reference_decodes() == before
    assert type(back) is type(ev)
    assert back.to_wire() == ev.to_wire()
    assert encode(back) == data


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.floats(allow_nan=False)
    | TEXT
    | decimals(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(wire_dicts(), st.data())
def test_damaged_documents_decode_like_the_reference(
    d: dict[str, Any], data: st.DataObject
) -> None:
    """Dropped keys, wrong types, odd numbers: the same event or the same WireError."""
    keys = sorted(d)
    for _ in range(data.draw(st.integers(1, 3))):
        name = data.draw(st.sampled_from(keys))
        if data.draw(st.booleans()):
            d.pop(name, None)
        else:
            d[name] = data.draw(JSON_VALUES)
    text = json.dumps(d, ensure_ascii=data.draw(st.booleans()))
    if data.draw(st.booleans()):  # key order is free in JSON
        items = list(d.items())
        data.draw(st.randoms()).shuffle(items)
        text = json.dumps(dict(items))
    assert_same_decode(text.encode())


@pytest.mark.parametrize(
    "text",
    [
        # non-canonical but valid: the reference accepts these
        '{"v":1.0,"kind":"gap","venue":"binance","market":"spot","symbol":"X","seq":1,"ts_recv":2}',
        '{"v":true,"kind":"gap","venue":"binance","market":"spot","symbol":"X","seq":1,"ts_recv":2}',
        '{"v":1,"kind":"gap","venue":"binance","market":"spot","symbol":"X","seq":-0,"ts_recv":2}',
        '{"v":1,"kind":"gap","venue":"binance","market":"spot","symbol":"X","seq":1,"ts_recv":2,'
        '"seq":3}',
        '{"v":1,"kind":"gap","venue":"binance","market":"spot","symbol":"\\u0041","seq":1,'
        '"ts_recv":2,"reason":"\\ud83d\\ude00"}',
        '{"v":1,"kind":"gap","venue":"binance","market":"spot","symbol":"X","seq":1,"ts_recv":2,'
        '"extra":[1,{"a":NaN}]}',
        '{"v":1,"kind":"gap","venue":"binance","market":"spot","symbol":"X","seq":1,'
        '"ts_recv":2,"reason":"\\ud800"}',
        # invalid
        '{"v":1,"kind":"gap","venue":"binance","market":"spot","symbol":"X","seq":1,"ts_recv":2',
        '{"v":1,"kind":"gap","venue":"binance","market":"spot","symbol":"X","seq":1,"ts_recv":2} x',
        '{"v":1,"kind":"gap","venue":"binance","market":"spot","symbol":"X","seq":'
        '-9223372036854775808,"ts_recv":2}',
        '{"v":1,"kind":"gap","venue":"binance","market":"spot","symbol":"X","seq":'
        '9223372036854775808,"ts_recv":2}',
        '{"v":1,"kind":"derived","venue":"binance","market":"spot","symbol":"X","seq":1,'
        '"ts_recv":2,"name":"m","values":{"":"1"}}',
        '{"v":1,"kind":"derived","venue":"binance","market":"spot","symbol":"X","seq":1,'
        '"ts_recv":2,"name":"m","values":{"a":"1","b":"2","a":"3"}}',
        "[]",
        "",
        " ",
    ],
)
def test_edge_documents_decode_like_the_reference(text: str) -> None:
    assert_same_decode(text.encode())
    assert_same_decode(text)


def test_invalid_utf8_is_not_json() -> None:
    data = encode(control("gap")).replace(b'"test"', b'"\xff"')
    with pytest.raises(WireError, match="not JSON"):
        decode(data)


def test_decode_lines_skips_blank_lines_and_names_the_bad_one() -> None:
    a, b = encode(control("gap")), encode(derived())
    got = decode_lines(b"\n" + a + b"\r\n  \n" + b + b"\n")
    assert [e.to_wire() for e in got] == [control("gap").to_wire(), derived().to_wire()]
    assert [e.key for e in decode_lines((a + b"\n" + b).decode())] == [e.key for e in got]
    with pytest.raises(WireError, match=r"^line 3: .*lacks 'seq'"):
        decode_lines(a + b"\n" + b + b"\n" + a.replace(b'"seq":9', b'"seq":null'))
    assert decode_lines(b"") == []


# ---------------------------------------------------------------- real captures


def capture_files(root: Path) -> list[Path]:
    found = []
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        try:
            capture_info(path)
        except CaptureError:
            continue
        found.append(path)
    return found


def test_real_captures_encode_like_the_stdlib(captures_dir: Path) -> None:
    files = capture_files(captures_dir)
    assert len(files) >= 8
    kinds: set[str] = set()
    total = 0
    for path in files:
        events = list(iter_events(path))
        total += len(events)
        kinds.update(e.kind for e in events)
        for i in range(0, len(events), 4096):
            chunk = events[i : i + 4096]
            data = encode_lines(chunk)
            assert data == b"".join(reference_encode(e) + b"\n" for e in chunk), path
            before = cwire.reference_decodes()
            back = decode_lines(data)
            assert cwire.reference_decodes() == before
            assert encode_lines(back) == data
    assert total > 10_000
    assert {"trade", "agg_trade", "book_ticker", "book_delta", "book_snapshot"} <= kinds


def test_normalize_cli_writes_the_stdlib_bytes(captures_dir: Path, tmp_path: Path) -> None:
    """The real CLI (a subprocess) writes, for a real capture, what the stdlib encoder would."""
    capture = captures_dir / "hftbacktest" / "examples" / "spot" / "btcusdt_20240808.gz"
    if not capture.is_file():
        pytest.fail(f"{capture} is missing from the captures directory")
    with gzip.open(capture, "rb") as src:
        head = b"".join(line for _, line in zip(range(3000), src, strict=False))
    small = tmp_path / "spot" / "btcusdt_20240808.gz"
    small.parent.mkdir()
    small.write_bytes(gzip.compress(head))
    out = tmp_path / "events.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "meltica", "normalize", str(small), "-o", str(out)],
        cwd=tmp_path,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    want = b"".join(reference_encode(e) + b"\n" for e in iter_events(small))
    assert want.count(b"\n") > 2000
    assert out.read_bytes() == want

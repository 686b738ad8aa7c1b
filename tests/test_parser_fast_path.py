"""The parser's fast path (frame_scan.hpp) against its simdjson On-Demand path.

The fast path takes the compact frames Binance sends and must either produce exactly
what the simdjson path produces for the same bytes or bail, leaving the frame to
simdjson.  Every test here parses the same bytes with ``FrameParser(fast_path=True)``
and ``FrameParser(fast_path=False)`` and compares the whole outcome: the events' wire
dicts (or the replies), or the error's type and message.  The capture test also checks
that the fast path really takes the frames of real sessions, so the comparison is not
vacuous.
"""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_parser_props import (
    BAD_VALUES,
    SETTINGS,
    Case,
    _json_mutation,
    signed_mutation,
    valid_cases,
)

from meltica import FrameParser, Reply
from meltica.capture import capture_info, read_capture

Outcome = tuple[Any, ...]


def outcome(parser: FrameParser, frame: bytes, ts_recv: int = 7) -> Outcome:
    try:
        out = parser.parse(frame, ts_recv)
    except Exception as exc:  # the comparison is the point: any exception type
        return ("error", type(exc).__name__, str(exc))
    return ("ok", [repr(x) if isinstance(x, Reply) else x.to_wire() for x in out])


def parsers(case: Case) -> tuple[FrameParser, FrameParser]:
    kw = {
        "venue": case.venue,
        "market": case.market,
        "stream": case.stream,
        "time_unit": case.time_unit,
    }
    return FrameParser(**kw, fast_path=True), FrameParser(**kw, fast_path=False)


def assert_same(case: Case, frame: bytes | None = None) -> tuple[Outcome, FrameParser]:
    fast, slow = parsers(case)
    data = case.frame if frame is None else frame
    got, want = outcome(fast, data, case.ts_recv), outcome(slow, data, case.ts_recv)
    assert got == want, data
    assert slow.fast_frames == 0
    return got, fast


# ------------------------------------------------------------------ generated frames


@SETTINGS
@given(valid_cases())
def test_valid_frames_agree(case: Case) -> None:
    result, _ = assert_same(case)
    assert result[0] == "ok"


@SETTINGS
@given(valid_cases(), st.data())
def test_signed_values_agree(case: Case, data: st.DataObject) -> None:
    """A number made negative or zero: both paths accept it, or both reject it with the
    same ValueRangeError (test_parser_unit.py checks the fast path takes such frames)."""
    mutated = signed_mutation(case, data)
    if mutated is not None:
        assert_same(mutated)


@SETTINGS
@given(valid_cases(), st.data())
def test_byte_mutations_agree(case: Case, data: st.DataObject) -> None:
    frame = bytearray(case.frame)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, max(0, len(frame) - 1)))
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        # bytes the scanner treats specially: structure, quotes, escapes, digits, NUL,
        # whitespace, non-ASCII
        byte = data.draw(st.sampled_from(b'{}[]:,"\\0159.-e \t\n\x00\x7f\xc3\xa9tfn'))
        if op == "flip" and frame:
            frame[i] = byte
        elif op == "insert":
            frame.insert(i, byte)
        elif op == "delete" and frame:
            del frame[i]
        else:
            del frame[i:]
    assert_same(case, bytes(frame))


@SETTINGS
@given(valid_cases(), st.data())
def test_structural_mutations_agree(case: Case, data: st.DataObject) -> None:
    doc = json.loads(case.frame)
    for _ in range(data.draw(st.integers(1, 3))):
        doc, _ = _json_mutation(doc, data)
    seps = data.draw(st.sampled_from([(",", ":"), (", ", ": ")]))
    assert_same(case, json.dumps(doc, separators=seps).encode())


@SETTINGS
@given(valid_cases(), st.data())
def test_repeated_keys_agree(case: Case, data: st.DataObject) -> None:
    """A key sent twice: the last value counts on both paths, whatever its type."""
    text = case.frame.decode()
    payload_start = text.find('"data":{') + len('"data":{') if '"data":{' in text else 1
    key = data.draw(st.sampled_from(["p", "q", "b", "B", "a", "u", "E", "s", "e", "m"]))
    value = data.draw(BAD_VALUES | st.sampled_from(["1.5", "7", "abc", "-0.1"]))
    extra = f'"{key}":{json.dumps(value)},'
    where = data.draw(st.sampled_from(["start", "end"]))
    if where == "start":
        frame = text[:payload_start] + extra + text[payload_start:]
    else:
        end = text.rfind("}}") if '"data":{' in text else text.rfind("}")
        if end <= 0:
            return
        frame = text[:end] + "," + extra[:-1] + text[end:]
    assert_same(case, frame.encode())


# ------------------------------------------------------------------ hand-picked frames

TRADE = (
    '{"stream":"btcusdt@trade","data":{"e":"trade","E":1723161255343,"s":"BTCUSDT",'
    '"t":3735683259,"p":"61837.63000000","q":"0.02000000","T":1723161255342,"m":true,"M":true}}'
)


def _case(frame: str | bytes, time_unit: str = "ms") -> Case:
    data = frame.encode() if isinstance(frame, str) else frame
    return Case(data, "binance", "spot", None, time_unit, 7)


@pytest.mark.parametrize(
    ("frame", "taken"),
    [
        (TRADE, True),
        (TRADE.replace(":", ": ").replace(",", ", "), False),  # whitespace: simdjson
        ("\n " + TRADE + " \r\n", False),
        (TRADE.replace('"s":', '"s" :'), False),
        ('{"stream":"btcusdt@trade", "data":' + TRADE[TRADE.index('{"e"') :], False),
        (TRADE.replace("1723161255343", "1723161255343000"), True),  # µs times: 16 digits
        (TRADE.replace("3735683259", "123456789012345678"), True),  # 18 digits
        (TRADE.replace("3735683259", "1234567890123456789"), False),  # 19: simdjson
        (TRADE.replace("3735683259", "03735683259"), False),  # leading zero
        (TRADE.replace("3735683259", "3735683259.0"), False),  # a float id
        (TRADE.replace("3735683259", "-1"), True),
        (TRADE.replace('"BTCUSDT"', '"BTC\\u0055SDT"'), False),  # an escape
        (TRADE.replace('"BTCUSDT"', '"BTCÜSDT"'), False),  # non-ASCII
        (TRADE.replace('"61837.63000000"', '"61837.630000000000000"'), True),  # 19 digits
        (TRADE.replace('"61837.63000000"', '"6e3"'), True),  # not a decimal: NumberError
        (TRADE.replace('"0.02000000"', '"-0.0"'), True),
        (TRADE.replace('"0.02000000"', '"1."'), True),
        (TRADE.replace('"0.02000000"', '".5"'), True),
        (TRADE.replace("true,", "tru,"), False),
        (TRADE.replace("true,", "nul,"), False),
        (TRADE + "x", False),
        (TRADE[:-1], False),
        (TRADE.replace('"M":true', '"M":true\x00'), False),
        (TRADE.replace('"M":true', '"M":[1,2]'), False),  # an unknown array
        (TRADE.replace('"M":true', '"M":{"x":1}'), False),  # an unknown object
        ('{"data":' + TRADE[TRADE.index('{"e"') : -1] + ',"stream":"btcusdt@trade"}', False),
        (TRADE.replace('"stream":"btcusdt@trade",', '"stream":"btcusdt@trade","x":1,'), False),
        ('{"result":null,"id":5}', False),  # acks: simdjson
        ('{"stream":null}', False),  # an envelope whose stream is not a string
        ('{"stream":5,"data":{}}', False),
        ('{"code":2,"msg":"Invalid request"}', True),
        ('{"e":"serverShutdown","E":1}', True),
        ('{"stream":"btcusdt@trade","data":{}}', True),  # MissingField from either path
        ("{}", True),
    ],
)
def test_hand_picked_frames(frame: str, taken: bool) -> None:
    result, fast = assert_same(_case(frame))
    assert fast.fast_frames == int(taken), result


def test_depth_levels_agree() -> None:
    levels = [["61837.63000000", "3.78826000"], ["0.00000001", "0"], ["1", "2.5"]]
    payload = {"e": "depthUpdate", "E": 1, "s": "BTCUSDT", "U": 5, "u": 9, "b": levels, "a": []}
    frame = json.dumps({"stream": "btcusdt@depth", "data": payload}, separators=(",", ":"))
    result, fast = assert_same(_case(frame))
    assert fast.fast_frames == 1 and result[0] == "ok"
    # a long level value goes through the general decimal parser, same result
    long = frame.replace('"2.5"', '"2.50000000000000000000"')
    result, fast = assert_same(_case(long))
    assert fast.fast_frames == 1 and result[0] == "ok"
    head = '{"stream":"btcusdt@depth","data":{"e":"depthUpdate","E":1,"s":"BTCUSDT","U":5,"u":9,'
    for bad in ('[["1","2","3"]]', '[["1"]]', '[[1,"2"]]', '["1"]', '[["x","2"]]', "[[]]"):
        result, _ = assert_same(_case(head + '"b":' + bad + ',"a":[]}}'))
        assert result[0] == "error", bad


def test_rest_depth_agrees() -> None:
    body = b'{"lastUpdateId":50093239218,"bids":[["61837.63000000","3.78826000"]],"asks":[]}'
    fast, slow = FrameParser(), FrameParser(fast_path=False)
    a = fast.parse_rest_depth(body, "BTCUSDT", 3).to_wire()
    b = slow.parse_rest_depth(body, "BTCUSDT", 3).to_wire()
    assert a == b and fast.fast_frames == 1 and slow.fast_frames == 0


# ------------------------------------------------------------------ the real captures

MAX_FRAMES = 30_000  # per session: enough of every kind, a few seconds in all


def _sessions(root: Path) -> list[Path]:
    hft = sorted((root / "hftbacktest" / "examples").rglob("*.gz"))
    return hft + sorted((root / "cryptofeed" / "sample_data").glob("*.ws.*"))


def test_capture_sessions_agree(captures_dir: Path) -> None:
    """Every WebSocket frame of every session (the first MAX_FRAMES of each)."""
    sessions = _sessions(captures_dir)
    assert sessions, f"no sessions under {captures_dir}"
    for path in sessions:
        info = capture_info(path)
        assert info.venue is not None and info.market is not None, path
        fast = FrameParser(venue=info.venue, market=info.market)
        slow = FrameParser(venue=info.venue, market=info.market, fast_path=False)
        ws = (r.payload for r in read_capture(path) if r.kind == "ws")
        for frame in islice(ws, MAX_FRAMES):
            assert outcome(fast, frame) == outcome(slow, frame), (path, frame[:200])
        # the fast path is the live path: it must take essentially every real frame
        assert fast.fast_frames >= 0.99 * fast.frames, (path, fast.fast_frames, fast.frames)

"""Trade id holes in the dispatch table: recorded as the ids jump, drained by take_holes.

A small reference model (a dict of last ids) says which trades pass and which holes a
sequence of ids leaves; hypothesis compares the compiled table with it.  The jump guard's
cases (a confirmed jump, a rewound one) and backfilled trades are tested by hand.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from meltica._core.dispatch import DispatchTable
from meltica._core.events import Trade, as_backfilled
from meltica._core.parser import FrameParser

_PARSER = FrameParser(market="spot")
JUMP = 1 << 20


def trade(tid: int, kind: str = "trade", symbol: str = "BTCUSDT") -> Trade:
    if kind == "trade":
        body = f'{{"e":"trade","s":"{symbol}","t":{tid},"p":"1.5","q":"2","T":1,"m":true}}'
    else:
        body = (
            f'{{"e":"aggTrade","s":"{symbol}","a":{tid},"p":"1.5","q":"2","f":{tid},'
            f'"l":{tid},"T":1,"m":false}}'
        )
    (ev,) = _PARSER.parse(body, 7)
    assert isinstance(ev, Trade)
    return ev


def table(*kinds: str) -> DispatchTable:
    t = DispatchTable()
    t.update(add=[("spot", "BTCUSDT", k, None, 1, k) for k in kinds])
    return t


def reference(ids: list[int]) -> tuple[list[int], list[tuple[int, int]]]:
    """(ids delivered, holes) for ids far below the jump bound."""
    last: int | None = None
    out: list[int] = []
    holes: list[tuple[int, int]] = []
    for tid in ids:
        if last is None or tid > last:
            if last is not None and tid > last + 1:
                holes.append((last + 1, tid - 1))
            last = tid
            out.append(tid)
    return out, holes


@given(st.lists(st.integers(0, 60), max_size=80))
def test_holes_match_the_reference(ids: list[int]) -> None:
    t = table("trade")
    calls: list[int] = []
    t.on_holes = lambda: calls.append(1)
    batch: list[Any] = [trade(i) for i in ids]
    t.accept(batch)
    want_ids, want_holes = reference(ids)
    assert [e.trade_id for e in batch] == want_ids
    got = t.take_holes()
    assert got == [("spot", "BTCUSDT", "trade", a, b) for a, b in want_holes]
    assert t.holes == len(want_holes)
    assert len(calls) == (1 if want_holes else 0)  # once per accept that recorded one
    assert t.take_holes() == []  # drained


def test_holes_per_stream_and_only_for_trade_kinds() -> None:
    t = table("trade", "agg_trade", "book_ticker")
    batch: list[Any] = [
        trade(1),
        trade(5),
        trade(10, "agg_trade"),
        trade(13, "agg_trade"),
        trade(14, "agg_trade"),
    ]
    (bt,) = FrameParser(market="spot").parse(
        b'{"u":1,"s":"BTCUSDT","b":"1","B":"1","a":"2","A":"1"}', 1
    )
    (bt2,) = FrameParser(market="spot").parse(
        b'{"u":9,"s":"BTCUSDT","b":"1","B":"1","a":"2","A":"1"}', 1
    )
    batch += [bt, bt2]
    t.accept(batch)
    assert t.take_holes() == [
        ("spot", "BTCUSDT", "trade", 2, 4),
        ("spot", "BTCUSDT", "agg_trade", 11, 12),
    ]


def test_a_late_live_frame_of_a_hole_is_a_duplicate_and_the_backfilled_copy_passes() -> None:
    t = table("trade")
    batch: list[Any] = [trade(1), trade(4)]
    t.accept(batch)
    assert t.take_holes() == [("spot", "BTCUSDT", "trade", 2, 3)]
    late = [trade(2), trade(3)]
    assert t.accept(late) == 0  # the live copies arrive after the hole was recorded
    filled: list[Any] = [as_backfilled(trade(2)), as_backfilled(trade(3))]
    assert t.accept(filled) == 2
    assert [(e.trade_id, e.source) for e in filled] == [(2, "rest"), (3, "rest")]
    assert t.stats()["passed"] == 2 and t.stats()["duplicates"] == 2
    assert t.take_holes() == []  # backfilled trades move nothing


def test_backfilled_trades_pass_even_without_a_route() -> None:
    t = table()
    batch: list[Any] = [as_backfilled(trade(2))]
    assert t.accept(batch) == 1


def test_a_confirmed_jump_records_its_hole_once_confirmed() -> None:
    t = table("trade")
    big = 10 + JUMP + 5
    batch: list[Any] = [trade(9), trade(10), trade(big)]
    t.accept(batch)
    assert t.take_holes() == []  # pending: the next event decides
    batch = [trade(big + 3)]
    t.accept(batch)
    assert t.take_holes() == [
        ("spot", "BTCUSDT", "trade", 11, big - 1),
        ("spot", "BTCUSDT", "trade", big + 1, big + 2),
    ]


def test_a_rewound_jump_records_the_hole_up_to_the_next_event() -> None:
    t = table("trade")
    corrupt = 2**63 - 1
    batch: list[Any] = [trade(9), trade(10), trade(corrupt), trade(14), trade(15)]
    t.accept(batch)
    assert [e.trade_id for e in batch] == [9, 10, corrupt, 14, 15]
    assert t.implausible == 1
    assert t.take_holes() == [("spot", "BTCUSDT", "trade", 11, 13)]


def test_the_first_event_of_a_route_records_no_hole() -> None:
    t = table("trade")
    batch: list[Any] = [trade(1000), trade(1001)]
    t.accept(batch)
    assert t.take_holes() == []


def test_holes_of_a_removed_route_are_left_out() -> None:
    t = table("trade")
    batch: list[Any] = [trade(1), trade(3)]
    t.accept(batch)
    t.update(remove=[("spot", "BTCUSDT", "trade")])
    assert t.take_holes() == []
    assert t.holes == 1

"""meltica._core.book: exact levels, exponent normalisation, sequence rules, fused views."""

from __future__ import annotations

from functools import partial
from typing import Any

from bookref import depth_event

from meltica._core.book import STATUS_NAMES, BookSet, OrderBook
from meltica._core.events import BookDepth, Fixed

ev = partial(depth_event, ts_recv=7)


def snap(u: int = 100, **kw: Any) -> BookDepth:
    return ev(
        "book_snapshot",
        u,
        [["10.00", "1.0"], ["9.50", "2"]],
        [["10.50", "3.000"], ["11", "1"]],
        **kw,
    )


def status(book: OrderBook, e: BookDepth) -> str:
    return STATUS_NAMES[book.apply(e)]


def test_snapshot_then_delta_keeps_exact_levels_and_adapts_exponents() -> None:
    b = OrderBook("spot", "BTCUSDT")
    assert STATUS_NAMES[b.load_snapshot(snap())] == "applied"
    assert (b.price_exp, b.qty_exp) == (-2, -3)
    assert (
        status(
            b,
            ev(
                "book_delta", 102, [["10.255", "0.0001"], ["9.5", "0"]], [["10.50", "0"]], first=101
            ),
        )
        == "synced"
    )
    assert b.price_exp == -3 and b.qty_exp == -4 and b.rescales == 1
    assert b.bids() == [(Fixed("10.255"), Fixed("0.0001")), (Fixed("10"), Fixed("1"))]
    assert b.asks() == [(Fixed("11"), Fixed("1"))]
    assert b.best_bid() == (Fixed("10.255"), Fixed("0.0001"))
    assert b.top(1) == ([(Fixed("10.255"), Fixed("0.0001"))], [(Fixed("11"), Fixed("1"))])
    assert b.update_id == 102
    # coarser text of the same value converts exactly
    assert status(b, ev("book_delta", 103, [["10.2550000", "5"]], [], first=103)) == "applied"
    assert b.best_bid() == (Fixed("10.255"), Fixed("5"))


def test_fixed_exponents_reject_a_level_finer_than_the_tick() -> None:
    b = OrderBook("spot", "BTCUSDT", price_exp=-2, qty_exp=-3)
    assert b.load_snapshot(snap()) == 0
    before = b.raw()
    e = ev("book_delta", 101, [["10.001", "1"]], [], first=101)
    assert status(b, e) == "precision"
    assert b.raw() == before and not b.managed and b.errors == 1


def test_overflow_is_a_status_and_the_book_is_unchanged() -> None:
    b = OrderBook("spot", "BTCUSDT")
    assert b.load_snapshot(snap()) == 0
    before = b.raw()
    e = ev("book_delta", 101, [["9.5", "922337203685477580.7"]], [], first=101)
    assert status(b, e) == "overflow"
    assert b.raw() == before


def test_negative_quantity_is_rejected() -> None:
    b = OrderBook("spot", "BTCUSDT")
    b.load_snapshot(snap())
    assert status(b, ev("book_delta", 101, [["9.5", "-1"]], [], first=101)) == "bad_level"


def test_spot_rules_stale_straddle_gap_and_duplicates() -> None:
    b = OrderBook("spot", "BTCUSDT")
    b.load_snapshot(snap(100))
    assert status(b, ev("book_delta", 100, [], [], first=95)) == "stale"  # u <= L
    assert status(b, ev("book_delta", 105, [], [], first=101)) == "synced"  # U = L + 1
    assert status(b, ev("book_delta", 105, [], [], first=101)) == "stale"  # duplicate
    assert status(b, ev("book_delta", 107, [], [], first=106)) == "applied"
    assert status(b, ev("book_delta", 110, [], [], first=109)) == "gap"
    assert b.gaps == 1 and not b.managed
    assert status(b, ev("book_delta", 111, [], [], first=111)) == "not_managed"
    b.load_snapshot(snap(100))
    assert status(b, ev("book_delta", 110, [], [], first=102)) == "unbridged"  # too old


def test_futures_rules_use_pu_and_keep_u_equal_to_l() -> None:
    b = OrderBook("usdm", "BTCUSDT", futures=True)
    b.load_snapshot(snap(100, market="usdm"))
    assert status(b, ev("book_delta", 99, [], [], first=90, pu=89, market="usdm")) == "stale"
    assert status(b, ev("book_delta", 100, [], [], first=95, pu=94, market="usdm")) == "synced"
    # ids are not contiguous on futures: only pu == previous u matters
    assert status(b, ev("book_delta", 130, [], [], first=120, pu=100, market="usdm")) == "applied"
    assert status(b, ev("book_delta", 140, [], [], first=135, pu=131, market="usdm")) == "gap"


def test_crossed_after_apply_is_reported() -> None:
    b = OrderBook("spot", "BTCUSDT")
    b.load_snapshot(snap())
    assert status(b, ev("book_delta", 101, [["10.60", "1"]], [], first=101)) == "crossed"
    assert b.is_crossed and b.crossed == 1 and not b.managed
    crossed = ev("book_snapshot", 5, [["11", "1"]], [["10", "1"]])
    assert STATUS_NAMES[b.load_snapshot(crossed)] == "crossed" and not b.managed


def test_max_levels_trims_the_worst_levels() -> None:
    b = OrderBook("spot", "BTCUSDT", max_levels=8)
    bids = [[str(1000 - i), "1"] for i in range(40)]
    b.load_snapshot(ev("book_snapshot", 1, bids, [["2000", "1"]]))
    assert b.n_bids == 8 and b.bids()[0][0] == Fixed("1000") and b.trimmed == 32


def test_fused_snapshot_and_bbo_keys_never_collide_with_exchange_keys() -> None:
    b = OrderBook("spot", "BTCUSDT")
    b.load_snapshot(snap())
    b.apply(ev("book_delta", 101, [["9.5", "4"]], [], first=101))
    out: list[Any] = []
    assert b.publish(out, 1) == 2  # top-N and (first time) a BBO
    top, bbo = out
    assert top.key == "binance:spot:BTCUSDT:book_snapshot:book:101"
    assert bbo.key == "binance:spot:BTCUSDT:book_snapshot:bbo:101"
    assert top.to_wire()["bids"] == [["10.00", "1.000"]] and bbo.source == "bbo"
    assert top.ts_recv == 7
    # a change below the top publishes the book but no new BBO
    b.apply(ev("book_delta", 102, [["9.5", "5"]], [], first=102))
    out.clear()
    assert b.publish(out, 5) == 1 and out[0].update_id == 102 and len(out[0].bids) == 2


def test_bookset_applies_in_c_and_stops_where_python_must_act() -> None:
    s = BookSet(emit_depth=0)
    a = OrderBook("spot", "AAA")
    z = OrderBook("spot", "ZZZ")
    s.add(a)
    s.add(z)
    a.load_snapshot(snap(100, symbol="AAA"))
    a.apply(ev("book_delta", 101, [], [], first=101, symbol="AAA"))
    a.live = True
    batch: list[Any] = [
        ev("book_delta", 102, [["9.9", "1"]], [], first=102, symbol="AAA"),
        ev("book_delta", 7, [], [], first=7, symbol="ZZZ"),  # no snapshot yet
        ev("book_delta", 103, [], [], first=103, symbol="AAA"),
        ev("book_delta", 108, [], [], first=106, symbol="AAA"),  # gap
        ev("book_delta", 5, [], [], first=5, symbol="OTHER"),  # untracked: ignored
    ]
    out: list[Any] = []
    assert s.apply_batch(batch, 0, out) == 1
    assert s.last_status == 9 and s.last_book is z
    assert s.apply_batch(batch, 2, out) == 3 and STATUS_NAMES[s.last_status] == "gap"
    assert s.apply_batch(batch, 4, out) == 5
    assert s.take_dirty() == [a] and s.take_dirty() == []
    assert out == [] and a.update_id == 103
    s.emit_depth = 3
    a.load_snapshot(snap(200, symbol="AAA"))
    a.live = True
    a.apply(ev("book_delta", 201, [], [], first=201, symbol="AAA"))
    assert s.apply_batch([ev("book_delta", 202, [], [], first=202, symbol="AAA")], 0, out) == 1
    assert [e.source for e in out] == ["book", "bbo"]
    assert s.remove("spot", "AAA") is a and s.get("spot", "AAA") is None and len(s) == 1

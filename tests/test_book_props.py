"""Property tests: the C order book against the plain-dict reference (tests/bookref.py).

Random snapshots and delta streams, valid and broken (gaps, duplicates, reorders,
crossing levels, prices written with varying trailing zeros so the C book must adapt
its exponents), for spot and futures rules: after every event both books hold the same
levels and took the same decision.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from bookref import RefBook, depth_event
from hypothesis import given, settings
from hypothesis import strategies as st

from meltica._core.book import STATUS_NAMES, OrderBook
from meltica._core.events import BookDepth


def _text(mantissa: int, exp: int, pad: int) -> str:
    """``mantissa * 10**exp`` as decimal text with ``pad`` extra trailing zeros."""
    d = Decimal(mantissa).scaleb(exp)
    s = format(d, "f")
    if pad:
        s = s + ("" if "." in s else ".") + "0" * pad
    return s


level = st.tuples(
    st.integers(1, 400),  # price mantissa at 10**-2
    st.integers(0, 2000),  # qty mantissa at 10**-3 (0 removes)
    st.integers(0, 3),  # trailing zeros on the price text
    st.integers(0, 3),  # trailing zeros on the qty text
)


def _levels(raw: list[tuple[int, int, int, int]], bid: bool) -> list[list[str]]:
    # bids live below 2.00, asks above 2.00 unless the stream crosses on purpose
    return [[_text(p if bid else 400 + p, -2, pp), _text(q, -3, qp)] for p, q, pp, qp in raw]


def _event(
    kind: str, u: int, first: int | None, pu: int | None, bids: Any, asks: Any, market: str
) -> BookDepth:
    return depth_event(kind, u, bids, asks, first=first, pu=pu, market=market, symbol="TEST")


def _dec(levels: list[list[str]]) -> list[tuple[Decimal, Decimal]]:
    return [(Decimal(p), Decimal(q)) for p, q in levels]


def _c_levels(book: OrderBook) -> tuple[dict[Decimal, Decimal], dict[Decimal, Decimal]]:
    return (
        {p.decimal: q.decimal for p, q in book.bids()},
        {p.decimal: q.decimal for p, q in book.asks()},
    )


step = st.tuples(
    st.sampled_from(["ok"] * 8 + ["gap", "dup", "swap", "cross", "old"]),
    st.integers(1, 4),  # ids in this event
    st.lists(level, max_size=5),
    st.lists(level, max_size=5),
)


@settings(max_examples=300, deadline=None)
@given(
    futures=st.booleans(),
    snap_bids=st.lists(level, max_size=12),
    snap_asks=st.lists(level, max_size=12),
    start=st.integers(-3, 3),  # first event's U relative to the snapshot id
    steps=st.lists(step, min_size=1, max_size=25),
)
def test_c_book_equals_reference(
    futures: bool, snap_bids: Any, snap_asks: Any, start: int, steps: Any
) -> None:
    market = "usdm" if futures else "spot"
    last_id = 1000
    sb, sa = _levels(snap_bids, True), _levels(snap_asks, False)
    snap = _event("book_snapshot", last_id, None, None, sb, sa, market)
    c = OrderBook(market, "TEST", futures=futures)
    ref = RefBook(futures)
    assert STATUS_NAMES[c.load_snapshot(snap)] == ref.load(last_id, _dec(sb), _dec(sa))
    assert _c_levels(c) == (ref.bids, ref.asks)
    # build the stream: contiguous ids, pu chaining the previous u
    events: list[BookDepth] = []
    nxt, prev_u = last_id + start, last_id + start - 1
    for what, n, b, a in steps:
        if what == "gap":
            nxt += 2
        bids = _levels(b, what != "cross")  # "cross": bids above the asks
        asks = _levels(a, False)
        first, u = nxt, nxt + n - 1
        ev = _event("book_delta", u, first, prev_u if futures else None, bids, asks, market)
        if what == "dup" and events:
            events.append(events[-1])
        elif what == "old":
            events.append(_event("book_delta", last_id - 5, last_id - 7, None, bids, asks, market))
        events.append(ev)
        if what == "swap" and len(events) >= 2:
            events[-1], events[-2] = events[-2], events[-1]
        nxt, prev_u = u + 1, u
    for ev in events:
        got = STATUS_NAMES[c.apply(ev)]
        want = ref.apply(
            ev.first_update_id or ev.update_id,
            ev.update_id,
            ev.prev_update_id,
            _dec([[str(p), str(q)] for p, q in ev.bids]),
            _dec([[str(p), str(q)] for p, q in ev.asks]),
        )
        assert got == want, (got, want, ev.to_wire())
        assert _c_levels(c) == (ref.bids, ref.asks)
        assert c.is_crossed == ref.crossed()
        if ref.managed:
            assert c.update_id == ref.last


def test_deep_book_with_block_splits_and_merges_equals_reference() -> None:
    """Thousands of levels over a wide price range (the C book's 32-level blocks split
    and merge many times), inserts, updates and deletes at every depth."""
    import random

    rng = random.Random(20261127)
    for futures in (False, True):
        market = "usdm" if futures else "spot"
        # bids 1.00..40.00, asks 40.01..80.00: up to 4000 levels a side
        sb = [[_text(p, -2, 0), _text(rng.randint(1, 999), -3, 0)] for p in range(100, 4000, 3)]
        sa = [[_text(p, -2, 0), _text(rng.randint(1, 999), -3, 0)] for p in range(4001, 8000, 3)]
        snap = _event("book_snapshot", 10, None, None, sb, sa, market)
        c = OrderBook(market, "TEST", futures=futures)
        ref = RefBook(futures)
        assert STATUS_NAMES[c.load_snapshot(snap)] == ref.load(10, _dec(sb), _dec(sa))
        u = 10
        for step_no in range(600):
            n_levels = rng.choice((1, 5, 20, 60))
            # waves: grow the book, then empty whole regions (merges), then regrow
            p_delete = 0.2 if (step_no // 100) % 2 == 0 else 0.8
            bids = [
                [
                    _text(rng.randint(100, 4000), -2, rng.randint(0, 2)),
                    "0" if rng.random() < p_delete else _text(rng.randint(1, 999), -3, 0),
                ]
                for _ in range(n_levels)
            ]
            asks = [
                [
                    _text(rng.randint(4001, 8000), -2, rng.randint(0, 2)),
                    "0" if rng.random() < p_delete else _text(rng.randint(1, 999), -3, 0),
                ]
                for _ in range(n_levels)
            ]
            ev = _event("book_delta", u + 1, u + 1, u if futures else None, bids, asks, market)
            got = STATUS_NAMES[c.apply(ev)]
            want = ref.apply(
                u + 1,
                u + 1,
                u if futures else None,
                _dec([[str(p), str(q)] for p, q in ev.bids]),
                _dec([[str(p), str(q)] for p, q in ev.asks]),
            )
            assert got == want, (step_no, got, want)
            u += 1
            if step_no % 25 == 0 or step_no == 599:
                assert _c_levels(c) == (ref.bids, ref.asks), step_no
        assert c.n_bids == len(ref.bids) and c.n_asks == len(ref.asks)


class VerifiedModel:
    """Levels and the verified bound of each side, by the definition in
    docs/conductor.md ("Verified depth"): bids at prices >= the bid bound, asks
    at prices <= the ask bound (None: nothing verified; ``ALL``: the side)."""

    ALL = "all"

    def __init__(self, sb: Any, sa: Any, limit: int, keep: int) -> None:
        self.keep = keep
        self.sides: dict[str, dict[Decimal, Decimal]] = {"b": {}, "a": {}}
        self.bound: dict[str, Any] = {}
        for side, raw in (("b", sb), ("a", sa)):
            lv = self.sides[side]
            for p, q in _dec(raw):
                lv[p] = q  # a repeated price: the last one wins
            for p in [p for p, q in lv.items() if q == 0]:
                del lv[p]
            if limit > 0 and len(raw) < limit:
                self.bound[side] = self.ALL
            elif lv:
                self.bound[side] = min(lv) if side == "b" else max(lv)
            else:
                self.bound[side] = None
            self._trim(side)

    def _in(self, side: str, p: Decimal) -> bool:
        b = self.bound[side]
        if b is None:
            return False
        return b == self.ALL or (p >= b if side == "b" else p <= b)

    def verified(self, side: str) -> int:
        return sum(self._in(side, p) for p in self.sides[side])

    def _trim(self, side: str) -> None:
        lv, keep = self.sides[side], self.keep
        if keep <= 0 or len(lv) <= keep + keep // 8 + 1:
            return
        nv = self.verified(side)
        best_first = sorted(lv, reverse=side == "b")
        for p in best_first[keep:]:
            del lv[p]
        if nv > keep:
            self.bound[side] = best_first[keep - 1]

    def apply(self, bids: Any, asks: Any) -> None:
        for side, raw in (("b", bids), ("a", asks)):
            lv = self.sides[side]
            for p, q in _dec(raw):
                if q == 0:
                    lv.pop(p, None)
                else:
                    lv[p] = q
        self._trim("b")
        self._trim("a")


@settings(max_examples=300, deadline=None)
@given(
    futures=st.booleans(),
    snap_bids=st.lists(level, max_size=14),
    snap_asks=st.lists(level, max_size=14),
    limit=st.sampled_from([0, 3, 5, 10, 20]),
    keep=st.sampled_from([0, 4, 8, 16]),
    deltas=st.lists(
        st.tuples(st.lists(level, max_size=6), st.lists(level, max_size=6)), max_size=25
    ),
)
def test_verified_depth_follows_the_model(
    futures: bool, snap_bids: Any, snap_asks: Any, limit: int, keep: int, deltas: Any
) -> None:
    """Verified depth after a snapshot of ``limit`` levels, through diffs that insert,
    update and delete at any depth (prices with varying trailing zeros, so the book
    rescales) and trims to ``keep`` levels: equal to the model after every diff, and
    the published snapshot holds exactly the best verified levels."""
    market = "usdm" if futures else "spot"
    sb, sa = _levels(snap_bids, True), _levels(snap_asks, False)
    snap = _event("book_snapshot", 1000, None, None, sb, sa, market)
    c = OrderBook(market, "TEST", futures=futures, max_levels=keep)
    # bridged: the diffs continue from the snapshot's id (futures would want a straddle)
    assert STATUS_NAMES[c.load_snapshot(snap, limit, bridged=True)] == "applied"
    m = VerifiedModel(sb, sa, limit, keep)
    u = 1000
    for step_no, (b, a) in enumerate(deltas):
        if step_no:
            bids, asks = _levels(b, True), _levels(a, False)
            ev = _event("book_delta", u + 1, u + 1, u if futures else None, bids, asks, market)
            assert STATUS_NAMES[c.apply(ev)] in ("applied", "synced")
            m.apply(bids, asks)
            u += 1
        assert _c_levels(c) == (m.sides["b"], m.sides["a"])
        assert (c.verified_bids, c.verified_asks) == (m.verified("b"), m.verified("a"))
        snap_out = c.snapshot(50)
        assert (snap_out.verified_bids, snap_out.verified_asks) == (
            m.verified("b"),
            m.verified("a"),
        )
        assert snap_out.bids == c.bids(min(50, c.verified_bids))
        assert snap_out.asks == c.asks(min(50, c.verified_asks))
        c.publish_unverified = True
        assert c.snapshot(50).bids == c.bids(50)
        c.publish_unverified = False


@pytest.mark.parametrize(
    ("asks", "want"),
    [
        ([["2.5", "1"], ["2.5", "0"]], {}),
        ([["2.5", "1"], ["2.5", "3"]], {Decimal("2.5"): Decimal("3")}),
        ([["2.5", "0"], ["2.5", "3"]], {Decimal("2.5"): Decimal("3")}),
    ],
)
def test_a_snapshot_price_given_twice_keeps_the_last(asks: Any, want: Any) -> None:
    """Found by the model test above: a snapshot repeating a price with a last quantity of
    0 kept the earlier level, where the levels applied in order leave none."""
    c = OrderBook("spot", "TEST", futures=False, max_levels=0)
    snap = _event("book_snapshot", 1000, None, None, [["1.0", "1"]], asks, "spot")
    assert STATUS_NAMES[c.load_snapshot(snap, 0, bridged=True)] == "applied"
    assert _c_levels(c) == ({Decimal("1.0"): Decimal("1")}, want)
    assert c.n_asks == len(want)

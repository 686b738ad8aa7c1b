"""The Conductor: Binance book sync on real captures, faults, fused outputs, store writes.

Real captures are fed straight into the Conductor (frames parsed by FrameParser, REST
snapshots served by CaptureSource at the replay position): zero gaps, never a crossed
book, and the exchange's own bookTicker agrees with the book at every update id they
share.  Fault tests script gaps, duplicates, reorders and stale snapshots on a small
hand-written stream.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aio import run

from meltica._core.book import OrderBook
from meltica._core.events import BookDepth, BookTicker, Control, Fixed
from meltica._core.parser import FrameParser
from meltica.conductor import Conductor, State
from meltica.replay.source import CaptureSource, combined_frame
from meltica.snapshot import MemorySnapshotStore

T = TypeVar("T")

CRYPTOFEED = ["BINANCE", "BINANCE_FUTURES", "BINANCE_DELIVERY", "BINANCE_US"]
SESSIONS = {
    "spot-20240808+09": ["spot/btcusdt_20240808.gz", "spot/btcusdt_20240809.gz"],
    "usdm-20230404+05": ["usdm/btcusdt_20230404.dat.gz", "usdm/btcusdt_20230405.dat.gz"],
    "usdm-20240718+19": ["usdm/btcusdt_20240718.gz", "usdm/btcusdt_20240719.gz"],
    "usdm-20240808": ["usdm/btcusdt_20240808.gz"],
    **{name: [name] for name in CRYPTOFEED},
}


def capture_path(captures_dir: Path, name: str) -> Path:
    if name in CRYPTOFEED:
        return captures_dir / "cryptofeed" / "sample_data" / f"{name}.ws.1.0"
    return captures_dir / "hftbacktest" / "examples" / name


def _top_matches(book: OrderBook, t: BookTicker) -> bool:
    bb, ba = book.best_bid(), book.best_ask()
    return (
        bb is not None
        and ba is not None
        and (bb[0], bb[1], ba[0], ba[1]) == (t.bid_price, t.bid_qty, t.ask_price, t.ask_qty)
    )


class CaptureRun:
    """Feed a capture through a Conductor frame by frame and check every step."""

    def __init__(self, paths: list[Path]) -> None:
        self.source = CaptureSource(paths)
        self.market = self.source.market
        self.parser = FrameParser(venue=self.source.venue, market=self.market)
        self.rest = FrameParser(venue=self.source.venue, market=self.market)
        self.out: list[Any] = []
        self.points: set[tuple[str, int]] = set()
        self.mismatches: list[str] = []
        self.tickers: dict[str, dict[int, BookTicker]] = {}
        self.crossed_seen = 0

    async def fetch(self, market: str, symbol: str) -> BookDepth:
        await asyncio.sleep(0)  # a fetch takes a while: diffs get buffered meanwhile
        body = self.source.depth_snapshot(market, symbol, 1000)
        if body is None:
            raise LookupError(f"no snapshot for {symbol} in the capture")
        return self.rest.parse_rest_depth(body, symbol)

    def check_point(self, sym: str, book: OrderBook, t: BookTicker) -> None:
        if (sym, t.update_id) in self.points:
            return
        self.points.add((sym, t.update_id))
        if not _top_matches(book, t):
            self.mismatches.append(
                f"{sym} u={t.update_id}: book {book.best_bid()} {book.best_ask()} != "
                f"ticker {t.bid_price} {t.bid_qty} {t.ask_price} {t.ask_qty}"
            )

    async def go(self) -> Conductor:
        cond = Conductor(self.out.extend, self.fetch, book_depth=20, snapshot_retry_s=0)
        depth_syms = {
            s.split("@", 1)[0].upper() for s in self.source.streams(self.market) if "@depth" in s
        }
        for sym in depth_syms:
            cond.track(self.market, sym, venue=self.source.venue)
        for frame in self.source.frames():
            events = self.parser.parse(combined_frame(frame), frame.ts_ns)
            exchange = list(events)
            cond.on_events(events)
            assert events[: len(exchange)] == exchange  # passed through, in order
            for ev in exchange:
                inst = cond.instrument(ev.market, ev.symbol)
                if inst is None:
                    continue
                book = inst.book
                if isinstance(ev, BookTicker):
                    self.tickers.setdefault(ev.symbol, {})[ev.update_id] = ev
                    if inst.state is State.LIVE and book.update_id == ev.update_id:
                        self.check_point(ev.symbol, book, ev)
                elif isinstance(ev, BookDepth) and inst.state is State.LIVE:
                    if book.is_crossed:
                        self.crossed_seen += 1
                    seen = self.tickers.get(ev.symbol, {}).get(book.update_id or -1)
                    if seen is not None and book.update_id == ev.update_id:
                        self.check_point(ev.symbol, book, seen)
            for sym, tick in self.tickers.items():
                if len(tick) > 4096:  # bounded: only recent tickers can meet a depth u
                    self.tickers[sym] = dict(list(tick.items())[-1024:])
            if any(i["fetching"] for i in cond.status()["instruments"].values()):
                for _ in range(3):
                    await asyncio.sleep(0)
        await cond.stop()
        return cond


@pytest.mark.parametrize("session", sorted(SESSIONS))
def test_real_capture_syncs_with_no_gap_and_matches_book_ticker(
    captures_dir: Path, session: str
) -> None:
    paths = [capture_path(captures_dir, n) for n in SESSIONS[session]]
    r = CaptureRun(paths)
    cond = run(r.go)
    st = cond.status()["instruments"]
    assert st, "no depth stream in the capture"
    print(f"\n{session}: {len(r.points)} bookTicker points checked, all equal")
    for name, s in st.items():
        assert s["state"] == "live", f"{session} {name}: {s}"
        assert s["gaps"] == 0 and s["crossed"] == 0 and s["errors"] == 0, (name, s)
        assert s["resyncs"] == 0 and s["buffer_overflows"] == 0, (name, s)
        assert s["applied"] > 0 and s["published"] > 0, (name, s)
    assert r.crossed_seen == 0
    assert not r.mismatches, r.mismatches[:5]
    kinds = {ev.kind for ev in r.out if isinstance(ev, Control)}
    assert kinds <= {"resync_done"}, kinds
    if session.startswith(("spot-", "usdm-")):
        assert len(r.points) > 0, "a long session must share update ids with bookTicker"
    # fused snapshots hold verified levels only; the last of each symbol is the
    # book's top 20 cut to its verified depth (a one-snapshot run of a day
    # leaves price ranges the snapshot never covered)
    last: dict[str, BookDepth] = {}
    for ev in r.out:
        if isinstance(ev, BookDepth) and ev.source in ("book", "bbo"):
            assert ev.verified_bids is not None and ev.verified_asks is not None
            assert len(ev.bids) <= ev.verified_bids and len(ev.asks) <= ev.verified_asks
            if ev.source == "book":
                last[ev.symbol] = ev
    for sym, ev in last.items():
        book = cond.book(r.market, sym)
        assert book is not None
        assert (ev.verified_bids, ev.verified_asks) == (book.verified_bids, book.verified_asks)
        assert ev.bids == book.bids(min(20, book.verified_bids))
        assert ev.asks == book.asks(min(20, book.verified_asks))
        assert ev.update_id == book.update_id


def test_capture_without_snapshot_never_goes_live(captures_dir: Path) -> None:
    r = CaptureRun([capture_path(captures_dir, "spot/btcusdt_20230405.dat.gz")])
    cond = run(r.go)
    s = cond.status()["instruments"]["spot:BTCUSDT"]
    assert s["state"] == "syncing" and s["snapshot_errors"] > 0 and s["published"] == 0
    assert not any(isinstance(ev, BookDepth) and ev.kind == "book_snapshot" for ev in r.out)


# ---------------------------------------------------------------- scripted faults


def delta(
    sym: str,
    first: int,
    u: int,
    bids: Any = (),
    asks: Any = (),
    market: str = "spot",
    pu: int | None = None,
    ts: int | None = None,
) -> BookDepth:
    from meltica._core.events import event_from_wire

    d = {
        "v": 1,
        "venue": "binance",
        "market": market,
        "symbol": sym,
        "kind": "book_delta",
        "seq": u,
        "ts_recv": u,
        "update_id": u,
        "first_update_id": first,
        "prev_update_id": pu,
        "ts_event": ts,
        "bids": [list(x) for x in bids],
        "asks": [list(x) for x in asks],
    }
    e = event_from_wire(d)
    assert isinstance(e, BookDepth)
    return e


def rest(sym: str, last: int, market: str = "spot", bid: str = "10", ask: str = "11") -> BookDepth:
    from meltica._core.events import event_from_wire

    e = event_from_wire(
        {
            "v": 1,
            "venue": "binance",
            "market": market,
            "symbol": sym,
            "kind": "book_snapshot",
            "source": "rest",
            "seq": last,
            "ts_recv": 0,
            "update_id": last,
            "bids": [[bid, "1"]],
            "asks": [[ask, "1"]],
        }
    )
    assert isinstance(e, BookDepth)
    return e


class Harness:
    """A Conductor with scripted snapshots and a recording downstream."""

    def __init__(self, **kw: Any) -> None:
        self.snaps: dict[str, list[BookDepth]] = {}
        self.fetches: list[str] = []
        self.batches: list[list[Any]] = []
        self.cond = Conductor(self.batches.append, self.fetch, snapshot_retry_s=0, **kw)

    async def fetch(self, market: str, symbol: str) -> BookDepth:
        self.fetches.append(symbol)
        await asyncio.sleep(0)
        return self.snaps[symbol].pop(0)

    def feed(self, *events: BookDepth) -> list[Any]:
        batch = list(events)
        self.cond.on_events(batch)
        return batch[len(events) :]

    @property
    def out(self) -> list[Any]:
        return [e for b in self.batches for e in b]

    def controls(self, sym: str) -> list[tuple[str, Any]]:
        return [(e.kind, e.stale) for e in self.out if isinstance(e, Control) and e.symbol == sym]

    def fused(self, sym: str) -> list[int]:
        return [
            e.update_id
            for e in self.out
            if isinstance(e, BookDepth)
            and e.kind == "book_snapshot"
            and e.source == "book"
            and e.symbol == sym
        ]


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


def test_gap_resyncs_only_that_symbol_and_consumers_see_control_events() -> None:
    async def scenario() -> Harness:
        h = Harness()
        h.snaps = {"AAA": [rest("AAA", 100), rest("AAA", 205)], "BBB": [rest("BBB", 500)]}
        for s in ("AAA", "BBB"):
            h.cond.track("spot", s)
        h.feed(delta("AAA", 99, 101), delta("BBB", 500, 501))
        await settle()
        assert h.cond.instrument("spot", "AAA").state is State.LIVE  # type: ignore[union-attr]
        h.feed(delta("AAA", 102, 103), delta("BBB", 502, 502))
        extra = h.feed(delta("AAA", 200, 201, bids=[("10.5", "2")]), delta("BBB", 503, 504))
        kinds = [(e.kind, getattr(e, "source", None)) for e in extra]
        assert ("gap", None) in kinds and ("book_snapshot", "book") in kinds  # BBB flows
        assert h.cond.instrument("spot", "AAA").state is State.RESYNCING  # type: ignore[union-attr]
        h.feed(delta("AAA", 202, 206), delta("BBB", 505, 505))
        await settle()
        h.feed(delta("AAA", 207, 207), delta("BBB", 506, 506))
        return h

    h = run(scenario)
    a = h.cond.status()["instruments"]["spot:AAA"]
    b = h.cond.status()["instruments"]["spot:BBB"]
    assert a["state"] == "live" and a["gaps"] == 1 and a["resyncs"] == 1
    assert b["state"] == "live" and b["gaps"] == 0 and b["resyncs"] == 0
    assert h.controls("AAA") == [
        ("resync_done", None),
        ("gap", None),
        ("resync_started", None),
        ("stale", True),
        ("resync_done", None),
        ("stale", False),
    ]
    assert h.controls("BBB") == [("resync_done", None)]
    assert h.fused("BBB") == [501, 502, 504, 505, 506]
    assert h.fused("AAA") == [101, 103, 206, 207]  # never published while known wrong
    assert h.fetches == ["AAA", "BBB", "AAA"]


def test_stale_snapshot_is_refetched() -> None:
    async def scenario() -> Harness:
        h = Harness()
        h.snaps = {"AAA": [rest("AAA", 50), rest("AAA", 102)]}
        h.cond.track("spot", "AAA")
        h.feed(delta("AAA", 100, 101), delta("AAA", 102, 104))
        await settle()
        return h

    h = run(scenario)
    s = h.cond.status()["instruments"]["spot:AAA"]
    assert s["state"] == "live" and s["refetches"] == 1 and s["gaps"] == 0
    assert h.fetches == ["AAA", "AAA"] and h.cond.book("spot", "AAA").update_id == 104  # type: ignore[union-attr]


def test_snapshot_newer_than_stream_waits_for_the_bridging_event() -> None:
    async def scenario() -> Harness:
        h = Harness()
        h.snaps = {"AAA": [rest("AAA", 110, market="usdm")]}
        h.cond.track("usdm", "AAA")
        h.feed(delta("AAA", 100, 105, market="usdm", pu=99))
        await settle()
        assert h.cond.instrument("usdm", "AAA").state is State.SYNCING  # type: ignore[union-attr]
        h.feed(delta("AAA", 106, 109, market="usdm", pu=105))  # u < L: stale
        h.feed(delta("AAA", 108, 110, market="usdm", pu=109))  # futures keeps u == L
        return h

    h = run(scenario)
    s = h.cond.status()["instruments"]["usdm:AAA"]
    assert s["state"] == "live" and s["stale_dropped"] == 2 and h.fused("AAA") == [110]


def test_duplicates_and_reorders_are_dropped_without_a_gap() -> None:
    async def scenario() -> Harness:
        h = Harness()
        h.snaps = {"AAA": [rest("AAA", 100, market="usdm")]}
        h.cond.track("usdm", "AAA")
        d1 = delta("AAA", 95, 101, market="usdm", pu=94)
        d2 = delta("AAA", 102, 110, market="usdm", pu=101)
        d3 = delta("AAA", 111, 120, market="usdm", pu=110, bids=[("10.5", "3")])
        h.feed(d1)
        await settle()
        h.feed(d2, d2, d1, d3, d2)  # duplicate, an old one arriving late, a late duplicate
        return h

    h = run(scenario)
    s = h.cond.status()["instruments"]["usdm:AAA"]
    assert s["state"] == "live" and s["gaps"] == 0 and s["stale_dropped"] == 3
    assert h.fused("AAA") == [101, 110, 120]
    assert h.cond.book("usdm", "AAA").best_bid()[0] == Fixed("10.5")  # type: ignore[union-attr,index]


def test_buffer_overflow_restarts_the_sync() -> None:
    async def scenario() -> Harness:
        h = Harness(snapshot_buffer_max=3)
        h.snaps = {"AAA": [rest("AAA", 100), rest("AAA", 104)]}
        h.cond.track("spot", "AAA")
        for i in range(5):  # no yield: the fetch cannot finish
            h.feed(delta("AAA", 101 + i, 101 + i))
        await settle()
        h.feed(delta("AAA", 106, 106))
        return h

    h = run(scenario)
    s = h.cond.status()["instruments"]["spot:AAA"]
    assert s["buffer_overflows"] == 1 and s["state"] == "live" and s["gaps"] == 0
    assert h.fetches == ["AAA", "AAA"]


class TailHarness(Harness):
    """A Harness whose fetch reports its send (``on_sent``) like the REST client: the
    request waits for `let_out` (the weight budget), then for `answer` (the reply)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.budget: asyncio.Queue[None] = asyncio.Queue()
        self.answer = asyncio.Event()
        self.answer.set()

    async def fetch(  # type: ignore[override]
        self, market: str, symbol: str, on_sent: Any = None
    ) -> BookDepth:
        assert on_sent is not None
        self.fetches.append(symbol)
        await self.budget.get()
        on_sent()
        await self.answer.wait()
        return self.snaps[symbol].pop(0)

    def status(self, sym: str = "AAA") -> dict[str, Any]:
        return self.cond.status()["instruments"][f"spot:{sym}"]  # type: ignore[no-any-return]


def test_a_book_waiting_for_the_budget_keeps_only_the_newest_diffs() -> None:
    async def scenario() -> tuple[TailHarness, list[dict[str, Any]]]:
        h = TailHarness(snapshot_wait_tail=3)
        h.answer.clear()
        h.snaps = {"AAA": [rest("AAA", 108)]}
        h.cond.track("spot", "AAA")
        seen = []
        for u in range(101, 111):  # queued behind the budget: nothing sent yet
            h.feed(delta("AAA", u, u))
            await settle()
        seen.append(h.status())
        h.budget.put_nowait(None)  # sent: from now on every diff is kept
        await settle()
        seen.append(h.status())
        for u in range(111, 116):
            h.feed(delta("AAA", u, u))
        seen.append(h.status())
        h.answer.set()
        await settle()
        return h, seen

    h, (waiting, sent, answered) = run(scenario)
    assert waiting["buffered"] == 3 and waiting["superseded"] == 7
    assert not waiting["snapshot_sent"] and waiting["fetching"]
    assert sent["snapshot_sent"] and sent["buffered"] == 3
    assert answered["buffered"] == 8 and answered["superseded"] == 7
    s = h.status()
    assert s["state"] == "live" and s["gaps"] == 0 and s["refetches"] == 0
    assert s["buffered"] == 0 and not s["snapshot_sent"]
    assert h.cond.book("spot", "AAA").update_id == 115  # type: ignore[union-attr]
    assert h.fused("AAA") == [115] and h.fetches == ["AAA"]


def test_stale_against_the_kept_tail_and_each_attempt_waits_in_the_tail() -> None:
    async def scenario() -> tuple[TailHarness, dict[str, Any]]:
        h = TailHarness(snapshot_wait_tail=3)
        # 105 is older than the first kept diff (108): stale; 119 bridges 120
        h.snaps = {"AAA": [rest("AAA", 105), rest("AAA", 119)]}
        h.cond.track("spot", "AAA")
        for u in range(101, 111):
            h.feed(delta("AAA", u, u))
        await settle()
        h.budget.put_nowait(None)
        await settle()
        # the refetch is queued again: not sent, the buffer goes back to the tail
        for u in range(111, 121):
            h.feed(delta("AAA", u, u))
        requeued = h.status()
        h.budget.put_nowait(None)
        await settle()
        return h, requeued

    h, requeued = run(scenario)
    assert requeued["refetches"] == 1 and requeued["sync_issue"] == "stale_snapshot"
    assert not requeued["snapshot_sent"] and requeued["buffered"] == 3
    s = h.status()
    assert s["state"] == "live" and s["gaps"] == 0 and s["refetches"] == 1
    assert s["stale_dropped"] == 2  # 118 and 119 are not newer than the snapshot
    assert h.cond.book("spot", "AAA").update_id == 120  # type: ignore[union-attr]
    assert h.fetches == ["AAA", "AAA"]


def test_futures_tail_keeps_the_pu_chain() -> None:
    async def scenario() -> TailHarness:
        h = TailHarness(snapshot_wait_tail=2)
        h.snaps = {"AAA": [rest("AAA", 130, market="usdm")]}
        h.cond.track("usdm", "AAA")
        for i in range(6):  # u = 110, 120, ..., 160, each pu the one before
            u = 110 + 10 * i
            h.feed(delta("AAA", u - 9, u, market="usdm", pu=u - 10))
        await settle()
        h.budget.put_nowait(None)
        await settle()
        return h

    h = run(scenario)
    s = h.cond.status()["instruments"]["usdm:AAA"]
    # kept 150, 160: the snapshot at 130 is older than U=141 of the first: stale
    assert s["refetches"] == 1 and s["superseded"] == 4 and s["state"] == "syncing"
    h2 = run(_futures_bridge)
    s2 = h2.cond.status()["instruments"]["usdm:AAA"]
    assert s2["state"] == "live" and s2["refetches"] == 0 and s2["gaps"] == 0
    assert h2.cond.book("usdm", "AAA").update_id == 170  # type: ignore[union-attr]


async def _futures_bridge() -> TailHarness:
    h = TailHarness(snapshot_wait_tail=2)
    h.snaps = {"AAA": [rest("AAA", 155, market="usdm")]}  # U=151 <= 155 <= u=160
    h.cond.track("usdm", "AAA")
    for i in range(6):
        u = 110 + 10 * i
        h.feed(delta("AAA", u - 9, u, market="usdm", pu=u - 10))
    await settle()
    h.budget.put_nowait(None)
    await settle()
    h.feed(delta("AAA", 161, 170, market="usdm", pu=160))
    return h


def test_only_a_sent_request_can_overflow_the_buffer() -> None:
    async def scenario() -> tuple[TailHarness, dict[str, Any], dict[str, Any]]:
        h = TailHarness(snapshot_wait_tail=2, snapshot_buffer_max=4)
        h.answer.clear()
        h.snaps = {"AAA": [rest("AAA", 129)]}  # the cancelled fetch takes none
        h.cond.track("spot", "AAA")
        for u in range(101, 121):  # 20 diffs while queued: the tail, no overflow
            h.feed(delta("AAA", u, u))
        await settle()
        queued = h.status()
        h.budget.put_nowait(None)
        await settle()
        for u in range(121, 124):  # sent: 2 + 3 > 4 overflows and restarts the sync
            h.feed(delta("AAA", u, u))
        await settle()
        restarted = h.status()
        for u in range(124, 131):
            h.feed(delta("AAA", u, u))
        h.answer.set()
        h.budget.put_nowait(None)
        await settle()
        return h, queued, restarted

    h, queued, restarted = run(scenario)
    assert queued["buffer_overflows"] == 0 and queued["buffered"] == 2
    assert restarted["buffer_overflows"] == 1 and not restarted["snapshot_sent"]
    assert h.fetches == ["AAA", "AAA"]
    s = h.status()
    assert s["state"] == "live" and s["gaps"] == 0
    assert h.cond.book("spot", "AAA").update_id == 130  # type: ignore[union-attr]


def test_wait_tail_is_validated() -> None:
    async def fetch(market: str, symbol: str) -> BookDepth:
        raise AssertionError

    for tail in (0, 6):
        with pytest.raises(ValueError, match="snapshot_wait_tail"):
            Conductor(lambda b: None, fetch, snapshot_buffer_max=5, snapshot_wait_tail=tail)


def test_crossed_book_is_a_desync() -> None:
    async def scenario() -> Harness:
        h = Harness()
        h.snaps = {"AAA": [rest("AAA", 100), rest("AAA", 102, bid="12", ask="13")]}
        h.cond.track("spot", "AAA")
        h.feed(delta("AAA", 101, 101))
        await settle()
        h.feed(delta("AAA", 102, 102, bids=[("11.5", "1")]))  # bid above the 11 ask
        await settle()
        h.feed(delta("AAA", 103, 103))
        return h

    h = run(scenario)
    s = h.cond.status()["instruments"]["spot:AAA"]
    assert s["crossed"] == 1 and s["resyncs"] == 1 and s["state"] == "live"
    assert h.fused("AAA") == [101, 103]
    assert ("resync_started", None) in h.controls("AAA")


MS = 1_000_000


def test_throttle_publishes_the_last_state_of_each_bucket_of_exchange_time() -> None:
    """publish_interval_ms=30: buckets of E // 30 ms; each bucket's last update is
    published when the first update of a later bucket arrives, in the same batch
    or a later one; the go-live state is just the book's state in its bucket."""

    async def scenario() -> Harness:
        h = Harness(publish_interval_ms=30)
        h.snaps = {"AAA": [rest("AAA", 100)]}
        h.cond.track("spot", "AAA")
        h.feed(delta("AAA", 101, 101, ts=1000 * MS))  # live at 101, bucket 33
        await settle()
        h.feed(delta("AAA", 102, 102, ts=1005 * MS), delta("AAA", 103, 103, ts=1019 * MS))
        assert h.fused("AAA") == []
        # 104 starts bucket 34: 103 is published before 104 is applied
        h.feed(delta("AAA", 104, 104, ts=1020 * MS), delta("AAA", 105, 105, ts=1049 * MS))
        assert h.fused("AAA") == [103]
        # 106..108 in three later buckets, one batch: 105, 106 and 107 go out
        h.feed(
            delta("AAA", 106, 106, ts=1050 * MS),
            delta("AAA", 107, 107, ts=1080 * MS),
            delta("AAA", 108, 108, ts=1200 * MS, bids=[("10", "3")]),
        )
        assert h.fused("AAA") == [103, 105, 106, 107]
        book = h.cond.book("spot", "AAA")
        assert book is not None and book.update_id == 108
        return h

    h = run(scenario)
    snaps = [e for e in h.out if isinstance(e, BookDepth) and e.source == "book"]
    # each output is that state, with its own update id and exchange time
    assert [(e.update_id, e.ts_event) for e in snaps] == [
        (103, 1019 * MS),
        (105, 1049 * MS),
        (106, 1050 * MS),
        (107, 1080 * MS),
    ]
    assert h.cond.counters["flushes"] == 0


def test_throttle_cuts_a_batch_after_the_book_goes_live_inside_it() -> None:
    """The diff that bridges the snapshot comes in a batch with later ones: the
    book goes live inside the batch and a bucket boundary after it still counts."""

    async def scenario() -> Harness:
        h = Harness(publish_interval_ms=30)
        h.snaps = {"AAA": [rest("AAA", 100)]}
        h.cond.track("spot", "AAA")
        h.feed(delta("AAA", 95, 99, ts=990 * MS))  # starts the sync; stale once L=100 loads
        await settle()
        inst = h.cond.instrument("spot", "AAA")
        assert inst is not None and inst.state is State.SYNCING and inst.fetch is None
        h.feed(
            delta("AAA", 101, 101, ts=1000 * MS),  # bridges: live inside this batch
            delta("AAA", 102, 102, ts=1005 * MS),
            delta("AAA", 103, 103, ts=1021 * MS),  # bucket 34
        )
        assert inst.state is State.LIVE
        return h

    h = run(scenario)
    assert h.fused("AAA") == [102]


def test_throttle_flushes_a_quiet_book_one_interval_after_its_bucket() -> None:
    async def scenario() -> Harness:
        h = Harness(publish_interval_ms=30)
        h.snaps = {"AAA": [rest("AAA", 100)]}
        h.cond.track("spot", "AAA")
        h.feed(delta("AAA", 101, 101, ts=1000 * MS))
        await settle()
        h.feed(delta("AAA", 102, 102, ts=1001 * MS), delta("AAA", 103, 103, ts=1002 * MS))
        await asyncio.sleep(0.15)  # bucket 33 ends at 1020 ms, the flush is due at 1050 ms
        assert h.fused("AAA") == [103]
        # a later bucket's update: not published again (nothing changed in between)
        h.feed(delta("AAA", 104, 104, ts=1100 * MS))
        assert h.fused("AAA") == [103]
        await asyncio.sleep(0.15)
        # no exchange time: flushed one interval after it changed
        h.feed(delta("AAA", 105, 105), delta("AAA", 106, 106))
        await asyncio.sleep(0.15)
        return h

    h = run(scenario)
    assert h.fused("AAA") == [103, 104, 106]
    assert h.cond.counters["flushes"] == 3


def test_throttle_flush_held_up_by_a_stalled_loop_waits_for_the_bucket() -> None:
    """A flush timer that fires late (the loop was blocked; it runs due timers before
    reading sockets) does not publish at once: the rest of the bucket read right
    after it still makes the output."""
    import time

    async def scenario() -> Harness:
        h = Harness(publish_interval_ms=30)
        h.snaps = {"AAA": [rest("AAA", 100)]}
        h.cond.track("spot", "AAA")
        h.feed(delta("AAA", 101, 101, ts=1000 * MS))
        await settle()
        h.feed(delta("AAA", 102, 102, ts=1001 * MS))
        time.sleep(0.2)  # the loop stalls past the flush's due time (about 50 ms)
        await asyncio.sleep(0)  # the late timer runs first...
        h.feed(delta("AAA", 103, 103, ts=1002 * MS))  # ...then what the socket held
        assert h.fused("AAA") == []
        await asyncio.sleep(0.1)
        return h

    h = run(scenario)
    assert h.fused("AAA") == [103]
    assert h.cond.counters["flushes"] == 1


def test_throttle_flush_waits_until_the_market_is_past_the_bucket() -> None:
    """A quiet book's timer publishes once its market read an exchange time one
    interval past the book's bucket, not while the market is still inside it."""

    async def scenario() -> Harness:
        h = Harness(publish_interval_ms=30)
        h.snaps = {"AAA": [rest("AAA", 100)], "BBB": [rest("BBB", 500)]}
        h.cond.track("spot", "AAA")
        h.cond.track("spot", "BBB")
        h.feed(delta("AAA", 101, 101, ts=991 * MS), delta("BBB", 501, 501, ts=991 * MS))
        await settle()
        h.feed(delta("AAA", 102, 102, ts=1001 * MS))  # bucket 33: [990, 1020) ms
        # BBB keeps the market inside bucket 33 for 150 ms: AAA's timer keeps waiting
        for i in range(15):
            h.feed(delta("BBB", 502 + i, 502 + i, ts=(1003 + i) * MS))
            await asyncio.sleep(0.01)
        assert h.fused("AAA") == []
        h.feed(delta("AAA", 103, 103, ts=1019 * MS))  # the bucket's last update, late
        h.feed(delta("BBB", 517, 517, ts=1050 * MS))  # the market is one interval past
        await asyncio.sleep(0.1)
        return h

    h = run(scenario)
    assert h.fused("AAA") == [103]


def test_throttled_keys_agree_across_clocks_and_batch_splits(captures_dir: Path) -> None:
    """Two gateways in one: Conductors fed the same real USD-M depth stream in
    different batch splits, with different local clocks, one going live later
    than the other, publish the same fused snapshot keys from the moment both
    are live, at the update ids the bucket rule names."""
    import random

    source = CaptureSource([capture_path(captures_dir, "usdm/btcusdt_20240808.gz")])
    market = source.market
    parser = FrameParser(venue=source.venue, market=market)
    diffs: list[BookDepth] = []
    for frame in source.frames():
        if "@depth" in frame.stream:
            diffs += [e for e in parser.parse(combined_frame(frame), frame.ts_ns)]
        if len(diffs) >= 6000:
            break
    body = source.depth_snapshot(market, "BTCUSDT", 1000)
    assert body is not None, "the capture records a depth snapshot"
    snap = FrameParser(venue=source.venue, market=market).parse_rest_depth(body, "BTCUSDT")

    async def one(seed: int, clock_ns: int, fetch_turns: int) -> tuple[list[str], int]:
        out: list[Any] = []

        async def fetch(market: str, symbol: str) -> BookDepth:
            for _ in range(fetch_turns):  # the later gateway buffers more diffs
                await asyncio.sleep(0)
            return snap

        cond = Conductor(
            out.extend, fetch, publish_interval_ms=100, snapshot_retry_s=0, clock=lambda: clock_ns
        )
        cond.track(market, "BTCUSDT", venue=source.venue)
        rnd = random.Random(seed)
        i = 0
        while i < len(diffs):
            n = rnd.choice((1, 1, 2, 3, 7, 40))
            cond.on_events(diffs[i : i + n])
            i += n
            await asyncio.sleep(0)
        inst = cond.instrument(market, "BTCUSDT")
        assert inst is not None and inst.state is State.LIVE
        await cond.stop()
        live = [e.to_seq for e in out if isinstance(e, Control) and e.kind == "resync_done"]
        keys = [e.key for e in out if isinstance(e, BookDepth) and e.kind == "book_snapshot"]
        return keys, live[0]

    a_keys, a_live = run(lambda: one(1, 0, 1))
    b_keys, b_live = run(lambda: one(2, 10**18, 200))
    assert a_live < b_live, "b goes live later"

    def uid(key: str) -> int:
        return int(key.rsplit(":", 1)[1])

    assert len(b_keys) > 100
    assert [k for k in a_keys if uid(k) >= b_live] == b_keys
    # at the update ids the rule names: the last of a bucket of E // 100 ms
    last_of: dict[int, int] = {}
    for ev in diffs:
        assert ev.ts_event is not None
        last_of[ev.ts_event // (100 * MS)] = ev.update_id
    assert {uid(k) for k in a_keys} <= set(last_of.values())


class FakeStore:
    def __init__(self) -> None:
        self.data: dict[str, tuple[int, object]] = {}
        self.calls: list[tuple[str, int | None, int, float | None]] = []

    def get(self, key: str) -> tuple[int, object] | None:
        return self.data.get(key)

    def compare_and_set(
        self,
        key: str,
        expected_version: int | None,
        version: int,
        value: object,
        ttl_s: float | None,
    ) -> bool:
        self.calls.append((key, expected_version, version, ttl_s))
        cur = self.data.get(key)
        if (cur[0] if cur else None) != expected_version:
            return False
        self.data[key] = (version, value)
        return True


async def aaa_live(**kw: Any) -> Harness:
    """A Harness (Conductor options `kw`) whose book AAA went live at u=101."""
    h = Harness(**kw)
    h.snaps = {"AAA": [rest("AAA", 100)]}
    h.cond.track("spot", "AAA")
    h.feed(delta("AAA", 101, 101))
    await settle()
    return h


def test_store_gets_each_fused_snapshot_with_cas_on_the_update_id() -> None:
    store = FakeStore()
    store.data["binance:spot:AAA:book"] = (50, "an older run")

    async def scenario() -> Harness:
        h = await aaa_live(store=store, snapshot_ttl_s=5.0)
        h.feed(delta("AAA", 102, 102))
        store.data["binance:spot:AAA:book"] = (999, "a newer writer")
        h.feed(delta("AAA", 103, 103))
        return h

    h = run(scenario)
    k = "binance:spot:AAA:book"
    assert store.calls == [
        (k, None, 101, 5.0),
        (k, 50, 101, 5.0),
        (k, 101, 102, 5.0),
        (k, 102, 103, 5.0),
    ]
    assert store.data[k] == (999, "a newer writer")  # never overwritten by older state
    assert h.cond.counters["store_writes"] == 2 and h.cond.counters["store_conflicts"] == 1


def test_memory_store_is_written_from_c_with_the_same_cas_rules() -> None:
    """The in-memory store is written by BookSet.store_fused; a refused write
    takes the Python retry, and nothing is counted twice."""
    store = MemorySnapshotStore()
    k = "binance:spot:AAA:book"
    assert store.compare_and_set(k, None, 50, "an older run")

    async def scenario() -> Harness:
        h = await aaa_live(store=store, snapshot_ttl_s=5.0)
        h.feed(delta("AAA", 102, 102), delta("AAA", 103, 103))
        assert store.get(k) == (103, h.cond.book("spot", "AAA").last_fused)
        assert store.compare_and_set(k, 103, 999, "a newer writer")
        h.feed(delta("AAA", 104, 104))
        return h

    h = run(scenario)
    assert store.get(k) == (999, "a newer writer")  # never overwritten by older state
    # 101 (after one refused CAS from None), 102+103 (one write); 104 refused, then conflict
    assert h.cond.counters["store_writes"] == 2 and h.cond.counters["store_conflicts"] == 1
    t = store.stats()
    assert t["mismatches"] == 2  # the first write from None, and 104 from 103
    assert t["sets"] == 4  # the older run, 101, 103 and the newer writer
    book = h.cond.book("spot", "AAA")
    assert book.store_key == k and book.store_version == 999


def test_batches_and_store_writes_counted_in_c_read_through_counters_and_status() -> None:
    """The per-batch path keeps ``batches`` and ``store_writes`` as C ints; the
    counters dict and status() show them on every read."""
    store = MemorySnapshotStore()

    async def scenario() -> Harness:
        h = await aaa_live(store=store)
        return h

    h = run(scenario)
    start = h.cond.counters["batches"]
    writes = h.cond.counters["store_writes"]
    h.feed()
    h.feed(delta("AAA", 102, 102), delta("AAA", 103, 103))
    assert h.cond.counters["batches"] == start + 2
    assert h.cond.counters["store_writes"] == writes + 1  # one write per book per batch
    assert h.cond.status()["counters"]["batches"] == start + 2


def test_memory_store_full_is_a_counted_store_error_and_the_batch_goes_on() -> None:
    store = MemorySnapshotStore(max_entries=1)
    k = "binance:spot:AAA:book"
    assert store.compare_and_set("other", None, 1, "x")

    async def scenario() -> Harness:
        h = await aaa_live(store=store)  # live: its first write is refused (Python path)
        h.feed(delta("AAA", 102, 102))  # refused again (C path)
        assert store.get(k) is None
        assert store.delete("other")
        h.feed(delta("AAA", 103, 103))  # room again
        return h

    h = run(scenario)
    assert h.fused("AAA") == [101, 102, 103]  # the bus never missed an update
    assert store.get(k) == (103, h.cond.book("spot", "AAA").last_fused)
    assert h.cond.counters["store_errors"] == 2 and h.cond.counters["store_writes"] == 1
    assert store.stats()["refused"] == 2  # each refused write counted once


def test_store_gets_the_latest_snapshot_of_a_batch_once_per_book() -> None:
    store = FakeStore()

    async def scenario() -> Harness:
        h = Harness(store=store, snapshot_ttl_s=None)
        h.snaps = {"AAA": [rest("AAA", 100)], "BBB": [rest("BBB", 200)]}
        h.cond.track("spot", "AAA")
        h.cond.track("spot", "BBB")
        h.feed(delta("AAA", 101, 101), delta("BBB", 201, 201))
        await settle()
        store.calls.clear()
        h.feed(
            delta("AAA", 102, 102),
            delta("BBB", 202, 202),
            delta("AAA", 103, 103),
            delta("AAA", 104, 104),
        )
        return h

    h = run(scenario)
    # every update still has its fused snapshot on the bus ...
    assert h.fused("AAA") == [101, 102, 103, 104]
    assert h.fused("BBB") == [201, 202]
    # ... but the store, which keeps only the latest state, is written once per book
    assert sorted(store.calls) == [
        ("binance:spot:AAA:book", 101, 104, None),
        ("binance:spot:BBB:book", 201, 202, None),
    ]
    assert store.data["binance:spot:AAA:book"][0] == 104
    assert store.data["binance:spot:AAA:book"][1] is h.cond.book("spot", "AAA").last_fused

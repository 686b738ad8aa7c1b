"""Book audits (meltica/conductor/audit.py) against scripted snapshots.

A Conductor with scripted REST snapshots and a ``BookAuditor`` whose audit
snapshots the test chooses: a match grows the verified depth, a level that
differs inside it resyncs the book (counted, control events, the gap-manifest
hook), levels wrong beyond it are ``rotted``, the comparison waits for the live
book to reach the snapshot's id, and a short budget skips the round.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aio import run

from meltica._core.events import BookDepth, Control, event_from_wire
from meltica.conductor import Conductor
from meltica.conductor.audit import CUT_RETRY_ROUNDS, BookAuditor
from meltica.conductor.conductor import State
from meltica.config import load_config
from meltica.errors import ConfigError


def depth(
    kind: str, u: int, bids: Any, asks: Any, first: int | None = None, symbol: str = "AAA"
) -> BookDepth:
    d: dict[str, Any] = {
        "v": 1,
        "venue": "binance",
        "market": "spot",
        "symbol": symbol,
        "kind": kind,
        "seq": u,
        "ts_recv": u,
        "update_id": u,
        "first_update_id": first,
        "prev_update_id": None,
        "bids": [list(x) for x in bids],
        "asks": [list(x) for x in asks],
    }
    if kind == "book_snapshot":
        d["source"] = "rest"
    e = event_from_wire(d)
    assert isinstance(e, BookDepth)
    return e


def diff(u: int, bids: Any = (), asks: Any = ()) -> BookDepth:
    return depth("book_delta", u, bids, asks, first=u)


ASKS = (("11", "1"), ("12", "1"), ("13", "1"))  # the asks of SYNC


def snapshot(u: int, bids: Any, asks: Any = ASKS, symbol: str = "AAA") -> BookDepth:
    """A REST snapshot at update id ``u``."""
    return depth("book_snapshot", u, bids, asks, symbol=symbol)


LIMIT = 3  # levels per side the scripted snapshots were asked for
SYNC = snapshot(100, [("10", "1"), ("9", "1"), ("8", "1")])


class Rig:
    """A live book of spot AAA (snapshot of 3 levels a side at id 100, then 101)."""

    def __init__(self, **audit_kw: Any) -> None:
        self.batches: list[list[Any]] = []
        self.sync_snaps = [SYNC]
        self.audit_snaps: list[BookDepth] = []
        self.audit_fetches = 0
        self.records: list[dict[str, Any]] = []
        self.gate: asyncio.Event | None = None  # set: the audit snapshot arrives
        self.cond = Conductor(
            self.batches.append,
            self.fetch,
            snapshot_retry_s=0,
            book_depth=10,
            depth_limit=lambda m: LIMIT,
        )
        self.audit = BookAuditor(
            self.cond,
            self.fetch_audit,
            interval_s=0,
            limit=lambda m: LIMIT,
            wait_s=2.0,
            on_resync=self.records.append,
            **audit_kw,
        )

    async def fetch(self, market: str, symbol: str) -> BookDepth:
        await asyncio.sleep(0)
        return self.sync_snaps.pop(0)

    async def fetch_audit(self, market: str, symbol: str) -> BookDepth:
        self.audit_fetches += 1
        await asyncio.sleep(0)
        if self.gate is not None:
            await self.gate.wait()
        return self.audit_snaps.pop(0)

    async def start(self) -> None:
        self.cond.track("spot", "AAA")
        self.feed(diff(101))
        for _ in range(10):
            await asyncio.sleep(0)
        assert self.inst.state is State.LIVE

    @property
    def inst(self) -> Any:
        return self.cond.instrument("spot", "AAA")

    def feed(self, *events: BookDepth) -> None:
        self.cond.on_events(list(events))

    def controls(self) -> list[tuple[str, str]]:
        return [(e.kind, e.reason) for b in self.batches for e in b if isinstance(e, Control)]

    def fused(self) -> list[BookDepth]:
        return [
            e
            for b in self.batches
            for e in b
            if isinstance(e, BookDepth) and e.kind == "book_snapshot" and e.source == "book"
        ]


def test_levels_wrong_beyond_the_verified_depth_are_rotted() -> None:
    async def scenario() -> Rig:
        r = Rig()
        await r.start()
        book = r.inst.book
        assert (book.verified_bids, book.verified_asks) == (3, 3)
        # the best two bids go and a bid at 7 arrives: below the snapshot's worst (8),
        # so it is not verified (a level at 7.5 could be missing), nor published
        r.feed(diff(102, bids=[("10", "0"), ("9", "0"), ("7", "2")]))
        assert (book.n_bids, book.verified_bids) == (2, 1)
        last = r.fused()[-1]
        assert [str(p) for p, _ in last.bids] == ["8"] and last.verified_bids == 1
        # the exchange holds bid 8 alone (a whole side: 1 level of 3 asked for)
        r.audit_snaps.append(snapshot(102, [("8", "1")]))
        assert await r.audit.audit("spot", "AAA") == "rotted"
        return r

    r = run(scenario)
    assert r.audit.counts["spot"]["rotted"] == 1 and r.inst.resyncs == 1
    assert ("resync_started", "audit_rotted") in r.controls()
    assert [x["cause"] for x in r.records] == ["audit_rotted"]


def test_audit_match_extends_verification() -> None:
    async def scenario() -> Rig:
        r = Rig()
        await r.start()
        book = r.inst.book
        r.feed(diff(102, bids=[("10", "0"), ("9", "0"), ("7", "2")]))
        assert book.verified_bids == 1
        r.audit_snaps.append(snapshot(102, [("8", "1"), ("7", "2")]))
        assert await r.audit.audit("spot", "AAA") == "match"
        assert (book.verified_bids, book.verified_asks) == (2, 3)
        r.feed(diff(103, asks=[("11", "3")]))
        last = r.fused()[-1]
        assert [str(p) for p, _ in last.bids] == ["8", "7"] and last.verified_bids == 2
        return r

    r = run(scenario)
    assert r.audit.counts["spot"]["match"] == 1
    assert r.inst.resyncs == 0 and not r.records
    assert [k for k, _ in r.controls()] == ["resync_done"]


def test_mismatch_inside_the_verified_depth_resyncs_and_records_it() -> None:
    async def scenario() -> Rig:
        r = Rig()
        await r.start()
        # the exchange says bid 9 has quantity 5 at id 101: the live book has 1
        r.audit_snaps.append(snapshot(101, [("10", "1"), ("9", "5"), ("8", "1")]))
        r.sync_snaps.append(snapshot(101, [("9", "5")], [("11", "1")]))
        assert await r.audit.audit("spot", "AAA") == "mismatch"
        assert r.inst.state is State.RESYNCING
        r.feed(diff(102, asks=[("12", "1")]))
        for _ in range(10):
            await asyncio.sleep(0)
        assert r.inst.state is State.LIVE
        return r

    r = run(scenario)
    assert r.audit.counts["spot"]["mismatch"] == 1 and r.inst.resyncs == 1
    assert r.controls() == [
        ("resync_done", "synced"),
        ("resync_started", "audit_mismatch"),
        ("stale", "audit_mismatch"),
        ("resync_done", "resynced"),
        ("stale", "resynced"),
    ]
    assert r.records == [
        {
            "market": "spot",
            "symbol": "AAA",
            "stream": "depth",
            "cause": "audit_mismatch",
            "first_id": None,
            "last_id": 101,
            "outcome": "resynced",
        }
    ]


def test_snapshot_ahead_of_the_stream_is_compared_at_the_same_update_id() -> None:
    """The REST answer is at id 103 while the live book is at 101: the audit waits
    for the book to apply up to 103, then replays the diffs it applied after 103
    onto the snapshot, so both stand at the live book's id (104)."""

    async def scenario() -> Rig:
        r = Rig()
        await r.start()
        r.audit_snaps.append(snapshot(103, [("10", "4"), ("9", "1"), ("8", "1")]))
        task = asyncio.get_running_loop().create_task(r.audit.audit("spot", "AAA"))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not task.done() and r.inst.book.auditing
        r.feed(diff(102, bids=[("10", "2")]), diff(103, bids=[("10", "4")]))
        r.feed(diff(104, bids=[("9", "0")]))
        assert await task == "match"
        assert not r.inst.book.auditing
        # a later audit whose snapshot is older than the log's start compares nothing
        r.audit_snaps.append(SYNC)
        assert await r.audit.audit("spot", "AAA") == "stale"
        return r

    r = run(scenario)
    assert r.audit.counts["spot"]["match"] == 1 and r.audit.counts["spot"]["stale"] == 1
    assert r.inst.resyncs == 0


def test_resync_during_the_audit_aborts_it_and_cancel_stops_the_log() -> None:
    async def scenario() -> Rig:
        r = Rig()
        await r.start()
        r.gate = asyncio.Event()
        r.audit_snaps.append(snapshot(101, [("10", "1")], [("11", "1")]))
        task = asyncio.get_running_loop().create_task(r.audit.audit("spot", "AAA"))
        for _ in range(5):
            await asyncio.sleep(0)
        assert r.inst.book.auditing
        r.sync_snaps.append(snapshot(110, [("9", "1")], [("11", "1")]))
        r.feed(diff(105))  # a gap: the book resyncs, its log goes
        assert not r.inst.book.auditing
        r.gate.set()
        assert await task == "aborted"
        # cancelled while waiting for its snapshot: the book records nothing more
        for _ in range(10):
            await asyncio.sleep(0)
        r.feed(diff(111))
        for _ in range(10):
            await asyncio.sleep(0)
        assert r.inst.state is State.LIVE
        r.gate = asyncio.Event()
        task = asyncio.get_running_loop().create_task(r.audit.audit("spot", "AAA"))
        for _ in range(5):
            await asyncio.sleep(0)
        assert r.inst.book.auditing
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not r.inst.book.auditing
        return r

    r = run(scenario)
    assert r.audit.counts["spot"]["aborted"] == 1


def test_short_budget_skips_the_round_without_a_request() -> None:
    async def scenario() -> Rig:
        r = Rig(affordable=lambda m: False)
        await r.start()
        assert await r.audit.audit_next() == "budget"
        return r

    r = run(scenario)
    assert r.audit_fetches == 0 and r.audit.counts["spot"]["budget"] == 1


def test_failed_fetch_and_untracked_books() -> None:
    async def scenario() -> Rig:
        r = Rig()
        assert await r.audit.audit_next() is None  # nothing live yet
        await r.start()
        assert await r.audit.audit("spot", "AAA") == "failed"  # no snapshot scripted
        assert not r.inst.book.auditing
        return r

    r = run(scenario)
    assert r.audit.counts["spot"]["failed"] == 1 and r.inst.state is State.LIVE


def test_bad_audit_config_fails_at_start_naming_the_key() -> None:
    for override, key in (
        ("conductor.audit_interval_s=-1", "audit_interval_s"),
        ("conductor.audit_interval_s=soon", "audit_interval_s"),
        ("conductor.publish_unverified=maybe", "publish_unverified"),
    ):
        with pytest.raises(ConfigError) as info:
            load_config(None, env={}, overrides=[override])
        assert key in str(info.value), (override, str(info.value))
    cfg = load_config(None, env={}, overrides=["conductor.audit_interval_s=0"]).conductor
    assert cfg.audit_interval_s == 0 and cfg.publish_unverified is False


def test_a_book_whose_output_is_cut_is_audited_out_of_turn() -> None:
    """Books take turns, except that one whose published side is cut by its verified
    depth goes first, at most once in CUT_RETRY_ROUNDS rounds."""
    others = ["BBB", "CCC", "DDD"]

    async def scenario() -> list[str]:
        r = Rig()
        await r.start()
        for n, sym in enumerate(others):
            u = 500 + 10 * n
            r.sync_snaps.append(snapshot(u, [("10", "1")], [("11", "1")], symbol=sym))
            r.cond.track("spot", sym)
            r.feed(depth("book_delta", u + 1, [], [], first=u + 1, symbol=sym))
            for _ in range(10):
                await asyncio.sleep(0)
            assert r.cond.instrument("spot", sym).state is State.LIVE
        picked: list[str] = []

        async def audit(market: str, symbol: str) -> str:
            picked.append(symbol)
            return "match"

        r.audit.audit = audit  # type: ignore[method-assign]
        for _ in range(4):
            await r.audit.audit_next()
        # AAA's bids cut: 1 level verified of 2 held (the fake audits leave it so)
        r.feed(diff(102, bids=[("10", "0"), ("9", "0"), ("7", "2")]))
        assert r.inst.book.verified_bids == 1 and r.inst.book.n_bids == 2
        for _ in range(8):
            await r.audit.audit_next()
        return picked

    picked = run(scenario)
    assert picked[:4] == ["AAA", *others]  # in turn while nothing is cut
    assert CUT_RETRY_ROUNDS == 4
    # rounds 5..12: AAA out of turn in rounds 5 and 10, its turns in 6 and 11 go on as before
    assert picked[4:] == ["AAA", "AAA", "BBB", "CCC", "DDD", "AAA", "AAA", "BBB"]

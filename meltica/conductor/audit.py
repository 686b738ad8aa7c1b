"""Book audits: live books compared with fresh REST snapshots at the same update id.

A REST snapshot of ``limit`` levels verifies a book only down to its worst level
(docs/conductor.md "Verified depth"); what lies deeper is learned from diffs alone
and can rot.  ``BookAuditor`` takes the live books in turn, one every
``interval_s``, and for each:

1. skips the round (counted ``budget``) when the REST budget of the market has not
   room for the snapshot's weight twice over, so audits never crowd out resyncs;
2. starts the book's audit log (C: every diff the book applies from now on);
3. fetches a snapshot through the REST scheduler at low priority (below resync
   snapshots);
4. waits until the live book has applied up to the snapshot's ``lastUpdateId``
   (at most ``wait_s``), takes the log, and builds a shadow book: the snapshot
   plus the logged diffs after it, under the same sequence rules as a sync, so the
   shadow stands at exactly the live book's update id;
5. compares the two (``OrderBook.audit_compare``): ``match`` (the live book's
   verified region grows to the snapshot's), ``mismatch`` (a level differs where
   the live book claims to be verified) or ``rotted`` (levels beyond its verified
   depth are wrong).  Both of the last two resync the book, emit its
   ``resync_started`` / ``stale`` control events (reason ``audit_mismatch`` /
   ``audit_rotted``) and call ``on_resync`` with a record for the gap manifest.

Outcomes that compare nothing: ``budget`` (skipped), ``failed`` (the REST request
failed), ``stale`` (the snapshot is older than the log's start, or does not
bridge), ``aborted`` (the book resynced, the log overflowed or the book did not
reach the snapshot's id in time, or the snapshot holds a level finer than the book's
exponents).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from meltica._core.book import OrderBook
from meltica._core.events import BookDepth
from meltica.log import fields
from meltica.log import root as _root_log

# a book with a cut output is audited out of turn at most once in this many rounds
CUT_RETRY_ROUNDS = 4

if TYPE_CHECKING:
    from meltica.conductor.conductor import Conductor, Instrument

__all__ = ["AUDIT_OUTCOMES", "BookAuditor"]

log = _root_log.getChild("audit")

AUDIT_OUTCOMES = ("match", "mismatch", "rotted", "budget", "failed", "stale", "aborted")
# BookStatus values of a diff the shadow accepts (book.pxd)
_OK = (0, 1, 2)
_SEQUENCE = (3, 4)  # gap, unbridged


class BookAuditor:
    """Audits the live books of ``conductor`` in turn (see the module docstring).

    fetch: ``(market, symbol) -> Awaitable[BookDepth]``, a low-priority REST depth
    snapshot.  affordable: ``market -> bool``, False when the market's REST budget
    is too short for an audit this round (None: always).  limit: ``market -> int``,
    the levels per side the snapshot asks for (None: unknown, so each side is
    verified to its worst level).  on_resync: called with a dict (``market``,
    ``symbol``, ``stream``, ``cause``, ``first_id``, ``last_id``, ``outcome``)
    for every audit that resynced a book: the update ids the book may have been
    wrong over (from just after the last good audit or sync known here).
    """

    def __init__(
        self,
        conductor: Conductor,
        fetch: Callable[[str, str], Awaitable[BookDepth]],
        *,
        interval_s: float,
        affordable: Callable[[str], bool] | None = None,
        limit: Callable[[str], int] | None = None,
        wait_s: float = 5.0,
        log_max: int = 100_000,
        on_resync: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if interval_s < 0 or wait_s <= 0 or log_max < 1:
            raise ValueError("interval_s >= 0, wait_s > 0 and log_max >= 1")
        self._conductor = conductor
        self._fetch = fetch
        self.interval_s = interval_s
        self._affordable = affordable
        self._limit = limit
        self._wait_s = wait_s
        self._log_max = log_max
        self.on_resync = on_resync
        # per market, per outcome
        self.counts: dict[str, dict[str, int]] = {}
        self._next = 0
        # audit rounds: the round each book was last audited in (cut books first)
        self._round = 0
        self._last_round: dict[tuple[str, str], int] = {}
        self._good: dict[tuple[str, str], int] = {}  # last update id an audit found right
        self.hook_errors = 0  # on_resync calls that raised (logged)

    def outcomes(self, market: str) -> dict[str, int]:
        """Audits of ``market`` by outcome (every outcome, 0 when none yet)."""
        return dict(self.counts.get(market) or dict.fromkeys(AUDIT_OUTCOMES, 0))

    def _count(self, market: str, outcome: str) -> str:
        per = self.counts.setdefault(market, dict.fromkeys(AUDIT_OUTCOMES, 0))
        per[outcome] += 1
        return outcome

    async def run(self) -> None:
        """Audit one live book every ``interval_s`` until cancelled (0: never)."""
        if self.interval_s <= 0:
            return
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.audit_next()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one bad audit must not end the schedule
                log.error("book audit failed: %s", exc, exc_info=exc)

    async def audit_next(self) -> str | None:
        """Audit the next live book; its outcome, or None when no book is live.

        A book whose fused output is cut (a side verified to fewer levels than
        the Conductor would publish without the cut, e.g. after the price moved
        past its snapshot's range) goes first, the least verified first, unless it was audited in
        the last `CUT_RETRY_ROUNDS` rounds; otherwise books take turns."""
        self._round += 1
        live = [
            (key, inst)
            for key, inst in sorted(self._conductor._instruments.items())
            if inst.book.live and not inst.book.auditing
        ]
        if not live:
            return None
        keys = {key for key, _ in live}
        self._last_round = {k: r for k, r in self._last_round.items() if k in keys}
        depth = self._conductor.book_depth
        cut = [
            (min(b.verified_bids, b.verified_asks), key)
            for key, b in ((key, inst.book) for key, inst in live)
            if (b.verified_bids < min(b.n_bids, depth) or b.verified_asks < min(b.n_asks, depth))
            and self._round - self._last_round.get(key, -CUT_RETRY_ROUNDS) >= CUT_RETRY_ROUNDS
        ]
        if cut:
            market, symbol = min(cut)[1]
        else:
            market, symbol = live[self._next % len(live)][0]
            self._next += 1
        self._last_round[(market, symbol)] = self._round
        return await self.audit(market, symbol)

    async def audit(self, market: str, symbol: str) -> str | None:
        """Audit one book now; its outcome, or None when it is not live."""
        inst = self._conductor.instrument(market, symbol)
        if inst is None or not inst.book.live:
            return None
        if self._affordable is not None and not self._affordable(market):
            return self._count(market, "budget")
        book = inst.book
        book.audit_start(self._log_max)
        try:
            return await self._audit(inst, book.update_id)
        finally:
            if book.auditing:  # cancelled, or an outcome that left the log running
                book.audit_take()

    async def _audit(self, inst: Instrument, started: int | None) -> str:
        cond = self._conductor
        market, symbol, book = inst.market, inst.symbol, inst.book
        try:
            snap = await self._fetch(market, symbol)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.info(
                "%s %s: audit snapshot failed: %s",
                market,
                symbol,
                exc,
                extra=fields(market=market, symbol=symbol),
            )
            return self._count(market, "failed")
        x = snap.update_id
        if started is None or x < started:
            return self._count(market, "stale")
        # the live book must reach the snapshot's id: the stream may lag the REST answer
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait_s
        while book.auditing and cond.instrument(market, symbol) is inst and book.live:
            u = book.update_id
            if u is not None and u >= x:
                break
            if loop.time() >= deadline:
                break
            await asyncio.sleep(0.02)
        diffs = book.audit_take()
        u = book.update_id
        if diffs is None or not book.live or u is None or u < x:
            return self._count(market, "aborted")
        if book.price_exp > 18 or book.qty_exp > 18:  # no level ever: nothing to compare
            return self._count(market, "aborted")
        # the shadow keeps the live book's exponents: a level finer than them is a
        # level the live book never held (precision), so the two cannot be compared
        shadow = OrderBook(
            market,
            symbol,
            futures=book.futures,
            price_exp=book.price_exp,
            qty_exp=book.qty_exp,
            max_levels=book.max_levels,
            venue=book.venue,
        )
        limit = self._limit(market) if self._limit is not None else 0
        if shadow.load_snapshot(snap, limit, bridged=x == started) != 0:
            return self._count(market, "aborted")
        for ev in diffs:
            st = shadow.apply(ev)
            if st not in _OK:
                return self._count(market, "stale" if st in _SEQUENCE else "aborted")
        if shadow.update_id != u:
            return self._count(market, "stale")
        outcome, side = book.audit_compare(shadow)
        key = (market, symbol)
        if outcome == "match":
            self._good[key] = u
            return self._count(market, outcome)
        self._resync(inst, outcome, side, u)
        return self._count(market, outcome)

    def _resync(self, inst: Instrument, outcome: str, side: str | None, u: int) -> None:
        cause = f"audit_{outcome}"
        key = (inst.market, inst.symbol)
        good = self._good.pop(key, None)
        log.warning(
            "%s %s: audit at u=%s found the %s %s; resyncing",
            inst.market,
            inst.symbol,
            u,
            side,
            "wrong where verified" if outcome == "mismatch" else "rotted beyond verified depth",
            extra=fields(market=inst.market, symbol=inst.symbol),
        )
        self._conductor.resync(inst.market, inst.symbol, reason=cause)
        if self.on_resync is not None:
            record = {
                "market": inst.market,
                "symbol": inst.symbol,
                "stream": "depth",
                "cause": cause,
                "first_id": None if good is None else good + 1,
                "last_id": u,
                "outcome": "resynced",
            }
            try:
                self.on_resync(record)
            except Exception as exc:
                self.hook_errors += 1
                log.error("audit on_resync hook failed: %s", exc, exc_info=exc)

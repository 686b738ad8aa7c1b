"""Trade backfill by id: fill holes in trade / agg trade ids from Binance REST.

The dispatch table records a hole when a trade route's id jumps from L to n > L+1
(``DispatchTable.take_holes``, called back through ``on_holes`` once per batch that
found one).  ``TradeBackfill`` then, per hole: emits a ``gap`` control event naming the
ids, fetches them from REST by id (``BinanceRest.trades_from``: below book snapshots in
the weight budget), hands them to ``sink`` in id order as ``source == "rest"`` events
(they pass the dispatch table; late live copies of those ids are duplicates there), and
ends with one ``gap_filled`` event per outcome: ``state == "filled"`` for the ids
delivered, ``state == "lost"`` for the rest, each with its exact range in
``from_seq``..``to_seq``.  Every outcome also goes to ``on_outcome`` (a `HoleOutcome`),
for a gap manifest.  docs/pipeline.md and docs/rest.md describe the contract.

Lost: a hole larger than ``max_ids``, one still open ``max_age_s`` after it was found,
one that does not fit the queue (``max_holes`` per market), a REST failure after the
client's retries, the exchange not returning an id (the range it skipped), and
historicalTrades on the futures markets without an API key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from meltica._core.events import Control
from meltica.adapters.binance.rest import TRADE_ENDPOINTS, TRADES_BY_ID, BinanceRest
from meltica.errors import MelticaError
from meltica.localseq import LocalSeq
from meltica.log import fields

__all__ = ["HoleOutcome", "TradeBackfill"]

log = logging.getLogger("meltica.backfill")

# how often a page waiting for the Data Bus to resume looks again
PAUSE_POLL_S = 0.01


@dataclass(frozen=True, slots=True)
class HoleOutcome:
    """What became of ids ``first``..``last`` (inclusive) of one trade stream.

    ``outcome`` is "filled" or "lost"; ``reason`` says why ids were lost ("too_large",
    "too_old", "queue_full", "rest_error", "not_served", "api_key_required",
    "stopped"; "" when filled).  ``found_ns``: when the hole was detected (wall clock).
    """

    market: str
    symbol: str
    kind: str
    first: int
    last: int
    outcome: str
    reason: str
    found_ns: int

    @property
    def ids(self) -> int:
        return self.last - self.first + 1


@dataclass(slots=True)
class _Hole:
    venue: str
    market: str
    symbol: str
    kind: str
    first: int
    last: int
    found: float  # clock()
    found_ns: int
    next_id: int = 0  # the first id not yet delivered (set when the fill starts)
    skipped: bool = False  # the exchange left out ids inside the hole (reported lost)


class TradeBackfill:
    """Fills trade id holes from REST; one worker per market, holes in the order found.

    ``sink(batch)``: where events go (the Dispatcher's ``on_events``), in batches of at
    most ``max_batch``, each while ``paused()`` (the Data Bus's back-pressure) is false.
    ``venues`` maps a market to its events' venue.  ``clock`` (monotonic seconds) times
    ``max_age_s``, which is checked before each page is requested.  ``page``: ids per
    request (default: the endpoint's largest limit).
    """

    def __init__(
        self,
        rest: BinanceRest,
        sink: Callable[[list[Any]], object],
        *,
        venues: dict[str, str],
        max_ids: int = 100_000,
        max_age_s: float = 300.0,
        max_holes: int = 1024,
        page: int | None = None,
        max_batch: int = 256,
        paused: Callable[[], bool] | None = None,
        on_outcome: Callable[[HoleOutcome], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rest = rest
        self.sink = sink
        self.venues = dict(venues)
        self.max_ids = max_ids
        self.max_age_s = max_age_s
        self.max_holes = max_holes
        self.page = page  # ids per request; None: the endpoint's largest limit
        self.max_batch = max_batch
        self._paused = paused
        self.on_outcome = on_outcome
        self._clock = clock
        self._seq = LocalSeq()
        self._table: Any = None
        self._queues: dict[str, asyncio.Queue[_Hole]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = False
        self.counters = {
            "holes": 0,
            "ids_missing": 0,
            "ids_filled": 0,
            "ids_lost": 0,
            "requests": 0,
            "holes_filled": 0,
            "holes_lost": 0,
        }

    # -- wiring

    def attach(self, table: Any) -> None:
        """Take holes from ``table`` (a DispatchTable) as it records them."""
        self._table = table
        table.on_holes = self._on_holes

    def _on_holes(self) -> None:
        # called from inside DispatchTable.accept(): nothing may re-enter the pipeline
        # here, so the holes are taken now and announced on the next loop turn
        holes = self._table.take_holes()
        if not holes:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        now, now_ns = self._clock(), time.time_ns()
        found = [
            _Hole(self.venues.get(m, "binance"), m, sym, kind, first, last, now, now_ns)
            for m, sym, kind, first, last in holes
        ]
        if loop is None or self._stopped:
            # no loop to announce on (stopped): counted, logged, passed to on_outcome; no
            # event, since the pipeline must not be re-entered from inside accept()
            for h in found:
                self._count_hole(h)
                self._finish(h, [], (h.first, h.last, "stopped"), emit=False)
            return
        loop.call_soon(self._announce, found)

    def _count_hole(self, h: _Hole) -> None:
        self.counters["holes"] += 1
        self.counters["ids_missing"] += h.last - h.first + 1

    def _announce(self, holes: list[_Hole]) -> None:
        """Emit each hole's ``gap`` and queue it (or report it lost at once)."""
        for h in holes:
            self._count_hole(h)
            lost = self._refuse(h)
            self.sink(
                [self._control("gap", h, h.first, h.last, "backfill" if not lost else "lost")]
            )
            if lost:
                self._finish(h, [], (h.first, h.last, lost))
                continue
            q = self._queue(h.market)
            try:
                q.put_nowait(h)
            except asyncio.QueueFull:
                self._finish(h, [], (h.first, h.last, "queue_full"))

    def _refuse(self, h: _Hole) -> str:
        """Why the hole cannot be filled at all ("" if it can be tried)."""
        if self._stopped:
            return "stopped"
        if h.last - h.first + 1 > self.max_ids:
            return "too_large"
        if h.market not in self.rest.markets:
            return "rest_error"
        endpoint = TRADE_ENDPOINTS[h.kind]
        if endpoint == "historicalTrades" and h.market != "spot" and self.rest.api_key is None:
            return "api_key_required"
        if TRADES_BY_ID[h.market][endpoint][0] > self.rest.budget(h.market):
            return "rest_error"
        return ""

    def _queue(self, market: str) -> asyncio.Queue[_Hole]:
        q = self._queues.get(market)
        if q is None:
            q = self._queues[market] = asyncio.Queue(self.max_holes)
            self._tasks[market] = asyncio.get_running_loop().create_task(
                self._work(q), name=f"meltica-backfill-{market}"
            )
        return q

    # -- filling

    async def _work(self, q: asyncio.Queue[_Hole]) -> None:
        while True:
            h = await q.get()
            try:
                await self._fill(h)
            except asyncio.CancelledError:
                # stopped mid-fill: what was delivered is filled, the rest lost, exactly
                done = [(h.first, h.next_id - 1)] if h.next_id > h.first else []
                left = (h.next_id, h.last, "stopped") if h.next_id <= h.last else None
                self._finish(h, done, left)
                raise
            except Exception:  # a bug must not stop the worker: the hole is lost, loudly
                log.exception("backfill of %s %s %s failed", h.market, h.symbol, h.kind)
                done = [(h.first, h.next_id - 1)] if h.next_id > h.first else []
                self._finish(h, done, (max(h.first, h.next_id), h.last, "rest_error"))

    async def _fill(self, h: _Hole) -> None:
        """Fetch ids first..last page by page; deliver them; report the outcome."""
        next_id = h.next_id = h.first
        filled: list[tuple[int, int]] = []
        lost: tuple[int, int, str] | None = None
        while next_id <= h.last:
            if self._clock() - h.found > self.max_age_s:
                lost = (next_id, h.last, "too_old")
                break
            endpoint = TRADE_ENDPOINTS[h.kind]
            largest = TRADES_BY_ID[h.market][endpoint][1]
            if self.page is not None:
                largest = min(largest, self.page)
            limit = min(largest, h.last - next_id + 1)
            self.counters["requests"] += 1
            try:
                page = await self.rest.trades_from(h.market, h.symbol, h.kind, next_id, limit)
            except MelticaError as exc:
                log.warning(
                    "backfill %s %s %s ids %d..%d: %s", h.market, h.symbol, h.kind,
                    next_id, h.last, exc, extra=fields(market=h.market, symbol=h.symbol),
                )  # fmt: skip
                lost = (next_id, h.last, "rest_error")
                break
            events = [ev for ev in page if next_id <= ev.trade_id <= h.last]
            if not events:
                lost = (next_id, h.last, "not_served")
                break
            await self._deliver(events)
            self.counters["ids_filled"] += len(events)
            for ev in events:
                tid = ev.trade_id
                if tid > next_id:
                    # ids the exchange skipped (it never does for a listed symbol): lost
                    self._report(h, next_id, tid - 1, "lost", "not_served")
                    h.skipped = True
                filled.append((tid, tid))
                next_id = h.next_id = tid + 1
        self._finish(h, filled, lost)

    async def _deliver(self, events: list[Any]) -> None:
        """Hand a page on in batches of ``max_batch``, each once the Data Bus is not
        holding the readers paused (a page must not overrun a block consumer)."""
        for i in range(0, len(events), self.max_batch):
            while self._paused is not None and self._paused():
                await asyncio.sleep(PAUSE_POLL_S)
            self.sink(events[i : i + self.max_batch])
            await asyncio.sleep(0)  # let consumers read before the next batch

    def _finish(
        self,
        h: _Hole,
        filled: list[tuple[int, int]],
        lost: tuple[int, int, str] | None,
        *,
        emit: bool = True,
    ) -> None:
        runs: list[list[int]] = []
        for first, last in filled:  # pages that follow each other are one filled range
            if runs and runs[-1][1] + 1 == first:
                runs[-1][1] = last
            else:
                runs.append([first, last])
        for first, last in runs:
            self._report(h, first, last, "filled", "", emit=emit)
        if lost is not None:
            self._report(h, lost[0], lost[1], "lost", lost[2], emit=emit)
        if lost is None and not h.skipped:
            self.counters["holes_filled"] += 1
        else:
            self.counters["holes_lost"] += 1

    def _report(
        self, h: _Hole, first: int, last: int, outcome: str, reason: str, *, emit: bool = True
    ) -> None:
        if outcome == "lost":
            self.counters["ids_lost"] += last - first + 1
            log.warning(
                "%s %s %s: trade ids %d..%d lost (%s)", h.market, h.symbol, h.kind,
                first, last, reason, extra=fields(market=h.market, symbol=h.symbol),
            )  # fmt: skip
        if emit:
            ev = self._control("gap_filled", h, first, last, outcome, reason)
            with contextlib.suppress(RuntimeError):  # the pipeline may be down at stop
                self.sink([ev])
        if self.on_outcome is not None:
            self.on_outcome(
                HoleOutcome(h.market, h.symbol, h.kind, first, last, outcome, reason, h.found_ns)
            )

    def _control(
        self, kind: str, h: _Hole, first: int, last: int, state: str, reason: str = ""
    ) -> Control:
        # reason: the stream ("trade" / "agg_trade"), then why ids were lost
        return Control(
            kind,
            venue=h.venue,
            market=h.market,
            symbol=h.symbol,
            seq=self._seq.next(),
            ts_recv=time.time_ns(),
            reason=h.kind if not reason else f"{h.kind}:{reason}",
            from_seq=first,
            to_seq=last,
            state=state,
        )

    # -- lifecycle

    async def stop(self) -> None:
        """Cancel the workers; holes still queued or in progress are reported lost."""
        if self._stopped:
            return
        self._stopped = True
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for q in self._queues.values():
            while not q.empty():
                h = q.get_nowait()
                self._finish(h, [], (h.first, h.last, "stopped"))

    def stats(self) -> dict[str, int]:
        """Counters (``meltica_backfill_*``), plus holes waiting."""
        return {**self.counters, "waiting": sum(q.qsize() for q in self._queues.values())}

"""The Conductor: per-instrument order books, fused outputs, analytics, store writes.

It sits between the Dispatcher and the Data Bus (docs/pipeline.md).  Each
batch goes through ``on_events``: the C ``BookSet`` applies every depth diff of
a live book and stops only at events this module must handle (a book still
syncing, a gap, a crossed book, ...).  Python runs the per-instrument state
machine SYNCING -> LIVE -> RESYNCING (docs/conductor.md, "States and rules": spot and futures),
fetches snapshots on asyncio tasks, schedules the flush timers of throttled
books and calls hooks and the SnapshotStore.  Exchange events pass through
unchanged and in order; fused and control events are appended; the batch goes
``downstream`` once.  See docs/conductor.md.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from enum import StrEnum
from typing import Any, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace

from meltica._core.book import BookSet, OrderBook
from meltica._core.events import BookDepth, Control, Derived, Event, Trade
from meltica._core.snapshot import MISMATCH
from meltica.conductor._flow import Flow, book_ts_event
from meltica.conductor.analytics import Hook, load_hook
from meltica.errors import AnalyticsError
from meltica.gaps import GapManifest
from meltica.localseq import LocalSeq
from meltica.log import fields
from meltica.log import root as _root_log
from meltica.snapshot.store import MemorySnapshotStore
from meltica.telemetry.spans import end_span, start_span

__all__ = ["Conductor", "Instrument", "SnapshotStoreLike", "State"]

log = _root_log.getChild("conductor")

# BookStatus values (book.pxd)
APPLIED, SYNCED, STALE, GAP, UNBRIDGED, CROSSED = 0, 1, 2, 3, 4, 5
OVERFLOW, PRECISION, BAD_LEVEL, NOT_MANAGED = 6, 7, 8, 9
_ERROR_REASON = {OVERFLOW: "overflow", PRECISION: "precision", BAD_LEVEL: "bad_level"}
# why a hook's output of one call was dropped: it raised, or it returned
# something other than None or an iterable of Derived
HOOK_ERROR_REASONS = ("raised", "bad_output")


class State(StrEnum):
    SYNCING = "syncing"  # first sync: buffering diffs, snapshot being fetched or bridged
    LIVE = "live"  # book correct and published
    RESYNCING = "resyncing"  # was live, found wrong: stale until synced again


class SnapshotStoreLike(Protocol):
    """The part of the SnapshotStore the Conductor uses (meltica/snapshot)."""

    def get(self, key: str) -> tuple[int, object] | None: ...

    def compare_and_set(
        self,
        key: str,
        expected_version: int | None,
        version: int,
        value: object,
        ttl_s: float | None,
    ) -> bool: ...


class Instrument:
    """Sync state and counters of one tracked instrument."""

    def __init__(self, market: str, symbol: str, book: OrderBook) -> None:
        self.market = market
        self.symbol = symbol
        self.book = book
        self.state = State.SYNCING
        self.buffer: deque[BookDepth] = deque()
        self.fetch: asyncio.Task[None] | None = None
        # the current snapshot request has left the REST queue (was sent); until
        # then only the newest few diffs are buffered (`Conductor._buffer`)
        self.sent = False
        self.superseded = 0  # buffered diffs dropped as older than any snapshot to come
        self.flush: asyncio.TimerHandle | None = None
        self.flush_bucket: int | None = None  # the bucket (E // interval) `flush` is for
        self.flush_clock: int | None = None  # its market's exchange time at the last look
        self.key = (market, symbol)
        self.gaps = 0
        self.resyncs = 0
        self.refetches = 0
        self.buffer_overflows = 0
        self.crossed = 0
        self.errors = 0
        self.snapshots = 0
        self.snapshot_errors = 0
        # consecutive snapshot attempts that did not sync the book (stale, failed or
        # rejected), why the last one did not, and when the next fetch is due
        # (monotonic s); reset when the book goes live
        self.retry_streak = 0
        self.sync_issue = ""
        self.retry_at: float | None = None
        self.backoffs = 0
        self.span: Any = None  # the resync episode being traced (gap -> live)
        # while the book is not live: the newest depth update id seen, to find the
        # holes between buffered events (the gap manifest); None while live
        self.seen_u: int | None = None

    def status(self) -> dict[str, Any]:
        b = self.book
        return {
            "state": self.state.value,
            "update_id": b.update_id,
            "bids": b.n_bids,
            "asks": b.n_asks,
            "buffered": len(self.buffer),
            "fetching": self.fetch is not None,
            "snapshot_sent": self.sent,
            "superseded": self.superseded,
            "gaps": self.gaps,
            "resyncs": self.resyncs,
            "refetches": self.refetches,
            "buffer_overflows": self.buffer_overflows,
            "crossed": self.crossed,
            "errors": self.errors,
            "snapshots": self.snapshots,
            "snapshot_errors": self.snapshot_errors,
            "snapshot_backoffs": self.backoffs,
            "retry_streak": self.retry_streak,
            "sync_issue": self.sync_issue,
            "retry_in_s": (
                None if self.retry_at is None else max(0.0, self.retry_at - time.monotonic())
            ),
            "applied": b.applied,
            "stale_dropped": b.stale,
            "published": b.published,
            "verified_bids": b.verified_bids,
            "verified_asks": b.verified_asks,
        }


class Conductor:
    """Order books and fused outputs for a stream of event batches.

    downstream: called once per batch (the Data Bus's ``publish_batch``).
    fetch_snapshot: ``(market, symbol) -> Awaitable[BookDepth]``, a REST depth
    snapshot (kind book_snapshot, update_id = lastUpdateId).
    store: a SnapshotStore (``compare_and_set``/``get``) or None.
    book_depth: levels per side of fused snapshots.  publish_interval_ms: fused
    outputs per bucket of exchange time (``E // interval``), the state as of
    each bucket's last update (0 = on every applied update; see `_throttle`).
    snapshot_buffer_max: diffs buffered per instrument while syncing
    (overflow restarts the sync).  snapshot_wait_tail: None, or the fetch is
    called with ``on_sent=``, a callable it calls when the request is sent
    (leaves the REST weight-budget queue), and until then only the newest
    ``snapshot_wait_tail`` diffs are kept: the snapshot supersedes the older
    ones (docs/conductor.md "States and rules").  snapshot_ttl_s: TTL of store
    entries.
    snapshot_retry_s / snapshot_retry_max_s: a snapshot that did not sync the
    book (stale, failed, rejected) is fetched again after an exponential
    backoff from the first up to the second, with jitter; the first stale one
    is refetched at once.  analytics: hooks or ``"pkg.mod:Name"`` paths.
    clock: ns wall clock for control-event times.
    mirror: None, or called with the books whose latest snapshot was just
    written to `store` (once per book per batch), e.g. the Redis writer's
    ``offer``, which queues them for a second store off the hot path.
    depth_limit: ``market -> int``, the levels per side a REST snapshot asks for
    (None: unknown); a side with fewer levels than that is verified whole.
    publish_unverified: fused snapshots hold every level up to ``book_depth``,
    not only the verified ones (docs/conductor.md "Verified depth").
    """

    def __init__(
        self,
        downstream: Callable[[list[Any]], None],
        fetch_snapshot: Callable[..., Awaitable[BookDepth]],
        *,
        store: SnapshotStoreLike | None = None,
        book_depth: int = 20,
        publish_interval_ms: float = 0,
        snapshot_buffer_max: int = 10000,
        snapshot_wait_tail: int | None = None,
        snapshot_ttl_s: float | None = 60.0,
        analytics: Sequence[str | object] = (),
        clock: Callable[[], int] = time.time_ns,
        snapshot_retry_s: float = 0.5,
        snapshot_retry_max_s: float = 30.0,
        max_levels: int = 10000,
        mirror: Callable[[list[OrderBook]], None] | None = None,
        depth_limit: Callable[[str], int] | None = None,
        publish_unverified: bool = False,
    ) -> None:
        if not 1 <= book_depth <= 5000:
            raise ValueError("book_depth must be in 1..5000")
        if publish_interval_ms < 0 or snapshot_buffer_max < 1 or snapshot_retry_s < 0:
            raise ValueError("publish_interval_ms, snapshot_buffer_max or snapshot_retry_s")
        if snapshot_wait_tail is not None and not 1 <= snapshot_wait_tail <= snapshot_buffer_max:
            raise ValueError("snapshot_wait_tail must be in 1..snapshot_buffer_max")
        if snapshot_retry_max_s < snapshot_retry_s:
            raise ValueError("snapshot_retry_max_s must be >= snapshot_retry_s")
        self._downstream = downstream
        self._fetch = fetch_snapshot
        self._store = store
        # the in-memory store is written from C, a batch's books in one call
        self._mem = store if isinstance(store, MemorySnapshotStore) else None
        self.book_depth = book_depth
        self._interval_ns = int(publish_interval_ms * 1_000_000)
        self._buffer_max = snapshot_buffer_max
        self._wait_tail = snapshot_wait_tail
        self._ttl = snapshot_ttl_s
        self._clock = clock
        self._retry_s = snapshot_retry_s
        self._retry_max_s = snapshot_retry_max_s
        self._max_levels = max_levels
        self._mirror = mirror
        self._depth_limit = depth_limit
        self.publish_unverified = publish_unverified
        self.hooks: list[Hook] = [load_hook(h) for h in analytics]
        self._hooks_by_kind: dict[str, list[Hook]] = {}
        for h in self.hooks:
            for k in h.kinds:
                self._hooks_by_kind.setdefault(k, []).append(h)
        self._trade_hooks = bool(self._hooks_by_kind.keys() & {"trade", "agg_trade"})
        self.books = BookSet(0 if self._interval_ns else book_depth)
        self._instruments: dict[tuple[str, str], Instrument] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._control_seq = LocalSeq()
        # OpenTelemetry tracer, set by the engine when tracing is on: a span per
        # resync episode, from the gap (or crossed book, or error) to live again
        self.tracer: Any = None
        # the gap manifest (meltica/gaps.py), set by the engine: a continuity gap
        # opens an entry, the book going live again closes it ``resynced``
        self.gaps: GapManifest | None = None
        # batches and store_writes are counted by the Flow (C ints): see `counters`
        self._counters: dict[str, int] = dict.fromkeys(
            (
                "batches",
                "control",
                "store_writes",
                "store_conflicts",
                "store_errors",
                "hook_errors",
                "derived",
                "flushes",
            ),
            0,
        )
        # per hook name, per reason (HOOK_ERROR_REASONS)
        self.hook_errors: dict[str, dict[str, int]] = {
            h.name: dict.fromkeys(HOOK_ERROR_REASONS, 0) for h in self.hooks
        }
        self._flow = Flow(
            self,
            self.books,
            downstream,
            bool(self._hooks_by_kind),
            self._trade_hooks,
            self._mem,
            0 if self._mem is None else self._mem.ttl_ns(snapshot_ttl_s),
            mirror,
            self._interval_ns,
        )
        # the per-batch path is compiled: the Dispatcher calls it with no
        # Python frame in between (see meltica/conductor/_flow.pyx)
        self.on_events: Callable[[list[Any]], None] = self._flow.on_events

    # ------------------------------------------------------------ control

    def track(
        self,
        market: str,
        symbol: str,
        *,
        price_exp: int | None = None,
        qty_exp: int | None = None,
        venue: str = "binance",
    ) -> None:
        """Keep a book for (market, symbol); exponents from tick/step sizes if known.

        Idempotent.  The sync starts with the first diff that arrives.
        """
        key = (market, symbol)
        if key in self._instruments:
            return
        book = OrderBook(
            market,
            symbol,
            futures=market != "spot",
            price_exp=price_exp,
            qty_exp=qty_exp,
            max_levels=self._max_levels,
            venue=venue,
        )
        book.publish_unverified = self.publish_unverified
        inst = Instrument(market, symbol, book)
        book.owner = inst
        self._instruments[key] = inst
        self.books.add(book)

    def untrack(self, market: str, symbol: str) -> bool:
        """Stop keeping the book; False when it was not tracked."""
        inst = self._instruments.pop((market, symbol), None)
        if inst is None:
            return False
        self.books.remove(market, symbol)
        self._cancel(inst)
        inst.book.clear()
        if self.gaps is not None:
            self.gaps.discard(market, symbol, "depth")
        end_span(inst.span, error="untracked before it was live again")
        inst.span = None
        return True

    def resync(self, market: str, symbol: str, reason: str = "requested") -> bool:
        """Throw the book away and sync it again (control plane, audits); False if
        untracked."""
        inst = self._instruments.get((market, symbol))
        if inst is None:
            return False
        out: list[Any] = []
        self._restart(inst, out, reason, inst.book.update_id, self._clock())
        self._start_fetch(inst)
        self._emit(out)
        return True

    def instrument(self, market: str, symbol: str) -> Instrument | None:
        return self._instruments.get((market, symbol))

    def book(self, market: str, symbol: str) -> OrderBook | None:
        inst = self._instruments.get((market, symbol))
        return inst.book if inst else None

    @property
    def counters(self) -> dict[str, int]:
        """The Conductor's counters (one dict, updated in place).  ``batches`` and
        ``store_writes`` are counted in C by the per-batch path and copied in here on
        every read."""
        c = self._counters
        c["batches"] = self._flow.batches
        c["store_writes"] = self._flow.store_writes
        return c

    def status(self) -> dict[str, Any]:
        return {
            "instruments": {f"{m}:{s}": i.status() for (m, s), i in self._instruments.items()},
            "counters": dict(self.counters),
            "hook_errors": dict(self.hook_errors),
        }

    async def stop(self) -> None:
        """Cancel snapshot fetches and pending flushes (idempotent)."""
        for inst in self._instruments.values():
            self._cancel(inst)
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------ state machine

    def _on_notice(
        self, ev: BookDepth, book: OrderBook | None, status: int, out: list[Any]
    ) -> None:
        assert book is not None  # apply_batch stopped on a tracked book
        inst: Instrument = book.owner
        if status == NOT_MANAGED:
            self._buffer(inst, ev)
        elif status == SYNCED:
            self._go_live(inst, out)
        elif status == GAP:
            inst.gaps += 1
            if self.gaps is not None:
                self._note_hole(inst, ev, book.update_id or 0)
                inst.seen_u = ev.update_id
            self._control(
                out,
                "gap",
                inst,
                ev.update_id,
                ev.ts_recv,
                "continuity",
                from_seq=book.update_id,
                to_seq=ev.update_id,
            )
            self._restart(inst, out, "gap", ev.update_id, ev.ts_recv)
            self._buffer(inst, ev)
        elif status == UNBRIDGED:
            # the snapshot is older than the stream: keep this event, fetch again
            inst.refetches += 1
            inst.retry_streak += 1
            inst.sync_issue = "stale_snapshot"
            book.clear()
            self._buffer(inst, ev)
        elif status == CROSSED:
            inst.crossed += 1
            self._restart(inst, out, "crossed", ev.update_id, ev.ts_recv)
            self._buffer(inst, ev)
        else:
            inst.errors += 1
            log.warning(
                "%s %s: depth event u=%s rejected (%s); resyncing",
                inst.market,
                inst.symbol,
                ev.update_id,
                _ERROR_REASON.get(status, status),
                extra=fields(market=inst.market, symbol=inst.symbol),
            )
            self._restart(inst, out, _ERROR_REASON.get(status, "error"), ev.update_id, ev.ts_recv)
            self._start_fetch(inst)

    def _buffer(self, inst: Instrument, ev: BookDepth) -> None:
        if self.gaps is not None:
            seen = inst.seen_u
            if seen is None or ev.update_id > seen:
                if seen is not None:
                    self._note_hole(inst, ev, seen)
                inst.seen_u = ev.update_id
        buf = inst.buffer
        tail = self._wait_tail
        if tail is not None and not inst.sent:
            # no snapshot request is out yet: the one to come is taken after every
            # diff received so far; keep the newest `tail` as a margin for a
            # snapshot slightly behind the stream (an older one is refetched)
            while len(buf) >= tail:
                buf.popleft()
                inst.superseded += 1
        elif len(buf) >= self._buffer_max:
            # a snapshot slower than the buffer: start over from this event
            inst.buffer_overflows += 1
            buf.clear()
            if inst.fetch is not None:
                inst.fetch.cancel()
                inst.fetch = None
        buf.append(ev)
        if inst.fetch is None:
            self._start_fetch(inst)

    def _note_hole(self, inst: Instrument, ev: BookDepth, last: int) -> None:
        """The depth update ids missing between ``last`` and ``ev``, for the gap
        manifest: futures name the update before ``ev`` in ``pu``, spot starts it at ``U``."""
        assert self.gaps is not None
        pu = ev.prev_update_id
        if pu is not None:
            if pu <= last:
                return
            lo, hi = last + 1, pu
        else:
            first = ev.first_update_id
            first = ev.update_id if first is None else first
            if first <= last + 1:
                return
            lo, hi = last + 1, first - 1
        self.gaps.open(inst.market, inst.symbol, "depth", "continuity", first_id=lo, last_id=hi)

    def _restart(
        self, inst: Instrument, out: list[Any], reason: str, seq: int | None, ts: int
    ) -> None:
        """Discard the book; a live one turns RESYNCING and is announced stale."""
        if inst.state is State.LIVE and inst.seen_u is None and inst.book.update_id:
            # the stream goes on from the last update the live book applied
            inst.seen_u = inst.book.update_id
        if inst.state is State.LIVE:
            inst.state = State.RESYNCING
            inst.resyncs += 1
            log.warning(
                "%s %s: book resyncing (%s at u=%s)",
                inst.market,
                inst.symbol,
                reason,
                seq,
                extra=fields(market=inst.market, symbol=inst.symbol),
            )
            self._control(out, "resync_started", inst, seq, ts, reason)
            self._control(out, "stale", inst, seq, ts, reason, stale=True)
            if self.tracer is not None:
                end_span(inst.span, error="superseded")
                inst.span = start_span(
                    self.tracer,
                    "book.resync",
                    start_time=ts,
                    attributes={
                        "meltica.market": inst.market,
                        "meltica.symbol": inst.symbol,
                        "meltica.reason": reason,
                        "meltica.seq": -1 if seq is None else seq,
                    },
                )
        inst.book.clear()
        inst.buffer.clear()
        inst.sent = False
        if inst.flush is not None:
            inst.flush.cancel()
            inst.flush = None
        if inst.fetch is not None:
            inst.fetch.cancel()
            inst.fetch = None

    def _go_live(self, inst: Instrument, out: list[Any]) -> None:
        book = inst.book
        was = inst.state
        inst.state = State.LIVE
        inst.retry_streak = 0
        inst.sync_issue = ""
        book.live = True
        ts = self._clock()
        reason = "resynced" if was is State.RESYNCING else "synced"
        # a state change (first sync or resync done): INFO, like connection changes
        log.info(
            "%s %s: book %s at u=%s",
            inst.market,
            inst.symbol,
            reason,
            book.update_id,
            extra=fields(market=inst.market, symbol=inst.symbol),
        )
        self._control(out, "resync_done", inst, book.update_id, ts, reason)
        if inst.span is not None:
            end_span(inst.span, update_id=book.update_id, refetches=inst.refetches)
            inst.span = None
        if was is State.RESYNCING:
            self._control(out, "stale", inst, book.update_id, ts, reason, stale=False)
        inst.seen_u = None
        if self.gaps is not None:
            # the holes found while the book was not live: its snapshot covered them
            self.gaps.resolve(inst.market, inst.symbol, "depth", "resynced")
        self._mark(book, out)

    def _mark(self, book: OrderBook, out: list[Any]) -> None:
        """A live book changed outside apply_batch: publish now or when due."""
        if not self._interval_ns:
            self._publish(book, out)
        else:
            book.dirty = True
            self._throttle([book], out)

    def _publish(self, book: OrderBook, out: list[Any]) -> None:
        """Fused outputs of `book` into `out`, and its snapshot into the store."""
        book.publish(out, self.book_depth)
        self._store_book(book)
        if self._mirror is not None:
            self._mirror([book])

    def _start_fetch(self, inst: Instrument) -> None:
        loop = asyncio.get_running_loop()
        if inst.span is not None:
            # the snapshot requests of a resync are children of its span
            ctx = trace.set_span_in_context(inst.span)
            task = loop.create_task(self._sync(inst), context=_copy_with(ctx))
        else:
            task = loop.create_task(self._sync(inst))
        inst.fetch = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _cancel(self, inst: Instrument) -> None:
        inst.sent = False
        if inst.fetch is not None:
            inst.fetch.cancel()
            inst.fetch = None
        if inst.flush is not None:
            inst.flush.cancel()
            inst.flush = None

    async def _sync(self, inst: Instrument) -> None:
        """Fetch snapshots until one installs (docs/conductor.md, "States and rules").

        Every attempt that does not sync the book lengthens the wait before
        the next (`_backoff`): a snapshot that stays stale or a REST endpoint
        that keeps failing costs a few requests a minute, not two a second.
        """
        me = asyncio.current_task()
        try:
            while True:
                inst.sent = False  # each attempt: diffs before its send are superseded
                if inst.retry_streak:
                    delay = self._backoff(inst)
                    inst.backoffs += delay > 0
                    inst.retry_at = time.monotonic() + delay
                    try:
                        await asyncio.sleep(delay)
                    finally:
                        inst.retry_at = None
                try:
                    if self._wait_tail is None:
                        snap = await self._fetch(inst.market, inst.symbol)
                    else:
                        snap = await self._fetch(
                            inst.market, inst.symbol, on_sent=self._on_sent(inst, me)
                        )
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    inst.snapshot_errors += 1
                    inst.retry_streak += 1
                    inst.sync_issue = "snapshot_failed"
                    if inst.snapshot_errors == 1 or inst.snapshot_errors % 100 == 0:
                        log.warning(
                            "%s %s: depth snapshot failed (%d so far): %s",
                            inst.market,
                            inst.symbol,
                            inst.snapshot_errors,
                            exc,
                            extra=fields(market=inst.market, symbol=inst.symbol),
                        )
                    continue
                if inst.fetch is not me:
                    return
                out: list[Any] = []
                refetches = inst.refetches
                done = self._install(inst, snap, out)
                self._emit(out)
                if done:
                    return
                inst.retry_streak += 1
                stale = inst.refetches != refetches
                inst.sync_issue = "stale_snapshot" if stale else "snapshot_rejected"
                if stale and (inst.retry_streak in (8, 64) or inst.retry_streak % 512 == 0):
                    log.warning(
                        "%s %s: depth snapshot still older than the stream after %d "
                        "attempts; backing off up to %.1f s",
                        inst.market,
                        inst.symbol,
                        inst.retry_streak,
                        self._retry_max_s,
                        extra=fields(market=inst.market, symbol=inst.symbol),
                    )
        finally:
            if inst.fetch is me:
                inst.fetch = None
                inst.sent = False

    @staticmethod
    def _on_sent(inst: Instrument, task: asyncio.Task[None] | None) -> Callable[[], None]:
        """The ``on_sent`` callback of one fetch by `task` (a later fetch owns the flag)."""

        def sent() -> None:
            if inst.fetch is task:
                inst.sent = True

        return sent

    def _backoff(self, inst: Instrument) -> float:
        """Seconds to wait before the next snapshot fetch of `inst`.

        None after a sync that did not fail.  The first stale snapshot is
        refetched at once (the usual race: it was taken just before the first
        buffered diff); after that, and after any failed or rejected fetch, the
        wait doubles from ``snapshot_retry_s`` up to ``snapshot_retry_max_s``,
        times a jitter in [0.75, 1) so that many books out of sync together do
        not refetch in step.  Each fetch is an urgent request through the REST
        client's weight-aware scheduler, which keeps it inside the budget.
        """
        n = inst.retry_streak
        if n == 0 or (n == 1 and inst.sync_issue == "stale_snapshot"):
            return 0.0
        if inst.sync_issue == "stale_snapshot":
            n -= 1
        base = min(self._retry_max_s, self._retry_s * 2.0 ** min(n - 1, 62))
        return base * random.uniform(0.75, 1.0)

    def _install(self, inst: Instrument, snap: BookDepth, out: list[Any]) -> bool:
        """Install a snapshot and replay the buffer; False to fetch again."""
        book = inst.book
        if (
            not isinstance(snap, BookDepth)
            or snap.kind != "book_snapshot"
            or snap.symbol != inst.symbol
        ):
            inst.snapshot_errors += 1
            return False
        inst.snapshots += 1
        st = book.load_snapshot(snap, self._depth_limit(inst.market) if self._depth_limit else 0)
        if st != APPLIED:
            if st == CROSSED:
                inst.crossed += 1
            else:
                inst.errors += 1
            return False
        buf = inst.buffer
        if buf:
            first = buf[0].first_update_id
            first = buf[0].update_id if first is None else first
            # spot bridges with U == L + 1, futures needs U <= L
            if snap.update_id < first - (0 if book.futures else 1):
                inst.refetches += 1
                book.clear()
                return False
        while buf:
            ev = buf[0]
            st = book.apply(ev)
            if st in (APPLIED, SYNCED, STALE):
                buf.popleft()
                continue
            book.clear()
            if st == GAP:
                # a hole inside the buffered stream: what came before is useless
                inst.gaps += 1
                self._control(out, "gap", inst, ev.update_id, ev.ts_recv, "continuity")
            elif st == UNBRIDGED:
                inst.refetches += 1
            else:
                buf.popleft()
                if st == CROSSED:
                    inst.crossed += 1
                else:
                    inst.errors += 1
            return False
        if book.bridged:
            self._go_live(inst, out)
        # else: the book waits in C for the first event that bridges it
        return True

    # ------------------------------------------------------------ outputs

    def _throttle(self, books: Iterable[OrderBook], out: list[Any]) -> None:
        """Books changed while publishing per bucket (``publish_interval_ms`` > 0).

        The bucket boundaries are ``Flow``'s: a live book's state as of the last
        update of a bucket of exchange time (``E // interval``) is published
        when an update of a later bucket arrives.  Here a changed book gets the
        fallback for a book that goes quiet: a loop timer (`_flush`), due one
        interval after its bucket ends, that end placed on the loop's clock by
        the time of its first update in the bucket (E to the end, plus one
        interval).
        """
        interval = self._interval_ns
        for book in books:
            inst: Instrument = book.owner
            if not book.live:
                book.dirty = False
                continue
            if not book.dirty:
                continue  # published at a boundary since it changed
            ts = book_ts_event(book)
            bucket = None if ts is None else ts // interval
            if inst.flush is not None:
                if inst.flush_bucket == bucket:
                    continue
                inst.flush.cancel()
            delay = interval if ts is None else (ts // interval + 2) * interval - ts
            inst.flush_bucket = bucket
            inst.flush_clock = self._flow.clocks.get(inst.market)
            loop = asyncio.get_running_loop()
            inst.flush = loop.call_later(delay / 1e9, self._flush, inst)

    def _flush(self, inst: Instrument) -> None:
        """Publish a quiet throttled book once its bucket is over (`_throttle`).

        Over means: the book's market has read an exchange time one interval
        past the bucket's end (its last updates, sent before, are read), or it
        read no new exchange time for an interval (the market is quiet).  Until
        then the timer waits another interval.  A timer that fires more than a
        quarter interval late was held up by a stalled loop, which runs due
        timers before it reads its sockets: it waits a quarter interval first.
        """
        handle, inst.flush = inst.flush, None
        book = inst.book
        if not (book.live and book.dirty):
            return
        loop = asyncio.get_running_loop()
        interval = self._interval_ns
        if handle is not None and loop.time() - handle.when() > interval / 4e9:
            inst.flush = loop.call_later(interval / 4e9, self._flush, inst)
            return
        bucket = inst.flush_bucket
        clock = self._flow.clocks.get(inst.market)
        if (
            bucket is not None
            and clock is not None
            and clock < (bucket + 2) * interval
            and clock != inst.flush_clock
        ):
            inst.flush_clock = clock
            inst.flush = loop.call_later(interval / 1e9, self._flush, inst)
            return
        out: list[Any] = []
        self._publish(book, out)
        self.counters["flushes"] += 1
        self._emit(out)

    def _emit(self, out: list[Any]) -> None:
        """A batch made here (snapshot installs, flushes, control)."""
        if not out:
            return
        if self._hooks_by_kind:
            self._post(out)
        self._downstream(out)

    def _control(
        self,
        out: list[Any],
        kind: str,
        inst: Instrument,
        seq: int | None,
        ts: int,
        reason: str,
        **kw: Any,
    ) -> None:
        # seq is a local sequence (keys must never repeat: a resync can end at the
        # very update id it started at); the exchange's update id goes in to_seq
        if seq is not None:
            kw.setdefault("to_seq", seq)
        out.append(
            Control(
                kind,
                venue=inst.book.venue,
                market=inst.market,
                symbol=inst.symbol,
                seq=self._control_seq.next(),
                ts_recv=ts,
                reason=reason,
                **kw,
            )
        )
        self.counters["control"] += 1

    def _post(self, out: list[Any]) -> None:
        """Analytics for the fused events in ``out``."""
        derived: list[Any] = []
        for ev in out:
            if type(ev) is not BookDepth:
                continue
            for hook in self._hooks_by_kind.get(ev.source, ()):
                self._call(hook, ev, derived)
        out.extend(derived)

    def _trades(self, batch: list[Any], out: list[Any]) -> None:
        derived: list[Any] = []
        for ev in batch:
            if type(ev) is Trade:
                for hook in self._hooks_by_kind.get(ev.kind, ()):
                    self._call(hook, ev, derived)
        out.extend(derived)

    def _call(self, hook: Hook, ev: Event, derived: list[Any]) -> None:
        """Run one hook on one event; only a whole, valid output joins `derived`.

        A hook is user code: whatever it does (raise, return junk, yield junk
        halfway) costs only its own output of this call, never an exchange,
        fused or control event of the batch (the bus accepts only events).
        """
        try:
            res = hook.on_event(ev)
            if res is None:
                return
            try:
                it = iter(res)
            except TypeError:
                self._hook_error(hook, "bad_output", _junk(res))
                return
            items = list(it)
        except Exception as exc:
            self._hook_error(hook, "raised", exc)
            return
        for item in items:
            if type(item) is not Derived:
                self._hook_error(hook, "bad_output", _junk(item, "an item"))
                return
        derived.extend(items)
        self.counters["derived"] += len(items)

    def _hook_error(self, hook: Hook, reason: str, exc: Exception) -> None:
        """Count a hook's failure; log the first one of each (hook, reason)."""
        per_hook = self.hook_errors.setdefault(hook.name, dict.fromkeys(HOOK_ERROR_REASONS, 0))
        n = per_hook[reason] = per_hook.get(reason, 0) + 1
        self.counters["hook_errors"] += 1
        if n == 1:
            log.error(
                "analytics hook %s: %s (%s); its output is dropped, events flow on; "
                "further %s errors of this hook are only counted",
                hook.name,
                reason,
                exc,
                reason,
                exc_info=exc if reason == "raised" else None,
            )

    def _store_failed(self, failed: list[tuple[OrderBook, int]]) -> None:
        """The books whose C store write (``Flow``) was refused."""
        for book, status in failed:
            if status == MISMATCH:
                self._store_book(book, first_failed=True)
            else:  # FULL: the table refused a new key (counted there too)
                assert self._mem is not None
                self._store_error(self._mem.full_error(book.store_key))

    def _store_book(self, book: OrderBook, first_failed: bool = False) -> None:
        """Write the latest fused snapshot of `book` (compare-and-set on its
        update id); `first_failed`: a compare-and-set from the book's
        ``store_version`` was just refused, go straight to the retry."""
        ev = book.last_fused
        inst: Instrument = book.owner
        if self._store is None or ev is None or self._instruments.get(inst.key) is not inst:
            return
        key = book.store_key
        version = ev.update_id
        try:
            ok = not first_failed and self._store.compare_and_set(
                key, book.store_version, version, ev, self._ttl
            )
            if not ok:
                # someone else wrote (another shard, an earlier run): retry once from
                # the current version unless it is already newer than ours
                cur = self._store.get(key)
                cur_v = None if cur is None else cur[0]
                if cur_v is None or cur_v < version:
                    ok = self._store.compare_and_set(key, cur_v, version, ev, self._ttl)
                if not ok:
                    self.counters["store_conflicts"] += 1
                    book.store_version = cur_v
                    return
            book.store_version = version
            self._flow.store_writes += 1
        except Exception as exc:
            self._store_error(exc)

    def _store_error(self, exc: Exception) -> None:
        self.counters["store_errors"] += 1
        if self.counters["store_errors"] == 1:
            log.error("snapshot store write failed: %s", exc, exc_info=exc)


def _junk(obj: object, what: str = "the result") -> AnalyticsError:
    return AnalyticsError(
        f"{what} is {type(obj).__name__}, not None or an iterable of Derived: {obj!r:.200}"
    )


def _copy_with(ctx: otel_context.Context) -> contextvars.Context:
    """A copy of the current contextvars context with ``ctx`` attached (a
    task created with it runs under that OpenTelemetry context)."""

    def attach() -> contextvars.Context:
        otel_context.attach(ctx)
        return contextvars.copy_context()

    return contextvars.copy_context().run(attach)

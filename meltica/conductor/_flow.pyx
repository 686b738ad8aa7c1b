# cython: language_level=3
# distutils: language = c++
"""The Conductor's per-batch sequence, compiled (the Conductor is conductor.py).

``Flow.on_events`` is what the Dispatcher hands every batch to.  It runs the
steps of a batch in order: apply the depth updates to the books (C), let the
Conductor handle whatever stopped the books (a book not live yet, a gap, a
crossed book), the throttled books, the SnapshotStore writes, the analytics
hooks, then append the fused and control events and publish the batch.  With
the in-memory SnapshotStore, a batch of a live market needs no Python
function at all: each Python frame costs about a microsecond on a cold cache,
and at 10k frames/s every batch finds the cache cold.  Everything else calls
back into the Conductor (Python): ``_on_notice``, ``_throttle``,
``_store_book`` (every write to a store other than the in-memory one),
``_store_failed``, ``_post`` and ``_trades``.

With ``publish_interval_ms`` > 0 (``bucket_ns``), fused books are published
per bucket of exchange time, ``floor(E / interval)`` of each depth diff: the
batch is applied up to the first diff that starts a later bucket of its live
book, the Conductor publishes the book there (``_publish``: the state as of
its bucket's last update) if it changed since its last output, and the batch
goes on.  The cuts come from exchange ids and times only, so every gateway
and every batch split publishes the same update ids (docs/conductor.md).
``clocks`` keeps, per market, the latest exchange time read (any event): the
Conductor's timer for a quiet book asks it whether its bucket is over.
"""

cimport cython
from libc.stdint cimport int64_t

from meltica._core.book cimport BOOK_SYNCED, BookSet, OrderBook
from meltica._core.events cimport BOOK_DELTA, MT_NA, BookDepth, Event
from meltica._core.snapshot cimport SnapshotTable


@cython.final
cdef class Flow:
    """The per-batch path of one Conductor (see the module docstring).

    conductor: the Conductor (its handlers above); books: its BookSet;
    downstream: where every batch goes (the Data Bus's publish); batches,
    store_writes: the Conductor's counters of those names, kept here as C
    ints (a dict update per batch cost about as much as the bus publish;
    the Conductor copies them into its counters when they are read);
    hooks / trade_hooks: analytics hooks on outputs / on trades exist;
    mem, mem_ttl_ns: the in-memory SnapshotStore and its entry TTL, written
    here through its C table (held) and its clock (read per batch); mem
    None: every store write goes through ``conductor._store_book``.
    mirror: None, or called once per batch with the books fused in it (the
    Redis writer's ``offer``: it queues their latest states, no I/O).
    bucket_ns: the publish interval in ns (0: the books publish on every
    update, from C); else the bucket boundaries above, and ``clocks``.
    """
    cdef object conductor
    cdef BookSet books
    cdef public object downstream
    cdef public int64_t batches       # batches handed downstream
    cdef public int64_t store_writes  # successful SnapshotStore writes (also the Conductor's)
    cdef bint hooks, trade_hooks
    cdef object mem
    cdef SnapshotTable mem_table
    cdef int64_t mem_ttl_ns
    cdef object mirror
    cdef int64_t bucket_ns
    cdef OrderBook cut_book  # the book of the diff _next_cut stopped at
    cdef readonly dict clocks  # market -> the latest exchange time (ns) read, bucketed mode

    def __init__(self, conductor, BookSet books not None, downstream, bint hooks,
                 bint trade_hooks, mem=None, int64_t mem_ttl_ns=0, mirror=None,
                 int64_t bucket_ns=0):
        self.conductor = conductor
        self.books = books
        self.downstream = downstream
        self.hooks = hooks
        self.trade_hooks = trade_hooks
        self.mem = mem
        # the store's own table, never replaced (``table`` is a Python property)
        self.mem_table = None if mem is None else mem.table
        self.mem_ttl_ns = mem_ttl_ns
        self.mirror = mirror
        self.bucket_ns = bucket_ns
        self.clocks = {}

    def on_events(self, list batch not None):
        """Apply a batch, append fused/control/derived events, hand it downstream."""
        cdef BookSet books = self.books
        cdef object conductor = self.conductor
        cdef list out = []
        cdef Py_ssize_t n = len(batch)
        cdef Py_ssize_t i
        if self.bucket_ns:
            self._apply_bucketed(batch, out)
        else:
            i = books.apply_batch(batch, 0, out)
            while i < n:
                conductor._on_notice(batch[i], books.last_book, books.last_status, out)
                i = books.apply_batch(batch, i + 1, out)
        if books.dirty:
            conductor._throttle(books.take_dirty(), out)
        if books.fused:
            # one store write per book per batch: its latest snapshot
            self._store_fused()
        if out and self.hooks:
            conductor._post(out)
        if self.trade_hooks:
            conductor._trades(batch, out)
        self.batches += 1
        if out:
            batch.extend(out)
        self.downstream(batch)

    cdef int _apply_bucketed(self, list batch, list out) except -1:
        """Apply ``batch`` as ``on_events`` does, stopping before every diff that
        starts a later bucket of its live book to publish the book's state there.

        A cut is found against the books as they are before the part up to it is
        applied, so some cuts find nothing to publish once that part is applied
        (checked again at the cut); a book that goes live inside a part has the
        rest of the batch scanned again.  Parts are slices only when a cut falls
        inside the batch: at most a few per book and interval."""
        cdef BookSet books = self.books
        cdef object conductor = self.conductor
        cdef Py_ssize_t n = len(batch), pos = 0, scan = 0, cut, i, m
        cdef list part
        cdef OrderBook book
        cdef int st
        self._clock(batch, n)
        while pos < n:
            cut = self._next_cut(batch, scan, n)
            part = batch if pos == 0 and cut == n else batch[pos:cut]
            m = len(part)
            i = books.apply_batch(part, 0, out)
            while i < m:
                st = books.last_status
                conductor._on_notice(part[i], books.last_book, st, out)
                if st == BOOK_SYNCED:  # the book went live
                    break
                i = books.apply_batch(part, i + 1, out)
            if i < m:  # a book went live at part[i]: find the cuts after it again
                pos = scan = pos + i + 1
                continue
            if cut == n:
                break
            book = self.cut_book
            self.cut_book = None
            if book.live and book.dirty and self._later(<BookDepth>batch[cut], book):
                conductor._publish(book, out)
            pos = cut
            scan = cut + 1
        return 0

    cdef int _clock(self, list batch, Py_ssize_t n) except -1:
        """Move ``clocks`` to the latest exchange time in ``batch`` (a batch is
        one read of one connection: the market of the event that has it)."""
        cdef Event ev, latest = None
        cdef int64_t t = MT_NA
        cdef Py_ssize_t i
        for i in range(n):
            obj = batch[i]
            if isinstance(obj, Event):
                ev = <Event>obj
                if ev.ts_event_ > t:
                    t = ev.ts_event_
                    latest = ev
        if latest is not None:
            old = self.clocks.get(latest.market)
            if old is None or t > <int64_t>old:
                self.clocks[latest.market] = t
        return 0

    cdef Py_ssize_t _next_cut(self, list batch, Py_ssize_t start, Py_ssize_t n) except -1:
        """Index of the first diff in ``batch[start:n]`` that would apply to a
        live book and starts a later bucket than the book's last update, or n."""
        cdef BookSet books = self.books
        cdef BookDepth ev
        cdef OrderBook book
        cdef Py_ssize_t i
        for i in range(start, n):
            obj = batch[i]
            if type(obj) is not BookDepth:
                continue
            ev = <BookDepth>obj
            if ev.kind_id != BOOK_DELTA:
                continue
            book = books._lookup(ev.market, ev.symbol)
            if book is not None and book.live and self._later(ev, book):
                self.cut_book = book
                return i
        return n

    @cython.cdivision(True)  # times are ns since the epoch: never negative
    cdef inline bint _later(self, BookDepth ev, OrderBook book) noexcept:
        """``ev`` is newer than ``book`` and in a later bucket of exchange time
        (never when either time is missing)."""
        cdef int64_t b = self.bucket_ns
        return (ev.update_id_ > book.update_id_ and ev.ts_event_ != MT_NA
                and book.ts_event_ != MT_NA and ev.ts_event_ // b > book.ts_event_ // b)

    cdef int _store_fused(self) except -1:
        """Write the latest fused snapshot of every book fused since the last
        call, once each: the store keeps the latest state, and nobody can read
        it between two updates of a batch."""
        cdef list failed
        cdef object mem = self.mem
        # the books fused in this batch (store_fused and take_fused swap the list)
        cdef list fused = self.books.fused
        if mem is None:
            for book in self.books.take_fused():
                self.conductor._store_book(book)
        else:
            failed = []
            self.store_writes += self.books.store_into(
                self.mem_table, self.mem_ttl_ns, mem.clock(), failed)
            if failed:
                self.conductor._store_failed(failed)
        if self.mirror is not None:
            self.mirror(fused)
        return 0


def book_ts_event(OrderBook book not None):
    """The exchange time E (ns) of ``book``'s last applied update, or None."""
    return None if book.ts_event_ == MT_NA else book.ts_event_

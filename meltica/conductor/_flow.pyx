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
"""

cimport cython
from libc.stdint cimport int64_t

from meltica._core.book cimport BookSet


@cython.final
cdef class Flow:
    """The per-batch path of one Conductor (see the module docstring).

    conductor: the Conductor (its handlers above); books: its BookSet;
    downstream: where every batch goes (the Data Bus's publish); counters:
    the Conductor's counters dict (``batches`` and ``store_writes`` are
    counted here); hooks / trade_hooks: analytics hooks on outputs / on
    trades exist; mem, mem_ttl_ns: the in-memory SnapshotStore and its entry
    TTL, written here through its C table (held) and its clock (read per
    batch); mem None: every store write goes through ``conductor._store_book``.
    mirror: None, or called once per batch with the books fused in it (the
    Redis writer's ``offer``: it queues their latest states, no I/O).
    """
    cdef object conductor
    cdef BookSet books
    cdef public object downstream
    cdef dict counters
    cdef bint hooks, trade_hooks
    cdef object mem
    cdef object mem_table
    cdef int64_t mem_ttl_ns
    cdef object mirror

    def __init__(self, conductor, BookSet books not None, downstream, dict counters not None,
                 bint hooks, bint trade_hooks, mem=None, int64_t mem_ttl_ns=0, mirror=None):
        self.conductor = conductor
        self.books = books
        self.downstream = downstream
        self.counters = counters
        self.hooks = hooks
        self.trade_hooks = trade_hooks
        self.mem = mem
        # the store's own table, never replaced (``table`` is a Python property)
        self.mem_table = None if mem is None else mem.table
        self.mem_ttl_ns = mem_ttl_ns
        self.mirror = mirror

    def on_events(self, list batch not None):
        """Apply a batch, append fused/control/derived events, hand it downstream."""
        cdef BookSet books = self.books
        cdef object conductor = self.conductor
        cdef list out = []
        cdef Py_ssize_t n = len(batch)
        cdef Py_ssize_t i = books.apply_batch(batch, 0, out)
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
        self.counters["batches"] += 1
        if out:
            batch.extend(out)
        self.downstream(batch)

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
            self.counters["store_writes"] += self.books.store_fused(
                self.mem_table, self.mem_ttl_ns, mem.clock(), failed)
            if failed:
                self.conductor._store_failed(failed)
        if self.mirror is not None:
            self.mirror(fused)
        return 0

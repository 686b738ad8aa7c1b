# cython: language_level=3
"""The Data Bus ring (see ring.pxd for the invariants).

`Ring.publish` stores one pointer per event; consumers read through their own
`Cursor`, which filters by kind, market and symbol on the reading side, so a
publish costs the same whatever the number of consumers.  Per batch (not per
event) the ring looks at its cursors once: to stop short of a block cursor's
unread slots and to account, exactly, what a lagging lossy cursor loses
before its slots are reused.
"""

cimport cython
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.ref cimport Py_INCREF, Py_XDECREF, PyObject
from cpython.set cimport PySet_Contains
from libc.stdint cimport INT64_MAX, int64_t, uint64_t
from libc.stdlib cimport calloc, free

from meltica._core.events cimport (
    BOOK_SNAPSHOT, DERIVED, KLINE, TICKER, BookDepth, Derived, Event, Kline, Ticker,
)

POLICIES = ("block", "drop_oldest", "conflate")
# Room for kind ids 0..63 in a Cursor's kind_mask.
ALL_KINDS = 0xFFFFFFFFFFFFFFFF


cdef inline object conflate_key(Event ev):
    # One key per stream of state: kline interval, ticker window, snapshot
    # source and derived name are separate streams of the same (market,
    # symbol, kind).
    cdef object q = None
    if ev.kind_id == KLINE:
        q = (<Kline>ev).interval
    elif ev.kind_id == TICKER:
        q = (<Ticker>ev).window
    elif ev.kind_id == BOOK_SNAPSHOT:
        q = (<BookDepth>ev).source_
    elif ev.kind_id == DERIVED:
        q = (<Derived>ev).name
    return (ev.market, ev.symbol, ev.kind_id, q)


@cython.final
cdef class Cursor:
    """One consumer's read position, filter, policy and counters.

    ``kind_mask`` has bit k set for every wanted kind id; ``markets`` and
    ``symbols`` are frozensets or None (everything).  An event whose market
    (symbol) is empty, such as a connection-wide control event, passes the
    market (symbol) filter.  ``limit`` is how far (in ring positions) this
    cursor may lag: block cursors stop the writer there, lossy cursors are
    moved on.  ``high_water`` / ``low_water`` are read by the Python layer
    for pause / resume.
    """

    def __init__(self, int policy, uint64_t kind_mask=ALL_KINDS, markets=None, symbols=None,
                 int64_t limit=0, int64_t high_water=0, int64_t low_water=0):
        if policy not in (POLICY_BLOCK, POLICY_DROP_OLDEST, POLICY_CONFLATE):
            raise ValueError(f"unknown policy {policy}")
        self.policy = policy
        self.kind_mask = kind_mask
        self.markets = None if markets is None else frozenset(markets)
        self.symbols = None if symbols is None else frozenset(symbols)
        self.limit = limit
        self.high_water = high_water
        self.low_water = low_water
        self.latest = {}

    cdef bint matches(self, object ev):
        cdef Event e = <Event>ev
        if not (self.kind_mask >> e.kind_id) & 1:
            return False
        if self.markets is not None and e.market and not PySet_Contains(self.markets, e.market):
            return False
        if self.symbols is not None and e.symbol and not PySet_Contains(self.symbols, e.symbol):
            return False
        return True

    cdef void lose(self, object ev):
        # `ev` matched and its slot is about to be reused.
        cdef object key
        if self.policy == POLICY_CONFLATE:
            key = conflate_key(<Event>ev)
            if self.latest.pop(key, None) is not None:
                self.conflated += 1
                self.seen += 1
            self.latest[key] = ev
            return
        self.seen += 1
        self.dropped += 1
        if self.gap_from == 0:
            self.gap_from = self.seen
        self.gap_to = self.seen

    @property
    def pending(self):
        """Events held by conflation, waiting for delivery."""
        return len(self.latest)

    def take_gap(self):
        """The pending gap as (first, last) ordinals, or None; clears it."""
        if self.gap_from == 0:
            return None
        gap = (self.gap_from, self.gap_to)
        self.gap_from = self.gap_to = 0
        self.gaps += 1
        return gap


@cython.final
cdef class Ring:
    """A power-of-two ring of event references with per-consumer cursors."""

    def __cinit__(self, int64_t capacity):
        if capacity < 2 or capacity & (capacity - 1):
            raise ValueError(f"ring capacity must be a power of two >= 2, got {capacity}")
        self.slots = <PyObject **>calloc(<size_t>capacity, sizeof(PyObject *))
        if self.slots == NULL:
            raise MemoryError()
        self.stamps = <int64_t *>calloc(<size_t>capacity, sizeof(int64_t))
        if self.stamps == NULL:
            raise MemoryError()
        self.capacity = capacity
        self.mask = capacity - 1
        self.cursors = []

    def __dealloc__(self):
        cdef int64_t i
        if self.slots != NULL:
            for i in range(self.capacity):
                Py_XDECREF(self.slots[i])
            free(self.slots)
            self.slots = NULL
        free(self.stamps)
        self.stamps = NULL

    cdef inline object at(self, int64_t p):
        return <object>self.slots[p & self.mask]

    cdef void release(self) noexcept:
        # Drop the references every attached cursor has moved past (all of
        # them when nobody is attached: a new cursor starts at the head).
        cdef Cursor c
        cdef int64_t p, lo = self.head
        cdef PyObject **slot
        cdef PyObject *old
        for c in self.cursors:
            if c.pos < lo:
                lo = c.pos
        for p in range(self.tail, lo):
            slot = &self.slots[p & self.mask]
            old = slot[0]
            slot[0] = NULL
            Py_XDECREF(old)
        if lo > self.tail:
            self.tail = lo

    def attach(self, Cursor c):
        """Start `c` at the head: it sees events published from now on."""
        if c.attached:
            raise ValueError("cursor already attached")
        if c.limit <= 0 or c.limit > self.capacity:
            c.limit = self.capacity
        c.pos = self.head
        c.attached = True
        self.cursors.append(c)

    def detach(self, Cursor c):
        """Stop `c`; the ring no longer waits for it nor accounts for it."""
        if c.attached:
            self.cursors.remove(c)
            c.attached = False
            c.latest.clear()
            self.release()

    def lag(self, Cursor c):
        """Ring positions `c` has not read yet (conflated events included)."""
        return self.head - c.pos + len(c.latest)

    cpdef skip(self, Cursor c):
        """Move `c` to the head: the caller knows nothing unread matches it."""
        if c.attached:
            c.pos = self.head
            self.release()

    cpdef int pressure(self):
        """Block back-pressure: 2 if a block cursor's lag reached its high
        water, 0 if every block cursor is at or below its low water, else 1."""
        cdef Cursor c
        cdef int64_t lag
        cdef int level = 0
        for c in self.cursors:
            if c.policy != POLICY_BLOCK:
                continue
            lag = self.head - c.pos
            if lag >= c.high_water:
                return 2
            if lag > c.low_water:
                level = 1
        return level

    def full_block_cursors(self):
        """Block cursors the writer cannot pass (lag == limit)."""
        cdef Cursor c
        return [c for c in self.cursors
                if c.policy == POLICY_BLOCK and self.head - c.pos >= c.limit]

    @property
    def depth(self):
        """Unread positions of the slowest attached cursor."""
        cdef Cursor c
        cdef int64_t lo = self.head
        for c in self.cursors:
            if c.pos < lo:
                lo = c.pos
        return self.head - lo

    cdef void evict(self, Cursor c, int64_t end, list batch):
        # Positions [c.pos, end) are about to be overwritten (or, for a batch
        # larger than the cursor's limit, never readable): account them.
        cdef int64_t p
        cdef object ev
        for p in range(c.pos, end):
            if p < self.head:
                ev = self.at(p)
            else:
                ev = <object>PyList_GET_ITEM(batch, p - self.head)
            if c.matches(ev):
                c.lose(ev)
        self.evicted += end - c.pos
        c.pos = end

    cpdef Py_ssize_t publish(self, list batch) except -1:
        """Write `batch`'s events (all must be Event); returns how many were
        written, fewer than ``len(batch)`` only when a block cursor is full.
        A non-Event raises TypeError before anything is written."""
        cdef Py_ssize_t n, i, n_write
        cdef PyObject *ob
        cdef PyObject *old
        cdef PyObject **slot
        cdef uint64_t kinds = 0
        cdef int64_t room, end, lossy_min = INT64_MAX
        cdef Cursor c
        if batch is None:
            raise TypeError("publish needs a list of events, got None")
        n = PyList_GET_SIZE(batch)
        if n == 0:
            return 0
        for i in range(n):
            ob = PyList_GET_ITEM(batch, i)
            if not isinstance(<object>ob, Event):
                raise TypeError(f"bus events must be Event, got {type(<object>ob).__name__}")
            kinds |= (<uint64_t>1) << (<Event>ob).kind_id
        n_write = n
        for c in self.cursors:
            if c.policy == POLICY_BLOCK:
                room = c.limit - (self.head - c.pos)
                if room < n_write:
                    n_write = room
            elif c.pos + c.limit < lossy_min:
                lossy_min = c.pos + c.limit
        if n_write <= 0:
            return 0
        end = self.head + n_write
        if end > lossy_min:
            for c in self.cursors:
                if c.policy != POLICY_BLOCK and c.pos + c.limit < end:
                    self.evict(c, end - c.limit, batch)
        for i in range(n_write):
            ob = PyList_GET_ITEM(batch, i)
            slot = &self.slots[(self.head + i) & self.mask]
            self.stamps[(self.head + i) & self.mask] = self.stamp
            old = slot[0]
            Py_INCREF(<object>ob)
            slot[0] = ob
            Py_XDECREF(old)
        self.head += n_write
        self.published = self.head
        self.last_kinds = kinds
        if self.tail < self.head - self.capacity:
            self.tail = self.head - self.capacity   # those slots were reused above
        if not self.cursors:
            self.release()
        return n_write

    cpdef list read(self, Cursor c, Py_ssize_t max_n):
        """Up to `max_n` events for `c`, in publish order, advancing it.

        A conflate cursor that has conflated events, or lags by more than
        `max_n`, first folds everything unread into its latest-per-key map
        and is served from there (oldest latest first).
        """
        cdef list out = []
        cdef int64_t p, head = self.head
        cdef object ev
        cdef Py_ssize_t k
        if not c.attached or max_n <= 0:
            return out
        c.read_stamp = 0
        if c.policy == POLICY_CONFLATE and (c.latest or head - c.pos > max_n):
            if c.pos < head:
                c.read_stamp = self.stamps[c.pos & self.mask]
            for p in range(c.pos, head):
                ev = self.at(p)
                if c.matches(ev):
                    c.lose(ev)
            c.pos = head
            self.release()
            keys = []
            for key in c.latest:
                keys.append(key)
                if PyList_GET_SIZE(keys) >= max_n:
                    break
            for key in keys:
                out.append(c.latest.pop(key))
            k = PyList_GET_SIZE(out)
            c.delivered += k
            c.seen += k
            return out
        p = c.pos
        while p < head:
            ev = self.at(p)
            p += 1
            if c.matches(ev):
                if not PyList_GET_SIZE(out):
                    c.read_stamp = self.stamps[(p - 1) & self.mask]
                out.append(ev)
                if PyList_GET_SIZE(out) >= max_n:
                    break
        c.pos = p
        self.release()
        k = PyList_GET_SIZE(out)
        c.delivered += k
        c.seen += k
        return out

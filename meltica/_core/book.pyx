# cython: language_level=3
# distutils: language = c++
"""Order books in C (see book.pxd for the layout and the invariants).

``OrderBook`` keeps one instrument's levels as scaled int64 and applies a
``BookDepth``'s levels straight from the event's C buffer.  ``BookSet`` holds
the books of a process and applies every depth event of a batch from C,
stopping only at an event the Conductor must look at (a status other than
applied / stale, or a book with no snapshot yet).  Nothing here keeps time.
"""

cimport cython
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from libc.stdint cimport INT64_MAX, int8_t, int64_t
from libc.stdlib cimport free, malloc, qsort, realloc
from libc.string cimport memmove

from meltica._core.events cimport (
    BOOK_DELTA, BOOK_SNAPSHOT, MT_DEC_NA, MT_NA, SOURCE_BBO, SOURCE_BOOK,
    BookDepth, fixed_new, mt_level,
)

STATUS_NAMES = (
    "applied", "synced", "stale", "gap", "unbridged", "crossed", "overflow",
    "precision", "bad_level", "not_managed",
)

cdef int64_t POW10[19]
cdef int _i
POW10[0] = 1
for _i in range(1, 19):
    POW10[_i] = POW10[_i - 1] * 10

# scale results
cdef enum:
    SC_OK = 0
    SC_OVERFLOW = 1
    SC_INEXACT = 2


@cython.cdivision(True)  # operands are checked, and only exactness of % matters
cdef inline int _scale(int64_t m, int e, int t, int64_t *out) noexcept nogil:
    """``m * 10**e`` as a mantissa at exponent ``t``."""
    cdef int d = e - t
    cdef int64_t p
    if d == 0 or m == 0:
        out[0] = m
        return SC_OK
    if d > 0:
        if d > 18:
            return SC_OVERFLOW
        p = POW10[d]
        if m > INT64_MAX // p or m < -(INT64_MAX // p):
            return SC_OVERFLOW
        out[0] = m * p
        return SC_OK
    d = -d
    if d > 18:
        return SC_INEXACT
    p = POW10[d]
    if m % p != 0:
        return SC_INEXACT
    out[0] = m // p
    return SC_OK


cdef int _cmp_level(const void *a, const void *b) noexcept nogil:
    cdef int64_t x = (<const bk_level *>a).key, y = (<const bk_level *>b).key
    return (x > y) - (x < y)


cdef inline Py_ssize_t _find(const bk_side *s, int64_t key, bint *found) noexcept nogil:
    """Index of ``key`` in the side, or where it would be inserted.

    Scans linearly from the best end first (most updates touch the top few
    levels), then binary-searches the rest.
    """
    cdef const bk_level *lv = s.lv
    cdef Py_ssize_t n = s.n, i = n - 1, lo, hi, mid
    while i >= 0 and i >= n - 8:
        if lv[i].key <= key:
            found[0] = lv[i].key == key
            return i if found[0] else i + 1
        i -= 1
    found[0] = False
    if i < 0:
        return 0
    # every key above i is greater than `key`: search [0, i]
    lo = 0
    hi = i + 1
    while lo < hi:
        mid = (lo + hi) >> 1
        if lv[mid].key < key:
            lo = mid + 1
        else:
            hi = mid
    found[0] = lo <= i and lv[lo].key == key
    return lo


cdef int _reserve(bk_side *s, Py_ssize_t need) except -1:
    cdef Py_ssize_t cap
    cdef bk_level *p
    if need <= s.cap:
        return 0
    cap = s.cap * 2 if s.cap else 64
    while cap < need:
        cap *= 2
    p = <bk_level *>realloc(s.lv, sizeof(bk_level) * cap)
    if p == NULL:
        raise MemoryError()
    s.lv = p
    s.cap = cap
    return 0


cdef inline int _set(bk_side *s, int64_t key, int64_t qty) except -1:
    """Set one level: insert, update, or delete when qty is 0."""
    cdef bint found
    cdef Py_ssize_t i = _find(s, key, &found)
    if found:
        if qty == 0:
            memmove(&s.lv[i], &s.lv[i + 1], sizeof(bk_level) * (s.n - i - 1))
            s.n -= 1
        else:
            s.lv[i].qty = qty
        return 0
    if qty == 0:
        return 0   # removing a level the book never had is normal
    if s.n == s.cap:
        _reserve(s, s.n + 1)
    memmove(&s.lv[i + 1], &s.lv[i], sizeof(bk_level) * (s.n - i))
    s.lv[i].key = key
    s.lv[i].qty = qty
    s.n += 1
    return 0


cdef Py_ssize_t _trim(bk_side *s, Py_ssize_t keep) noexcept nogil:
    """Drop the worst levels beyond ``keep`` (amortised: only past 1/8 slack)."""
    cdef Py_ssize_t k
    if keep <= 0 or s.n <= keep + keep // 8 + 1:
        return 0
    k = s.n - keep
    memmove(s.lv, &s.lv[k], sizeof(bk_level) * keep)
    s.n = keep
    return k


cdef list _side_view(const bk_side *s, Py_ssize_t limit, int pexp, int qexp, int sign):
    cdef Py_ssize_t i, n = s.n if limit < 0 or limit > s.n else limit
    cdef const bk_level *lv
    cdef list out = []
    for i in range(n):
        lv = &s.lv[s.n - 1 - i]
        out.append((fixed_new(sign * lv.key, pexp), fixed_new(lv.qty, qexp)))
    return out


@cython.final
cdef class OrderBook:
    """One instrument's order book (Binance's §7 rules, exact decimals).

    ``price_exp`` / ``qty_exp`` fix the exponents (from the tick and step
    sizes: tick ``0.01`` -> ``-2``); left ``None`` they adapt exactly to the
    data.  ``futures`` selects the USD-M/COIN-M rules.  ``max_levels`` bounds
    each side (the worst levels beyond it are dropped; 0 = unbounded).
    """

    def __cinit__(self):
        self.bids_.lv = NULL
        self.bids_.n = self.bids_.cap = 0
        self.asks_.lv = NULL
        self.asks_.n = self.asks_.cap = 0

    def __init__(self, str market, str symbol, *, bint futures=False, price_exp=None,
                 qty_exp=None, Py_ssize_t max_levels=10000, str venue="binance"):
        if (price_exp is None) != (qty_exp is None):
            raise ValueError("give both price_exp and qty_exp, or neither")
        if price_exp is not None and not (-60 <= price_exp <= 18 and -60 <= qty_exp <= 18):
            raise ValueError("price_exp/qty_exp out of range")
        if max_levels < 0:
            raise ValueError("max_levels must be >= 0")
        self.venue = venue
        self.market = market
        self.symbol = symbol
        self.futures = futures
        self.fixed_exp = price_exp is not None
        self.price_exp = price_exp if price_exp is not None else MT_DEC_NA
        self.qty_exp = qty_exp if qty_exp is not None else MT_DEC_NA
        self.max_levels = max_levels
        self._reset()

    def __dealloc__(self):
        free(self.bids_.lv)
        free(self.asks_.lv)

    cdef void _reset(self) noexcept:
        self.bids_.n = 0
        self.asks_.n = 0
        self.update_id_ = MT_NA
        self.managed = False
        self.bridged = False
        self.live = False
        self.dirty = False
        self.ts_event_ = self.ts_transaction_ = MT_NA
        self.ts_recv_ = 0
        self.bbo_pub[0] = self.bbo_pub[1] = self.bbo_pub[2] = self.bbo_pub[3] = MT_NA
        if not self.fixed_exp:
            self.price_exp = MT_DEC_NA
            self.qty_exp = MT_DEC_NA

    # ------------------------------------------------------------ C API

    cdef int apply_delta(self, BookDepth ev) except -1:
        """Check ``ev`` against the sequence rules and apply it; a BookStatus."""
        cdef int64_t u = ev.update_id_, first = ev.first_update_id_
        cdef int64_t pu = ev.prev_update_id_, last = self.update_id_, lo
        cdef int st
        cdef bint bridging
        if not self.managed:
            return BOOK_NOT_MANAGED
        if first == MT_NA:
            first = u
        bridging = not self.bridged
        if bridging:
            # first event after the snapshot L: drop the stale (spot u <= L,
            # futures u < L), then it must straddle (spot U <= L+1 <= u,
            # futures U <= L <= u); else the snapshot is too old to bridge
            if (u < last) if self.futures else (u <= last):
                self.stale += 1
                return BOOK_STALE
            lo = last if self.futures else last + 1
            if first > lo:
                self.managed = False
                return BOOK_UNBRIDGED
        else:
            if u <= last:   # old or duplicate
                self.stale += 1
                return BOOK_STALE
            if self.futures and pu != MT_NA:
                if pu != last:
                    self.gaps += 1
                    self.managed = False
                    return BOOK_GAP
            elif first > last + 1:
                self.gaps += 1
                self.managed = False
                return BOOK_GAP
        st = self._prepare(ev)
        if st != BOOK_APPLIED:
            self.errors += 1
            self.managed = False
            return st
        self._apply_levels(ev)
        self.update_id_ = u
        self.ts_event_ = ev.ts_event_
        self.ts_transaction_ = ev.ts_transaction_
        self.ts_recv_ = ev.ts_recv
        self.applied += 1
        self.bridged = True
        if self._crossed():
            self.crossed += 1
            self.managed = False
            return BOOK_CROSSED
        return BOOK_SYNCED if bridging else BOOK_APPLIED

    cdef int _prepare(self, BookDepth ev) except -1:
        """Validate ``ev``'s levels and settle the book's exponents (atomic).

        On return BOOK_APPLIED every level converts exactly at the book's
        exponents; otherwise nothing changed.
        """
        cdef int P = self.price_exp, Q = self.qty_exp, newP, newQ, side
        cdef const mt_level *lv
        cdef Py_ssize_t i, n
        cdef bint slow = False
        cdef int64_t tmp
        for side in range(2):
            lv = ev.bids_ if side == 0 else ev.asks_
            n = ev.n_bids if side == 0 else ev.n_asks
            for i in range(n):
                if lv[i].qty < 0:
                    return BOOK_BAD_LEVEL
                if lv[i].price_exp != P or (lv[i].qty != 0 and lv[i].qty_exp != Q):
                    slow = True
        if not slow:
            return BOOK_APPLIED
        # slow path: the finest exponent any level needs (MT_DEC_NA = 127 is
        # above every real exponent, so min() starts from "unknown")
        newP, newQ = P, Q
        for side in range(2):
            lv = ev.bids_ if side == 0 else ev.asks_
            n = ev.n_bids if side == 0 else ev.n_asks
            for i in range(n):
                if P == MT_DEC_NA or _scale(lv[i].price, lv[i].price_exp, P, &tmp) == SC_INEXACT:
                    newP = min(newP, lv[i].price_exp)
                if lv[i].qty != 0 and (
                        Q == MT_DEC_NA or _scale(lv[i].qty, lv[i].qty_exp, Q, &tmp) == SC_INEXACT):
                    newQ = min(newQ, lv[i].qty_exp)
        if self.fixed_exp and (newP != P or newQ != Q):
            return BOOK_PRECISION
        for side in range(2):
            lv = ev.bids_ if side == 0 else ev.asks_
            n = ev.n_bids if side == 0 else ev.n_asks
            for i in range(n):
                if _scale(lv[i].price, lv[i].price_exp, newP, &tmp) != SC_OK:
                    return BOOK_OVERFLOW
                if lv[i].qty != 0 and _scale(lv[i].qty, lv[i].qty_exp, newQ, &tmp) != SC_OK:
                    return BOOK_OVERFLOW
        if newP != P or newQ != Q:
            return self._rescale(newP, newQ)
        return BOOK_APPLIED

    cdef int _rescale(self, int pexp, int qexp) except -1:
        """Move every level to finer exponents, or BOOK_OVERFLOW (unchanged)."""
        cdef bk_side *s
        cdef Py_ssize_t i
        cdef int side, op = self.price_exp, oq = self.qty_exp
        cdef int64_t tmp
        if self.bids_.n or self.asks_.n:
            for side in range(2):
                s = &self.bids_ if side == 0 else &self.asks_
                for i in range(s.n):
                    if _scale(s.lv[i].key, op, pexp, &tmp) != SC_OK:
                        return BOOK_OVERFLOW
                    if _scale(s.lv[i].qty, oq, qexp, &tmp) != SC_OK:
                        return BOOK_OVERFLOW
            for side in range(2):
                s = &self.bids_ if side == 0 else &self.asks_
                for i in range(s.n):
                    _scale(s.lv[i].key, op, pexp, &s.lv[i].key)
                    _scale(s.lv[i].qty, oq, qexp, &s.lv[i].qty)
            self.rescales += 1
        self.price_exp = pexp
        self.qty_exp = qexp
        return BOOK_APPLIED

    @cython.boundscheck(False)  # indices run over the event's own level counts
    cdef int _apply_levels(self, BookDepth ev) except -1:
        cdef const mt_level *lv = ev.bids_
        cdef Py_ssize_t i
        cdef int P = self.price_exp, Q = self.qty_exp
        cdef int64_t px, qty
        for i in range(ev.n_bids):
            px = lv[i].price
            qty = lv[i].qty
            if lv[i].price_exp != P:
                _scale(px, lv[i].price_exp, P, &px)
            if qty != 0 and lv[i].qty_exp != Q:
                _scale(qty, lv[i].qty_exp, Q, &qty)
            _set(&self.bids_, px, qty)
        lv = ev.asks_
        for i in range(ev.n_asks):
            px = lv[i].price
            qty = lv[i].qty
            if lv[i].price_exp != P:
                _scale(px, lv[i].price_exp, P, &px)
            if qty != 0 and lv[i].qty_exp != Q:
                _scale(qty, lv[i].qty_exp, Q, &qty)
            _set(&self.asks_, -px, qty)
        if self.max_levels:
            self.trimmed += _trim(&self.bids_, self.max_levels)
            self.trimmed += _trim(&self.asks_, self.max_levels)
        return 0

    cdef bint _crossed(self) noexcept:
        if self.bids_.n == 0 or self.asks_.n == 0:
            return False
        return self.bids_.lv[self.bids_.n - 1].key >= -self.asks_.lv[self.asks_.n - 1].key

    cdef BookDepth make_depth(self, Py_ssize_t depth, int source):
        """A ``book_snapshot`` of the top ``depth`` levels (fused output)."""
        cdef BookDepth ev = BookDepth.__new__(BookDepth)
        cdef Py_ssize_t i
        cdef Py_ssize_t nb = min(depth, self.bids_.n), na = min(depth, self.asks_.n)
        cdef const bk_level *src
        cdef int8_t pe = <int8_t>self.price_exp, qe = <int8_t>self.qty_exp
        ev.venue = self.venue
        ev.market = self.market
        ev.symbol = self.symbol
        ev.kind_id = BOOK_SNAPSHOT
        ev.source_ = source
        ev.seq_ = ev.update_id_ = self.update_id_
        ev.first_update_id_ = ev.prev_update_id_ = MT_NA
        ev.ts_event_ = self.ts_event_
        ev.ts_transaction_ = self.ts_transaction_
        ev.ts_recv = self.ts_recv_
        ev.bids_ = <mt_level *>malloc(sizeof(mt_level) * (nb if nb else 1))
        ev.asks_ = <mt_level *>malloc(sizeof(mt_level) * (na if na else 1))
        if ev.bids_ == NULL or ev.asks_ == NULL:
            raise MemoryError()
        src = self.bids_.lv + self.bids_.n - 1
        for i in range(nb):
            ev.bids_[i].price = src[-i].key
            ev.bids_[i].qty = src[-i].qty
            ev.bids_[i].price_exp = pe
            ev.bids_[i].qty_exp = qe
        src = self.asks_.lv + self.asks_.n - 1
        for i in range(na):
            ev.asks_[i].price = -src[-i].key
            ev.asks_[i].qty = src[-i].qty
            ev.asks_[i].price_exp = pe
            ev.asks_[i].qty_exp = qe
        ev.n_bids = nb
        ev.n_asks = na
        return ev

    cdef int fused_into(self, list out, Py_ssize_t depth) except -1:
        """Append the top-``depth`` snapshot, and a BBO when the top changed."""
        cdef int64_t b0 = MT_NA, b1 = MT_NA, a0 = MT_NA, a1 = MT_NA
        cdef int count = 1
        out.append(self.make_depth(depth, SOURCE_BOOK))
        if self.bids_.n:
            b0 = self.bids_.lv[self.bids_.n - 1].key
            b1 = self.bids_.lv[self.bids_.n - 1].qty
        if self.asks_.n:
            a0 = self.asks_.lv[self.asks_.n - 1].key
            a1 = self.asks_.lv[self.asks_.n - 1].qty
        if b0 != self.bbo_pub[0] or b1 != self.bbo_pub[1] \
                or a0 != self.bbo_pub[2] or a1 != self.bbo_pub[3]:
            self.bbo_pub[0], self.bbo_pub[1], self.bbo_pub[2], self.bbo_pub[3] = b0, b1, a0, a1
            out.append(self.make_depth(1, SOURCE_BBO))
            count += 1
        self.dirty = False
        self.published += count
        return count

    # ------------------------------------------------------------ Python API

    def apply(self, BookDepth ev not None):
        """Apply one ``book_delta`` (BINANCE.md §7 checks first); a BookStatus int."""
        if ev.kind_id != BOOK_DELTA:
            raise ValueError(f"apply() takes a book_delta, not {ev.kind}")
        return self.apply_delta(ev)

    def load_snapshot(self, BookDepth snap not None):
        """Replace the book with a REST snapshot (update id = lastUpdateId).

        Returns BOOK_APPLIED, or an error status (crossed, overflow, precision,
        bad level) with the book left empty and unmanaged.
        """
        cdef bk_side *s
        cdef const mt_level *lv
        cdef Py_ssize_t i, j, n
        cdef int side, st
        cdef int64_t px, qty
        if snap.kind_id != BOOK_SNAPSHOT:
            raise ValueError(f"load_snapshot() takes a book_snapshot, not {snap.kind}")
        self._reset()
        self.venue = snap.venue
        st = self._prepare(snap)
        if st != BOOK_APPLIED:
            self.errors += 1
            return st
        for side in range(2):
            s = &self.bids_ if side == 0 else &self.asks_
            lv = snap.bids_ if side == 0 else snap.asks_
            n = snap.n_bids if side == 0 else snap.n_asks
            _reserve(s, n)
            j = 0
            for i in range(n):
                if lv[i].qty == 0:
                    continue
                _scale(lv[i].price, lv[i].price_exp, self.price_exp, &px)
                _scale(lv[i].qty, lv[i].qty_exp, self.qty_exp, &qty)
                s.lv[j].key = px if side == 0 else -px
                s.lv[j].qty = qty
                j += 1
            qsort(s.lv, j, sizeof(bk_level), _cmp_level)
            # a repeated price keeps one level (snapshots never repeat one)
            n = 0
            for i in range(j):
                if n and s.lv[n - 1].key == s.lv[i].key:
                    s.lv[n - 1].qty = s.lv[i].qty
                else:
                    s.lv[n] = s.lv[i]
                    n += 1
            s.n = n
            if self.max_levels:
                self.trimmed += _trim(s, self.max_levels)
        self.update_id_ = snap.update_id_
        self.ts_event_ = snap.ts_event_
        self.ts_transaction_ = snap.ts_transaction_
        self.ts_recv_ = snap.ts_recv
        if self._crossed():
            self.crossed += 1
            self._reset()
            return BOOK_CROSSED
        self.managed = True
        return BOOK_APPLIED

    def publish(self, list out not None, Py_ssize_t depth=20):
        """Append fused outputs to ``out``: the top-``depth`` snapshot, and a BBO
        when the top changed since the last one; returns how many."""
        return self.fused_into(out, depth)

    @property
    def update_id(self):
        """The snapshot's lastUpdateId, then the last applied ``u``; None if empty."""
        return None if self.update_id_ == MT_NA else self.update_id_

    def clear(self):
        """Drop every level and the sequence state (the book needs a snapshot)."""
        self._reset()

    def snapshot(self, Py_ssize_t depth=20, str source="book"):
        """The top ``depth`` levels as a ``book_snapshot`` event (source book or bbo)."""
        if source not in ("book", "bbo"):
            raise ValueError("source must be 'book' or 'bbo'")
        return self.make_depth(depth, SOURCE_BOOK if source == "book" else SOURCE_BBO)

    @property
    def is_crossed(self):
        """Best bid >= best ask right now."""
        return self._crossed()

    @property
    def n_bids(self):
        return self.bids_.n

    @property
    def n_asks(self):
        return self.asks_.n

    def best_bid(self):
        """``(price, qty)`` of the best bid as Fixed, or None."""
        if self.bids_.n == 0:
            return None
        return _side_view(&self.bids_, 1, self.price_exp, self.qty_exp, 1)[0]

    def best_ask(self):
        """``(price, qty)`` of the best ask as Fixed, or None."""
        if self.asks_.n == 0:
            return None
        return _side_view(&self.asks_, 1, self.price_exp, self.qty_exp, -1)[0]

    def bids(self, Py_ssize_t depth=-1):
        """Bid levels best first, ``(price, qty)`` Fixed pairs (all when depth < 0)."""
        return _side_view(&self.bids_, depth, self.price_exp, self.qty_exp, 1)

    def asks(self, Py_ssize_t depth=-1):
        """Ask levels best first, ``(price, qty)`` Fixed pairs (all when depth < 0)."""
        return _side_view(&self.asks_, depth, self.price_exp, self.qty_exp, -1)

    def top(self, Py_ssize_t depth):
        """``(bids, asks)``: the top ``depth`` levels of each side."""
        return self.bids(depth), self.asks(depth)

    def raw(self):
        """``(price_exp, qty_exp, bids, asks)`` with int mantissas, best first (tests)."""
        cdef Py_ssize_t i
        bids = [(self.bids_.lv[i].key, self.bids_.lv[i].qty)
                for i in range(self.bids_.n - 1, -1, -1)]
        asks = [(-self.asks_.lv[i].key, self.asks_.lv[i].qty)
                for i in range(self.asks_.n - 1, -1, -1)]
        return self.price_exp, self.qty_exp, bids, asks

    def counters(self):
        return {
            "applied": self.applied, "stale": self.stale, "gaps": self.gaps,
            "crossed": self.crossed, "errors": self.errors, "trimmed": self.trimmed,
            "rescales": self.rescales, "published": self.published,
        }

    def __repr__(self):
        return (f"<OrderBook {self.market}:{self.symbol} u={self.update_id_} "
                f"{self.bids_.n}x{self.asks_.n} managed={self.managed}>")


@cython.final
cdef class BookSet:
    """The books of one Conductor, applied a batch at a time from C.

    ``apply_batch(batch, start, out)`` walks ``batch[start:]``: depth diffs of
    managed books are applied in C (stale ones dropped); on a live book each
    applied update appends fused outputs to ``out`` (``emit_depth`` > 0) or
    puts the book on ``dirty`` once.  It returns the index of the first event
    the caller must handle (``last_status`` / ``last_book`` say why), or
    ``len(batch)``.  Events are never removed from the batch.
    """

    def __init__(self, Py_ssize_t emit_depth=0):
        self._books = {}
        self.dirty = []
        self.emit_depth = emit_depth
        self.last_status = BOOK_APPLIED
        self.last_book = None

    def add(self, OrderBook book not None):
        self._books.setdefault(book.market, {})[book.symbol] = book
        self._last_book = None

    def remove(self, str market, str symbol):
        """Forget a book; returns it, or None."""
        self._last_book = None
        by_symbol = self._books.get(market)
        return by_symbol.pop(symbol, None) if by_symbol else None

    def get(self, str market, str symbol):
        by_symbol = self._books.get(market)
        return by_symbol.get(symbol) if by_symbol else None

    def __len__(self):
        return sum(len(v) for v in self._books.values())

    def __iter__(self):
        return iter([b for v in self._books.values() for b in v.values()])

    def take_dirty(self):
        """The books applied since the last call (each once)."""
        out, self.dirty = self.dirty, []
        return out

    cdef OrderBook _lookup(self, str market, str symbol):
        # the parser interns symbols and shares its market str: identity first
        if self._last_book is not None and symbol is self._last_symbol \
                and market is self._last_market:
            return self._last_book
        by_symbol = self._books.get(market)
        if by_symbol is None:
            return None
        book = (<dict>by_symbol).get(symbol)
        if book is None:
            return None
        self._last_market = market
        self._last_symbol = symbol
        self._last_book = <OrderBook>book
        return self._last_book

    cpdef Py_ssize_t apply_batch(self, list batch, Py_ssize_t start, list out) except -1:
        """Apply ``batch[start:]``; the index needing the caller, or len(batch)."""
        cdef Py_ssize_t i, n = PyList_GET_SIZE(batch)
        cdef object obj
        cdef BookDepth ev
        cdef OrderBook book
        cdef int st
        for i in range(start, n):
            obj = <object>PyList_GET_ITEM(batch, i)
            if type(obj) is not BookDepth:
                continue
            ev = <BookDepth>obj
            if ev.kind_id != BOOK_DELTA:
                continue
            book = self._lookup(ev.market, ev.symbol)
            if book is None:
                continue
            st = book.apply_delta(ev)
            if st == BOOK_APPLIED:
                if book.live:
                    if self.emit_depth > 0:
                        book.fused_into(out, self.emit_depth)
                    elif not book.dirty:
                        book.dirty = True
                        self.dirty.append(book)
                continue
            if st == BOOK_STALE:
                continue
            self.last_status = st
            self.last_book = book
            return i
        return n

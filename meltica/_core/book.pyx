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
from libc.stdint cimport INT64_MAX, INT64_MIN, int8_t, int64_t
from libc.stdlib cimport free, malloc

from meltica._core.events cimport (
    BOOK_DELTA, BOOK_SNAPSHOT, MT_DEC_NA, MT_NA, SOURCE_BBO, SOURCE_BOOK,
    BookDepth, fixed_new, mt_level,
)
from meltica._core.snapshot cimport SNAP_OK

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


cdef inline void _fill_top(const bk_side *s, mt_level *out, Py_ssize_t n, int64_t sign,
                           int8_t pe, int8_t qe) noexcept nogil:
    """The side's best ``n`` levels (n <= s.n), best first, as event levels."""
    cdef Py_ssize_t j = s.nb - 1, i = -1, k
    cdef const bk_block *b = NULL
    for k in range(n):
        if i < 0:
            b = s.blk[j]
            j -= 1
            i = b.n - 1
        out[k].price = sign * b.key[i]
        out[k].qty = b.qty[i]
        out[k].price_exp = pe
        out[k].qty_exp = qe
        i -= 1


cdef list _top_pairs(const bk_side *s, Py_ssize_t limit, int64_t sign):
    """``(sign * key, qty)`` int pairs of the best ``limit`` levels (all if < 0)."""
    cdef Py_ssize_t j, i, n = s.n if limit < 0 or limit > s.n else limit
    cdef const bk_block *b
    cdef list out = []
    for j in range(s.nb - 1, -1, -1):
        b = s.blk[j]
        for i in range(b.n - 1, -1, -1):
            if len(out) == n:
                return out
            out.append((sign * b.key[i], b.qty[i]))
    return out


cdef list _side_view(const bk_side *s, Py_ssize_t limit, int pexp, int qexp, int64_t sign):
    return [(fixed_new(k, pexp), fixed_new(q, qexp)) for k, q in _top_pairs(s, limit, sign)]


@cython.final
cdef class OrderBook:
    """One instrument's order book (Binance's §7 rules, exact decimals).

    ``price_exp`` / ``qty_exp`` fix the exponents (from the tick and step
    sizes: tick ``0.01`` -> ``-2``); left ``None`` they adapt exactly to the
    data.  ``futures`` selects the USD-M/COIN-M rules.  ``max_levels`` bounds
    each side (the worst levels beyond it are dropped; 0 = unbounded).
    """

    def __cinit__(self):
        bk_init(&self.bids_)
        bk_init(&self.asks_)

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
        bk_free(&self.bids_)
        bk_free(&self.asks_)

    cdef void _reset(self) noexcept:
        bk_clear(&self.bids_)
        bk_clear(&self.asks_)
        self.update_id_ = MT_NA
        self.managed = False
        self.bridged = False
        self.live = False
        self.dirty = False
        self.ts_event_ = self.ts_transaction_ = MT_NA
        self.ts_recv_ = 0
        self.bbo_pub[0] = self.bbo_pub[1] = self.bbo_pub[2] = self.bbo_pub[3] = MT_NA
        self.audit_log_ = None
        if not self.fixed_exp:
            self.price_exp = MT_DEC_NA
            self.qty_exp = MT_DEC_NA

    # ------------------------------------------------------------ C API

    cdef int apply_delta(self, BookDepth ev) except -1:
        """Check ``ev`` against the sequence rules and apply it; a BookStatus."""
        cdef int64_t u = ev.update_id_, first = ev.first_update_id_
        cdef int64_t pu = ev.prev_update_id_, last = self.update_id_, lo
        cdef int st
        cdef bint bridging, fast
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
        st = self._prepare(ev, &fast)
        if st != BOOK_APPLIED:
            self.errors += 1
            self.managed = False
            return st
        self._apply_levels(ev, fast)
        self.update_id_ = u
        self.ts_event_ = ev.ts_event_
        self.ts_transaction_ = ev.ts_transaction_
        self.ts_recv_ = ev.ts_recv
        self.applied += 1
        self.bridged = True
        if self.audit_log_ is not None:
            if len(self.audit_log_) < self.audit_max_:
                self.audit_log_.append(ev)
            else:
                self.audit_log_ = None
                self.audit_overflows += 1
        if self._crossed():
            self.crossed += 1
            self.managed = False
            return BOOK_CROSSED
        return BOOK_SYNCED if bridging else BOOK_APPLIED

    cdef int _prepare(self, BookDepth ev, bint *fast) except -1:
        """Validate ``ev``'s levels and settle the book's exponents (atomic).

        On return BOOK_APPLIED every level converts exactly at the book's
        exponents, and ``fast`` says whether every level already is at them
        (the common case: no scaling needed); otherwise nothing changed.
        """
        cdef int P = self.price_exp, Q = self.qty_exp, newP, newQ, side
        cdef const mt_level *lv
        cdef Py_ssize_t i, n
        cdef bint slow = False, bad = False
        cdef int64_t tmp
        # bitwise, not short-circuit: zero quantities are common and random,
        # and a branch on them mispredicts
        for side in range(2):
            lv = ev.bids_ if side == 0 else ev.asks_
            n = ev.n_bids if side == 0 else ev.n_asks
            for i in range(n):
                bad |= lv[i].qty < 0
                slow |= (lv[i].price_exp != P) | ((lv[i].qty != 0) & (lv[i].qty_exp != Q))
        fast[0] = not slow
        if bad:
            return BOOK_BAD_LEVEL
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
        cdef bk_block *b
        cdef Py_ssize_t i, j
        cdef int side, op = self.price_exp, oq = self.qty_exp
        cdef int64_t tmp
        if self.bids_.n or self.asks_.n:
            for side in range(2):
                s = &self.bids_ if side == 0 else &self.asks_
                for j in range(s.nb):
                    b = s.blk[j]
                    for i in range(b.n):
                        if _scale(b.key[i], op, pexp, &tmp) != SC_OK:
                            return BOOK_OVERFLOW
                        if _scale(b.qty[i], oq, qexp, &tmp) != SC_OK:
                            return BOOK_OVERFLOW
                if s.vmin != INT64_MAX and s.vmin != INT64_MIN \
                        and _scale(s.vmin, op, pexp, &tmp) != SC_OK:
                    return BOOK_OVERFLOW
            for side in range(2):
                s = &self.bids_ if side == 0 else &self.asks_
                for j in range(s.nb):
                    b = s.blk[j]
                    for i in range(b.n):
                        _scale(b.key[i], op, pexp, &b.key[i])
                        _scale(b.qty[i], oq, qexp, &b.qty[i])
                if s.vmin != INT64_MAX and s.vmin != INT64_MIN:
                    _scale(s.vmin, op, pexp, &s.vmin)
                bk_reindex(s)
            self.rescales += 1
        self.price_exp = pexp
        self.qty_exp = qexp
        return BOOK_APPLIED

    @cython.boundscheck(False)  # indices run over the event's own level counts
    cdef int _apply_levels(self, BookDepth ev, bint fast) except -1:
        """Apply ``ev``'s levels, all checked by ``_prepare`` (``fast``: as they are)."""
        cdef const mt_level *lv
        cdef Py_ssize_t i, n
        cdef int P = self.price_exp, Q = self.qty_exp, side
        cdef int64_t px, qty, sign
        cdef bk_side *s
        for side in range(2):
            s = &self.bids_ if side == 0 else &self.asks_
            lv = ev.bids_ if side == 0 else ev.asks_
            n = ev.n_bids if side == 0 else ev.n_asks
            sign = 1 if side == 0 else -1
            if fast:
                for i in range(n):
                    if bk_set(s, sign * lv[i].price, lv[i].qty):
                        raise MemoryError()
                continue
            for i in range(n):
                px = lv[i].price
                qty = lv[i].qty
                if lv[i].price_exp != P:
                    _scale(px, lv[i].price_exp, P, &px)
                if qty != 0 and lv[i].qty_exp != Q:
                    _scale(qty, lv[i].qty_exp, Q, &qty)
                if bk_set(s, sign * px, qty):
                    raise MemoryError()
        if self.max_levels:
            self.trimmed += bk_trim(&self.bids_, self.max_levels)
            self.trimmed += bk_trim(&self.asks_, self.max_levels)
        return 0

    cdef bint _crossed(self) noexcept:
        cdef int64_t bk, bq, ak, aq
        if not bk_best(&self.bids_, &bk, &bq) or not bk_best(&self.asks_, &ak, &aq):
            return False
        return bk >= -ak

    cdef BookDepth make_depth(self, Py_ssize_t depth, int source):
        """A ``book_snapshot`` of the top ``depth`` levels (fused output)."""
        cdef BookDepth ev = BookDepth.__new__(BookDepth)
        cdef Py_ssize_t nb = min(depth, self.bids_.n), na = min(depth, self.asks_.n)
        if not self.publish_unverified:
            nb = min(nb, self.bids_.nv)
            na = min(na, self.asks_.nv)
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
        ev.verified_bids_ = self.bids_.nv
        ev.verified_asks_ = self.asks_.nv
        ev.alloc_levels(nb, na)
        _fill_top(&self.bids_, ev.bids_, nb, 1, pe, qe)
        _fill_top(&self.asks_, ev.asks_, na, -1, pe, qe)
        return ev

    cdef int fused_into(self, list out, Py_ssize_t depth) except -1:
        """Append the top-``depth`` snapshot, and a BBO when the top changed."""
        cdef int64_t b0 = MT_NA, b1 = MT_NA, a0 = MT_NA, a1 = MT_NA
        cdef int count = 1
        self.last_fused = self.make_depth(depth, SOURCE_BOOK)
        out.append(self.last_fused)
        if self.publish_unverified or self.bids_.nv:
            bk_best(&self.bids_, &b0, &b1)
        if self.publish_unverified or self.asks_.nv:
            bk_best(&self.asks_, &a0, &a1)
        if b0 != self.bbo_pub[0] or b1 != self.bbo_pub[1] \
                or a0 != self.bbo_pub[2] or a1 != self.bbo_pub[3]:
            self.bbo_pub[0], self.bbo_pub[1], self.bbo_pub[2], self.bbo_pub[3] = b0, b1, a0, a1
            out.append(self.make_depth(1, SOURCE_BBO))
            count += 1
        self.dirty = False
        self.published += count
        return count

    cdef str _store_key(self):
        if self.store_key_ is None:
            self.store_key_ = f"{self.venue}:{self.market}:{self.symbol}:book"
        return self.store_key_

    # ------------------------------------------------------------ Python API

    @property
    def store_key(self):
        """This book's SnapshotStore key, ``venue:market:SYMBOL:book``."""
        return self._store_key()

    def apply(self, BookDepth ev not None):
        """Apply one ``book_delta`` (the checks of docs/conductor.md first); a BookStatus int."""
        if ev.kind_id != BOOK_DELTA:
            raise ValueError(f"apply() takes a book_delta, not {ev.kind}")
        return self.apply_delta(ev)

    def load_snapshot(self, BookDepth snap not None, Py_ssize_t limit=0, bint bridged=False):
        """Replace the book with a REST snapshot (update id = lastUpdateId).

        ``limit``: the levels per side the snapshot was asked for (0: not
        known).  Each side is verified down to its worst snapshot level, or
        whole when it holds fewer levels than ``limit`` (see verified_bids).
        ``bridged``: the caller knows the next diff continues from exactly
        this update id (an audit's shadow book), so it is checked for
        continuity rather than for the straddle.
        Returns BOOK_APPLIED, or an error status (crossed, overflow, precision,
        bad level) with the book left empty and unmanaged.
        """
        cdef bk_side *s
        cdef const mt_level *lv
        cdef bk_pair *tmp
        cdef Py_ssize_t i, j, n
        cdef int side, st
        cdef bint fast
        if snap.kind_id != BOOK_SNAPSHOT:
            raise ValueError(f"load_snapshot() takes a book_snapshot, not {snap.kind}")
        self._reset()
        self.venue = snap.venue
        st = self._prepare(snap, &fast)
        if st != BOOK_APPLIED:
            self.errors += 1
            return st
        tmp = <bk_pair *>malloc(sizeof(bk_pair) * (max(snap.n_bids, snap.n_asks) + 1))
        if tmp == NULL:
            raise MemoryError()
        try:
            for side in range(2):
                s = &self.bids_ if side == 0 else &self.asks_
                lv = snap.bids_ if side == 0 else snap.asks_
                n = snap.n_bids if side == 0 else snap.n_asks
                j = 0
                for i in range(n):
                    _scale(lv[i].price, lv[i].price_exp, self.price_exp, &tmp[j].key)
                    _scale(lv[i].qty, lv[i].qty_exp, self.qty_exp, &tmp[j].qty)
                    if side:
                        tmp[j].key = -tmp[j].key
                    j += 1
                if bk_assign(s, tmp, j):
                    self._reset()
                    raise MemoryError()
                if limit > 0 and n < limit:
                    bk_verify(s, INT64_MIN)
                elif s.nb:
                    bk_verify(s, s.bmin[0])
                if self.max_levels:
                    self.trimmed += bk_trim(s, self.max_levels)
        finally:
            free(tmp)
        self.update_id_ = snap.update_id_
        self.ts_event_ = snap.ts_event_
        self.ts_transaction_ = snap.ts_transaction_
        self.ts_recv_ = snap.ts_recv
        if self._crossed():
            self.crossed += 1
            self._reset()
            return BOOK_CROSSED
        self.managed = True
        self.bridged = bridged
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

    @property
    def verified_bids(self):
        """Best bid levels known exact: those at prices no lower than the
        snapshot's worst bid (all bids when the snapshot held the whole side).
        Diffs keep the region exact, so it grows with levels inserted in it
        and shrinks as levels in it are removed; a level that a trim drops
        from it moves its bound up to the worst level kept."""
        return self.bids_.nv

    @property
    def verified_asks(self):
        """Best ask levels known exact (as ``verified_bids``, prices no higher
        than the snapshot's worst ask)."""
        return self.asks_.nv

    def audit_start(self, Py_ssize_t max_events):
        """Record every diff applied from now on (at most ``max_events``; past
        that the log is dropped and ``audit_overflows`` counted), for a shadow
        book built from a fresh snapshot (``audit_take``).  A reset drops it."""
        if max_events < 1:
            raise ValueError("max_events must be >= 1")
        self.audit_log_ = []
        self.audit_max_ = max_events
        self.audit_from_ = self.update_id_

    @property
    def audit_from(self):
        """The update id the book had when the audit log started (None: none)."""
        return None if self.audit_log_ is None or self.audit_from_ == MT_NA \
            else self.audit_from_

    @property
    def auditing(self):
        """An audit log is being recorded."""
        return self.audit_log_ is not None

    def audit_take(self):
        """The recorded diffs (oldest first), or None when no log is running
        (never started, overflowed, or the book was reset); stops the log."""
        out, self.audit_log_ = self.audit_log_, None
        return out

    def audit_compare(self, OrderBook shadow not None):
        """Compare with ``shadow`` (the same instrument at the same update id,
        at the same exponents); ``(outcome, side)``.

        Outcome ``mismatch``: a level differs where both books are verified
        (``side`` names the first such side).  ``rotted``: they agree there,
        but the shadow's verified region shows levels of this book beyond its
        verified depth that are wrong.  ``match``: they agree wherever the
        shadow is verified, and this book's verified region grows to cover the
        shadow's.  ``ValueError`` when the books are not comparable.
        """
        cdef bk_side *a
        cdef bk_side *b
        cdef int side
        cdef int64_t sg, hi
        cdef str rot = None
        if shadow.update_id_ != self.update_id_ or shadow.price_exp != self.price_exp \
                or shadow.qty_exp != self.qty_exp:
            raise ValueError("audit_compare needs books at one update id and exponents")
        for side in range(2):
            a = &self.bids_ if side == 0 else &self.asks_
            b = &shadow.bids_ if side == 0 else &shadow.asks_
            sg = 1 if side == 0 else -1
            hi = max(a.vmin, b.vmin)
            if _top_pairs(a, bk_count_ge(a, hi), sg) != _top_pairs(b, bk_count_ge(b, hi), sg):
                return "mismatch", ("bids", "asks")[side]
            if rot is None and b.vmin != INT64_MAX and \
                    _top_pairs(a, bk_count_ge(a, b.vmin), sg) != _top_pairs(b, b.nv, sg):
                rot = ("bids", "asks")[side]
        if rot is not None:
            return "rotted", rot
        for side in range(2):
            a = &self.bids_ if side == 0 else &self.asks_
            b = &shadow.bids_ if side == 0 else &shadow.asks_
            if b.vmin < a.vmin:
                bk_verify(a, b.vmin)
        return "match", None

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
        return (self.price_exp, self.qty_exp, _top_pairs(&self.bids_, -1, 1),
                _top_pairs(&self.asks_, -1, -1))

    def counters(self):
        return {
            "applied": self.applied, "stale": self.stale, "gaps": self.gaps,
            "crossed": self.crossed, "errors": self.errors, "trimmed": self.trimmed,
            "rescales": self.rescales, "published": self.published,
            "audit_overflows": self.audit_overflows,
        }

    def __repr__(self):
        return (f"<OrderBook {self.market}:{self.symbol} u={self.update_id_} "
                f"{self.bids_.n}x{self.asks_.n} verified={self.bids_.nv}x{self.asks_.nv} "
                f"managed={self.managed}>")


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
        self.fused = []
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

    def take_fused(self):
        """The books that built fused outputs in apply_batch since the last
        call (each once; ``last_fused`` is the latest snapshot of each)."""
        cdef OrderBook book
        out, self.fused = self.fused, []
        for book in out:
            book.in_fused = False
        return out

    def store_fused(self, SnapshotTable table not None, int64_t ttl_ns, int64_t now_ns,
                    list failed not None):
        """``take_fused()`` and write each book's ``last_fused`` into ``table``
        (compare-and-set from the book's ``store_version``, key ``store_key``).
        A write that does not succeed appends ``(book, status)`` to ``failed``
        for the caller's slow path; books no longer in this set are skipped.
        Returns how many were written."""
        return self.store_into(table, ttl_ns, now_ns, failed)

    cdef Py_ssize_t store_into(self, SnapshotTable table, int64_t ttl_ns, int64_t now_ns,
                               list failed) except -1:
        """``store_fused`` without a Python call: no method lookup, no boxed
        arguments or result (the Flow calls it once per batch with fused books)."""
        cdef OrderBook book
        cdef BookDepth ev
        cdef int st
        cdef Py_ssize_t written = 0
        cdef list books = self.fused
        self.fused = []
        for book in books:
            book.in_fused = False
            ev = book.last_fused
            if ev is None or ev.update_id_ == MT_NA \
                    or self._lookup(book.market, book.symbol) is not book:
                continue
            st = table.cas(book._store_key(), book.store_version, ev.update_id_, ev, ttl_ns,
                           now_ns)
            if st == SNAP_OK:
                book.store_version = ev.update_id_
                written += 1
            else:
                failed.append((book, st))
        return written

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
                        if not book.in_fused:
                            book.in_fused = True
                            self.fused.append(book)
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

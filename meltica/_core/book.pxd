# Order books in C: scaled-int64 price levels, Binance's sequence rules.
#
# One OrderBook per instrument.  Each side keeps its levels sorted in fixed-
# size blocks with the best level at the BACK (bids keyed by price, asks by
# -price, both ascending; book_side.hpp), so an insert or delete moves at most
# one block's levels however deep it lands.  Prices and quantities are
# held at ONE price exponent and ONE quantity exponent per book: fixed from
# the instrument's tick/step size when given, else adapted exactly (the book
# is rescaled to a finer exponent when a level needs it).  Anything that would
# lose exactness or overflow int64 is a status code, never a rounding.
#
# The book also runs the per-event half of the sync rules (docs/conductor.md) (stale drop, the
# straddle of the first event after the snapshot, continuity on every event)
# and reports a status code; the Conductor (Python) runs the state machine.
# Pure computation: no clocks, I/O or logging.

from libc.stdint cimport int64_t, uint64_t

from meltica._core.events cimport BookDepth
from meltica._core.snapshot cimport SnapshotTable


cdef extern from "book_side.hpp" nogil:
    enum: BK_B
    ctypedef struct bk_block:
        int64_t key[BK_B]    # ascending; unused slots hold INT64_MAX
        int64_t qty[BK_B]    # > 0
        Py_ssize_t n         # 1..BK_B levels in use
    ctypedef struct bk_side:
        bk_block **blk       # blk[0 .. nb) in key order: best = last of blk[nb - 1]
        int64_t *bmin        # first key of each block in use
        Py_ssize_t nb
        Py_ssize_t n         # levels on the side
        int64_t vmin         # verified region: keys >= vmin (INT64_MAX none, INT64_MIN all)
        Py_ssize_t nv        # levels in the verified region
    ctypedef struct bk_pair:
        int64_t key
        int64_t qty
    void bk_init(bk_side *s)
    void bk_free(bk_side *s)
    void bk_clear(bk_side *s)
    bint bk_best(const bk_side *s, int64_t *key, int64_t *qty)
    int bk_set(bk_side *s, int64_t key, int64_t qty)
    Py_ssize_t bk_trim(bk_side *s, Py_ssize_t keep)
    int bk_assign(bk_side *s, bk_pair *lv, Py_ssize_t n)
    void bk_reindex(bk_side *s)
    Py_ssize_t bk_count_ge(const bk_side *s, int64_t key)
    void bk_verify(bk_side *s, int64_t vmin)


# Status of one depth event against one book (also BookSet.last_status).
cpdef enum BookStatus:
    BOOK_APPLIED = 0     # applied
    BOOK_SYNCED = 1      # applied: the first event bridging the snapshot
    BOOK_STALE = 2       # dropped: not newer than the book (old or duplicate)
    BOOK_GAP = 3         # continuity broken; the book is unchanged
    BOOK_UNBRIDGED = 4   # snapshot older than the stream: refetch it
    BOOK_CROSSED = 5     # applied, and best bid >= best ask afterwards
    BOOK_OVERFLOW = 6    # a level does not fit int64 at the book's exponents
    BOOK_PRECISION = 7   # a level is finer than the fixed tick/step size
    BOOK_BAD_LEVEL = 8   # a negative quantity
    BOOK_NOT_MANAGED = 9  # no snapshot loaded: the caller buffers the event


cdef class OrderBook:
    # identity
    cdef readonly str venue
    cdef readonly str market
    cdef readonly str symbol
    cdef readonly bint futures        # USD-M/COIN-M rules (pu chain, u < L stale)
    # levels; exponents are MT_DEC_NA until the first level fixes them
    cdef bk_side bids_
    cdef bk_side asks_
    cdef readonly int price_exp
    cdef readonly int qty_exp
    cdef readonly bint fixed_exp      # exponents from tick/step: never adapted
    cdef readonly Py_ssize_t max_levels   # per side; the worst are trimmed
    # sequence state
    cdef int64_t update_id_           # snapshot id, then the last applied u (MT_NA: none)
    cdef readonly bint managed        # a snapshot is loaded: events apply here
    cdef readonly bint bridged        # the first event after it was applied
    cdef public bint live             # set by the Conductor: publish fused outputs
    # the last applied event (times carried onto fused outputs)
    cdef int64_t ts_event_, ts_transaction_, ts_recv_
    # fused-output bookkeeping
    cdef public bint dirty            # applied since the last fused output
    cdef readonly BookDepth last_fused   # the latest top-N snapshot built (or None)
    cdef bint in_fused                # on its BookSet's `fused` list
    cdef int64_t bbo_pub[4]           # bid px, bid qty, ask px, ask qty last published
    cdef public object owner          # the Conductor's per-instrument state
    # verified depth (book_side.hpp): fused snapshots hold only verified levels
    # unless publish_unverified; audit_log records applied diffs for an audit
    cdef public bint publish_unverified
    cdef list audit_log_
    cdef Py_ssize_t audit_max_
    cdef int64_t audit_from_          # update id when the audit log started
    # the SnapshotStore entry of this book: key (built at the first use, see
    # store_key) and the version last written there (None: nothing written yet)
    cdef str store_key_
    cdef public object store_version
    # counters (read by the Python layer)
    cdef readonly uint64_t applied, stale, gaps, crossed, errors, trimmed, rescales
    cdef readonly uint64_t published  # fused events built
    cdef readonly uint64_t audit_overflows  # audit logs dropped at audit_max

    cdef void _reset(self) noexcept
    cdef int apply_delta(self, BookDepth ev) except -1
    cdef int _apply_levels(self, BookDepth ev, bint fast) except -1
    cdef int _prepare(self, BookDepth ev, bint *fast) except -1
    cdef int _rescale(self, int pexp, int qexp) except -1
    cdef bint _crossed(self) noexcept
    cdef BookDepth make_depth(self, Py_ssize_t depth, int source)
    cdef int fused_into(self, list out, Py_ssize_t depth) except -1
    cdef str _store_key(self)


cdef class BookSet:
    # market -> {symbol -> OrderBook}
    cdef dict _books
    cdef str _last_market, _last_symbol
    cdef OrderBook _last_book
    # publish mode: emit_depth > 0 appends fused outputs on every applied
    # update of a live book; else applied live books join `dirty` once
    cdef public Py_ssize_t emit_depth
    cdef readonly list dirty
    # books that built fused outputs in apply_batch since take_fused(), each
    # once: the caller writes each one's latest snapshot (last_fused) once
    cdef readonly list fused
    # what stopped apply_batch (valid when it returned < len(batch))
    cdef readonly int last_status
    cdef readonly OrderBook last_book

    cdef OrderBook _lookup(self, str market, str symbol)
    cpdef Py_ssize_t apply_batch(self, list batch, Py_ssize_t start, list out) except -1
    # store_fused for C callers (the Conductor's Flow, once per batch)
    cdef Py_ssize_t store_into(self, SnapshotTable table, int64_t ttl_ns, int64_t now_ns,
                               list failed) except -1

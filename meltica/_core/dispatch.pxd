# The dispatch table: which exchange streams are subscribed, and what was
# already delivered on each.
#
# A route is (market, symbol, kind[, qualifier]): the qualifier is the kline
# interval or the ticker window; partial depth (book_snapshot from a stream)
# has none, since its events do not say how many levels were asked for.
# Routes live in per-symbol nodes (a dict keyed by the event's symbol str, one
# slot array per market) so an event costs one dict lookup and two indexings.
#
# Invariants:
# - an event is delivered at most once per route: its ordering key must be
#   newer than the last one delivered on the route (see dt_entry), with one
#   exception, the implausible jump below;
# - one event cannot silence a route.  A forward jump of the ordering key by
#   more than the kind's bound (JUMP_BOUNDS), and a route's first event, stay
#   "pending" until the next event on the route settles them:
#     next key > the jump's key          -> the jump is confirmed (a real jump,
#                                           e.g. after an outage);
#     next key <= the key before the jump -> duplicate, as always;
#     next key more than the bound below the jump's key, above the key before
#       it                               -> the jump was implausible: the route
#                                           rewinds to the next key, which is
#                                           delivered (counted `implausible`);
#     anything else (close below the jump: overlap replays) -> duplicate.
#   No event is held back: the jump's event is delivered when it arrives (the
#   table cannot yet tell a corrupt id from a real jump, and holding it would
#   delay the first event after every outage until the next one).  Nothing
#   delivered before the jump is delivered again.  The last disproved key is
#   remembered: the same frame replayed (a reconnect overlap) is a duplicate;
#   Bounds: 2**20 for ids (trade, agg trade and update ids: far more than
#   two connections of one stream are ever apart, far less than a corrupt
#   high bit), one hour for kinds ordered by time (ns);
# - control kinds (gap .. connection_state, gap_filled), book snapshots Meltica
#   made (source rest/book/bbo) and backfilled trades (source rest) always pass:
#   the table filters exchange streams only;
# - trade id holes: a trade or agg trade route whose id moves from L to n > L+1
#   records the hole [L+1, n-1] (dt_hole); so does a settled jump (confirmed:
#   [from+1, jump-1]; rewound: [from+1, next-1]).  A route's first id records
#   none.  Late live frames of a hole's ids are duplicates (below last_seq), so
#   the backfilled copy (source rest) is the only one that passes.  Holes wait
#   in a bounded vector (DT_MAX_HOLES; past it they are counted in
#   holes_dropped) until take_holes(); on_holes() is called once per accept()
#   that recorded one;
# - update() validates every change before applying any: a batch of route
#   changes is atomic with respect to accept();
# - counters only grow.

from libc.stdint cimport int32_t, int64_t, uint64_t
from libcpp.vector cimport vector

cdef enum:
    DT_N_MARKETS = 3        # events.MARKETS: spot, usdm, coinm
    # slot of a route inside a node's per-market slot array
    DT_S_TRADE = 0
    DT_S_AGG_TRADE = 1
    DT_S_BOOK_TICKER = 2
    DT_S_BOOK_DELTA = 3
    DT_S_PARTIAL_DEPTH = 4
    DT_S_MARK_PRICE = 5
    DT_S_LIQUIDATION = 6
    DT_S_KLINE = 7          # + interval index (16 intervals)
    DT_S_TICKER = 23        # + window index (5 windows)
    DT_N_SLOTS = 28
    DT_N_BUCKETS = 3        # partial depth level buckets: <=5, <=10, more
    DT_MAX_HOLES = 65536    # trade id holes waiting for take_holes()


ctypedef struct dt_entry:
    # Dedup state.  Ordering key per kind:
    #   trade/agg_trade: trade id; book_ticker/book_delta: update id;
    #   kline: (open time, closed, event time); ticker: (event time, last trade id);
    #   mark_price: event time; liquidation: (event time, trade time);
    #   partial depth: update id, tracked per level bucket (depth5 and depth20
    #   snapshots at the same update id are both delivered).
    int64_t last_seq[DT_N_BUCKETS]   # bucket 0 for every kind but partial depth
    int64_t last_sub                 # tie-break within last_seq[0]
    int32_t seen                     # bit b: last_seq[b] is set
    # Jump guard (see the invariants): bit b of `pending`: last_seq[b] is a
    # jump not yet settled; bit b of `anchored`: it jumped from
    # (from_seq[b], from_sub), else it is the route's first key (from nothing).
    int32_t pending
    int32_t anchored
    int64_t from_seq[DT_N_BUCKETS]
    int64_t from_sub
    # bit b of `voided`: (void_seq[b], void_sub) is the last disproved jump's
    # key, delivered once; a later jump to exactly that key is a duplicate
    int32_t voided
    int64_t void_seq[DT_N_BUCKETS]
    int64_t void_sub
    int32_t live                     # the slot holds a route
    int32_t contiguous               # trade/agg_trade: ids are contiguous, holes recorded
    int64_t instrument_id
    uint64_t delivered
    uint64_t duplicates
    uint64_t implausible             # jumps the next event disproved (rewinds)


ctypedef struct dt_hole:
    # trade ids first..last (inclusive) never delivered on route entry `entry`
    int32_t entry
    int64_t first
    int64_t last


cdef class _Node:
    # entry index per (market, slot), -1 = no route
    cdef int32_t slot[DT_N_MARKETS * DT_N_SLOTS]
    cdef int n_routes


cdef class DispatchTable:
    cdef dict _nodes                 # symbol str -> _Node
    cdef vector[dt_entry] _entries
    cdef vector[int32_t] _free       # reusable entry indexes
    cdef list _meta                  # entry index -> (key tuple, channel) or None
    # counters, read by the Python layer
    cdef readonly uint64_t accepted  # exchange events delivered
    cdef readonly uint64_t unrouted  # dropped: no route for their stream
    cdef readonly uint64_t duplicates  # dropped: not newer than their route's last
    cdef readonly uint64_t passed    # control events and Meltica-made snapshots
    cdef readonly uint64_t invalid   # dropped: not an Event at all
    # forward jumps disproved by the next event: the route rewound (the jump's
    # event had been delivered; the table ignores its key from then on)
    cdef readonly uint64_t implausible
    # trade id holes recorded (and recorded past DT_MAX_HOLES, lost to take_holes)
    cdef vector[dt_hole] _holes
    cdef readonly uint64_t holes
    cdef readonly uint64_t holes_dropped
    cdef public object on_holes      # callable() or None: holes are waiting

    cpdef Py_ssize_t accept(self, list batch) except -1
    cdef bint _keep(self, object item)
    cdef bint _settle(self, dt_entry *e, int b, int64_t seq, int64_t sub, int64_t bound)
    cdef bint _jump(self, dt_entry *e, int b, int64_t seq, int64_t sub)
    cdef void _hole(self, dt_entry *e, int64_t first, int64_t last)
    cdef int _add(self, tuple key, int64_t instrument_id, str channel) except -1
    cdef int _remove(self, tuple key) except -1
    cdef dict _entry_dict(self, int32_t idx)

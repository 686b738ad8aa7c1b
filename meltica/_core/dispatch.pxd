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
#   newer than the last one delivered on the route (see dt_entry);
# - control kinds (gap .. connection_state) and book snapshots Meltica made
#   (source rest/book/bbo) always pass: the table filters exchange streams only;
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
    int32_t live                     # the slot holds a route
    int64_t instrument_id
    uint64_t delivered
    uint64_t duplicates


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

    cpdef Py_ssize_t accept(self, list batch) except -1
    cdef bint _keep(self, object item)
    cdef int _add(self, tuple key, int64_t instrument_id, str channel) except -1
    cdef int _remove(self, tuple key) except -1
    cdef dict _entry_dict(self, int32_t idx)

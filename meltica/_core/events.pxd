# Canonical Meltica events: the one shape every later stage sees.
#
# Prices and quantities are scaled int64 pairs (mantissa, exponent); an
# exponent of MT_DEC_NA means "the exchange did not send it".  Integer fields
# use MT_NA for the same.  Times are ns since the epoch.  Depth levels live in
# a C buffer owned by the event.  Python users get Fixed / Decimal / float
# views through properties; the wire format is in docs/wire-format.md.

# Events hold only str and C fields, so they cannot form reference cycles:
# every class is @cython.no_gc (not tracked by the cyclic GC, which would
# otherwise scan millions of short-lived events).

from libc.stdint cimport int64_t, int8_t


cdef extern from "fixed.h":
    const int64_t MT_NA
    const int MT_DEC_NA
    ctypedef struct mt_level:
        int64_t price
        int64_t qty
        int8_t price_exp
        int8_t qty_exp
    bint mt_parse_fixed(const char *s, size_t n, int64_t *m, int *e) nogil
    size_t mt_format_fixed(int64_t m, int e, char *buf) nogil


cpdef enum Kind:
    TRADE = 1
    AGG_TRADE = 2
    BOOK_TICKER = 3
    BOOK_DELTA = 4
    BOOK_SNAPSHOT = 5
    KLINE = 6
    TICKER = 7
    MARK_PRICE = 8
    LIQUIDATION = 9
    GAP = 10
    RESYNC_STARTED = 11
    RESYNC_DONE = 12
    STALE = 13
    CONNECTION_STATE = 14
    DERIVED = 15            # an analytics hook's output (meltica.conductor.analytics)
    GAP_FILLED = 16         # a trade id gap's backfill ended (filled and/or lost)

# Kinds GAP..CONNECTION_STATE and GAP_FILLED are Control events; GAP and above
# (control and derived) are made by Meltica, so the dispatch table passes them
# unlooked-up.


cpdef enum Source:
    SOURCE_STREAM = 0
    SOURCE_REST = 1
    SOURCE_BOOK = 2
    SOURCE_BBO = 3      # best bid/offer derived from a book (top level only)


# Slots of the per-kind decimal arrays (order = wire field order).
cdef enum:
    KLINE_NDEC = 8
    TICKER_NDEC = 15
    TICKER_NINT = 5
    MARK_NDEC = 4
    LIQ_NDEC = 5


cdef class Fixed:
    """An exact decimal: mantissa * 10**exponent."""
    cdef readonly int64_t mantissa
    cdef readonly int exponent


cdef Fixed fixed_new(int64_t m, int e)
cdef object fixed_or_none(int64_t m, int e)
cdef object fixed_str(int64_t m, int e)


cdef class Event:
    # identity
    cdef readonly str venue        # "binance" | "binance_us"
    cdef readonly str market       # "spot" | "usdm" | "coinm"
    cdef readonly str symbol       # upper case exchange symbol
    cdef int kind_id               # Kind
    # ordering and time (MT_NA when absent)
    cdef int64_t seq_              # exchange sequence used by the key
    cdef int64_t ts_event_         # exchange event time E, ns
    cdef int64_t ts_transaction_   # exchange transaction time T, ns
    cdef public int64_t ts_recv    # local receive time, ns
    cdef public str trace          # W3C traceparent when sampled, else None

    cdef void _wire_fields(self, dict d)
    cdef str _key_tail(self)
    cdef _load_common(self, dict d, int kind_id)


cdef class Trade(Event):
    # kind TRADE (trade_id = t) or AGG_TRADE (trade_id = a, first/last = f/l)
    cdef int64_t trade_id_
    cdef int64_t first_trade_id_
    cdef int64_t last_trade_id_
    cdef int64_t price_, qty_
    cdef int8_t price_exp, qty_exp
    cdef bint buyer_is_maker       # m: true -> the aggressor sold
    cdef int source_               # SOURCE_STREAM (live) or SOURCE_REST (backfilled)


cdef class BookTicker(Event):
    cdef int64_t update_id_
    cdef int64_t bid_price_, bid_qty_, ask_price_, ask_qty_
    cdef int8_t bid_price_exp, bid_qty_exp, ask_price_exp, ask_qty_exp


cdef class BookDepth(Event):
    # kind BOOK_DELTA (diff) or BOOK_SNAPSHOT (REST, partial stream, fused)
    cdef int64_t update_id_        # u / lastUpdateId
    cdef int64_t first_update_id_  # U, or MT_NA
    cdef int64_t prev_update_id_   # pu (futures), or MT_NA
    cdef int source_               # Source
    # both sides live in ONE allocation, owned through bids_ (asks_ = bids_ +
    # n_bids): one malloc and one free per event; only alloc_levels sets them
    cdef mt_level *bids_           # n_bids entries, exchange order
    cdef mt_level *asks_           # n_asks entries
    cdef readonly Py_ssize_t n_bids
    cdef readonly Py_ssize_t n_asks
    # fused snapshots: the book's verified levels per side (MT_NA otherwise)
    cdef int64_t verified_bids_
    cdef int64_t verified_asks_

    cdef int alloc_levels(self, Py_ssize_t nb, Py_ssize_t na) except -1
    cdef int set_levels(self, const mt_level *bids, Py_ssize_t nb,
                        const mt_level *asks, Py_ssize_t na) except -1


cdef class Kline(Event):
    cdef readonly str interval
    cdef int64_t open_time_, close_time_
    cdef int64_t first_trade_id_, last_trade_id_, trades_
    cdef bint closed_
    # open, high, low, close, volume, quote_volume, taker_buy_volume,
    # taker_buy_quote_volume
    cdef int64_t dm[KLINE_NDEC]
    cdef int8_t de[KLINE_NDEC]


cdef class Ticker(Event):
    cdef readonly str window       # "24h" | "mini" | "1h" | "4h" | "1d"
    # see TICKER_DECIMALS / TICKER_INTS in events.pyx for slot names
    cdef int64_t dm[TICKER_NDEC]
    cdef int8_t de[TICKER_NDEC]
    cdef int64_t iv[TICKER_NINT]


cdef class MarkPrice(Event):
    # mark_price, index_price, settle_price, funding_rate
    cdef int64_t dm[MARK_NDEC]
    cdef int8_t de[MARK_NDEC]
    cdef int64_t next_funding_time_


cdef class Liquidation(Event):
    cdef readonly str side, order_type, time_in_force, status
    # qty, price, avg_price, last_filled_qty, filled_qty
    cdef int64_t dm[LIQ_NDEC]
    cdef int8_t de[LIQ_NDEC]


cdef class Control(Event):
    # gap, resync_started, resync_done, stale, connection_state, gap_filled
    cdef readonly str reason
    cdef readonly str state          # or None
    cdef readonly str connection     # or None
    cdef int64_t from_seq_, to_seq_
    cdef int stale_                  # -1 absent, 0, 1


cdef class Derived(Event):
    # kind DERIVED: values an analytics hook computed from one source event;
    # seq_ = the source's sequence (book update id or trade id)
    cdef readonly str name           # what the values are ("mid", "vwap", ...)
    cdef dict values_                # str name -> plain decimal string (a private copy)

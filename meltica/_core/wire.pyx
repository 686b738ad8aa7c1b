# cython: language_level=3
# distutils: language = c++
"""Events to and from the v1 wire JSON, compiled (see wire.pxd for the contract).

meltica.wire is the public face; ``/tail``, ``replay -o``, ``normalize`` and a
broker publisher call the batch encoder here once per batch.  Encoding writes
the bytes straight from the events' C fields; decoding fills the event classes
from simdjson's parse.  ``Event.to_wire()`` / ``event_from_wire()`` stay the
dict forms for Python users and the reference these functions are tested
against.  Nothing here does I/O or keeps time.
"""

from cpython.object cimport PyObject
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport (
    PyUnicode_AsUTF8AndSize, PyUnicode_Compare, PyUnicode_DecodeUTF8, PyUnicode_GET_LENGTH,
)
from libc.stdint cimport int8_t, int64_t, uint8_t
from libcpp.pair cimport pair
from libcpp.string_view cimport string_view
from libc.string cimport memchr, memcmp, memcpy, strlen
from libcpp.vector cimport vector

from meltica._core.events cimport (
    AGG_TRADE, BOOK_DELTA, BOOK_SNAPSHOT, BOOK_TICKER, CONNECTION_STATE, DERIVED, GAP,
    GAP_FILLED, SOURCE_STREAM,
    KLINE, KLINE_NDEC, LIQ_NDEC, LIQUIDATION, MARK_NDEC, MARK_PRICE, MT_DEC_NA, MT_NA,
    TICKER, TICKER_NDEC, TICKER_NINT, TRADE, BookDepth, BookTicker,
    Control, Derived, Event, Kline, Liquidation, MarkPrice, Ticker, Trade, mt_level,
    mt_parse_fixed,
)

import json

# The parser's import refuses a CPU lacking the build's SIMD kernel with a
# clear message; this module is built for the same kernel.
from meltica._core.parser import FrameParser as _FrameParser
from meltica._core.events import (
    KIND_NAMES, MARKETS, SIDES, SOURCE_NAMES, TICKER_WINDOWS, VENUES, event_from_wire,
)
from meltica.errors import WireError


del _FrameParser  # imported for that check only


cdef extern from "simdjson.h" namespace "simdjson" nogil:
    const size_t SIMDJSON_PADDING


cdef extern from "wire.hpp" namespace "mt" nogil:
    enum:
        WR_OK
    enum:
        WT_ABSENT
        WT_NULL
        WT_INT
        WT_STR
        WT_TRUE
        WT_FALSE
        WT_LEVELS
        WT_VALUES
    enum:
        WF_V
        WF_VENUE
        WF_MARKET
        WF_SYMBOL
        WF_KIND
        WF_SEQ
        WF_TS_EVENT
        WF_TS_TRANSACTION
        WF_TS_RECV
        WF_TRACE
        WF_TRADE_ID
        WF_FIRST_TRADE_ID
        WF_LAST_TRADE_ID
        WF_PRICE
        WF_QTY
        WF_SIDE
        WF_UPDATE_ID
        WF_BID_PRICE
        WF_BID_QTY
        WF_ASK_PRICE
        WF_ASK_QTY
        WF_FIRST_UPDATE_ID
        WF_PREV_UPDATE_ID
        WF_BIDS
        WF_ASKS
        WF_SOURCE
        WF_VERIFIED_BIDS
        WF_VERIFIED_ASKS
        WF_INTERVAL
        WF_OPEN_TIME
        WF_CLOSE_TIME
        WF_OPEN
        WF_HIGH
        WF_LOW
        WF_CLOSE
        WF_VOLUME
        WF_QUOTE_VOLUME
        WF_TAKER_BUY_VOLUME
        WF_TAKER_BUY_QUOTE_VOLUME
        WF_TRADES
        WF_CLOSED
        WF_WINDOW
        WF_LAST_PRICE
        WF_PRICE_CHANGE
        WF_PRICE_CHANGE_PCT
        WF_WEIGHTED_AVG_PRICE
        WF_PREV_CLOSE
        WF_LAST_QTY
        WF_MARK_PRICE
        WF_INDEX_PRICE
        WF_SETTLE_PRICE
        WF_FUNDING_RATE
        WF_NEXT_FUNDING_TIME
        WF_ORDER_TYPE
        WF_TIME_IN_FORCE
        WF_STATUS
        WF_AVG_PRICE
        WF_LAST_FILLED_QTY
        WF_FILLED_QTY
        WF_REASON
        WF_FROM_SEQ
        WF_TO_SEQ
        WF_STALE
        WF_STATE
        WF_CONNECTION
        WF_NAME
        WF_VALUES
    cdef struct WireSlot:
        uint8_t tag
        int64_t i
        string_view s
    cdef cppclass WireReader:
        WireSlot slot[1]                 # indexed by WF_* (declared size is nominal)
        vector[mt_level] bids
        vector[mt_level] asks
        vector[pair[string_view, string_view]] values
        const char *load(const char *data, size_t n) except +
        void shrink(size_t keep) except +
        int read(const char *p, size_t n) except +
    bint wire_plain_decimal(string_view s)


# A batch buffer grown past this is freed after use (memory stays bounded by
# the largest batch in flight, not the largest batch ever seen).
cdef enum:
    KEEP_BYTES = 1 << 20

# Kind names as C strings for the encoder (index = Kind).
cdef const char *KIND_TEXT[17]
KIND_TEXT[:] = [
    b"", b"trade", b"agg_trade", b"book_ticker", b"book_delta", b"book_snapshot",
    b"kline", b"ticker", b"mark_price", b"liquidation", b"gap", b"resync_started",
    b"resync_done", b"stale", b"connection_state", b"derived", b"gap_filled",
]
cdef const char *SOURCE_TEXT[4]
SOURCE_TEXT[:] = [b"stream", b"rest", b"book", b"bbo"]

# Field names of the per-kind decimal slots (events.pxd), as JSON key prefixes.
cdef const char *KLINE_KEYS[KLINE_NDEC]
KLINE_KEYS[:] = [
    b',"open":', b',"high":', b',"low":', b',"close":', b',"volume":',
    b',"quote_volume":', b',"taker_buy_volume":', b',"taker_buy_quote_volume":',
]
cdef const char *TICKER_DEC_KEYS[TICKER_NDEC]
TICKER_DEC_KEYS[:] = [
    b',"last_price":', b',"open":', b',"high":', b',"low":', b',"volume":',
    b',"quote_volume":', b',"price_change":', b',"price_change_pct":',
    b',"weighted_avg_price":', b',"prev_close":', b',"last_qty":', b',"bid_price":',
    b',"bid_qty":', b',"ask_price":', b',"ask_qty":',
]
cdef const char *TICKER_INT_KEYS[TICKER_NINT]
TICKER_INT_KEYS[:] = [
    b',"open_time":', b',"close_time":', b',"first_trade_id":', b',"last_trade_id":',
    b',"trades":',
]
cdef const char *MARK_KEYS[MARK_NDEC]
MARK_KEYS[:] = [b',"mark_price":', b',"index_price":', b',"settle_price":', b',"funding_rate":']
cdef const char *LIQ_KEYS[LIQ_NDEC]
LIQ_KEYS[:] = [
    b',"qty":', b',"price":', b',"avg_price":', b',"last_filled_qty":', b',"filled_qty":',
]


# ---------------------------------------------------------------- encoding

cdef inline int _lit(WireBuf *b, const char *s) except -1:
    b.put(s, strlen(s))
    return 0


cdef inline int _str(WireBuf *b, str s) except -1:
    """A JSON string, or null for None."""
    cdef Py_ssize_t n
    cdef const char *p
    if s is None:
        b.put(b"null", 4)
        return 0
    p = PyUnicode_AsUTF8AndSize(s, &n)  # cached in the str; ASCII: no copy
    b.put_str(p, n)
    return 0


cdef inline int _key_part(WireBuf *b, str s) except -1:
    """One part of the key, escaped (the key is an f-string: None is "None")."""
    cdef Py_ssize_t n
    cdef const char *p
    if s is None:
        b.put(b"None", 4)
    else:
        p = PyUnicode_AsUTF8AndSize(s, &n)
        b.put_escaped(p, n)
    b.put_char(b":")
    return 0


cdef inline int _int_or_null(WireBuf *b, int64_t v) except -1:
    if v == MT_NA:
        b.put(b"null", 4)
    else:
        b.put_i64(v)
    return 0


cdef int _key_rest(WireBuf *b, Event ev, int kind) except -1:
    """The idempotency key after its venue:market:symbol: part, byte for byte
    as Event.key builds it."""
    _lit(b, KIND_TEXT[kind])
    b.put_char(b":")
    if kind == BOOK_SNAPSHOT:
        _lit(b, SOURCE_TEXT[(<BookDepth>ev).source_])
        b.put_char(b":")
    elif type(ev) is Kline:
        _key_part(b, (<Kline>ev).interval)
        b.put_i64((<Kline>ev).open_time_)
        b.put_char(b":")
        if (<Kline>ev).closed_:
            b.put_char(b"x")
        else:
            b.put_i64(ev.ts_event_)
        b.put_char(b'"')
        return 0
    elif type(ev) is Ticker:
        _key_part(b, (<Ticker>ev).window)
    elif type(ev) is Derived:
        _key_part(b, (<Derived>ev).name)
    b.put_i64(ev.seq_)
    b.put_char(b'"')
    return 0


cdef int _fields(WireBuf *b, Event ev, int kind) except -1:
    """The kind's own fields, in to_wire()'s order."""
    cdef int i
    cdef object t = type(ev)
    if t is Trade:
        _lit(b, b',"trade_id":')
        b.put_i64((<Trade>ev).trade_id_)
        if kind == AGG_TRADE:
            _lit(b, b',"first_trade_id":')
            _int_or_null(b, (<Trade>ev).first_trade_id_)
            _lit(b, b',"last_trade_id":')
            _int_or_null(b, (<Trade>ev).last_trade_id_)
        _lit(b, b',"price":')
        b.put_fixed((<Trade>ev).price_, (<Trade>ev).price_exp)
        _lit(b, b',"qty":')
        b.put_fixed((<Trade>ev).qty_, (<Trade>ev).qty_exp)
        _lit(b, b',"side":"sell"' if (<Trade>ev).buyer_is_maker else b',"side":"buy"')
        if (<Trade>ev).source_ != SOURCE_STREAM:
            _lit(b, b',"source":"')
            _lit(b, SOURCE_TEXT[(<Trade>ev).source_])
            _lit(b, b'"')
    elif t is BookTicker:
        _lit(b, b',"update_id":')
        b.put_i64((<BookTicker>ev).update_id_)
        _lit(b, b',"bid_price":')
        b.put_fixed((<BookTicker>ev).bid_price_, (<BookTicker>ev).bid_price_exp)
        _lit(b, b',"bid_qty":')
        b.put_fixed((<BookTicker>ev).bid_qty_, (<BookTicker>ev).bid_qty_exp)
        _lit(b, b',"ask_price":')
        b.put_fixed((<BookTicker>ev).ask_price_, (<BookTicker>ev).ask_price_exp)
        _lit(b, b',"ask_qty":')
        b.put_fixed((<BookTicker>ev).ask_qty_, (<BookTicker>ev).ask_qty_exp)
    elif t is BookDepth:
        _lit(b, b',"update_id":')
        b.put_i64((<BookDepth>ev).update_id_)
        _lit(b, b',"first_update_id":')
        _int_or_null(b, (<BookDepth>ev).first_update_id_)
        _lit(b, b',"prev_update_id":')
        _int_or_null(b, (<BookDepth>ev).prev_update_id_)
        _lit(b, b',"bids":')
        b.put_levels((<BookDepth>ev).bids_, (<BookDepth>ev).n_bids)
        _lit(b, b',"asks":')
        b.put_levels((<BookDepth>ev).asks_, (<BookDepth>ev).n_asks)
        if kind == BOOK_SNAPSHOT:
            _lit(b, b',"source":"')
            _lit(b, SOURCE_TEXT[(<BookDepth>ev).source_])
            _lit(b, b'","verified_bids":')
            _int_or_null(b, (<BookDepth>ev).verified_bids_)
            _lit(b, b',"verified_asks":')
            _int_or_null(b, (<BookDepth>ev).verified_asks_)
    elif t is Kline:
        _lit(b, b',"interval":')
        _str(b, (<Kline>ev).interval)
        _lit(b, b',"open_time":')
        b.put_i64((<Kline>ev).open_time_)
        _lit(b, b',"close_time":')
        b.put_i64((<Kline>ev).close_time_)
        _lit(b, b',"first_trade_id":')
        b.put_i64((<Kline>ev).first_trade_id_)
        _lit(b, b',"last_trade_id":')
        b.put_i64((<Kline>ev).last_trade_id_)
        for i in range(KLINE_NDEC):
            _lit(b, KLINE_KEYS[i])
            b.put_fixed((<Kline>ev).dm[i], (<Kline>ev).de[i])
        _lit(b, b',"trades":')
        b.put_i64((<Kline>ev).trades_)
        _lit(b, b',"closed":true' if (<Kline>ev).closed_ else b',"closed":false')
    elif t is Ticker:
        _lit(b, b',"window":')
        _str(b, (<Ticker>ev).window)
        for i in range(TICKER_NDEC):
            _lit(b, TICKER_DEC_KEYS[i])
            b.put_fixed((<Ticker>ev).dm[i], (<Ticker>ev).de[i])
        for i in range(TICKER_NINT):
            _lit(b, TICKER_INT_KEYS[i])
            _int_or_null(b, (<Ticker>ev).iv[i])
    elif t is MarkPrice:
        for i in range(MARK_NDEC):
            _lit(b, MARK_KEYS[i])
            b.put_fixed((<MarkPrice>ev).dm[i], (<MarkPrice>ev).de[i])
        _lit(b, b',"next_funding_time":')
        _int_or_null(b, (<MarkPrice>ev).next_funding_time_)
    elif t is Liquidation:
        _lit(b, b',"side":')
        _str(b, (<Liquidation>ev).side)
        _lit(b, b',"order_type":')
        _str(b, (<Liquidation>ev).order_type)
        _lit(b, b',"time_in_force":')
        _str(b, (<Liquidation>ev).time_in_force)
        _lit(b, b',"status":')
        _str(b, (<Liquidation>ev).status)
        for i in range(LIQ_NDEC):
            _lit(b, LIQ_KEYS[i])
            b.put_fixed((<Liquidation>ev).dm[i], (<Liquidation>ev).de[i])
    elif t is Control:
        _lit(b, b',"reason":')
        _str(b, (<Control>ev).reason)
        _lit(b, b',"from_seq":')
        _int_or_null(b, (<Control>ev).from_seq_)
        _lit(b, b',"to_seq":')
        _int_or_null(b, (<Control>ev).to_seq_)
        i = (<Control>ev).stale_
        _lit(b, b',"stale":null' if i < 0 else (b',"stale":true' if i else b',"stale":false'))
        _lit(b, b',"state":')
        _str(b, (<Control>ev).state)
        _lit(b, b',"connection":')
        _str(b, (<Control>ev).connection)
    elif t is Derived:
        _lit(b, b',"name":')
        _str(b, (<Derived>ev).name)
        _lit(b, b',"values":{')
        i = 0
        for k, v in (<Derived>ev).values_.items():
            if i:
                b.put_char(b",")
            i = 1
            _str(b, <str>k)
            b.put_char(b":")
            _str(b, <str>v)
        b.put_char(b"}")
    return 0


# The text before the kind name and the key's venue:market:symbol: part,
# remembered for the last few (venue, market, symbol) strings: a batch mostly
# repeats a handful, and both texts depend on nothing else.  An event matches
# a slot by identity or, failing that, equal text; _head_refs holds the
# remembered objects, so no slot pointer can dangle or be reused meanwhile.
cdef enum:
    HEAD_SLOTS = 4
    HEAD_MAX = 240

cdef struct _Head:
    PyObject *venue
    PyObject *market
    PyObject *symbol
    size_t a_len
    size_t b_len
    char a[HEAD_MAX]    # {"v":1,"venue":...,"kind":"
    char b[HEAD_MAX]    # venue:market:symbol:

cdef _Head _heads[HEAD_SLOTS]
cdef list _head_refs = [None] * HEAD_SLOTS
cdef int _head_next = 0


cdef inline bint _same(PyObject *held, str s) noexcept:
    """Whether a remembered string (NULL: none) is s: the same object, or
    equal text (events decoded from JSON each carry their own str objects)."""
    if held == <PyObject *>s:
        return True
    if held == NULL or s is None or <object>held is None:
        return False
    return PyUnicode_GET_LENGTH(s) == PyUnicode_GET_LENGTH(<object>held) and (
        PyUnicode_Compare(<object>held, s) == 0)


cdef inline _Head *_find_head(Event ev) noexcept:
    cdef int i
    for i in range(HEAD_SLOTS):
        if (_same(_heads[i].symbol, ev.symbol) and _same(_heads[i].venue, ev.venue)
                and _same(_heads[i].market, ev.market)):
            return &_heads[i]
    return NULL


cdef int _remember_head(Event ev, const char *a, size_t a_len,
                        const char *b, size_t b_len) except -1:
    global _head_next
    cdef _Head *h
    if a_len > HEAD_MAX or b_len > HEAD_MAX:
        return 0
    h = &_heads[_head_next]
    _head_refs[_head_next] = (ev.venue, ev.market, ev.symbol)  # keeps them alive
    _head_next = (_head_next + 1) % HEAD_SLOTS
    h.venue = <PyObject *>ev.venue
    h.market = <PyObject *>ev.market
    h.symbol = <PyObject *>ev.symbol
    memcpy(h.a, a, a_len)
    h.a_len = a_len
    memcpy(h.b, b, b_len)
    h.b_len = b_len
    return 0


cdef int put_event(WireBuf *out, Event ev) except -1:
    cdef int kind = ev.kind_id
    if type(ev) is Event or not 0 < kind <= GAP_FILLED:
        raise TypeError(f"not a canonical event: {ev!r}")
    if kind == BOOK_SNAPSHOT and not 0 <= (<BookDepth>ev).source_ < 4:
        raise ValueError(f"book snapshot with an unknown source {(<BookDepth>ev).source_}")
    cdef _Head *h = _find_head(ev)
    cdef size_t start, a_end, b_start
    if h != NULL:
        out.put(h.a, h.a_len)
        _lit(out, KIND_TEXT[kind])
        out.put(b'","key":"', 9)
        out.put(h.b, h.b_len)
    else:
        start = out.len
        _lit(out, b'{"v":1,"venue":')
        _str(out, ev.venue)
        _lit(out, b',"market":')
        _str(out, ev.market)
        _lit(out, b',"symbol":')
        _str(out, ev.symbol)
        _lit(out, b',"kind":"')
        a_end = out.len
        _lit(out, KIND_TEXT[kind])
        out.put(b'","key":"', 9)
        b_start = out.len
        _key_part(out, ev.venue)
        _key_part(out, ev.market)
        _key_part(out, ev.symbol)
        _remember_head(ev, out.p + start, a_end - start, out.p + b_start, out.len - b_start)
    _key_rest(out, ev, kind)
    _lit(out, b',"seq":')
    _int_or_null(out, ev.seq_)
    _lit(out, b',"ts_event":')
    _int_or_null(out, ev.ts_event_)
    _lit(out, b',"ts_transaction":')
    _int_or_null(out, ev.ts_transaction_)
    _lit(out, b',"ts_recv":')
    out.put_i64(ev.ts_recv)
    _lit(out, b',"trace":')
    _str(out, ev.trace)
    _fields(out, ev, kind)
    out.put_char(b"}")
    return 0


# One scratch buffer for the module: every call holds the GIL from the first
# byte written to the bytes object returned, and runs no Python code between.
cdef WireBuf _out


cdef inline bytes _take(WireBuf *b):
    data = PyBytes_FromStringAndSize(b.p, b.len)
    b.clear(KEEP_BYTES)
    return data


cdef list _as_list(events):
    if type(events) is list:
        return <list>events
    return list(events)


def encode(Event event not None):
    """One event as a compact JSON object (UTF-8, no trailing newline)."""
    _out.len = 0
    try:
        put_event(&_out, event)
    except BaseException:
        _out.clear(KEEP_BYTES)
        raise
    return _take(&_out)


def encode_lines(events):
    """Events as JSON lines (each object plus a newline) in one bytes object.

    One call per batch: the objects are written into one buffer.
    """
    cdef list evs = _as_list(events)
    cdef object ev
    _out.len = 0
    try:
        for ev in evs:
            if not isinstance(ev, Event):
                raise TypeError(f"not a canonical event: {ev!r}")
            put_event(&_out, <Event>ev)
            _out.put_char(b"\n")
    except BaseException:
        _out.clear(KEEP_BYTES)
        raise
    return _take(&_out)


def encode_each(events):
    """Events as back-to-back JSON objects in one buffer, and where each ends.

    Returns ``(data, ends)``: event ``i`` is ``data[ends[i-1]:ends[i]]``
    (``ends[-1]`` for ``i == 0`` read as 0), the same bytes ``encode`` gives.
    For publishers that send one message per event (slice a memoryview to
    avoid copies).
    """
    cdef list evs = _as_list(events)
    cdef list ends = []
    cdef object ev
    _out.len = 0
    try:
        for ev in evs:
            if not isinstance(ev, Event):
                raise TypeError(f"not a canonical event: {ev!r}")
            put_event(&_out, <Event>ev)
            ends.append(_out.len)
    except BaseException:
        _out.clear(KEEP_BYTES)
        raise
    return _take(&_out), ends


# ---------------------------------------------------------------- decoding

cdef WireReader _rd

# Interned names, so that decoded events share the strings parsed ones use.
cdef tuple _VENUES = VENUES
cdef tuple _MARKETS = MARKETS
cdef tuple _WINDOWS = TICKER_WINDOWS
cdef tuple _SIDES = SIDES
cdef tuple _SOURCES = SOURCE_NAMES
cdef dict _KIND_IDS = {name.encode(): i for i, name in enumerate(KIND_NAMES) if name}


cdef inline str _text(string_view s):
    return PyUnicode_DecodeUTF8(s.data(), s.size(), NULL)


cdef object _pick(string_view s, tuple names):
    """The member of `names` spelled s, or None."""
    cdef str name
    cdef Py_ssize_t n
    cdef const char *p
    for name in names:
        p = PyUnicode_AsUTF8AndSize(name, &n)
        if <size_t>n == s.size() and (n == 0 or memcmp(p, s.data(), n) == 0):
            return name
    return None


# Each reader fills one field from a slot and says whether it held the
# canonical form; a False sends the document to the reference decoder.

cdef inline bint _int(const WireSlot *s, bint optional, int64_t *out) noexcept:
    if s.tag == WT_INT and s.i != MT_NA:
        out[0] = s.i
        return True
    if optional and (s.tag == WT_ABSENT or s.tag == WT_NULL):
        out[0] = MT_NA
        return True
    return False


cdef inline bint _dec(const WireSlot *s, bint optional, int64_t *m, int8_t *e) noexcept:
    cdef int ex
    if s.tag == WT_STR:
        if not mt_parse_fixed(s.s.data(), s.s.size(), m, &ex):
            return False
        e[0] = <int8_t>ex
        return True
    if optional and (s.tag == WT_ABSENT or s.tag == WT_NULL):
        m[0] = 0
        e[0] = MT_DEC_NA
        return True
    return False


cdef inline bint _decs(WireReader *r, const int *fields, int n, bint optional,
                       int64_t *dm, int8_t *de) noexcept:
    cdef int i
    for i in range(n):
        if not _dec(&r.slot[fields[i]], optional, &dm[i], &de[i]):
            return False
    return True


cdef int KLINE_FIELDS[KLINE_NDEC]
KLINE_FIELDS[:] = [WF_OPEN, WF_HIGH, WF_LOW, WF_CLOSE, WF_VOLUME, WF_QUOTE_VOLUME,
                   WF_TAKER_BUY_VOLUME, WF_TAKER_BUY_QUOTE_VOLUME]
cdef int TICKER_DEC_FIELDS[TICKER_NDEC]
TICKER_DEC_FIELDS[:] = [
    WF_LAST_PRICE, WF_OPEN, WF_HIGH, WF_LOW, WF_VOLUME, WF_QUOTE_VOLUME, WF_PRICE_CHANGE,
    WF_PRICE_CHANGE_PCT, WF_WEIGHTED_AVG_PRICE, WF_PREV_CLOSE, WF_LAST_QTY, WF_BID_PRICE,
    WF_BID_QTY, WF_ASK_PRICE, WF_ASK_QTY,
]
cdef int TICKER_INT_FIELDS[TICKER_NINT]
TICKER_INT_FIELDS[:] = [WF_OPEN_TIME, WF_CLOSE_TIME, WF_FIRST_TRADE_ID, WF_LAST_TRADE_ID,
                        WF_TRADES]
cdef int MARK_FIELDS[MARK_NDEC]
MARK_FIELDS[:] = [WF_MARK_PRICE, WF_INDEX_PRICE, WF_SETTLE_PRICE, WF_FUNDING_RATE]
cdef int LIQ_FIELDS[LIQ_NDEC]
LIQ_FIELDS[:] = [WF_QTY, WF_PRICE, WF_AVG_PRICE, WF_LAST_FILLED_QTY, WF_FILLED_QTY]


# What _opt_str returns for a field that is neither a string nor null.
cdef object _NOT_STR = object()


cdef inline object _opt_str(const WireSlot *s):
    """A string or null field (absent reads as null), else _NOT_STR."""
    if s.tag == WT_STR:
        return _text(s.s)
    if s.tag == WT_ABSENT or s.tag == WT_NULL:
        return None
    return _NOT_STR


cdef bint _common(WireReader *r, Event ev, int kind) except -1:
    cdef const WireSlot *s = r.slot
    cdef object trace
    if s[WF_VENUE].tag != WT_STR or s[WF_MARKET].tag != WT_STR or s[WF_SYMBOL].tag != WT_STR:
        return False
    ev.venue = _pick(s[WF_VENUE].s, _VENUES)
    ev.market = _pick(s[WF_MARKET].s, _MARKETS)
    if ev.venue is None or ev.market is None:
        return False
    ev.symbol = _text(s[WF_SYMBOL].s)
    ev.kind_id = kind
    if not (_int(&s[WF_SEQ], True, &ev.seq_) and _int(&s[WF_TS_EVENT], True, &ev.ts_event_)
            and _int(&s[WF_TS_TRANSACTION], True, &ev.ts_transaction_)
            and _int(&s[WF_TS_RECV], False, &ev.ts_recv)):
        return False
    trace = _opt_str(&s[WF_TRACE])
    if trace is _NOT_STR:
        return False
    ev.trace = trace
    return True


cdef object _build(WireReader *r):
    """The event the recorded fields describe, or None for the reference to judge."""
    cdef const WireSlot *s = r.slot
    cdef object kind_obj
    cdef int kind, i
    cdef Trade tr
    cdef BookTicker bt
    cdef BookDepth bd
    cdef Kline kl
    cdef Ticker tk
    cdef MarkPrice mp
    cdef Liquidation lq
    cdef Control ct
    cdef Derived dv
    cdef object a, b, c
    cdef dict values
    cdef pair[string_view, string_view] kv
    if s[WF_V].tag != WT_INT or s[WF_V].i != 1 or s[WF_KIND].tag != WT_STR:
        return None
    kind_obj = _KIND_IDS.get(PyBytes_FromStringAndSize(s[WF_KIND].s.data(), s[WF_KIND].s.size()))
    if kind_obj is None:
        return None
    kind = kind_obj
    if kind == TRADE or kind == AGG_TRADE:
        tr = Trade.__new__(Trade)
        if not _common(r, tr, kind) or not _int(&s[WF_TRADE_ID], False, &tr.trade_id_):
            return None
        if kind == AGG_TRADE:
            if not (_int(&s[WF_FIRST_TRADE_ID], True, &tr.first_trade_id_)
                    and _int(&s[WF_LAST_TRADE_ID], True, &tr.last_trade_id_)):
                return None
        else:
            tr.first_trade_id_ = tr.last_trade_id_ = MT_NA
        if not (_dec(&s[WF_PRICE], False, &tr.price_, &tr.price_exp)
                and _dec(&s[WF_QTY], False, &tr.qty_, &tr.qty_exp)
                and s[WF_SIDE].tag == WT_STR):
            return None
        a = _pick(s[WF_SIDE].s, _SIDES)
        if a is None:
            return None
        tr.buyer_is_maker = a == "sell"
        # ``source`` is present on backfilled trades only ("rest")
        i = s[WF_SOURCE].tag
        if i == WT_STR:
            a = _pick(s[WF_SOURCE].s, _SOURCES)
            if a != "stream" and a != "rest":
                return None
            tr.source_ = _SOURCES.index(a)
        elif i != WT_ABSENT:
            return None
        return tr
    if kind == BOOK_TICKER:
        bt = BookTicker.__new__(BookTicker)
        if not (_common(r, bt, kind) and _int(&s[WF_UPDATE_ID], False, &bt.update_id_)
                and _dec(&s[WF_BID_PRICE], False, &bt.bid_price_, &bt.bid_price_exp)
                and _dec(&s[WF_BID_QTY], False, &bt.bid_qty_, &bt.bid_qty_exp)
                and _dec(&s[WF_ASK_PRICE], False, &bt.ask_price_, &bt.ask_price_exp)
                and _dec(&s[WF_ASK_QTY], False, &bt.ask_qty_, &bt.ask_qty_exp)):
            return None
        return bt
    if kind == BOOK_DELTA or kind == BOOK_SNAPSHOT:
        bd = BookDepth.__new__(BookDepth)
        if not (_common(r, bd, kind) and _int(&s[WF_UPDATE_ID], False, &bd.update_id_)
                and _int(&s[WF_FIRST_UPDATE_ID], True, &bd.first_update_id_)
                and _int(&s[WF_PREV_UPDATE_ID], True, &bd.prev_update_id_)
                and s[WF_BIDS].tag == WT_LEVELS and s[WF_ASKS].tag == WT_LEVELS):
            return None
        if kind == BOOK_SNAPSHOT:
            if s[WF_SOURCE].tag != WT_STR:
                return None
            a = _pick(s[WF_SOURCE].s, _SOURCES)
            if a is None:
                return None
            bd.source_ = _SOURCES.index(a)
            if not (_int(&s[WF_VERIFIED_BIDS], True, &bd.verified_bids_)
                    and _int(&s[WF_VERIFIED_ASKS], True, &bd.verified_asks_)):
                return None
        bd.set_levels(r.bids.data(), r.bids.size(), r.asks.data(), r.asks.size())
        return bd
    if kind == KLINE:
        kl = Kline.__new__(Kline)
        if not (_common(r, kl, kind) and s[WF_INTERVAL].tag == WT_STR
                and _int(&s[WF_OPEN_TIME], False, &kl.open_time_)
                and _int(&s[WF_CLOSE_TIME], False, &kl.close_time_)
                and _int(&s[WF_FIRST_TRADE_ID], False, &kl.first_trade_id_)
                and _int(&s[WF_LAST_TRADE_ID], False, &kl.last_trade_id_)
                and _int(&s[WF_TRADES], False, &kl.trades_)
                and _decs(r, KLINE_FIELDS, KLINE_NDEC, False, kl.dm, kl.de)
                and (s[WF_CLOSED].tag == WT_TRUE or s[WF_CLOSED].tag == WT_FALSE)):
            return None
        kl.interval = _text(s[WF_INTERVAL].s)
        kl.closed_ = s[WF_CLOSED].tag == WT_TRUE
        return kl
    if kind == TICKER:
        tk = Ticker.__new__(Ticker)
        if not (_common(r, tk, kind) and s[WF_WINDOW].tag == WT_STR
                and _decs(r, TICKER_DEC_FIELDS, TICKER_NDEC, True, tk.dm, tk.de)):
            return None
        for i in range(TICKER_NINT):
            if not _int(&s[TICKER_INT_FIELDS[i]], True, &tk.iv[i]):
                return None
        tk.window = _pick(s[WF_WINDOW].s, _WINDOWS)
        return tk if tk.window is not None else None
    if kind == MARK_PRICE:
        mp = MarkPrice.__new__(MarkPrice)
        if not (_common(r, mp, kind)
                and _decs(r, MARK_FIELDS, MARK_NDEC, True, mp.dm, mp.de)
                and _int(&s[WF_NEXT_FUNDING_TIME], True, &mp.next_funding_time_)):
            return None
        return mp
    if kind == LIQUIDATION:
        lq = Liquidation.__new__(Liquidation)
        if not (_common(r, lq, kind) and s[WF_SIDE].tag == WT_STR
                and _decs(r, LIQ_FIELDS, LIQ_NDEC, True, lq.dm, lq.de)):
            return None
        a = _opt_str(&s[WF_ORDER_TYPE])
        b = _opt_str(&s[WF_TIME_IN_FORCE])
        c = _opt_str(&s[WF_STATUS])
        if a is _NOT_STR or b is _NOT_STR or c is _NOT_STR:
            return None
        lq.side = _pick(s[WF_SIDE].s, _SIDES)
        lq.order_type, lq.time_in_force, lq.status = a, b, c
        return lq if lq.side is not None else None
    if GAP <= kind <= CONNECTION_STATE or kind == GAP_FILLED:
        ct = Control.__new__(Control)
        if not (_common(r, ct, kind) and ct.seq_ != MT_NA
                and _int(&s[WF_FROM_SEQ], True, &ct.from_seq_)
                and _int(&s[WF_TO_SEQ], True, &ct.to_seq_)):
            return None
        a = _opt_str(&s[WF_REASON])
        b = _opt_str(&s[WF_STATE])
        c = _opt_str(&s[WF_CONNECTION])
        if a is _NOT_STR or b is _NOT_STR or c is _NOT_STR:
            return None
        i = s[WF_STALE].tag
        if i == WT_ABSENT or i == WT_NULL:
            ct.stale_ = -1
        elif i == WT_TRUE or i == WT_FALSE:
            ct.stale_ = i == WT_TRUE
        else:
            return None
        ct.reason = a or ""
        ct.state, ct.connection = b, c
        return ct
    if kind == DERIVED:
        dv = Derived.__new__(Derived)
        if not (_common(r, dv, kind) and dv.seq_ != MT_NA and s[WF_NAME].tag == WT_STR
                and s[WF_NAME].s.size() > 0 and s[WF_VALUES].tag == WT_VALUES):
            return None
        dv.name = _text(s[WF_NAME].s)
        values = {}
        for kv in r.values:
            if kv.first.size() == 0 or not wire_plain_decimal(kv.second):
                return None
            values[_text(kv.first)] = _text(kv.second)
        dv.values_ = values
        return dv
    return None


# Documents the compiled path handed to the reference (a plain counter: tests
# and benchmarks read it to see that canonical input never takes the slow path).
cdef Py_ssize_t _reference_count = 0


def reference_decodes():
    """How many documents went to the dict-based reference decoder so far."""
    return _reference_count


cdef object _reference_decode(data):
    """The dict path: json.loads + event_from_wire, with their error messages."""
    global _reference_count
    _reference_count += 1
    try:
        obj = json.loads(data)
    except ValueError as exc:
        raise WireError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise WireError("a wire event is a JSON object")
    return event_from_wire(obj)


cdef object _decode_at(const char *p, size_t n):
    if _rd.read(p, n) != WR_OK:
        return None
    return _build(&_rd)


cdef const char *_utf8(object data, Py_ssize_t *n) except? NULL:
    """The bytes of data (bytes or str), or NULL when a str is not encodable."""
    if isinstance(data, bytes):
        n[0] = PyBytes_GET_SIZE(data)
        return PyBytes_AS_STRING(data)
    if isinstance(data, str):
        try:
            return PyUnicode_AsUTF8AndSize(data, n)
        except UnicodeEncodeError:
            return NULL
    return NULL  # bytearray and the like: the reference reads them, or refuses


def decode(data):
    """Rebuild an event from its wire JSON (bytes or str); WireError when it is not one."""
    cdef Py_ssize_t n
    cdef const char *p = _utf8(data, &n)
    cdef object ev = None
    if p != NULL:
        ev = _decode_at(_rd.load(p, n), n)
        if n > KEEP_BYTES:
            _rd.shrink(KEEP_BYTES)
    if ev is None:
        ev = _reference_decode(data)
    return ev


def decode_lines(data):
    """Events of JSON lines (bytes or str); blank lines are skipped.

    WireError names the 1-based line of the first bad one.
    """
    cdef Py_ssize_t n, start = 0, end, line = 0, a, b
    cdef const char *src
    cdef const char *p
    cdef const char *nl
    cdef list out = []
    cdef object ev
    if not isinstance(data, (bytes, str)):
        data = bytes(data)
    src = _utf8(data, &n)
    if src == NULL:
        # a str with a lone surrogate: only the reference can say what it holds
        return [_line_reference(text, i + 1) for i, text in enumerate(data.split("\n"))
                if text.strip()]
    p = _rd.load(src, n)
    while start < n:
        line += 1
        nl = <const char *>memchr(p + start, b"\n", n - start)
        end = n if nl == NULL else nl - p
        a, b = start, end
        while a < b and p[a] in b" \t\r":
            a += 1
        while b > a and p[b - 1] in b" \t\r":
            b -= 1
        if a < b:
            ev = _decode_at(p + a, b - a)
            if ev is None:
                ev = _line_reference(src[a:b], line)
            out.append(ev)
        start = end + 1
    if n > KEEP_BYTES:
        _rd.shrink(KEEP_BYTES)
    return out


cdef object _line_reference(text, Py_ssize_t line):
    try:
        return _reference_decode(text)
    except WireError as exc:
        raise WireError(f"line {line}: {exc}") from None

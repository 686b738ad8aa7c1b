# cython: language_level=3
"""Canonical event classes (see events.pxd for the layout).

The parser fills these from C; Python code reads them through properties and
turns them into the versioned wire format with ``to_wire()`` /
``event_from_wire()``.  Nothing here does I/O or keeps time.
"""

cimport cython
from cpython.unicode cimport PyUnicode_DecodeASCII
from libc.stdint cimport INT64_MAX, INT64_MIN, int64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

from decimal import Decimal
from types import MappingProxyType

from meltica.errors import AnalyticsError, NumberError, WireError

WIRE_VERSION = 1

KIND_NAMES = (
    None, "trade", "agg_trade", "book_ticker", "book_delta", "book_snapshot",
    "kline", "ticker", "mark_price", "liquidation", "gap", "resync_started",
    "resync_done", "stale", "connection_state", "derived", "gap_filled",
)
KIND_IDS = {name: i for i, name in enumerate(KIND_NAMES) if name}
SOURCE_NAMES = ("stream", "rest", "book", "bbo")
VENUES = ("binance", "binance_us")
MARKETS = ("spot", "usdm", "coinm")
TICKER_WINDOWS = ("24h", "mini", "1h", "4h", "1d")
SIDES = ("buy", "sell")

KLINE_DECIMALS = (
    "open", "high", "low", "close", "volume", "quote_volume",
    "taker_buy_volume", "taker_buy_quote_volume",
)
TICKER_DECIMALS = (
    "last_price", "open", "high", "low", "volume", "quote_volume",
    "price_change", "price_change_pct", "weighted_avg_price", "prev_close",
    "last_qty", "bid_price", "bid_qty", "ask_price", "ask_qty",
)
TICKER_INTS = ("open_time", "close_time", "first_trade_id", "last_trade_id", "trades")
# Ticker int slots holding times (ns); the others are counts / ids.
TICKER_TIME_SLOTS = (0, 1)
MARK_DECIMALS = ("mark_price", "index_price", "settle_price", "funding_rate")
LIQ_DECIMALS = ("qty", "price", "avg_price", "last_filled_qty", "filled_qty")


# ---------------------------------------------------------------- Fixed

@cython.final
@cython.freelist(64)
cdef class Fixed:
    """An exact decimal value, ``mantissa * 10**exponent``.

    ``str()`` gives the exchange's own decimal text; ``float()`` and
    ``.decimal`` are views for Python users.  Comparison with other Fixed,
    int or Decimal values is exact.
    """

    def __init__(self, value):
        cdef int64_t m
        cdef int e
        if isinstance(value, Fixed):
            m, e = (<Fixed>value).mantissa, (<Fixed>value).exponent
        else:
            m, e = parse_fixed_text(str(value))
        self.mantissa = m
        self.exponent = e

    @property
    def decimal(self):
        return Decimal(fixed_str(self.mantissa, self.exponent))

    def __float__(self):
        return float(fixed_str(self.mantissa, self.exponent))

    def __str__(self):
        return fixed_str(self.mantissa, self.exponent)

    def __repr__(self):
        return f"Fixed('{fixed_str(self.mantissa, self.exponent)}')"

    def __eq__(self, other):
        if isinstance(other, Fixed):
            return self.decimal == (<Fixed>other).decimal
        if isinstance(other, (int, Decimal)):
            return self.decimal == other
        return NotImplemented

    def __hash__(self):
        # equal values hash equally, whatever the exponent
        return hash(self.decimal)

    def __reduce__(self):
        return (Fixed, (str(self),))


cdef Fixed fixed_new(int64_t m, int e):
    cdef Fixed f = Fixed.__new__(Fixed)
    f.mantissa = m
    f.exponent = e
    return f


cdef object fixed_or_none(int64_t m, int e):
    if e == MT_DEC_NA:
        return None
    return fixed_new(m, e)


cdef object fixed_str(int64_t m, int e):
    cdef char buf[128]
    cdef size_t n
    if e == MT_DEC_NA:
        return None
    n = mt_format_fixed(m, e, buf)
    return PyUnicode_DecodeASCII(buf, n, NULL)


def parse_fixed_text(str text):
    """Parse a plain decimal string into ``(mantissa, exponent)``, exactly.

    Raises NumberError for anything that is not ``-?digits(.digits)?`` or
    does not fit int64 after dropping trailing fractional zeros.
    """
    cdef bytes b = text.encode("ascii", "replace")
    cdef int64_t m = 0
    cdef int e = 0
    if not mt_parse_fixed(b, len(b), &m, &e):
        raise NumberError(f"not an exact int64 decimal: {text!r}")
    return m, e


# ---------------------------------------------------------------- helpers

cdef inline bint _is_control(int kind_id):
    return GAP <= kind_id <= CONNECTION_STATE or kind_id == GAP_FILLED


cdef inline object _int_or_none(int64_t v):
    return None if v == MT_NA else v


cdef int64_t _wire_int(dict d, str name, bint optional=False) except? -1:
    v = d.get(name)
    if v is None:
        if optional:
            return MT_NA
        raise WireError(f"wire event lacks {name!r}")
    if type(v) is not int or v > INT64_MAX or v <= INT64_MIN:
        raise WireError(f"wire field {name!r} is not an int64: {v!r}")
    return v


cdef int _wire_dec(dict d, str name, int64_t *m, bint optional=False) except 1000:
    """Read a decimal-string field; returns the exponent (MT_DEC_NA if absent)."""
    v = d.get(name)
    if v is None:
        if optional:
            m[0] = 0
            return MT_DEC_NA
        raise WireError(f"wire event lacks {name!r}")
    if not isinstance(v, str):
        raise WireError(f"wire field {name!r} must be a decimal string, got {v!r}")
    try:
        mm, ee = parse_fixed_text(v)
    except NumberError as exc:
        raise WireError(f"wire field {name!r}: {exc}") from None
    m[0] = mm
    return ee


cdef str _wire_str(dict d, str name, tuple allowed=None):
    v = d.get(name)
    if not isinstance(v, str):
        raise WireError(f"wire field {name!r} must be a string, got {v!r}")
    if allowed is not None and v not in allowed:
        raise WireError(f"wire field {name!r} must be one of {allowed}, got {v!r}")
    return v


cdef str _wire_opt_str(dict d, str name):
    v = d.get(name)
    if v is not None and not isinstance(v, str):
        raise WireError(f"wire field {name!r} must be a string or null, got {v!r}")
    return v


cdef list _levels_to_wire(const mt_level *lv, Py_ssize_t n):
    cdef Py_ssize_t i
    return [[fixed_str(lv[i].price, lv[i].price_exp),
             fixed_str(lv[i].qty, lv[i].qty_exp)] for i in range(n)]


cdef list _levels_to_py(const mt_level *lv, Py_ssize_t n):
    cdef Py_ssize_t i
    return [(fixed_new(lv[i].price, lv[i].price_exp),
             fixed_new(lv[i].qty, lv[i].qty_exp)) for i in range(n)]


cdef mt_level *_levels_from_wire(object rows, str name, Py_ssize_t *n) except NULL:
    cdef Py_ssize_t i, count
    cdef mt_level *out
    cdef int64_t m
    cdef dict tmp
    if not isinstance(rows, list):
        raise WireError(f"wire field {name!r} must be a list of [price, qty]")
    count = len(rows)
    out = <mt_level *>malloc(sizeof(mt_level) * (count if count else 1))
    if out == NULL:
        raise MemoryError()
    try:
        for i in range(count):
            row = rows[i]
            if not isinstance(row, list) or len(row) != 2:
                raise WireError(f"wire field {name!r}[{i}] must be [price, qty]")
            tmp = {"p": row[0], "q": row[1]}
            out[i].price_exp = <int8_t>_wire_dec(tmp, "p", &m)
            out[i].price = m
            out[i].qty_exp = <int8_t>_wire_dec(tmp, "q", &m)
            out[i].qty = m
    except BaseException:
        free(out)
        raise
    n[0] = count
    return out


# ---------------------------------------------------------------- events

@cython.no_gc
cdef class Event:
    """Base of every canonical event.  Not instantiated directly."""

    def __cinit__(self):
        self.seq_ = MT_NA
        self.ts_event_ = MT_NA
        self.ts_transaction_ = MT_NA
        self.ts_recv = 0

    @property
    def kind(self):
        return KIND_NAMES[self.kind_id]

    @property
    def seq(self):
        return _int_or_none(self.seq_)

    @property
    def ts_event(self):
        return _int_or_none(self.ts_event_)

    @property
    def ts_transaction(self):
        return _int_or_none(self.ts_transaction_)

    @property
    def key(self):
        """Stable idempotency key (docs/wire-format.md, "Keys")."""
        kind = KIND_NAMES[self.kind_id]
        return f"{self.venue}:{self.market}:{self.symbol}:{kind}:{self._key_tail()}"

    cdef str _key_tail(self):
        return str(self.seq_)

    cdef void _wire_fields(self, dict d):
        pass

    def to_wire(self):
        """The wire-format dict of this event (docs/wire-format.md)."""
        cdef dict d = {
            "v": WIRE_VERSION,
            "venue": self.venue,
            "market": self.market,
            "symbol": self.symbol,
            "kind": KIND_NAMES[self.kind_id],
            "key": self.key,
            "seq": _int_or_none(self.seq_),
            "ts_event": _int_or_none(self.ts_event_),
            "ts_transaction": _int_or_none(self.ts_transaction_),
            "ts_recv": self.ts_recv,
            "trace": self.trace,
        }
        self._wire_fields(d)
        return d

    def __repr__(self):
        return f"<{type(self).__name__} {self.key}>"

    cdef _load_common(self, dict d, int kind_id):
        self.venue = _wire_str(d, "venue", VENUES)
        self.market = _wire_str(d, "market", MARKETS)
        self.symbol = _wire_str(d, "symbol")
        self.kind_id = kind_id
        self.seq_ = _wire_int(d, "seq", True)
        self.ts_event_ = _wire_int(d, "ts_event", True)
        self.ts_transaction_ = _wire_int(d, "ts_transaction", True)
        self.ts_recv = _wire_int(d, "ts_recv")
        self.trace = _wire_opt_str(d, "trace")


@cython.final
@cython.no_gc
cdef class Trade(Event):
    """A trade (``trade``) or aggregated trade (``agg_trade``)."""

    @property
    def trade_id(self):
        return self.trade_id_

    @property
    def first_trade_id(self):
        return _int_or_none(self.first_trade_id_)

    @property
    def last_trade_id(self):
        return _int_or_none(self.last_trade_id_)

    @property
    def price(self):
        return fixed_new(self.price_, self.price_exp)

    @property
    def qty(self):
        return fixed_new(self.qty_, self.qty_exp)

    @property
    def side(self):
        """Aggressor side: the buyer was the maker, so the taker sold."""
        return "sell" if self.buyer_is_maker else "buy"

    @property
    def source(self):
        """``stream`` (live) or ``rest`` (backfilled by id after a gap)."""
        return SOURCE_NAMES[self.source_]

    cdef void _wire_fields(self, dict d):
        d["trade_id"] = self.trade_id_
        if self.kind_id == AGG_TRADE:
            d["first_trade_id"] = _int_or_none(self.first_trade_id_)
            d["last_trade_id"] = _int_or_none(self.last_trade_id_)
        d["price"] = fixed_str(self.price_, self.price_exp)
        d["qty"] = fixed_str(self.qty_, self.qty_exp)
        d["side"] = "sell" if self.buyer_is_maker else "buy"
        if self.source_ != SOURCE_STREAM:
            # absent on live trades (the common case keeps its bytes)
            d["source"] = SOURCE_NAMES[self.source_]

    @staticmethod
    def _from_wire(dict d, int kind_id):
        cdef Trade ev = Trade.__new__(Trade)
        ev._load_common(d, kind_id)
        ev.trade_id_ = _wire_int(d, "trade_id")
        if kind_id == AGG_TRADE:
            ev.first_trade_id_ = _wire_int(d, "first_trade_id", True)
            ev.last_trade_id_ = _wire_int(d, "last_trade_id", True)
        else:
            ev.first_trade_id_ = ev.last_trade_id_ = MT_NA
        ev.price_exp = <int8_t>_wire_dec(d, "price", &ev.price_)
        ev.qty_exp = <int8_t>_wire_dec(d, "qty", &ev.qty_)
        side = d.get("side")
        if side not in ("buy", "sell"):
            raise WireError(f"wire field 'side' must be 'buy' or 'sell', got {side!r}")
        ev.buyer_is_maker = side == "sell"
        source = d.get("source", "stream")
        if source not in ("stream", "rest"):
            raise WireError(f"wire field 'source' of a trade must be 'stream' or 'rest', "
                            f"got {source!r}")
        ev.source_ = SOURCE_NAMES.index(source)
        return ev


@cython.final
@cython.no_gc
cdef class BookTicker(Event):
    """The exchange's best bid and offer at ``update_id``."""

    @property
    def update_id(self):
        return self.update_id_

    @property
    def bid_price(self):
        return fixed_new(self.bid_price_, self.bid_price_exp)

    @property
    def bid_qty(self):
        return fixed_new(self.bid_qty_, self.bid_qty_exp)

    @property
    def ask_price(self):
        return fixed_new(self.ask_price_, self.ask_price_exp)

    @property
    def ask_qty(self):
        return fixed_new(self.ask_qty_, self.ask_qty_exp)

    cdef void _wire_fields(self, dict d):
        d["update_id"] = self.update_id_
        d["bid_price"] = fixed_str(self.bid_price_, self.bid_price_exp)
        d["bid_qty"] = fixed_str(self.bid_qty_, self.bid_qty_exp)
        d["ask_price"] = fixed_str(self.ask_price_, self.ask_price_exp)
        d["ask_qty"] = fixed_str(self.ask_qty_, self.ask_qty_exp)

    @staticmethod
    def _from_wire(dict d, int kind_id):
        cdef BookTicker ev = BookTicker.__new__(BookTicker)
        ev._load_common(d, kind_id)
        ev.update_id_ = _wire_int(d, "update_id")
        ev.bid_price_exp = <int8_t>_wire_dec(d, "bid_price", &ev.bid_price_)
        ev.bid_qty_exp = <int8_t>_wire_dec(d, "bid_qty", &ev.bid_qty_)
        ev.ask_price_exp = <int8_t>_wire_dec(d, "ask_price", &ev.ask_price_)
        ev.ask_qty_exp = <int8_t>_wire_dec(d, "ask_qty", &ev.ask_qty_)
        return ev


@cython.final
@cython.no_gc
cdef class BookDepth(Event):
    """Depth levels: a diff (``book_delta``) or a snapshot (``book_snapshot``).

    The levels stay in a C buffer; ``bids``/``asks`` build Python tuples of
    Fixed only when asked.
    """

    def __cinit__(self):
        self.bids_ = NULL
        self.asks_ = NULL
        self.n_bids = 0
        self.n_asks = 0
        self.verified_bids_ = self.verified_asks_ = MT_NA

    def __dealloc__(self):
        free(self.bids_)  # asks_ lives in the same block

    cdef int alloc_levels(self, Py_ssize_t nb, Py_ssize_t na) except -1:
        """Room for nb bids and na asks (contents undefined), in one block."""
        free(self.bids_)
        self.bids_ = self.asks_ = NULL
        self.n_bids = self.n_asks = 0
        # malloc(0) is avoided so that NULL means failure
        self.bids_ = <mt_level *>malloc(sizeof(mt_level) * (nb + na if nb + na else 1))
        if self.bids_ == NULL:
            raise MemoryError()
        self.asks_ = self.bids_ + nb
        self.n_bids = nb
        self.n_asks = na
        return 0

    cdef int set_levels(self, const mt_level *bids, Py_ssize_t nb,
                        const mt_level *asks, Py_ssize_t na) except -1:
        self.alloc_levels(nb, na)
        if nb:
            memcpy(self.bids_, bids, sizeof(mt_level) * nb)
        if na:
            memcpy(self.asks_, asks, sizeof(mt_level) * na)
        return 0

    @property
    def update_id(self):
        return self.update_id_

    @property
    def first_update_id(self):
        return _int_or_none(self.first_update_id_)

    @property
    def prev_update_id(self):
        return _int_or_none(self.prev_update_id_)

    @property
    def source(self):
        return SOURCE_NAMES[self.source_]

    @property
    def verified_bids(self):
        """Fused snapshots: how many of the book's best bids are verified (else None)."""
        return _int_or_none(self.verified_bids_)

    @property
    def verified_asks(self):
        """Fused snapshots: how many of the book's best asks are verified (else None)."""
        return _int_or_none(self.verified_asks_)

    @property
    def bids(self):
        return _levels_to_py(self.bids_, self.n_bids)

    @property
    def asks(self):
        return _levels_to_py(self.asks_, self.n_asks)

    cdef str _key_tail(self):
        if self.kind_id == BOOK_SNAPSHOT:
            return f"{SOURCE_NAMES[self.source_]}:{self.seq_}"
        return str(self.seq_)

    cdef void _wire_fields(self, dict d):
        d["update_id"] = self.update_id_
        d["first_update_id"] = _int_or_none(self.first_update_id_)
        d["prev_update_id"] = _int_or_none(self.prev_update_id_)
        d["bids"] = _levels_to_wire(self.bids_, self.n_bids)
        d["asks"] = _levels_to_wire(self.asks_, self.n_asks)
        if self.kind_id == BOOK_SNAPSHOT:
            d["source"] = SOURCE_NAMES[self.source_]
            d["verified_bids"] = _int_or_none(self.verified_bids_)
            d["verified_asks"] = _int_or_none(self.verified_asks_)

    @staticmethod
    def _from_wire(dict d, int kind_id):
        cdef BookDepth ev = BookDepth.__new__(BookDepth)
        cdef Py_ssize_t nb, na
        cdef mt_level *bids
        cdef mt_level *asks
        ev._load_common(d, kind_id)
        ev.update_id_ = _wire_int(d, "update_id")
        ev.first_update_id_ = _wire_int(d, "first_update_id", True)
        ev.prev_update_id_ = _wire_int(d, "prev_update_id", True)
        if kind_id == BOOK_SNAPSHOT:
            source = d.get("source")
            if source not in SOURCE_NAMES:
                raise WireError(f"wire field 'source' must be one of {SOURCE_NAMES}")
            ev.source_ = SOURCE_NAMES.index(source)
            ev.verified_bids_ = _wire_int(d, "verified_bids", True)
            ev.verified_asks_ = _wire_int(d, "verified_asks", True)
        bids = _levels_from_wire(d.get("bids"), "bids", &nb)
        try:
            asks = _levels_from_wire(d.get("asks"), "asks", &na)
            try:
                ev.set_levels(bids, nb, asks, na)
            finally:
                free(asks)
        finally:
            free(bids)
        return ev


@cython.final
@cython.no_gc
cdef class Kline(Event):
    """A candlestick update; ``closed`` marks the final one of its interval."""

    @property
    def open_time(self):
        return self.open_time_

    @property
    def close_time(self):
        return self.close_time_

    @property
    def first_trade_id(self):
        return self.first_trade_id_

    @property
    def last_trade_id(self):
        return self.last_trade_id_

    @property
    def trades(self):
        return self.trades_

    @property
    def closed(self):
        return self.closed_

    @property
    def open(self):
        return fixed_or_none(self.dm[0], self.de[0])

    @property
    def high(self):
        return fixed_or_none(self.dm[1], self.de[1])

    @property
    def low(self):
        return fixed_or_none(self.dm[2], self.de[2])

    @property
    def close(self):
        return fixed_or_none(self.dm[3], self.de[3])

    @property
    def volume(self):
        return fixed_or_none(self.dm[4], self.de[4])

    @property
    def quote_volume(self):
        return fixed_or_none(self.dm[5], self.de[5])

    @property
    def taker_buy_volume(self):
        return fixed_or_none(self.dm[6], self.de[6])

    @property
    def taker_buy_quote_volume(self):
        return fixed_or_none(self.dm[7], self.de[7])

    cdef str _key_tail(self):
        if self.closed_:
            return f"{self.interval}:{self.open_time_}:x"
        return f"{self.interval}:{self.open_time_}:{self.ts_event_}"

    cdef void _wire_fields(self, dict d):
        cdef int i
        d["interval"] = self.interval
        d["open_time"] = self.open_time_
        d["close_time"] = self.close_time_
        d["first_trade_id"] = self.first_trade_id_
        d["last_trade_id"] = self.last_trade_id_
        for i in range(KLINE_NDEC):
            d[KLINE_DECIMALS[i]] = fixed_str(self.dm[i], self.de[i])
        d["trades"] = self.trades_
        d["closed"] = bool(self.closed_)

    @staticmethod
    def _from_wire(dict d, int kind_id):
        cdef Kline ev = Kline.__new__(Kline)
        cdef int i
        ev._load_common(d, kind_id)
        ev.interval = _wire_str(d, "interval")
        ev.open_time_ = _wire_int(d, "open_time")
        ev.close_time_ = _wire_int(d, "close_time")
        ev.first_trade_id_ = _wire_int(d, "first_trade_id")
        ev.last_trade_id_ = _wire_int(d, "last_trade_id")
        ev.trades_ = _wire_int(d, "trades")
        for i in range(KLINE_NDEC):
            ev.de[i] = <int8_t>_wire_dec(d, KLINE_DECIMALS[i], &ev.dm[i])
        closed = d.get("closed")
        if type(closed) is not bool:
            raise WireError("wire field 'closed' must be a boolean")
        ev.closed_ = closed
        return ev


@cython.final
@cython.no_gc
cdef class Ticker(Event):
    """A rolling-window ticker (24 h, mini, 1h/4h/1d); absent fields are None."""

    def __getattr__(self, name):
        # Slot-backed fields (TICKER_DECIMALS / TICKER_INTS) by name.
        cdef int i
        if name in TICKER_DECIMALS:
            i = TICKER_DECIMALS.index(name)
            return fixed_or_none(self.dm[i], self.de[i])
        if name in TICKER_INTS:
            return _int_or_none(self.iv[TICKER_INTS.index(name)])
        raise AttributeError(name)

    cdef str _key_tail(self):
        return f"{self.window}:{self.seq_}"

    cdef void _wire_fields(self, dict d):
        cdef int i
        d["window"] = self.window
        for i in range(TICKER_NDEC):
            d[TICKER_DECIMALS[i]] = fixed_str(self.dm[i], self.de[i])
        for i in range(TICKER_NINT):
            d[TICKER_INTS[i]] = _int_or_none(self.iv[i])

    @staticmethod
    def _from_wire(dict d, int kind_id):
        cdef Ticker ev = Ticker.__new__(Ticker)
        cdef int i
        ev._load_common(d, kind_id)
        ev.window = _wire_str(d, "window", TICKER_WINDOWS)
        for i in range(TICKER_NDEC):
            ev.de[i] = <int8_t>_wire_dec(d, TICKER_DECIMALS[i], &ev.dm[i], True)
        for i in range(TICKER_NINT):
            ev.iv[i] = _wire_int(d, TICKER_INTS[i], True)
        return ev


@cython.final
@cython.no_gc
cdef class MarkPrice(Event):
    """Futures mark price, index price, estimated settle price and funding."""

    @property
    def mark_price(self):
        return fixed_or_none(self.dm[0], self.de[0])

    @property
    def index_price(self):
        return fixed_or_none(self.dm[1], self.de[1])

    @property
    def settle_price(self):
        return fixed_or_none(self.dm[2], self.de[2])

    @property
    def funding_rate(self):
        return fixed_or_none(self.dm[3], self.de[3])

    @property
    def next_funding_time(self):
        return _int_or_none(self.next_funding_time_)

    cdef void _wire_fields(self, dict d):
        cdef int i
        for i in range(MARK_NDEC):
            d[MARK_DECIMALS[i]] = fixed_str(self.dm[i], self.de[i])
        d["next_funding_time"] = _int_or_none(self.next_funding_time_)

    @staticmethod
    def _from_wire(dict d, int kind_id):
        cdef MarkPrice ev = MarkPrice.__new__(MarkPrice)
        cdef int i
        ev._load_common(d, kind_id)
        for i in range(MARK_NDEC):
            ev.de[i] = <int8_t>_wire_dec(d, MARK_DECIMALS[i], &ev.dm[i], True)
        ev.next_funding_time_ = _wire_int(d, "next_funding_time", True)
        return ev


@cython.final
@cython.no_gc
cdef class Liquidation(Event):
    """A futures liquidation order (the latest per symbol per second)."""

    @property
    def qty(self):
        return fixed_or_none(self.dm[0], self.de[0])

    @property
    def price(self):
        return fixed_or_none(self.dm[1], self.de[1])

    @property
    def avg_price(self):
        return fixed_or_none(self.dm[2], self.de[2])

    @property
    def last_filled_qty(self):
        return fixed_or_none(self.dm[3], self.de[3])

    @property
    def filled_qty(self):
        return fixed_or_none(self.dm[4], self.de[4])

    cdef void _wire_fields(self, dict d):
        cdef int i
        d["side"] = self.side
        d["order_type"] = self.order_type
        d["time_in_force"] = self.time_in_force
        d["status"] = self.status
        for i in range(LIQ_NDEC):
            d[LIQ_DECIMALS[i]] = fixed_str(self.dm[i], self.de[i])

    @staticmethod
    def _from_wire(dict d, int kind_id):
        cdef Liquidation ev = Liquidation.__new__(Liquidation)
        cdef int i
        ev._load_common(d, kind_id)
        ev.side = _wire_str(d, "side", SIDES)
        ev.order_type = _wire_opt_str(d, "order_type")
        ev.time_in_force = _wire_opt_str(d, "time_in_force")
        ev.status = _wire_opt_str(d, "status")
        for i in range(LIQ_NDEC):
            ev.de[i] = <int8_t>_wire_dec(d, LIQ_DECIMALS[i], &ev.dm[i], True)
        return ev


@cython.final
@cython.no_gc
cdef class Control(Event):
    """A control event made by Meltica: gap, resync_*, stale, connection_state."""

    def __init__(self, str kind, *, str venue, str market, str symbol, int64_t seq,
                 int64_t ts_recv, str reason="", from_seq=None, to_seq=None,
                 stale=None, state=None, connection=None):
        if kind not in KIND_IDS or not _is_control(KIND_IDS[kind]):
            raise ValueError(f"not a control kind: {kind!r}")
        self.kind_id = KIND_IDS[kind]
        self.venue, self.market, self.symbol = venue, market, symbol
        self.seq_ = seq
        self.ts_recv = ts_recv
        self.reason = reason
        self.from_seq_ = MT_NA if from_seq is None else from_seq
        self.to_seq_ = MT_NA if to_seq is None else to_seq
        self.stale_ = -1 if stale is None else (1 if stale else 0)
        self.state = state
        self.connection = connection

    @property
    def from_seq(self):
        return _int_or_none(self.from_seq_)

    @property
    def to_seq(self):
        return _int_or_none(self.to_seq_)

    @property
    def stale(self):
        return None if self.stale_ < 0 else bool(self.stale_)

    cdef void _wire_fields(self, dict d):
        d["reason"] = self.reason
        d["from_seq"] = _int_or_none(self.from_seq_)
        d["to_seq"] = _int_or_none(self.to_seq_)
        d["stale"] = None if self.stale_ < 0 else bool(self.stale_)
        d["state"] = self.state
        d["connection"] = self.connection

    @staticmethod
    def _from_wire(dict d, int kind_id):
        cdef Control ev = Control.__new__(Control)
        ev._load_common(d, kind_id)
        if ev.seq_ == MT_NA:
            raise WireError("wire event lacks 'seq'")
        ev.reason = _wire_opt_str(d, "reason") or ""
        ev.from_seq_ = _wire_int(d, "from_seq", True)
        ev.to_seq_ = _wire_int(d, "to_seq", True)
        stale = d.get("stale")
        if stale is not None and type(stale) is not bool:
            raise WireError("wire field 'stale' must be a boolean or null")
        ev.stale_ = -1 if stale is None else (1 if stale else 0)
        ev.state = _wire_opt_str(d, "state")
        ev.connection = _wire_opt_str(d, "connection")
        return ev


cdef bint _is_plain_decimal(str s):
    """``-?digits(.digits)?``: the wire format's decimal text (any length)."""
    cdef Py_ssize_t i = 0, start, n = len(s)
    if n and s[0] == "-":
        i = 1
    start = i
    while i < n and "0" <= s[i] <= "9":
        i += 1
    if i == start:
        return False
    if i == n:
        return True
    if s[i] != ".":
        return False
    i += 1
    start = i
    while i < n and "0" <= s[i] <= "9":
        i += 1
    return i == n and i > start


cdef dict _derived_values(object values):
    """A private copy of `values` as str -> plain decimal string.

    Decimal and int values are written in plain notation; floats are refused
    (they are not exact); anything else raises AnalyticsError.
    """
    cdef dict out = {}
    if values is None:
        return out
    if not hasattr(values, "items"):
        raise AnalyticsError(f"derived values must be a mapping, got {type(values).__name__}")
    for k, v in values.items():
        if not isinstance(k, str) or not k:
            raise AnalyticsError(f"derived value names must be non-empty strings, got {k!r}")
        if isinstance(v, Decimal):
            if not v.is_finite():
                raise AnalyticsError(f"derived value {k!r} is not finite: {v}")
            v = format(v, "f")
        elif isinstance(v, int) and not isinstance(v, bool):
            v = str(v)
        elif not isinstance(v, str):
            raise AnalyticsError(
                f"derived value {k!r} must be a decimal string, Decimal or int, "
                f"got {type(v).__name__}")
        if not _is_plain_decimal(v):
            raise AnalyticsError(f"derived value {k!r} is not a plain decimal: {v!r}")
        out[k] = v
    return out


cdef int64_t _derived_int(str field, object v, bint optional=False) except? -1:
    if v is None and optional:
        return MT_NA
    if type(v) is not int or v > INT64_MAX or v <= INT64_MIN:
        raise AnalyticsError(f"derived {field} must be an int64, got {v!r}")
    return v


@cython.final
@cython.no_gc
cdef class Derived(Event):
    """Values an analytics hook derived from one source event (kind ``derived``).

    ``name`` says what they are (the hook's name: ``"mid"``, ``"vwap"``...);
    ``seq`` is the source event's sequence (book update id or trade id), so the
    key ``venue:market:symbol:derived:<name>:<seq>`` is the same on every
    replay and never collides with an exchange, fused or control event's key.
    ``values`` maps value names to decimal strings (never floats); Decimal and
    int values are written in plain notation.  Invalid fields raise
    AnalyticsError.  See docs/conductor.md, "Analytics hooks".
    """

    def __init__(self, str venue, str market, str symbol, str name, seq, ts_event, ts_recv,
                 values=None):
        if venue not in VENUES:
            raise AnalyticsError(f"derived venue must be one of {VENUES}, got {venue!r}")
        if market not in MARKETS:
            raise AnalyticsError(f"derived market must be one of {MARKETS}, got {market!r}")
        if not symbol:
            raise AnalyticsError("derived symbol must be a non-empty string")
        if not name:
            raise AnalyticsError("derived name must be a non-empty string")
        self.kind_id = DERIVED
        self.venue, self.market, self.symbol, self.name = venue, market, symbol, name
        self.seq_ = _derived_int("seq", seq)
        self.ts_event_ = _derived_int("ts_event", ts_event, True)
        self.ts_recv = _derived_int("ts_recv", ts_recv)
        self.values_ = _derived_values(values)

    @property
    def values(self):
        """Value name -> decimal string (read-only)."""
        return MappingProxyType(self.values_)

    cdef str _key_tail(self):
        return f"{self.name}:{self.seq_}"

    cdef void _wire_fields(self, dict d):
        d["name"] = self.name
        d["values"] = dict(self.values_)

    @staticmethod
    def _from_wire(dict d, int kind_id):
        cdef Derived ev = Derived.__new__(Derived)
        ev._load_common(d, kind_id)
        if ev.seq_ == MT_NA:
            raise WireError("wire event lacks 'seq'")
        ev.name = _wire_str(d, "name")
        if not ev.name:
            raise WireError("wire field 'name' must be a non-empty string")
        values = d.get("values")
        if not isinstance(values, dict):
            raise WireError(f"wire field 'values' must be an object, got {values!r}")
        for v in values.values():
            if not isinstance(v, str):
                raise WireError(f"wire field 'values' holds a non-string {v!r}")
        try:
            ev.values_ = _derived_values(values)
        except AnalyticsError as exc:
            raise WireError(f"wire field 'values': {exc}") from None
        return ev


_FROM_WIRE = {
    TRADE: Trade._from_wire, AGG_TRADE: Trade._from_wire,
    BOOK_TICKER: BookTicker._from_wire,
    BOOK_DELTA: BookDepth._from_wire, BOOK_SNAPSHOT: BookDepth._from_wire,
    KLINE: Kline._from_wire, TICKER: Ticker._from_wire,
    MARK_PRICE: MarkPrice._from_wire, LIQUIDATION: Liquidation._from_wire,
    DERIVED: Derived._from_wire,
}


def event_from_wire(dict d):
    """Rebuild an event from its wire-format dict; WireError if it is not one."""
    if d.get("v") != WIRE_VERSION:
        raise WireError(f"unsupported wire version {d.get('v')!r}")
    kind = d.get("kind")
    kind_id = KIND_IDS.get(kind) if isinstance(kind, str) else None  # a list is unhashable
    if kind_id is None:
        raise WireError(f"unknown event kind {d.get('kind')!r}")
    if _is_control(kind_id):
        return Control._from_wire(d, kind_id)
    return _FROM_WIRE[kind_id](d, kind_id)


def as_backfilled(Trade ev not None):
    """Mark a trade parsed from a REST answer as backfilled (``source == "rest"``);
    returns it.  Its key stays the live one: backfill fills a gap by id."""
    ev.source_ = SOURCE_REST
    return ev

# cython: language_level=3
# distutils: language = c++
"""Binance frame parser: bytes in, canonical events out.

One FrameParser per connection (it knows the venue, market and, for raw
``/ws/<stream>`` connections, the stream).  frame.hpp walks the JSON once with
simdjson On-Demand; this module picks each kind's fields, converts prices and
quantities to scaled int64 and fills the event classes of events.pyx.  Acks
and error frames become Reply objects for the control plane.  Errors are the
typed exceptions of meltica.errors; the parser itself keeps only plain
counters, read by the Python layer.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.pycapsule cimport PyCapsule_GetPointer
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport INT64_MAX, int8_t, int64_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memchr, memcmp, memcpy
from libcpp cimport bool as cbool
from libcpp.vector cimport vector

from meltica._core.events cimport (
    AGG_TRADE, BOOK_DELTA, BOOK_SNAPSHOT, BOOK_TICKER, KLINE, LIQUIDATION,
    MARK_PRICE, MT_NA, SOURCE_REST, SOURCE_STREAM, TICKER, TRADE,
    BookDepth, BookTicker, Event, Kline, Liquidation, MarkPrice, Ticker,
    mt_level,
)
from meltica._core.events cimport Trade as TradeEvent

import importlib
import json
import os
import re

from meltica._core.events import MARKETS, VENUES
from meltica.errors import (
    FieldTypeError, FrameTooLarge, MalformedFrame, MissingField, NumberError,
    ParseError, ValueRangeError,
)


cdef extern from "<string_view>" namespace "std" nogil:
    cdef cppclass string_view:
        string_view()
        const char *data()
        size_t size()


cdef extern from "simdjson.h" namespace "simdjson" nogil:
    const size_t SIMDJSON_PADDING


cdef extern from "frame.hpp" namespace "mt" nogil:
    enum:
        ST_OK
        ST_JSON
        ST_MISSING
        ST_TYPE
        ST_NUMBER
        ST_SHAPE
        ST_NEGATIVE
        ST_NOT_POSITIVE
        ST_LEVEL_PRICE
        ST_LEVEL_QTY
    enum:
        KC_LAST_UPDATE_ID
        KC_BIDS
        KC_ASKS
        KC_STREAM
        KC_DATA
        KC_RESULT
        KC_ID
        KC_CODE
        KC_MSG
        KC_AP
        KC_PU
    cdef cppclass Fields:
        int sub
        bint present(int c)
        bint present_or_null(int c)
        bint is_array(int c)
    cdef cppclass Frame:
        vector[Fields] items
        vector[Fields] subs
        vector[mt_level] bids
        vector[mt_level] asks
        size_t n_items
        size_t n_subs
        bint has_stream
        bint data_is_array
        string_view stream
        int err_key
    cdef cppclass Engine:
        int parse(const char *buf, size_t n, size_t cap, Frame &fr)
        const char *name()
    ctypedef Engine *(*EngineFactory)(size_t max_capacity) noexcept
    Engine *new_engine(size_t max_capacity) noexcept
    const char *builtin_kernel() noexcept
    bint cpu_runs_haswell() noexcept
    int event_type_kind(string_view e, int &window)
    int get_str(const Fields &f, int c, string_view &out, int &err_key)
    int get_int(const Fields &f, int c, int64_t &out, int &err_key)
    int opt_int(const Fields &f, int c, int64_t &out, int &err_key)
    string_view raw_json_of(const Fields &f, int c)
    int get_bool(const Fields &f, int c, cbool &out, int &err_key)
    int get_dec(const Fields &f, int c, int64_t &m, int8_t &e, int &err_key)
    int opt_dec(const Fields &f, int c, int64_t &m, int8_t &e, int &err_key)
    int nonneg_int(const Fields &f, int c, int64_t &out, int &err_key)
    int nonneg_dec(const Fields &f, int c, int64_t &m, int8_t &e, int &err_key)
    int opt_nonneg_dec(const Fields &f, int c, int64_t &m, int8_t &e, int &err_key)
    int positive_dec(const Fields &f, int c, int64_t &m, int8_t &e, int &err_key)
    int check_levels(const vector[mt_level] &levels, int c, int &err_key)


cdef extern from "name_map.hpp" namespace "mt" nogil:
    cdef cppclass NameMap:
        int find(const char *p, size_t n)
        int find(const char *p, size_t n, string_view *stored)
        string_view add(const char *p, size_t n, int id) except +
        void clear()


cdef extern from "frame_scan.hpp" namespace "mt" nogil:
    const int SC_BAIL
    int scan_frame(const char *buf, size_t n, Frame &fr)


# ------------------------------------------------------------ SIMD kernel
# simdjson On-Demand binds to one SIMD kernel at compile time, so the walk is
# compiled twice (frame_walk.hpp): into this module for any CPU of the
# architecture (simdjson's "fallback" kernel on x86-64) and, on x86-64, into
# meltica._core._walk_haswell for AVX2.  The choice is made once, here, at
# import; MELTICA_SIMD=auto|haswell|portable (environment) overrides it.

cdef EngineFactory _engine_factory = new_engine

_SIMD_CHOICES = ("auto", "haswell", "portable")
_HASWELL_ISA = "one of AVX2, BMI1, PCLMULQDQ, LZCNT, POPCNT"


def _choose_kernel():
    """Bind _engine_factory; returns (kernel name, why it was chosen)."""
    global _engine_factory
    portable = builtin_kernel().decode()
    choice = os.environ.get("MELTICA_SIMD", "") or "auto"
    if choice not in _SIMD_CHOICES:
        raise ImportError(
            f"MELTICA_SIMD must be auto, haswell or portable, not {choice!r}")
    if choice == "portable":
        return portable, "MELTICA_SIMD=portable"
    forced = choice == "haswell"
    if not cpu_runs_haswell():
        if forced:
            raise ImportError(
                f"MELTICA_SIMD=haswell, but this CPU lacks {_HASWELL_ISA} (the haswell "
                "kernel's instructions): unset MELTICA_SIMD or set it to portable")
        return portable, f"auto: the CPU lacks {_HASWELL_ISA}"
    # only now: the module's static initialisers may already use AVX2
    try:
        mod = importlib.import_module("meltica._core._walk_haswell")
    except ImportError as exc:
        if forced:
            raise ImportError(
                f"MELTICA_SIMD=haswell, but this build has no haswell kernel ({exc})") from exc
        return portable, "auto: this build has no haswell kernel"
    if mod.KERNEL != "haswell":
        raise ImportError(
            f"meltica._core._walk_haswell was built for {mod.KERNEL!r}, not haswell")
    _engine_factory = <EngineFactory>PyCapsule_GetPointer(
        mod.ENGINE_FACTORY, b"meltica._core.EngineFactory")
    return "haswell", "MELTICA_SIMD=haswell" if forced else "auto: the CPU has AVX2"


# The simdjson kernel every FrameParser uses ("haswell" or "fallback" on
# x86-64) and why (the environment, or the CPU); the engine logs both at start.
SIMD_KERNEL, SIMD_REASON = _choose_kernel()


# Route kinds beyond the event kinds.
cdef enum:
    R_UNKNOWN = 0
    R_PARTIAL_DEPTH = 100   # book_snapshot from a partial-depth stream

# Longest symbol accepted (Binance's are < 30 characters).
cdef enum:
    MAX_SYMBOL = 64
    MAX_ROUTES = 65536

# Binance symbols: upper-case letters and digits, "_" for COIN-M contracts
# (BTCUSD_PERP), "-"/"." seen on a few listings.
_SYMBOL_RE = re.compile(r"[A-Z0-9][A-Z0-9_.\-]*")

# ticker window by event_type_kind()'s window index
_WINDOWS = (None, "24h", "mini", "1h", "4h", "1d")

# The ``reason`` of every error the parser raises (the keys of FrameParser.rejects).
PARSE_REASONS = tuple(cls.reason for cls in (
    MalformedFrame, FrameTooLarge, MissingField, FieldTypeError, NumberError, ValueRangeError))

_FIELD_NAMES = {
    KC_LAST_UPDATE_ID: "lastUpdateId", KC_BIDS: "bids", KC_ASKS: "asks",
    KC_STREAM: "stream", KC_DATA: "data", KC_RESULT: "result", KC_ID: "id",
    KC_CODE: "code", KC_MSG: "msg", KC_AP: "ap", KC_PU: "pu",
}


def classify_stream(str name):
    """Map a stream name to ``(route kind, SYMBOL or None, qualifier or None)``.

    ``btcusdt@kline_1m`` -> (KLINE, "BTCUSDT", "1m"); ``!miniTicker@arr`` ->
    (TICKER, None, "mini").  Unknown streams map to route kind 0 (skipped and
    counted).  Runs once per distinct stream, never per frame.
    """
    base, _, rest = name.partition("@")
    symbol = None if base.startswith("!") else base.upper()
    channel = rest.split("@", 1)[0] if not base.startswith("!") else base[1:]
    if base.startswith("!"):
        # "!miniTicker@arr", "!ticker_1h@arr", "!markPrice@arr@1s", "!bookTicker"
        channel = base[1:]
    if channel == "trade":
        return TRADE, symbol, None
    if channel == "aggTrade":
        return AGG_TRADE, symbol, None
    if channel == "bookTicker":
        return BOOK_TICKER, symbol, None
    if channel == "depth":
        return BOOK_DELTA, symbol, None
    if channel in ("depth5", "depth10", "depth20"):
        return R_PARTIAL_DEPTH, symbol, channel[5:]
    if channel.startswith("kline_"):
        return KLINE, symbol, channel[6:]
    if channel == "miniTicker":
        return TICKER, symbol, "mini"
    if channel == "ticker":
        return TICKER, symbol, "24h"
    if channel.startswith("ticker_"):
        return TICKER, symbol, channel[7:]
    if channel == "markPrice":
        return MARK_PRICE, symbol, None
    if channel == "forceOrder":
        return LIQUIDATION, symbol, None
    return R_UNKNOWN, symbol, None


@cython.final
cdef class Route:
    """What a stream name means to the parser (the dispatch table grows from this)."""
    cdef readonly str stream
    cdef readonly int kind
    cdef readonly object symbol
    cdef readonly object qualifier

    def __init__(self, str stream):
        self.stream = stream
        self.kind, self.symbol, self.qualifier = classify_stream(stream)


@cython.final
@cython.freelist(8)
cdef class Reply:
    """A non-data frame for the control plane.

    ``kind`` is ``"ack"`` (``{"result":..,"id":..}``), ``"error"``
    (``{"code":..,"msg":..}``) or ``"server_shutdown"``.
    """
    cdef readonly str kind
    cdef readonly object id
    cdef readonly object result
    cdef readonly object code
    cdef readonly object msg
    cdef readonly object ts_event
    cdef readonly int64_t ts_recv

    def __repr__(self):
        if self.kind == "error":
            return f"<Reply error id={self.id!r} code={self.code!r} msg={self.msg!r}>"
        return f"<Reply {self.kind} id={self.id!r} result={self.result!r}>"


cdef str _sv_str(string_view sv):
    """A JSON string's raw text as str, decoding escapes (a rare path)."""
    if memchr(sv.data(), 92, sv.size()) == NULL:   # no backslash
        return PyUnicode_DecodeUTF8(sv.data(), sv.size(), "replace")
    raw = PyUnicode_DecodeUTF8(sv.data(), sv.size(), "replace")
    try:
        return json.loads(f'"{raw}"')
    except ValueError:
        raise MalformedFrame(f"frame: bad escape in string {raw!r}") from None


cdef object _error(int st, str what, str name):
    """The typed error of a failed accessor's status (``name``: the field)."""
    if st == ST_JSON:
        return MalformedFrame(f"{what}: not valid JSON (truncated or corrupt)")
    if st == ST_MISSING:
        return MissingField(f"{what}: required field {name!r} is missing")
    if st == ST_TYPE:
        return FieldTypeError(f"{what}: field {name!r} has the wrong JSON type")
    if st == ST_NUMBER:
        return NumberError(f"{what}: field {name!r} is not an exact decimal or int64")
    if st == ST_NEGATIVE:
        return ValueRangeError(f"{what}: field {name!r} is negative")
    if st == ST_NOT_POSITIVE:
        return ValueRangeError(f"{what}: field {name!r} is a price <= 0")
    if st == ST_LEVEL_PRICE:
        return ValueRangeError(f"{what}: a level of {name!r} has a price <= 0")
    if st == ST_LEVEL_QTY:
        return ValueRangeError(f"{what}: a level of {name!r} has a negative quantity")
    return MalformedFrame(f"{what}: unexpected structure (field {name!r})")


cdef inline bint _is_reply(const Fields &f):
    """An ack (``result``/``id``) or an error frame (``code``/``msg``)."""
    if f.present(KC_RESULT) or (f.present(KC_CODE) and f.present(KC_MSG)):
        return True
    return f.present(KC_ID) and not f.present(ord("s")) and not f.present(KC_LAST_UPDATE_ID)


cdef inline int _shape_kind(const Fields &f):
    """Kind of a payload with no ``e`` and no known stream."""
    if f.present(KC_LAST_UPDATE_ID):
        return R_PARTIAL_DEPTH
    if f.present(ord("u")) and f.present(ord("b")) and f.present(ord("a")):
        return BOOK_TICKER
    return R_UNKNOWN


@cython.final
cdef class FrameParser:
    """Parses Binance WebSocket frames and REST depth bodies into events.

    venue: "binance" | "binance_us"; market: "spot" | "usdm" | "coinm";
    stream: the stream of a raw ``/ws/<stream>`` connection (frames without a
    combined envelope), or None; time_unit: "ms" or "us" (``timeUnit=
    MICROSECOND``).  Not thread-safe: one parser per connection.
    """
    cdef Engine *_p
    cdef Frame _fr
    cdef char *_buf
    cdef size_t _cap
    cdef readonly size_t max_frame_bytes
    cdef readonly str venue
    cdef readonly str market
    cdef readonly str time_unit
    cdef int64_t _tmul
    cdef int64_t _tmax              # largest exchange time that fits in ns
    cdef bint _futures
    cdef Route _raw_route
    # stream name -> index in _routes (the C++ map avoids a Python str per frame)
    cdef NameMap _route_ids
    cdef list _routes
    cdef string_view _last_stream      # the stored copy in _route_ids
    cdef Route _last_route
    # symbol interning: one Python str per distinct symbol
    cdef NameMap _symbol_ids
    cdef list _symbols
    cdef char _last_sym[MAX_SYMBOL]
    cdef size_t _last_sym_len
    cdef str _last_sym_obj
    # counters (read by the Python layer)
    cdef readonly uint64_t frames
    cdef readonly uint64_t events
    cdef readonly uint64_t unknown
    cdef readonly uint64_t errors
    cdef readonly uint64_t replies
    cdef readonly uint64_t fast_frames   # frames the fast path took (frame_scan.hpp)
    cdef readonly bint fast_path
    cdef dict _rejects                   # ParseError reason -> count (sums to errors)

    def __cinit__(self):
        self._p = NULL
        self._buf = NULL

    def __init__(self, str venue="binance", str market="spot", stream=None,
                 str time_unit="ms", size_t max_frame_bytes=1 << 20, bint fast_path=True):
        if venue not in VENUES:
            raise ValueError(f"unknown venue {venue!r}")
        if market not in MARKETS:
            raise ValueError(f"unknown market {market!r}")
        if time_unit not in ("ms", "us"):
            raise ValueError(f"time_unit must be 'ms' or 'us', not {time_unit!r}")
        if max_frame_bytes < 64:
            raise ValueError("max_frame_bytes must be at least 64")
        self.venue = venue
        self.market = market
        self.time_unit = time_unit
        self._tmul = 1_000_000 if time_unit == "ms" else 1_000
        self._tmax = INT64_MAX // self._tmul
        self._futures = market != "spot"
        self.max_frame_bytes = max_frame_bytes
        self.fast_path = fast_path
        self._raw_route = Route(stream) if stream is not None else None
        self._route_ids.clear()
        self._routes = []
        self._symbol_ids.clear()
        self._symbols = []
        self._last_sym_len = 0
        self._last_sym_obj = None
        self._last_route = None
        self._rejects = {}
        free(self._buf)
        self._cap = max_frame_bytes + SIMDJSON_PADDING
        self._buf = <char *>malloc(self._cap)
        if self._buf == NULL:
            raise MemoryError()
        if self._p == NULL:
            self._p = _engine_factory(max_frame_bytes + SIMDJSON_PADDING)
            if self._p == NULL:
                raise MemoryError()

    def __dealloc__(self):
        free(self._buf)
        if self._p != NULL:
            del self._p

    @property
    def rejects(self):
        """Rejected frames (and REST bodies) by error ``reason``, e.g.
        ``{"value_range": 2}``; the counts sum to ``errors``."""
        return dict(self._rejects)

    @property
    def implementation(self):
        """The simdjson kernel in use (e.g. "haswell")."""
        return self._p.name().decode() if self._p != NULL else None

    # ------------------------------------------------------------ entry points

    def parse(self, data, int64_t ts_recv=0):
        """Parse one frame; returns a list of Events (and Replies, for acks)."""
        cdef list out = []
        self.parse_into(data, ts_recv, out)
        return out

    cpdef int parse_into(self, object data, int64_t ts_recv, list out) except -1:
        """Append the frame's events (or its Reply) to ``out``; returns how many."""
        cdef const char *ptr
        cdef Py_ssize_t n
        cdef bytes tmp
        if type(data) is bytes:
            ptr = PyBytes_AS_STRING(data)
            n = PyBytes_GET_SIZE(data)
        elif isinstance(data, str):
            tmp = (<str>data).encode("utf-8", "surrogatepass")
            ptr = PyBytes_AS_STRING(tmp)
            n = PyBytes_GET_SIZE(tmp)
        else:
            tmp = bytes(data)
            ptr = PyBytes_AS_STRING(tmp)
            n = PyBytes_GET_SIZE(tmp)
        return self.parse_ptr(ptr, <size_t>n, ts_recv, out)

    cpdef Py_ssize_t parse_batch(self, list frames, int64_t ts_recv, list out) except -1:
        """Parse a list of ``bytes`` frames into ``out`` with no Python call per
        frame (replay and benchmarks); stops at the first error, which it raises."""
        cdef Py_ssize_t total = 0
        cdef object frame
        for frame in frames:
            if type(frame) is not bytes:
                raise TypeError("parse_batch takes a list of bytes")
            total += self.parse_ptr(PyBytes_AS_STRING(frame), <size_t>PyBytes_GET_SIZE(frame),
                                    ts_recv, out)
        return total

    cdef int parse_ptr(self, const char *ptr, size_t n, int64_t ts_recv, list out) except -1:
        """C entry point for the WebSocket listener (no Python call per frame)."""
        cdef int st
        self.frames += 1
        if n > self.max_frame_bytes:
            self._reject(FrameTooLarge.reason)
            raise FrameTooLarge(
                f"frame of {n} bytes exceeds max_frame_bytes={self.max_frame_bytes}")
        st = self._parse_buf(ptr, n)
        if st != ST_OK:
            self._raise(st, "frame", True)
        # a frame is accepted whole or not at all: an `@arr` frame that fails on
        # its third item must not leave the first two behind
        cdef Py_ssize_t n0 = len(out)
        cdef uint64_t events0 = self.events, replies0 = self.replies, unknown0 = self.unknown
        try:
            return self._build(ts_recv, out)
        except ParseError as exc:
            del out[n0:]
            self.events, self.replies, self.unknown = events0, replies0, unknown0
            self._reject(exc.reason)
            raise

    def parse_rest_depth(self, data, str symbol, int64_t ts_recv=0):
        """A REST depth snapshot body -> ``book_snapshot`` event (source "rest")."""
        cdef bytes b = data.encode() if isinstance(data, str) else bytes(data)
        cdef size_t n = len(b)
        cdef int st
        cdef BookDepth ev
        self.frames += 1
        if n > self.max_frame_bytes:
            self._reject(FrameTooLarge.reason)
            raise FrameTooLarge(f"body of {n} bytes exceeds max_frame_bytes={self.max_frame_bytes}")
        st = self._parse_buf(PyBytes_AS_STRING(b), n)
        if st == ST_OK and (self._fr.has_stream or self._fr.data_is_array or self._fr.n_items != 1):
            st = ST_SHAPE
        if st != ST_OK:
            self._raise(st, "REST depth snapshot", True)
        try:
            ev = self._depth(self._fr.items[0], BOOK_SNAPSHOT, SOURCE_REST, symbol.upper(), ts_recv)
        except ParseError as exc:
            self._reject(exc.reason)
            raise
        self.events += 1
        return ev

    # ------------------------------------------------------------ internals

    cdef inline int _parse_buf(self, const char *ptr, size_t n) noexcept:
        """Copy the frame into the padded buffer and fill _fr; returns a status.

        The fast path (frame_scan.hpp) takes the compact frames Binance sends
        and bails, deciding nothing, on anything else; simdjson On-Demand then
        parses the frame and owns every error.
        """
        cdef int st = SC_BAIL
        # simdjson reads up to SIMDJSON_PADDING bytes past the end; the fast
        # path needs a NUL right after the frame
        memcpy(self._buf, ptr, n)
        self._buf[n] = 0
        if self.fast_path:
            st = scan_frame(self._buf, n, self._fr)
            if st != SC_BAIL:
                self.fast_frames += 1
                return st
        return self._p.parse(self._buf, n, self._cap, self._fr)

    cdef void _reject(self, str reason) noexcept:
        """Count one rejected frame under its error reason (the error path only)."""
        self.errors += 1
        self._rejects[reason] = self._rejects.get(reason, 0) + 1

    cdef int _raise(self, int st, str what, bint count=False) except -1:
        """Raise the typed error for status ``st`` (the accessor set _fr.err_key);
        ``count``: no caller's ``except ParseError`` counts it, so count it here."""
        cdef int key = self._fr.err_key
        name = _FIELD_NAMES.get(key) or (chr(key) if key >= 65 else "?")
        exc = _error(st, what, name)
        if count:
            self._reject(exc.reason)
        raise exc

    cdef Route _route(self):
        """The route of the frame's stream (cached per distinct stream)."""
        cdef string_view sv = self._fr.stream
        cdef Route route
        if self._last_route is not None and self._last_stream.size() == sv.size() \
                and memcmp(self._last_stream.data(), sv.data(), sv.size()) == 0:
            return self._last_route
        # _last_stream views the map's copy (the frame's bytes go with the frame)
        cdef int i = self._route_ids.find(sv.data(), sv.size(), &self._last_stream)
        if i >= 0:
            route = <Route>self._routes[i]
        else:
            route = Route(_sv_str(sv))
            if len(self._routes) >= MAX_ROUTES:
                # a flood of distinct stream names must not grow memory forever;
                # _last_stream views the table's copies: drop the cache first
                self._last_route = None
                self._route_ids.clear()
                self._routes = []
            self._last_stream = self._route_ids.add(sv.data(), sv.size(), len(self._routes))
            self._routes.append(route)
        self._last_route = route
        return route

    cdef str _symbol(self, const Fields &f, int c, Route route):
        """Interned symbol from field ``c``, or from the route when absent."""
        cdef string_view sv
        cdef int st = get_str(f, c, sv, self._fr.err_key)
        cdef int i
        if st == ST_MISSING and route is not None and route.symbol is not None:
            return route.symbol
        self._check(st)
        if sv.size() == 0 or sv.size() > MAX_SYMBOL:
            raise MalformedFrame(f"frame: symbol of length {sv.size()} is not a symbol")
        if sv.size() == self._last_sym_len and memcmp(self._last_sym, sv.data(), sv.size()) == 0:
            return self._last_sym_obj
        i = self._symbol_ids.find(sv.data(), sv.size())
        if i >= 0:
            sym = self._symbols[i]
        else:
            sym = _sv_str(sv)
            if _SYMBOL_RE.fullmatch(sym) is None:
                # keys are "venue:market:SYMBOL:...": a symbol must not bend them
                raise MalformedFrame(f"frame: {sym!r} is not a Binance symbol")
            if len(self._symbols) >= MAX_ROUTES:
                self._symbol_ids.clear()
                self._symbols = []
            self._symbol_ids.add(sv.data(), sv.size(), len(self._symbols))
            self._symbols.append(sym)
        memcpy(self._last_sym, sv.data(), sv.size())
        self._last_sym_len = sv.size()
        self._last_sym_obj = sym
        return sym

    cdef inline int64_t _ns(self, int64_t t) except? -1:
        """Exchange time (ms or µs) -> ns; MT_NA stays MT_NA."""
        if t == MT_NA:
            return MT_NA
        if t < 0 or t > self._tmax:
            raise NumberError(f"frame: time {t} is out of range")
        return t * self._tmul

    cdef inline int _check(self, int st) except -1:
        """Raise the typed error for a failed accessor (it set _fr.err_key)."""
        if st != ST_OK:
            self._raise(st, "frame")
        return 0

    cdef inline void _common(self, Event ev, int kind, str symbol, int64_t ts_recv) noexcept:
        ev.venue = self.venue
        ev.market = self.market
        ev.symbol = symbol
        ev.kind_id = kind
        ev.ts_recv = ts_recv

    cdef int _build(self, int64_t ts_recv, list out) except -1:
        cdef Route route = self._raw_route
        cdef size_t i
        cdef int kind, count = 0
        cdef string_view et
        cdef int ek = 0
        cdef object qualifier = None
        cdef int ekind, window = 0
        if self._fr.has_stream:
            route = self._route()
        for i in range(self._fr.n_items):
            kind = R_UNKNOWN
            qualifier = None
            if route is not None:
                kind = route.kind
                qualifier = route.qualifier
            if get_str(self._fr.items[i], ord("e"), et, ek) == ST_OK:
                ekind = event_type_kind(et, window)
                if ekind < 0:
                    out.append(self._reply(self._fr.items[i], "server_shutdown", ts_recv))
                    count += 1
                    continue
                if kind == R_UNKNOWN:
                    kind = ekind
                if kind == TICKER and window:
                    qualifier = _WINDOWS[window]
            elif self._fr.items[i].present_or_null(ord("e")):
                # an event type that is not a string names no kind we know
                kind = R_UNKNOWN
            elif not self._fr.has_stream and _is_reply(self._fr.items[i]):
                # acks and errors come unwrapped, also on raw-stream connections
                out.append(self._reply_frame(self._fr.items[i], ts_recv))
                count += 1
                continue
            elif kind == R_UNKNOWN and not self._fr.has_stream:
                kind = _shape_kind(self._fr.items[i])
            if kind == R_UNKNOWN:
                self.unknown += 1
                continue
            out.append(self._event(self._fr.items[i], kind, qualifier, route, ts_recv))
            self.events += 1
            count += 1
        return count

    cdef Reply _reply_frame(self, const Fields &f, int64_t ts_recv):
        cdef string_view sv
        cdef int64_t v = 0
        cdef int ek = 0
        cdef Reply r = self._reply(f, "error" if f.present(KC_CODE) else "ack", ts_recv)
        if get_int(f, KC_ID, v, ek) == ST_OK:
            r.id = v
        elif get_str(f, KC_ID, sv, ek) == ST_OK:
            r.id = _sv_str(sv)
        if f.present(KC_RESULT):
            text = PyUnicode_DecodeUTF8(raw_json_of(f, KC_RESULT).data(),
                                        raw_json_of(f, KC_RESULT).size(), "replace")
            try:
                r.result = json.loads(text)
            except ValueError:
                raise MalformedFrame("reply: result is not valid JSON") from None
        if get_int(f, KC_CODE, v, ek) == ST_OK:
            r.code = v
        if get_str(f, KC_MSG, sv, ek) == ST_OK:
            r.msg = _sv_str(sv)
        return r

    cdef Reply _reply(self, const Fields &f, str kind, int64_t ts_recv):
        cdef Reply r = Reply.__new__(Reply)
        cdef int64_t e = 0
        cdef int ek = 0
        r.kind = kind
        r.ts_recv = ts_recv
        if get_int(f, ord("E"), e, ek) == ST_OK:
            r.ts_event = e * self._tmul if 0 <= e <= self._tmax else None
        self.replies += 1
        return r

    cdef Event _event(self, const Fields &f, int kind, object qualifier, Route route,
                      int64_t ts_recv):
        if kind == TRADE or kind == AGG_TRADE:
            return self._trade(f, kind, route, ts_recv)
        if kind == BOOK_TICKER:
            return self._book_ticker(f, route, ts_recv)
        if kind == BOOK_DELTA:
            return self._depth(f, BOOK_DELTA, SOURCE_STREAM, None, ts_recv, route)
        if kind == R_PARTIAL_DEPTH:
            return self._depth(f, BOOK_SNAPSHOT, SOURCE_STREAM, None, ts_recv, route)
        if kind == KLINE:
            return self._kline(f, route, ts_recv)
        if kind == TICKER:
            return self._ticker(f, qualifier, route, ts_recv)
        if kind == MARK_PRICE:
            return self._mark_price(f, route, ts_recv)
        return self._liquidation(f, route, ts_recv)

    cdef inline int _event_times(self, Event ev, const Fields &f) except -1:
        """``E`` -> ts_event, ``T`` -> ts_transaction (each optional)."""
        cdef int64_t t = 0
        self._check(opt_int(f, ord("E"), t, self._fr.err_key))
        ev.ts_event_ = self._ns(t)
        self._check(opt_int(f, ord("T"), t, self._fr.err_key))
        ev.ts_transaction_ = self._ns(t)
        return 0

    cdef Event _trade(self, const Fields &f, int kind, Route route, int64_t ts_recv):
        cdef TradeEvent ev = <TradeEvent>TradeEvent.__new__(TradeEvent)
        cdef cbool m = False
        self._common(ev, kind, self._symbol(f, ord("s"), route), ts_recv)
        cdef int id_key = ord("t") if kind == TRADE else ord("a")
        self._check(nonneg_int(f, id_key, ev.trade_id_, self._fr.err_key))
        self._check(positive_dec(f, ord("p"), ev.price_, ev.price_exp, self._fr.err_key))
        self._check(nonneg_dec(f, ord("q"), ev.qty_, ev.qty_exp, self._fr.err_key))
        self._check(get_bool(f, ord("m"), m, self._fr.err_key))
        ev.buyer_is_maker = m
        if kind == AGG_TRADE:
            self._check(get_int(f, ord("f"), ev.first_trade_id_, self._fr.err_key))
            self._check(get_int(f, ord("l"), ev.last_trade_id_, self._fr.err_key))
        else:
            ev.first_trade_id_ = ev.last_trade_id_ = MT_NA
        self._event_times(ev, f)
        ev.seq_ = ev.trade_id_
        return ev

    cdef Event _book_ticker(self, const Fields &f, Route route, int64_t ts_recv):
        cdef BookTicker ev = <BookTicker>BookTicker.__new__(BookTicker)
        self._common(ev, BOOK_TICKER, self._symbol(f, ord("s"), route), ts_recv)
        # an empty book side comes as price and quantity "0": zero is valid here
        self._check(nonneg_int(f, ord("u"), ev.update_id_, self._fr.err_key))
        self._check(nonneg_dec(f, ord("b"), ev.bid_price_, ev.bid_price_exp, self._fr.err_key))
        self._check(nonneg_dec(f, ord("B"), ev.bid_qty_, ev.bid_qty_exp, self._fr.err_key))
        self._check(nonneg_dec(f, ord("a"), ev.ask_price_, ev.ask_price_exp, self._fr.err_key))
        self._check(nonneg_dec(f, ord("A"), ev.ask_qty_, ev.ask_qty_exp, self._fr.err_key))
        self._event_times(ev, f)
        ev.seq_ = ev.update_id_
        return ev

    cdef int _levels_key(self, const Fields &f, int c) except -1:
        """A depth payload's level list must be there, as an array, of
        plausible levels (check_levels in frame.hpp)."""
        if f.is_array(c):
            if c == KC_BIDS or c == ord("b"):
                return self._check(check_levels(self._fr.bids, c, self._fr.err_key))
            return self._check(check_levels(self._fr.asks, c, self._fr.err_key))
        self._fr.err_key = c
        return self._check(ST_TYPE if f.present(c) else ST_MISSING)

    cdef BookDepth _depth(self, const Fields &f, int kind, int source, str symbol,
                          int64_t ts_recv, Route route=None):
        cdef BookDepth ev = <BookDepth>BookDepth.__new__(BookDepth)
        if symbol is None:
            symbol = self._symbol(f, ord("s"), route)
        self._common(ev, kind, symbol, ts_recv)
        ev.source_ = source
        if f.present(KC_LAST_UPDATE_ID):
            # REST body or spot partial depth: {lastUpdateId, bids, asks[, E, T]}
            self._check(nonneg_int(f, KC_LAST_UPDATE_ID, ev.update_id_, self._fr.err_key))
            ev.first_update_id_ = MT_NA
            ev.prev_update_id_ = MT_NA
            self._levels_key(f, KC_BIDS)
            self._levels_key(f, KC_ASKS)
        else:
            self._check(nonneg_int(f, ord("u"), ev.update_id_, self._fr.err_key))
            self._check(nonneg_int(f, ord("U"), ev.first_update_id_, self._fr.err_key))
            # futures may send pu = -1 (no previous event): any int64 is kept
            self._check(opt_int(f, KC_PU, ev.prev_update_id_, self._fr.err_key))
            self._levels_key(f, ord("b"))
            self._levels_key(f, ord("a"))
        self._event_times(ev, f)
        ev.seq_ = ev.update_id_
        ev.set_levels(self._fr.bids.data(), self._fr.bids.size(),
                      self._fr.asks.data(), self._fr.asks.size())
        return ev

    cdef Event _kline(self, const Fields &f, Route route, int64_t ts_recv):
        cdef Kline ev = <Kline>Kline.__new__(Kline)
        cdef int64_t t = 0
        cdef cbool closed = False
        cdef string_view sv
        cdef const Fields *k
        cdef int i
        cdef char c
        if f.sub < 0:
            self._fr.err_key = ord("k")
            self._check(ST_MISSING if not f.present(ord("k")) else ST_TYPE)
        k = &self._fr.subs[f.sub]
        symbol = self._symbol(f, ord("s"), route) if f.present(ord("s")) \
            else self._symbol(k[0], ord("s"), route)
        self._common(ev, KLINE, symbol, ts_recv)
        self._check(get_str(k[0], ord("i"), sv, self._fr.err_key))
        ev.interval = _sv_str(sv)
        self._check(get_int(k[0], ord("t"), t, self._fr.err_key))
        ev.open_time_ = self._ns(t)
        self._check(get_int(k[0], ord("T"), t, self._fr.err_key))
        ev.close_time_ = self._ns(t)
        self._check(get_int(k[0], ord("f"), ev.first_trade_id_, self._fr.err_key))
        self._check(get_int(k[0], ord("L"), ev.last_trade_id_, self._fr.err_key))
        self._check(get_int(k[0], ord("n"), ev.trades_, self._fr.err_key))
        self._check(get_bool(k[0], ord("x"), closed, self._fr.err_key))
        ev.closed_ = closed
        for i, c in enumerate(b"ohlcvqVQ"):
            self._check(get_dec(k[0], c, ev.dm[i], ev.de[i], self._fr.err_key))
        self._check(opt_int(f, ord("E"), t, self._fr.err_key))
        ev.ts_event_ = self._ns(t)
        ev.seq_ = ev.open_time_
        return ev

    cdef Event _ticker(self, const Fields &f, object window, Route route, int64_t ts_recv):
        cdef Ticker ev = <Ticker>Ticker.__new__(Ticker)
        cdef int64_t t = 0
        cdef int i
        cdef char c
        self._common(ev, TICKER, self._symbol(f, ord("s"), route), ts_recv)
        ev.window = window if window is not None else "24h"
        # slots: see TICKER_DECIMALS in events.pyx; the first six every window has
        for i, c in enumerate(b"cohlvqpPwxQbBaA"):
            if i < 6:
                self._check(get_dec(f, c, ev.dm[i], ev.de[i], self._fr.err_key))
            else:
                self._check(opt_dec(f, c, ev.dm[i], ev.de[i], self._fr.err_key))
        for i, c in enumerate(b"OCFLn"):
            self._check(opt_int(f, c, t, self._fr.err_key))
            ev.iv[i] = self._ns(t) if i < 2 else t
        self._check(get_int(f, ord("E"), t, self._fr.err_key))
        ev.ts_event_ = self._ns(t)
        ev.seq_ = ev.ts_event_
        return ev

    cdef Event _mark_price(self, const Fields &f, Route route, int64_t ts_recv):
        cdef MarkPrice ev = <MarkPrice>MarkPrice.__new__(MarkPrice)
        cdef int64_t t = 0
        cdef int i
        cdef char c
        self._common(ev, MARK_PRICE, self._symbol(f, ord("s"), route), ts_recv)
        self._check(get_dec(f, ord("p"), ev.dm[0], ev.de[0], self._fr.err_key))
        for i, c in enumerate(b"iPr", 1):
            self._check(opt_dec(f, c, ev.dm[i], ev.de[i], self._fr.err_key))
        self._check(opt_int(f, ord("T"), t, self._fr.err_key))
        ev.next_funding_time_ = self._ns(t)
        self._check(get_int(f, ord("E"), t, self._fr.err_key))
        ev.ts_event_ = self._ns(t)
        ev.seq_ = ev.ts_event_
        return ev

    cdef Event _liquidation(self, const Fields &f, Route route, int64_t ts_recv):
        cdef Liquidation ev = <Liquidation>Liquidation.__new__(Liquidation)
        cdef int64_t t = 0
        cdef string_view sv
        cdef const Fields *o
        if f.sub < 0:
            self._fr.err_key = ord("o")
            self._check(ST_MISSING if not f.present(ord("o")) else ST_TYPE)
        o = &self._fr.subs[f.sub]
        self._common(ev, LIQUIDATION, self._symbol(o[0], ord("s"), route), ts_recv)
        self._check(get_str(o[0], ord("S"), sv, self._fr.err_key))
        side = _sv_str(sv).lower()
        if side not in ("buy", "sell"):
            raise MalformedFrame(f"frame: liquidation side {side!r} is not BUY or SELL")
        ev.side = side
        ev.order_type = self._opt_text(o[0], ord("o"))
        ev.time_in_force = self._opt_text(o[0], ord("f"))
        ev.status = self._opt_text(o[0], ord("X"))
        # an order not yet filled has average price and filled quantities "0"
        self._check(nonneg_dec(o[0], ord("q"), ev.dm[0], ev.de[0], self._fr.err_key))
        self._check(nonneg_dec(o[0], ord("p"), ev.dm[1], ev.de[1], self._fr.err_key))
        self._check(opt_nonneg_dec(o[0], KC_AP, ev.dm[2], ev.de[2], self._fr.err_key))
        self._check(opt_nonneg_dec(o[0], ord("l"), ev.dm[3], ev.de[3], self._fr.err_key))
        self._check(opt_nonneg_dec(o[0], ord("z"), ev.dm[4], ev.de[4], self._fr.err_key))
        self._check(opt_int(o[0], ord("T"), t, self._fr.err_key))
        ev.ts_transaction_ = self._ns(t)
        self._check(get_int(f, ord("E"), t, self._fr.err_key))
        ev.ts_event_ = self._ns(t)
        ev.seq_ = ev.ts_event_
        return ev

    cdef object _opt_text(self, const Fields &f, int c):
        cdef string_view sv
        cdef int st = get_str(f, c, sv, self._fr.err_key)
        if st == ST_OK:
            return _sv_str(sv)
        if st == ST_MISSING:
            return None
        return self._check(st)


cdef int parse_frame(object parser, const char *ptr, size_t n, int64_t ts_recv,
                     list out) except -1:
    """See parser.pxd: the per-frame entry point of compiled callers."""
    return (<FrameParser?>parser).parse_ptr(ptr, n, ts_recv, out)

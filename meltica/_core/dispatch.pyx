# cython: language_level=3
# distutils: language = c++
"""The dispatch table (see dispatch.pxd for the layout and invariants).

``DispatchTable.accept(batch)`` filters a batch in place, in one pass: events
of streams without a route and events not newer than the last one delivered
on their route are removed and counted; a forward jump that the next event
disproves is rolled back (the implausible-jump guard, see dispatch.pxd).
``update(add, remove)`` changes the routes, all at once.  Pure computation: no clocks, no I/O.
"""

cimport cython
from cpython.dict cimport PyDict_GetItem
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE, PyList_SetItem
from cpython.ref cimport Py_INCREF, PyObject
from libc.stdint cimport INT64_MAX, int32_t, int64_t, uint64_t

from meltica._core.events cimport (
    AGG_TRADE, BOOK_DELTA, BOOK_SNAPSHOT, BOOK_TICKER, GAP, KLINE, LIQUIDATION,
    MARK_PRICE, MT_NA, SOURCE_STREAM, TICKER, TRADE, BookDepth, Event, Kline,
    Ticker, Trade,
)

from meltica._core.events import KIND_NAMES, MARKETS, TICKER_WINDOWS

KLINE_INTERVALS = (
    "1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h",
    "1d", "3d", "1w", "1M",
)
# Kinds a route can have (exchange streams); the rest always pass.
ROUTE_KINDS = (
    "trade", "agg_trade", "book_ticker", "book_delta", "book_snapshot", "kline",
    "ticker", "mark_price", "liquidation",
)

# Largest forward jump of a route's ordering key taken at face value (see the
# jump guard in dispatch.pxd).  Ids: trade, agg trade and update ids.  Times
# (ns): kline open time, ticker / mark price / liquidation event time.
cdef int64_t _JUMP_ID = 1 << 20
cdef int64_t _JUMP_TIME = 3_600_000_000_000
JUMP_BOUNDS = {
    "trade": _JUMP_ID, "agg_trade": _JUMP_ID, "book_ticker": _JUMP_ID,
    "book_delta": _JUMP_ID, "book_snapshot": _JUMP_ID, "kline": _JUMP_TIME,
    "ticker": _JUMP_TIME, "mark_price": _JUMP_TIME, "liquidation": _JUMP_TIME,
}

cdef dict _MARKET_IDX = {m: i for i, m in enumerate(MARKETS)}
cdef dict _INTERVAL_IDX = {v: i for i, v in enumerate(KLINE_INTERVALS)}
cdef dict _WINDOW_IDX = {v: i for i, v in enumerate(TICKER_WINDOWS)}
cdef dict _KIND_SLOT = {
    "trade": DT_S_TRADE, "agg_trade": DT_S_AGG_TRADE, "book_ticker": DT_S_BOOK_TICKER,
    "book_delta": DT_S_BOOK_DELTA, "book_snapshot": DT_S_PARTIAL_DEPTH,
    "mark_price": DT_S_MARK_PRICE, "liquidation": DT_S_LIQUIDATION,
}
# Hot-path market lookup: the parser hands every event the same str object.
cdef str _SPOT = MARKETS[0]
cdef str _USDM = MARKETS[1]
cdef str _COINM = MARKETS[2]

assert len(MARKETS) == DT_N_MARKETS
assert len(KLINE_INTERVALS) == DT_S_TICKER - DT_S_KLINE
assert len(TICKER_WINDOWS) == DT_N_SLOTS - DT_S_TICKER


cdef inline int _market_index(str market):
    if market is _SPOT:
        return 0
    if market is _USDM:
        return 1
    if market is _COINM:
        return 2
    cdef PyObject *p = PyDict_GetItem(_MARKET_IDX, market)
    return -1 if p == NULL else <int><object>p


cdef inline int _qualified(dict index, object name, int base):
    """``base`` + the index of ``name`` in ``index``, or -1 if unknown."""
    cdef PyObject *p = PyDict_GetItem(index, name)
    return -1 if p == NULL else base + <int><object>p


cdef inline int _depth_bucket(BookDepth ev):
    cdef Py_ssize_t n = ev.n_bids if ev.n_bids > ev.n_asks else ev.n_asks
    if n <= 5:
        return 0
    return 1 if n <= 10 else 2


cdef int _slot_of(str kind, object qualifier) except -2:
    """Slot of a route key; raises ValueError naming what is wrong."""
    if kind == "kline":
        if qualifier not in _INTERVAL_IDX:
            raise ValueError(f"kline route needs an interval in {KLINE_INTERVALS}, "
                             f"got {qualifier!r}")
        return DT_S_KLINE + <int>_INTERVAL_IDX[qualifier]
    if kind == "ticker":
        if qualifier not in _WINDOW_IDX:
            raise ValueError(f"ticker route needs a window in {TICKER_WINDOWS}, "
                             f"got {qualifier!r}")
        return DT_S_TICKER + <int>_WINDOW_IDX[qualifier]
    if kind not in _KIND_SLOT:
        raise ValueError(f"no route for kind {kind!r} (route kinds: {ROUTE_KINDS})")
    if qualifier is not None:
        raise ValueError(f"{kind} routes take no qualifier, got {qualifier!r}")
    return <int>_KIND_SLOT[kind]


cdef tuple _route_key(object key):
    """Validate ``(market, symbol, kind[, qualifier])``; returns it normalised."""
    if not isinstance(key, tuple) or not 3 <= len(key) <= 4:
        raise TypeError(f"route key must be (market, symbol, kind[, qualifier]), got {key!r}")
    market, symbol, kind = key[0], key[1], key[2]
    qualifier = key[3] if len(key) == 4 else None
    if market not in _MARKET_IDX:
        raise ValueError(f"unknown market {market!r} (known: {MARKETS})")
    if not isinstance(symbol, str) or not symbol:
        raise ValueError(f"route symbol must be a non-empty str, got {symbol!r}")
    if not isinstance(kind, str):
        raise ValueError(f"route kind must be a str, got {kind!r}")
    _slot_of(kind, qualifier)
    return (market, symbol.upper(), kind, qualifier)


@cython.final
cdef class _Node:
    """The routes of one symbol: an entry index per (market, slot)."""

    def __cinit__(self):
        cdef int i
        for i in range(DT_N_MARKETS * DT_N_SLOTS):
            self.slot[i] = -1
        self.n_routes = 0


@cython.final
cdef class DispatchTable:
    """Routes of subscribed streams and the last sequence delivered on each.

    ``accept(batch)`` is the per-batch hot path; everything else runs per
    control-plane request.  Counters are plain integers.
    """

    def __cinit__(self):
        self._nodes = {}
        self._meta = []
        self.accepted = self.unrouted = self.duplicates = self.passed = self.invalid = 0
        self.implausible = 0
        self.holes = self.holes_dropped = 0
        self.on_holes = None

    # ------------------------------------------------------------ hot path

    cpdef Py_ssize_t accept(self, list batch) except -1:
        """Remove, in place, events of unrouted streams and duplicates; returns how many stay."""
        cdef Py_ssize_t n = PyList_GET_SIZE(batch)
        cdef Py_ssize_t i, w = 0
        cdef object item
        for i in range(n):
            item = <object>PyList_GET_ITEM(batch, i)
            if not self._keep(item):
                continue
            if w != i:
                # every slot keeps owning one reference: SetItem steals ours and
                # releases the dropped (or already moved) object it replaces
                Py_INCREF(item)
                PyList_SetItem(batch, w, item)
            w += 1
        if w != n:
            del batch[w:]
        if self._holes.size() and self.on_holes is not None:
            self.on_holes()
        return w

    cdef bint _keep(self, object item):
        cdef Event ev
        cdef int kind, m, s, b = 0
        cdef int64_t seq, sub = 0, bound = _JUMP_ID
        cdef PyObject *p
        cdef int32_t idx
        cdef dt_entry *e
        cdef int32_t bit
        if not isinstance(item, Event):
            self.invalid += 1
            return False
        ev = <Event>item
        kind = ev.kind_id
        if kind >= GAP:
            # control and derived events: made by Meltica, nothing to look up
            self.passed += 1
            return True
        seq = ev.seq_
        if kind == TRADE or kind == AGG_TRADE:
            if (<Trade>ev).source_ != SOURCE_STREAM:
                # backfilled by id into a recorded hole (see dispatch.pxd)
                self.passed += 1
                return True
            s = DT_S_TRADE if kind == TRADE else DT_S_AGG_TRADE
        elif kind == BOOK_TICKER:
            s = DT_S_BOOK_TICKER
        elif kind == BOOK_DELTA:
            s = DT_S_BOOK_DELTA
        elif kind == BOOK_SNAPSHOT:
            if (<BookDepth>ev).source_ != SOURCE_STREAM:
                self.passed += 1
                return True
            s = DT_S_PARTIAL_DEPTH
            b = _depth_bucket(<BookDepth>ev)
        elif kind == KLINE:
            s = _qualified(_INTERVAL_IDX, (<Kline>ev).interval, DT_S_KLINE)
            bound = _JUMP_TIME
            seq = (<Kline>ev).open_time_
            # updates of one candle share the open time: then event time orders
            # them (or the last trade id, without E), and the closing one is last
            if (<Kline>ev).closed_:
                sub = INT64_MAX
            elif ev.ts_event_ != MT_NA:
                sub = ev.ts_event_
            else:
                sub = (<Kline>ev).last_trade_id_
        elif kind == TICKER:
            s = _qualified(_WINDOW_IDX, (<Ticker>ev).window, DT_S_TICKER)
            bound = _JUMP_TIME
            sub = (<Ticker>ev).iv[3]        # last trade id (MT_NA on mini tickers)
        elif kind == MARK_PRICE:
            s = DT_S_MARK_PRICE
            bound = _JUMP_TIME
        elif kind == LIQUIDATION:
            s = DT_S_LIQUIDATION
            sub = ev.ts_transaction_
            bound = _JUMP_TIME
        else:
            s = -1
        m = _market_index(ev.market)
        if s < 0 or m < 0:
            self.unrouted += 1
            return False
        p = PyDict_GetItem(self._nodes, ev.symbol)
        if p == NULL:
            self.unrouted += 1
            return False
        idx = (<_Node>p).slot[m * DT_N_SLOTS + s]
        if idx < 0:
            self.unrouted += 1
            return False
        e = &self._entries[idx]
        bit = 1 << b
        if e.pending & bit:
            return self._settle(e, b, seq, sub, bound)
        if e.seen & bit:
            if seq < e.last_seq[b] or (seq == e.last_seq[b] and sub <= e.last_sub):
                e.duplicates += 1
                self.duplicates += 1
                return False
            # seq >= last_seq[b]: the difference fits in uint64 whatever the signs
            if <uint64_t>seq - <uint64_t>e.last_seq[b] > <uint64_t>bound:
                if not self._jump(e, b, seq, sub):
                    return False
            elif e.contiguous and seq > e.last_seq[0] + 1:
                self._hole(e, e.last_seq[0] + 1, seq - 1)
        else:
            # a route's first key jumped from nothing: the next event settles it
            e.seen |= bit
            e.pending |= bit
            e.anchored &= ~bit
        e.last_seq[b] = seq
        e.last_sub = sub
        e.delivered += 1
        self.accepted += 1
        return True

    cdef bint _settle(self, dt_entry *e, int b, int64_t seq, int64_t sub, int64_t bound):
        """Keep or drop an event on a route whose last key is a pending jump (slow path)."""
        cdef int32_t bit = 1 << b
        cdef int64_t top = e.last_seq[b]
        cdef bint anchored = (e.anchored & bit) != 0
        if seq > top or (seq == top and sub > e.last_sub):
            # past the jump: confirmed; this event may itself jump from there
            if e.contiguous and anchored and top > e.from_seq[0] + 1:
                self._hole(e, e.from_seq[0] + 1, top - 1)
            if <uint64_t>seq - <uint64_t>top > <uint64_t>bound:
                if not self._jump(e, b, seq, sub):
                    return False
            else:
                e.pending &= ~bit
                if e.contiguous and seq > top + 1:
                    self._hole(e, top + 1, seq - 1)
        elif anchored and (seq < e.from_seq[b]
                           or (seq == e.from_seq[b] and sub <= e.from_sub)):
            e.duplicates += 1
            self.duplicates += 1
            return False
        elif <uint64_t>top - <uint64_t>seq > <uint64_t>bound:
            # far below the jump, above what came before it: the jump was
            # implausible; rewind.  Still pending if this key too is far from
            # the one before the jump (or there was none).
            e.implausible += 1
            self.implausible += 1
            e.voided |= bit
            e.void_seq[b] = top
            e.void_sub = e.last_sub
            if anchored and <uint64_t>seq - <uint64_t>e.from_seq[b] <= <uint64_t>bound:
                e.pending &= ~bit
                if e.contiguous and seq > e.from_seq[0] + 1:
                    self._hole(e, e.from_seq[0] + 1, seq - 1)
        else:
            e.duplicates += 1
            self.duplicates += 1
            return False
        e.last_seq[b] = seq
        e.last_sub = sub
        e.delivered += 1
        self.accepted += 1
        return True

    cdef bint _jump(self, dt_entry *e, int b, int64_t seq, int64_t sub):
        """A forward jump past the bound: pending from the last key; False if it
        repeats the last disproved key (a duplicate, counted)."""
        cdef int32_t bit = 1 << b
        if e.voided & bit and seq == e.void_seq[b] and sub == e.void_sub:
            e.duplicates += 1
            self.duplicates += 1
            return False
        e.pending |= bit
        e.anchored |= bit
        e.from_seq[b] = e.last_seq[b]
        e.from_sub = e.last_sub
        return True

    cdef void _hole(self, dt_entry *e, int64_t first, int64_t last):
        """Record trade ids first..last as never delivered (bounded, see dispatch.pxd)."""
        cdef dt_hole h
        self.holes += 1
        if self._holes.size() >= DT_MAX_HOLES:
            self.holes_dropped += 1
            return
        h.entry = <int32_t>(e - &self._entries[0])
        h.first = first
        h.last = last
        self._holes.push_back(h)

    def take_holes(self):
        """The trade id holes recorded since the last call, oldest first, as
        ``(market, SYMBOL, kind, first, last)`` (ids inclusive); holes of routes
        removed since are left out."""
        cdef list out = []
        cdef dt_hole h
        for h in self._holes:
            meta = self._meta[h.entry]
            if meta is not None:
                key = meta[0]
                out.append((key[0], key[1], key[2], h.first, h.last))
        self._holes.clear()
        return out

    # ------------------------------------------------------------ control plane

    def update(self, add=(), remove=()):
        """Apply route changes at once; returns ``(added, removed)`` counts.

        ``add``: ``(market, symbol, kind, qualifier, instrument_id, channel)``
        tuples; ``remove``: ``(market, symbol, kind[, qualifier])``.  Every
        change is validated before any is applied (ValueError / TypeError, table
        untouched).  Removals apply first.  Adding an existing route updates its
        instrument id and channel and keeps its dedup state; removing an absent
        route does nothing.  A removed and re-added route starts afresh.
        """
        cdef list adds = []
        cdef list removes = []
        for spec in add:
            if not isinstance(spec, tuple) or len(spec) != 6:
                raise TypeError("route to add must be (market, symbol, kind, qualifier, "
                                f"instrument_id, channel), got {spec!r}")
            key = _route_key(spec[:4])
            if type(spec[4]) is not int:
                raise TypeError(f"instrument_id must be an int, got {spec[4]!r}")
            if not isinstance(spec[5], str):
                raise TypeError(f"channel must be a str, got {spec[5]!r}")
            adds.append((key, <int64_t>spec[4], spec[5]))
        for key in remove:
            removes.append(_route_key(key))
        cdef int removed = 0, added = 0
        for key in removes:
            removed += self._remove(key)
        for key, iid, channel in adds:
            added += self._add(key, iid, channel)
        return added, removed

    cdef int _add(self, tuple key, int64_t instrument_id, str channel) except -1:
        cdef int m = _MARKET_IDX[key[0]]
        cdef int s = _slot_of(key[2], key[3])
        cdef _Node node = self._nodes.get(key[1])
        cdef int32_t idx
        cdef int b
        cdef dt_entry entry
        if node is None:
            node = _Node()
            self._nodes[key[1]] = node
        idx = node.slot[m * DT_N_SLOTS + s]
        if idx >= 0:
            self._entries[idx].instrument_id = instrument_id
            self._meta[idx] = (key, channel)
            return 0
        entry.seen = 0
        entry.live = 1
        entry.contiguous = s == DT_S_TRADE or s == DT_S_AGG_TRADE
        entry.last_sub = 0
        entry.pending = entry.anchored = entry.voided = 0
        entry.from_sub = entry.void_sub = 0
        for b in range(DT_N_BUCKETS):
            entry.last_seq[b] = entry.from_seq[b] = entry.void_seq[b] = MT_NA
        entry.instrument_id = instrument_id
        entry.delivered = 0
        entry.duplicates = 0
        entry.implausible = 0
        if self._free.size():
            idx = self._free.back()
            self._free.pop_back()
            self._entries[idx] = entry
            self._meta[idx] = (key, channel)
        else:
            idx = <int32_t>self._entries.size()
            self._entries.push_back(entry)
            self._meta.append((key, channel))
        node.slot[m * DT_N_SLOTS + s] = idx
        node.n_routes += 1
        return 1

    cdef int _remove(self, tuple key) except -1:
        cdef int m = _MARKET_IDX[key[0]]
        cdef int s = _slot_of(key[2], key[3])
        cdef _Node node = self._nodes.get(key[1])
        cdef int32_t idx
        if node is None:
            return 0
        idx = node.slot[m * DT_N_SLOTS + s]
        if idx < 0:
            return 0
        node.slot[m * DT_N_SLOTS + s] = -1
        node.n_routes -= 1
        self._entries[idx].live = 0
        self._meta[idx] = None
        self._free.push_back(idx)
        if node.n_routes == 0:
            del self._nodes[key[1]]
        return 1

    # ------------------------------------------------------------ reading

    def get(self, market, symbol, kind, qualifier=None):
        """The route's entry as a dict, or None if there is no such route."""
        key = _route_key((market, symbol, kind, qualifier))
        cdef _Node node = self._nodes.get(key[1])
        if node is None:
            return None
        cdef int32_t idx = node.slot[_MARKET_IDX[key[0]] * DT_N_SLOTS + _slot_of(kind, qualifier)]
        if idx < 0:
            return None
        return self._entry_dict(idx)

    cdef dict _entry_dict(self, int32_t idx):
        cdef dt_entry *e = &self._entries[idx]
        key, channel = self._meta[idx]
        seqs = [e.last_seq[b] if e.seen & (1 << b) else None for b in range(DT_N_BUCKETS)]
        return {
            "market": key[0], "symbol": key[1], "kind": key[2], "qualifier": key[3],
            "instrument_id": e.instrument_id, "channel": channel,
            "last_seq": seqs[0] if key[2] != "book_snapshot" else max(
                [q for q in seqs if q is not None], default=None),
            "last_seqs": seqs if key[2] == "book_snapshot" else None,
            "delivered": e.delivered, "duplicates": e.duplicates,
            "implausible": e.implausible,
        }

    def routes(self):
        """Every route key ``(market, SYMBOL, kind, qualifier)``, sorted."""
        return sorted([m[0] for m in self._meta if m is not None],
                      key=lambda k: (k[0], k[1], k[2], k[3] or ""))

    def entries(self):
        """Every route's entry dict (see ``get``)."""
        return [self._entry_dict(i) for i in range(len(self._meta)) if self._meta[i] is not None]

    def __len__(self):
        return len(self._meta) - <Py_ssize_t>self._free.size()

    def __contains__(self, key):
        try:
            k = _route_key(key)
        except (TypeError, ValueError):
            return False
        return self.get(*k) is not None

    def stats(self):
        """The table's counters and route count."""
        return {
            "routes": len(self), "accepted": self.accepted, "unrouted": self.unrouted,
            "duplicates": self.duplicates, "passed": self.passed, "invalid": self.invalid,
            "implausible": self.implausible, "holes": self.holes,
            "holes_dropped": self.holes_dropped,
        }

    def drops(self):
        """Events the table dropped, by reason (the ``dispatch_dropped`` metric).

        ``implausible`` counts forward jumps the next event disproved: the
        route rewound, and the jump's key is dropped from its sequence (the
        event itself had been delivered, see dispatch.pxd).
        """
        return {
            "duplicate": self.duplicates, "unrouted": self.unrouted,
            "invalid": self.invalid, "implausible": self.implausible,
        }


def route_key_of(Event ev):
    """The route key an event is looked up under, or None if it always passes."""
    kind = KIND_NAMES[ev.kind_id]
    if ev.kind_id >= GAP or (ev.kind_id == BOOK_SNAPSHOT
                             and (<BookDepth>ev).source_ != SOURCE_STREAM):
        return None
    q = None
    if ev.kind_id == KLINE:
        q = (<Kline>ev).interval
    elif ev.kind_id == TICKER:
        q = (<Ticker>ev).window
    return (ev.market, ev.symbol, kind, q)

# cython: language_level=3
# distutils: language = c++
"""The Dispatcher's per-batch path, compiled (the Dispatcher is dispatcher.py).

``Gate.on_events`` is the sink of every WebSocket connection: it filters the
batch in place through the dispatch table and hands what stays on, once, with
no Python frame in between (each costs about a microsecond on a cold cache).
"""

cimport cython
from cpython.list cimport PyList_GET_SIZE

from meltica._core.dispatch cimport DispatchTable
from meltica._core.events cimport MT_NA, Event
from meltica.telemetry._histogram cimport Observer


@cython.final
cdef class Gate:
    """table: the authoritative DispatchTable; downstream: the Conductor's on_events.

    event_latency: None, or market -> histogram (``observe(seconds)``) of the
    exchange event time -> local receive delay, observed once per batch on its
    first event that carries an exchange and a receive time (negative delays, from clock
    offset, count as 0).  It is read at every batch, so its entries may
    change; a `Histogram` is updated in place from C (``_histogram.pxd``)."""
    cdef DispatchTable table
    cdef public object downstream
    cdef public dict event_latency
    # market -> Observer of the histogram event_latency last gave for it
    cdef dict _observers

    def __init__(self, DispatchTable table not None, downstream):
        self.table = table
        self.downstream = downstream
        self.event_latency = None
        self._observers = {}

    def on_events(self, list batch not None):
        """Filter a batch through the table; pass what stays on, once."""
        if self.event_latency is not None and PyList_GET_SIZE(batch):
            self._observe(batch)
        if self.table.accept(batch):
            self.downstream(batch)

    cdef int _observe(self, list batch) except -1:
        cdef Event ev
        cdef str market
        cdef object h, obs
        for x in batch:
            if not isinstance(x, Event):
                continue
            ev = <Event>x
            if ev.ts_event_ == MT_NA or ev.ts_event_ <= 0 or ev.ts_recv <= 0:
                continue
            market = ev.market
            h = self.event_latency.get(market)
            if h is not None:
                obs = self._observers.get(market)
                if obs is None or (<Observer>obs).target is not h:
                    obs = self._observers[market] = Observer(h)
                (<Observer>obs).observe_ns(ev.ts_recv - ev.ts_event_)
            return 0
        return 0

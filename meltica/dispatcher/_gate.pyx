# cython: language_level=3
# distutils: language = c++
"""The Dispatcher's per-batch path, compiled (the Dispatcher is dispatcher.py).

``Gate.on_events`` is the sink of every WebSocket connection: it filters the
batch in place through the dispatch table and hands what stays on, once, with
no Python frame in between (each costs about a microsecond on a cold cache).
"""

cimport cython
from cpython.list cimport PyList_GET_SIZE
from libc.stdint cimport int64_t

from meltica._core.dispatch cimport DispatchTable
from meltica._core.events cimport MT_NA, Event


@cython.final
cdef class Gate:
    """table: the authoritative DispatchTable; downstream: the Conductor's on_events.

    event_latency: None, or market -> histogram (``observe(seconds)``) of the
    exchange event time -> local receive delay, observed once per batch on its
    first event that carries an exchange time (negative delays, from clock
    offset, count as 0)."""
    cdef DispatchTable table
    cdef public object downstream
    cdef public dict event_latency

    def __init__(self, DispatchTable table not None, downstream):
        self.table = table
        self.downstream = downstream
        self.event_latency = None

    def on_events(self, list batch not None):
        """Filter a batch through the table; pass what stays on, once."""
        if self.event_latency is not None and PyList_GET_SIZE(batch):
            self._observe(batch)
        if self.table.accept(batch):
            self.downstream(batch)

    cdef int _observe(self, list batch) except -1:
        cdef Event ev
        cdef int64_t d
        cdef object h
        for x in batch:
            if not isinstance(x, Event):
                continue
            ev = <Event>x
            if ev.ts_event_ == MT_NA or ev.ts_event_ <= 0:
                continue
            h = self.event_latency.get(ev.market)
            if h is not None:
                d = ev.ts_recv - ev.ts_event_
                h.observe((d if d > 0 else 0) / 1e9)
            return 0
        return 0

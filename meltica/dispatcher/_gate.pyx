# cython: language_level=3
# distutils: language = c++
"""The Dispatcher's per-batch path, compiled (the Dispatcher is dispatcher.py).

``Gate.on_events`` is the sink of every WebSocket connection: it filters the
batch in place through the dispatch table and hands what stays on, once, with
no Python frame in between (each costs about a microsecond on a cold cache).
"""

cimport cython

from meltica._core.dispatch cimport DispatchTable


@cython.final
cdef class Gate:
    """table: the authoritative DispatchTable; downstream: the Conductor's on_events."""
    cdef DispatchTable table
    cdef public object downstream

    def __init__(self, DispatchTable table not None, downstream):
        self.table = table
        self.downstream = downstream

    def on_events(self, list batch not None):
        """Filter a batch through the table; pass what stays on, once."""
        if self.table.accept(batch):
            self.downstream(batch)

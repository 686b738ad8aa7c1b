# cython: language_level=3
# distutils: language = c++
"""The Data Bus's per-batch path, compiled (the bus itself is meltica/bus/data.py).

The Conductor calls ``Publisher.publish`` once per batch.  It writes the batch
to the ring, observes the receive -> publish latency of the batch's first
event, resolves the futures of the waiting consumers that want something in
it, and pauses the readers when a ``block`` consumer reaches high water.  No
Python function runs on that path unless something rare happens: a ``block``
consumer with no room (``bus._overflow``) or a pause (``bus._set_paused``),
both of which stay in Python.  Each Python frame costs about a microsecond
on a cold cache, and at 10k frames/s every batch finds the cache cold.

``read`` is the consumers' side: one ring read and the resume check.
"""

cimport cython
from cpython.list cimport PyList_GET_SIZE
from libc.stdint cimport int64_t, uint64_t

from meltica._core.events cimport Event
from meltica._core.ring cimport Cursor, Ring
from meltica.telemetry._histogram cimport Observer
from meltica.wallclock cimport wall_ns


@cython.final
cdef class Publisher:
    """The publish and read path of one `InMemoryDataBus` (see the module docstring).

    bus: the owning bus (its ``_overflow()`` and ``_set_paused(bool)`` are the
    slow paths); ring: its ring; clock: None to read CLOCK_REALTIME here, or a
    callable returning wall-clock ns (tests inject one).
    """
    cdef Ring ring
    cdef object bus
    cdef public object clock
    # latency: None, a LatencyObserver (observe(seconds) is called), or a
    # meltica.telemetry.metrics.Histogram, updated in place from C
    cdef object _latency
    cdef Observer _observer           # of _latency, or None
    # consumers waiting for events: (consumer, cursor, future), oldest first
    cdef list _waiting
    cdef public bint paused           # a block consumer paused the readers
    cdef readonly int64_t wakeups     # futures resolved by publish

    def __init__(self, bus, Ring ring not None, clock=None):
        self.bus = bus
        self.ring = ring
        self.clock = clock
        self._latency = None
        self._observer = None
        self._waiting = []
        self.paused = False
        self.wakeups = 0

    # ------------------------------------------------------------ latency

    @property
    def latency(self):
        return self._latency

    @latency.setter
    def latency(self, observer):
        self._observer = None if observer is None else Observer(observer)
        self._latency = observer

    cdef inline int64_t _now(self) except? -1:
        if self.clock is None:
            return wall_ns()
        return self.clock()

    # ------------------------------------------------------------ publishing

    def publish(self, list batch not None):
        """Publish `batch` (in order) to every consumer; wakes the waiting ones
        that may want something in it, once each."""
        cdef Ring ring = self.ring
        cdef Py_ssize_t n = PyList_GET_SIZE(batch), written, w
        cdef uint64_t kinds
        cdef int64_t now
        cdef object first
        if self._latency is not None and n:
            # one clock read per batch: the publish latency, and the stamp the
            # ring keeps per slot for the consumers' delivery latency
            now = self._now()
            ring.stamp = now
            first = batch[0]
            if isinstance(first, Event) and (<Event>first).ts_recv > 0:
                self._observer.observe_ns(now - (<Event>first).ts_recv)
        written = ring.publish(batch)
        kinds = ring.last_kinds if written else 0
        while written < n:
            if not self.bus._overflow():
                raise AssertionError("ring refused events with no full block consumer")
            w = ring.publish(batch[written:])
            if w:
                kinds |= ring.last_kinds   # every part written wakes its consumers
            written += w
        if PyList_GET_SIZE(self._waiting):
            self._wake(kinds)
        if not self.paused and ring.pressure() == 2:
            self.bus._set_paused(True)

    cdef int _wake(self, uint64_t kinds) except -1:
        cdef list still = []
        cdef tuple entry
        cdef Cursor cursor
        cdef object consumer, fut
        for entry in self._waiting:
            consumer, cursor, fut = entry
            if cursor.kind_mask & kinds:
                if not fut.done():
                    fut.set_result(None)
                consumer.wakeups += 1
                self.wakeups += 1
            else:
                # it read everything before waiting, and nothing new is of its kinds
                self.ring.skip(cursor)
                still.append(entry)
        self._waiting = still
        return 0

    # ------------------------------------------------------------ consumers

    def wait(self, consumer, Cursor cursor not None, fut):
        """`consumer` waits on `fut` for events of `cursor`'s kinds."""
        self.unwait(consumer)
        self._waiting.append((consumer, cursor, fut))

    def unwait(self, consumer):
        """`consumer` no longer waits (no-op if it was not waiting)."""
        cdef tuple entry
        for entry in self._waiting:
            if entry[0] is consumer:
                self._waiting = [e for e in self._waiting if e[0] is not consumer]
                return

    def read(self, Cursor cursor not None, Py_ssize_t max_n):
        """Up to `max_n` events for `cursor`; resumes the readers once a
        read brought every ``block`` consumer to its low water."""
        cdef Ring ring = self.ring
        cdef list out = ring.read(cursor, max_n)
        if self.paused and cursor.policy == 0 and ring.pressure() == 0:
            self.bus._set_paused(False)
        return out

# cython: language_level=3
# distutils: language = c++
"""Latency observations from compiled code (the interface is _histogram.pxd).

The Dispatcher's Gate and the Data Bus Publisher each observe one latency per
batch.  ``Histogram.observe`` is a Python function (about a microsecond on a
cold cache, at every socket read); an `Observer` of a `Histogram` does the
same update from C.
"""

cimport cython
from libc.stdlib cimport free, malloc


@cython.final
cdef class Observer:
    """Feeds `target` (a Histogram, or anything with ``observe(seconds)``)."""

    def __cinit__(self):
        self.bounds = NULL
        self.n_bounds = 0

    def __init__(self, target not None):
        from meltica.telemetry.metrics import Histogram

        cdef Py_ssize_t i, n
        free(self.bounds)  # __init__ called again: forget the first target's bounds
        self.bounds = NULL
        self.n_bounds = 0
        self.target = target
        self.histogram = None
        if type(target) is not Histogram:
            return
        n = len(target.buckets)
        self.bounds = <double *>malloc(sizeof(double) * (n if n else 1))
        if self.bounds == NULL:
            raise MemoryError()
        for i in range(n):
            self.bounds[i] = target.buckets[i]
        self.n_bounds = n
        self.histogram = target

    def __dealloc__(self):
        free(self.bounds)

    cdef int observe_ns(self, int64_t delay_ns) except -1:
        """Observe `delay_ns` (ns; negative counts as 0) in seconds."""
        cdef double s = (delay_ns if delay_ns > 0 else 0) / 1e9
        cdef Py_ssize_t lo = 0, hi = self.n_bounds, mid
        cdef object h = self.histogram
        cdef list counts
        if h is None:
            self.target.observe(s)
            return 0
        while lo < hi:                       # bisect.bisect_left's steps, over the bounds
            mid = (lo + hi) >> 1
            if self.bounds[mid] < s:
                lo = mid + 1
            else:
                hi = mid
        counts = h.counts
        counts[lo] = counts[lo] + 1
        h.total = h.total + s
        h.n = h.n + 1
        return 0

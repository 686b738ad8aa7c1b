# cython: language_level=3
# A latency observer for the compiled per-batch paths (the Dispatcher's Gate,
# the Data Bus Publisher): one observation = one delay in ns, counted in seconds
# with negative delays (clock offset) as 0.
#
# When the target's type is exactly meltica.telemetry.metrics.Histogram, its
# bucket bounds are copied into a C array once, at creation, and each
# observation updates its counts/total/n in place, as Histogram.observe would,
# with no Python call.  Any other target gets target.observe(seconds).
# Invariants:
#   bounds[0 .. n_bounds) equal target.buckets as of creation (a histogram
#     object new to a caller needs a new Observer: the callers compare `target`)
#   histogram is target or None
cimport cython
from libc.stdint cimport int64_t


@cython.final
cdef class Observer:
    cdef readonly object target     # what it feeds
    cdef object histogram           # target if its type is exactly Histogram, else None
    cdef double *bounds             # that histogram's bucket bounds
    cdef Py_ssize_t n_bounds

    cdef int observe_ns(self, int64_t delay_ns) except -1

# cython: language_level=3
# The wall clock for compiled code outside meltica._core (which reads no clock):
# CLOCK_REALTIME in ns, the same clock as time.time_ns().  Inline only: a
# cimport of this file needs no module at run time.
from libc.stdint cimport int64_t
from posix.time cimport CLOCK_REALTIME, clock_gettime, timespec


cdef inline int64_t wall_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <int64_t>ts.tv_sec * 1_000_000_000 + ts.tv_nsec

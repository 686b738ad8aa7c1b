# cython: language_level=3
# The SnapshotStore core, for C callers (BookSet.store_fused).
cimport cython
from libc.stdint cimport int64_t

# compare_and_set status codes
cdef enum:
    SNAP_OK = 1
    SNAP_MISMATCH = 0
    SNAP_FULL = -1


@cython.final
cdef class _Entry:
    cdef int64_t version
    cdef int64_t deadline_ns     # INT64_MAX: never expires
    cdef object value


@cython.final
cdef class SnapshotTable:
    cdef dict entries
    cdef readonly Py_ssize_t max_entries
    cdef int64_t next_deadline   # lower bound of every live entry's deadline
    # counters
    cdef readonly int64_t sets, mismatches, refused, expired, sweeps

    cdef _Entry live(self, object key, int64_t now_ns)
    cdef int cas(self, object key, object expected_version, int64_t version, object value,
                 int64_t ttl_ns, int64_t now_ns) except -2

# cython: language_level=3
"""The in-memory SnapshotStore core: versioned entries with compare-and-set.

Pure computation: every call takes ``now_ns`` (a monotonic clock reading the
Python layer supplies), so expiry is deterministic under test.  An entry whose
deadline is at or before ``now_ns`` is treated as absent and removed when met.
Size is bounded by ``max_entries``: inserting a new key into a full table
first sweeps expired entries; if none can go, the insert is refused (status
`FULL`) and counted, never silently evicting live state.
"""

cimport cython
from libc.stdint cimport INT64_MAX, int64_t

# compare_and_set status codes (the C enum is in snapshot.pxd)
OK = SNAP_OK
MISMATCH = SNAP_MISMATCH
FULL = SNAP_FULL


@cython.final
@cython.freelist(64)
cdef class _Entry:
    pass


@cython.final
cdef class SnapshotTable:
    """Key -> (version, value, deadline) with CAS; see the module docstring
    (the fields are declared in snapshot.pxd)."""

    def __init__(self, Py_ssize_t max_entries):
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.entries = {}
        self.max_entries = max_entries
        self.next_deadline = INT64_MAX

    def __len__(self):
        return len(self.entries)

    cdef _Entry live(self, object key, int64_t now_ns):
        cdef object found = self.entries.get(key)
        cdef _Entry e
        if found is None:
            return None
        e = <_Entry>found
        if e.deadline_ns <= now_ns:
            del self.entries[key]
            self.expired += 1
            return None
        return e

    def get(self, key, int64_t now_ns):
        """``(version, value)`` of the live entry, or None."""
        cdef _Entry e = self.live(key, now_ns)
        if e is None:
            return None
        return (e.version, e.value)

    def compare_and_set(self, key, expected_version, int64_t version, value,
                        int64_t ttl_ns, int64_t now_ns):
        """Set `key` if its live version equals `expected_version` (None:
        absent or expired) and `version` is not older than it; the entry
        lives `ttl_ns` from `now_ns` (0: forever).  Returns OK, MISMATCH or
        FULL."""
        return self.cas(key, expected_version, version, value, ttl_ns, now_ns)

    cdef int cas(self, object key, object expected_version, int64_t version, object value,
                 int64_t ttl_ns, int64_t now_ns) except -2:
        cdef _Entry e = self.live(key, now_ns)
        cdef int64_t deadline_ns = INT64_MAX
        if ttl_ns < 0:
            raise ValueError(f"ttl_ns must be >= 0, got {ttl_ns}")
        if 0 < ttl_ns < INT64_MAX - now_ns:
            deadline_ns = now_ns + ttl_ns
        if e is None:
            if expected_version is not None:
                self.mismatches += 1
                return SNAP_MISMATCH
            if len(self.entries) >= self.max_entries:
                self.sweep(now_ns)
                if len(self.entries) >= self.max_entries:
                    self.refused += 1
                    return SNAP_FULL
            e = _Entry.__new__(_Entry)
            self.entries[key] = e
        elif expected_version is None or <int64_t>expected_version != e.version \
                or version < e.version:
            self.mismatches += 1
            return SNAP_MISMATCH
        e.version = version
        e.value = value
        e.deadline_ns = deadline_ns
        if deadline_ns < self.next_deadline:
            self.next_deadline = deadline_ns
        self.sets += 1
        return SNAP_OK

    def delete(self, key, int64_t now_ns):
        """Remove `key`; True if a live entry was removed."""
        if self.live(key, now_ns) is None:
            return False
        del self.entries[key]
        return True

    def sweep(self, int64_t now_ns):
        """Remove every expired entry; returns how many went.  A no-op while
        no deadline can have passed."""
        cdef _Entry e
        cdef int64_t lowest = INT64_MAX
        cdef list dead = []
        if now_ns < self.next_deadline:
            return 0
        self.sweeps += 1
        for key, entry in self.entries.items():
            e = <_Entry>entry
            if e.deadline_ns <= now_ns:
                dead.append(key)
            elif e.deadline_ns < lowest:
                lowest = e.deadline_ns
        for key in dead:
            del self.entries[key]
        self.expired += len(dead)
        self.next_deadline = lowest
        return len(dead)

# The Data Bus ring: one write per event, per-consumer cursors.
#
# Positions are int64 counters that only grow; slot = position & mask.  The
# ring holds a strong reference to each event in its slot until every
# attached cursor has moved past it (then the slot is cleared, so memory
# holds only unread events, not a ring's worth) or the slot is reused.  Every
# cursor reads [pos, head); invariants:
#   slots of [tail, head) hold references, every other slot is NULL
#   tail <= cursor.pos for every attached cursor
#   head - capacity <= cursor.pos <= head     for every attached cursor
#   a block cursor's unread slots are never overwritten (publish stops short)
#   a lossy (drop_oldest / conflate) cursor is moved past a slot before that
#   slot is overwritten, and what it lost is counted exactly (eviction)
# Each slot also keeps the `stamp` its writer set before publishing (the bus's
# publish time, for the consumers' delivery latency); the ring never reads a clock.
# Pure computation: no asyncio, clocks or logging.  The bus owns wake-ups,
# pause/resume (meltica/bus/_publish.pyx, compiled, on the per-batch path) and
# gap-marker creation (meltica/bus/data.py).

from cpython.ref cimport PyObject
from libc.stdint cimport int64_t, uint64_t


cdef enum:
    POLICY_BLOCK = 0
    POLICY_DROP_OLDEST = 1
    POLICY_CONFLATE = 2


cdef class Cursor:
    # identity and filter (fixed at creation)
    cdef readonly int policy           # POLICY_*
    cdef readonly uint64_t kind_mask   # bit k set: kind id k wanted
    cdef readonly object markets       # frozenset[str] or None (all)
    cdef readonly object symbols       # frozenset[str] or None (all)
    cdef readonly int64_t limit        # most positions it may lag (<= capacity)
    cdef readonly int64_t high_water   # block: lag that pauses the reader
    cdef readonly int64_t low_water    # block: lag that resumes it
    # position
    cdef readonly int64_t pos          # next ring position to read
    cdef readonly bint attached        # False once detached from its ring
    # counters (plain C, read at scrape time)
    cdef readonly int64_t delivered    # events handed to the consumer
    cdef readonly int64_t dropped      # matching events lost (drop_oldest)
    cdef readonly int64_t conflated    # matching events superseded (conflate)
    cdef readonly int64_t seen         # matching events delivered + dropped
    cdef readonly int64_t gaps         # gap episodes taken (markers made)
    cdef readonly int64_t read_stamp   # stamp of the first event of the last read (0: none)
    # pending gap (drop_oldest): ordinals in `seen` numbering, 0 = none
    cdef readonly int64_t gap_from
    cdef readonly int64_t gap_to
    # conflate: latest matching event per key, oldest latest first
    cdef dict latest

    cdef bint matches(self, object ev)
    cdef void lose(self, object ev)


cdef class Ring:
    cdef PyObject **slots              # capacity entries, NULL or owned refs
    cdef int64_t *stamps               # capacity entries: `stamp` when the slot was written
    cdef public int64_t stamp          # set by the writer before publish (its publish time)
    cdef readonly int64_t capacity     # power of two
    cdef int64_t mask                  # capacity - 1
    cdef readonly int64_t head         # position of the next write
    cdef readonly int64_t tail         # oldest position still referenced
    cdef readonly int64_t published    # events written (== head)
    cdef readonly int64_t evicted      # slots overwritten under a lossy cursor
    cdef readonly uint64_t last_kinds  # kind bits of the last published batch
    cdef readonly list cursors         # attached Cursor objects

    cdef inline object at(self, int64_t p)
    cdef void release(self) noexcept
    cdef void evict(self, Cursor c, int64_t end, list batch)
    cpdef skip(self, Cursor c)
    cpdef int pressure(self)
    cpdef Py_ssize_t publish(self, list batch) except -1
    cpdef list read(self, Cursor c, Py_ssize_t max_n)

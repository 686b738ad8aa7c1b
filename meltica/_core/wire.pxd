# The v1 wire JSON (docs/wire-format.md) in compiled code, both ways.
#
# Encoding writes each event straight from its C fields (events.pxd) into one
# growable byte buffer: no dict, no str per field, decimals as mt_format_fixed
# (fixed.h) writes them.
# The bytes equal, for every event, what
#     json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
#         .encode(event.to_wire()).encode()
# produces: same key order, same string escaping, UTF-8.
#
# Decoding parses with simdjson's DOM parser into a field table (wire.hpp) and
# fills the event classes directly.  Input the table does not hold in the
# canonical form (a float where an int goes, a repeated key, bad JSON...)
# goes to the dict-based reference (json.loads + event_from_wire), which
# accepts it or raises WireError naming the field: the accepted inputs, the
# events built and the error messages are exactly the reference's.

from libc.stdint cimport int64_t

from meltica._core.events cimport Event, mt_level


cdef extern from "wire.hpp" namespace "mt" nogil:
    cdef cppclass WireBuf:
        char *p                          # bytes written so far: p[0:len]
        size_t len
        size_t cap
        void clear(size_t keep)          # len = 0; frees a buffer grown past keep
        void put(const char *s, size_t n) except +
        void put_char(char c) except +
        void put_i64(int64_t v) except +
        void put_fixed(int64_t m, int e) except +      # "text" or null (MT_DEC_NA)
        void put_levels(const mt_level *lv, size_t n) except +  # [["p","q"],...]
        void put_escaped(const char *s, size_t n) except +  # string body, no quotes
        void put_str(const char *s, size_t n) except +      # quoted and escaped


# Append event `ev` as one compact JSON object (no newline) to `out`.
# Raises TypeError for an object that is no canonical event, and
# UnicodeEncodeError for a str field holding a lone surrogate (as the stdlib
# encoder path does); `out` may then hold a partial object.
cdef int put_event(WireBuf *out, Event ev) except -1

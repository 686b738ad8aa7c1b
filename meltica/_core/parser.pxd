# C entry points of the frame parser for other compiled modules (the
# WebSocket listener calls it once per frame with picows's payload pointer,
# so no Python-level call happens per frame).

from libc.stdint cimport int64_t


# Parse one frame held at ptr[0:n] with the FrameParser `parser`, appending
# its events (and Reply objects) to `out`; returns the number appended.
# Raises the same typed errors as FrameParser.parse (the frame is then
# rejected whole and nothing is appended).
cdef int parse_frame(object parser, const char *ptr, size_t n, int64_t ts_recv,
                     list out) except -1

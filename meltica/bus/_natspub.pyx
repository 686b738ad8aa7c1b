# cython: language_level=3
# distutils: language = c++
"""The NATS JetStream publisher's per-batch path, compiled (meltica/bus/nats.py owns it).

`FrameWindow` turns a batch of events into the NATS protocol bytes of one
JetStream publish per event, written back to back into one buffer::

    HPUB <subject> <ack prefix>.<n> <header bytes> <total bytes>\\r\\n
    NATS/1.0\\r\\nNats-Msg-Id: <key>\\r\\n[traceparent: <trace>\\r\\n]\\r\\n
    <v1 wire JSON>\\r\\n

and keeps every frame until JetStream acknowledges it: event ``n`` (a
publish number counted from 1) lives in slot ``n % capacity``, so the ack,
which the server sends to the reply subject ``<ack prefix>.<n>``, finds its
slot without a lookup table.  The window never holds more than `capacity`
publish numbers between the oldest unacknowledged one and the next, which
bounds its memory; the frames of a batch share the batch's buffer, freed
when its last event is acknowledged.  `frames` gives every unacknowledged
frame again, oldest first, with the same reply subject and ``Nats-Msg-Id``,
for a republish that JetStream's duplicate window turns into one copy.

Pure computation: no I/O, clock or logging here; the caller passes the time
and reads the counters.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memchr, memcmp

from meltica._core.events cimport Event
from meltica._core.wire cimport WireBuf, put_event

from meltica._core.events import KIND_NAMES

# ack codes returned by FrameWindow.ack
cdef enum:
    _STORED = 0         # stored now
    _DUPLICATE = 1      # JetStream already had it (a republished copy)
    _ERROR = 2          # an error reply (or a status such as 503 no responders)
    _UNKNOWN = 3        # not a slot in the window: a second ack of a republished event

ACK_STORED = _STORED
ACK_DUPLICATE = _DUPLICATE
ACK_ERROR = _ERROR
ACK_UNKNOWN = _UNKNOWN

DEF KEEP_BYTES = 1 << 20

cdef tuple _KINDS = tuple((k or "").encode() for k in KIND_NAMES)
cdef bytes _KEY_FIELD = b',"key":"'
cdef bytes _HDR_LINE = b"NATS/1.0\r\n"
cdef bytes _MSG_ID = b"Nats-Msg-Id: "
cdef bytes _TRACE = b"traceparent: "
# nats-server writes `"duplicate": true` (with a space); JSON allows any white space
cdef bytes _DUPLICATE_KEY = b'"duplicate":'
cdef bytes _ERROR_KEY = b'"error"'

# Scratch buffers: every call holds the GIL from the first byte written to the
# bytes object returned, and runs no Python code in between.
cdef WireBuf _pay
cdef WireBuf _out
cdef WireBuf _rest


cdef inline void _token(WireBuf *b, const char *p, Py_ssize_t n) except *:
    """One subject token: `_` when empty; bytes NATS reserves become `_`."""
    cdef Py_ssize_t i
    cdef char c
    if n == 0:
        b.put_char(b"_")
        return
    b.put(p, n)
    for i in range(<Py_ssize_t>b.len - n, <Py_ssize_t>b.len):
        c = b.p[i]
        if c == b"." or c == b"*" or c == b">" or c == b" " or c == b"\t" \
                or c == b"\r" or c == b"\n":
            b.p[i] = b"_"


cdef inline void _str_token(WireBuf *b, str s) except *:
    cdef Py_ssize_t n = 0
    cdef const char *p = b""
    if s is not None:
        p = PyUnicode_AsUTF8AndSize(s, &n)
    _token(b, p, n)


cdef inline void _header_value(WireBuf *b, const char *p, Py_ssize_t n) except *:
    """A header value; CR and LF (which would end the header) become spaces."""
    cdef Py_ssize_t i
    cdef char c
    b.put(p, n)
    for i in range(<Py_ssize_t>b.len - n, <Py_ssize_t>b.len):
        c = b.p[i]
        if c == b"\r" or c == b"\n":
            b.p[i] = b" "


cdef inline void _put_int(WireBuf *b, int64_t v) except *:
    b.put_i64(v)


@cython.final
cdef class FrameWindow:
    """Frames of JetStream publishes not acknowledged yet (module docstring).

    capacity: most publish numbers in flight (``nats.publish_buffer``);
    ack_prefix: the reply subject prefix, a subject the owner subscribes to as
    ``<ack_prefix>.*``.
    """
    cdef readonly Py_ssize_t capacity
    cdef readonly bytes ack_prefix
    cdef int64_t *_seq                 # publish number held by each slot, 0: free
    cdef int64_t *_sent                # when each slot was last sent, ns
    cdef Py_ssize_t *_start            # its frame: _bufs[slot][start:start+len]
    cdef Py_ssize_t *_len
    cdef list _bufs                    # the batch buffer each slot's frame lives in
    cdef readonly int64_t next_seq     # publish number of the next event
    cdef readonly int64_t head         # oldest unacknowledged number (next_seq if none)
    cdef readonly int64_t unacked      # slots holding a frame
    # counters (monotonic)
    cdef readonly int64_t published    # events taken into the window
    cdef readonly int64_t acked        # acks that freed a slot (stored or duplicate)
    cdef readonly int64_t duplicates   # of those, JetStream reported a duplicate
    cdef readonly int64_t errors       # error replies
    cdef readonly int64_t late         # acks for numbers no longer in the window
    cdef readonly int64_t republished  # frames handed out again by frames()
    # sampled events (a trace field, so a traceparent header) taken in: their
    # count, and of the last append call that took any, the first one's
    # traceparent and publish number and the last one's publish number
    cdef readonly int64_t traced
    cdef readonly object trace_first
    cdef readonly int64_t trace_first_seq
    cdef readonly int64_t trace_last_seq

    def __cinit__(self, Py_ssize_t capacity, bytes ack_prefix not None):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._seq = <int64_t *>malloc(sizeof(int64_t) * capacity)
        self._sent = <int64_t *>malloc(sizeof(int64_t) * capacity)
        self._start = <Py_ssize_t *>malloc(sizeof(Py_ssize_t) * capacity)
        self._len = <Py_ssize_t *>malloc(sizeof(Py_ssize_t) * capacity)
        if not (self._seq and self._sent and self._start and self._len):
            raise MemoryError()
        cdef Py_ssize_t i
        for i in range(capacity):
            self._seq[i] = 0
        self.capacity = capacity
        self.ack_prefix = ack_prefix
        self._bufs = [None] * capacity
        self.next_seq = 1
        self.head = 1

    def __dealloc__(self):
        free(self._seq)
        free(self._sent)
        free(self._start)
        free(self._len)

    @property
    def room(self):
        """Events `append` takes now."""
        return self.capacity - (self.next_seq - self.head)

    @property
    def oldest_sent_ns(self):
        """When the oldest unacknowledged frame was last sent (0: none)."""
        if self.unacked == 0:
            return 0
        return self._sent[self.head % self.capacity]

    def append(self, list events not None, int64_t now_ns):
        """Frames for the first events of `events` that fit: ``(buffer, taken)``.

        ``buffer`` holds the frames of events ``[0:taken]`` back to back
        (``b""`` when none fit); each is kept until acknowledged.  Raises
        TypeError for an object that is no canonical event (nothing is taken).
        """
        cdef Py_ssize_t room = self.capacity - (self.next_seq - self.head)
        cdef Py_ssize_t n = min(room, len(events))
        cdef Py_ssize_t i, k, slot, mark, hdr, klen, tlen
        cdef Py_ssize_t kstart
        cdef const char *kp
        cdef const char *tp
        cdef const char *q
        cdef bytes kb
        cdef bytes kind
        cdef Event ev
        cdef object item
        cdef int64_t seq
        cdef Py_ssize_t plen = len(self.ack_prefix)
        cdef const char *prefix = PyBytes_AS_STRING(self.ack_prefix)
        cdef Py_ssize_t n_traced = 0
        cdef Py_ssize_t first_traced = -1
        cdef Py_ssize_t last_traced = -1
        if n <= 0:
            return b"", 0
        for i in range(n):
            item = events[i]
            if not isinstance(item, Event):
                raise TypeError(f"not a canonical event: {item!r}")
        _out.len = 0
        try:
            for i in range(n):
                ev = <Event>events[i]
                _pay.len = 0
                put_event(&_pay, ev)
                # the key as the wire JSON holds it (the first ,"key":" is the
                # field: a quote inside an earlier string is escaped)
                kb = None
                kp = NULL
                klen = 0
                for k in range(<Py_ssize_t>_pay.len - 8):
                    if memcmp(_pay.p + k, <const char *>_KEY_FIELD, 8) == 0:
                        kstart = k + 8
                        q = <const char *>memchr(_pay.p + kstart, b'"', _pay.len - kstart)
                        if q != NULL and memchr(
                            _pay.p + kstart, b"\\", q - _pay.p - kstart
                        ) == NULL:
                            kp = _pay.p + kstart
                            klen = q - kp
                        break
                if kp == NULL:  # an escaped key: the Python spelling
                    kb = ev.key.encode()
                    kp = PyBytes_AS_STRING(kb)
                    klen = PyBytes_GET_SIZE(kb)
                tlen = 0
                tp = NULL
                if ev.trace is not None:
                    tp = PyUnicode_AsUTF8AndSize(ev.trace, &tlen)
                    if n_traced == 0:
                        first_traced = i
                    last_traced = i
                    n_traced += 1
                hdr = 10 + 13 + klen + 2 + 2
                if tlen:
                    hdr += 13 + tlen + 2
                seq = self.next_seq + i
                mark = _out.len
                _out.put(b"HPUB meltica.", 13)
                _str_token(&_out, ev.venue)
                _out.put_char(b".")
                _str_token(&_out, ev.market)
                _out.put_char(b".")
                kind = <bytes>_KINDS[ev.kind_id]
                _token(&_out, PyBytes_AS_STRING(kind), PyBytes_GET_SIZE(kind))
                _out.put_char(b".")
                _str_token(&_out, ev.symbol)
                _out.put_char(b" ")
                _out.put(prefix, plen)
                _out.put_char(b".")
                _put_int(&_out, seq)
                _out.put_char(b" ")
                _put_int(&_out, hdr)
                _out.put_char(b" ")
                _put_int(&_out, hdr + <Py_ssize_t>_pay.len)
                _out.put(b"\r\nNATS/1.0\r\nNats-Msg-Id: ", 25)
                _header_value(&_out, kp, klen)
                _out.put(b"\r\n", 2)
                if tlen:
                    _out.put(b"traceparent: ", 13)
                    _header_value(&_out, tp, tlen)
                    _out.put(b"\r\n", 2)
                _out.put(b"\r\n", 2)
                _out.put(_pay.p, _pay.len)
                _out.put(b"\r\n", 2)
                slot = seq % self.capacity
                self._start[slot] = mark
                self._len[slot] = _out.len - mark
                self._sent[slot] = now_ns
            buf = PyBytes_FromStringAndSize(_out.p, _out.len)
        finally:
            _out.clear(KEEP_BYTES)
            _pay.clear(KEEP_BYTES)
        for i in range(n):
            seq = self.next_seq + i
            slot = seq % self.capacity
            self._seq[slot] = seq
            self._bufs[slot] = buf
        if n_traced:
            self.traced += n_traced
            self.trace_first = (<Event>events[first_traced]).trace
            self.trace_first_seq = self.next_seq + first_traced
            self.trace_last_seq = self.next_seq + last_traced
        self.next_seq += n
        self.unacked += n
        self.published += n
        return buf, n

    def ack(self, subject, data, headers=None):
        """Apply the reply JetStream sent to ``subject``; an ACK_* code.

        A stored or duplicate ack frees the slot; an error (an ``"error"``
        object, or a status header such as 503 when no stream answers)
        leaves it for a republish.
        """
        cdef const char *s
        cdef Py_ssize_t n
        cdef bytes payload
        if isinstance(subject, str):
            s = PyUnicode_AsUTF8AndSize(subject, &n)
        else:
            subject = bytes(subject)
            s = PyBytes_AS_STRING(subject)
            n = PyBytes_GET_SIZE(subject)
        payload = data if type(data) is bytes else bytes(data)
        return self._ack(s, n, PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload),
                         bool(headers))

    cdef int _ack(self, const char *s, Py_ssize_t n, const char *d, Py_ssize_t dn,
                  bint headers) except -1:
        """`ack` on raw bytes: subject ``s[:n]``, payload ``d[:dn]``."""
        cdef Py_ssize_t i, slot
        cdef Py_ssize_t plen = PyBytes_GET_SIZE(self.ack_prefix)
        cdef int64_t seq = 0
        if n <= plen + 1 or memcmp(s, PyBytes_AS_STRING(self.ack_prefix), plen) != 0 \
                or s[plen] != b".":
            self.late += 1
            return _UNKNOWN
        for i in range(plen + 1, n):
            if s[i] < b"0" or s[i] > b"9" or seq > 100000000000000000:
                self.late += 1
                return _UNKNOWN
            seq = seq * 10 + (s[i] - 48)
        slot = seq % self.capacity
        if seq <= 0 or self._seq[slot] != seq:
            self.late += 1
            return _UNKNOWN
        if headers or dn == 0 or _find(d, dn, _ERROR_KEY):
            self.errors += 1
            return _ERROR
        self._seq[slot] = 0
        self._bufs[slot] = None
        self.unacked -= 1
        self.acked += 1
        cdef int code = _STORED
        if _is_duplicate(d, dn):
            self.duplicates += 1
            code = _DUPLICATE
        while self.head < self.next_seq and self._seq[self.head % self.capacity] != self.head:
            self.head += 1
        return code

    def frames(self, int64_t now_ns, Py_ssize_t limit=-1):
        """Every unacknowledged frame, oldest first, in one buffer; ``(buffer, count)``.

        At most `limit` frames when it is 0 or more (the oldest).  Marks them
        sent at `now_ns`.
        """
        cdef int64_t seq
        cdef Py_ssize_t slot, count = 0
        cdef bytes buf
        _out.len = 0
        try:
            for seq in range(self.head, self.next_seq):
                if count == limit:
                    break
                slot = seq % self.capacity
                if self._seq[slot] != seq:
                    continue
                buf = <bytes>self._bufs[slot]
                _out.put(PyBytes_AS_STRING(buf) + self._start[slot], self._len[slot])
                self._sent[slot] = now_ns
                count += 1
            out = PyBytes_FromStringAndSize(_out.p, _out.len)
        finally:
            _out.clear(KEEP_BYTES)
        self.republished += count
        return out, count


cdef bint _find(const char *d, Py_ssize_t n, bytes needle) noexcept:
    cdef Py_ssize_t m = PyBytes_GET_SIZE(needle)
    cdef const char *p = PyBytes_AS_STRING(needle)
    cdef Py_ssize_t i
    for i in range(n - m + 1):
        if d[i] == p[0] and memcmp(d + i, p, m) == 0:
            return True
    return False


cdef bint _is_duplicate(const char *d, Py_ssize_t n) noexcept:
    """The ack says ``"duplicate": true`` (any white space after the colon)."""
    cdef Py_ssize_t m = PyBytes_GET_SIZE(_DUPLICATE_KEY)
    cdef const char *p = PyBytes_AS_STRING(_DUPLICATE_KEY)
    cdef Py_ssize_t i, j
    for i in range(n - m + 1):
        if d[i] == p[0] and memcmp(d + i, p, m) == 0:
            j = i + m
            while j < n and (d[j] == b" " or d[j] == b"\t" or d[j] == b"\n" or d[j] == b"\r"):
                j += 1
            return n - j >= 4 and memcmp(d + j, b"true", 4) == 0
    return False


cdef inline Py_ssize_t _tokens(const char *p, Py_ssize_t a, Py_ssize_t b,
                               Py_ssize_t *starts, Py_ssize_t *ends, int most) noexcept:
    """Split ``p[a:b]`` on spaces and tabs into at most `most` tokens; their count
    (`most` + 1 when there are more)."""
    cdef int k = 0
    cdef Py_ssize_t i = a
    while i < b:
        while i < b and (p[i] == b" " or p[i] == b"\t"):
            i += 1
        if i >= b:
            break
        if k == most:
            return most + 1
        starts[k] = i
        while i < b and p[i] != b" " and p[i] != b"\t":
            i += 1
        ends[k] = i
        k += 1
    return k


cdef inline int64_t _digits(const char *p, Py_ssize_t a, Py_ssize_t b) noexcept:
    """The decimal number ``p[a:b]``; -1 when it is none (or absurdly long)."""
    cdef int64_t v = 0
    cdef Py_ssize_t i
    if b <= a or b - a > 12:
        return -1
    for i in range(a, b):
        if p[i] < b"0" or p[i] > b"9":
            return -1
        v = v * 10 + (p[i] - 48)
    return v


@cython.final
cdef class AckReader:
    """Takes the JetStream acks of a `FrameWindow` out of the bytes a NATS
    connection receives, before the client's own protocol parser sees them.

    `feed` frames every server operation of the byte stream (``MSG`` and
    ``HMSG`` by their byte counts, any other by its line); each ``MSG`` on
    subscription `sid` without a reply subject whose payload is no error
    (``MSG <ack prefix>.<n> <sid> <len>\\r\\n{"stream":..,"seq":..}\\r\\n``)
    is applied to the window here, a few dozen instructions per ack.  It
    returns the bytes of every other complete operation, in order, for the
    client's parser; an incomplete operation at the end waits for the next
    `feed`.  Error acks (and acks with headers) are passed on too: the
    owner handles those through the client's message path.
    """
    cdef readonly FrameWindow window
    cdef readonly int64_t sid
    cdef readonly int64_t fast_acks    # acks applied by feed
    cdef bytes _tail                   # an incomplete operation from the last feed

    def __cinit__(self, FrameWindow window not None, int64_t sid):
        self.window = window
        self.sid = sid
        self._tail = b""

    def reset(self):
        """Forget a partial operation (a new connection starts a new stream)."""
        self._tail = b""

    def take_tail(self):
        """The incomplete operation held back, handed over (and forgotten)."""
        cdef bytes tail = self._tail
        self._tail = b""
        return tail

    def feed(self, data):
        """Apply the acks in ``tail + data``; the other complete operations' bytes."""
        cdef bytes buf
        if self._tail:
            buf = self._tail + data
        elif type(data) is bytes:
            buf = <bytes>data
        else:
            buf = bytes(data)
        cdef const char *p = PyBytes_AS_STRING(buf)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(buf)
        cdef Py_ssize_t i = 0, le, body, total, size, k
        cdef int head, most
        cdef Py_ssize_t starts[6]
        cdef Py_ssize_t ends[6]
        cdef const char *nl
        cdef FrameWindow window = self.window
        _rest.len = 0
        try:
            while i < n:
                nl = <const char *>memchr(p + i, b"\n", n - i)
                if nl == NULL:
                    break  # the control line is incomplete
                le = nl - p + 1  # just past the line
                body = le - 1
                if body > i and p[body - 1] == b"\r":
                    body -= 1
                # the prefix's length and the most tokens after it: 3 or 4 for
                # MSG <subject> <sid> [reply] <size>, 4 or 5 for
                # HMSG <subject> <sid> [reply] <header size> <size>
                if n - i >= 4 and memcmp(p + i, b"MSG ", 4) == 0:
                    head, most = 4, 4
                elif n - i >= 5 and memcmp(p + i, b"HMSG ", 5) == 0:
                    head, most = 5, 5
                else:
                    _rest.put(p + i, le - i)
                    i = le
                    continue
                k = _tokens(p, i + head, body, starts, ends, most)
                size = _digits(p, starts[k - 1], ends[k - 1]) if most - 1 <= k <= most else -1
                if size < 0:
                    # malformed: the client's parser names the error
                    _rest.put(p + i, n - i)
                    i = n
                    break
                total = le + size + 2
                if total > n:
                    break
                # an ack: a MSG on our subscription, no reply subject, no error payload
                if head == 4 and k == 3 and size > 0 \
                        and _digits(p, starts[1], ends[1]) == self.sid \
                        and not _find(p + le, size, _ERROR_KEY):
                    window._ack(p + starts[0], ends[0] - starts[0], p + le, size, False)
                    self.fast_acks += 1
                else:
                    _rest.put(p + i, total - i)
                i = total
            self._tail = buf[i:] if i < n else b""
            out = PyBytes_FromStringAndSize(_rest.p, _rest.len) if _rest.len else b""
        finally:
            _rest.clear(KEEP_BYTES)
        return out

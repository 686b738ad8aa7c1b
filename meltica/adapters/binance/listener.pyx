# cython: language_level=3
# distutils: language = c++
"""The per-frame hot path: a picows listener that parses in C.

picows calls ``on_ws_frame`` through its C vtable, so a TEXT frame costs no
Python-level call: the receive time is read with ``clock_gettime`` once per
socket read (every frame a read brought shares it), the payload
is parsed in place by ``meltica._core.parser.parse_frame`` into the current
batch, and the batch is handed on as ``sink(batch)`` (Python, once per batch)
at the end of each socket read: picows marks the last complete frame of the
data it was given (``WSFrame.last_in_buffer``), so nothing waits for another
turn of the event loop.  Rare frames go to the owning
connection object (Python): ``Reply`` objects (acks, error frames,
``serverShutdown``), parse errors, pings, pongs, CLOSE and the disconnect.

A message the server fragments (a TEXT/BINARY frame with ``fin=0``, then
CONTINUATION frames up to one with ``fin=1``) is reassembled into one buffer
and parsed once, whole; a fragment is never parsed on its own.  A message
that grows past the parser's ``max_frame_bytes`` is refused whole (counted in
``fragmented_refused``, reported as ``FrameTooLarge``), and its remaining
fragments are skipped, so the buffer never holds more than that.

The owner must provide ``on_reply(reply)``, ``on_parse_error(exc)``,
``on_ping(payload)``, ``on_close_frame(code, reason)`` and
``on_disconnected()``; see ``meltica/adapters/binance/ws_conn.py``.

Tracing (docs/tracing.md): each hand-off draws one 64-bit number from a
xorshift generator and compares it with ``sample_threshold`` (0 when tracing
is off: nothing is drawn).  That draw is all an unsampled batch pays.  A
sampled batch calls ``tracer.begin(t_recv_ns)`` (Python: starts the batch
span, returns it and its W3C ``traceparent``), writes the ``traceparent``
into the ``trace`` field of each event, hands the batch on, stamps the
events the pipeline added to it (fused books, control events), and calls
``tracer.end(...)`` with the stage times and counts.
"""

cimport cython
from libc.stdint cimport int64_t, uint64_t
from picows.picows cimport WSFrame, WSListener, WSMsgType, WSTransport

from meltica._core.events cimport Event
from meltica._core.parser cimport parse_frame
from meltica.wallclock cimport wall_ns

from collections import deque

from meltica._core.parser import Reply
from meltica.errors import FrameTooLarge, MalformedFrame, ParseError

# Python globals rebound once: the type checks below are pointer compares.
cdef object _Reply = Reply
cdef object _ParseError = ParseError


def _retrieve(fut):
    # picows sets its own protocol errors (e.g. a frame over max_frame_size) on the
    # transport's disconnect future; nobody awaits it, so asyncio would log "Future
    # exception was never retrieved".  The owner learns the cause from the close
    # handshake instead (see ws_conn.py).
    if not fut.cancelled():
        fut.exception()


@cython.final
cdef class FrameListener(WSListener):
    """picows listener of one Binance connection (see the module docstring).

    parser: a ``meltica._core.parser.FrameParser`` for this connection;
    owner: the connection object receiving the rare frames; sink: callable
    taking each batch (a list of events; may be swapped at any time, e.g.
    during a rotation overlap).  Set ``track_symbols`` to a dict to collect,
    per event kind id, the set of symbols seen since the sets were last cleared
    (per-stream silence watch): a list indexed by kind id, holding a set for
    each kind to watch and None for the others.
    """
    # wiring
    cdef readonly object parser
    cdef readonly object owner
    cdef public object sink
    cdef public list track_symbols
    # A batch this long is handed on at once, inside the read: one socket read
    # can hold tens of thousands of frames (libuv reads a ready socket many
    # times per loop turn), and back-pressure (pause_reading from the bus)
    # must act within a bounded number of events.
    cdef public Py_ssize_t max_batch
    cdef readonly WSTransport transport
    cdef object _loop
    cdef object _flush_cb
    # the batch being collected; a flush is scheduled (after a resume) iff _scheduled
    cdef list _batch
    cdef bint _scheduled
    # paused by back-pressure: frames of the socket read in progress are still
    # parsed (picows hands over a whole read), but held here until resumed, so
    # what reaches the bus after a pause is bounded by max_batch.  A held read
    # (tens of thousands of events) is kept as chunks of max_batch, oldest
    # first, and handed on one chunk per sink call, so the bus can pause the
    # connection again between chunks.
    cdef bint _paused
    cdef object _held                      # deque of full chunks (lists)
    # fragmented message being reassembled (None: none); _frag_skip: the rest of
    # a refused message's fragments are skipped until its fin frame
    cdef bytearray _frag
    cdef bint _frag_skip
    # counters (plain C, read by the Python layer at scrape time)
    cdef readonly uint64_t frames          # every frame received (any opcode)
    cdef readonly uint64_t bytes           # payload bytes of those frames
    cdef readonly uint64_t data_frames     # TEXT/BINARY frames handed to the parser
    cdef readonly uint64_t events          # events appended to batches
    cdef readonly uint64_t replies         # Reply objects handed to the owner
    cdef readonly uint64_t parse_errors    # frames rejected by the parser (skipped)
    cdef readonly uint64_t pings           # PING frames received
    cdef readonly uint64_t pongs           # PONG frames received
    cdef readonly uint64_t batches         # flushes that called the sink
    cdef readonly uint64_t fragmented      # fragmented messages reassembled and parsed
    cdef readonly uint64_t fragmented_refused  # ... refused whole (too large, or broken)
    cdef readonly int64_t last_recv_ns     # CLOCK_REALTIME of the last frame, ns
    # the next frame opens a socket read (the last one ended at a frame
    # marked last_in_buffer): read the clock then
    cdef bint _read_start
    # tracing: a batch is sampled when its draw (never 0) is <= the threshold
    cdef public uint64_t sample_threshold
    cdef public object tracer              # meltica.telemetry.otel.BatchTracer or None
    cdef uint64_t _rng
    cdef uint64_t _mark_frames             # frames / bytes at the last hand-off
    cdef uint64_t _mark_bytes

    def __init__(self, parser, owner, sink, loop):
        self.parser = parser
        self.owner = owner
        self.sink = sink
        self.track_symbols = None
        self.transport = None
        self._loop = loop
        self._flush_cb = self._flush
        self._batch = []
        self._held = deque()
        self._scheduled = False
        self._paused = False
        self._read_start = True
        self.max_batch = 4096
        self._frag = None
        self._frag_skip = False
        self.sample_threshold = 0
        self.tracer = None
        self._rng = (<uint64_t>wall_ns()) ^ (<uint64_t>id(self)) * <uint64_t>0x9E3779B97F4A7C15
        if self._rng == 0:
            self._rng = 0x2545F4914F6CDD1D

    cpdef on_ws_connected(self, WSTransport transport):
        self.transport = transport
        transport.disconnected_future.add_done_callback(_retrieve)

    cpdef on_ws_frame(self, WSTransport transport, WSFrame frame):
        cdef int64_t ts
        cdef WSMsgType msg_type = frame.msg_type
        if self._read_start:
            self.last_recv_ns = wall_ns()
            self._read_start = False
        ts = self.last_recv_ns
        self.frames += 1
        self.bytes += <uint64_t>frame.payload_size
        if (msg_type == WSMsgType.TEXT or msg_type == WSMsgType.BINARY) and frame.fin \
                and self._frag is None and not self._frag_skip:
            self._on_data(<const char *>frame.payload_ptr, <size_t>frame.payload_size, ts)
        elif msg_type == WSMsgType.TEXT or msg_type == WSMsgType.BINARY \
                or msg_type == WSMsgType.CONTINUATION:
            self._on_fragment(frame, msg_type, ts)
        elif msg_type == WSMsgType.PING:
            self.pings += 1
            self.owner.on_ping(frame.get_payload_as_bytes())
        elif msg_type == WSMsgType.PONG:
            self.pongs += 1
        elif msg_type == WSMsgType.CLOSE:
            self.owner.on_close_frame(int(frame.get_close_code()), frame.get_close_reason())
        if frame.last_in_buffer:
            # the end of this socket read: hand on what it brought
            self._read_start = True
            if not self._paused and (self._batch or self._held):
                self._flush_inline()

    cdef void _on_fragment(self, WSFrame frame, WSMsgType msg_type, int64_t ts) noexcept:
        """A piece of a fragmented message (or a whole one while another is open)."""
        cdef size_t limit = self.parser.max_frame_bytes
        cdef bytearray buf
        if msg_type != WSMsgType.CONTINUATION:
            if self._frag is not None:
                # a new message before the open one's fin frame (RFC 6455 forbids it)
                self._refuse(MalformedFrame("fragmented message left unfinished"))
            self._frag_skip = False
            self._frag = bytearray()
        elif self._frag_skip:
            self._frag_skip = not frame.fin
            return
        elif self._frag is None:
            self._refuse(MalformedFrame("continuation frame without a message to continue"))
            self._frag_skip = False
            return
        buf = self._frag
        if <size_t>len(buf) + <size_t>frame.payload_size > limit:
            self._frag = None
            self._frag_skip = not frame.fin
            self._refuse(FrameTooLarge(
                f"fragmented message over max_frame_bytes={limit}, refused whole"))
            return
        buf += frame.get_payload_as_memoryview()
        if frame.fin:
            self._frag = None
            self.fragmented += 1
            self._on_data(<const char *>buf, <size_t>len(buf), ts)

    cdef void _refuse(self, object exc) noexcept:
        self.fragmented_refused += 1
        self._frag = None
        self._on_error(exc)

    cdef inline void _on_data(self, const char *ptr, size_t size, int64_t ts) noexcept:
        cdef list batch = self._batch
        cdef Py_ssize_t n0 = len(batch)
        cdef Py_ssize_t n
        cdef object item
        cdef list appended
        self.data_frames += 1
        try:
            parse_frame(self.parser, ptr, size, ts, batch)
        except BaseException as exc:  # noqa: B036 -- a noexcept callback must not leak
            self._on_error(exc)
            return
        n = len(batch)
        if n == n0:
            return
        # A reply frame yields Reply objects only: checking the first item is enough.
        if type(batch[n0]) is _Reply:
            appended = batch[n0:]
            del batch[n0:]
            for item in appended:
                if type(item) is _Reply:
                    self.replies += 1
                    self._call_owner_reply(item)
                else:
                    batch.append(item)
            if len(batch) == n0:
                return
        self.events += <uint64_t>(len(batch) - n0)
        if self.track_symbols is not None:
            self._track(batch, n0)
        if len(batch) >= self.max_batch:
            if self._paused:
                self._held.append(batch)
                self._batch = []
            else:
                self._flush_inline()

    cdef void _flush_inline(self) noexcept:
        try:
            self._flush()
        except BaseException as exc:  # noqa: B036 -- a noexcept callback must not leak
            self._loop.call_exception_handler(
                {"message": "FrameListener sink failed", "exception": exc})

    cdef void _call_owner_reply(self, object reply) noexcept:
        try:
            self.owner.on_reply(reply)
        except BaseException as exc:  # noqa: B036
            self._loop.call_exception_handler(
                {"message": "FrameListener owner.on_reply failed", "exception": exc})

    cdef void _on_error(self, object exc) noexcept:
        if isinstance(exc, _ParseError):
            self.parse_errors += 1
        try:
            self.owner.on_parse_error(exc)
        except BaseException as exc2:  # noqa: B036
            self._loop.call_exception_handler(
                {"message": "FrameListener owner.on_parse_error failed", "exception": exc2})

    cdef void _track(self, list batch, Py_ssize_t n0) noexcept:
        """Record (kind id, symbol) of the new events: one set add per event."""
        cdef Py_ssize_t i
        cdef Event ev
        cdef object seen
        cdef list track = self.track_symbols
        cdef Py_ssize_t nk = len(track)
        try:
            for i in range(n0, len(batch)):
                ev = <Event>batch[i]
                if 0 <= ev.kind_id < nk:
                    seen = track[ev.kind_id]
                    if seen is not None:
                        (<set>seen).add(ev.symbol)
        except BaseException as exc:  # noqa: B036
            self._loop.call_exception_handler(
                {"message": "FrameListener symbol tracking failed", "exception": exc})

    def _flush(self):
        """Hand the collected events to the sink (scheduled once per batch),
        stopping as soon as the bus pauses the connection."""
        self._hand_on(False)

    cdef _hand_on(self, bint even_paused):
        """The held chunks first, oldest first, then the batch being collected,
        one sink call each; while paused, only if even_paused."""
        cdef list batch
        self._scheduled = False
        while even_paused or not self._paused:
            if self._held:
                batch = self._held.popleft()
            elif self._batch:
                batch = self._batch
                self._batch = []
            else:
                return
            self.batches += 1
            if self.sample_threshold != 0 and self._draw() <= self.sample_threshold \
                    and self.tracer is not None:
                self._traced(batch)
            else:
                self.sink(batch)
            self._mark_frames = self.frames
            self._mark_bytes = self.bytes

    cdef inline uint64_t _draw(self) noexcept:
        """xorshift64: the next pseudo-random draw (never 0)."""
        cdef uint64_t x = self._rng
        x ^= x << 13
        x ^= x >> 7
        x ^= x << 17
        self._rng = x
        return x

    cdef _traced(self, list batch):
        """Hand on a sampled batch inside its span (the module docstring)."""
        cdef Py_ssize_t n_in = len(batch)
        cdef Py_ssize_t i
        cdef int64_t t_recv = self.last_recv_ns
        cdef int64_t t_handoff = wall_ns()
        cdef uint64_t frames = self.frames - self._mark_frames
        cdef uint64_t nbytes = self.bytes - self._mark_bytes
        cdef object item
        cdef str tp
        if n_in and isinstance(batch[0], Event):
            t_recv = (<Event>batch[0]).ts_recv
        tracer = self.tracer
        try:
            span, tp = tracer.begin(t_recv)
        except BaseException as exc:  # noqa: B036 -- tracing must never stop the data
            self._loop.call_exception_handler(
                {"message": "FrameListener tracer.begin failed", "exception": exc})
            self.sink(batch)
            return
        for i in range(n_in):
            item = batch[i]
            if isinstance(item, Event):
                (<Event>item).trace = tp
        try:
            self.sink(batch)
        finally:
            # what the pipeline added to the batch (fused books, control events)
            for i in range(len(batch)):
                item = batch[i]
                if isinstance(item, Event) and (<Event>item).trace is None:
                    (<Event>item).trace = tp
            try:
                tracer.end(span, t_handoff, wall_ns(), n_in, len(batch), frames, nbytes)
            except BaseException as exc:  # noqa: B036
                self._loop.call_exception_handler(
                    {"message": "FrameListener tracer.end failed", "exception": exc})

    def flush_now(self):
        """Deliver what is collected at once, paused or not (before swapping the sink)."""
        self._hand_on(True)

    cpdef on_ws_disconnected(self, WSTransport transport):
        # events already parsed still go out, in order, before the owner hears of the
        # drop (also when paused: a closed connection is never resumed)
        self._hand_on(True)
        self.owner.on_disconnected()

    def pause_reading(self):
        self._paused = True
        if self.transport is not None and not self.transport.is_disconnected:
            self.transport.underlying_transport.pause_reading()

    def resume_reading(self):
        self._paused = False
        if self.transport is not None and not self.transport.is_disconnected:
            self.transport.underlying_transport.resume_reading()
        if (self._batch or self._held) and not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush_cb)

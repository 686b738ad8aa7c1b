"""The Data Bus on NATS JetStream (``bus.backend: nats``; docs/nats.md).

The in-memory ring stays the first stage: the Conductor publishes into
`InMemoryDataBus` as always, and `NatsPublisher` is one more consumer of it,
with the ``block`` policy.  It reads batches, has the compiled `FrameWindow`
write one JetStream publish per event (subject ``meltica.<venue>.<market>.
<kind>.<SYMBOL>``, ``Nats-Msg-Id`` = the event key, payload = v1 wire JSON)
into one buffer per batch, and hands that buffer to nats-py's outgoing
buffer: no Python call per event and no await on an ack on the hot path.

JetStream acknowledges each publish on its reply subject
``_MELTICA_ACK.<nuid>.<n>``; the acks free the window's slots.  Every frame
stays in the window until acknowledged.

An outage (a reconnect, an error reply such as 503 "no responders" while a
cluster elects a stream leader, or the oldest frame waiting ``ACK_TIMEOUT_S``
while acks stall) holds the publishes: new events wait in the window, and only the oldest
unacknowledged frame is sent again, as a probe, on a bounded exponential
schedule (``PROBE_FIRST_S`` doubled per probe, at most ``PROBE_MAX_S``; a
reconnect probes at once).  Once JetStream acknowledges a probe, every
unacknowledged frame is sent again, once, oldest first, with the same
``Nats-Msg-Id``: JetStream's duplicate window keeps one copy.  More error
replies after that start another outage, whose probes continue the schedule;
it starts over once the frames of the last resend are acknowledged.

When the window is full (an outage outlasting ``nats.publish_buffer``
events): ``block`` stops reading the ring, so the ring fills and pauses the
WebSocket readers, as a slow ``block`` consumer does; ``drop`` drops the
events, counts them and, once there is room again, publishes one ``gap``
control event per subject naming the first and last ``seq`` dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.nuid import NUID
from nats.protocol.parser import AWAITING_CONTROL_LINE, CRLF_SIZE, Parser
from opentelemetry.trace import SpanKind

from meltica._core.events import Control, Event
from meltica.broker import CONTROL_SUBJECT, BrokerError, data_subjects
from meltica.bus._natspub import ACK_ERROR, AckReader, FrameWindow
from meltica.bus.data import ConsumerClosed, InMemoryDataBus, RingConsumer
from meltica.config import NatsConfig
from meltica.localseq import LocalSeq
from meltica.telemetry.spans import end_span, start_span

__all__ = [
    "ACK_TIMEOUT_S",
    "GAP_REASON",
    "PROBE_FIRST_S",
    "PROBE_MAX_S",
    "NatsPublisher",
    "ensure_stream",
]

log = logging.getLogger("meltica.bus.nats")

# an unacknowledged frame older than this begins an outage (JetStream acks in ms)
# once no ack at all arrived for ACK_STALL_S (acks still arriving: the server
# works through a resend, in order), or once it is three times as old
ACK_TIMEOUT_S: Final = 5.0
ACK_STALL_S: Final = 1.0
# publish spans waiting for their acks, at most (older ones end unfollowed)
_MAX_ACK_SPANS: Final = 256
# how often the publisher checks ack timeouts, probes and pending gap events
TICK_S: Final = 0.2
# an outage's probes (the oldest frame alone): the first this long after the
# first error reply, each next one twice as long after the previous, at most
PROBE_FIRST_S: Final = 0.2
PROBE_MAX_S: Final = 1.0
GAP_REASON: Final = "bus_outage"
ACK_ROOT: Final = "_MELTICA_ACK"


# ---------------------------------------------------------------- the stream


def _stream_config(cfg: NatsConfig, subjects: list[str]) -> StreamConfig:
    return StreamConfig(
        name=cfg.stream,
        subjects=subjects,
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        max_age=cfg.max_age_s,
        max_bytes=cfg.max_bytes,
        storage=StorageType(cfg.storage),
        num_replicas=cfg.replicas,
        duplicate_window=cfg.duplicate_window_s,
    )


def _captures_control(subject: str) -> bool:
    parts, ctl = subject.split("."), CONTROL_SUBJECT.split(".")
    for i, token in enumerate(parts):
        if token == ">":
            return True
        if i >= len(ctl):
            return False
        if token not in ("*", ctl[i]):
            return False
    return len(parts) >= len(ctl)


async def ensure_stream(nc: Client, cfg: NatsConfig, venues: Iterable[str]) -> dict[str, Any]:
    """Create stream ``nats.stream`` when missing; check and align an existing one.

    An existing stream gets the configured venues' subjects added and its
    limits (``max_age_s``, ``max_bytes``, ``duplicate_window_s``) set to the
    config's; a different ``storage`` or ``replicas``, or subjects that
    capture the control subjects, fail with a `BrokerError` naming the key.
    Returns what was done: ``{"created": bool, "updated": [keys]}``.
    """
    js = nc.jetstream()
    subjects = data_subjects(list(venues))
    try:
        try:
            info = await js.stream_info(cfg.stream)
        except nats.js.errors.NotFoundError:
            await js.add_stream(_stream_config(cfg, subjects))
            log.info("created JetStream stream %s on %s", cfg.stream, ", ".join(subjects))
            return {"created": True, "updated": []}
        have = info.config
        # nats-py gives the enum or its plain string, depending on the call
        storage = getattr(have.storage, "value", have.storage)
        if storage is not None and storage != cfg.storage:
            raise BrokerError(
                f"nats.storage: stream {cfg.stream} exists with {storage} storage, "
                f"the config says {cfg.storage} (storage cannot change; use another nats.stream)"
            )
        if (have.num_replicas or 1) != cfg.replicas:
            raise BrokerError(
                f"nats.replicas: stream {cfg.stream} exists with {have.num_replicas or 1} "
                f"replicas, the config says {cfg.replicas}"
            )
        existing = list(have.subjects or [])
        bad = [s for s in existing if _captures_control(s)]
        if bad:
            raise BrokerError(
                f"nats.stream: stream {cfg.stream} captures the control subjects "
                f"({', '.join(bad)}); a stream must not answer control requests"
            )
        updated = []
        if any(s not in existing for s in subjects):
            have.subjects = existing + [s for s in subjects if s not in existing]
            updated.append("subjects")
        for key, attr, want in (
            ("nats.max_age_s", "max_age", cfg.max_age_s),
            ("nats.max_bytes", "max_bytes", cfg.max_bytes),
            ("nats.duplicate_window_s", "duplicate_window", cfg.duplicate_window_s),
        ):
            if abs(float(getattr(have, attr) or 0) - float(want)) > 1e-3:
                setattr(have, attr, want)
                updated.append(key)
        if updated:
            await js.update_stream(have)
            log.warning("updated JetStream stream %s to the config: %s", cfg.stream, updated)
        return {"created": False, "updated": updated}
    except BrokerError:
        raise
    except (nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError) as exc:
        raise BrokerError(
            f"nats.url: the NATS server has no JetStream ({type(exc).__name__}); "
            "start nats-server with -js"
        ) from None
    except (nats.errors.TimeoutError, TimeoutError) as exc:
        raise BrokerError(f"nats.url: JetStream did not answer ({exc or 'timeout'})") from None
    except nats.js.errors.APIError as exc:
        raise BrokerError(
            f"nats.stream: cannot create or update stream {cfg.stream}: {exc.description}"
        ) from None


# ---------------------------------------------------------------- the acks

# nats-py 2.16.0 internals this module relies on (the version is pinned):
# Client._ps (the protocol parser; its read loop calls `await _ps.parse(data)`
# with every chunk read, and `_ps.reset()` on a new connection), Parser.buf /
# state / needed, Client._process_msg(sid, subject, reply, data, headers),
# Client._pending / _pending_data_size / _flush_queue (the outgoing buffer and
# its flusher's wake-up), Client._disconnected_cb / _reconnected_cb,
# Subscription._id.


class _AckSplitter:
    """Stands in for the client's protocol parser: the compiled `AckReader`
    applies the JetStream acks of the received bytes to the window, many per
    call, and the client's own `Parser` gets every other operation (PING,
    INFO, -ERR, the messages of other subscriptions, error acks) in order."""

    def __init__(self, nc: Client, inner: Parser, reader: AckReader, after: Callable[[], None]):
        self._nc = nc
        self.inner = inner
        self.reader = reader
        self._after = after

    def reset(self) -> None:
        self.inner.reset()
        self.reader.reset()

    async def parse(self, data: bytes = b"") -> None:
        inner = self.inner
        if inner.state != AWAITING_CONTROL_LINE:
            # a message begun before the splitter took over: the parser ends it
            need = inner.needed + CRLF_SIZE - len(inner.buf)
            await inner.parse(data[:need])
            data = data[need:]
            if not data:
                return
            if self._nc._ps is not self:  # type: ignore[comparison-overlap]  # detached
                await inner.parse(data)
                return
        if inner.buf:  # a partial control line from before
            data = bytes(inner.buf) + data
            del inner.buf[:]
        rest = self.reader.feed(data)
        self._after()
        if rest:
            await inner.parse(rest)

    def detach(self) -> None:
        """Give the client its parser back, with any partial operation held."""
        if self._nc._ps is self:  # type: ignore[comparison-overlap]
            self._nc._ps = self.inner
        self.inner.buf.extend(self.reader.take_tail())


# ---------------------------------------------------------------- the publisher


class NatsPublisher:
    """Every event of `bus` into JetStream exactly once (module docstring).

    `nc`: a connected client (``meltica.broker.connect``); its reconnect
    callbacks are chained, not replaced.  `cfg`: the ``nats`` section (the
    window is ``publish_buffer`` events; ``outage_policy`` block|drop).
    Call `start` before events flow and `close` after the last one.
    """

    def __init__(
        self,
        nc: Client,
        cfg: NatsConfig,
        bus: InMemoryDataBus,
        *,
        clock: Callable[[], int] = time.time_ns,
        batch_size: int | None = None,
    ) -> None:
        self._nc = nc
        self._cfg = cfg
        self._bus = bus
        self._clock = clock
        self.policy = cfg.outage_policy
        self.batch_size = batch_size or bus.batch_size
        self._ack_prefix = f"{ACK_ROOT}.{NUID().next().decode()}"
        self.window = FrameWindow(cfg.publish_buffer, self._ack_prefix.encode())
        self._consumer: RingConsumer | None = None
        self._sub: Any = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._room = asyncio.Event()
        self._idle = asyncio.Event()
        self._linked = False  # connected, frames may be written unless held
        # an outage (module docstring): publishes held until a probe is acked
        self._held = False
        self._probe_at = 0.0  # monotonic seconds: when the next probe goes out
        self._probe_seq = 0  # publish number of the last probe (0: none yet)
        self._backoff = 0  # probes sent since the schedule last started over
        self._settle_seq = 0  # the last publish number of the last resend
        self._held_since = 0.0
        self._acks_seen = 0  # window.acked when the tick last saw it move
        self._acks_moved = 0.0  # monotonic seconds: then
        self.outages = 0
        self._control_seq = LocalSeq(clock)
        # per (venue, market, symbol, kind): [first seq, last seq, count] dropped
        self._open_gaps: dict[tuple[str, str, str, str], list[Any]] = {}
        self.dropped: dict[str, int] = {GAP_REASON: 0, "publish_buffer_full": 0}
        self.gaps = 0
        self.disconnects = 0
        self.reconnects = 0
        self.outage_ns = 0
        self._down_since: int | None = None
        self._orig_process_msg: Callable[..., Awaitable[None]] | None = None
        self._splitter: _AckSplitter | None = None
        self._prev_cbs: tuple[Any, Any] = (None, None)
        # OpenTelemetry tracer, set by the engine when tracing is on: a span per
        # append that took sampled events, from the publish to JetStream's acks
        self.tracer: Any = None
        self._traced_seen = 0
        self._ack_spans: deque[tuple[int, Any]] = deque()

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Subscribe to the acks and to the ring; start the pump."""
        nc = self._nc
        self._sub = await nc.subscribe(f"{self._ack_prefix}.*", cb=self._on_ack_msg)
        sid = self._sub._id
        orig = nc._process_msg
        window = self.window

        async def process_msg(
            s: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
        ) -> None:
            # The acks _AckSplitter passes on (errors, headers) skip nats-py's
            # Msg objects, queue and callback task; the rest goes the usual way.
            if s == sid:
                if window.ack(subject, data, headers) == ACK_ERROR:
                    self._on_error_ack(data, headers)
                self._after_ack()
                return
            await orig(s, subject, reply, data, headers)  # type: ignore[arg-type]

        self._orig_process_msg = orig
        nc._process_msg = process_msg  # type: ignore[method-assign,assignment]
        self._splitter = _AckSplitter(nc, nc._ps, AckReader(window, sid), self._after_ack)
        nc._ps = self._splitter  # type: ignore[assignment]
        self._prev_cbs = (nc._disconnected_cb, nc._reconnected_cb)
        nc._disconnected_cb = self._on_disconnected
        nc._reconnected_cb = self._on_reconnected
        await nc.flush()
        self._linked = nc.is_connected
        self._consumer = self._bus.subscribe("nats", policy="block")
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._pump(), name="nats-publish"),
            loop.create_task(self._tick(), name="nats-acks"),
        ]

    async def close(self, timeout_s: float = 10.0) -> int:
        """Publish what the ring still holds and wait (at most `timeout_s`) for
        the acks; then detach.  Returns the events left unacknowledged (logged)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self._drained():
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), min(TICK_S, timeout_s))
        left = self.window.unacked
        while self._ack_spans:
            end_span(self._ack_spans.popleft()[1], error="not acknowledged by shutdown")
        if left or not self._drained():
            log.error(
                "%d events not acknowledged by JetStream and %d unread at shutdown (after %.1fs)",
                left,
                self._consumer.lag if self._consumer is not None else 0,
                timeout_s,
            )
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._consumer is not None:
            self._consumer.close()
        nc = self._nc
        if self._splitter is not None:
            self._splitter.detach()
            self._splitter = None
        if self._orig_process_msg is not None:
            with contextlib.suppress(AttributeError):
                del nc.__dict__["_process_msg"]
            self._orig_process_msg = None
            nc._disconnected_cb, nc._reconnected_cb = self._prev_cbs
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        return int(left)

    def _drained(self) -> bool:
        c = self._consumer
        return (c is None or c.lag == 0) and self.window.unacked == 0 and not self._open_gaps

    # ------------------------------------------------------------ publishing

    async def _pump(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        window = self.window
        block = self.policy == "block"
        while True:
            if block:
                room = window.room
                if room < min(self.batch_size, window.capacity):
                    # full (an outage or a slow server): stop reading the ring;
                    # its block policy pauses the readers when it fills
                    self._room.clear()
                    await self._room.wait()
                    continue
                try:
                    batch = await consumer.next_batch(min(room, self.batch_size))
                except ConsumerClosed:
                    return
            else:
                try:
                    batch = await consumer.next_batch(self.batch_size)
                except ConsumerClosed:
                    return
            self._send(batch)
            if consumer.lag == 0:
                self._idle.set()

    def _send(self, batch: list[Event]) -> None:
        if self._open_gaps:
            self._flush_gaps()
            if self._open_gaps:
                # no room for the gap events yet: keep dropping, so that each
                # open span holds dropped events only
                self._drop(batch)
                return
        window = self.window
        buf, taken = window.append(batch, self._clock())
        if window.traced != self._traced_seen:
            self._traced_seen = window.traced
            if self.tracer is not None:
                self._trace_publish()
        if taken < len(batch):
            self._drop(batch[taken:])
        if taken and self._writable:
            self._write(buf)

    def _trace_publish(self) -> None:
        """A span from this publish of sampled events to their acks (a child of
        the batch span their traceparent names)."""
        w = self.window
        span = start_span(
            self.tracer,
            "nats.publish",
            kind=SpanKind.PRODUCER,
            parent=w.trace_first,
            attributes={
                "messaging.system": "nats",
                "messaging.operation.type": "publish",
                "meltica.nats.first_publish": w.trace_first_seq,
                "meltica.nats.last_publish": w.trace_last_seq,
                "meltica.nats.linked": self._writable,
            },
        )
        if len(self._ack_spans) >= _MAX_ACK_SPANS:
            _, oldest = self._ack_spans.popleft()
            end_span(oldest, error="not followed: too many publish spans open")
        self._ack_spans.append((w.trace_last_seq, span))

    def _end_acked(self) -> None:
        head = self.window.head
        spans = self._ack_spans
        while spans and spans[0][0] < head:
            end_span(spans.popleft()[1], acked=True)

    def _write(self, buf: bytes) -> None:
        """Queue bytes on nats-py's outgoing buffer and wake its flusher."""
        nc = self._nc
        if not nc.is_connected:
            self._linked = False  # the reconnect resends the window
            return
        nc._pending.append(buf)
        nc._pending_data_size += len(buf)
        queue = nc._flush_queue
        if queue is not None and queue.empty():
            queue.put_nowait(asyncio.get_running_loop().create_future())

    @property
    def _writable(self) -> bool:
        return self._linked and not self._held

    def _unqueue(self) -> None:
        """Take our frames out of nats-py's outgoing buffer: they are in the
        window, and the resend that ends the outage sends them all in order."""
        nc = self._nc
        marker = f" {self._ack_prefix}.".encode()
        keep = [c for c in nc._pending if not (c.startswith(b"HPUB ") and marker in c[:512])]
        if len(keep) != len(nc._pending):
            nc._pending = keep
            nc._pending_data_size = sum(len(c) for c in keep)

    # ------------------------------------------------------------ outages

    def _probe_delay(self) -> float:
        return float(min(PROBE_FIRST_S * (1 << min(self._backoff, 16)), PROBE_MAX_S))

    def _hold(self, why: str) -> None:
        """Begin an outage: no more frames written until a probe is acknowledged
        (none when nothing waits for an ack)."""
        if self._held or self.window.unacked == 0:
            return
        self._held = True
        self._held_since = time.monotonic()
        self.outages += 1
        self._probe_seq = 0
        self._probe_at = time.monotonic() + self._probe_delay()
        self._unqueue()
        log.warning(
            "JetStream outage (%s): %d events held; probing with the oldest",
            why,
            self.window.unacked,
        )

    def _probe(self) -> None:
        """Send the oldest unacknowledged frame alone; schedule the next probe."""
        window = self.window
        if window.unacked == 0:
            self._release()
            return
        buf, _ = window.frames(self._clock(), 1)
        self._probe_seq = window.head
        self._backoff += 1
        self._probe_at = time.monotonic() + self._probe_delay()
        self._write(buf)

    def _release(self) -> None:
        """End the outage: every unacknowledged frame again, once, oldest first."""
        self._held = False
        self._probe_seq = 0
        if not self._linked:
            return  # the reconnect starts another outage
        buf, count = self.window.frames(self._clock())
        self._settle_seq = self.window.next_seq - 1
        log.info(
            "JetStream acknowledges again after %.1fs: resending %d unacknowledged events",
            time.monotonic() - self._held_since,
            count,
        )
        if count:
            self._write(buf)

    # ------------------------------------------------------------ drops and gaps

    def _drop(self, events: list[Event]) -> None:
        reason = "publish_buffer_full" if self._linked else GAP_REASON
        self.dropped[reason] = self.dropped.get(reason, 0) + len(events)
        for ev in events:
            key = (ev.venue, ev.market, ev.symbol, _gap_label(ev))
            span = self._open_gaps.get(key)
            if span is None:
                self._open_gaps[key] = [ev.seq, ev.seq, 1]
            else:
                span[1] = ev.seq
                span[2] += 1

    def _flush_gaps(self) -> None:
        """One ``gap`` event per subject with drops, when the window has room."""
        if self.window.room < len(self._open_gaps):
            return
        now = self._clock()
        gaps: list[Event] = [
            Control(
                "gap",
                venue=venue,
                market=market,
                symbol=symbol,
                seq=self._control_seq.next(),
                ts_recv=now,
                reason=GAP_REASON,
                from_seq=span[0],
                to_seq=span[1],
                state=kind,
            )
            for (venue, market, symbol, kind), span in self._open_gaps.items()
        ]
        for (venue, market, symbol, kind), span in self._open_gaps.items():
            log.warning(
                "dropped %d %s events of %s:%s:%s (seq %s..%s): the NATS outage outlasted "
                "nats.publish_buffer",
                span[2],
                kind,
                venue,
                market,
                symbol,
                span[0],
                span[1],
            )
        self._open_gaps.clear()
        self.gaps += len(gaps)
        buf, _ = self.window.append(gaps, now)
        if self._writable:
            self._write(buf)

    # ------------------------------------------------------------ acks and links

    async def _on_ack_msg(self, msg: Any) -> None:
        # only reached if the fast path in start() is bypassed
        if self.window.ack(msg.subject, msg.data, None) == ACK_ERROR:
            self._on_error_ack(msg.data, None)
        self._after_ack()

    def _after_ack(self) -> None:
        if self._ack_spans:
            self._end_acked()
        window = self.window
        if self._held:
            # the probe is the oldest frame: the head moves past it once acked
            if window.unacked == 0 or (self._probe_seq and window.head > self._probe_seq):
                self._release()
        elif self._backoff and window.head > self._settle_seq:
            self._backoff = 0  # the last resend is acknowledged: the schedule starts over
        if self.window.room >= min(self.batch_size, self.window.capacity):
            self._room.set()
        if self.window.unacked == 0:
            self._idle.set()

    def _on_error_ack(self, data: bytes, headers: bytes | None) -> None:
        if not self._held:
            detail = (headers or b"").split(b"\r\n", 1)[0] or data[:200]
            self._hold(f"an error reply: {detail.decode(errors='replace')}")

    async def _on_disconnected(self) -> None:
        self._linked = False
        if self._down_since is None:
            self._down_since = time.monotonic_ns()
            self.disconnects += 1
        # Frames still in nats-py's outgoing buffer would go out after the
        # reconnect ahead of older unacknowledged ones; the resend that ends
        # the reconnect's outage sends them all in order instead.
        self._unqueue()
        prev = self._prev_cbs[0]
        if prev is not None:
            await prev()

    async def _on_reconnected(self) -> None:
        if self._down_since is not None:
            self.outage_ns += time.monotonic_ns() - self._down_since
            self._down_since = None
        self.reconnects += 1
        self._linked = True
        log.info("NATS reconnected: %d events unacknowledged", self.window.unacked)
        self._hold("reconnected")
        if self._held:
            self._probe()
        if self._open_gaps:
            self._flush_gaps()
        prev = self._prev_cbs[1]
        if prev is not None:
            await prev()

    async def _tick(self) -> None:
        window = self.window
        while True:
            await asyncio.sleep(TICK_S)
            if not self._linked:
                if self._nc.is_connected and self._down_since is None:
                    # a write found the link down without a reconnect following
                    self._linked = True
                    self._hold("the link came back")
                    if self._held:
                        self._probe()
                continue
            now = time.monotonic()
            if window.acked != self._acks_seen:
                self._acks_seen, self._acks_moved = window.acked, now
            if self._held:
                if now >= self._probe_at:
                    self._probe()
            elif window.unacked:
                waited = (self._clock() - window.oldest_sent_ns) / 1e9
                stalled = now - self._acks_moved >= ACK_STALL_S
                if waited > ACK_TIMEOUT_S and (stalled or waited > 3 * ACK_TIMEOUT_S):
                    self._hold(f"no acknowledgement for {waited:.1f}s")
                    self._probe()
            if self._open_gaps:
                self._flush_gaps()
            if self._drained():
                self._idle.set()

    # ------------------------------------------------------------ counters

    @property
    def connected(self) -> bool:
        return self._linked and self._nc.is_connected

    def stats(self) -> dict[str, int | float]:
        w = self.window
        outage = self.outage_ns
        if self._down_since is not None:
            outage += time.monotonic_ns() - self._down_since
        return {
            "published": w.published,
            "acked": w.acked,
            "duplicates": w.duplicates,
            "ack_errors": w.errors,
            "late_acks": w.late,
            "republished": w.republished,
            "window_depth": w.unacked,
            "window_capacity": w.capacity,
            "gaps": self.gaps,
            "connected": int(self.connected),
            "disconnects": self.disconnects,
            "outages": self.outages,
            "outage_seconds": outage / 1e9,
        }


def _gap_label(ev: Event) -> str:
    """What a ``gap`` event's ``state`` names: the kind, and for book snapshots
    also their source (a fused book and its BBO share subject and update id,
    so the kind alone could not say which of the two was dropped)."""
    if ev.kind == "book_snapshot":
        return f"book_snapshot:{ev.source}"  # type: ignore[attr-defined]
    return ev.kind

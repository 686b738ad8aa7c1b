"""One physical Binance WebSocket connection: connect, control messages, acks, pongs.

A ``Connection`` owns a picows transport, its ``FrameListener`` and parser, a
per-connection message limiter (every message we send counts: SUBSCRIBE,
UNSUBSCRIBE, pongs, pings, CLOSE) and the requests waiting for an ack.  It
knows nothing of rotation or reconnects: it reports to its manager
(``ConnectionManager`` in ws.py) through ``ConnectionOwner``.

Every close carries two reasons: ``close_reason``, text for logs and
``connection_state`` events, and ``reason_label``, one of a small fixed set
(``ping_timeout``, ``ack_timeout``, ``server_close_<code>``,
``frame_too_large``, ``protocol_error``, ``error``, ``rotation``, ...) that
labels the disconnect metric.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from picows import WSCloseCode, WSMsgType, WSTransport, ws_connect

from meltica._core.parser import FrameParser, Reply
from meltica.adapters.binance.listener import FrameListener
from meltica.adapters.binance.ws_limits import SlidingWindow
from meltica.log import fields

__all__ = ["Connection", "ConnectionOwner"]

log = logging.getLogger("meltica.adapters.binance.ws")

# Binance counts incoming messages in any 1 s window, on arrival; ours is 1.25 s, so that
# up to 250 ms of delay between two of our sends and their arrival (network jitter, or a
# busy loop on either side) cannot squeeze six messages into one of its windows.
RATE_WINDOW_S = 1.25
# SUBSCRIBE params per message (Binance states no limit; 1024 names make a ~25 kB frame).
MAX_PARAMS = 200
CLOSE_GRACE_S = 1.0
# Close codes that keep their own metric label; any other is server_close_other, so a
# server cannot grow the label set.
_KNOWN_CLOSE_CODES = frozenset(c.value for c in WSCloseCode)


class ConnectionOwner(Protocol):
    def _on_open(self, conn: Connection) -> None: ...
    def _on_acked(self, conn: Connection, method: str, streams: list[str]) -> None: ...
    def _on_request_error(self, conn: Connection, streams: list[str], reply: Reply) -> None: ...
    def _on_server_shutdown(self, conn: Connection) -> None: ...
    def _on_parse_error(self, conn: Connection, exc: BaseException) -> None: ...
    def _on_closed(self, conn: Connection, reason: str) -> None: ...


@dataclass(slots=True)
class _Request:
    method: str
    streams: list[str]
    sent_at: float
    attempts: int


class Connection:
    """A connection of one slot; ``streams`` it should carry, ``acked`` those it does."""

    def __init__(
        self,
        owner: ConnectionOwner,
        name: str,
        url: str,
        parser: FrameParser,
        sink: Callable[[list[Any]], object],
        *,
        msgs_per_second: int,
        ack_timeout_s: float,
        max_frame_bytes: int,
        clock: Callable[[], float],
        next_id: Callable[[], int],
    ) -> None:
        self.owner = owner
        self.name = name
        self.url = url
        self.clock = clock
        self._next_id = next_id
        self.ack_timeout_s = ack_timeout_s
        self.max_frame_bytes = max_frame_bytes
        self.loop = asyncio.get_running_loop()
        self.listener = FrameListener(parser, self, sink, self.loop)
        self.transport: WSTransport | None = None
        self.state = "new"  # new -> connecting -> open -> closing -> closed
        self.close_reason = ""
        self.reason_label = ""
        self.opened_at = 0.0
        self.acked: set[str] = set()
        self.limiter = SlidingWindow(msgs_per_second, RATE_WINDOW_S)
        self._pongs: deque[bytes] = deque(maxlen=4)  # only the latest pings need answers
        self._ping = False
        self._to_sub: dict[str, None] = {}
        self._to_unsub: dict[str, None] = {}
        self._pending: dict[int, _Request] = {}
        self._attempts: dict[str, int] = {}  # stream -> tries so far, while being retried
        self._wake = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()
        # the manager's watch state
        self.last_activity = 0.0  # clock time the frame counter last moved
        self.last_frames = 0
        # clock time a ping was asked for during the current silence (0.0: none); the
        # pong deadline runs from here, so a ping the limiter holds back uses it up
        self.pinged_at = 0.0
        self.rotate_wanted = False  # serverShutdown seen
        # counters
        self.msgs_sent = 0
        self.pongs_sent = 0
        self.ack_timeouts = 0

    # -- lifecycle

    async def connect(self, handshake_timeout: float) -> None:
        """Open the WebSocket; raises OSError/TimeoutError/picows errors on failure."""
        self.state = "connecting"
        transport, _ = await ws_connect(
            lambda: self.listener,
            self.url,
            enable_auto_ping=False,
            enable_auto_pong=False,  # our pongs go through the message limiter
            websocket_handshake_timeout=handshake_timeout,
            max_frame_size=max(4 * self.max_frame_bytes, 1 << 20),
        )
        self.transport = transport
        if self.state != "connecting":  # closed while the handshake ran
            transport.disconnect(False)
            return
        self.state = "open"
        self.opened_at = self.clock()
        self._sender = self.loop.create_task(self._send_loop(), name=f"ws-send-{self.name}")
        self.owner._on_open(self)

    def _set_reason(self, reason: str, label: str) -> None:
        # the first cause wins: what follows (the socket closing) is its consequence
        if not self.close_reason:
            self.close_reason = reason
            self.reason_label = label

    def close(self, reason: str, label: str) -> None:
        """Start a graceful close (CLOSE frame, abort after a grace period)."""
        if self.state in ("closing", "closed"):
            return
        self._set_reason(reason, label)
        transport = self.transport
        if transport is None or self.state != "open":
            self.state = "closing"
            self._finish(reason)
            return
        self.state = "closing"
        if not transport.is_close_frame_sent:
            transport.send_close(WSCloseCode.OK)
            self.limiter.record(self.clock())
        self.loop.call_later(CLOSE_GRACE_S, transport.disconnect, False)

    def abort(self, reason: str, label: str) -> None:
        """Drop the TCP connection at once (dead peer, protocol trouble)."""
        if self.state == "closed":
            return
        self._set_reason(reason, label)
        self.state = "closing"
        if self.transport is not None:
            self.transport.disconnect(False)
        else:
            self._finish(reason)

    def _finish(self, reason: str) -> None:
        if self.state == "closed":
            return
        self.state = "closed"
        if self._sender is not None:
            self._sender.cancel()
        self._pending.clear()
        self._set_reason(*self._lost_reason(reason))
        self.closed.set()
        self.owner._on_closed(self, self.close_reason)

    def _lost_reason(self, reason: str) -> tuple[str, str]:
        """Why a connection we did not close went away: picows closes with a code of its
        own (1009 for a frame over max_frame_size) on a protocol error; else the TCP
        connection simply dropped."""
        sent = self._close_sent()
        if sent is not None:
            # we did not close it ourselves (the first cause would have won): picows did
            if sent.code == WSCloseCode.MESSAGE_TOO_BIG:
                limit = max(4 * self.max_frame_bytes, 1 << 20)
                return f"frame over {limit} bytes: {sent.reason}", "frame_too_large"
            if sent.code != WSCloseCode.OK:
                return f"protocol error {sent.code:d} ({sent.reason})", "protocol_error"
        return f"connection lost ({reason})", "error"

    def _close_sent(self) -> Any:
        """The CLOSE frame picows sent on this connection, if any."""
        transport = self.transport
        hs = transport.close_handshake if transport is not None else None
        return hs.sent if hs is not None else None

    async def wait_closed(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closed.wait(), timeout)
        if not self.closed.is_set():
            self.abort("close timed out", "close_timeout")
            await self.closed.wait()

    # -- requests

    def subscribe(self, streams: list[str]) -> None:
        for s in streams:
            self._to_unsub.pop(s, None)
            if s not in self.acked:
                self._to_sub[s] = None
        self._wake.set()

    def unsubscribe(self, streams: list[str]) -> None:
        for s in streams:
            self._to_sub.pop(s, None)
            self._to_unsub[s] = None
        self._wake.set()

    def send_ping(self) -> None:
        self._ping = True
        self._wake.set()

    def pending_streams(self) -> int:
        return len(self._to_sub) + sum(
            len(r.streams) for r in self._pending.values() if r.method == "SUBSCRIBE"
        )

    def check_acks(self, now: float, max_attempts: int = 3) -> None:
        """Resend requests whose ack is overdue; abort after max_attempts."""
        for req_id, req in list(self._pending.items()):
            if now - req.sent_at < self.ack_timeout_s:
                continue
            del self._pending[req_id]
            self.ack_timeouts += 1
            if req.attempts >= max_attempts:
                log.warning(
                    "%s: %s not acked after %d tries",
                    self.name,
                    req.method,
                    req.attempts,
                    extra=fields(connection=self.name),
                )
                self.abort("ack timeout", "ack_timeout")
                return
            log.info(
                "%s: %s ack timeout, retrying",
                self.name,
                req.method,
                extra=fields(connection=self.name),
            )
            target = self._to_sub if req.method == "SUBSCRIBE" else self._to_unsub
            for s in req.streams:
                target[s] = None
                self._attempts[s] = req.attempts
        self._wake.set()

    async def _send_loop(self) -> None:
        limiter = self.limiter
        while self.state == "open":
            if not (self._pongs or self._to_unsub or self._to_sub or self._ping):
                self._wake.clear()
                await self._wake.wait()
                continue
            wait = limiter.delay(self.clock())
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            transport = self.transport
            assert transport is not None
            if self._pongs:
                transport.send_pong(self._pongs.popleft())
                self.pongs_sent += 1
            elif self._to_unsub:
                self._request("UNSUBSCRIBE", self._to_unsub)
            elif self._to_sub:
                self._request("SUBSCRIBE", self._to_sub)
            else:
                self._ping = False
                transport.send_ping(b"")
            limiter.record(self.clock())
            self.msgs_sent += 1

    def _request(self, method: str, queue: dict[str, None]) -> None:
        streams = list(queue)[:MAX_PARAMS]
        for s in streams:
            del queue[s]
        req_id = self._next_id()
        attempts = max(self._attempts.pop(s, 0) for s in streams) + 1
        self._pending[req_id] = _Request(method, streams, self.clock(), attempts)
        assert self.transport is not None
        payload = json.dumps({"method": method, "params": streams, "id": req_id})
        self.transport.send(WSMsgType.TEXT, payload.encode())

    # -- FrameListener owner callbacks (rare frames)

    def on_reply(self, reply: Reply) -> None:
        if reply.kind == "server_shutdown":
            log.info("%s: serverShutdown", self.name, extra=fields(connection=self.name))
            self.owner._on_server_shutdown(self)
            return
        req = self._pending.pop(reply.id, None) if isinstance(reply.id, int) else None
        if req is None:
            log.info("%s: unmatched reply %r", self.name, reply, extra=fields(connection=self.name))
            return
        if reply.kind == "error":
            log.warning(
                "%s: %s rejected: %s",
                self.name,
                req.method,
                reply.msg,
                extra=fields(connection=self.name),
            )
            self.owner._on_request_error(self, req.streams, reply)
            return
        if req.method == "SUBSCRIBE":
            self.acked.update(req.streams)
        else:
            self.acked.difference_update(req.streams)
        self.owner._on_acked(self, req.method, req.streams)

    def on_parse_error(self, exc: BaseException) -> None:
        self.owner._on_parse_error(self, exc)

    def on_ping(self, payload: bytes) -> None:
        self._pongs.append(payload)
        self._wake.set()

    def on_close_frame(self, code: int, reason: str) -> None:
        if not self.close_reason and self._close_sent() is not None:
            # the server answers a CLOSE picows sent on its own (e.g. 1009 for a frame over
            # max_frame_size): that close is the cause, not the server's answer
            self._set_reason(*self._lost_reason("closed by server"))
        label = f"server_close_{code if code in _KNOWN_CLOSE_CODES else 'other'}"
        self._set_reason(f"closed by server ({code} {reason})".strip(), label)
        transport = self.transport
        self.state = "closing" if self.state != "closed" else self.state
        if transport is not None:
            if not transport.is_close_frame_sent:
                try:
                    echo = WSCloseCode(code)
                except ValueError:  # a code picows has no name for (e.g. 4000)
                    echo = WSCloseCode.OK
                if echo in (WSCloseCode.NO_INFO, WSCloseCode.ABNORMAL_CLOSURE):
                    echo = WSCloseCode.OK
                transport.send_close(echo)
            transport.disconnect()

    def on_disconnected(self) -> None:
        self._finish("disconnected")

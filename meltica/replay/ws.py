"""The fake exchange's WebSocket side: one picows server per market, speaking Binance's protocol.

``FakeExchange``'s timeline hands every frame of a market to :meth:`WsServer.publish`, which
writes it to each open connection subscribed to the frame's stream (combined connections get
``{"stream":..,"data":..}``, raw ones the payload) and, at "max" speed, awaits
:meth:`WsServer.drain` for back-pressure.  Clients see what they would see on Binance: the
``/ws``, ``/stream`` and (futures) ``/public`` / ``/market`` paths, the JSON control messages
and their error frames, the per-second message limit, server pings with a pong deadline, the
connection lifetime cut, ``serverShutdown`` -- and, from a
:class:`~meltica.replay.faults.FaultPlan`, scripted misbehaviour per connection.  See
docs/fake-exchange.md ("WebSocket server", "Faults").
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qs, unquote, urlsplit

from picows import (
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_create_server,
)

from meltica._core.events import MARKETS
from meltica.replay.faults import Fault, FaultPlan
from meltica.replay.source import StreamFrame, combined_frame, envelope_head

__all__ = ["WsCounters", "WsServer", "stream_class"]

# meltica/log.py names every logger; it has no "replay" entry yet (owned by another change).
log = logging.getLogger("meltica.replay.ws")

_MSG_LIMIT: Final = {"spot": 5, "usdm": 10, "coinm": 10}
_PING_INTERVAL_S: Final = {"spot": 20.0, "usdm": 180.0, "coinm": 180.0}
_PONG_TIMEOUT_S: Final = {"spot": 60.0, "usdm": 600.0, "coinm": 600.0}
_RATE_WINDOW_S: Final = 1.0
# Close codes (RFC 6455): the lifetime cut and close faults, going away, policy violation.
_CLOSE_OK: Final = 1000
_CLOSE_GOING_AWAY: Final = 1001
_CLOSE_POLICY: Final = 1008
# After our CLOSE frame the peer has this long to answer with its own before the socket is
# aborted (a client that stopped reading would otherwise hold a graceful close forever).
_CLOSE_GRACE_S: Final = 1.0
_SHUTDOWN_DELAY_S: Final = 1.0
_STALL_S: Final = 1.0
_METHODS: Final = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")
# Fault kinds that act at once when triggered; the others transform the next frame(s).
_IMMEDIATE: Final = frozenset({"close", "shutdown", "stall", "oversized", "unknown_event"})
_MALFORMED: Final = b'{"e":"trade",'
_JSON_SEPARATORS: Final = (",", ":")


def stream_class(stream: str) -> str:
    """``"public"`` (book data: bookTicker, depth*) or ``"market"`` (everything else)."""
    if stream == "!bookTicker" or stream.endswith("@bookTicker") or "@depth" in stream:
        return "public"
    return "market"


def _symbol_of(stream: str) -> str | None:
    """Upper-case symbol a stream carries, None for all-market streams (``!bookTicker``)."""
    if stream.startswith("!"):
        return None
    return stream.partition("@")[0].upper()


def phantom_level(data: bytes) -> bytes | None:
    """``data`` (a depthUpdate, raw or in an envelope) with its deepest level removal
    given the quantity of another level of the frame (a valid lot size), or None when
    it removes no level or sets none.  Bids are preferred (the lowest removed price),
    else asks (the highest): the client keeps a level the exchange no longer holds,
    with no sequence gap, which only an audit against a fresh snapshot can find.
    """
    try:
        obj = json.loads(data)
    except ValueError:
        return None
    payload = obj.get("data", obj) if isinstance(obj, dict) else None
    if not isinstance(payload, dict) or payload.get("e") != "depthUpdate":
        return None
    levels = [lv for key in ("b", "a") for lv in payload.get(key) or ()]
    qty = next((lv[1] for lv in levels if float(lv[1]) != 0), None)
    if qty is None:
        return None
    for key, deepest in (("b", min), ("a", max)):
        removed = [lv for lv in payload.get(key) or () if float(lv[1]) == 0]
        if removed:
            deepest(removed, key=lambda x: float(x[0]))[1] = qty
            return json.dumps(obj, separators=(",", ":")).encode()
    return None


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=_JSON_SEPARATORS).encode()


def _ws_header(n: int) -> bytes:
    """The header of an unmasked server TEXT frame carrying n payload bytes."""
    if n < 126:
        return _SHORT_HEADERS[n]
    if n < 1 << 16:
        return bytes((0x81, 126)) + n.to_bytes(2, "big")
    return bytes((0x81, 127)) + n.to_bytes(8, "big")


_SHORT_HEADERS = [bytes((0x81, n)) for n in range(126)]
# a WsServer keeps the combined-frame heads of at most this many streams (then starts over)
_MAX_ENVELOPE_HEADS = 100_000
# headers by payload length, made on first use (at most 65,536: the 2-byte length forms)
_HEADERS: dict[int, bytes] = dict(enumerate(_SHORT_HEADERS))


def _raw_ws_frame(payload: bytes) -> bytes:
    """A complete unmasked server TEXT frame, as picows would put it on the wire."""
    return _ws_header(len(payload)) + payload


@dataclass(slots=True)
class WsCounters:
    """What one server has done since start; read by tests and the exchange's stats."""

    connections_opened: int = 0
    connections_closed: int = 0
    frames_sent: int = 0  # stream data messages written (a duplicate counts twice)
    frames_dropped: int = 0  # not written because of a stall or a drop fault
    control_messages: int = 0  # text frames handled as requests (errors included)
    limit_violations: int = 0  # connections closed for exceeding the message rate
    pong_timeouts: int = 0
    faults_fired: int = 0
    slow_consumers: int = 0  # connections closed because their write buffer passed max_buffer
    connects_refused: int = 0  # upgrades answered 429: past max_connects in connects_window_s


@dataclass(frozen=True, slots=True)
class _Route:
    """What the upgrade path asked for."""

    streams: tuple[str, ...]
    combined: bool
    classes: frozenset[str] | None  # stream classes delivered on this path; None = all


def _parse_route(market: str, raw_path: bytes, legacy_all_classes: bool = False) -> _Route | None:
    """The route of an upgrade path, None for a path this market does not serve (-> 404)."""
    url = urlsplit(raw_path.decode("latin-1"))
    path = url.path
    classes: frozenset[str] | None = None
    if market != "spot":
        # Legacy un-routed paths: public class only (since 2026-04), or everything as before.
        classes = None if legacy_all_classes else frozenset({"public"})
        for prefix in ("/public", "/market"):
            if path.startswith(prefix + "/"):
                classes = frozenset({prefix[1:]})
                path = path[len(prefix) :]
                break
    if path in ("/ws", "/ws/"):
        return _Route((), False, classes)
    if path.startswith("/ws/"):
        streams = tuple(unquote(s) for s in path[4:].split("/") if s)
        return _Route(streams, False, classes)
    if path in ("/stream", "/stream/"):
        query = parse_qs(url.query, keep_blank_values=True)
        joined = query.get("streams", [""])[0]
        return _Route(tuple(s for s in joined.split("/") if s), True, classes)
    return None


class _RequestError(Exception):
    """A control request Binance would answer with an error frame."""

    def __init__(self, code: int, msg: str, req_id: object = None, with_id: bool = False) -> None:
        super().__init__(msg)
        self.frame: dict[str, object] = {"code": code, "msg": msg}
        if with_id:
            self.frame["id"] = req_id


class _Armed:
    """One fault's progress on one connection."""

    __slots__ = ("fault", "held", "remaining", "time_ok")

    def __init__(self, fault: Fault) -> None:
        self.fault = fault
        self.remaining = fault.count
        self.time_ok = fault.at_s is None
        self.held: bytes | None = None  # reorder: the frame waiting for its successor


class _Connection(WSListener):
    """One client connection: subscriptions, limits, pings, faults.  picows calls the on_*."""

    def __init__(self, server: WsServer, route: _Route) -> None:
        super().__init__()
        self.server = server
        self.route = route
        self.combined = route.combined
        self.index = -1
        self.transport: WSTransport | None = None
        self.subs: dict[str, None] = {}  # accepted subscriptions, in order
        self.closing = False
        self.closed = False
        self.writable = asyncio.Event()
        self.writable.set()
        self.frames = 0  # frames routed to this connection, the at_frame clock
        self.symbol_frames: dict[str, int] = {}
        self.stalled_until = 0.0
        self._loop = asyncio.get_running_loop()
        self._incoming: deque[float] = deque()
        self._pings: dict[bytes, asyncio.TimerHandle] = {}  # outstanding ping -> its deadline
        self._ping_seq = 0
        self._timers: list[asyncio.TimerHandle] = []
        self._waiting: list[_Armed] = []  # faults not triggered yet
        self._pending: list[_Armed] = []  # triggered faults that act on the next frame(s)
        self._count_symbols = False

    # -- picows callbacks

    def on_ws_connected(self, transport: WSTransport) -> None:
        server = self.server
        self.transport = transport
        self.index = server.counters.connections_opened
        server.counters.connections_opened += 1
        server._conns[self] = None
        # Flow control for drain(): the transport calls pause_writing above high_water.
        transport.underlying_transport.set_write_buffer_limits(
            high=server.high_water, low=server.high_water // 2
        )
        self._later(server.lifetime_s, self.close, _CLOSE_OK, "connection lifetime exceeded")
        self._later(server.ping_interval_s, self._send_ping)
        for fault in server._faults:
            if fault.connection is None or fault.connection == self.index:
                armed = _Armed(fault)
                self._waiting.append(armed)
                self._count_symbols |= fault.symbol is not None and fault.at_frame is not None
                if fault.at_s is not None:
                    self._later(fault.at_s, self._time_reached, armed)
        self._check_faults()
        if self.route.streams and not self.closing:
            self._subscribe(self.route.streams)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if msg_type == WSMsgType.CLOSE:
            self._on_close_frame(frame)
            return
        if self.closing or not self._within_rate():
            return
        if msg_type == WSMsgType.TEXT:
            self._on_request(frame.get_payload_as_bytes())
        elif msg_type == WSMsgType.PING:
            if not self._stalled():
                transport.send_pong(frame.get_payload_as_bytes())
        elif msg_type == WSMsgType.PONG and not self._stalled():
            self._on_pong(frame.get_payload_as_bytes())
        # BINARY and CONTINUATION frames count against the rate and are otherwise ignored.

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self.closed:
            return
        self.closed = True
        self.closing = True
        self._cancel_timers()
        server = self.server
        server.counters.connections_closed += 1
        server._conns.pop(self, None)
        for stream in self.subs:
            server._unindex(stream, self)
        self.writable.set()  # a gone connection never blocks drain()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    # -- publishing

    def plain(self) -> bool:
        """No fault armed, no stall, no per-symbol counting: frames may go out batched."""
        return not (
            self.closing
            or self._waiting
            or self._pending
            or self._count_symbols
            or self.stalled_until > 0.0
            or self.transport is None
        )

    def deliver_batch(self, messages: list[bytes]) -> None:
        """Write already-shaped frames as one transport write (only while ``plain()``).

        Same bytes on the wire as one picows ``send`` per frame (unmasked, unfragmented
        server TEXT frames), but one syscall-sized write instead of one per frame.
        """
        assert self.transport is not None
        parts: list[bytes] = []
        append = parts.append
        headers = _HEADERS
        for message in messages:
            n = len(message)
            header = headers.get(n)
            if header is None:
                header = _ws_header(n)
                if n < 1 << 16:
                    headers[n] = header
            append(header)
            append(message)
        self.transport.underlying_transport.write(b"".join(parts))
        self.frames += len(messages)
        self.server.counters.frames_sent += len(messages)
        self._check_buffer()

    def deliver(self, frame: StreamFrame, data: bytes) -> bool:
        """Write one stream frame (already shaped for this connection); True if written."""
        if self.closing:
            return False
        counters = self.server.counters
        wrote = False
        if self._stalled():
            counters.frames_dropped += 1
        elif not self._pending:
            self._send(data)
            counters.frames_sent += 1
            wrote = True
        else:
            wrote = self._deliver_faulty(frame, data)
        self.frames += 1
        if self._count_symbols:
            symbol = _symbol_of(frame.stream)
            if symbol is not None:
                self.symbol_frames[symbol] = self.symbol_frames.get(symbol, 0) + 1
        if self._waiting and not self.closing:
            self._check_faults()
        return wrote

    def _deliver_faulty(self, frame: StreamFrame, data: bytes) -> bool:
        """Deliver through the pending frame faults, in plan order."""
        counters = self.server.counters
        symbol = _symbol_of(frame.stream)
        out = [data]
        for armed in list(self._pending):
            fault = armed.fault
            if fault.symbol is not None and fault.symbol != symbol:
                continue
            kind = fault.kind
            if kind == "drop":
                if fault.stream is None:
                    if "@depth" not in frame.stream:
                        continue
                elif frame.stream.partition("@")[2] != fault.stream:
                    continue
                counters.frames_dropped += len(out)
                out = []
                armed.remaining -= 1
            elif kind == "duplicate":
                out = out + out
                armed.remaining -= 1
            elif kind == "malformed":
                out = [_MALFORMED]
                armed.remaining = 0
            elif kind == "truncated":
                out = [data[: len(data) // 2]]
                armed.remaining = 0
            elif kind == "reorder":
                if armed.held is None:
                    armed.held, out = data, []
                    break
                out = [*out, armed.held]
                armed.held = None
                armed.remaining = 0
            elif kind == "phantom":
                altered = phantom_level(data)
                if altered is None:
                    continue  # no removal in this frame: wait for one that has
                out = [altered]
                armed.remaining -= 1
            elif kind == "abort":
                self._abort_mid_frame(data)
                return False
            if armed.remaining <= 0:
                self._pending.remove(armed)
        for message in out:
            self._send(message)
        counters.frames_sent += len(out)
        return bool(out)

    def _send(self, message: bytes) -> None:
        assert self.transport is not None
        self.transport.send(WSMsgType.TEXT, message)
        self._check_buffer()

    def _check_buffer(self) -> None:
        """Close a slow consumer whose queued bytes passed the server's max_buffer."""
        assert self.transport is not None
        if self.transport.underlying_transport.get_write_buffer_size() > self.server.max_buffer:
            # like Binance, drop it at once: a close frame would queue behind the backlog
            self.server.counters.slow_consumers += 1
            log.info("connection %d: slow consumer, disconnecting", self.index)
            self.closing = True
            self._cancel_timers()
            self.transport.disconnect(False)

    def _send_control(self, obj: object) -> None:
        """A reply or event; a stalled connection sends nothing at all."""
        if not self.closing and not self._stalled():
            self._send(_dumps(obj))

    # -- subscriptions and control requests

    def _subscribe(self, streams: tuple[str, ...] | list[str]) -> None:
        new = [s for s in dict.fromkeys(streams) if s not in self.subs]
        classes = self.route.classes
        servable: set[str] = set()
        for stream in new:
            self.subs[stream] = None
            if classes is None or stream_class(stream) in classes:
                self.server._index(stream, self)
                servable.add(stream)
        known = self.server.known_streams
        if known is not None:
            servable &= known
        if servable and self.server.on_subscribe is not None:
            self.server.on_subscribe(self.server.market, servable)

    def _unsubscribe(self, streams: list[str]) -> None:
        for stream in streams:
            if self.subs.pop(stream, 0) is None:
                self.server._unindex(stream, self)

    def _on_request(self, payload: bytes) -> None:
        self.server.counters.control_messages += 1
        try:
            reply = self._handle_request(payload)
        except _RequestError as exc:
            reply = exc.frame
        if reply is not None:
            self._send_control(reply)

    def _handle_request(self, payload: bytes) -> dict[str, object] | None:
        """Apply one control request and return its reply (None: already sent).

        Raises _RequestError for the requests Binance answers with an error frame.
        """
        try:
            request = json.loads(payload)
        except ValueError as exc:  # JSONDecodeError, or UnicodeDecodeError for bad UTF-8
            where = (exc.lineno, exc.colno) if isinstance(exc, json.JSONDecodeError) else (1, 1)
            raise _RequestError(
                3, "Invalid JSON: expected value at line {} column {}".format(*where)
            ) from None
        if not isinstance(request, dict):
            raise _RequestError(2, "Invalid request: expected a JSON object")
        if "method" not in request:
            raise _RequestError(2, "Invalid request: missing field `method`")
        method = request["method"]
        if method not in _METHODS:
            raise _RequestError(
                2,
                f"Invalid request: unknown variant `{method}`, expected one of "
                + ", ".join(f"`{m}`" for m in _METHODS),
            )
        req_id = request.get("id", _MISSING)
        if not self._valid_id(req_id):
            raise _RequestError(2, "Invalid request: request ID must be an unsigned integer")
        params = request.get("params", [])
        if not isinstance(params, list):
            raise _RequestError(2, "Invalid request: params must be a list")
        result: Any = None
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if not all(isinstance(p, str) for p in params):
                raise _RequestError(2, "Invalid request: stream names must be strings")
            if method == "UNSUBSCRIBE":
                self._unsubscribe(params)
            else:
                total = len(self.subs.keys() | set(params))
                if total > self.server.max_streams:
                    raise _RequestError(
                        2,
                        f"Invalid request: too many streams ({total} > {self.server.max_streams})",
                        req_id,
                        with_id=True,
                    )
                # The ack goes out before on_subscribe (and so before any data of the stream).
                self._send_control({"result": None, "id": req_id})
                self._subscribe(params)
                return None
        elif method == "LIST_SUBSCRIPTIONS":
            if params:
                raise _RequestError(2, "Invalid request: too many parameters")
            result = list(self.subs)
        else:
            expected = 2 if method == "SET_PROPERTY" else 1
            if len(params) > expected:
                raise _RequestError(2, "Invalid request: too many parameters")
            if not params or not isinstance(params[0], str):
                raise _RequestError(2, "Invalid request: property name must be a string")
            if params[0] != "combined":
                raise _RequestError(0, "Unknown property", req_id, with_id=True)
            if method == "GET_PROPERTY":
                result = self.combined
            else:
                if len(params) < 2 or not isinstance(params[1], bool):
                    raise _RequestError(1, "Invalid value type: expected Boolean")
                self.combined = params[1]
        return {"result": result, "id": req_id}

    def _valid_id(self, req_id: object) -> bool:
        """Futures: an unsigned integer.  Spot also takes null and alphanumeric strings <= 36."""
        if isinstance(req_id, int) and not isinstance(req_id, bool):
            return 0 <= req_id < 1 << 63
        if self.server.market != "spot":
            return False
        if req_id is None:
            return True
        return isinstance(req_id, str) and len(req_id) <= 36 and req_id.isalnum()

    # -- limits, pings, closing

    def _within_rate(self) -> bool:
        """Count one incoming message; False (and close) past the per-second limit."""
        now = self._loop.time()
        incoming = self._incoming
        incoming.append(now)
        while incoming[0] <= now - _RATE_WINDOW_S:
            incoming.popleft()
        if len(incoming) <= self.server.max_msgs_per_s:
            return True
        self.server.counters.limit_violations += 1
        log.info("connection %d: more than %d messages/s", self.index, self.server.max_msgs_per_s)
        self.close(_CLOSE_POLICY, "too many messages")
        return False

    def _send_ping(self) -> None:
        self._later(self.server.ping_interval_s, self._send_ping)
        if self._stalled():
            return
        assert self.transport is not None
        self._ping_seq += 1
        payload = f"{_now_ms()}-{self._ping_seq}".encode()
        self.transport.send_ping(payload)
        self._pings[payload] = self._later(self.server.pong_timeout_s, self._pong_missed, payload)

    def _on_pong(self, payload: bytes) -> None:
        """A pong answers its ping and every older one; others (unsolicited) keep nothing alive."""
        if payload not in self._pings:
            return
        while self._pings:
            sent, deadline = next(iter(self._pings.items()))
            del self._pings[sent]
            deadline.cancel()
            if sent == payload:
                break

    def _pong_missed(self, payload: bytes) -> None:
        self.server.counters.pong_timeouts += 1
        log.info("connection %d: no pong within %ss", self.index, self.server.pong_timeout_s)
        self.close(_CLOSE_POLICY, "pong timeout")

    def _on_close_frame(self, frame: WSFrame) -> None:
        assert self.transport is not None
        # A CLOSE counts against the rate (unless it answers ours); the handshake completes.
        if not self.closing and self._within_rate():
            code = int(frame.get_close_code().value)
            self.closing = True
            self._cancel_timers()
            # Echo the peer's code; "no code" (0) and reserved ones are answered with 1000.
            valid = 1000 <= code < 5000 and code not in (1005, 1006, 1015)
            self.transport.send_close(WSCloseCode(code if valid else _CLOSE_OK))
            self._later(_CLOSE_GRACE_S, self.transport.disconnect, False)
        self.transport.disconnect()

    def close(self, code: int, reason: str = "") -> None:
        """Send a CLOSE frame; the socket goes when the peer answers or after a grace period."""
        if self.closing or self.transport is None:
            return
        self.closing = True
        self._cancel_timers()
        self.transport.send_close(WSCloseCode(code), reason.encode())
        self._later(_CLOSE_GRACE_S, self.transport.disconnect, False)

    def _stalled(self) -> bool:
        return self.stalled_until > 0.0 and self._loop.time() < self.stalled_until

    def _later(
        self, delay: float, callback: Callable[..., object], *args: Any
    ) -> asyncio.TimerHandle:
        """call_later owned by this connection: cancelled when it closes."""
        handle = self._loop.call_later(delay, callback, *args)
        timers = self._timers
        timers.append(handle)
        if len(timers) > 64:  # forget the ones that already ran or were cancelled
            now = self._loop.time()
            self._timers = [h for h in timers if not h.cancelled() and h.when() > now]
        return handle

    def _cancel_timers(self) -> None:
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        self._pings.clear()

    # -- faults

    def _time_reached(self, armed: _Armed) -> None:
        armed.time_ok = True
        self._check_faults()

    def _check_faults(self) -> None:
        """Trigger every waiting fault whose frame count and time have been reached."""
        for armed in list(self._waiting):
            if self.closing:
                return
            fault = armed.fault
            if not armed.time_ok:
                continue
            if fault.at_frame is not None:
                symbol = fault.symbol
                seen = self.frames if symbol is None else self.symbol_frames.get(symbol, 0)
                if seen < fault.at_frame:
                    continue
            self._waiting.remove(armed)
            self.server.counters.faults_fired += 1
            log.info("connection %d: fault %s", self.index, fault)
            if fault.kind in _IMMEDIATE:
                self._fire(fault)
            else:
                self._pending.append(armed)

    def _fire(self, fault: Fault) -> None:
        kind = fault.kind
        if kind == "close":
            self.close(fault.code if fault.code is not None else _CLOSE_OK, "fault: close")
        elif kind == "shutdown":
            self.send_shutdown_event()
            delay = fault.delay_s if fault.delay_s is not None else _SHUTDOWN_DELAY_S
            code = fault.code if fault.code is not None else _CLOSE_GOING_AWAY
            self._later(delay, self.close, code, "server shutdown")
        elif kind == "stall":
            delay = fault.delay_s if fault.delay_s is not None else _STALL_S
            self.stalled_until = self._loop.time() + delay
            # Pings outstanding at the stall would expire through no fault of the client.
            for deadline in self._pings.values():
                deadline.cancel()
            self._pings.clear()
        elif kind == "oversized":
            self._send_control_bytes(self._padding(fault.count))
        elif kind == "unknown_event":
            symbol = fault.symbol or "X"
            event = {"e": "madeUpEvent", "E": _now_ms(), "s": symbol}
            if self.combined:
                self._send_control({"stream": f"{symbol.lower()}@madeUpEvent", "data": event})
            else:
                self._send_control(event)

    def _send_control_bytes(self, message: bytes) -> None:
        if not self.closing and not self._stalled():
            self._send(message)

    @staticmethod
    def _padding(size: int) -> bytes:
        """Valid JSON of exactly ``size`` bytes (or the shortest such object, if larger)."""
        head, tail = b'{"e":"padding","p":"', b'"}'
        return head + b" " * max(0, size - len(head) - len(tail)) + tail

    def _abort_mid_frame(self, data: bytes) -> None:
        """The first half of the frame's wire bytes, then the TCP connection dropped."""
        assert self.transport is not None
        wire = _raw_ws_frame(data)
        self.closing = True
        self._cancel_timers()
        raw = self.transport.underlying_transport
        raw.write(wire[: len(wire) // 2])
        raw.abort()

    def send_shutdown_event(self) -> None:
        event = {"e": "serverShutdown", "E": _now_ms()}
        if self.combined:
            self._send_control({"stream": "!serverShutdown", "data": event})
        else:
            self._send_control(event)


_MISSING: Final = object()


class WsServer:
    """A Binance-like market-data WebSocket server for one market (see the module docstring).

    Defaults follow Binance per market: 5 (spot) / 10 (futures) incoming messages per second,
    a ping every 20 s / 180 s answered within 60 s / 600 s, 1024 streams per connection, a
    24 h lifetime, 300 connection attempts per 5 min (``max_connects`` per
    ``connects_window_s``, counted per server: on loopback every client is one IP; past it
    the upgrade is answered 429 and not counted).  ``known_streams`` (what the source can
    serve) limits ``subscribed()`` and ``on_subscribe``; subscribing to other streams is
    accepted and yields nothing.
    ``on_subscribe(market, streams)`` runs after the ack (or at connect, for streams in the
    URL) with the newly subscribed streams the connection will actually receive; it must not
    raise.  ``legacy_all_classes=True`` serves every stream class on the un-routed futures
    paths, as Binance did before 2026-04 (for replaying older captures on their original
    path).  ``use_aiofastnet`` is passed to picows (None: its default).

    Faults: ``at_frame`` counts the frames published to a connection (or, with ``symbol``,
    those of that symbol) whatever faults did to them; a fault triggers once that count and
    ``at_s`` (seconds since connect) are both reached, or at connect when neither is set.
    close / shutdown / stall / oversized / unknown_event act at once; the others change the
    next matching frame(s).  Frames published during a ``stall`` are dropped for the stalled
    connection, not buffered: a stalled client sees a gap, as after a real network freeze; it
    also gets no pongs, no pings and no control replies meanwhile.
    """

    def __init__(
        self,
        market: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: FaultPlan = FaultPlan(),  # noqa: B008 -- frozen, so sharing the default is safe
        max_msgs_per_s: int | None = None,
        max_streams: int = 1024,
        ping_interval_s: float | None = None,
        pong_timeout_s: float | None = None,
        lifetime_s: float = 86400.0,
        high_water: int = 1 << 20,
        max_buffer: int | None = None,
        known_streams: set[str] | None = None,
        on_subscribe: Callable[[str, set[str]], None] | None = None,
        legacy_all_classes: bool = False,
        use_aiofastnet: bool | None = None,
        max_connects: int = 300,
        connects_window_s: float = 300.0,
    ) -> None:
        if market not in MARKETS:
            raise ValueError(f"unknown market {market!r} (one of {MARKETS})")
        self.market = market
        self.host = host
        self._port = port
        self.max_msgs_per_s = max_msgs_per_s if max_msgs_per_s is not None else _MSG_LIMIT[market]
        self.max_streams = max_streams
        self.ping_interval_s = (
            ping_interval_s if ping_interval_s is not None else _PING_INTERVAL_S[market]
        )
        self.pong_timeout_s = (
            pong_timeout_s if pong_timeout_s is not None else _PONG_TIMEOUT_S[market]
        )
        self.lifetime_s = lifetime_s
        self.high_water = high_water
        # A client that stops reading while frames are paced (nothing waits on drain()
        # then) is closed once this much is queued for it: memory stays bounded.
        self.max_buffer = max_buffer if max_buffer is not None else 64 * high_water
        if self.max_buffer < high_water:
            raise ValueError("max_buffer must be at least high_water")
        if max_connects < 1 or not connects_window_s > 0:
            raise ValueError("max_connects must be >= 1 and connects_window_s > 0")
        self.max_connects = max_connects
        self.connects_window_s = connects_window_s
        self._connects: deque[float] = deque()  # monotonic times of accepted upgrades
        self.known_streams = known_streams
        self.on_subscribe = on_subscribe
        self.legacy_all_classes = legacy_all_classes
        self.use_aiofastnet = use_aiofastnet
        self.counters = WsCounters()
        self._faults = faults.ws(market)
        self._conns: dict[_Connection, None] = {}
        self._by_stream: dict[str, dict[_Connection, None]] = {}
        # stream -> b'{"stream":"<stream>","data":', the head of its combined frames
        self._envelope_heads: dict[str, bytes] = {}
        self._server: asyncio.Server | None = None
        self._stopped: asyncio.Event | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self._port}"

    async def start(self) -> None:
        """Listen (idempotent); ``port`` is the bound port afterwards."""
        if self._server is not None:
            return
        self._server = await ws_create_server(
            self._route,
            self.host,
            self._port,
            # Pings and pongs are ours: Binance-style payloads and deadlines, and every
            # incoming ping must reach on_ws_frame to count against the message rate.
            enable_auto_ping=False,
            enable_auto_pong=False,
            use_aiofastnet=self.use_aiofastnet,
        )
        self._port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close every connection and stop listening (idempotent)."""
        if self._stopped is not None:
            await self._stopped.wait()
            return
        self._stopped = asyncio.Event()
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            conn.close(_CLOSE_GOING_AWAY, "server stopping")
        if not await self._all_gone(_CLOSE_GRACE_S):
            for conn in list(self._conns):  # peers that did not answer the CLOSE in time
                if conn.transport is not None:
                    conn.transport.disconnect(graceful=False)
            await self._all_gone(_CLOSE_GRACE_S)
        if self._server is not None:
            await self._server.wait_closed()
        self._stopped.set()

    async def _all_gone(self, timeout: float) -> bool:
        """Wait until every connection has disconnected; False on timeout."""
        waits = [
            asyncio.ensure_future(c.transport.wait_disconnected())
            for c in self._conns
            if c.transport is not None
        ]
        if not waits:
            return True
        _, pending = await asyncio.wait(waits, timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        return not pending

    def publish(self, frame: StreamFrame) -> int:
        """Write ``frame`` to every open connection subscribed to its stream; how many got it."""
        conns = self._by_stream.get(frame.stream)
        if not conns:
            return 0
        combined: bytes | None = None
        written = 0
        for conn in list(conns):
            if conn.combined:
                if combined is None:
                    combined = combined_frame(frame)
                written += conn.deliver(frame, combined)
            else:
                written += conn.deliver(frame, frame.payload)
        return written

    def publish_many(self, frames: Sequence[StreamFrame]) -> int:
        """``publish`` for a run of frames, in order; returns the deliveries made.

        Connections with nothing armed (``plain()``) get their share as one write;
        the others go frame by frame through the fault machinery.
        """
        batches: dict[_Connection, list[bytes]] = {}
        written = 0
        by_stream = self._by_stream
        heads = self._envelope_heads
        for frame in frames:
            stream = frame.stream
            conns = by_stream.get(stream)
            if not conns:
                continue
            combined = frame.envelope
            for conn in conns:
                if conn.combined:
                    if combined is None:
                        # combined_frame(frame), with the stream's head made once
                        head = heads.get(stream)
                        if head is None:
                            if len(heads) >= _MAX_ENVELOPE_HEADS:
                                heads.clear()
                            head = heads[stream] = envelope_head(stream)
                        combined = head + frame.payload + b"}"
                    data = combined
                else:
                    data = frame.payload
                batch = batches.get(conn)
                if batch is not None:
                    batch.append(data)
                    written += 1
                elif conn.plain():
                    batches[conn] = [data]
                    written += 1
                else:
                    written += conn.deliver(frame, data)
        for conn, batch in batches.items():
            conn.deliver_batch(batch)
        return written

    async def drain(self) -> None:
        """Return once every connection's write buffer is below ``high_water``.

        Uses the transports' pause_writing/resume_writing flow control; a connection that
        closes while waited on stops counting.
        """
        while True:
            blocked = [c for c in self._conns if not c.writable.is_set()]
            if not blocked:
                return
            for conn in blocked:
                await conn.writable.wait()

    def subscriber_count(self, stream: str) -> int:
        """How many open connections receive ``stream``."""
        return len(self._by_stream.get(stream, ()))

    def subscribed(self) -> set[str]:
        """Streams some open connection would receive (restricted to known_streams, if set)."""
        streams = set(self._by_stream)
        if self.known_streams is not None:
            streams &= self.known_streams
        return streams

    def send_server_shutdown(self) -> None:
        """Send the ``serverShutdown`` event on every open connection."""
        for conn in list(self._conns):
            conn.send_shutdown_event()

    def write_buffer_sizes(self) -> list[int]:
        """Bytes queued in each connection's transport (for back-pressure checks)."""
        return [
            c.transport.underlying_transport.get_write_buffer_size()
            for c in self._conns
            if c.transport is not None
        ]

    # -- internals used by _Connection

    def _route(
        self, request: WSUpgradeRequest
    ) -> WSListener | WSUpgradeResponseWithListener | None:
        route = _parse_route(self.market, request.path, self.legacy_all_classes)
        if route is None:
            return None  # picows answers 404
        if len(route.streams) > self.max_streams:
            response = WSUpgradeResponse.create_error_response(400, b"too many streams")
            return WSUpgradeResponseWithListener(response, None)
        now = time.monotonic()
        connects = self._connects
        while connects and connects[0] <= now - self.connects_window_s:
            connects.popleft()
        if len(connects) >= self.max_connects:
            self.counters.connects_refused += 1
            response = WSUpgradeResponse.create_error_response(429, b"too many connections")
            return WSUpgradeResponseWithListener(response, None)
        connects.append(now)
        return _Connection(self, route)

    def _index(self, stream: str, conn: _Connection) -> None:
        self._by_stream.setdefault(stream, {})[conn] = None

    def _unindex(self, stream: str, conn: _Connection) -> None:
        conns = self._by_stream.get(stream)
        if conns is not None:
            conns.pop(conn, None)
            if not conns:
                del self._by_stream[stream]

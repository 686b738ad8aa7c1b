"""The Control Bus: commands in, replies out.

``ControlBus`` is the interface every transport offers (``await request(req) ->
reply``); ``InProcessControlBus`` serves a Dispatcher in the same process.  It
admits at most ``max_pending`` requests at a time (more get an immediate error
reply, never an unbounded queue), bounds each with ``timeout_s`` (a timed-out
request is cancelled and the Dispatcher rolls it back), and turns any handler
crash into an error reply.  Mutating requests on the same instrument are
serialised, in arrival order, by the Dispatcher's per-instrument locks.
``request_json`` (and ``parse_json`` + ``request``) is the JSON door of the
remote transports: NATS request/reply (`meltica.bus.control_nats`) and the
gateway's ``POST /control`` (`meltica.bus.control_http`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import replace
from typing import Any, Protocol

from opentelemetry import trace

from meltica.control import ControlError, ControlReply, ControlRequest
from meltica.telemetry.spans import HELD_SPANS, end_span, start_span

__all__ = ["ControlBus", "ControlHandler", "InProcessControlBus"]

log = logging.getLogger("meltica.bus.control")


class ControlBus(Protocol):
    """Where control requests go; every transport implements this."""

    async def request(self, req: ControlRequest) -> ControlReply: ...


class ControlHandler(Protocol):
    """What serves requests (``Dispatcher.handle``)."""

    async def handle(self, req: ControlRequest) -> ControlReply: ...


class InProcessControlBus:
    """A ControlBus calling a handler directly, with admission control and timeouts."""

    def __init__(
        self,
        handler: ControlHandler,
        *,
        max_pending: int = 64,
        timeout_s: float | None = 30.0,
        gateway: str | None = None,
    ) -> None:
        """``gateway``: when given, every reply's ``result`` names it (``"gateway"``), so
        replies gathered from several gateways on ``meltica.control`` say whose they are."""
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError("timeout_s must be positive or None")
        self._handler = handler
        self.gateway = gateway
        self.max_pending = max_pending
        self.timeout_s = timeout_s
        self.pending = 0
        self._closed = False
        self._idle = asyncio.Event()
        self._idle.set()
        # OpenTelemetry tracer, set by the engine when tracing is on: a span per
        # request, from the request through the exchange's ack to the first event
        self.tracer: Any = None
        self.counters: dict[str, int] = dict.fromkeys(
            ("requests", "ok", "errors", "full", "timeouts", "crashes", "closed", "malformed"), 0
        )

    async def request(self, req: ControlRequest) -> ControlReply:
        """Serve one request; always returns a reply (errors are replies too)."""
        span = start_span(
            self.tracer,
            f"control {req.op}",
            attributes={
                "meltica.request_id": req.request_id,
                "meltica.op": req.op,
                "meltica.market": req.market or "",
                "meltica.symbols": list(req.symbols),
                "meltica.channels": list(req.channels),
            },
        )
        if span is None:
            return await self._request(req)
        with trace.use_span(span, end_on_exit=False):
            reply = await self._request(req)
        span.set_attribute("meltica.ok", reply.ok)
        span.add_event("reply")
        watch = HELD_SPANS.pop(id(span), None)
        if watch is None:
            end_span(span, error=None if reply.ok else reply.error)
        else:  # the Dispatcher watches for the first event: the span ends with that watch
            watch.add_done_callback(lambda _: span.end())
        return reply

    async def _request(self, req: ControlRequest) -> ControlReply:
        self.counters["requests"] += 1
        if self._closed:
            self.counters["closed"] += 1
            return self._signed(ControlReply.failure(req, "control bus is closed"))
        if self.pending >= self.max_pending:
            self.counters["full"] += 1
            return self._signed(
                ControlReply.failure(
                    req,
                    f"control bus full: {self.pending} requests pending (max {self.max_pending})",
                )
            )
        self.pending += 1
        self._idle.clear()
        try:
            reply = await asyncio.wait_for(self._handler.handle(req), self.timeout_s)
        except TimeoutError:
            self.counters["timeouts"] += 1
            reply = ControlReply.failure(
                req, f"{req.op} timed out after {self.timeout_s} s (rolled back)"
            )
        except Exception as exc:
            self.counters["crashes"] += 1
            log.exception("control %s %s crashed", req.op, req.request_id)
            reply = ControlReply.failure(req, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self.pending -= 1
            if not self.pending:
                self._idle.set()
        self.counters["ok" if reply.ok else "errors"] += 1
        return self._signed(reply)

    def _signed(self, reply: ControlReply) -> ControlReply:
        if self.gateway is None:
            return reply
        return replace(reply, result={**reply.result, "gateway": self.gateway})

    def parse_json(self, payload: bytes | str) -> ControlRequest | ControlReply:
        """The request in ``payload``, or the error reply when it is not one (counted
        as ``malformed``; its ``request_id`` is the payload's when it has a string one)."""
        data: Any = None
        try:
            data = json.loads(payload)
            return ControlRequest.from_dict(data)
        except ControlError as exc:
            error = str(exc)
        except ValueError as exc:  # not JSON, or not UTF-8 (UnicodeDecodeError)
            error = f"control request is not JSON: {exc}"
        self.counters["malformed"] += 1
        rid = data.get("request_id") if isinstance(data, dict) else None
        return self._signed(ControlReply(rid if isinstance(rid, str) else "", False, error))

    async def request_json(self, payload: bytes | str) -> bytes:
        """A JSON request in, a JSON reply out (for remote transports)."""
        parsed = self.parse_json(payload)
        reply = parsed if isinstance(parsed, ControlReply) else await self.request(parsed)
        return json.dumps(reply.to_dict()).encode()

    async def close(self) -> None:
        """Refuse new requests; wait for those in flight.  Idempotent."""
        self._closed = True
        await self._idle.wait()

    def stats(self) -> dict[str, int]:
        return {**self.counters, "pending": self.pending, "max_pending": self.max_pending}

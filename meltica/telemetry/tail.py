"""``GET /tail``: Data Bus events streamed to HTTP clients as wire JSON lines.

Served beside ``/metrics`` by the engine's `MetricsServer`.  Each request is
a ``drop_oldest`` bus consumer, so a client that reads slowly, or not at all,
loses the oldest events (a ``gap`` marker says how many) and never slows the
gateway: its handler may sit blocked in a socket write while the bus moves on.

`TailEndpoint` keeps every open response so the engine can end them itself on
shutdown (`close`): it closes their bus consumers, which ends each stream with
its chunked terminator, and aborts the connections of clients that do not take
even that within a grace period.  A client that hangs up ends its handler
through aiohttp's handler cancellation (`MetricsServer` turns it on), events
flowing or not.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from meltica._core.events import KIND_IDS
from meltica.bus.data import InMemoryDataBus, RingConsumer
from meltica.log import root as _root_log
from meltica.wire import encode_lines

__all__ = ["TailEndpoint"]

log = _root_log.getChild("tail")


class TailEndpoint:
    """The ``/tail`` handler and the registry of its open streams.

    Query: ``kind``, ``market``, ``symbol`` (each repeatable; none = all).  An
    unknown kind is answered 400 with the list of valid kinds.  Counters:
    ``opened``, ``rejected`` (bad requests), ``aborted`` (connections cut at
    shutdown because the client did not read), ``open`` (streams now).
    """

    def __init__(self, bus: InMemoryDataBus) -> None:
        self._bus = bus
        self._open: dict[RingConsumer, web.BaseRequest] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self.opened = 0
        self.rejected = 0
        self.aborted = 0

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/tail", self.handle)

    def stats(self) -> dict[str, int]:
        return {
            "open": len(self._open),
            "opened": self.opened,
            "rejected": self.rejected,
            "aborted": self.aborted,
        }

    async def handle(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        kinds = q.getall("kind", [])
        unknown = sorted(set(kinds) - KIND_IDS.keys())
        if unknown:
            self.rejected += 1
            return web.Response(
                status=400,
                text=f"unknown kind {', '.join(map(repr, unknown))}; "
                f"valid kinds: {', '.join(sorted(KIND_IDS))}\n",
            )
        if self._closing:
            return web.Response(status=503, text="shutting down\n")
        markets = q.getall("market", []) or None
        symbols = [s.upper() for s in q.getall("symbol", [])] or None
        consumer = self._bus.subscribe(
            f"tail-{id(request):x}",
            kinds=kinds or None,
            markets=markets,
            symbols=symbols,
            policy="drop_oldest",
            group="tail",  # one metrics series for every /tail stream
        )
        self.opened += 1
        self._open[consumer] = request
        self._idle.clear()
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        try:
            await resp.prepare(request)
            # ends when `close` closes the consumer (ConsumerClosed ends the iteration)
            async for batch in consumer:
                await resp.write(encode_lines(batch))
            # the terminator is written here, not after return, so `close` sees the
            # whole response end (or cuts it) while this handler is still registered
            await resp.write_eof()
        except ConnectionResetError:
            pass  # the client went away mid-write; nothing to tell it
        finally:
            consumer.close()
            del self._open[consumer]
            if not self._open:
                self._idle.set()
        return resp

    async def close(self, grace_s: float = 0.5) -> None:
        """End every open stream (idempotent); refuse new ones.

        Streams end cleanly when their clients take the rest within `grace_s`;
        the connections of the others are aborted, which ends their handlers.
        """
        self._closing = True
        for consumer in list(self._open):
            consumer.close()
        if await self._wait_idle(grace_s):
            return
        stuck = list(self._open.values())
        self.aborted += len(stuck)
        log.info("aborting %d /tail connection(s) that stopped reading", len(stuck))
        for request in stuck:
            transport = request.transport
            if transport is not None:
                transport.abort()
        if not await self._wait_idle(grace_s):
            log.warning("%d /tail handler(s) still running after abort", len(self._open))

    async def _wait_idle(self, timeout_s: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        return not self._open

"""The fake Binance exchange: a source, a timeline, WebSocket and REST servers.

``FakeExchange`` starts one ``WsServer`` per market of the source and one
``RestServer``, then runs the timeline: it walks ``source.frames()`` in time
order and publishes each frame to the connections subscribed to its stream,
paced at the recorded speed, N times it, or as fast as the slowest subscribed
client reads ("max", with back-pressure from ``WsServer.drain()``).  Tests,
benchmarks, ``replay`` and the offline demo all run against it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from itertools import islice
from typing import Any

from meltica.replay.faults import FaultPlan
from meltica.replay.rest import RestServer
from meltica.replay.source import MarketSource, StreamFrame
from meltica.replay.ws import WsServer

__all__ = ["FakeExchange"]

log = logging.getLogger("meltica.replay.exchange")

# Frames published per run: one transport write per connection per run, then
# back-pressure ("max" pacing) and a turn of the event loop.
BATCH = 1024


class FakeExchange:
    """A local Binance serving ``source`` on loopback.

    speed: None = as fast as clients read; 1.0 = recorded time; N = N times faster.  A paced
    timeline may be given another (paced) ``speed`` while it runs: the frames after the
    change follow at the new rate, without a jump.
    start: "first_subscribe" (the timeline waits for a subscription), "now", or
    "manual" (it waits for `begin()`: a client subscribes everything first).
    subscribers: with "first_subscribe", the timeline waits until every stream the
    source serves has this many subscribed connections (default 1: the first
    subscription), so that N clients, e.g. a hot-hot pair of gateways, receive the
    same frames from the first one on.
    ws_options / rest_options: passed to each WsServer / the RestServer.
    quantum: when paced, frames due within this many seconds (wall time) of the clock go
    out together with the run being built, up to ``quantum`` early, instead of a write and a
    sleep each (0, the default: every frame waits until it is due).  At 100k frames/s the
    frames are microseconds apart; a quantum of a millisecond turns a write per connection
    every few frames into one per millisecond.  Frames, their order and their pacing at any
    coarser scale are the same.
    """

    def __init__(
        self,
        source: MarketSource,
        *,
        host: str = "127.0.0.1",
        speed: float | None = None,
        faults: FaultPlan | None = None,
        start: str = "first_subscribe",
        ws_ports: dict[str, int] | None = None,
        rest_port: int = 0,
        ws_options: dict[str, Any] | None = None,
        rest_options: dict[str, Any] | None = None,
        subscribers: int = 1,
        quantum: float = 0.0,
    ) -> None:
        if quantum < 0:
            raise ValueError("quantum must be >= 0")
        if subscribers < 1:
            raise ValueError("subscribers must be at least 1")
        if speed is not None and speed <= 0:
            raise ValueError("speed must be positive (or None for max)")
        if start not in ("first_subscribe", "now", "manual"):
            raise ValueError("start must be 'first_subscribe', 'now' or 'manual'")
        self.source = source
        self.speed = speed
        self.quantum = quantum
        self.faults = faults or FaultPlan()
        self._start_mode = start
        self._subscribers = subscribers
        self._subscribed = asyncio.Event()
        self.finished = asyncio.Event()
        ws_options = dict(ws_options or {})
        # captures recorded before Binance's 2026 path split used one un-routed
        # connection for every stream class: serve them the same way
        ws_options.setdefault("legacy_all_classes", getattr(source, "legacy_paths", False))
        self.ws: dict[str, WsServer] = {
            market: WsServer(
                market,
                host=host,
                port=(ws_ports or {}).get(market, 0),
                faults=self.faults,
                known_streams=source.streams(market),
                on_subscribe=self._on_subscribe,
                **ws_options,
            )
            for market in source.markets
        }
        self.rest = RestServer(
            source, host=host, port=rest_port, faults=self.faults, **(rest_options or {})
        )
        self._task: asyncio.Task[None] | None = None
        self._started = False
        self.frames_read = 0
        self.frames_published = 0

    # -- lifecycle (each step idempotent)

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        await self.rest.start()
        for server in self.ws.values():
            await server.start()
        self._task = asyncio.get_running_loop().create_task(self._timeline())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for server in self.ws.values():
            await server.stop()
        await self.rest.stop()
        self._started = False

    async def __aenter__(self) -> FakeExchange:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- addresses

    def ws_url(self, market: str) -> str:
        return self.ws[market].url

    @property
    def rest_url(self) -> str:
        return self.rest.url

    # -- timeline

    def _on_subscribe(self, market: str, streams: set[str]) -> None:
        if self._start_mode != "first_subscribe":
            return
        if self._subscribers > 1:
            for server in self.ws.values():
                for stream in server.known_streams or ():
                    if server.subscriber_count(stream) < self._subscribers:
                        return
        self._subscribed.set()

    def begin(self) -> None:
        """Start the timeline now (any start mode; idempotent)."""
        self._subscribed.set()

    async def _timeline(self) -> None:
        loop = asyncio.get_running_loop()
        if self._start_mode != "now":
            await self._subscribed.wait()
        t0_wall = loop.time()
        t0_ts = 0
        # frames with ts_ns <= horizon were due (within the quantum) at the last clock read
        horizon = -1
        # Frames go out in runs (one write per connection per run): a run ends when
        # it is BATCH long, or, when paced, at the first frame not yet due.
        run: list[StreamFrame] = []
        markets = self.ws.keys()
        paced = self.speed is not None
        speed = self.speed or 1.0  # the speed the anchors below were taken at
        frames = iter(self.source.frames())
        if not paced:
            # "max": take runs straight off the source (no per-frame Python step here)
            while run := list(islice(frames, BATCH)):
                self.frames_read += len(run)
                await self._flush(run)
        for frame in frames:
            self.frames_read += 1
            if frame.market not in markets:
                continue
            if paced:
                ts = frame.ts_ns
                if horizon < 0:  # the first frame
                    t0_ts, speed = ts, self.speed or speed
                elif self.speed != speed:
                    # re-anchor at this frame: it stays due when the old speed had it due,
                    # the frames after it follow at the new speed (no jump, no restart)
                    t0_wall += (ts - t0_ts) / 1e9 / speed
                    t0_ts, speed = ts, self.speed or speed
                    horizon = 0
                if ts > horizon:
                    now = loop.time()
                    delay = t0_wall + (ts - t0_ts) / 1e9 / speed - now
                    if delay > self.quantum:
                        await self._flush(run)
                        await asyncio.sleep(delay)
                        now = loop.time()
                    horizon = t0_ts + int((now + self.quantum - t0_wall) * speed * 1e9)
            run.append(frame)
            if len(run) >= BATCH:
                await self._flush(run)
        await self._flush(run)
        for server in self.ws.values():
            await server.drain()
        log.debug(
            "timeline done: %d frames read, %d deliveries", self.frames_read, self.frames_published
        )
        self.finished.set()

    async def _flush(self, run: list[StreamFrame]) -> None:
        """Publish a run of frames, then honour back-pressure ("max") or yield."""
        if not run:
            return
        if len(self.ws) == 1:
            (server,) = self.ws.values()
            self.frames_published += server.publish_many(run)
        else:
            for market, server in self.ws.items():
                self.frames_published += server.publish_many([f for f in run if f.market == market])
        run.clear()
        if self.speed is None:
            for server in self.ws.values():
                await server.drain()
        await asyncio.sleep(0)  # let control messages, pings and REST requests in

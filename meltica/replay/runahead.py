"""Generate a source's frames ahead of the stream, so that serving them fast costs only sends.

``RunAhead(source, capacity)`` is a ``MarketSource`` serving exactly ``source``'s frames, in
the same order.  ``fill(n)`` pulls up to ``n`` frames out of ``source.frames()`` into a
bounded buffer (at most ``capacity`` frames); ``frames()`` yields from that buffer first and
reads the source directly once it is empty.  ``await run_ahead(seconds)`` fills in small
slices between turns of the event loop until the buffer holds ``seconds`` of the market's
time, so a fake exchange can generate while it serves slowly and then serve the buffer at a
rate its generator could not reach (``bench/bench_full_market.py``'s headroom steps).

What the source serves beside the stream (depth snapshots, trades by id) follows the frames
it has *generated*, i.e. runs ahead of the stream by the buffer.  That is legal Binance
behaviour: a REST snapshot may be newer than the stream a client has read (the client buffers
diffs until the stream reaches it), and a trade the exchange has made may be served by id
before its stream frame arrives.  Nothing served is ever behind or inconsistent with the
stream.  See docs/fake-exchange.md ("Run-ahead").
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator
from typing import Any

from meltica.replay.source import MarketSource, StreamFrame

__all__ = ["RunAhead"]

# frames generated per turn of the event loop while filling (a few ms of generation)
SLICE = 256


class RunAhead:
    """``source``'s frames, with up to ``capacity`` of them generated ahead of the stream."""

    def __init__(self, source: MarketSource, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"RunAhead capacity must be >= 1, got {capacity}")
        self.source = source
        self.markets = source.markets
        self.capacity = capacity
        self._buffer: deque[StreamFrame] = deque()
        self._it: Iterator[StreamFrame] | None = None
        self._done = False
        self.generated = 0  # frames pulled out of the source so far (this iteration)

    # -- MarketSource (everything but the frames is the source's own)

    def symbols(self, market: str) -> list[str]:
        return self.source.symbols(market)

    def streams(self, market: str) -> set[str]:
        return self.source.streams(market)

    def exchange_info(self, market: str) -> dict[str, Any]:
        return self.source.exchange_info(market)

    def depth_snapshot(self, market: str, symbol: str, limit: int) -> bytes | None:
        return self.source.depth_snapshot(market, symbol, limit)

    @property
    def tape(self) -> Any:
        """The source's trades by id (None if it keeps none)."""
        return getattr(self.source, "tape", None)

    @property
    def legacy_paths(self) -> bool:
        return bool(getattr(self.source, "legacy_paths", False))

    def frames(self) -> Iterator[StreamFrame]:
        """The source's frames in its order: the buffer's first, then straight from it."""
        self._buffer.clear()
        self._done = False
        self.generated = 0
        self._it = it = iter(self.source.frames())
        buffer = self._buffer
        popleft = buffer.popleft
        while True:
            while buffer:
                yield popleft()
            frame = next(it, None)
            if frame is None:
                self._done = True
                return
            self.generated += 1
            yield frame

    # -- running ahead

    @property
    def buffered(self) -> int:
        """Frames generated and not yet taken by ``frames()``."""
        return len(self._buffer)

    def ahead_s(self) -> float:
        """The market time the buffer spans, in seconds (0 when empty)."""
        buffer = self._buffer
        return (buffer[-1].ts_ns - buffer[0].ts_ns) / 1e9 if buffer else 0.0

    def fill(self, n: int) -> int:
        """Generate up to ``n`` frames into the buffer (never past ``capacity``); how many.

        Only between frames of a running ``frames()`` iteration (0 before one started or
        once the source is exhausted).
        """
        it = self._it
        if it is None or self._done:
            return 0
        buffer = self._buffer
        n = min(n, self.capacity - len(buffer))
        if n <= 0:
            return 0
        append = buffer.append
        got = 0
        for frame in it:
            append(frame)
            got += 1
            if got >= n:
                break
        else:
            self._done = True
        self.generated += got
        return got

    async def run_ahead(self, seconds: float) -> float:
        """Fill, a slice per turn of the event loop, until the buffer spans ``seconds`` of
        market time, is full, or the source ends; returns the span reached (seconds)."""
        while self._it is None:  # the timeline has not started yet
            await asyncio.sleep(0.05)
        while self.ahead_s() < seconds and self.fill(SLICE):
            await asyncio.sleep(0)
        return self.ahead_s()

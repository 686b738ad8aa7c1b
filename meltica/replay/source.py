"""What the fake exchange serves: frames in time order, snapshots, exchangeInfo.

A MarketSource is either a capture (``CaptureSource``: every stream from its
recorded frames, depth snapshots from the recorded REST bodies, so a correct
client syncs exactly as it did live) or a synthetic market
(``meltica.replay.synthetic.SyntheticMarket``).  See docs/fake-exchange.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["MarketSource", "StreamFrame", "combined_frame"]


@dataclass(frozen=True, slots=True)
class StreamFrame:
    """One frame of one stream, as the exchange would send it."""

    ts_ns: int
    market: str
    stream: str
    payload: bytes
    envelope: bytes | None = None


def combined_frame(frame: StreamFrame) -> bytes:
    """The frame as a combined-stream connection receives it."""
    if frame.envelope is not None:
        return frame.envelope
    return b'{"stream":"' + frame.stream.encode() + b'","data":' + frame.payload + b"}"


class MarketSource(Protocol):
    """The interface every source of the fake exchange implements."""

    markets: tuple[str, ...]

    def symbols(self, market: str) -> list[str]: ...

    def streams(self, market: str) -> set[str]: ...

    def exchange_info(self, market: str) -> dict[str, Any]: ...

    def frames(self) -> Iterator[StreamFrame]: ...

    def depth_snapshot(self, market: str, symbol: str, limit: int) -> bytes | None: ...

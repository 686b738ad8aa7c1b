"""Offline normalization: a capture file in, wire-format events out.

This is the parser's batch path (``meltica-engine normalize``): every
recorded WebSocket frame goes through the same compiled FrameParser the live
gateway uses, REST depth snapshots become ``book_snapshot`` events, and bad
frames are counted by reason and skipped, never fatal.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from meltica import log
from meltica._core.events import Event
from meltica._core.parser import FrameParser
from meltica.capture import (
    CaptureRecord,
    capture_info,
    raw_stream,
    read_capture,
    rest_depth_symbol,
)
from meltica.errors import CaptureError, ParseError
from meltica.wire import encode_lines

__all__ = ["NormalizeSummary", "iter_events", "normalize_capture"]

# Events per encoder call (one call per batch; bounds the batch buffer).
_BATCH = 1024


@dataclass
class NormalizeSummary:
    """What one normalize run saw; printed by the CLI."""

    venue: str = ""
    market: str = ""
    ws_frames: int = 0
    rest_bodies: int = 0
    conn_records: int = 0
    skipped_rest: int = 0
    replies: int = 0
    unknown: int = 0
    events: Counter[str] = field(default_factory=Counter)
    rejects: Counter[str] = field(default_factory=Counter)

    @property
    def total_events(self) -> int:
        return sum(self.events.values())

    @property
    def total_rejects(self) -> int:
        return sum(self.rejects.values())

    def lines(self) -> list[str]:
        def counts(c: Counter[str]) -> str:
            return ", ".join(f"{k}: {v}" for k, v in sorted(c.items()))

        rejects = f"rejects: {self.total_rejects}"
        if self.rejects:
            rejects += f" ({counts(self.rejects)})"
        return [
            f"venue: {self.venue}  market: {self.market}",
            f"frames read: {self.ws_frames} ws, {self.rest_bodies} rest,"
            f" {self.conn_records} conn ({self.skipped_rest} rest bodies not depth)",
            f"events: {self.total_events} ({counts(self.events)})",
            f"replies: {self.replies}  unknown event types: {self.unknown}",
            rejects,
        ]


def iter_events(
    path: str | Path,
    fmt: str = "auto",
    *,
    venue: str | None = None,
    market: str | None = None,
    summary: NormalizeSummary | None = None,
) -> Iterator[Event]:
    """Yield every canonical event of a capture, in capture order.

    ``summary`` (if given) is filled as records are read.  ParseErrors are
    counted in ``summary.rejects`` by reason and the record is skipped.
    """
    info = capture_info(path, fmt)
    venue = venue or info.venue or "binance"
    market = market or info.market
    if market is None:
        raise CaptureError(f"{path}: cannot tell the market from the file; pass --market")
    s = summary if summary is not None else NormalizeSummary()
    s.venue, s.market = venue, market
    parsers: dict[str, FrameParser] = {}
    out: list[object] = []

    def new_parser(url: str | None) -> FrameParser:
        # raw /ws/<stream> connections name their stream only in the URL
        return FrameParser(venue=venue, market=market, stream=raw_stream(url))

    def parser_for(conn: str) -> FrameParser:
        p = parsers.get(conn)
        if p is None:
            p = parsers[conn] = new_parser(None)
        return p

    record: CaptureRecord
    for record in read_capture(path, info.format):
        if record.kind == "conn":
            s.conn_records += 1
            parsers[record.conn] = new_parser(record.url)  # a (re)connect starts afresh
            continue
        if record.kind == "rest":
            s.rest_bodies += 1
            symbol = rest_depth_symbol(record.url)
            if symbol is None:
                s.skipped_rest += 1
                continue
            try:
                ev = parser_for(record.conn).parse_rest_depth(
                    record.payload, symbol, record.ts_recv
                )
            except ParseError as exc:
                s.rejects[exc.reason] += 1
                log.normalize.debug("rejected REST body at %d: %s", record.ts_recv, exc)
                continue
            s.events[ev.kind] += 1
            yield ev
            continue
        s.ws_frames += 1
        p = parser_for(record.conn)
        out.clear()
        before_unknown = p.unknown
        try:
            p.parse_into(record.payload, record.ts_recv, out)
        except ParseError as exc:
            s.rejects[exc.reason] += 1
            log.normalize.debug("rejected frame at %d: %s", record.ts_recv, exc)
            continue
        s.unknown += p.unknown - before_unknown
        for item in out:
            if isinstance(item, Event):
                s.events[item.kind] += 1
                yield item
            else:
                s.replies += 1


def normalize_capture(
    path: str | Path,
    sink: BinaryIO,
    fmt: str = "auto",
    *,
    venue: str | None = None,
    market: str | None = None,
) -> NormalizeSummary:
    """Write one wire-JSON event per line of ``path`` to ``sink``."""
    summary = NormalizeSummary()
    batch: list[Event] = []
    for ev in iter_events(path, fmt, venue=venue, market=market, summary=summary):
        batch.append(ev)
        if len(batch) == _BATCH:
            sink.write(encode_lines(batch))
            batch.clear()
    if batch:
        sink.write(encode_lines(batch))
    return summary

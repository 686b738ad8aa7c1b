"""What the fake exchange serves: frames in time order, snapshots, exchangeInfo.

A MarketSource is either a capture (``CaptureSource``: every stream from its
recorded frames, depth snapshots from the recorded REST bodies, so a correct
client syncs exactly as it did live) or a synthetic market
(``meltica.replay.synthetic.SyntheticMarket``).  See docs/fake-exchange.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from meltica.capture import ReadMeter, capture_info, raw_stream, read_capture, rest_depth_symbol
from meltica.errors import CaptureError
from meltica.replay.tape import TradeTape

__all__ = ["CaptureSource", "MarketSource", "StreamFrame", "combined_frame", "split_envelope"]


@dataclass(frozen=True, slots=True)
class StreamFrame:
    """One frame of one stream, as the exchange would send it."""

    ts_ns: int
    market: str
    stream: str
    payload: bytes
    envelope: bytes | None = None


def envelope_head(stream: str) -> bytes:
    """What a combined-stream frame of ``stream`` holds before its payload."""
    return b'{"stream":"' + stream.encode() + b'","data":'


def combined_frame(frame: StreamFrame) -> bytes:
    """The frame as a combined-stream connection receives it."""
    if frame.envelope is not None:
        return frame.envelope
    return envelope_head(frame.stream) + frame.payload + b"}"


class MarketSource(Protocol):
    """The interface every source of the fake exchange implements.

    A source with a ``tape`` attribute (a ``meltica.replay.tape.TradeTape`` its
    ``frames()`` fills) has its trades served by id over REST; without one, those
    endpoints answer as for an unknown symbol.
    """

    markets: tuple[str, ...]

    def symbols(self, market: str) -> list[str]: ...

    def streams(self, market: str) -> set[str]: ...

    def exchange_info(self, market: str) -> dict[str, Any]: ...

    def frames(self) -> Iterator[StreamFrame]: ...

    def depth_snapshot(self, market: str, symbol: str, limit: int) -> bytes | None: ...


# ---------------------------------------------------------------- captures

_ENVELOPE_HEAD = b'{"stream":"'
_ENVELOPE_DATA = b'","data":'


def split_envelope(frame: bytes) -> tuple[str, bytes] | None:
    """``(stream, payload)`` sliced out of a combined frame, byte-exact, or None.

    Binance writes envelopes compactly as ``{"stream":"<s>","data":<payload>}``;
    slicing keeps the payload's own bytes.  Other spellings get None (the
    caller falls back to a JSON round trip).
    """
    if not frame.startswith(_ENVELOPE_HEAD):
        return None
    end = frame.rstrip()
    if not end.endswith(b"}"):
        return None
    i = frame.find(_ENVELOPE_DATA, len(_ENVELOPE_HEAD))
    if i < 0:
        return None
    stream = frame[len(_ENVELOPE_HEAD) : i]
    if b'"' in stream or b"\\" in stream:
        return None
    return stream.decode(), end[i + len(_ENVELOPE_DATA) : -1]


@dataclass(frozen=True, slots=True)
class _Snapshot:
    ts_ns: int
    body: bytes


class CaptureSource:
    """A capture file served as a market: the fake exchange's replay source.

    Streams come from the recorded frames (combined envelopes, or the stream
    of a raw connection's URL); depth snapshots from the recorded REST bodies:
    the latest one recorded at or before the replay position, else the first.
    One pre-scan collects streams, symbols and snapshots; ``frames()`` then
    streams the file again, so memory does not grow with the capture.

    Progress: ``size_bytes`` is the files' size on disk; ``on_scan(bytes_read)`` is
    called every 4096 frames of the pre-scan, and ``frames_meter.bytes_read`` says how
    far ``frames()`` is; ``first_ns`` and ``last_ns`` are the first and last frames'
    recorded times.
    """

    def __init__(
        self,
        path: str | Path | Sequence[str | Path],
        fmt: str = "auto",
        *,
        market: str | None = None,
        on_scan: Callable[[int], None] | None = None,
    ) -> None:
        # a session split across files (hftbacktest splits at 00:00 UTC) is one source
        paths = [Path(path)] if isinstance(path, (str, Path)) else [Path(p) for p in path]
        if not paths:
            raise ValueError("CaptureSource needs at least one capture file")
        self.paths = paths
        self.path = paths[0]
        infos = [capture_info(p, fmt) for p in paths]
        info = infos[0]
        self.format = info.format
        resolved = market or info.market
        if resolved is None:
            raise CaptureError(f"{path}: cannot tell the market from the file; pass market=")
        for p, other in zip(paths[1:], infos[1:], strict=True):
            if other.format != info.format or (market is None and other.market != resolved):
                raise CaptureError(f"{p}: not the same format and market as {paths[0]}")
        self.market: str = resolved
        self.venue = info.venue or "binance"
        self.markets: tuple[str, ...] = (self.market,)
        # recorded on one un-routed connection (before the 2026 futures path split)
        self.legacy_paths = True
        self._streams: set[str] = set()
        self._snapshots: dict[str, list[_Snapshot]] = {}
        self._decimals: dict[str, tuple[int, int]] = {}
        self._now_ns = 0
        # the trades frames() has yielded, served by id over REST (meltica/replay/tape.py)
        self.tape = TradeTape()
        self.frame_count = 0
        self.size_bytes = sum(p.stat().st_size for p in paths)
        self.frames_meter = ReadMeter()
        scan = ReadMeter()
        self.first_ns = self.last_ns = 0  # the frames' recorded receive times
        for frame in self._scan(meter=scan):
            self._streams.add(frame.stream)
            self.frame_count += 1
            self.last_ns = frame.ts_ns
            if self.frame_count == 1:
                self.first_ns = frame.ts_ns
            if on_scan is not None and not self.frame_count & 4095:
                on_scan(scan.bytes_read)

    # -- MarketSource

    def symbols(self, market: str) -> list[str]:
        if market != self.market:
            return []
        syms = {s.split("@", 1)[0].upper() for s in self._streams if not s.startswith("!")}
        return sorted(syms | set(self._snapshots))

    def streams(self, market: str) -> set[str]:
        return set(self._streams) if market == self.market else set()

    def exchange_info(self, market: str) -> dict[str, Any]:
        """A minimal exchangeInfo: the capture's symbols, ticks from recorded decimals."""
        symbols = []
        for sym in self.symbols(market):
            pdec, qdec = self._decimals.get(sym, (8, 8))
            symbols.append(
                {
                    "symbol": sym,
                    "status": "TRADING",
                    "filters": [
                        {"filterType": "PRICE_FILTER", "tickSize": _unit(pdec)},
                        {"filterType": "LOT_SIZE", "stepSize": _unit(qdec)},
                    ],
                }
            )
        return {"timezone": "UTC", "serverTime": self._now_ns // 1_000_000, "symbols": symbols}

    def frames(self) -> Iterator[StreamFrame]:
        self.frames_meter = ReadMeter()
        self.tape = TradeTape()
        observe = self.tape.observe
        for frame in self._scan(collect=False, meter=self.frames_meter):
            self._now_ns = frame.ts_ns
            observe(frame)
            yield frame

    def depth_snapshot(self, market: str, symbol: str, limit: int) -> bytes | None:
        if market != self.market:
            return None
        snaps = self._snapshots.get(symbol.upper())
        if not snaps:
            return None
        chosen = snaps[0]
        for snap in snaps:
            if snap.ts_ns <= self._now_ns:
                chosen = snap
        return _limit_depth(chosen.body, limit)

    # -- reading

    def _scan(self, collect: bool = True, meter: ReadMeter | None = None) -> Iterator[StreamFrame]:
        raw_streams: dict[str, str | None] = {}
        records = (rec for p in self.paths for rec in read_capture(p, self.format, meter=meter))
        for rec in records:
            if rec.kind == "conn":
                raw_streams[rec.conn] = raw_stream(rec.url)
            elif rec.kind == "rest":
                if collect:
                    self._collect_snapshot(rec.ts_recv, rec.url, rec.payload)
            else:
                frame = self._frame(rec.ts_recv, rec.payload, raw_streams.get(rec.conn))
                if frame is None:
                    continue
                if collect:
                    self._collect_decimals(frame)
                yield frame

    def _frame(self, ts: int, data: bytes, raw_stream: str | None) -> StreamFrame | None:
        split = split_envelope(data)
        if split is not None:
            return StreamFrame(ts, self.market, split[0], split[1], data)
        if raw_stream is not None:
            return StreamFrame(ts, self.market, raw_stream, data)
        try:
            obj = json.loads(data)
        except ValueError:
            return None  # a recorded broken frame: nothing a stream could carry
        if isinstance(obj, dict) and isinstance(obj.get("stream"), str) and "data" in obj:
            payload = json.dumps(obj["data"], separators=(",", ":")).encode()
            return StreamFrame(ts, self.market, obj["stream"], payload)
        return None

    def _collect_snapshot(self, ts: int, url: str | None, body: bytes) -> None:
        symbol = rest_depth_symbol(url)
        if symbol is not None:
            self._snapshots.setdefault(symbol, []).append(_Snapshot(ts, body))

    def _collect_decimals(self, frame: StreamFrame) -> None:
        if not frame.stream.endswith(("@trade", "@aggTrade")):
            return
        sym = frame.stream.split("@", 1)[0].upper()
        if sym in self._decimals:
            return
        try:
            obj = json.loads(frame.payload)
            self._decimals[sym] = (_decimals(obj["p"]), _decimals(obj["q"]))
        except (ValueError, KeyError, TypeError):
            pass


def _decimals(text: str) -> int:
    return len(text.partition(".")[2])


def _unit(decimals: int) -> str:
    return "1" if decimals == 0 else "0." + "0" * (decimals - 1) + "1"


def _limit_depth(body: bytes, limit: int) -> bytes:
    """The recorded body, cut to ``limit`` levels per side when it has more."""
    obj = json.loads(body)
    if len(obj.get("bids", ())) <= limit and len(obj.get("asks", ())) <= limit:
        return body
    obj["bids"], obj["asks"] = obj["bids"][:limit], obj["asks"][:limit]
    return json.dumps(obj, separators=(",", ":")).encode()

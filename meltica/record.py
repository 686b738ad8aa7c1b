"""``meltica-engine record``: live frames and REST snapshots into a capture file.

The recorder is the source of new replay material: it opens combined-stream
connections (picows) for the requested symbols and streams, writes every
frame with its local receive time in ns, fetches a REST depth snapshot per
symbol once the depth streams are flowing (so the capture can be synced
offline exactly as it was live), and records connection events.  It works
against real Binance and against the fake exchange; pings are answered by
picows.  Memory stays flat: frames go straight to the gzip writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from meltica.adapters.binance import streams as vocabulary
from meltica.adapters.binance.ws import stream_route
from meltica.capture import CaptureWriter

__all__ = ["RecordOptions", "Recorder", "market_urls", "streams_for"]

log = logging.getLogger("meltica.record")

# Binance's defaults (docs/connections.md); the fake exchange is reached with --ws-url/--rest-url.
DEFAULT_WS = {"spot": "wss://stream.binance.com:9443", "usdm": "wss://fstream.binance.com"}
DEFAULT_REST = {"spot": "https://api.binance.com", "usdm": "https://fapi.binance.com"}
DEPTH_PATH = {"spot": "/api/v3/depth", "usdm": "/fapi/v1/depth"}
DEFAULT_STREAMS = ("depth", "trade", "book_ticker")
DEFAULT_DEPTH_SPEED_MS = 100  # as binance.<market>.depth_speed_ms


def streams_for(
    symbols: Sequence[str],
    streams: Sequence[str],
    market: str = "spot",
    depth_speed_ms: int = DEFAULT_DEPTH_SPEED_MS,
) -> list[str]:
    """Binance stream names, lowercase symbol @ stream, for every symbol x stream.

    A channel as config and ``ctl`` name it (``depth``, ``book_ticker``, ``agg_trade``,
    ``mark_price``, ...) means what it means there: the stream the gateway subscribes
    to for it, depth channels at ``depth_speed_ms`` (as ``binance.<market>.depth_speed_ms``).
    Any other name is taken as Binance's own spelling and kept as written
    (``depth@500ms``, ``bookTicker``, ``avgPrice``): a capture may hold what Meltica does
    not read.  StreamError (a ValueError) for a symbol that is not one or a depth speed
    the market does not have.
    """
    names = []
    for s in symbols:
        sym = vocabulary.stream_symbol(s)
        for st in streams:
            if vocabulary.is_channel(market, st):
                names.append(vocabulary.stream_name(market, sym, st, depth_speed_ms=depth_speed_ms))
            else:
                names.append(f"{sym}@{st}")
    return names


def market_urls(market: str, ws_base: str, names: Sequence[str]) -> list[str]:
    """Combined-stream URLs for ``names`` (usdm: one per routed path that has streams)."""
    base = ws_base.rstrip("/")
    if market != "usdm":
        return [f"{base}/stream?streams={'/'.join(names)}"]
    public = [n for n in names if stream_route(n) == "public"]
    other = [n for n in names if n not in public]
    return [
        f"{base}/{path}/stream?streams={'/'.join(group)}"
        for path, group in (("public", public), ("market", other))
        if group
    ]


@dataclass
class RecordOptions:
    out: Path
    symbols: list[str]
    market: str = "spot"
    streams: list[str] = field(default_factory=lambda: list(DEFAULT_STREAMS))
    ws_url: str | None = None
    rest_url: str | None = None
    duration_s: float | None = None
    snapshot_limit: int = 1000
    snapshot_delay_s: float = 1.0
    depth_speed_ms: int = DEFAULT_DEPTH_SPEED_MS


class _Listener(WSListener):
    def __init__(self, recorder: Recorder, conn: str) -> None:
        self.recorder = recorder
        self.conn = conn

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            self.recorder.on_frame(self.conn, frame.get_payload_as_bytes())
        elif frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()


class Recorder:
    """Records until ``duration_s`` passes or ``stop()`` is called."""

    def __init__(self, options: RecordOptions) -> None:
        if options.market not in DEFAULT_WS:
            raise ValueError(
                f"record supports markets {sorted(DEFAULT_WS)}, not {options.market!r}"
            )
        if not options.symbols:
            raise ValueError("record needs at least one symbol")
        self.options = options
        self.frames = 0
        self.snapshots = 0
        self._writer: CaptureWriter | None = None
        self._stop = asyncio.Event()

    def on_frame(self, conn: str, payload: bytes) -> None:
        assert self._writer is not None
        self._writer.write_ws(time.time_ns(), conn, payload)
        self.frames += 1

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        opts = self.options
        names = streams_for(opts.symbols, opts.streams, opts.market, opts.depth_speed_ms)
        ws_base = opts.ws_url or DEFAULT_WS[opts.market]
        rest_base = (opts.rest_url or DEFAULT_REST[opts.market]).rstrip("/")
        transports: list[WSTransport] = []
        with CaptureWriter(opts.out, venue="binance", market=opts.market) as writer:
            self._writer = writer
            for i, url in enumerate(market_urls(opts.market, ws_base, names)):
                conn = f"ws{i}"
                # written first: frames can arrive before ws_connect returns
                writer.write_conn(time.time_ns(), conn, {"event": "connect", "url": url})
                transport, _ = await ws_connect(lambda c=conn: _Listener(self, c), url)
                transports.append(transport)
            async with aiohttp.ClientSession() as http:
                if any(s.startswith("depth") for s in opts.streams):
                    # let diffs buffer first, as a syncing client would
                    await asyncio.sleep(opts.snapshot_delay_s)
                    for sym in opts.symbols:
                        await self._snapshot(http, writer, rest_base, sym.upper())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), opts.duration_s)
            for i, transport in enumerate(transports):
                transport.send_close()
                transport.disconnect()
                writer.write_conn(time.time_ns(), f"ws{i}", {"event": "disconnect"})
        log.info("recorded %d frames and %d snapshots to %s", self.frames, self.snapshots, opts.out)

    async def _snapshot(
        self, http: aiohttp.ClientSession, writer: CaptureWriter, base: str, symbol: str
    ) -> None:
        query = urllib.parse.urlencode({"symbol": symbol, "limit": self.options.snapshot_limit})
        url = f"{base}{DEPTH_PATH[self.options.market]}?{query}"
        async with http.get(url) as resp:
            body = await resp.read()
            if resp.status != 200:
                log.warning("snapshot %s: HTTP %d %s", symbol, resp.status, body[:200])
                writer.write_conn(
                    time.time_ns(),
                    "rest",
                    {"event": "rest_error", "url": url, "status": resp.status},
                )
                return
        json.loads(body)  # a body that is not JSON is not a snapshot
        writer.write_rest(time.time_ns(), "rest", url, body)
        self.snapshots += 1


async def record(options: RecordOptions) -> Recorder:
    """Run a recorder; SIGINT/SIGTERM stop it cleanly (the file is closed and readable)."""
    recorder = Recorder(options)
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, recorder.stop)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):
            pass
    try:
        await recorder.run()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
    return recorder

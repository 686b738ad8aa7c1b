"""The fake exchange end to end over loopback: byte-exact replay and book sync.

A plain picows client subscribes to a capture's streams and must receive
every recorded frame of those streams, byte-identical and in order; a client
that syncs order books from the served REST snapshot plus the diff stream
(Binance's procedure, docs/conductor.md, on a plain dict book) must see zero gaps
on every real capture.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aio import run
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from meltica.replay.exchange import FakeExchange
from meltica.replay.source import CaptureSource

T = TypeVar("T")

HFT = [
    "spot/btcusdt_20230405.dat.gz",
    "spot/btcusdt_20240808.gz",
    "spot/btcusdt_20240809.gz",
    "usdm/btcusdt_20230404.dat.gz",
    "usdm/btcusdt_20230405.dat.gz",
    "usdm/btcusdt_20240718.gz",
    "usdm/btcusdt_20240719.gz",
    "usdm/btcusdt_20240808.gz",
]
CRYPTOFEED = ["BINANCE", "BINANCE_FUTURES", "BINANCE_DELIVERY", "BINANCE_US"]
DEPTH_PATH = {"spot": "/api/v3/depth", "usdm": "/fapi/v1/depth", "coinm": "/dapi/v1/depth"}


def capture_path(captures_dir: Path, name: str) -> Path:
    if name in CRYPTOFEED:
        return captures_dir / "cryptofeed" / "sample_data" / f"{name}.ws.1.0"
    return captures_dir / "hftbacktest" / "examples" / name


def recorded_ws_frames(path: Path) -> list[bytes]:
    """The combined frames of a capture, read independently of meltica.capture."""
    if path.name.endswith(".ws.1.0"):
        lines = path.read_bytes().split(b"\n")[1:]
        return [ln.split(b": ", 1)[1] for ln in lines if ln.strip()]
    with gzip.open(path) as fh:
        frames = [ln.rstrip(b"\n").split(b" ", 1)[1] for ln in fh]
    return [f for f in frames if f.startswith(b'{"stream"')]


class Collector(WSListener):  # type: ignore[misc]
    def __init__(self, expected: int) -> None:
        self.frames: list[bytes] = []
        self.expected = expected
        self.done = asyncio.get_running_loop().create_future()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type != WSMsgType.TEXT:
            return
        self.frames.append(frame.get_payload_as_bytes())
        if len(self.frames) >= self.expected and not self.done.done():
            self.done.set_result(None)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def connect(url: str, listener: Collector) -> WSTransport:
    transport, _ = await ws_connect(lambda: listener, url)
    return transport


@pytest.mark.parametrize("name", HFT + CRYPTOFEED)
def test_replay_is_byte_identical_and_in_order(captures_dir: Path, name: str) -> None:
    path = capture_path(captures_dir, name)
    expected = recorded_ws_frames(path)
    source = CaptureSource(path)
    streams = sorted(source.streams(source.market))

    async def scenario() -> list[bytes]:
        async with FakeExchange(source, speed=None) as ex:
            listener = Collector(len(expected))
            url = f"{ex.ws_url(source.market)}{_stream_path(source.market, streams)}"
            transport = await connect(url, listener)
            await listener.done
            transport.disconnect()
            return listener.frames

    got = run(scenario)
    assert len(got) == len(expected)
    mismatch = next((i for i, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b), None)
    assert mismatch is None, (
        f"frame {mismatch} differs: {got[mismatch]!r} != {expected[mismatch]!r}"
    )


def _stream_path(market: str, streams: list[str]) -> str:
    # Captures were recorded on one combined connection; futures captures predate the
    # routed paths, so the fake serves them on the legacy path with every stream class.
    return "/stream?streams=" + "/".join(streams)


# ---------------------------------------------------------------- book sync


class RefBook:
    """A plain dict order book synced by Binance's procedure (docs/conductor.md)."""

    def __init__(self, market: str) -> None:
        self.futures = market != "spot"
        self.bids: dict[str, str] = {}
        self.asks: dict[str, str] = {}
        self.last_u: int | None = None
        self.snapshot_id: int | None = None
        self.buffer: list[dict[str, Any]] = []
        self.gaps = 0
        self.applied = 0

    def on_delta(self, ev: dict[str, Any]) -> None:
        if self.snapshot_id is None:
            self.buffer.append(ev)
            return
        self._apply(ev)

    def on_snapshot(self, body: dict[str, Any]) -> bool:
        """Install a snapshot; False when it is older than the buffered stream (refetch)."""
        last = int(body["lastUpdateId"])
        if self.buffer and last < self.buffer[0]["U"] - (0 if self.futures else 1):
            return False
        self.bids = {p: q for p, q in body["bids"]}
        self.asks = {p: q for p, q in body["asks"]}
        self.snapshot_id = last
        buffered, self.buffer = self.buffer, []
        for ev in buffered:
            self._apply(ev)
        return True

    def _apply(self, ev: dict[str, Any]) -> None:
        assert self.snapshot_id is not None
        big_u, u = ev["U"], ev["u"]
        if self.last_u is None:
            # stale events: spot u <= L, futures u < L
            if (u <= self.snapshot_id) if not self.futures else (u < self.snapshot_id):
                return
            lo = self.snapshot_id + (0 if self.futures else 1)
            if not big_u <= lo <= u:
                self.gaps += 1
        elif self.futures:
            if ev.get("pu") != self.last_u:
                self.gaps += 1
        elif big_u != self.last_u + 1:
            self.gaps += 1
        for side, levels in ((self.bids, ev["b"]), (self.asks, ev["a"])):
            for p, q in levels:
                if float(q) == 0:  # "0.00000000" removes the level
                    side.pop(p, None)
                else:
                    side[p] = q
        self.last_u = u
        self.applied += 1


class SyncClient(WSListener):  # type: ignore[misc]
    def __init__(self, market: str, total_depth: int) -> None:
        self.market = market
        self.books: dict[str, RefBook] = {}
        self.total_depth = total_depth
        self.seen = 0
        self.first_depth: asyncio.Queue[str] = asyncio.Queue()
        self.done = asyncio.get_running_loop().create_future()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type != WSMsgType.TEXT:
            return
        msg = json.loads(frame.get_payload_as_bytes())
        if "@depth" not in msg.get("stream", ""):
            return
        data = msg["data"]
        sym = data["s"]
        if sym not in self.books:
            self.books[sym] = RefBook(self.market)
            self.first_depth.put_nowait(sym)
        self.books[sym].on_delta(data)
        self.seen += 1
        if self.seen >= self.total_depth and not self.done.done():
            self.done.set_result(None)


# Book-sync sessions: a file, or a session hftbacktest split at 00:00 UTC (the snapshot is in
# the first file; the next continues the same sequence). spot/btcusdt_20230405 holds no
# snapshot and its previous day is not in the corpus: it is checked for a clear refusal.
SESSIONS = {
    "spot-20240808": ["spot/btcusdt_20240808.gz"],
    "spot-20240808+09": ["spot/btcusdt_20240808.gz", "spot/btcusdt_20240809.gz"],
    "usdm-20230404+05": ["usdm/btcusdt_20230404.dat.gz", "usdm/btcusdt_20230405.dat.gz"],
    "usdm-20230404": ["usdm/btcusdt_20230404.dat.gz"],
    "usdm-20240718+19": ["usdm/btcusdt_20240718.gz", "usdm/btcusdt_20240719.gz"],
    "usdm-20240808": ["usdm/btcusdt_20240808.gz"],
    **{name: [name] for name in CRYPTOFEED},
}


@pytest.mark.parametrize("session", sorted(SESSIONS))
def test_book_sync_from_served_snapshots_has_no_gaps(captures_dir: Path, session: str) -> None:
    paths = [capture_path(captures_dir, name) for name in SESSIONS[session]]
    source = CaptureSource(paths)
    market = source.market
    depth_streams = sorted(s for s in source.streams(market) if "@depth" in s)
    total_depth = sum(
        1 for p in paths for f in recorded_ws_frames(p) if b"@depth" in f[: f.find(b'"data"')]
    )

    async def scenario() -> dict[str, RefBook]:
        async with FakeExchange(source, speed=None) as ex, aiohttp.ClientSession() as http:
            client = SyncClient(market, total_depth)
            url = f"{ex.ws_url(market)}/stream?streams=" + "/".join(depth_streams)
            transport = await connect(url, client)  # type: ignore[arg-type]
            pending = len(depth_streams)
            while pending:
                sym = await client.first_depth.get()
                pending -= 1
                for _ in range(50):
                    query = f"?symbol={sym}&limit=1000"
                    async with http.get(ex.rest_url + DEPTH_PATH[market] + query) as resp:
                        assert resp.status == 200, await resp.text()
                        body = await resp.json()
                    if client.books[sym].on_snapshot(body):
                        break
                    await asyncio.sleep(0.05)
                else:
                    pytest.fail(f"{sym}: the served snapshot never caught up with the stream")
            await client.done
            transport.disconnect()
            return client.books

    books = run(scenario)
    assert books, "no depth stream in the capture"
    for sym, book in books.items():
        assert book.gaps == 0, f"{session} {sym}: {book.gaps} gaps"
        assert book.applied > 0, f"{session} {sym}: nothing applied after the snapshot"
        if book.bids and book.asks:
            assert max(map(float, book.bids)) < min(map(float, book.asks)), f"{sym} crossed"


def test_capture_without_snapshot_refuses_depth(captures_dir: Path) -> None:
    source = CaptureSource(capture_path(captures_dir, "spot/btcusdt_20230405.dat.gz"))

    async def scenario() -> tuple[int, dict[str, Any]]:
        async with FakeExchange(source, speed=None) as ex, aiohttp.ClientSession() as http:
            url = ex.rest_url + "/api/v3/depth?symbol=BTCUSDT&limit=1000"
            async with http.get(url) as resp:
                return resp.status, await resp.json()

    status, body = run(scenario)
    assert (status, body["code"]) == (400, -1121)


@pytest.mark.parametrize(("market", "symbols"), [("spot", 1), ("usdm", 1), ("spot", 100)])
def test_synthetic_market_syncs_over_sockets(market: str, symbols: int) -> None:
    from meltica.replay.synthetic import SyntheticMarket

    def make() -> SyntheticMarket:
        return SyntheticMarket(
            markets=(market,), symbols_per_market=symbols, seed=7, duration_s=3.0
        )

    source = make()
    depth_streams = sorted(s for s in source.streams(market) if "@depth" in s)
    total_depth = sum(1 for f in make().frames() if "@depth" in f.stream)

    async def scenario() -> dict[str, RefBook]:
        # paced (2x the 3 s market), so diffs keep flowing after the snapshots are fetched
        async with FakeExchange(source, speed=2.0) as ex, aiohttp.ClientSession() as http:
            client = SyncClient(market, total_depth)
            url = f"{ex.ws_url(market)}/stream?streams=" + "/".join(depth_streams)
            transport = await connect(url, client)  # type: ignore[arg-type]
            for _ in depth_streams:
                sym = await client.first_depth.get()
                query = f"?symbol={sym}&limit=1000"
                async with http.get(ex.rest_url + DEPTH_PATH[market] + query) as resp:
                    assert resp.status == 200, await resp.text()
                    assert client.books[sym].on_snapshot(await resp.json())
            await client.done
            transport.disconnect()
            return client.books

    books = run(scenario)
    assert len(books) == symbols
    for sym, book in books.items():
        assert book.gaps == 0, f"{sym}: {book.gaps} gaps"
        assert book.applied > 0
        assert max(map(float, book.bids)) < min(map(float, book.asks)), f"{sym} crossed"


def test_a_client_that_stops_reading_is_dropped_and_memory_stays_bounded() -> None:
    from meltica.replay.source import StreamFrame
    from meltica.replay.ws import WsServer

    payload = b'{"e":"trade","E":1,"s":"BTCUSDT","t":1,"p":"1.0","q":"1.0","T":1,"m":true}' * 8
    frame = StreamFrame(0, "spot", "btcusdt@trade", payload)
    high, cap = 64 * 1024, 256 * 1024

    async def scenario() -> tuple[int, int, bool]:
        server = WsServer("spot", high_water=high, max_buffer=cap)
        await server.start()
        try:
            listener = Collector(expected=1 << 30)
            transport = await connect(f"{server.url}/ws/btcusdt@trade", listener)
            transport.underlying_transport.pause_reading()  # a consumer that stops reading
            peak = 0
            for _ in range(400):  # paced publishing never waits on drain()
                server.publish_many([frame] * 64)
                peak = max([peak, *server.write_buffer_sizes()])
                await asyncio.sleep(0)
            transport.underlying_transport.resume_reading()  # now it can see the drop
            await asyncio.wait_for(listener.done, 5)
            return server.counters.slow_consumers, peak, transport.is_disconnected
        finally:
            await server.stop()

    dropped, peak, gone = run(scenario)
    assert dropped == 1 and gone
    assert peak <= cap + 64 * (len(payload) + 10)  # at most one batch beyond the cap

"""Fake exchange send rate next to raw picows, same frames, same run.

One operation = one small combined-stream trade frame (~170 B) delivered to a
raw picows client over loopback.  Two senders, each in its own process so
the client has a core to itself:

- raw picows: a bare picows server that sends the pre-built frames with one
  ``send()`` per frame, waiting for the transport to drain when it is full;
- raw picows, batched: the frames pre-encoded on the wire and written 256 at a
  time (the ceiling for any Python sender);
- fake exchange: ``FakeExchange`` in "max" pacing serving the same frames from
  an in-memory source through its timeline, subscription filter and
  ``WsServer.publish``.

The client counts frames from the first to the last and reports frames/s.
Rounds alternate the two senders; the table gives medians and the ratio.

Run:  python bench/bench_fake_exchange.py [--frames 300000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

STREAM = "btcusdt@trade"


def build_frames(n: int) -> list[bytes]:
    """n distinct compact trade payloads shaped like Binance's."""
    out = []
    for i in range(n):
        d = {
            "e": "trade",
            "E": 1723161255208 + i,
            "s": "BTCUSDT",
            "t": 3600000000 + i,
            "p": f"{61837.63 + (i % 97) * 0.01:.8f}",
            "q": f"{0.001 * (1 + i % 13):.8f}",
            "T": 1723161255207 + i,
            "m": bool(i & 1),
            "M": True,
        }
        out.append(json.dumps(d, separators=(",", ":")).encode())
    return out


# ---------------------------------------------------------------- senders (child processes)


def _ws_frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    return bytes((0x81, 126)) + n.to_bytes(2, "big") + payload


def _combined(payload: bytes) -> bytes:
    return b'{"stream":"' + STREAM.encode() + b'","data":' + payload + b"}"


def _serve_raw(pump: Callable[[Any], Awaitable[None]], port_q: mp.Queue) -> None:  # type: ignore[type-arg]
    """A bare picows server that runs ``pump(transport)`` for each client."""
    import uvloop
    from picows import WSListener, WSTransport, WSUpgradeRequest, ws_create_server

    class Sender(WSListener):  # type: ignore[misc]
        def on_ws_connected(self, transport: WSTransport) -> None:
            asyncio.get_running_loop().create_task(pump(transport))

    async def main() -> None:
        def factory(request: WSUpgradeRequest) -> WSListener:
            return Sender()

        server = await ws_create_server(factory, "127.0.0.1", 0)
        port_q.put(server.sockets[0].getsockname()[1])
        await asyncio.sleep(3600)

    uvloop.run(main())


def _raw_batched_server(n: int, port_q: mp.Queue) -> None:  # type: ignore[type-arg]
    """The ceiling: frames pre-encoded on the wire, written 256 at a time."""
    wire = [_ws_frame(_combined(p)) for p in build_frames(n)]
    chunks = [b"".join(wire[i : i + 256]) for i in range(0, n, 256)]

    async def pump(transport: Any) -> None:
        flow = transport.underlying_transport
        for chunk in chunks:
            flow.write(chunk)
            while flow.get_write_buffer_size() > 1 << 20:
                await asyncio.sleep(0)

    _serve_raw(pump, port_q)


def _raw_picows_server(n: int, port_q: mp.Queue) -> None:  # type: ignore[type-arg]
    """picows as a user drives it: one ``send()`` per frame."""
    payloads = [_combined(p) for p in build_frames(n)]

    async def pump(transport: Any) -> None:
        flow = transport.underlying_transport
        for i, p in enumerate(payloads):
            transport.send(1, p)  # WSMsgType.TEXT
            if i % 256 == 255 and flow.get_write_buffer_size() > 1 << 20:
                while flow.get_write_buffer_size() > 1 << 18:
                    await asyncio.sleep(0)

    _serve_raw(pump, port_q)


def _fake_exchange_server(n: int, port_q: mp.Queue) -> None:  # type: ignore[type-arg]
    import uvloop

    from meltica.replay.exchange import FakeExchange
    from meltica.replay.source import StreamFrame

    # like a capture, each frame carries its recorded combined envelope
    frames = [
        StreamFrame(i, "spot", STREAM, p, _combined(p)) for i, p in enumerate(build_frames(n))
    ]

    class StaticSource:
        markets = ("spot",)

        def symbols(self, market: str) -> list[str]:
            return ["BTCUSDT"]

        def streams(self, market: str) -> set[str]:
            return {STREAM}

        def exchange_info(self, market: str) -> dict[str, object]:
            return {"symbols": []}

        def frames(self) -> Iterator[StreamFrame]:
            return iter(frames)

        def depth_snapshot(self, market: str, symbol: str, limit: int) -> bytes | None:
            return None

    async def main() -> None:
        exchange = FakeExchange(StaticSource(), speed=None)
        await exchange.start()
        port_q.put(exchange.ws["spot"].port)
        await asyncio.sleep(3600)

    uvloop.run(main())


# ---------------------------------------------------------------- client


async def _receive(url: str, n: int) -> float:
    """Frames/s from the first frame to the n-th."""
    from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

    done = asyncio.get_running_loop().create_future()

    class Counter(WSListener):  # type: ignore[misc]
        count = 0
        t0 = 0.0

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type != WSMsgType.TEXT:
                return
            if self.count == 0:
                self.t0 = time.perf_counter()
            self.count += 1
            if self.count == n and not done.done():
                done.set_result((n - 1) / (time.perf_counter() - self.t0))

    transport, _ = await ws_connect(Counter, url)
    try:
        return float(await asyncio.wait_for(done, 120))
    finally:
        transport.disconnect()


def run_round(kind: str, n: int) -> float:
    import uvloop

    q: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    target = {
        "raw": _raw_picows_server,
        "raw_batched": _raw_batched_server,
        "fake": _fake_exchange_server,
    }[kind]
    proc = mp.Process(target=target, args=(n, q), daemon=True)
    proc.start()
    try:
        port = q.get(timeout=60)
        url = f"ws://127.0.0.1:{port}/stream?streams={STREAM}"
        if kind != "fake":
            url = f"ws://127.0.0.1:{port}/"
        return uvloop.run(_receive(url, n))
    finally:
        proc.kill()
        proc.join()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=300_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    kinds = ("raw", "raw_batched", "fake")
    results: dict[str, list[float]] = {k: [] for k in kinds}
    for r in range(args.rounds):
        for kind in kinds[r % 3 :] + kinds[: r % 3]:
            results[kind].append(run_round(kind, args.frames))
            print(f"round {r} {kind}: {results[kind][-1]:,.0f} frames/s", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"# fake exchange send rate, {args.frames} frames/round, median of {args.rounds}")
    print("| sender | frames/s (median) | min..max | fake ÷ this |")
    print("|---|---:|---|---:|")
    names = {
        "raw": "raw picows, send() per frame",
        "raw_batched": "raw picows, pre-encoded frames, 256 per write",
        "fake": "fake exchange (max pacing)",
    }
    for key in kinds:
        lo, hi = min(results[key]), max(results[key])
        ratio = med["fake"] / med[key]
        print(f"| {names[key]} | {med[key]:,.0f} | {lo:,.0f}..{hi:,.0f} | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The sending side of bench/bench_e2e.py: a fake exchange in its own process.

`sender_main` runs in a child process for the whole benchmark and answers the
orchestrator's commands over a pipe, one reply per command:

- ``("serve", mode, params)`` starts a fresh ``FakeExchange`` (WebSocket + REST
  on loopback) for one round and replies ``("ready", info)`` with its URLs,
  symbols and streams;
- ``("go", params)`` starts sending and replies ``("started", {})``;
- ``("stop",)`` stops the exchange and replies ``("stopped", stats)``;
- ``("exit",)`` ends the process.

Modes:

- ``throughput``: the pre-generated frames (a synthetic spot market, envelopes
  pre-built like a capture's) and a sentinel trade, through the fake's own
  timeline at "max" pacing (back-pressure from the slowest reader);
- ``latency``: the same frames, paced by this module at a fixed rate in one
  batch per ~1 ms timer tick; the event time ``E`` (and ``T``) of each frame
  that has one is rewritten to the wall clock in µs taken right before the
  batch is built and written (``timeUnit=MICROSECOND`` payloads);
- ``rss``: a live ``SyntheticMarket`` (generated on the fly, so its books stay
  consistent however long it runs) cut to ``frames`` frames, then the
  sentinel, at "max" pacing.

Every mode serves REST depth snapshots consistent with its diff stream: the
pre-generated modes serve the book as it was before the first frame (each round
starts a fresh exchange and a fresh gateway, which buffers diffs from its first
one), the live market its current book.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain, islice
from multiprocessing.connection import Connection
from typing import Any

MARKET = "spot"
SENTINEL_TRADE_ID = 1 << 62
SENTINEL_SYMBOL = "BTCUSDT"
# The synthetic market's periodic streams carry ms fields other than E/T (kline
# open times, ...): they stay off, so the stream set is the same in every mode.
RATES = {"kline": 0.0, "ticker": 0.0, "mini_ticker": 0.0}
_MS_DIGITS = 13  # event times in ms (2001..2286) have 13 digits


@dataclass
class Market:
    """Pre-generated frames of one synthetic spot market and what a client needs to sync."""

    symbols: list[str]
    streams: list[str]
    exchange_info: dict[str, Any]
    snapshots: dict[str, bytes]
    frames: list[Any]
    # offsets of the 13 ms digits of "E" and "T" in each payload (-1: absent)
    e_at: list[int] = field(default_factory=list)
    t_at: list[int] = field(default_factory=list)


def make_market(n_frames: int, n_symbols: int, seed: int) -> Market:
    """n_frames frames of an ``n_symbols``-symbol synthetic spot market, envelopes pre-built."""
    from meltica.replay.source import StreamFrame, combined_frame
    from meltica.replay.synthetic import SyntheticMarket

    src = SyntheticMarket(markets=(MARKET,), symbols_per_market=n_symbols, seed=seed, rates=RATES)
    symbols = src.symbols(MARKET)
    # the books before the first frame: what REST serves while these frames play
    snapshots = {s: src.depth_snapshot(MARKET, s, 5000) or b"" for s in symbols}
    market = Market(
        symbols=symbols,
        streams=sorted(src.streams(MARKET)),
        exchange_info=src.exchange_info(MARKET),
        snapshots=snapshots,
        frames=[],
    )
    for f in islice(src.frames(), n_frames):
        frame = StreamFrame(f.ts_ns, f.market, f.stream, f.payload, combined_frame(f))
        market.frames.append(frame)
        market.e_at.append(_digits_at(f.payload, b'"E":'))
        market.t_at.append(_digits_at(f.payload, b'"T":'))
    return market


def _digits_at(payload: bytes, key: bytes) -> int:
    i = payload.find(key)
    if i < 0:
        return -1
    i += len(key)
    if not payload[i : i + _MS_DIGITS].isdigit() or payload[i + _MS_DIGITS : i + 14].isdigit():
        raise ValueError(f"unexpected time field in {payload[:80]!r}")
    return i


def sentinel_payload(e: int, t: int) -> bytes:
    """The last frame of every round: a trade with an id no other frame has."""
    return (
        f'{{"e":"trade","E":{e},"s":"{SENTINEL_SYMBOL}","t":{SENTINEL_TRADE_ID},'
        f'"p":"67234.56000000","q":"0.00100000","T":{t},"m":true,"M":true}}'
    ).encode()


def _sentinel_frame(ts_ns: int, stamp: int) -> Any:
    from meltica.replay.source import StreamFrame, combined_frame

    f = StreamFrame(
        ts_ns, MARKET, f"{SENTINEL_SYMBOL.lower()}@trade", sentinel_payload(stamp, stamp)
    )
    return StreamFrame(f.ts_ns, f.market, f.stream, f.payload, combined_frame(f))


class ListSource:
    """A MarketSource over pre-generated frames; snapshots are the books before frame 0."""

    def __init__(self, market: Market, frames: list[Any]) -> None:
        self.markets = (MARKET,)
        self._m = market
        self._frames = frames

    def symbols(self, market: str) -> list[str]:
        return list(self._m.symbols)

    def streams(self, market: str) -> set[str]:
        return set(self._m.streams)

    def exchange_info(self, market: str) -> dict[str, Any]:
        return self._m.exchange_info

    def frames(self) -> Iterator[Any]:
        return iter(self._frames)

    def depth_snapshot(self, market: str, symbol: str, limit: int) -> bytes | None:
        return self._m.snapshots.get(symbol.upper())


class LiveSource:
    """A live synthetic market cut to ``n`` frames, then the sentinel."""

    def __init__(self, n: int, n_symbols: int, seed: int) -> None:
        from meltica.replay.synthetic import SyntheticMarket

        self._src = SyntheticMarket(
            markets=(MARKET,), symbols_per_market=n_symbols, seed=seed, rates=RATES
        )
        self._n = n
        self.markets = (MARKET,)

    def symbols(self, market: str) -> list[str]:
        return self._src.symbols(market)

    def streams(self, market: str) -> set[str]:
        return self._src.streams(market)

    def exchange_info(self, market: str) -> dict[str, Any]:
        return self._src.exchange_info(market)

    def frames(self) -> Iterator[Any]:
        end = 1_700_000_000_000_000_000 + 10**18
        return chain(islice(self._src.frames(), self._n), [_sentinel_frame(end, end // 10**6)])

    def depth_snapshot(self, market: str, symbol: str, limit: int) -> bytes | None:
        return self._src.depth_snapshot(market, symbol, limit)


class _Pacer:
    """Sends ``total`` frames at ``rate`` frames/s, one batch per timer tick, stamped in µs."""

    def __init__(self, market: Market, server: Any, rate: float, total: int) -> None:
        from meltica.replay.source import StreamFrame

        self._frame_cls = StreamFrame
        self.m = market
        self.server = server
        self.rate = rate
        self.total = min(total, len(market.frames))
        self.heads = {s: b'{"stream":"' + s.encode() + b'","data":' for s in market.streams}
        self.sent = 0
        self.ticks = 0
        self.max_batch = 0
        self.t_start = 0.0
        self.t_end = 0.0

    def _batch(self, lo: int, hi: int, stamp: bytes) -> list[Any]:
        frames, e_at, t_at, heads = self.m.frames, self.m.e_at, self.m.t_at, self.heads
        new = self._frame_cls
        out = []
        for i in range(lo, hi):
            f = frames[i]
            e = e_at[i]
            if e < 0:
                out.append(f)
                continue
            p = f.payload
            t = t_at[i]
            if t < 0:
                data = b"".join((p[:e], stamp, p[e + _MS_DIGITS :]))
            elif t > e:
                data = b"".join((p[:e], stamp, p[e + _MS_DIGITS : t], stamp, p[t + _MS_DIGITS :]))
            else:
                data = b"".join((p[:t], stamp, p[t + _MS_DIGITS : e], stamp, p[e + _MS_DIGITS :]))
            out.append(new(f.ts_ns, f.market, f.stream, data, heads[f.stream] + data + b"}"))
        return out

    async def run(self) -> None:
        perf = time.perf_counter
        self.t_start = t0 = perf()
        rate, total = self.rate, self.total
        while self.sent < total:
            due = min(total, int((perf() - t0) * rate)) - self.sent
            if due > 0:
                stamp_us = time.time_ns() // 1000
                batch = self._batch(self.sent, self.sent + due, str(stamp_us).encode())
                self.server.publish_many(batch)
                self.sent += due
                self.ticks += 1
                self.max_batch = max(self.max_batch, due)
            await asyncio.sleep(0.001)
        stamp_us = time.time_ns() // 1000
        self.server.publish_many([_sentinel_frame(0, stamp_us)])
        self.t_end = perf()

    def stats(self) -> dict[str, Any]:
        elapsed = max(1e-9, (self.t_end or time.perf_counter()) - self.t_start)
        return {
            "frames_sent": self.sent,
            "target_rate": self.rate,
            "achieved_rate": round(self.sent / elapsed, 1),
            "ticks": self.ticks,
            "mean_batch": round(self.sent / max(1, self.ticks), 2),
            "max_batch": self.max_batch,
        }


async def _serve(conn: Connection, n_frames: int, n_symbols: int, seed: int) -> None:
    from meltica.replay.exchange import FakeExchange

    loop = asyncio.get_running_loop()
    market = make_market(n_frames, n_symbols, seed)
    inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
    loop.add_reader(conn.fileno(), lambda: inbox.put_nowait(conn.recv()))
    conn.send(("generated", {"frames": len(market.frames), "streams": market.streams}))
    fake: Any = None
    pacer: _Pacer | None = None
    task: asyncio.Task[None] | None = None
    mode = ""
    while True:
        cmd = await inbox.get()
        op = cmd[0]
        if op == "serve":
            mode, params = cmd[1], cmd[2]
            source: Any
            if mode == "rss":
                source = LiveSource(params["frames"], n_symbols, seed)
            else:
                frames = market.frames[: params.get("frames", len(market.frames))]
                last_ns = frames[-1].ts_ns + 1
                sentinel = _sentinel_frame(last_ns, last_ns // 1_000_000)
                source = ListSource(market, [*frames, sentinel])
            fake = FakeExchange(source, speed=None, start="manual")
            await fake.start()
            conn.send(
                (
                    "ready",
                    {
                        "ws_url": fake.ws_url(MARKET),
                        "rest_url": fake.rest_url,
                        "symbols": source.symbols(MARKET),
                        "streams": sorted(source.streams(MARKET)),
                    },
                )
            )
        elif op == "go":
            params = cmd[1]
            server = fake.ws[MARKET]
            # both receivers are subscribed before the first frame
            deadline = time.monotonic() + 30
            want = set(fake.source.streams(MARKET))
            while server.subscribed() != want and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            if mode == "latency":
                pacer = _Pacer(market, server, params["rate"], params["frames"])
                task = loop.create_task(pacer.run())
            else:
                fake.begin()
            conn.send(("started", {"subscribed": len(server.subscribed())}))
        elif op == "stop":
            stats: dict[str, Any] = {}
            if task is not None:
                if not task.done():
                    task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            if pacer is not None:
                stats["pacing"] = pacer.stats()
            if fake is not None:
                c = fake.ws[MARKET].counters
                stats.update(
                    frames_published=fake.frames_published,
                    ws_frames_sent=c.frames_sent,
                    slow_consumers=c.slow_consumers,
                )
                await fake.stop()
            fake, pacer, task = None, None, None
            conn.send(("stopped", stats))
        elif op == "exit":
            loop.remove_reader(conn.fileno())
            return


def sender_main(conn: Connection, n_frames: int, n_symbols: int, seed: int) -> None:
    """Child-process entry: generate the frames, then serve rounds until told to exit."""
    import uvloop

    uvloop.run(_serve(conn, n_frames, n_symbols, seed))

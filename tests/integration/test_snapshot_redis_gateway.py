"""The gateway on ``snapshot.backend: redis``: fake exchange -> Engine -> a real
``redis-server`` started here.

A plain redis client reads the documented key scheme (docs/snapshot.md) and
decodes each value with ``meltica.wire.decode``; ``kill -9`` of redis-server
mid-run leaves the event flow running and /readyz saying why it is not ready;
after a restart (an empty Redis) the first pipeline brings every book's key
to the latest state the writer holds.  No wall-time assertions.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aio import run
from brokers import RedisServer
from bus_collector import Collector
from test_gateway import make_engine

from meltica import wire
from meltica.replay.exchange import FakeExchange
from meltica.replay.synthetic import SyntheticMarket
from meltica.snapshot.redis_store import redis_client


async def until(pred: Callable[[], bool], timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"not met in time: {what}"
        await asyncio.sleep(0.02)


def test_gateway_writes_redis_and_survives_kill_9(redis_server: RedisServer) -> None:
    async def main() -> None:
        source = SyntheticMarket(markets=("spot", "usdm"), symbols_per_market=2, seed=5)
        fake = FakeExchange(source, speed=4.0)
        await fake.start()
        engine = make_engine(
            fake,
            source,
            "snapshot.backend=redis",
            f"snapshot.redis_url={redis_server.url}",
            "snapshot.key_prefix=gw",
            "snapshot.ttl_s=30",
            "snapshot.redis_timeout_s=0.3",
        )
        writer = engine.redis_store
        assert writer is not None
        # every pipeline the writer sends: (keys with versions, results)
        sent: list[tuple[dict[str, int], list[Any]]] = []
        send = writer._pipeline

        async def recording(batch: dict[str, Any]) -> list[Any]:
            res = await send(batch)
            sent.append(({k: ev.update_id for k, ev in batch.items()}, res))
            return res

        writer._pipeline = recording  # type: ignore[method-assign]
        raw = redis_client(redis_server.url, 5.0)
        books = [(m, s) for m in source.markets for s in source.symbols(m)]
        keys = {f"binance:{m}:{s.upper()}:book" for m, s in books}
        await engine.start()
        col = Collector(engine, "all")
        try:
            # every book reaches Redis under <prefix>:<venue>:<market>:<SYMBOL>:book
            async def all_keys() -> set[str]:
                return {k.decode() async for k in raw.scan_iter("gw:*")}

            deadline = time.monotonic() + 60
            while (found := await all_keys()) != {f"gw:{k}" for k in keys} | {
                f"gw:{k}:version" for k in keys
            }:
                assert time.monotonic() < deadline, found
                await asyncio.sleep(0.05)
            for m, s in books:
                k = f"gw:binance:{m}:{s.upper()}:book"
                data, version = await raw.mget(k, k + ":version")
                ev = wire.decode(data)
                assert (ev.kind, ev.source, ev.venue, ev.market, ev.symbol) == (
                    "book_snapshot",
                    "book",
                    "binance",
                    m,
                    s.upper(),
                )
                assert ev.update_id == int(version)
                assert 0 < await raw.pttl(k) <= 30_000
                mem = engine.store.get(f"binance:{m}:{s.upper()}:book")
                assert mem is not None and mem[0] >= ev.update_id
            assert engine.not_ready() == []

            # kill -9: the event flow goes on, readiness says why it is not ready
            redis_server.kill()
            at_kill = {k: engine.store.get(k)[0] for k in keys}  # type: ignore[index]
            n_events = len(col.events)
            await until(lambda: not writer.connected, what="writer notices the kill")
            assert engine.metrics is not None
            async with aiohttp.ClientSession() as http:
                async with http.get(engine.metrics.url + "/readyz") as resp:
                    body = await resp.text()
                assert resp.status == 503
                assert f"snapshot store: redis 127.0.0.1:{redis_server.port} unreachable" in body

            def moved_on() -> bool:
                now = {k: engine.store.get(k)[0] for k in keys}  # type: ignore[index]
                return all(now[k] > at_kill[k] for k in keys)

            await until(moved_on, what="every book advances while Redis is down")
            assert len(col.events) > n_events
            assert len(writer.pending) == len(keys)
            assert writer.counters["errors"] > 0

            # restart (empty, no script cache): the first pipeline that goes
            # through writes every key at the latest state queued for it
            before = len(sent)
            redis_server.start()
            await until(lambda: writer.connected, what="writer reconnects")
            await until(lambda: bool(_ok(sent[before:])), what="a pipeline goes through")
            first, results = _ok(sent[before:])[0]
            assert set(first) == keys
            assert all(v > at_kill[k] for k, v in first.items())
            assert results.count(1) == len(keys)
            for k in keys:
                stored = await raw.get(f"gw:{k}:version")
                assert stored is not None and int(stored) >= first[k]
            assert writer.counters["reconnects"] == 1
            await until(lambda: engine.not_ready() == [], what="ready again")
        finally:
            await col.close()
            await engine.stop()
            await fake.stop()
            await raw.aclose()

    run(main)


def _ok(sent: list[tuple[dict[str, int], list[Any]]]) -> list[tuple[dict[str, int], list[Any]]]:
    return [(b, r) for b, r in sent if r and not any(isinstance(x, Exception) for x in r)]


def test_gateway_starts_without_redis_and_reports_not_ready(tmp_path: Any) -> None:
    """Redis unreachable at start: the gateway starts, flows, and /readyz names
    the Redis address until it answers."""
    server = RedisServer(tmp_path)  # not started: its port refuses connections

    async def main() -> None:
        source = SyntheticMarket(markets=("spot",), symbols_per_market=1, seed=3)
        fake = FakeExchange(source, speed=4.0)
        await fake.start()
        engine = make_engine(
            fake,
            source,
            "snapshot.backend=redis",
            f"snapshot.redis_url={server.url}",
            "snapshot.redis_timeout_s=0.3",
        )
        await engine.start()
        col = Collector(engine, "all")
        try:
            await col.wait_for(lambda e: e.kind == "book_snapshot" and e.source == "book")
            lines = engine.not_ready()
            assert any(
                f"snapshot store: redis 127.0.0.1:{server.port} unreachable" in x for x in lines
            ), lines
            assert all("snapshot store" in x for x in lines), lines
            server.start()
            await until(lambda: engine.not_ready() == [], what="ready once Redis answers")
            raw = redis_client(server.url, 5.0)
            try:
                sym = source.symbols("spot")[0].upper()
                await until(
                    lambda: bool(engine.redis_store and engine.redis_store.counters["writes"])
                )
                assert await raw.exists(f"meltica:binance:spot:{sym}:book") == 1
            finally:
                await raw.aclose()
        finally:
            await col.close()
            await engine.stop()
            await fake.stop()
            server.stop()

    run(main)

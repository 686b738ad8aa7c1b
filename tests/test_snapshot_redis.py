"""The Redis SnapshotStore against a real ``redis-server`` (tests/brokers.py).

The compare-and-set script (older never overwrites newer, equal is a no-op,
expected-version mode), two writers racing (hypothesis, against the model
"the stored state is the one of the highest version"), TTL by ``PX``, and the
writer: bounded queue where the latest state per key wins, an unreachable
Redis reported and retried, one pipeline bringing every key to its latest
state after Redis returns.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from aio import run
from brokers import RedisServer, free_port
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meltica import wire
from meltica._core.events import BookDepth, event_from_wire
from meltica.snapshot.redis_store import (
    NO_OP,
    REFUSED,
    WRITTEN,
    RedisSnapshotStore,
    RedisSnapshotWriter,
    redis_client,
)


def fused(symbol: str, update_id: int, bid: str = "10", market: str = "usdm") -> BookDepth:
    ev = event_from_wire(
        {
            "v": 1,
            "venue": "binance",
            "market": market,
            "symbol": symbol,
            "kind": "book_snapshot",
            "source": "book",
            "seq": update_id,
            "ts_recv": time.time_ns(),
            "update_id": update_id,
            "bids": [[bid, "1"]],
            "asks": [["11", "2"]],
        }
    )
    assert isinstance(ev, BookDepth)
    return ev


class Book:
    """What the writer reads of an OrderBook: ``store_key`` and ``last_fused``."""

    def __init__(self, symbol: str, market: str = "usdm") -> None:
        self.market, self.symbol = market, symbol
        self.store_key = f"binance:{market}:{symbol}:book"
        self.last_fused: BookDepth | None = None

    def update(self, update_id: int) -> Book:
        self.last_fused = fused(self.symbol, update_id, market=self.market)
        return self


async def until(pred: Callable[[], Awaitable[bool] | bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        res = pred()
        if not isinstance(res, bool):
            res = await res
        if res:
            return
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def with_store(server: RedisServer, fn: Callable[[RedisSnapshotStore], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        client = redis_client(server.url, 5.0)
        try:
            return await fn(RedisSnapshotStore(client, key_prefix="t", ttl_s=60))
        finally:
            await client.aclose()

    return run(main)


# ---------------------------------------------------------------- the script


def test_cas_older_never_overwrites_newer_and_equal_is_a_no_op(redis_server: RedisServer) -> None:
    async def body(store: RedisSnapshotStore) -> None:
        k = "binance:usdm:BTCUSDT:book"
        assert await store.write_newer(k, 100, b"a") == WRITTEN
        assert await store.write_newer(k, 99, b"older") == REFUSED
        assert await store.write_newer(k, 100, b"same") == NO_OP
        assert await store.write_newer(k, 101, b"b") == WRITTEN
        raw = store.client
        assert await raw.get("t:" + k) == b"b"
        assert await raw.get("t:" + k + ":version") == b"101"
        # decimal strings compare by value, not as text ("99" < "100")
        assert await store.write_newer("x", 99, b"x") == WRITTEN
        assert await store.write_newer("x", 100, b"y") == WRITTEN
        assert await store.write_newer("x", 2**70, b"z") == WRITTEN
        assert await store.write_newer("x", 2**70 - 1, b"w") == REFUSED
        assert await raw.get("t:x") == b"z"

    with_store(redis_server, body)


def test_cas_with_an_expected_version(redis_server: RedisServer) -> None:
    async def body(store: RedisSnapshotStore) -> None:
        ev5, ev7 = fused("ETHUSDT", 5), fused("ETHUSDT", 7)
        assert await store.get("k") is None
        assert not await store.compare_and_set("k", 3, 5, ev5)  # absent, 3 expected
        assert await store.compare_and_set("k", None, 5, ev5)
        assert not await store.compare_and_set("k", None, 7, ev7)  # present now
        assert not await store.compare_and_set("k", 4, 7, ev7)  # wrong expectation
        assert not await store.compare_and_set("k", 5, 4, ev7)  # older
        assert await store.compare_and_set("k", 5, 7, ev7)
        got = await store.get("k")
        assert got is not None and got[0] == 7
        assert wire.encode(got[1]) == wire.encode(ev7)  # type: ignore[arg-type]
        assert await store.delete("k")
        assert await store.get("k") is None and not await store.delete("k")

    with_store(redis_server, body)


def test_ttl_is_set_with_px_and_entries_expire(redis_server: RedisServer) -> None:
    async def body(store: RedisSnapshotStore) -> None:
        raw = store.client
        await store.write_newer("long", 1, b"v")
        for key in ("t:long", "t:long:version"):
            assert 0 < await raw.pttl(key) <= 60_000
        assert await store.compare_and_set("short", None, 1, b"v", ttl_s=0.2)
        assert 0 < await raw.pttl("t:short") <= 200
        await until(lambda: _absent(raw, "t:short"))
        assert await store.get("short") is None
        assert await raw.exists("t:short", "t:short:version") == 0
        # an expired key is absent: any version may be written again
        assert await store.write_newer("short", 0, b"again") == WRITTEN

    async def _absent(raw: aioredis.Redis, key: str) -> bool:
        return await raw.exists(key) == 0

    with_store(redis_server, body)


_versions = st.lists(st.integers(0, 2**40), min_size=1, max_size=25)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(a=_versions, b=_versions, pipelined=st.booleans())
def test_two_writers_racing_leave_the_highest_version(
    redis_server: RedisServer, a: list[int], b: list[int], pipelined: bool
) -> None:
    """Two clients (two connections) write the same key concurrently, each its
    own sequence of versions in any order; the model: the stored version is
    the highest written, with that writer's value, and a refused or no-op
    write changed nothing."""
    key = f"race:{time.monotonic_ns()}"

    async def writer(client: aioredis.Redis, name: str, versions: list[int]) -> list[int]:
        store = RedisSnapshotStore(client, key_prefix="t", ttl_s=60)
        if pipelined:
            sha = await client.script_load(_script())
            pipe = client.pipeline(transaction=False)
            k = f"t:{key}"
            for v in versions:
                pipe.evalsha(sha, 2, k, k + ":version", str(v), f"{name}{v}", 60_000, "*")
            return [int(r) for r in await pipe.execute()]
        out = []
        for v in versions:
            out.append(await store.write_newer(key, v, f"{name}{v}".encode()))
            await asyncio.sleep(0)
        return out

    async def main() -> None:
        c1, c2 = redis_client(redis_server.url, 5.0), redis_client(redis_server.url, 5.0)
        try:
            ra, rb = await asyncio.gather(writer(c1, "a", a), writer(c2, "b", b))
            top = max(a + b)
            version = await c1.get(f"t:{key}:version")
            value = await c1.get(f"t:{key}")
            assert int(version) == top
            winners = {f"a{top}".encode()} if top in a else set()
            winners |= {f"b{top}".encode()} if top in b else set()
            assert value in winners
            # per writer: a write succeeded only if it was above everything it had
            # written before (its own earlier writes are a lower bound of the store)
            for versions, results in ((a, ra), (b, rb)):
                seen = -1
                for v, r in zip(versions, results, strict=True):
                    if v < seen:
                        assert r == REFUSED
                    if v == seen:
                        assert r in (REFUSED, NO_OP)
                    seen = max(seen, v)
            assert sum(r == WRITTEN for r in ra + rb) >= 1
        finally:
            await c1.aclose()
            await c2.aclose()

    run(main)


def _script() -> str:
    from meltica.snapshot.redis_store import CAS_SCRIPT

    return CAS_SCRIPT


# ---------------------------------------------------------------- the writer


def test_queue_keeps_the_latest_state_per_key_and_drops_new_keys_beyond_its_capacity() -> None:
    async def main() -> None:
        w = RedisSnapshotWriter(
            f"redis://127.0.0.1:{free_port()}/0", key_prefix="t", ttl_s=60, queue_max=2
        )
        try:
            a, b, c = Book("A"), Book("B"), Book("C")
            w.offer([a.update(1), b.update(1)])
            w.offer([a.update(5)])
            w.offer([c.update(1)])  # a third key: dropped
            w.offer([Book("D")])  # never fused: ignored
            assert {k: ev.update_id for k, ev in w.pending.items()} == {
                a.store_key: 5,
                b.store_key: 1,
            }
            assert w.stats()["dropped"] == 1 and w.stats()["pending"] == 2
        finally:
            await w.stop()

    run(main)


def test_unreachable_redis_is_reported_then_one_pipeline_catches_up(tmp_path: Path) -> None:
    """Started with no Redis: not ready, states queue (latest per key) and
    nothing raises; once Redis listens on its URL, the first pipeline writes
    every key at its latest version."""
    server = RedisServer(tmp_path)  # not started yet: its port refuses connections

    async def main() -> None:
        w = RedisSnapshotWriter(
            server.url, key_prefix="t", ttl_s=60, queue_max=100, timeout_s=0.5, retry_max_s=0.2
        )
        books = [Book(f"S{i}") for i in range(20)]
        await w.start()
        try:
            for v in range(1, 50):
                w.offer([b.update(v * 10 + i) for i, b in enumerate(books)])
                await asyncio.sleep(0.005)
            # failed pipelines after the last offer put their states back
            errors = w.counters["errors"]
            await until(lambda: w.counters["errors"] > errors + 1)
            (line,) = w.not_ready()
            assert f"127.0.0.1:{server.port} unreachable" in line
            assert w.stats()["connected"] == 0 and w.stats()["pending"] == 20
            assert w.counters["writes"] == 0
            server.start()
            await until(lambda: w.connected and not w.pending)
            assert w.not_ready() == []
            assert w.counters["pipelines"] == 1 and w.counters["writes"] == 20
            raw = redis_client(server.url, 5.0)
            try:
                for i, b in enumerate(books):
                    k = "t:" + b.store_key
                    assert await raw.get(k + ":version") == str(490 + i).encode()
                    got = wire.decode(await raw.get(k))
                    assert got.update_id == 490 + i and got.symbol == b.symbol
            finally:
                await raw.aclose()
        finally:
            await w.stop()
            server.stop()

    run(main)


def test_redis_killed_and_restarted_empty_gets_every_latest_state_back(
    redis_server: RedisServer,
) -> None:
    """kill -9 mid-run: offers keep returning at once, the writer reports the
    failure, and after the restart (an empty Redis with no script cache) the
    next pipeline writes every key at its latest version."""

    async def main() -> None:
        w = RedisSnapshotWriter(
            redis_server.url,
            key_prefix="t",
            ttl_s=60,
            queue_max=100,
            timeout_s=0.5,
            retry_max_s=0.2,
        )
        books = [Book(f"K{i}") for i in range(10)]
        await w.start()
        raw = redis_client(redis_server.url, 5.0)
        try:
            v = 0
            for _ in range(20):
                v += 1
                w.offer([b.update(v) for b in books])
                await asyncio.sleep(0.005)
            await until(lambda: w.connected and not w.pending)
            assert await raw.get("t:" + books[0].store_key + ":version") == str(v).encode()
            redis_server.kill()
            while w.connected:
                v += 1
                w.offer([b.update(v) for b in books])
                await asyncio.sleep(0.01)
            for _ in range(20):
                v += 1
                w.offer([b.update(v) for b in books])
                await asyncio.sleep(0.005)
            assert w.not_ready() and len(w.pending) == len(books)
            before = w.counters["pipelines"]
            redis_server.start()
            await until(lambda: w.connected and not w.pending)
            assert w.counters["pipelines"] == before + 1
            assert w.counters["reconnects"] == 1
            for b in books:
                assert await raw.get("t:" + b.store_key + ":version") == str(v).encode()
        finally:
            await raw.aclose()
            await w.stop()

    run(main)


def test_offer_never_waits_for_a_slow_redis(redis_server: RedisServer) -> None:
    """A Redis that does not answer (SIGSTOP) never reaches the offering side:
    the writer's pipeline times out and is counted while offers keep only the
    latest state per key."""
    import signal

    async def main() -> None:
        w = RedisSnapshotWriter(
            redis_server.url, key_prefix="t", ttl_s=60, queue_max=10, timeout_s=0.2
        )
        book = Book("SLOW")
        await w.start()
        assert redis_server.proc is not None
        try:
            await until(lambda: w.connected)
            redis_server.proc.send_signal(signal.SIGSTOP)
            for v in range(1, 200):
                w.offer([book.update(v)])
                await asyncio.sleep(0.002)
            await until(lambda: w.counters["errors"] > 0)
            assert not w.connected and list(w.pending) == [book.store_key]
            redis_server.proc.send_signal(signal.SIGCONT)
            await until(lambda: w.connected and not w.pending)
            raw = redis_client(redis_server.url, 5.0)
            try:
                assert await raw.get("t:" + book.store_key + ":version") == b"199"
            finally:
                await raw.aclose()
        finally:
            redis_server.proc.send_signal(signal.SIGCONT)
            await w.stop()

    run(main)

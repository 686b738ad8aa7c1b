"""The Redis SnapshotStore writer next to a bare redis-py pipeline loop of the same writes.

Starts its own ``redis-server`` (no persistence) on a free loopback port and, in
interleaved rounds on one uvloop loop, runs two candidates over the same book
states (fused ``book_snapshot`` events of ``--books`` books, 20 levels a side,
v1 wire JSON, the same Lua compare-and-set script through ``EVALSHA``):

- ``writer``: ``RedisSnapshotWriter`` as the gateway runs it: each batch is
  ``offer``-ed (no I/O) and its task writes what is queued, one pipeline per
  drain, latest state per key;
- ``bare``: the loop a program would write by hand: per batch, a redis-py
  pipeline of one ``EVALSHA`` per book, awaited before the next batch.

Two measurements:

1. **Lag at the default market load** (the default config's 5 books, each
   changing once per 100 ms depth window, one book per batch: 50 states/s):
   book update (the state is offered, ``ts_recv``) -> the script's reply
   received (the state is visible in Redis); p50 and p99 per round, medians
   over rounds.
2. **Capacity**: ``--batches`` batches of all ``--books`` books, as fast as
   each candidate goes; book states handled per second (the writer coalesces:
   states replaced in its queue before they were sent count as handled, and
   the Redis writes it actually made are shown too).
3. **Hot-path cost**: what the batch path pays per batch with the Redis
   backend, ``offer`` of a one-book batch (no task running, so it only
   queues), ns per call, next to the in-memory store's compare-and-set of the
   same state through its Python wrapper.

Run from the repo root: ``python bench/bench_redis.py [--rounds 5] [--seconds 4] [--json OUT]
[--books 5] [--batches 4000]``.  Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop
from harness import free_port, measure

from meltica import wire
from meltica._core.events import BookDepth, event_from_wire
from meltica.snapshot.redis_store import CAS_SCRIPT, RedisSnapshotWriter, redis_client
from meltica.snapshot.store import MemorySnapshotStore

DEPTH = 20


def start_redis(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server not found on PATH (Debian package redis-server)")
    port = free_port()
    args = [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(tmp)]
    args += ["--save", "", "--appendonly", "no", "--logfile", str(tmp / "redis.log")]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(64).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit("redis-server did not come up")


class Book:
    """What the writer reads of an OrderBook."""

    def __init__(self, i: int) -> None:
        self.symbol = f"SYM{i}USDT"
        self.store_key = f"binance:usdm:{self.symbol}:book"
        self.last_fused: BookDepth | None = None
        self.uid = 1_000_000 * (i + 1)

    def update(self) -> Book:
        self.uid += 7
        px = 60000 + self.uid % 100
        ev = event_from_wire(
            {
                "v": 1,
                "venue": "binance",
                "market": "usdm",
                "symbol": self.symbol,
                "kind": "book_snapshot",
                "source": "book",
                "seq": self.uid,
                "ts_recv": time.time_ns(),
                "update_id": self.uid,
                "bids": [[f"{px - k}.10", "1.234"] for k in range(DEPTH)],
                "asks": [[f"{px + k}.20", "0.567"] for k in range(DEPTH)],
            }
        )
        assert isinstance(ev, BookDepth)
        self.last_fused = ev
        return self


class Bare:
    """Per batch, one awaited pipeline of EVALSHA, the same script and arguments."""

    def __init__(self, url: str, prefix: str) -> None:
        self.client = redis_client(url, 5.0)
        self.prefix = prefix
        self.sha = ""
        self.lag_ns: list[int] = []

    async def start(self) -> None:
        self.sha = await self.client.script_load(CAS_SCRIPT)

    async def write(self, books: list[Book]) -> None:
        pipe = self.client.pipeline(transaction=False)
        evs = []
        for b in books:
            ev = b.last_fused
            assert ev is not None
            k = f"{self.prefix}:{b.store_key}"
            pipe.evalsha(
                self.sha, 2, k, k + ":version", str(ev.update_id), wire.encode(ev), 60_000, "*"
            )
            evs.append(ev)
        res = await pipe.execute()
        now = time.time_ns()
        for ev, r in zip(evs, res, strict=True):
            if r == 1:
                self.lag_ns.append(now - ev.ts_recv)

    async def close(self) -> None:
        await self.client.aclose()


def _pct(xs: list[int], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] / 1e3 if xs else float("nan")


async def paced(cand: str, url: str, seconds: float, nbooks: int, r: int) -> dict[str, float]:
    """The default load: each book changes every 100 ms, staggered, one per batch."""
    books = [Book(i) for i in range(nbooks)]
    period = 0.1 / nbooks
    writer = bare = None
    if cand == "writer":
        writer = RedisSnapshotWriter(url, key_prefix=f"w{r}", ttl_s=60, queue_max=10_000)
        writer.lag_ns = []
        await writer.start()
        while not writer.connected:
            await asyncio.sleep(0.01)
    else:
        bare = Bare(url, f"b{r}")
        await bare.start()
    n = int(seconds / period)
    t0 = time.monotonic()
    for i in range(n):
        delay = t0 + i * period - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        batch = [books[i % nbooks].update()]
        if writer is not None:
            writer.offer(batch)
        else:
            assert bare is not None
            await bare.write(batch)
    if writer is not None:
        while writer.pending:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        lag = writer.lag_ns or []
        await writer.stop()
    else:
        assert bare is not None
        lag = bare.lag_ns
        await bare.close()
    return {"states": n, "written": len(lag), "p50_us": _pct(lag, 0.5), "p99_us": _pct(lag, 0.99)}


async def capacity(cand: str, url: str, batches: int, nbooks: int, r: int) -> dict[str, float]:
    books = [Book(i) for i in range(nbooks)]
    if cand == "writer":
        w = RedisSnapshotWriter(url, key_prefix=f"cw{r}", ttl_s=60, queue_max=10_000)
        await w.start()
        while not w.connected:
            await asyncio.sleep(0.01)
        t0 = time.perf_counter()
        for _ in range(batches):
            w.offer([b.update() for b in books])
            await asyncio.sleep(0)  # the loop runs other work between batches
        while w.pending:
            await asyncio.sleep(0)
        # the pipeline with the last states has just been sent: wait for its reply
        sent = w.counters["pipelines"]
        while w.counters["pipelines"] == sent:
            await asyncio.sleep(0)
        elapsed = time.perf_counter() - t0
        written = w.counters["writes"]
        await w.stop()
    else:
        bare = Bare(url, f"cb{r}")
        await bare.start()
        t0 = time.perf_counter()
        for _ in range(batches):
            await bare.write([b.update() for b in books])
        elapsed = time.perf_counter() - t0
        written = len(bare.lag_ns)
        await bare.close()
    return {"states_per_s": batches * nbooks / elapsed, "redis_writes_per_s": written / elapsed}


def hot_path_cost(rounds: int) -> dict[str, float]:
    n = 20_000
    book = Book(0).update()
    ev = book.last_fused
    assert ev is not None
    w = RedisSnapshotWriter("redis://127.0.0.1:1/0", key_prefix="h", ttl_s=60, queue_max=10)
    mem = MemorySnapshotStore(10)
    batch = [book]
    key = book.store_key

    def offer() -> None:
        for _ in range(n):
            w.offer(batch)

    def cas() -> None:
        for v in range(1, n + 1):
            mem.compare_and_set(key, v - 1 if v > 1 else None, v, ev)
        mem.delete(key)

    return measure({"offer": offer, "memory_cas": cas}, n, rounds=rounds)


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_redis(Path(tmp))
        try:
            names = ["writer", "bare"]
            lag: dict[str, list[dict[str, float]]] = {n: [] for n in names}
            cap: dict[str, list[dict[str, float]]] = {n: [] for n in names}
            for r in range(args.rounds):
                order = names[r % 2 :] + names[: r % 2]
                for n in order:
                    lag[n].append(await paced(n, url, args.seconds, args.books, r))
                for n in order:
                    cap[n].append(await capacity(n, url, args.batches, args.books, r))
        finally:
            proc.terminate()
            proc.wait(10)

    def med(rows: list[dict[str, float]], k: str) -> float:
        return statistics.median(x[k] for x in rows)

    print(
        f"Redis SnapshotStore, {args.books} books x {DEPTH} levels/side, "
        f"{args.rounds} interleaved rounds, medians\n"
    )
    print(
        f"Default load: one book state per batch, {args.books / 0.1:.0f} states/s, "
        f"{args.seconds} s a round\n"
    )
    print("| candidate | states | written | write lag p50 (us) | write lag p99 (us) |")
    print("|---|---|---|---|---|")
    for n in names:
        print(
            f"| {n} | {med(lag[n], 'states'):.0f} | {med(lag[n], 'written'):.0f} | "
            f"{med(lag[n], 'p50_us'):.0f} | {med(lag[n], 'p99_us'):.0f} |"
        )
    print(f"\nCapacity: {args.batches} batches of {args.books} books as fast as possible\n")
    print("| candidate | book states/s | Redis writes/s | states/s vs bare |")
    print("|---|---|---|---|")
    base = med(cap["bare"], "states_per_s")
    for n in names:
        s = med(cap[n], "states_per_s")
        print(f"| {n} | {s:,.0f} | {med(cap[n], 'redis_writes_per_s'):,.0f} | {s / base:.2f}x |")
    hot = hot_path_cost(max(args.rounds, 5))
    print("\nHot-path cost per batch of one book (ns per call)\n")
    print("| call | ns |\n|---|---|")
    print(f"| writer.offer([book]) | {hot['offer']:.0f} |")
    print(f"| MemorySnapshotStore.compare_and_set (Python wrapper) | {hot['memory_cas']:.0f} |")
    if args.json:
        keys = {"lag": ("states", "written", "p50_us", "p99_us"),
                "capacity": ("states_per_s", "redis_writes_per_s")}  # fmt: skip
        result = {
            "books": args.books,
            "rounds": args.rounds,
            "seconds": args.seconds,
            "batches": args.batches,
            "default_load": {n: {k: med(lag[n], k) for k in keys["lag"]} for n in names},
            "capacity": {n: {k: med(cap[n], k) for k in keys["capacity"]} for n in names},
            "hot_path_ns": hot,
        }
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--books", type=int, default=5)
    p.add_argument("--batches", type=int, default=4000)
    p.add_argument("--json", help="also write the medians to this JSON file")
    uvloop.run(main(p.parse_args()))

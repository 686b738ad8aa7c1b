"""The Data Bus on NATS JetStream: publish rate, end-to-end throughput, latency.

Starts its own ``nats-server -js`` on a free loopback port (store in a temporary
directory; the stream uses memory storage unless ``--storage file``).

1. Publish rate into JetStream: N trade events (4 symbols), one message each
   with the same subject, v1 wire JSON payload and ``Nats-Msg-Id`` header, into
   a fresh stream per round.  One operation = one event stored and
   acknowledged.  Candidates, interleaved over rounds, medians:
   - ``gateway``: the gateway's path, ``InMemoryDataBus.publish_batch`` of
     batches -> `NatsPublisher` (compiled frames, compiled ack reading) until
     the last ack;
   - ``nats-py``: a bare ``nc.publish(subject, payload, headers=...)`` loop of
     the same payloads (no ack per message: its fastest form), until the
     stream holds all N;
   - ``server-floor``: the gateway's frames (reply subject and all) built before
     the clock starts and written in one go on a raw socket whose acks are read
     and thrown away: no client work at all, so its rate is what the server
     on this machine can store and acknowledge.
   The budget: gateway >= 2x nats-py.  Each candidate also gets the CPU seconds
   of this process and of nats-server per event (``/proc``).
2. End to end: ``meltica-engine replay CAPTURE --speed max`` (fake exchange ->
   gateway -> bus) with ``bus.backend=memory`` and ``=nats``.  The consumer:
   memory, the replay's own ring consumer (``-o``); NATS, an independent
   nats-py pull consumer of the stream.  Both rates are events over the
   consumer's span from its first to its last event (the replay report's
   ``consumer_span_s``, the pull consumer's own clock); the replay's own
   events/s stand beside them.
3. Latency: events published at a fixed rate (10k and 50k events/s, batches
   every millisecond) with ``ts_recv`` = publish time, received by a core NATS
   subscriber of ``meltica.>``: p50/p99 of receive - ``ts_recv``.

Run:  python bench/bench_nats.py [--events 200000] [--rounds 3] [--capture PATH] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
import uvloop
from harness import start_nats
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig

from meltica import Event, FrameParser
from meltica.broker import subject_of
from meltica.bus import InMemoryDataBus
from meltica.bus._natspub import FrameWindow
from meltica.bus.nats import NatsPublisher
from meltica.config import NatsConfig
from meltica.wire import encode

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT")


def trades(n: int, start: int = 0) -> list[Event]:
    parser = FrameParser()
    out: list[Event] = []
    for i in range(start, start + n):
        sym = SYMBOLS[i % len(SYMBOLS)]
        frame = (
            f'{{"e":"trade","E":1723161256299,"s":"{sym}","t":{i},"p":"61496.50",'
            f'"q":"0.014","T":1723161256298,"m":true}}'
        )
        (ev,) = parser.parse(frame.encode(), time.time_ns())
        out.append(ev)
    return out


async def fresh_stream(nc: Any, storage: str) -> None:
    js = nc.jetstream()
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await js.delete_stream("MELTICA")
    await js.add_stream(
        StreamConfig(
            name="MELTICA",
            subjects=["meltica.binance.>"],
            storage=StorageType(storage),
            duplicate_window=120,
        )
    )


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def gateway_round(url: str, cfg: NatsConfig, events: list[Event], batch: int) -> float:
    nc = await nats.connect(url)
    bus = InMemoryDataBus(1 << 16, batch_size=batch)
    pub = NatsPublisher(nc, cfg, bus)
    await pub.start()
    done = asyncio.Event()
    t0 = time.perf_counter()
    for i in range(0, len(events), batch):
        bus.publish_batch(events[i : i + batch])
        if i % (batch * 64) == 0:
            await asyncio.sleep(0)  # let the pump and the acks run, as the loop would
        while bus.depth > (1 << 15):
            await asyncio.sleep(0)
    while pub.window.acked < len(events):
        await asyncio.sleep(0.001)
    elapsed = time.perf_counter() - t0
    done.set()
    await pub.close(5)
    await nc.close()
    return elapsed


def natspy_messages(events: list[Event]) -> list[tuple[str, bytes, dict[str, str]]]:
    """The bare loop's arguments, built before its clock starts (in its favour)."""
    return [
        (subject_of(e.venue, e.market, e.kind, e.symbol), encode(e), {"Nats-Msg-Id": e.key})
        for e in events
    ]


async def natspy_round(url: str, msgs: list[tuple[str, bytes, dict[str, str]]]) -> float:
    nc = await nats.connect(url)
    js = nc.jetstream()
    t0 = time.perf_counter()
    publish = nc.publish
    for subject, payload, headers in msgs:
        await publish(subject, payload, headers=headers)
    await nc.flush()
    while (await js.stream_info("MELTICA")).state.messages < len(msgs):
        await asyncio.sleep(0.001)
    elapsed = time.perf_counter() - t0
    await nc.close()
    return elapsed


async def floor_round(url: str, frames: bytes, n: int, admin: Any) -> float:
    """Pre-built frames on a raw socket; acks read and dropped (module docstring)."""
    host, port = url.removeprefix("nats://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    await reader.readline()  # INFO
    writer.write(
        b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"protocol":1}\r\n'
        b"SUB _MELTICA_ACK.> 1\r\nPING\r\n"
    )
    await reader.readuntil(b"PONG\r\n")

    async def drain() -> None:
        while await reader.read(1 << 16):
            pass

    sink = asyncio.create_task(drain())
    js = admin.jetstream()
    t0 = time.perf_counter()
    writer.write(frames)
    await writer.drain()
    while (await js.stream_info("MELTICA")).state.messages < n:
        await asyncio.sleep(0.001)
    elapsed = time.perf_counter() - t0
    sink.cancel()
    writer.close()
    return elapsed


async def publish_rate(url: str, server_pid: int, args: argparse.Namespace) -> dict[str, Any]:
    cfg = NatsConfig(url=url, publish_buffer=1 << 16, storage=args.storage)
    events = trades(args.events)
    n = len(events)
    frames, _ = FrameWindow(n + 1, b"_MELTICA_ACK.floor").append(events, 0)
    msgs = natspy_messages(events)
    admin = await nats.connect(url)
    names = ("gateway", "nats-py", "server-floor")
    times: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[tuple[float, float]]] = {k: [] for k in names}
    gc.disable()
    try:
        for _ in range(args.rounds):
            for name in names:
                await fresh_stream(admin, args.storage)
                c0, s0 = cpu_s(os.getpid()), cpu_s(server_pid)
                if name == "gateway":
                    t = await gateway_round(url, cfg, events, args.batch)
                elif name == "nats-py":
                    t = await natspy_round(url, msgs)
                else:
                    t = await floor_round(url, frames, n, admin)
                c1, s1 = cpu_s(os.getpid()), cpu_s(server_pid)
                assert (await admin.jetstream().stream_info("MELTICA")).state.messages == n
                times[name].append(t)
                cpu[name].append((c1 - c0, s1 - s0))
                gc.collect()
    finally:
        gc.enable()
    await admin.close()
    rates = {k: n / statistics.median(v) for k, v in times.items()}
    return {
        "events": n,
        "rounds": args.rounds,
        "events_per_s": {k: round(v) for k, v in rates.items()},
        "ratio_gateway_vs_natspy": round(rates["gateway"] / rates["nats-py"], 2),
        "ratio_floor_vs_natspy": round(rates["server-floor"] / rates["nats-py"], 2),
        # median CPU per event: this process (the client) and nats-server
        "client_cpu_us_per_event": {
            k: round(statistics.median(c for c, _ in v) / n * 1e6, 2) for k, v in cpu.items()
        },
        "server_cpu_us_per_event": {
            k: round(statistics.median(s for _, s in v) / n * 1e6, 2) for k, v in cpu.items()
        },
    }


async def consume_all(
    url: str, total_hint: list[int], stop: asyncio.Event
) -> tuple[int, float, float]:
    """Read the stream from the start until `stop` and the count is reached;
    the count and the times of the first and last message."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    while True:
        try:
            await js.stream_info("MELTICA")
            break
        except nats.js.errors.NotFoundError:
            await asyncio.sleep(0.01)
    sub = await js.pull_subscribe(
        "meltica.>", stream="MELTICA", config=ConsumerConfig(ack_policy=AckPolicy.NONE)
    )
    n = 0
    first = last = time.perf_counter()
    while not (stop.is_set() and n >= total_hint[0]):
        try:
            got = await sub.fetch(5000, timeout=0.2)
        except nats.errors.TimeoutError:
            continue
        if n == 0:
            first = time.perf_counter()
        n += len(got)
        last = time.perf_counter()
    await nc.close()
    return n, first, last


async def end_to_end(url: str, capture: str, admin_url: str, storage: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for backend in ("memory", "nats"):
        admin = await nats.connect(admin_url)
        await fresh_stream(admin, storage)
        await admin.close()
        cmd = [sys.executable, "-m", "meltica", "replay", capture, "--speed", "max"]
        cmd += ["--no-progress", "-o", os.devnull, "--set", f"bus.backend={backend}"]
        cmd += ["--set", f"nats.url={url}", "--set", f"nats.storage={storage}"]
        stop = asyncio.Event()
        total = [1 << 62]
        reader = asyncio.create_task(consume_all(url, total, stop)) if backend == "nats" else None
        proc = await asyncio.create_subprocess_exec(*cmd, stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate()
        text = err.decode()
        if proc.returncode != 0 or "{" not in text:
            raise SystemExit(f"replay ({backend}) failed: {text[-2000:]}")
        report = json.loads(text[text.index("{") : text.rindex("}") + 1])
        events = report["events"]
        entry = {
            "events": events,
            "replay_events_per_s": round(events / report["elapsed_s"]),
        }
        if reader is None:
            entry["consumer_events_per_s"] = round(events / report["consumer_span_s"])
        else:
            total[0] = report["nats"]["published"]
            stop.set()
            n, first, last = await reader
            entry["consumed"] = n
            entry["consumer_events_per_s"] = round(n / max(last - first, 1e-9))
        out[backend] = entry
    out["ratio_nats_vs_memory"] = round(
        out["nats"]["consumer_events_per_s"] / out["memory"]["consumer_events_per_s"], 2
    )
    return out


async def latency(url: str, rate: int, seconds: float, storage: str) -> dict[str, Any]:
    admin = await nats.connect(url)
    await fresh_stream(admin, storage)
    cfg = NatsConfig(url=url, storage=storage)
    nc = await nats.connect(url)
    bus = InMemoryDataBus(1 << 16)
    pub = NatsPublisher(nc, cfg, bus)
    await pub.start()
    lat: list[int] = []

    async def on_msg(msg: Any) -> None:
        now = time.time_ns()
        i = msg.data.index(b'"ts_recv":') + 10
        lat.append(now - int(msg.data[i : msg.data.index(b",", i)]))

    await admin.subscribe("meltica.>", cb=on_msg)
    await admin.flush()
    per_ms = max(1, rate // 1000)
    n = int(rate * seconds)
    events = trades(n)
    t0 = time.perf_counter()
    for k, i in enumerate(range(0, n, per_ms)):
        target = t0 + k / 1000
        delay = target - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        batch = events[i : i + per_ms]
        now = time.time_ns()
        for ev in batch:
            ev.ts_recv = now
        bus.publish_batch(batch)
    sent_s = time.perf_counter() - t0
    deadline = time.monotonic() + 30
    while len(lat) < n and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await pub.close(5)
    await nc.close()
    await admin.close()
    lat.sort()
    return {
        "target_events_per_s": rate,
        "achieved_events_per_s": round(n / sent_s),
        "received": len(lat),
        "p50_us": round(lat[len(lat) // 2] / 1e3, 1),
        "p99_us": round(lat[int(len(lat) * 0.99)] / 1e3, 1),
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_nats(Path(tmp))
        try:
            result: dict[str, Any] = {"publish_rate": await publish_rate(url, proc.pid, args)}
            print(json.dumps(result, indent=2), flush=True)
            if args.capture:
                result["end_to_end"] = await end_to_end(url, args.capture, url, args.storage)
                print(json.dumps(result["end_to_end"], indent=2), flush=True)
            result["latency"] = [
                await latency(url, rate, args.seconds, args.storage) for rate in (10_000, 50_000)
            ]
            return result
        finally:
            proc.terminate()
            proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=200_000, help="events per publish round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=256, help="events per published batch")
    ap.add_argument("--seconds", type=float, default=5.0, help="length of a latency run")
    ap.add_argument("--storage", choices=("memory", "file"), default="memory")
    ap.add_argument("--capture", help="a capture for the end-to-end comparison")
    ap.add_argument("--json", help="also write the result to this JSON file")
    args = ap.parse_args()
    uvloop.install()
    result = asyncio.run(main_async(args))
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

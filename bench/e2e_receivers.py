"""The receiving side of bench/bench_e2e.py: raw picows or the whole gateway, one process a round.

`receiver_main` runs in a fresh child process per round.  It connects to the
fake exchange, sends ``("ready", {})`` on its pipe once every stream is
subscribed, receives until the sentinel trade (the last frame of every round)
and sends ``("result", dict)``.

- ``raw``: a bare picows client on the combined endpoint with every stream in
  the URL; one Python callback per frame, which counts it and, when measuring
  latency, reads ``E`` from the bytes.
- ``gateway``: ``Engine`` (ConnectionManager -> Dispatcher -> Conductor ->
  InMemoryDataBus) with one ``block`` consumer in the same process; the
  consumer counts events and, when measuring latency, reads ``ts_event``.

Latency is the wall clock at the receiver minus the frame's ``E`` (the sender's
wall clock in µs), for the frames that carry one: trade, aggTrade and
depthUpdate frames (spot bookTicker has no event time); on the gateway the
matching events are trade, agg_trade and book_delta (one per frame).  Samples
of the first ``warmup_us`` after the first stamped frame are left out on both
sides (the books sync from REST then).
"""

from __future__ import annotations

import asyncio
import base64
import gc
import os
import time
from multiprocessing.connection import Connection
from typing import Any, cast

from e2e_sender import MARKET, SENTINEL_TRADE_ID

LATENCY_KINDS = frozenset({"trade", "agg_trade", "book_delta"})
# events that stand for exactly one exchange frame (fused and control events do not)
FRAME_KINDS = frozenset({"trade", "agg_trade", "book_delta", "book_ticker"})
_PAGE = os.sysconf("SC_PAGE_SIZE")


def new_histogram() -> Any:
    from hdrh.histogram import HdrHistogram

    return HdrHistogram(1, 60_000_000, 3)  # 1 µs .. 60 s, 3 significant digits


def percentiles(hist: Any) -> dict[str, int]:
    """p50/p90/p99/p99.9/max in µs, and the sample count."""
    if hist.get_total_count() == 0:
        return {"p50": 0, "p90": 0, "p99": 0, "p99.9": 0, "max": 0, "count": 0}
    out = {f"p{q:g}": int(hist.get_value_at_percentile(q)) for q in (50, 90, 99, 99.9)}
    out["max"] = int(hist.get_max_value())
    out["count"] = int(hist.get_total_count())
    return out


def rss_bytes() -> int:
    """Resident set size of this process (/proc/self/statm)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


class GcPauses:
    """Collector pauses in this process, per generation (gc.callbacks): a cause of tail latency."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.total_ns = [0, 0, 0]
        self.max_ns = [0, 0, 0]
        self._t0 = 0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter_ns()
            return
        g = info["generation"]
        d = time.perf_counter_ns() - self._t0
        self.count[g] += 1
        self.total_ns[g] += d
        self.max_ns[g] = max(self.max_ns[g], d)

    def result(self) -> dict[str, Any]:
        return {
            f"gen{g}": {
                "collections": self.count[g],
                "total_ms": round(self.total_ns[g] / 1e6, 2),
                "max_ms": round(self.max_ns[g] / 1e6, 3),
            }
            for g in range(3)
        }


def _latency_result(hist: Any) -> dict[str, Any]:
    return {
        "latency_us": percentiles(hist),
        "histogram": base64.b64encode(hist.encode()).decode() if hist.get_total_count() else "",
    }


# ---------------------------------------------------------------- raw picows


async def _raw(conn: Connection, mode: str, info: dict[str, Any], p: dict[str, Any]) -> None:
    from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    expected = int(p["expected"])
    latency = mode == "latency"
    warmup_us = int(p.get("warmup_us", 0))
    hist = new_histogram()
    record = hist.record_value
    text = WSMsgType.TEXT
    perf = time.perf_counter
    now_ns = time.time_ns

    class Counter(WSListener):
        count = 0
        t_first = 0.0
        t_last = 0.0
        first_e = 0

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type != text:
                return
            n = self.count = self.count + 1
            if n == 1:
                self.t_first = perf()
            if latency:
                data = frame.get_payload_as_bytes()
                i = data.find(b'"E":')
                if i >= 0:
                    now_us = now_ns() // 1000
                    e = int(data[i + 4 : data.index(b",", i)])
                    if not self.first_e:
                        self.first_e = e
                    if e >= self.first_e + warmup_us:
                        record(max(1, now_us - e))
            if n == expected and not done.done():
                self.t_last = perf()
                done.set_result(None)

    streams = "/".join(info["streams"])
    transport, listener = await ws_connect(Counter, f"{info['ws_url']}/stream?streams={streams}")
    client = cast(Counter, listener)
    pauses = GcPauses()
    conn.send(("ready", {}))
    result: dict[str, Any] = {"ok": True}
    try:
        await asyncio.wait_for(done, p["timeout_s"])
    except TimeoutError:
        result = {"ok": False, "error": f"timeout: {client.count}/{expected} frames"}
    finally:
        transport.disconnect()
    elapsed = max(1e-9, client.t_last - client.t_first)
    result.update(
        frames=client.count,
        elapsed_s=round(elapsed, 4),
        frames_per_s=round((client.count - 1) / elapsed, 1),
        gc_pauses=pauses.result(),
    )
    if latency:
        result.update(_latency_result(hist))
    conn.send(("result", result))


# ---------------------------------------------------------------- gateway


def _engine(mode: str, info: dict[str, Any], extra: list[str]) -> Any:
    from meltica.commands.common import local_overrides
    from meltica.config import load_config
    from meltica.engine import Engine

    overrides = local_overrides(
        {MARKET: info["ws_url"]},
        info["rest_url"],
        symbols={MARKET: [s.lower() for s in info["symbols"]]},
    )
    overrides += ["telemetry.metrics_enabled=false", f"binance.{MARKET}.depth_speed_ms=100"]
    if mode == "latency":
        overrides.append(f"binance.{MARKET}.time_unit=us")
    overrides += extra
    return Engine(load_config(None, env={}, overrides=overrides), subscribe_on_start=False)


def _otel_counters(engine: Any) -> dict[str, float]:
    return {
        s.name + "".join(f"{{{v}}}" for _, v in s.labels): s.value
        for s in engine.otel.samples()
        if s.kind == "counter"
    }


async def _gateway(conn: Connection, mode: str, info: dict[str, Any], p: dict[str, Any]) -> None:
    engine = _engine(mode, info, list(p.get("overrides", [])))
    consumer = engine.bus.subscribe("bench", policy="block")
    await engine.start()
    result: dict[str, Any] = {"ok": True}
    hist = new_histogram()
    record = hist.record_value
    latency = mode == "latency"
    rss = mode == "rss"
    warmup_ns = int(p.get("warmup_us", 0)) * 1000
    every = int(p.get("rss_every", 0)) or 1 << 62
    samples: list[tuple[int, float, int]] = []  # (frames, seconds, rss bytes)
    events = frames = 0
    first_e = 0
    next_sample = 0
    t_first = t_last = t_ready = 0.0
    cpu_first = cpu_last = 0.0  # the process's CPU time (all threads) at those instants
    otel_start: dict[str, float] = {}
    pauses: GcPauses | None = None
    perf = time.perf_counter
    now_ns = time.time_ns
    try:
        reply = await engine.subscribe_streams(MARKET, info["streams"])
        if not reply.ok:
            raise RuntimeError(f"subscribe failed: {reply.error}")
        if engine.otel is not None:
            # start-up spans (exchangeInfo, snapshots, the subscribe) go out before the
            # data, as subscribing itself does: the round measures the steady state
            await asyncio.to_thread(engine.otel.provider.force_flush, 10_000)
            otel_start = _otel_counters(engine)
        t_ready = perf()
        pauses = GcPauses()
        if rss:
            samples.append((0, 0.0, rss_bytes()))
        conn.send(("ready", {}))
        finished = False
        async with asyncio.timeout(p["timeout_s"]):
            while not finished:
                batch = await consumer.next_batch()
                now = now_ns()
                if not t_first and any(ev.kind in FRAME_KINDS for ev in batch):
                    t_first = perf()  # the first exchange data, not the connection_state
                    cpu_first = time.process_time()
                events += len(batch)
                for ev in batch:
                    if ev.seq == SENTINEL_TRADE_ID and ev.kind == "trade":
                        finished = True
                    if latency:
                        if ev.kind in LATENCY_KINDS:
                            te = ev.ts_event
                            if not first_e:
                                first_e = te
                            if te >= first_e + warmup_ns:
                                record(max(1, (now - te) // 1000))
                    elif rss and ev.kind in FRAME_KINDS:
                        frames += 1
                if rss and frames >= next_sample:
                    samples.append((frames, perf() - t_ready, rss_bytes()))
                    next_sample = frames + every
            t_last = perf()
            cpu_last = time.process_time()
    except Exception as exc:  # a failed round (timeout, ConsumerOverflow, ...) keeps its stats
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    stats = engine.managers[MARKET].stats()
    instruments = engine.conductor.status()["instruments"]
    bus_stats = dict(engine.bus.stats())
    if rss:
        samples.append((frames, perf() - t_ready, rss_bytes()))
    await engine.stop()
    if engine.otel is not None:  # tracing on (bench_e2e.py part "tracing"): this round's
        end = _otel_counters(engine)
        result["otel"] = {k: v - otel_start.get(k, 0.0) for k, v in end.items()}
    elapsed = max(1e-9, t_last - t_first)
    # the manager's frame count includes control replies and server pings
    received = int(stats.get("frames", 0)) - int(stats.get("replies", 0))
    received -= int(stats.get("pings", 0))
    result.update(
        frames=received,
        events=events,
        elapsed_s=round(elapsed, 4),
        cpu_s=round(cpu_last - cpu_first, 4),
        frames_per_s=round((received - 1) / elapsed, 1),
        parse_errors=int(stats.get("parse_errors", 0)),
        batches=int(stats.get("batches", 0)),
        reconnects=int(stats.get("reconnects", 0)),
        gaps=sum(int(i.get("gaps", 0)) for i in instruments.values()),
        resyncs=sum(int(i.get("resyncs", 0)) for i in instruments.values()),
        buffer_overflows=sum(int(i.get("buffer_overflows", 0)) for i in instruments.values()),
        books_live=sum(1 for i in instruments.values() if i.get("state") == "live"),
        books=len(instruments),
        bus_dropped=int(consumer.dropped),
        bus=bus_stats,
        conductor=dict(engine.conductor.counters),
        gc_pauses=pauses.result() if pauses is not None else {},
    )
    if latency:
        result.update(_latency_result(hist))
    if rss:
        result["rss_samples"] = samples
    conn.send(("result", result))


def receiver_main(
    conn: Connection, kind: str, mode: str, info: dict[str, Any], params: dict[str, Any]
) -> None:
    """Child-process entry for one round."""
    import uvloop

    try:
        if kind == "raw":
            uvloop.run(_raw(conn, mode, info, params))
        else:
            uvloop.run(_gateway(conn, mode, info, params))
    except Exception as exc:  # the orchestrator reports it; the round fails, the run goes on
        conn.send(("result", {"ok": False, "error": f"{type(exc).__name__}: {exc}"}))

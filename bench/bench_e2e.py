"""End to end: fake exchange process -> gateway -> Data Bus consumer, next to raw picows.

What is measured, over real loopback sockets, with
the fake exchange (``meltica.replay.exchange.FakeExchange``) in its own process
serving the SAME frames to either receiver, each receiver in a fresh process
per round (bench/e2e_sender.py, bench/e2e_receivers.py):

1. Throughput: frames/s from the first to the last frame of a round, the
   sender at "max" pacing (it writes as fast as the receiver reads).  Raw
   picows counts frames in its callback; the gateway's bus consumer counts
   events and stops at the sentinel trade (the last frame), so every frame has
   gone through parse, dispatch, books and bus.  Budget: gateway >= 80 % of raw.
2. Latency at fixed rates (default 10k and 50k frames/s): the sender paces one
   batch per ~1 ms timer tick and stamps ``E``/``T`` of each frame with its wall
   clock in µs right before building and writing the batch (spot
   ``timeUnit=MICROSECOND``; the gateway runs with ``binance.spot.time_unit=us``).
   Latency = receiver wall clock - ``E``: in raw picows' frame callback, in the
   gateway's bus consumer (``now - ts_event``); trade, aggTrade and depthUpdate
   frames (spot bookTicker has no event time; those frames are sent and
   processed but not timed).  HdrHistograms, first 10 % (>= 0.3 s) of each
   round left out.  Budget: gateway p99 <= 1.3 x raw p99.
4. Tracing overhead (part ``tracing``, not in the default parts): gateway
   throughput rounds as in part 1 with OpenTelemetry off (no endpoint), on at
   the default ``telemetry.trace_sample_ratio`` (0.01), and on at ratio 0,
   the three interleaved in every round (the order rotates), exporting to an
   OTLP/HTTP sink in its own process that decodes and counts the spans (the
   start-up spans are flushed before the data starts, as subscribing is done).
   Budgets: median over rounds of (on ÷ off) >= 0.97, of (ratio 0 ÷ off)
   >= 0.99, both within the same round.  Beside them: the gateway process's
   CPU time per round (all threads, so the export thread too), off ÷ on per
   round, which other load on a shared machine moves far less than wall-clock
   throughput; and the time the listeners spent making batch spans, as a share
   of the round.
3. Memory: the gateway's RSS (/proc/self/statm) sampled ~200 times over a long
   run of a live synthetic market at "max" pacing; after the first 10 % of the
   frames (warm-up) every sample must stay within +-5 % of the first one.

The market: a synthetic spot market (``meltica.replay.synthetic.SyntheticMarket``,
8 symbols by default, streams trade, aggTrade, bookTicker, depth@100ms; about
58 % bookTicker, 20 % diff depth, 14 % trade, 8 % aggTrade, ~130-byte payloads).
Parts 1 and 2 pre-generate the frames once in the sender (generation runs at
~110k frames/s, slower than the receivers) and each round starts a fresh
exchange that serves the books as they were before the first frame, so the
gateway's books sync from REST exactly as on Binance; part 3 generates on the
fly, so its books stay consistent for any length.  Every gateway round reports
gaps, resyncs, bus drops and books live: a resync storm would show there.

A round that fails (a timeout, or the bus detaching the ``block`` consumer with
``ConsumerOverflow``) is listed with its error and left out of the medians;
the table says how many rounds were ok.  ``--set KEY=VALUE`` passes config
overrides to the gateway (e.g. ``bus.capacity=1048576``) and is recorded.

Rounds alternate the two receivers (raw first in even rounds, gateway first in
odd ones) so machine drift hits both alike; the table gives medians of rounds.
Latency runs 5 rounds per rate (``--latency-rounds``): raw picows' own p99 at
10k frames/s moves a lot from one round to the next (77-312 µs over 41
rounds of one session on the 2-core dev VM, a few of them far below the
rest), so one round's ratio can be far from the others and a median of 3
rounds moves with it.
The machine is shared and noisy: compare the ratios.  The budget ratios
(throughput, p99) are medians over rounds of gateway ÷ raw within the same
round; the other ratios in the table divide the medians.  A budget is met only
if no gateway round failed.

Run (from the repository root; the installed copy in .venv may be stale):
    PYTHONPATH=. .venv/bin/python bench/bench_e2e.py --quick
    PYTHONPATH=. .venv/bin/python bench/bench_e2e.py --rss-frames 10000000
Results: a table on stdout, ``--json`` (default bench/results/e2e.json) and
``--png`` (default bench/results/e2e-latency.png, plus ``-rss.png`` beside it).
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from e2e_receivers import new_histogram, percentiles, receiver_main
from e2e_sender import sender_main

RESULTS = Path(__file__).resolve().parent / "results"
KINDS = ("raw", "gateway")
THROUGHPUT_BUDGET = 0.80
LATENCY_BUDGET = 1.30
RSS_BUDGET_PCT = 5.0
TRACING_BUDGETS = {"default": 0.97, "zero": 0.99}  # throughput ÷ tracing off

_ctx = mp.get_context("fork")  # the orchestrator holds no threads and imports little


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _call(conn: Connection, msg: tuple[Any, ...], expect: str, timeout: float) -> dict[str, Any]:
    conn.send(msg)
    return _wait(conn, expect, timeout)


def _wait(conn: Connection, expect: str, timeout: float) -> dict[str, Any]:
    if not conn.poll(timeout):
        raise TimeoutError(f"no {expect!r} within {timeout} s")
    tag, body = conn.recv()
    if tag != expect:
        raise RuntimeError(f"expected {expect!r}, got {tag!r}: {body}")
    return dict(body)


class Bench:
    """The sender process and the rounds run against it."""

    def __init__(self, n_gen: int, symbols: int, seed: int, overrides: list[str]) -> None:
        self.overrides = overrides  # gateway config overrides (--set)
        self.conn, child = _ctx.Pipe()
        self.proc = _ctx.Process(
            target=sender_main, args=(child, n_gen, symbols, seed), daemon=True
        )
        self.proc.start()
        t0 = time.monotonic()
        self.generated = _wait(self.conn, "generated", 600)
        _log(f"sender: {self.generated['frames']:,} frames in {time.monotonic() - t0:.1f} s")

    def round(self, kind: str, mode: str, serve: dict[str, Any], params: dict[str, Any]) -> Any:
        """One receiver process against a fresh exchange; its result plus the sender's stats."""
        info = _call(self.conn, ("serve", mode, serve), "ready", 60)
        params = {**params, "overrides": [*self.overrides, *params.get("extra", ())]}
        parent, child = _ctx.Pipe()
        proc = _ctx.Process(target=receiver_main, args=(child, kind, mode, info, params))
        proc.start()
        started = False
        try:
            tag, body = parent.recv() if parent.poll(120) else ("timeout", {})
            if tag == "ready":
                _call(self.conn, ("go", params), "started", 60)
                started = True
                result = _wait(parent, "result", params["timeout_s"] + 60)
            elif tag == "result":
                result = body
            else:
                result = {"ok": False, "error": "receiver not ready within 120 s"}
        except (TimeoutError, RuntimeError, EOFError) as exc:
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        finally:
            sender = _call(self.conn, ("stop",), "stopped", 60)
            proc.join(30)
            if proc.is_alive():
                proc.kill()
                proc.join()
        result["sender"] = sender
        result["started"] = started
        return result

    def close(self) -> None:
        self.conn.send(("exit",))
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


# ---------------------------------------------------------------- parts


def _order(r: int) -> tuple[str, ...]:
    return KINDS if r % 2 == 0 else KINDS[::-1]


def part_throughput(bench: Bench, frames: int, rounds: int, timeout: float) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
    params = {"expected": frames + 1, "timeout_s": timeout}
    for r in range(rounds):
        for kind in _order(r):
            res = bench.round(kind, "throughput", {"frames": frames}, params)
            runs[kind].append(res)
            _log(f"throughput round {r} {kind}: {_fmt_rate(res)}")
    med = {k: _median([x["frames_per_s"] for x in runs[k] if x.get("ok")]) for k in KINDS}
    ratio = _paired(runs, lambda x: float(x["frames_per_s"]))
    failed = sum(1 for x in runs["gateway"] if not x.get("ok"))
    return {
        "frames_per_round": frames + 1,
        "rounds": runs,
        "median_frames_per_s": med,
        "ratio": round(ratio, 3),
        "budget": THROUGHPUT_BUDGET,
        "pass": ratio >= THROUGHPUT_BUDGET and not failed,
        "gateway_trouble": _trouble(runs["gateway"]),
    }


def _otlp_sink(conn: Connection) -> None:
    """An OTLP/HTTP receiver (own process): decodes and counts spans and metric posts."""
    import asyncio

    from aiohttp import web
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    counts = {"spans": 0, "trace_posts": 0, "metric_posts": 0}

    async def traces(request: web.Request) -> web.Response:
        req = ExportTraceServiceRequest()
        req.ParseFromString(await request.read())
        counts["trace_posts"] += 1
        counts["spans"] += sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans)
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def metrics(request: web.Request) -> web.Response:
        await request.read()
        counts["metric_posts"] += 1
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", traces)
        app.router.add_post("/v1/metrics", metrics)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        conn.send(("ready", {"port": site._server.sockets[0].getsockname()[1]}))
        loop = asyncio.get_running_loop()
        while True:
            if await loop.run_in_executor(None, conn.poll, 0.2):
                msg = conn.recv()
                if msg == "counts":
                    conn.send(("counts", dict(counts)))
                elif msg == "exit":
                    break
        await runner.cleanup()

    asyncio.run(main())


class OtlpSink:
    """The `_otlp_sink` process and the pipe to it."""

    def __init__(self, proc: BaseProcess, conn: Connection, url: str) -> None:
        self.proc, self.conn = proc, conn
        self.url = url  # the OTLP/HTTP endpoint for telemetry.otlp_endpoint

    def counts(self) -> dict[str, Any]:
        """Spans, trace posts and metric posts received so far."""
        self.conn.send("counts")
        return _wait(self.conn, "counts", 30)

    def stop(self) -> None:
        self.conn.send("exit")
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()


def start_otlp_sink() -> OtlpSink:
    """Start `_otlp_sink` in its own process; returns once it listens."""
    parent, child = _ctx.Pipe()
    proc = _ctx.Process(target=_otlp_sink, args=(child,), daemon=True)
    proc.start()
    return OtlpSink(proc, parent, f"http://127.0.0.1:{_wait(parent, 'ready', 60)['port']}")


# telemetry.trace_sample_ratio of each tracing setting with an endpoint (None: the
# default, 0.01); "off" is no endpoint at all
TRACE_RATIOS = {"default": None, "zero": "0", "all": "1"}


def tracing_configs(
    url: str, settings: Sequence[str], extra: Sequence[str] = ()
) -> dict[str, list[str]]:
    """Gateway overrides of each tracing setting in ``settings`` (``off`` or a key of
    TRACE_RATIOS): nothing for ``off``; otherwise the endpoint ``url``, the setting's
    ratio and ``extra``."""
    configs: dict[str, list[str]] = {}
    for name in settings:
        if name == "off":
            configs[name] = []
            continue
        ratio = TRACE_RATIOS[name]
        configs[name] = [
            f"telemetry.otlp_endpoint={url}",
            *([f"telemetry.trace_sample_ratio={ratio}"] if ratio is not None else []),
            *extra,
        ]
    return configs


def part_tracing(bench: Bench, frames: int, rounds: int, timeout: float) -> dict[str, Any]:
    """Gateway throughput with tracing off / on at the default ratio / on at ratio 0."""
    sink = start_otlp_sink()
    configs = tracing_configs(sink.url, ("off", "default", "zero"))
    names = list(configs)
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in names}
    try:
        for r in range(rounds):
            order = names[r % 3 :] + names[: r % 3]
            for name in order:
                params = {"expected": frames + 1, "timeout_s": timeout, "extra": configs[name]}
                res = bench.round("gateway", "throughput", {"frames": frames}, params)
                runs[name].append(res)
                otel = res.get("otel", {})
                _log(
                    f"tracing round {r} {name}: {_fmt_rate(res)}"
                    + (
                        f" sampled {otel.get('otel_batches_sampled', 0):.0f} batches, "
                        f"{otel.get('otel_spans{exported}', 0):.0f} spans exported"
                        if otel
                        else ""
                    )
                )
        sink_counts = sink.counts()
    finally:
        sink.stop()

    def ratio(name: str) -> float:
        vals = [
            on["frames_per_s"] / off["frames_per_s"]
            for on, off in zip(runs[name], runs["off"], strict=True)
            if on.get("ok") and off.get("ok") and off["frames_per_s"]
        ]
        return round(_median(vals), 3)

    def cpu_ratio(name: str) -> float:
        # CPU seconds per frame, off ÷ on: the gateway's own work, less sensitive than
        # wall time to what else the machine runs
        vals = [
            off["cpu_s"] / on["cpu_s"]
            for on, off in zip(runs[name], runs["off"], strict=True)
            if on.get("ok") and off.get("ok") and on.get("cpu_s") and off.get("cpu_s")
        ]
        return round(_median(vals), 3)

    failed = sum(1 for k in names for x in runs[k] if not x.get("ok"))
    ratios = {k: ratio(k) for k in ("default", "zero")}
    cpu_ratios = {k: cpu_ratio(k) for k in ("default", "zero")}
    return {
        "frames_per_round": frames + 1,
        "rounds": runs,
        "median_frames_per_s": {
            k: _median([x["frames_per_s"] for x in runs[k] if x.get("ok")]) for k in names
        },
        "ratio": ratios,
        "cpu_ratio": cpu_ratios,
        "median_cpu_s": {
            k: _median([x["cpu_s"] for x in runs[k] if x.get("ok") and "cpu_s" in x]) for k in names
        },
        "budget": TRACING_BUDGETS,
        "pass": {k: ratios[k] >= TRACING_BUDGETS[k] and not failed for k in ratios},
        "sink": sink_counts,
        # the direct cost, free of the rounds' noise: time the listeners spent
        # making batch spans, as a share of the round's elapsed time
        "span_cost_share": _median(
            [
                x["otel"].get("otel_batch_span_seconds", 0.0) / x["elapsed_s"]
                for x in runs["default"]
                if x.get("ok") and x.get("otel") and x.get("elapsed_s")
            ]
        ),
        # CPU of the export thread and the metric rounds, share of the round, per config
        "export_cpu_share": {
            k: _median(
                [
                    (
                        x["otel"].get("otel_span_export_cpu_seconds", 0.0)
                        + x["otel"].get("otel_metrics_cpu_seconds", 0.0)
                    )
                    / x["elapsed_s"]
                    for x in runs[k]
                    if x.get("ok") and x.get("otel") and x.get("elapsed_s")
                ]
            )
            for k in ("default", "zero")
        },
        "sampled_batches": sum(
            x.get("otel", {}).get("otel_batches_sampled", 0) for x in runs["default"]
        ),
        "batches": sum(x.get("batches", 0) for x in runs["default"]),
    }


def part_latency(
    bench: Bench, rates: list[int], seconds: float, rounds: int, timeout: float
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    warmup_us = int(max(0.3, 0.1 * seconds) * 1e6)
    for rate in rates:
        n = int(rate * seconds)
        params = {
            "rate": rate,
            "frames": n,
            "expected": n + 1,
            "warmup_us": warmup_us,
            "timeout_s": timeout + seconds,
        }
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
        for r in range(rounds):
            for kind in _order(r):
                res = bench.round(kind, "latency", {}, params)
                runs[kind].append(res)
                lat = res.get("latency_us", {})
                pacing = res["sender"].get("pacing", {})
                _log(
                    f"latency {rate}/s round {r} {kind}: p50 {lat.get('p50')} "
                    f"p99 {lat.get('p99')} p99.9 {lat.get('p99.9')} max {lat.get('max')} µs"
                    f" (sent at {pacing.get('achieved_rate', 0):,.0f}/s, "
                    f"gc gen2 max {res.get('gc_pauses', {}).get('gen2', {}).get('max_ms')} ms)"
                    + ("" if res.get("ok") else f" FAILED {res.get('error')}")
                )
        merged = {k: _merge([x for x in runs[k] if x.get("ok")]) for k in KINDS}
        med: dict[str, dict[str, float]] = {}
        for k in KINDS:
            ok = [x["latency_us"] for x in runs[k] if x.get("ok")]
            med[k] = {q: _median([x[q] for x in ok]) for q in ("p50", "p90", "p99", "p99.9", "max")}
        ratio = _paired(runs, lambda x: float(x["latency_us"]["p99"]))
        failed = sum(1 for x in runs["gateway"] if not x.get("ok"))
        for k in KINDS:
            for x in runs[k]:
                x.pop("histogram", None)  # the merged one is kept
        out[str(rate)] = {
            "frames_per_round": n + 1,
            "warmup_us": warmup_us,
            "rounds": runs,
            "median_us": med,
            "merged_us": {k: percentiles(merged[k]) for k in KINDS},
            "merged_histogram": {
                k: base64.b64encode(merged[k].encode()).decode()
                if merged[k].get_total_count()
                else ""
                for k in KINDS
            },
            "ratio_p99": round(ratio, 3),
            "budget": LATENCY_BUDGET,
            "pass": 0 < ratio <= LATENCY_BUDGET and not failed,
            "gateway_trouble": _trouble(runs["gateway"]),
        }
    return out


def part_rss(bench: Bench, frames: int, timeout: float) -> dict[str, Any]:
    every = max(1, frames // 200)
    params = {"expected": frames + 1, "rss_every": every, "timeout_s": timeout}
    res = bench.round("gateway", "rss", {"frames": frames}, params)
    samples = res.pop("rss_samples", [])
    _log(f"rss run: {_fmt_rate(res)}")
    out: dict[str, Any] = {"frames": frames + 1, "sample_every": every, "run": res}
    warm = [s for s in samples if s[0] >= frames * 0.1]
    if len(warm) >= 2:
        base = warm[0][2]
        values = [s[2] for s in warm]
        worst = max(abs(v - base) for v in values) / base * 100
        out.update(
            warmup_frames=int(frames * 0.1),
            rss_at_start_mib=round(samples[0][2] / 2**20, 1),
            rss_after_warmup_mib=round(base / 2**20, 1),
            rss_min_mib=round(min(values) / 2**20, 1),
            rss_max_mib=round(max(values) / 2**20, 1),
            rss_last_mib=round(values[-1] / 2**20, 1),
            drift_pct=round((values[-1] - base) / base * 100, 2),
            max_deviation_pct=round(worst, 2),
            budget_pct=RSS_BUDGET_PCT,
            **{"pass": bool(res.get("ok")) and worst <= RSS_BUDGET_PCT},
        )
    out["series"] = [{"frames": f, "t_s": round(t, 3), "rss_bytes": b} for f, t, b in samples]
    return out


# ---------------------------------------------------------------- helpers


def _paired(runs: dict[str, list[dict[str, Any]]], value: Any) -> float:
    """Median over rounds of gateway ÷ raw within the same round (both ok): drift cancels."""
    ratios = [
        value(g) / value(r)
        for g, r in zip(runs["gateway"], runs["raw"], strict=True)
        if g.get("ok") and r.get("ok") and value(r)
    ]
    return _median(ratios)


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def _merge(results: list[dict[str, Any]]) -> Any:
    from hdrh.histogram import HdrHistogram

    merged = new_histogram()
    for res in results:
        if res.get("histogram"):
            merged.add(HdrHistogram.decode(base64.b64decode(res["histogram"])))
    return merged


def _trouble(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("gaps", "resyncs", "buffer_overflows", "bus_dropped", "parse_errors", "reconnects")
    out = {k: sum(int(r.get(k, 0)) for r in runs) for k in keys}
    out["failed_rounds"] = sum(1 for r in runs if not r.get("ok"))
    errors = sorted({str(r.get("error")) for r in runs if not r.get("ok")})
    out["rounds_with_books_not_live"] = sum(
        1 for r in runs if r.get("books_live", 0) != r.get("books", 0)
    )
    return {**out, "errors": errors} if errors else out


def _fmt_rate(res: dict[str, Any]) -> str:
    if not res.get("ok"):
        return f"FAILED {res.get('error')}"
    extra = ""
    if "gaps" in res:
        extra = f" (gaps {res['gaps']}, resyncs {res['resyncs']}, books live {res['books_live']})"
    return f"{res['frames']:,} frames at {res['frames_per_s']:,.0f} frames/s{extra}"


def _machine() -> dict[str, Any]:
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions: dict[str, str | None] = {}
    for pkg in ("picows", "uvloop", "hdrhistogram", "matplotlib", "meltica-engine"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "versions": versions,
    }


# ---------------------------------------------------------------- report


def _yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def table(report: dict[str, Any]) -> str:
    p = report["params"]
    lines = [
        f"# Meltica end to end, {report['date']} ({report['machine']['cpus']} CPUs, "
        f"load {report['machine']['loadavg_start'][0]:.2f} at start: shared, noisy machine)",
        "",
        f"Command: {' '.join(report['command'])}",
        "",
        "| measure | raw picows | gateway | gateway ÷ raw | budget | ok |",
        "|---|---:|---:|---:|---|---|",
    ]
    tp = report.get("throughput")
    if tp:
        m = tp["median_frames_per_s"]
        n_ok = {k: sum(1 for r in tp["rounds"][k] if r.get("ok")) for k in KINDS}
        lines.append(
            f"| throughput, frames/s (median of the ok rounds: raw {n_ok['raw']}/{p['rounds']}, "
            f"gateway {n_ok['gateway']}/{p['rounds']}; {tp['frames_per_round']:,} frames/round) "
            f"| {m['raw']:,.0f} | {m['gateway']:,.0f} | {tp['ratio']:.2f} "
            f"| ≥ {THROUGHPUT_BUDGET:.2f} | {_yes(tp['pass'])} |"
        )
    for rate, lat in (report.get("latency") or {}).items():
        med = lat["median_us"]
        for q in ("p50", "p99", "p99.9", "max"):
            raw, gw = med["raw"][q], med["gateway"][q]
            budget, ok = "", ""
            ratio = f"{gw / raw:.2f}" if raw else "-"
            if q == "p99":
                budget, ok = f"≤ {LATENCY_BUDGET:.2f}", _yes(lat["pass"])
                ratio = f"{lat['ratio_p99']:.2f}"
            lines.append(
                f"| latency {q} at {int(rate):,} frames/s, µs (median of {p['latency_rounds']}) "
                f"| {raw:,.0f} | {gw:,.0f} | {ratio} | {budget} | {ok} |"
            )
    tr = report.get("tracing")
    if tr:
        m = tr["median_frames_per_s"]
        for name, label in (("default", "on, default ratio 0.01"), ("zero", "on, ratio 0")):
            lines.append(
                f"| gateway throughput with tracing {label}, frames/s (median of "
                f"{p['rounds']} rounds; off: {m['off']:,.0f}) | - | {m[name]:,.0f} "
                f"| {tr['ratio'][name]:.3f} (÷ tracing off) | ≥ {TRACING_BUDGETS[name]:.2f} "
                f"| {_yes(tr['pass'][name])} |"
            )
        c = tr["median_cpu_s"]
        for name, label in (("default", "on, default ratio"), ("zero", "on, ratio 0")):
            lines.append(
                f"| gateway CPU seconds per round (all threads), tracing {label} "
                f"(off: {c['off']:.3f} s) | - | {c[name]:.3f} s "
                f"| {tr['cpu_ratio'][name]:.3f} (off ÷ on, per round) | - | - |"
            )
        lines.append(
            f"| time spent making batch spans at the default ratio, share of the round "
            f"(median; {tr['sampled_batches']:.0f} of {tr['batches']:,} batches sampled) | - "
            f"| {100 * tr['span_cost_share']:.3f} % | - | - | - |"
        )
        share = tr["export_cpu_share"]
        lines.append(
            "| CPU time of span export and OTLP metric rounds, share of the round (median; "
            f"ratio 0: {100 * share['zero']:.3f} %) | - | {100 * share['default']:.3f} % "
            "| - | - | - |"
        )
    rss = report.get("rss")
    if rss and "drift_pct" in rss:
        lines.append(
            f"| RSS over {rss['frames']:,} frames, after warm-up: "
            f"{rss['rss_after_warmup_mib']} MiB → {rss['rss_last_mib']} MiB "
            f"(min {rss['rss_min_mib']}, max {rss['rss_max_mib']}) | - "
            f"| {rss['drift_pct']:+.2f} % (max dev {rss['max_deviation_pct']:.2f} %) | - "
            f"| ± {RSS_BUDGET_PCT:g} % | {_yes(rss['pass'])} |"
        )
    troubles = []
    if tp:
        troubles.append(f"throughput {tp['gateway_trouble']}")
    for rate, lat in (report.get("latency") or {}).items():
        troubles.append(f"latency {rate}/s {lat['gateway_trouble']}")
    if rss and "run" in rss:
        r = rss["run"]
        troubles.append(
            "rss "
            + str({k: r.get(k) for k in ("gaps", "resyncs", "bus_dropped", "books_live", "books")})
            + f" at {r.get('frames_per_s', 0):,.0f} frames/s"
        )
    lines += ["", "Gateway trouble counters (sums over rounds): " + "; ".join(troubles)]
    return "\n".join(lines)


def plot(report: dict[str, Any], png: Path) -> list[Path]:
    """Percentile curves of gateway vs raw picows per rate; the RSS series beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from hdrh.histogram import HdrHistogram

    written = []
    lat = report.get("latency") or {}
    if lat:
        fig, axes = plt.subplots(1, len(lat), figsize=(6 * len(lat), 4.5), squeeze=False)
        qs = [100 * (1 - 10 ** (-x / 20)) for x in range(0, 101)]  # 0 .. 99.999
        for ax, (rate, part) in zip(axes[0], lat.items(), strict=True):
            for kind, style in (("raw", "--"), ("gateway", "-")):
                enc = part["merged_histogram"][kind]
                if not enc:
                    continue
                h = HdrHistogram.decode(base64.b64decode(enc))
                xs = [1 / (1 - q / 100) for q in qs]
                ys = [h.get_value_at_percentile(q) for q in qs]
                ax.plot(xs, ys, style, label=f"{kind} (n={h.get_total_count():,})")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ticks = [1, 2, 10, 100, 1000, 10000, 100000]
            ax.set_xticks(ticks)
            ax.set_xticklabels(["0", "50", "90", "99", "99.9", "99.99", "99.999"])
            ax.set_xlabel("percentile")
            ax.set_ylabel("send → consumer latency, µs")
            ax.set_title(f"{int(rate):,} frames/s, p99 ratio {part['ratio_p99']:.2f}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
        fig.suptitle("Meltica end to end vs raw picows (merged rounds)")
        fig.tight_layout()
        fig.savefig(png, dpi=110)
        plt.close(fig)
        written.append(png)
    rss = report.get("rss") or {}
    if rss.get("series"):
        fig, ax = plt.subplots(figsize=(7, 4))
        s = rss["series"]
        ax.plot([x["frames"] / 1e6 for x in s], [x["rss_bytes"] / 2**20 for x in s])
        if "warmup_frames" in rss:
            ax.axvline(rss["warmup_frames"] / 1e6, color="grey", ls=":", label="end of warm-up")
            ax.legend()
        ax.set_xlabel("frames, millions")
        ax.set_ylabel("gateway RSS, MiB")
        ax.set_title("Gateway RSS over a long replay")
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        out = png.with_name(png.stem + "-rss.png")
        fig.savefig(out, dpi=110)
        plt.close(fig)
        written.append(out)
    return written


# ---------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few seconds per part")
    ap.add_argument(
        "--parts", default="throughput,latency,rss", help="any of throughput,latency,rss,tracing"
    )
    ap.add_argument("--frames", type=int, help="throughput frames per round")
    ap.add_argument("--rounds", type=int, help="throughput rounds (each runs both receivers)")
    ap.add_argument("--rates", default="10000,50000", help="latency rates, frames/s")
    ap.add_argument("--latency-s", type=float, help="seconds per latency round")
    ap.add_argument("--latency-rounds", type=int)
    ap.add_argument("--rss-frames", type=int, help="frames of the RSS run (issue: 10000000)")
    ap.add_argument("--symbols", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=300.0, help="per round, seconds")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="gateway config override, e.g. bus.capacity=1048576 (repeatable)",
    )
    ap.add_argument("--json", type=Path, default=RESULTS / "e2e.json")
    ap.add_argument("--png", type=Path, default=RESULTS / "e2e-latency.png")
    args = ap.parse_args()
    q = args.quick
    frames = args.frames or (300_000 if q else 1_000_000)
    rounds = args.rounds or (3 if q else 5)
    lat_s = args.latency_s or (2.0 if q else 10.0)
    lat_rounds = args.latency_rounds or (2 if q else 5)
    rss_frames = args.rss_frames or (1_000_000 if q else 3_000_000)
    rates = [int(r) for r in args.rates.split(",") if r]
    parts = set(args.parts.split(","))
    report: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": [sys.executable, *sys.argv],
        "machine": _machine(),
        "params": {
            "frames": frames,
            "rounds": rounds,
            "rates": rates,
            "latency_s": lat_s,
            "latency_rounds": lat_rounds,
            "rss_frames": rss_frames,
            "symbols": args.symbols,
            "seed": args.seed,
            "parts": sorted(parts),
            "gateway_overrides": args.set,
        },
    }
    n_gen = max(frames, int(max(rates, default=0) * lat_s)) + 1
    t0 = time.monotonic()
    bench = Bench(n_gen, args.symbols, args.seed, args.set)
    report["market"] = bench.generated
    try:
        if "throughput" in parts:
            report["throughput"] = part_throughput(bench, frames, rounds, args.timeout)
        if "latency" in parts:
            report["latency"] = part_latency(bench, rates, lat_s, lat_rounds, args.timeout)
        if "tracing" in parts:
            report["tracing"] = part_tracing(bench, frames, rounds, args.timeout)
        if "rss" in parts:
            report["rss"] = part_rss(bench, rss_frames, max(args.timeout, rss_frames / 5_000))
    finally:
        bench.close()
    report["machine"]["loadavg_end"] = os.getloadavg()
    report["elapsed_s"] = round(time.monotonic() - t0, 1)
    text = table(report)
    print(text)
    report["table"] = text
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    args.png.parent.mkdir(parents=True, exist_ok=True)
    written = plot(report, args.png)
    _log(f"wrote {args.json}" + "".join(f", {p}" for p in written))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

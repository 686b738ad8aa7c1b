"""Tracing overhead in instructions: the gateway's work per frame, counted by callgrind.

The noise-proof companion of ``bench_e2e.py --parts tracing``.  On a shared
machine wall-clock throughput ratios move by more than the budgets (issue 16:
on at the default ``telemetry.trace_sample_ratio`` >= 0.97 of off, at ratio 0
>= 0.99), so this script counts the instructions (callgrind's ``Ir``) that the
gateway process executes for the same frames, with

- ``off``: no OTLP endpoint (tracing off);
- ``default``: an endpoint, ratio 0.01 (the default);
- ``zero``: an endpoint, ``telemetry.trace_sample_ratio=0``;
- ``all``: an endpoint, ratio 1 (every batch sampled: the cost of a sampled batch);

and reports ``Ir(off) ÷ Ir(setting)`` per frame, the analogue of throughput
``on ÷ off``.

The load and the pipeline are those of ``bench_e2e.py``: the fake exchange in
its own process (bench/e2e_sender.py: a pre-generated synthetic spot market,
8 symbols, trade/aggTrade/bookTicker/depth, at "max" pacing, a sentinel trade
last), an OTLP/HTTP sink in its own process that decodes the spans
(``bench_e2e._otlp_sink``), and the gateway, ``Engine`` (picows listener +
compiled parse -> Dispatcher -> Conductor -> InMemoryDataBus publish -> one
``block`` consumer), built as bench/e2e_receivers.py builds it.  Only the
gateway runs under valgrind, a fresh process per run:

    valgrind --tool=callgrind --instr-atstart=no python bench/bench_tracing_ir.py --gateway SHIM

Start-up (imports, config, exchangeInfo, snapshots, subscribing, and the
start-up spans, which are flushed first as in bench_e2e) runs uninstrumented.
Once the streams are subscribed the gateway turns instrumentation on and zeroes
the counters through callgrind's client requests (a C shim of two functions,
compiled at run time against ``<valgrind/callgrind.h>``), tells the orchestrator
it is ready, and the sender starts.  At the sentinel trade it flushes the span
processor (so every span that ended in the window is encoded and POSTed to the
sink inside it), dumps the counts (``steady``) and turns instrumentation off.
The counts are those of all threads (the event loop, the span export thread,
the executor).  Shutdown is not counted.

Each setting runs at N and 2N frames per round (the four settings rotate within
a round).  Two per-frame figures: ``(Ir(2N) - Ir(N)) ÷ N``, which counts frames
N+1..2N, the same frames in every setting, once the books are live; whatever a
window holds once per run cancels in it: the books' REST syncs (paced in wall
time, so they take more frames when the gateway is slower) and, with tracing
on, their ``rest depth`` / ``book.resync`` spans and the ``control subscribe``
span, which end in the window and are exported in it.  And both runs pooled
(window Ir ÷ frames), which keeps those one-off costs.  Ratios are medians
over rounds of the per-round ratios.

What differs from a real run, and how the script deals with it:

- callgrind slows the gateway ~30-50x, so work driven by the wall clock would
  fall on far fewer frames than in real time.  The OTLP metric rounds (one per
  ``otlp_metrics_interval_s``, 15 s by default) are therefore moved out of the
  data window (``telemetry.otlp_metrics_interval_s=3600``), one round is
  counted in a window of its own after the data (``metrics``), and its cost
  is spread over the frames a gateway at ``--rate`` frames/s handles in 15 s.
  The span processor exports once a second of wall time, so under callgrind
  it POSTs fewer spans at a time than it would in real time (a conservative
  error: more requests per span).
- batch sizes follow socket reads, and the slow gateway reads fuller buffers
  (~1,900 frames a batch here; ~950 in bench_e2e's wall-clock rounds).  At
  ratio 0.01 a run samples a handful of batches, so the measured ``default``
  column moves with the luck of the draw (and ``(2N - N) ÷ N`` puts the
  2N run's extra draws on N frames); the expected cost is computed from
  ``zero`` and ``all``: ``zero + 0.01 x (all - zero)`` per frame, and the table
  gives the instructions one sampled batch costs, to scale to any batch size.

Instructions are user-space only (system calls, e.g. the export's socket
writes, are not counted) and are not time: a cache miss counts as one.  What
they do not move with is other load on the machine.

Run (from the repository root; valgrind and a C compiler are needed; ~4.5 min
with the defaults):
    PYTHONPATH=. .venv/bin/python bench/bench_tracing_ir.py [--frames 200000] [--rounds 2]
        [--rate 1000000] [--annotate] [--json bench/results/tracing-ir.json] [--keep DIR]

``--annotate`` prints ``callgrind_annotate``'s top functions (exclusive Ir) of
the last round's 2N run of each setting, to see where tracing's instructions
go.  ``--keep DIR`` keeps the callgrind files.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import gc
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
SETTINGS = ("off", "default", "zero", "all")
BUDGETS = {"default": 0.97, "zero": 0.99}  # instructions off ÷ on, per frame
METRICS_INTERVAL_S = 15.0  # telemetry.otlp_metrics_interval_s default

_SHIM_C = r"""
#include <valgrind/callgrind.h>
void ir_start(void) { CALLGRIND_START_INSTRUMENTATION; CALLGRIND_ZERO_STATS; }
void ir_stop(const char *name) { CALLGRIND_DUMP_STATS_AT(name); CALLGRIND_STOP_INSTRUMENTATION; }
"""


def build_shim(out_dir: Path) -> Path:
    """Compile the client-request shim (its requests are no-ops outside valgrind)."""
    src = out_dir / "irshim.c"
    lib = out_dir / "irshim.so"
    src.write_text(_SHIM_C)
    cc = os.environ.get("CC", "cc")
    subprocess.run([cc, "-O1", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    return lib


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the gateway (under valgrind)


def _emit(tag: str, body: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps([tag, body]) + "\n")
    sys.stdout.flush()


async def _gateway(p: dict[str, Any], shim: Any) -> None:
    import asyncio

    from e2e_receivers import _engine, _otel_counters
    from e2e_sender import MARKET, SENTINEL_TRADE_ID

    info = p["info"]
    engine = _engine("throughput", info, list(p["extra"]))
    consumer = engine.bus.subscribe("bench", policy="block")
    await engine.start()
    result: dict[str, Any] = {"ok": True}
    events = 0
    otel_start: dict[str, float] = {}
    stats0: dict[str, Any] = {}
    try:
        reply = await engine.subscribe_streams(MARKET, info["streams"])
        if not reply.ok:
            raise RuntimeError(f"subscribe failed: {reply.error}")
        if engine.otel is not None:  # the start-up spans go out before the window
            await asyncio.to_thread(engine.otel.provider.force_flush, 30_000)
            otel_start = _otel_counters(engine)
        stats0 = dict(engine.managers[MARKET].stats())
        gc.collect()
        shim.ir_start()
        _emit("ready", {})
        finished = False
        async with asyncio.timeout(p["timeout_s"]):
            while not finished:
                batch = await consumer.next_batch()
                events += len(batch)
                for ev in batch:
                    if ev.seq == SENTINEL_TRADE_ID and ev.kind == "trade":
                        finished = True
            if engine.otel is not None:  # the window's spans are exported inside it
                await asyncio.to_thread(engine.otel.provider.force_flush, 30_000)
        shim.ir_stop(b"steady")
    except Exception as exc:  # the orchestrator reports it; the run is left out
        shim.ir_stop(b"failed")
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    stats = engine.managers[MARKET].stats()
    otel = {}
    if engine.otel is not None:
        end = _otel_counters(engine)
        if result["ok"]:  # one OTLP metric round, in a window of its own
            shim.ir_start()
            await engine.otel.export_metrics()
            shim.ir_stop(b"metrics")
        otel = {k: v - otel_start.get(k, 0.0) for k, v in end.items()}
    instruments = engine.conductor.status()["instruments"]

    def delta(key: str) -> int:
        return int(stats.get(key, 0)) - int(stats0.get(key, 0))

    result.update(
        frames=delta("frames") - delta("replies") - delta("pings"),
        batches=delta("batches"),
        events=events,
        parse_errors=delta("parse_errors"),
        resyncs=sum(int(i.get("resyncs", 0)) for i in instruments.values()),
        books_live=sum(1 for i in instruments.values() if i.get("state") == "live"),
        bus_dropped=int(consumer.dropped),
        otel=otel,
    )
    await engine.stop()
    _emit("result", result)


def gateway_main(shim_path: str) -> int:
    import uvloop

    sys.path.insert(0, str(HERE))
    shim = ctypes.CDLL(shim_path)
    shim.ir_stop.argtypes = [ctypes.c_char_p]
    p = json.loads(sys.stdin.readline())
    uvloop.run(_gateway(p, shim))
    return 0


# ---------------------------------------------------------------- callgrind output


def read_dumps(out_dir: Path) -> dict[str, int]:
    """Ir of each client-request dump (all threads aggregated), by its name."""
    out: dict[str, int] = {}
    for f in sorted(out_dir.iterdir()):
        if not f.name.startswith("cg.out"):
            continue
        name, total = "", 0
        with f.open() as fh:
            for line in fh:
                if line.startswith("desc: Trigger: Client Request: "):
                    name = line.split("Client Request: ", 1)[1].strip()
                elif line.startswith("totals:"):
                    total = int(line.split()[1])
        if name:
            out[name] = out.get(name, 0) + total
    return out


# ---------------------------------------------------------------- orchestration


def run_one(
    bench: Any,
    setting: str,
    extra: list[str],
    frames: int,
    shim: Path,
    out_dir: Path,
    timeout: float,
) -> dict[str, Any]:
    from bench_e2e import _call

    out_dir.mkdir(parents=True)
    info = _call(bench.conn, ("serve", "throughput", {"frames": frames}), "ready", 60)
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out_dir}/cg.out",
        sys.executable,
        str(Path(__file__).resolve()),
        "--gateway",
        str(shim),
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    env["PYTHONPATH"] = os.pathsep.join(x for x in (str(ROOT), env.get("PYTHONPATH", "")) if x)
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=open(out_dir / "valgrind.log", "w"),  # noqa: SIM115 -- closed with the process
        text=True,
        env=env,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps({"info": info, "extra": extra, "timeout_s": timeout}) + "\n")
    proc.stdin.flush()
    result: dict[str, Any] = {"ok": False, "error": "gateway ended early"}
    t_go = t_end = 0.0
    try:
        for line in proc.stdout:
            if not line.startswith("["):
                continue
            tag, body = json.loads(line)
            if tag == "ready":
                _call(bench.conn, ("go", {}), "started", 60)
                t_go = time.monotonic()
            elif tag == "result":
                t_end = time.monotonic()
                result = body
                break
        proc.wait(timeout + 120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sender = _call(bench.conn, ("stop",), "stopped", 60)
    ir = read_dumps(out_dir)
    result.update(
        setting=setting,
        count=frames,
        frames_sent=frames + 1,
        ir_total=ir.get("steady", 0),
        ir_metrics_round=ir.get("metrics"),
        go_to_end_s=round(t_end - t_go, 2) if t_go and t_end else None,
        run_s=round(time.monotonic() - t0, 1),
        sender_ok=bool(sender),
    )
    if "steady" not in ir:
        result["ok"] = False
        result.setdefault("error", "no callgrind dump 'steady'")
    return result


def _median(vals: list[float]) -> float:
    import statistics

    return float(statistics.median(vals)) if vals else 0.0


def summarize(runs: list[dict[str, Any]], n: int, rounds: int, rate: float) -> dict[str, Any]:
    """Per-frame Ir per round and setting, the ratios, and the expectation at ratio 0.01."""
    keys = ("pooled", "diff")
    ipf: dict[str, dict[str, dict[int, float]]] = {k: {s: {} for s in SETTINGS} for k in keys}
    for r in range(rounds):
        for s in SETTINGS:
            pair = {x["count"]: x for x in runs if x["round"] == r and x["setting"] == s}
            small, big = pair.get(n), pair.get(2 * n)
            if not (small and big and small.get("ok") and big.get("ok")):
                continue
            # both runs pooled: the windows' Ir over their frames
            ipf["pooled"][s][r] = (small["ir_total"] + big["ir_total"]) / (
                small["frames"] + big["frames"]
            )
            # (2N - N) ÷ N: frames N+1..2N, the same for every setting; what a window
            # holds once per run (the books' REST syncs and their spans) cancels
            ipf["diff"][s][r] = (big["ir_total"] - small["ir_total"]) / (
                big["frames"] - small["frames"]
            )

    def ratios(key: str, setting: str) -> list[float]:
        off = ipf[key]["off"]
        return [off[r] / v for r, v in ipf[key][setting].items() if r in off]

    def expected(key: str) -> tuple[float, float]:
        # ratio 0.01: each batch is sampled with probability 0.01, so the expected
        # extra per frame is 0.01 x (every batch sampled - none sampled)
        irs, rats = [], []
        d = ipf[key]
        for r in range(rounds):
            if all(r in d[s] for s in ("off", "zero", "all")):
                ir = d["zero"][r] + 0.01 * (d["all"][r] - d["zero"][r])
                irs.append(ir)
                rats.append(d["off"][r] / ir)
        return round(_median(irs), 2), round(_median(rats), 4)

    ok = {s: [x for x in runs if x["setting"] == s and x.get("ok")] for s in SETTINGS}
    # one OTLP metric round (measured in its own window), spread over the frames
    # a gateway at `rate` frames/s handles in one otlp_metrics_interval_s
    metric_round = _median([x["ir_metrics_round"] for x in ok["zero"] if x["ir_metrics_round"]])
    metrics_per_frame = metric_round / (rate * METRICS_INTERVAL_S)
    sampled = {
        s: int(sum(x["otel"].get("otel_batches_sampled", 0) for x in ok[s])) for s in SETTINGS
    }
    batches = {s: int(sum(x["batches"] for x in ok[s])) for s in SETTINGS}
    frames = {s: int(sum(x["frames"] for x in ok[s])) for s in SETTINGS}
    extra = sum(x["ir_total"] for x in ok["all"]) - sum(x["ir_total"] for x in ok["zero"])
    same = frames["all"] == frames["zero"] and sampled["all"]
    out: dict[str, Any] = {"ir_per_frame_by_round": ipf}
    for k in keys:
        med = {s: round(_median(list(ipf[k][s].values())), 2) for s in SETTINGS}
        out[k] = {
            "ir_per_frame": med,
            "ratio": {s: round(_median(ratios(k, s)), 4) for s in SETTINGS[1:]},
            "ratio_range": {
                s: [round(min(v), 4), round(max(v), 4)] if (v := ratios(k, s)) else []
                for s in SETTINGS[1:]
            },
            "ratio_with_metrics": {
                s: round(med["off"] / (med[s] + metrics_per_frame), 4) if med[s] else 0.0
                for s in SETTINGS[1:]
            },
        }
        e_ir, e_ratio = expected(k)
        out[k]["expected_default"] = {"ir_per_frame": e_ir, "ratio": e_ratio}
    out.update(
        metric_round_ir=round(metric_round),
        metric_ir_per_frame_at_rate=round(metrics_per_frame, 3),
        rate_for_metrics=rate,
        budget=BUDGETS,
        frames=frames,
        batches=batches,
        frames_per_batch={s: round(frames[s] / max(1, batches[s]), 1) for s in SETTINGS},
        batches_sampled=sampled,
        # ratio 1 - ratio 0 on the same frames, over the batches sampled
        ir_per_sampled_batch=round(extra / sampled["all"]) if same else None,
        spans_exported={
            s: int(sum(x["otel"].get("otel_spans{exported}", 0) for x in ok[s])) for s in SETTINGS
        },
    )
    return out


def annotate(out_dir: Path, top: int) -> str:
    """callgrind_annotate (exclusive Ir, top functions) of a run's dumps."""
    text = []
    for f in sorted(out_dir.iterdir()):
        if not f.name.startswith("cg.out"):
            continue
        head = f.read_text(errors="replace")
        total = re.search(r"^totals: (\d+)", head, re.M)
        if not total or int(total.group(1)) < 100_000:
            continue  # an idle thread
        proc = subprocess.run(
            ["callgrind_annotate", "--threshold=99", str(f)],
            capture_output=True,
            text=True,
            check=False,
        )
        lines = proc.stdout.splitlines()
        start = next((i for i, x in enumerate(lines) if "file:function" in x), 0)
        text.append(f"### {out_dir.name}/{f.name}\n" + "\n".join(lines[start : start + top + 2]))
    return "\n\n".join(text)


def table(s: dict[str, Any], n: int, rounds: int) -> str:
    def row(label: str, values: list[str]) -> str:
        return f"| {label} | " + " | ".join(values) + " |"

    rows = [
        "| measure | tracing off | on, ratio 0.01 | on, ratio 0 | on, ratio 1 |",
        "|---|---:|---:|---:|---:|",
    ]
    for k, label in (("diff", "(2N - N) ÷ N"), ("pooled", "N and 2N pooled")):
        d = s[k]
        rows += [
            row(
                f"Ir per frame, {label} (median of rounds)",
                [f"{d['ir_per_frame'][x]:,.1f}" for x in SETTINGS],
            ),
            row(
                f"off ÷ on, {label} (median of per-round ratios)",
                ["-"] + [f"{d['ratio'][x]:.4f}" for x in SETTINGS[1:]],
            ),
            row(
                f"off ÷ on, {label}, lowest - highest round",
                ["-"] + [" - ".join(f"{v:.4f}" for v in d["ratio_range"][x]) for x in SETTINGS[1:]],
            ),
            row(
                f"off ÷ on, {label}, ratio 0.01 expected from ratio 0 and 1",
                ["-", f"{d['expected_default']['ratio']:.4f}", "", ""],
            ),
        ]
    rows += [
        row(
            f"off ÷ on, (2N - N) ÷ N, with OTLP metric rounds at {s['rate_for_metrics']:,.0f} f/s",
            ["-"] + [f"{s['diff']['ratio_with_metrics'][x]:.4f}" for x in SETTINGS[1:]],
        ),
        row("frames per batch", [f"{s['frames_per_batch'][x]:,.1f}" for x in SETTINGS]),
        row(
            "batches sampled / batches",
            [f"{s['batches_sampled'][x]:,} / {s['batches'][x]:,}" for x in SETTINGS],
        ),
        row("spans exported in the windows", [f"{s['spans_exported'][x]:,}" for x in SETTINGS]),
    ]
    xb = s["ir_per_sampled_batch"]
    foot = [
        f"N = {n:,} frames; {rounds} round(s), each setting at N and 2N frames.",
        (f"One sampled batch costs {xb:,} Ir." if xb is not None else "Sampled batch: n/a"),
        f"One OTLP metric round (its own window) costs {s['metric_round_ir']:,} Ir: "
        f"{s['metric_ir_per_frame_at_rate']:.3f} Ir/frame at {s['rate_for_metrics']:,.0f} "
        f"frames/s and one round per {METRICS_INTERVAL_S:g} s.",
    ]
    return "\n".join(rows) + "\n\n" + "\n".join(foot)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gateway", metavar="SHIM", help=argparse.SUPPRESS)
    ap.add_argument("--frames", type=int, default=200_000, help="N (each setting runs N and 2N)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--symbols", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--rate",
        type=float,
        default=1_000_000,
        help="frames/s a real gateway handles, to spread an OTLP metric round over frames",
    )
    ap.add_argument("--timeout", type=float, default=600.0, help="per run, seconds")
    ap.add_argument("--annotate", action="store_true", help="top functions of the last round")
    ap.add_argument("--top", type=int, default=30, help="functions per thread with --annotate")
    ap.add_argument("--keep", type=Path, help="keep the callgrind files in this directory")
    ap.add_argument("--json", type=Path, default=RESULTS / "tracing-ir.json")
    args = ap.parse_args()
    if args.gateway:
        return gateway_main(args.gateway)
    for tool in ("valgrind", os.environ.get("CC", "cc")):
        if shutil.which(tool) is None:
            print(f"{tool} not found: this benchmark needs valgrind and a C compiler")
            return 2
    sys.path.insert(0, str(HERE))
    from bench_e2e import Bench, start_otlp_sink, tracing_configs

    work = args.keep or Path(tempfile.mkdtemp(prefix="tracing-ir-"))
    work.mkdir(parents=True, exist_ok=True)
    shim = build_shim(work)
    sink = start_otlp_sink()
    # the metric round is counted on its own (docstring)
    configs = tracing_configs(sink.url, SETTINGS, ["telemetry.otlp_metrics_interval_s=3600"])
    n = args.frames
    bench = Bench(2 * n, args.symbols, args.seed, [])
    runs: list[dict[str, Any]] = []
    t0 = time.monotonic()
    try:
        for r in range(args.rounds):
            for count in (n, 2 * n):
                order = SETTINGS[r % 4 :] + SETTINGS[: r % 4]
                for s in order:
                    res = run_one(
                        bench,
                        s,
                        configs[s],
                        count,
                        shim,
                        work / f"r{r}-{count}-{s}",
                        args.timeout,
                    )
                    res["round"] = r
                    runs.append(res)
                    _log(
                        f"round {r} {s} {count:,}: "
                        + (
                            f"{res['ir_total']:,} Ir "
                            f"({res['ir_total'] / max(1, res['frames']):,.1f}"
                            f"/frame), {res['frames']:,} frames in "
                            f"{res['batches']:,} batches, sampled "
                            f"{res['otel'].get('otel_batches_sampled', 0):.0f}, "
                            f"go to end {res['go_to_end_s']} s, "
                            f"run {res['run_s']} s"
                            if res.get("ok")
                            else f"FAILED {res.get('error')} (see {work})"
                        )
                    )
        sink_counts = sink.counts()
    finally:
        bench.close()
        sink.stop()
    summary = summarize(runs, n, args.rounds, args.rate)
    print(table(summary, n, args.rounds))
    notes = ""
    if args.annotate:
        last = args.rounds - 1
        for s in SETTINGS:
            notes += f"\n## {s}\n" + annotate(work / f"r{last}-{2 * n}-{s}", args.top) + "\n"
        print(notes)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "host": platform.node(),
                "command": " ".join(sys.argv),
                "valgrind": subprocess.run(
                    ["valgrind", "--version"], capture_output=True, text=True, check=False
                ).stdout.strip(),
                "frames_n": n,
                "rounds": args.rounds,
                "summary": summary,
                "runs": runs,
                "sink": sink_counts,
                "elapsed_s": round(time.monotonic() - t0, 1),
            },
            indent=1,
        )
    )
    _log(f"results: {args.json}; callgrind files: {work}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

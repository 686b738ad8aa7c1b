"""Scale-out: events/s into JetStream from 1 and from 2 gateway processes on disjoint shards.

Set-up, all on loopback and all started by this script:

- one ``nats-server -js`` (its store in a temporary directory); the gateways
  create the stream (``nats.storage=memory`` by default, ``nats.max_bytes``
  bounding it: the oldest messages go, the sequence keeps counting);
- per run, a fresh fake exchange process (``meltica-engine fake-exchange
  --synthetic --speed max``) serving a large synthetic market (``--symbols``
  per market, streams trade, book_ticker and depth), as fast as its slowest
  subscribed connection reads;
- per run, 1 or 2 real ``meltica-engine run`` processes with the same config
  (every symbol of the market, ``bus.backend=nats``): ``gateway.shard`` "0/1"
  for one, "0/2" and "1/2" for two, so the two subscribe disjoint halves.

What is counted: once every gateway's ``meltica_nats_acked_total`` (its
``/metrics``) is growing and ``--warmup`` seconds have passed, the stream's
last sequence number (``stream_info().state.last_seq``: every message
JetStream stored) is read at the start and the end of a ``--seconds``
interval; rate = stored messages / interval.  Each gateway's own acked count
over the same interval is reported beside it (their sum is the stream's count
up to the instants the two are read: the shards publish disjoint keys, so
nothing is deduplicated away), and so are the CPU seconds of each process over
the interval (``/proc``), as % of one core and as µs per stored event, and
what the machine's other processes took.  The gateways' CPU per stored event,
summed over the gateways of a run, gives a second ratio that the machine's
other load moves less: the gateway-side CPU efficiency = that sum with 1
gateway / with 2.

Rounds interleave the two set-ups (1 first in even rounds, 2 first in odd
ones) so machine drift hits both alike; the table gives medians over rounds,
and the scaling efficiency = median rate with 2 / (2 x median rate with 1),
plus the same ratio taken within each round.

This machine has 2 cores: nats-server, the fake exchange and the gateways
all share them, so the second gateway competes for the same CPU as the
first; the CPU columns show where the time goes.  The figures measure this
box, not the design's ceiling (docs/deployment.md, "Scaling out", explains
where the limit moves with n machines).

Run (from the repository root):
    PYTHONPATH=. .venv/bin/python bench/bench_scaleout.py [--symbols 64] [--rounds 5] \
        [--seconds 10] [--warmup 3] [--markets spot] [--storage memory|file] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

ROOT = str(Path(__file__).resolve().parents[1])
sys.path.insert(0, ROOT)  # this checkout, not an installed copy
# ... and the same for the child processes (``python -P -m meltica``)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)

import aiohttp  # noqa: E402
import nats  # noqa: E402
import uvloop  # noqa: E402
from harness import cpu_model, free_port, start_nats, stop_process  # noqa: E402

from meltica.commands.common import FakeProcess, local_overrides  # noqa: E402
from meltica.replay.synthetic import SyntheticMarket  # noqa: E402

STREAMS: Final = ("trade", "book_ticker", "depth")
STREAM_NAME: Final = "MELTICA"
SETUPS: Final = (1, 2)
_ACKED = re.compile(rb"^meltica_nats_acked_total(?:\{[^}]*\})? (\S+)$", re.MULTILINE)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all cores from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return float(sum(values) - idle), float(sum(values))


@dataclass
class Gateway:
    name: str
    proc: asyncio.subprocess.Process
    metrics_url: str
    log: Path

    async def acked(self, http: aiohttp.ClientSession) -> float | None:
        try:
            async with http.get(self.metrics_url) as resp:
                body = await resp.read()
        except (aiohttp.ClientError, TimeoutError):
            return None
        m = _ACKED.search(body)
        return float(m.group(1)) if m else None

    async def stop(self) -> None:
        await stop_process(self.proc, 20)

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-1500:]
        except OSError:
            return ""


def gateway_argv(
    args: argparse.Namespace,
    fake: FakeProcess,
    symbols: dict[str, list[str]],
    nats_url: str,
    name: str,
    shard: str,
    port: int,
) -> list[str]:
    overrides = [
        *local_overrides(
            {m: fake.ws_urls[m] for m in symbols},
            fake.rest_url,
            symbols=symbols,
            streams={m: list(STREAMS) for m in symbols},
        ),
        "bus.backend=nats",
        f"nats.url={nats_url}",
        f"nats.stream={STREAM_NAME}",
        f"nats.storage={args.storage}",
        f"nats.max_bytes={args.max_bytes}",
        f"gateway.id={name}",
        f"gateway.shard={shard}",
        "telemetry.metrics_host=127.0.0.1",
        f"telemetry.metrics_port={port}",
        *args.set,
    ]
    argv = [sys.executable, "-P", "-m", "meltica", "--log-level", "WARNING", "run"]
    for o in overrides:
        argv += ["--set", o]
    return argv


async def fresh_stream(nc: Any) -> None:
    js = nc.jetstream()
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await js.delete_stream(STREAM_NAME)


async def last_seq(nc: Any) -> int:
    info = await nc.jetstream().stream_info(STREAM_NAME)
    return int(info.state.last_seq)


async def one_run(
    args: argparse.Namespace,
    n: int,
    nats_url: str,
    nats_pid: int,
    admin: Any,
    logs: Path,
    symbols: dict[str, list[str]],
    tag: str,
) -> dict[str, Any]:
    """``n`` gateways on shards 0/n .. n-1/n of one fresh fake exchange."""
    await fresh_stream(admin)
    fake = await FakeProcess.start(
        [
            "--synthetic",
            "--markets",
            ",".join(args.markets),
            "--symbols",
            str(args.symbols),
            "--seed",
            str(args.seed),
            "--speed",
            "max",
        ]
    )
    gateways: list[Gateway] = []
    try:
        for i in range(n):
            name = f"scale-{i}of{n}"
            port = free_port()
            log = logs / f"{tag}-{name}.log"
            with log.open("wb") as out:
                proc = await asyncio.create_subprocess_exec(
                    *gateway_argv(args, fake, symbols, nats_url, name, f"{i}/{n}", port),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            gateways.append(Gateway(name, proc, f"http://127.0.0.1:{port}/metrics", log))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            # every gateway publishing (its acked count growing), then the warm-up
            deadline = time.monotonic() + args.start_timeout
            first: dict[str, float] = {}
            while True:
                for g in gateways:
                    if g.proc.returncode is not None:
                        raise RuntimeError(f"{g.name} exited ({g.proc.returncode}): {g.tail()}")
                    acked = await g.acked(http)
                    if acked is None:
                        continue
                    if g.name not in first:
                        first[g.name] = acked
                if len(first) == n:
                    now = [await g.acked(http) for g in gateways]
                    if all((a or 0) > first[g.name] for g, a in zip(gateways, now, strict=True)):
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"gateways not publishing within {args.start_timeout} s: "
                        + "; ".join(f"{g.name}: {g.tail()}" for g in gateways)
                    )
                await asyncio.sleep(0.25)
            await asyncio.sleep(args.warmup)

            pids = {"nats-server": nats_pid, "fake-exchange": fake.proc.pid}
            pids |= {g.name: g.proc.pid for g in gateways}
            acked0 = [await g.acked(http) for g in gateways]
            seq0 = await last_seq(admin)
            cpu0 = {k: cpu_s(p) for k, p in pids.items()}
            busy0 = machine_busy()
            t0 = time.perf_counter()
            await asyncio.sleep(args.seconds)
            seq1 = await last_seq(admin)
            t1 = time.perf_counter()
            busy1 = machine_busy()
            cpu1 = {k: cpu_s(p) for k, p in pids.items()}
            acked1 = [await g.acked(http) for g in gateways]
        for g in gateways:
            if g.proc.returncode is not None:
                raise RuntimeError(f"{g.name} exited ({g.proc.returncode}): {g.tail()}")
        elapsed = t1 - t0
        per_gateway = {
            g.name: round(((b or 0) - (a or 0)) / elapsed)
            for g, a, b in zip(gateways, acked0, acked1, strict=True)
        }
        stored = seq1 - seq0
        cpu = {k: cpu1[k] - cpu0[k] for k in pids}
        cores = os.cpu_count() or 1
        busy_pct = 100 * (busy1[0] - busy0[0]) / (busy1[1] - busy0[1])
        return {
            "ok": True,
            "gateways": n,
            "interval_s": round(elapsed, 3),
            "stored": stored,
            "events_per_s": round(stored / elapsed),
            "acked_per_s": per_gateway,
            "cpu_pct": {k: round(100 * v / elapsed) for k, v in cpu.items()},
            # CPU time per stored event: what one event costs each process
            "cpu_us_per_event": {k: round(v / max(stored, 1) * 1e6, 2) for k, v in cpu.items()},
            # all cores busy, in % of all of them; and what processes not of this run took,
            # in % of one core (the machine is shared)
            "machine_busy_pct": round(busy_pct),
            "others_pct": round(busy_pct * cores - 100 * sum(cpu.values()) / elapsed),
        }
    finally:
        for g in gateways:
            await g.stop()
        await fake.stop()


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    source = SyntheticMarket(
        markets=tuple(args.markets), symbols_per_market=args.symbols, seed=args.seed
    )
    symbols = {m: list(source.symbols(m)) for m in args.markets}
    with tempfile.TemporaryDirectory() as tmp:
        server, url = start_nats(str(Path(tmp) / "store"))
        logs = Path(tmp)
        admin = await nats.connect(url)
        runs: dict[int, list[dict[str, Any]]] = {k: [] for k in SETUPS}
        try:
            for r in range(args.rounds):
                for n in SETUPS if r % 2 == 0 else SETUPS[::-1]:
                    try:
                        res = await one_run(args, n, url, server.pid, admin, logs, symbols, f"r{r}")
                    except (RuntimeError, OSError, TimeoutError) as exc:
                        res = {"ok": False, "gateways": n, "error": str(exc)[-1500:]}
                    res["round"] = r
                    runs[n].append(res)
                    _log(f"round {r}, {n} gateway(s): {_fmt(res)}")
        finally:
            await admin.close()
            server.terminate()
            server.wait(10)
    return summarise(args, runs)


def _fmt(res: dict[str, Any]) -> str:
    if not res.get("ok"):
        return f"FAILED: {res.get('error')}"
    cpu = ", ".join(f"{k} {v}%" for k, v in res["cpu_pct"].items())
    return (
        f"{res['events_per_s']:,} events/s into JetStream "
        f"(per gateway acked/s: {res['acked_per_s']}); cpu: {cpu}; "
        f"machine busy {res['machine_busy_pct']}%, other processes {res['others_pct']}% of a core"
    )


def summarise(args: argparse.Namespace, runs: dict[int, list[dict[str, Any]]]) -> dict[str, Any]:
    ok = {n: [x for x in runs[n] if x.get("ok")] for n in SETUPS}
    med = {
        n: statistics.median(x["events_per_s"] for x in ok[n]) if ok[n] else None for n in SETUPS
    }
    eff = med[2] / (2 * med[1]) if med[1] and med[2] else None
    paired = [
        b["events_per_s"] / (2 * a["events_per_s"])
        for a in ok[1]
        for b in ok[2]
        if a["round"] == b["round"]
    ]

    def med_of(n: int, field: str) -> dict[str, float]:
        keys = ok[n][0][field].keys() if ok[n] else ()
        return {k: statistics.median(x[field][k] for x in ok[n]) for k in keys}

    # CPU per stored event of all gateways together: independent of how much CPU the
    # machine's other load left to this run, so the gateways' own scaling shows through
    gw_us = {
        n: statistics.median(
            sum(v for k, v in x["cpu_us_per_event"].items() if k.startswith("scale-"))
            for x in ok[n]
        )
        if ok[n]
        else None
        for n in SETUPS
    }
    return {
        "gateway_cpu_us_per_event": gw_us,
        "gateway_cpu_efficiency": round(gw_us[1] / gw_us[2], 3) if gw_us[1] and gw_us[2] else None,
        "markets": args.markets,
        "symbols_per_market": args.symbols,
        "streams": list(STREAMS),
        "storage": args.storage,
        "rounds": args.rounds,
        "seconds": args.seconds,
        "runs": runs,
        "ok_runs": {n: len(ok[n]) for n in SETUPS},
        "median_events_per_s": med,
        "scaling_efficiency": round(eff, 3) if eff is not None else None,
        "scaling_efficiency_per_round_median": round(statistics.median(paired), 3)
        if paired
        else None,
        "median_cpu_pct": {n: med_of(n, "cpu_pct") for n in SETUPS},
        "median_cpu_us_per_event": {n: med_of(n, "cpu_us_per_event") for n in SETUPS},
        "median_machine_busy_pct": {
            n: statistics.median(x["machine_busy_pct"] for x in ok[n]) if ok[n] else None
            for n in SETUPS
        },
        "median_others_pct": {
            n: statistics.median(x["others_pct"] for x in ok[n]) if ok[n] else None for n in SETUPS
        },
    }


def machine() -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg": os.getloadavg(),
    }


def report(res: dict[str, Any]) -> None:
    m = res["machine"]
    print(f"command: {res['command']}")
    print(f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}")
    print(f"         load avg at the end {' '.join(f'{x:.2f}' for x in m['loadavg'])}")
    print(
        f"NOTE: all on this {m['cores']}-core machine: nats-server, the fake exchange and every "
        "gateway share the cores, so a second gateway adds a process, not a machine."
    )
    print(
        f"market: synthetic {','.join(res['markets'])}, {res['symbols_per_market']} symbols per "
        f"market, streams {','.join(res['streams'])}, fake exchange at max speed; stream storage "
        f"{res['storage']}; {res['rounds']} rounds of {res['seconds']:g} s per set-up"
    )
    print()
    print(
        "| gateways | shards | ok runs | median events/s into JetStream | median CPU, % of one "
        "core (µs per event) | machine busy | other processes, % of a core |"
    )
    print("|---|---|---|---|---|---|---|")
    for n in SETUPS:
        shards = ", ".join(f"{i}/{n}" for i in range(n))
        rate = res["median_events_per_s"][n]
        if rate is None:
            print(f"| {n} | {shards} | 0/{res['rounds']} | - | - | - | - |")
            continue
        per = res["median_cpu_us_per_event"][n]
        cpu = ", ".join(f"{k} {v:g} ({per[k]:g})" for k, v in res["median_cpu_pct"][n].items())
        print(
            f"| {n} | {shards} | {res['ok_runs'][n]}/{res['rounds']} | {rate:,.0f} | {cpu} | "
            f"{res['median_machine_busy_pct'][n]}% | {res['median_others_pct'][n]}% |"
        )
    print()
    print(
        f"scaling efficiency rate2 / (2 x rate1): {res['scaling_efficiency']} "
        f"(median of the per-round ratios: {res['scaling_efficiency_per_round_median']})"
    )
    gw = res["gateway_cpu_us_per_event"]
    if gw[1] and gw[2]:
        print(
            f"gateway CPU per stored event (all gateways of the run): {gw[1]:.2f} µs with 1, "
            f"{gw[2]:.2f} µs with 2; gateway-side CPU efficiency {res['gateway_cpu_efficiency']}"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--symbols", type=int, default=64, help="synthetic symbols per market (64)")
    p.add_argument(
        "--markets",
        type=lambda s: [m.strip() for m in s.split(",") if m.strip()],
        default=["spot"],
        help="synthetic markets, comma-separated (spot)",
    )
    p.add_argument("--seed", type=int, default=1, help="synthetic market seed (1)")
    p.add_argument("--rounds", type=int, default=5, help="rounds of each set-up (5)")
    p.add_argument("--seconds", type=float, default=10.0, help="measured interval per run (10)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring (3)")
    p.add_argument(
        "--start-timeout", type=float, default=90.0, help="seconds for gateways to publish (90)"
    )
    p.add_argument("--storage", choices=("memory", "file"), default="memory")
    p.add_argument(
        "--max-bytes", type=int, default=1 << 28, help="nats.max_bytes of the stream (256 MiB)"
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="gateway override"
    )
    p.add_argument("--json", metavar="OUT", help="write the results as JSON")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.seconds <= 0 or args.symbols < 2:
        p.error("--rounds >= 1, --seconds > 0 and --symbols >= 2")
    command = " ".join([Path(sys.executable).name, *sys.argv])
    try:
        res = uvloop.run(bench(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted", file=sys.stderr)
        return 130
    res["machine"] = machine()
    res["command"] = command
    report(res)
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2, default=str) + "\n")
        print(f"wrote {out}")
    return 0 if all(res["ok_runs"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())

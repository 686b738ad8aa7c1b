"""The whole Binance market on one gateway process: sync time, memory, CPU, latency, headroom.

Set-up, on loopback, every piece started by this script:

- a fake exchange in its own process (``bench_full_market.py serve``, below), serving
  ``SyntheticMarket.binance()``: ``--symbols`` split 4:1 between spot and USD-M (the default
  2,400 = 1,920 + 480, the top of Binance's 1,500-2,000 spot and 400-500 USD-M), each with
  trade, aggTrade, bookTicker and depth@100ms at the Zipf-distributed rates of
  docs/fake-exchange.md ("The whole market"), paced at the modelled rate (recorded time);
  with Binance's limits (1024 streams per connection, 5 / 10 messages per second,
  300 connection attempts per 5 min, REST weight 6000 / 2400 per minute);
- one real ``meltica-engine run`` process subscribing every symbol's trade, book_ticker and
  depth on both markets (``bus.backend=memory``); it packs its connections itself
  (``max_streams_per_connection``, 1024 spot / 200 USD-M by default) and fetches one REST
  depth snapshot per book within its weight budget (``rest_weight_limit_per_minute`` x
  ``rest_weight_budget_fraction``, default half of 6000 / 2400).

Reported, from the gateway's ``/metrics`` and ``/proc/<pid>``:

- time from the gateway's start until every book is live (``meltica_book_live``), next to
  the lower bound the REST budget allows: per market, books x snapshot weight / budget per
  minute; the bound is the larger market's.  (``--depth-limit``, default 100 levels, weight
  5 on both markets, keeps a default run short; the bound is printed for the limit used.)
  The gateway's budget counts clock-minute windows, so the first window's budget is there at
  once: the window bound (the start of the window in which the last snapshot can be admitted)
  is printed beside it.  Budget: live within 1.2 x the rate bound.
- RSS of the gateway in total and per live book; CPU of the gateway per 10k frames/s
  (``/proc/<pid>/stat`` user + system over the ``--duration`` window, divided by the frames
  it received: ``meltica_ws_frames_total``); p99 of ``meltica_pipeline_latency_seconds``
  (receive -> Data Bus publish, per batch) over the window, as the upper bound of the bucket
  it falls in; gaps, disconnects and paused readers in the window.  Budget: the whole market
  at the modelled rate uses at most half a core.
- headroom: the fake exchange's clock is sped up (``--speeds``, default 2, 4, 8, 12, 16, 20, 24,
  32 x; every stream's rate scales; a ``--step-duration`` window each, default 10 s) until the
  first budget breaks: the gateway over half a core (the whole-market budget), over one core, p99
  over ``--p99-bound-ms``, the gateway receiving less than 90 % of what the fake sent, a paused
  reader, a gap or disconnect, or a ``/metrics`` scrape unanswered for 20 s. Generating the
  market costs the fake far more than sending it, so
  before each step it drops back to 1x and generates the step's market ahead of the stream
  (``meltica/replay/runahead.py``: at most 5M frames, about 1.9 GB), then serves that buffer at
  the step's speed, sending frames due within the next millisecond together (``FakeExchange``'s
  quantum); during a step it only sends. A step where it sends less than 90 % of the asked rate is
  marked, and once its rate stops growing (< 10 % more than the step before) the climb stops: the
  gateway's headroom is then above what this set-up can offer, and the report says so. Measured on
  2026-12-05 (``--curve '' --speeds 16,20,24,28``, load average 1.5-1.7): the half-core budget
  breaks first, held at 16x (154k frames/s offered and received, 0.46 of a core, p99 within 1 ms)
  and broken at 20x (193k frames/s, 0.54 of a core); the fake sent what was asked up to 32x (293k
  frames/s at 0.64 of a core). docs/benchmarks.md ("Full market") has both runs.
- generation: how fast one process generates the full market alone (no serving), in frames
  per CPU second and as a share of a core at the modelled rate.
- curves: the same run (without headroom) at ``--curve`` symbol counts (default 10, 100,
  600) plus the full one, every point offered the SAME total frame rate: the full market's
  modelled rate.  Each smaller market's clock is sped up by (full market's frames per
  market second) / (its own), both counted offline by generating the first
  ``--rate-seconds`` of the same seeded market for the streams the gateway subscribes
  (``offered_rate``), so the curve isolates the cost of the symbol count from the cost of
  the rate (fixed per-second costs and frames per socket read depend on the rate).  Per
  point: RSS per live book (total / books, and the RSS each step adds over the previous,
  smaller point per added book); CPU per frame at that rate; the gateway's CPU with the
  same books live and the fake paused (``--idle`` s, last; the fake's clock slowed to a
  standstill), and CPU per frame net of it; and, labelled natural, CPU per frame at the
  market's own rate (``--no-same-rate`` runs the curve at natural rates only).  Budget:
  "flat" from 10 to 2,400 symbols is max / min <= 1.5 over every point, for the added
  RSS per added book (its first value is the 10 -> 100 step) and for CPU per frame at the
  same offered rate.  The net and natural figures are reported, not judged; so are the
  offered mix of depth diffs / bookTickers / trades per point (``offered_mix``: it changes
  with the symbol count) and a least-squares fit of CPU per frame to one cost per diff and
  one per other frame over the points (``cpu_per_frame_mix_fit``).  This is the
  whole-feed curve (``curve`` in the JSON; ``--no-whole-feed`` leaves it and the full
  market's run out).
- per-kind curve (``kind_curve`` in the JSON): because the whole feed's mix changes with the
  symbol count, CPU per event is also measured one kind at a time.  At every curve symbol
  count and the full one, a gateway subscribing ONE kind (``--kinds``, default trade,
  book_ticker, depth; ``''`` for none) on every symbol, the market's clock sped up by (the
  full market's frames of that kind per market second) / (its own), counted as above, so
  every point of a kind is offered the same rate of the same kind: the full market's.
  One ``--duration`` window at that rate (no natural-rate window), then the paused one.
  Without depth no book goes live: a run starts once the gateway has every connection it
  wants open and frames arrive.  CPU per frame is read between the scrapes as above, from
  the scheduler's nanosecond clock (``sched_us_per_frame``: the threads' run time in
  ``/proc/<pid>/task/*/schedstat``) beside the 10 ms ticks of ``/proc/<pid>/stat``
  (``cpu_us_per_frame``; a trade-only window at ~1k frames/s holds only a few ticks).
  Budget: for each kind, max / min <= 1.5 of ``sched_us_per_frame`` over its points
  (``per_kind`` in the budgets; a kind with a point missing is not judged).  Net of the
  paused CPU is reported, not judged.
- start-up trace: per market, every 5 s until every book is live, the books live and the
  REST client's weight, requests, queue and held requests, and the gateway's RSS
  (``sync_trace`` in the JSON).

The machine is a shared 2-core VM: the load average is recorded next to each figure, and
the fake exchange (one core at most) shares it with the gateway.  A JSON document goes to
``--json`` (default bench/results/full_market.json) and, with matplotlib, the curves to
``--png`` (memory and whole-feed CPU; CPU per frame of each kind in a third panel).

Run (from the repository root):
    PYTHONPATH=. .venv/bin/python bench/bench_full_market.py [--symbols 2400] [--duration 20]
        [--curve 10,100,600] [--speeds 2,4,8,12,16,20,24,32] [--step-duration 10]
        [--depth-limit 100] [--idle 10] [--same-rate | --no-same-rate] [--rate-seconds 20]
        [--kinds trade,book_ticker,depth] [--whole-feed | --no-whole-feed] [--json OUT] [--png OUT]
    (``--curve ''`` runs the full market only; ``--speeds ''`` skips the headroom; ``--kinds ''``
    skips the per-kind curve)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout, not an installed copy
# ... and the same for the child processes (``python -P -m meltica``)
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p
)

import aiohttp  # noqa: E402
import yaml  # noqa: E402
from harness import free_port, stop_process  # noqa: E402

from meltica.replay.synthetic import SyntheticMarket  # noqa: E402

RESULTS: Final = ROOT / "bench" / "results"
STREAMS: Final = ("trade", "book_ticker", "depth")
# the gateway's stream names -> the fake's (``offered_mix``)
KIND_STREAM: Final = {"trade": "trade", "book_ticker": "bookTicker", "depth": "depth"}
# REST weight of a depth snapshot by limit (docs/rest.md); spot charges per band.
_SPOT_WEIGHT: Final = ((100, 5), (500, 25), (1000, 50), (5000, 250))
_FUTURES_WEIGHT: Final = ((50, 2), (100, 5), (500, 10), (1000, 20))
# per market, every 5 s until every book is live: where the start-up time goes
_SYNC_TRACE: Final = (
    "meltica_book_live",
    "meltica_rest_weight_used_total",
    "meltica_rest_requests_total",
    "meltica_rest_queue_depth",
    "meltica_rest_in_flight",
    "meltica_rest_deferred_total",
    "meltica_rest_retries_total",
    "meltica_book_refetches_total",
    "meltica_book_snapshot_errors_total",
)
_PAUSED: Final = 1e-9  # the fake's clock speed that stands for "paused"
_LIVE_BUDGET: Final = 1.2
_CPU_BUDGET_CORES: Final = 0.5
_SCRAPE_S: Final = 20.0  # a /metrics scrape unanswered this long breaks the step
_FLAT_BUDGET: Final = 1.5
# headroom run-ahead (meltica/replay/runahead.py): at most this many frames generated ahead
# (about 370 bytes each: ~1.9 GB), the market seconds a step reads beyond settle + window,
# and how long one step's generation may take
_AHEAD_CAPACITY: Final = 5_000_000
_AHEAD_MARGIN_S: Final = 3.0
_AHEAD_TIMEOUT_S: Final = 900.0
_PACE_QUANTUM_S: Final = 0.001
_LINE = re.compile(rb"^(meltica_[a-z_]+)(\{[^}]*\})? (\S+)$", re.MULTILINE)
_LE = re.compile(rb'le="([^"]+)"')
_MARKET = re.compile(rb'market="([^"]+)"')


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def split_symbols(total: int) -> tuple[int, int]:
    """``total`` symbols as (spot, usdm), 4:1 like 1,800 : 450 (at least one spot)."""
    usdm = total // 5
    return total - usdm, usdm


def snapshot_weight(market: str, limit: int) -> int:
    for top, weight in _SPOT_WEIGHT if market == "spot" else _FUTURES_WEIGHT:
        if limit <= top:
            return weight
    raise SystemExit(f"--depth-limit {limit} is above {market}'s maximum")


def lower_bounds(
    counts: dict[str, int], limit: int, fraction: float, start_s_in_minute: float
) -> dict[str, Any]:
    """The REST budget's lower bounds on the time until every book is live, per market."""
    per_minute = {"spot": 6000 * fraction, "usdm": 2400 * fraction}
    out: dict[str, Any] = {}
    for market, n in counts.items():
        if not n:
            continue
        weight = snapshot_weight(market, limit)
        total = n * weight
        windows = math.ceil(total / per_minute[market])
        # the first window's budget is there at once; the last snapshot is admitted at the
        # start of window number ``windows`` (counting the current one as 1)
        window_bound = 0.0 if windows <= 1 else (60 - start_s_in_minute) + 60 * (windows - 2)
        out[market] = {
            "books": n,
            "weight": weight,
            "budget_per_min": per_minute[market],
            "rate_bound_s": round(60 * total / per_minute[market], 1),
            "window_bound_s": round(window_bound, 1),
        }
    return out


# ---------------------------------------------------------------- the fake exchange process


async def serve(args: argparse.Namespace) -> int:
    """The fake exchange: prints its URLs, then answers ``speed X``, ``ahead S`` (generate
    ``S`` seconds of the market ahead of the stream, ``RunAhead``) and ``stats`` on stdin."""
    from meltica.replay.exchange import FakeExchange
    from meltica.replay.runahead import RunAhead

    market = SyntheticMarket.binance(spot=args.spot, usdm=args.usdm, seed=args.seed)
    source = RunAhead(market, _AHEAD_CAPACITY)
    exchange = FakeExchange(source, speed=1.0)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def commands() -> None:
        while line := (await reader.readline()).decode().split():
            if line[0] == "speed":
                exchange.speed = float(line[1])
            elif line[0] == "quantum":
                exchange.quantum = float(line[1])
            elif line[0] == "ahead":
                t0 = time.process_time()
                # millions of buffered frames: no collection scans them while they pile up,
                # nor afterwards (frozen; each is still freed as it is sent)
                gc.disable()
                try:
                    await source.run_ahead(float(line[1]))
                finally:
                    gc.freeze()
                    gc.enable()
                cpu = time.process_time() - t0
            reply = {
                "frames_read": exchange.frames_read,
                "frames_published": exchange.frames_published,
                "ahead_s": round(source.ahead_s(), 1),
                "buffered": source.buffered,
                "ws": {m: dataclasses.asdict(s.counters) for m, s in exchange.ws.items()},
            }
            if line[0] == "ahead":
                reply["ahead_cpu_s"] = round(cpu, 1)
            print(json.dumps(reply), flush=True)
        stop.set()

    async with exchange:
        for m in market.markets:
            print(f"ws {m}: {exchange.ws_url(m)}", flush=True)
        print(f"rest: {exchange.rest_url}", flush=True)
        task = asyncio.ensure_future(commands())
        task.add_done_callback(lambda _t: stop.set())  # its error, if any, shows below
        await stop.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return 0


class Fake:
    """The fake exchange child process, spoken to over its stdin / stdout."""

    def __init__(self, proc: asyncio.subprocess.Process, ws: dict[str, str], rest: str) -> None:
        self.proc, self.ws, self.rest = proc, ws, rest

    @classmethod
    async def start(cls, spot: int, usdm: int, seed: int) -> Fake:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "serve",
            "--spot",
            str(spot),
            "--usdm",
            str(usdm),
            "--seed",
            str(seed),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        ws: dict[str, str] = {}
        rest = ""
        async with asyncio.timeout(120):
            while not rest:
                line = (await proc.stdout.readline()).decode()
                if not line:
                    raise RuntimeError(f"fake exchange exited ({await proc.wait()})")
                head, _, url = line.strip().partition(": ")
                if head.startswith("ws "):
                    ws[head[3:]] = url
                elif head == "rest":
                    rest = url
        return cls(proc, ws, rest)

    async def command(self, text: str, timeout: float = 30) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(text.encode() + b"\n")
        await self.proc.stdin.drain()
        return dict(json.loads(await asyncio.wait_for(self.proc.stdout.readline(), timeout)))

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


# ---------------------------------------------------------------- the gateway process


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sched_s(pid: int) -> float:
    """CPU seconds of ``pid``'s live threads so far, from the scheduler's nanosecond clock
    (``/proc/<pid>/task/*/schedstat``; 0 once it is gone).

    The same CPU time as ``cpu_s`` but not rounded to clock ticks (10 ms here): a window
    of a one-kind run at a thousand frames/s holds only a few ticks.  A thread that ends
    inside a window drops out of it.
    """
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class Metrics:
    """One scrape of the gateway's /metrics: sums per family, the latency histogram."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.sums: dict[bytes, float] = {}
        self.buckets: dict[float, float] = {}
        for name, labels, value in _LINE.findall(body):
            v = float(value)
            self.sums[name] = self.sums.get(name, 0.0) + v
            if name == b"meltica_pipeline_latency_seconds_bucket" and labels:
                le = _LE.search(labels)
                if le:
                    self.buckets[float(le.group(1))] = v

    def get(self, name: str) -> float:
        return self.sums.get(name.encode(), 0.0)


def per_market(body: bytes, names: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """``name -> market -> value`` (summed over the other labels) from a /metrics body."""
    out: dict[str, dict[str, float]] = {n: {} for n in names}
    wanted = {n.encode(): n for n in names}
    for name, labels, value in _LINE.findall(body):
        key = wanted.get(name)
        if key is None:
            continue
        m = _MARKET.search(labels or b"")
        market = m.group(1).decode() if m else ""
        out[key][market] = out[key].get(market, 0.0) + float(value)
    return out


def p99_between(a: Metrics, b: Metrics) -> float | None:
    """Upper bound (s) of the bucket holding the p99 of what was observed between scrapes."""
    edges = sorted(b.buckets)
    counts = [b.buckets[e] - a.buckets.get(e, 0.0) for e in edges]
    if not counts or counts[-1] <= 0:
        return None
    for edge, cum in zip(edges, counts, strict=True):
        if cum >= 0.99 * counts[-1]:
            return edge
    return math.inf


class Gateway:
    def __init__(self, proc: asyncio.subprocess.Process, url: str, log: Path) -> None:
        self.proc, self.url, self.log = proc, url, log

    @classmethod
    async def start(
        cls,
        args: argparse.Namespace,
        fake: Fake,
        symbols: dict[str, list[str]],
        tmp: Path,
        streams: tuple[str, ...] = STREAMS,
    ) -> Gateway:
        port = free_port()
        binance: dict[str, Any] = {"markets": sorted(symbols)}
        for market, names in symbols.items():
            binance[market] = {
                "ws_url": fake.ws[market],
                "rest_url": fake.rest,
                "symbols": [s.lower() for s in names],
                "streams": list(streams),
                "depth_snapshot_limit": args.depth_limit,
                "rest_weight_budget_fraction": args.budget_fraction,
            }
            if market == "spot":
                binance[market]["market_data_only"] = False
        config = {
            "binance": binance,
            "telemetry": {"metrics_host": "127.0.0.1", "metrics_port": port},
        }
        path = tmp / "gateway.yaml"
        path.write_text(yaml.safe_dump(config))
        log = tmp / "gateway.log"
        argv = [sys.executable, "-P", "-m", "meltica", "--log-level", "WARNING", "run"]
        argv += ["--config", str(path)]
        for override in args.set:
            argv += ["--set", override]
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(*argv, stdout=out, stderr=subprocess.STDOUT)
        return cls(proc, f"http://127.0.0.1:{port}/metrics", log)

    async def scrape(self, http: aiohttp.ClientSession) -> Metrics | None:
        if self.proc.returncode is not None:
            raise RuntimeError(f"gateway exited ({self.proc.returncode}): {self.tail()}")
        try:
            async with http.get(self.url) as resp:
                return Metrics(await resp.read())
        except (aiohttp.ClientError, TimeoutError):
            return None

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    async def stop(self) -> None:
        await stop_process(self.proc, 30)


class MetricsUnanswered(RuntimeError):
    """The gateway did not answer a /metrics scrape within ``_SCRAPE_S``."""


async def window(
    http: aiohttp.ClientSession, gw: Gateway, fake: Fake, seconds: float, speed: float
) -> dict[str, Any]:
    """Everything measured over ``seconds`` of steady running.

    The gateway's CPU is read between the two /metrics scrapes, not across the closing one:
    a scrape is the benchmark's own load (one costs about 55 ms of CPU at 600 books, and
    grows with the books), not the feed's.  The rates are over the scrape-to-scrape time.
    """
    pid, fpid = gw.proc.pid, fake.proc.pid
    m0 = await gw.scrape(http)
    tm0 = time.perf_counter()
    s0 = await fake.command("stats")
    c0, f0, t0 = cpu_s(pid), cpu_s(fpid), time.perf_counter()
    n0 = sched_s(pid)
    await asyncio.sleep(seconds)
    n1 = sched_s(pid)
    c1, f1, t1 = cpu_s(pid), cpu_s(fpid), time.perf_counter()
    m1 = await gw.scrape(http)
    tm1 = time.perf_counter()
    s1 = await fake.command("stats")
    if m0 is None or m1 is None:
        raise MetricsUnanswered(f"the gateway's /metrics did not answer within {_SCRAPE_S:g} s")
    elapsed = t1 - t0
    between = tm1 - tm0
    frames = m1.get("meltica_ws_frames_total") - m0.get("meltica_ws_frames_total")
    batches = m1.get("meltica_ws_batches_total") - m0.get("meltica_ws_batches_total")
    sent = s1["frames_published"] - s0["frames_published"]
    cores = (c1 - c0) / elapsed
    rate = frames / between
    p99 = p99_between(m0, m1)
    return {
        "speed": speed,
        "seconds": round(elapsed, 2),
        "scrape_s": round(tm1 - t1, 3),
        "frames_per_s": round(rate),
        "fake_sent_per_s": round(sent / between),
        "received_share": round(frames / sent, 4) if sent else None,
        # frames per batch handed on (one batch per socket read with events)
        "frames_per_batch": round(frames / batches, 2) if batches else None,
        "gateway_cores": round(cores, 3),
        "fake_cores": round((f1 - f0) / elapsed, 3),
        "cpu_cores_per_10k": round(cores / rate * 1e4, 4) if frames else None,
        "cpu_us_per_frame": round(cores / rate * 1e6, 2) if frames else None,
        "sched_cores": round((n1 - n0) / elapsed, 4),
        "sched_us_per_frame": round((n1 - n0) / elapsed / rate * 1e6, 2) if frames else None,
        "p99_ms": None if p99 is None else round(p99 * 1e3, 3),
        "gaps": m1.get("meltica_book_gaps_total") - m0.get("meltica_book_gaps_total"),
        "disconnects": m1.get("meltica_ws_disconnects_total")
        - m0.get("meltica_ws_disconnects_total"),
        "paused": m1.get("meltica_ws_paused"),
        "books_live": m1.get("meltica_book_live"),
        "rss_mb": round(rss_mb(pid), 1),
        "loadavg": loadavg(),
    }


def broken(w: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """The gateway budgets a window breaks (empty: all held)."""
    out = []
    if w["gateway_cores"] > _CPU_BUDGET_CORES:
        out.append(f"gateway CPU {w['gateway_cores']:.2f} cores > {_CPU_BUDGET_CORES} (budget)")
    if w["gateway_cores"] > 1.0:
        out.append(f"gateway CPU {w['gateway_cores']:.2f} cores > 1")
    if w["p99_ms"] is not None and w["p99_ms"] > args.p99_bound_ms:
        out.append(f"p99 {w['p99_ms']} ms > {args.p99_bound_ms} ms")
    if w["received_share"] is not None and w["received_share"] < 0.9:
        out.append(f"gateway received {w['received_share']:.0%} of what the fake sent")
    if w["paused"] or w["gaps"] or w["disconnects"]:
        out.append(f"paused {w['paused']}, gaps {w['gaps']}, disconnects {w['disconnects']}")
    return out


async def one_run(
    args: argparse.Namespace,
    total: int,
    headroom: bool,
    speed: float = 1.0,
    streams: tuple[str, ...] = STREAMS,
    natural: bool = True,
) -> dict[str, Any]:
    """One gateway and one fake for ``total`` symbols: start-up, then the measured windows.

    ``base``: ``--duration`` s at the market's own (natural) rate.  ``same_rate``: the same
    with the fake's clock ``speed`` times faster (``speed`` 1: the ``base`` window itself),
    so that every curve point is offered the full market's total frame rate.  ``idle``: the
    fake paused (its clock slowed to a standstill) with the books live, measured last
    (after the headroom steps) because a paused clock cannot be resumed; its cores are the
    gateway's fixed cost at that symbol count.

    ``streams``: what the gateway subscribes on every symbol (the per-kind curve: one).
    Without ``depth`` there is no book to wait for: the run starts once every connection
    the gateway wants is open and frames arrive.  ``natural`` False leaves the ``base``
    window out when ``speed`` is not 1.
    """
    spot, usdm = split_symbols(total)
    market = SyntheticMarket.binance(spot=spot, usdm=usdm, seed=args.seed)
    symbols = {m: market.symbols(m) for m in market.markets}
    books = sum(len(v) for v in symbols.values())
    want = books if "depth" in streams else 0  # the books that must go live
    _log(f"--- {total} symbols ({spot} spot + {usdm} usdm) {','.join(streams)}, load {loadavg()}")
    fake = await Fake.start(spot, usdm, args.seed)
    gw: Gateway | None = None
    result: dict[str, Any] = {"symbols": total, "spot": spot, "usdm": usdm, "books": books}
    if streams != STREAMS:
        result["streams"] = list(streams)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            start_wall = time.time()
            t_start = time.monotonic()
            gw = await Gateway.start(args, fake, symbols, Path(tmp), streams)
            bounds = lower_bounds(
                {"spot": spot, "usdm": usdm},
                args.depth_limit,
                args.budget_fraction,
                start_wall % 60,
            )
            rate_bound = max(b["rate_bound_s"] for b in bounds.values())
            window_bound = max(b["window_bound_s"] for b in bounds.values())
            result["bounds"] = bounds
            result["rate_bound_s"] = rate_bound
            result["window_bound_s"] = window_bound
            live_curve: list[tuple[float, int]] = []
            sync_trace: list[dict[str, Any]] = []
            result["sync_trace"] = sync_trace
            timeout = aiohttp.ClientTimeout(total=_SCRAPE_S)
            async with aiohttp.ClientSession(timeout=timeout) as http:
                live = 0.0
                ready = False
                deadline = t_start + args.live_timeout
                while time.monotonic() < deadline:
                    m = await gw.scrape(http)
                    if m is not None:
                        live = m.get("meltica_book_live")
                        t = round(time.monotonic() - t_start, 1)
                        if not live_curve or live_curve[-1][1] != int(live):
                            live_curve.append((t, int(live)))
                        ready = (
                            live >= want
                            if want
                            else 0 < m.get("meltica_ws_slots") <= m.get("meltica_ws_connections")
                            and m.get("meltica_ws_frames_total") > 0
                        )
                        if not sync_trace or t >= sync_trace[-1]["t"] + 5 or ready:
                            row = {"t": t, "rss_mb": round(rss_mb(gw.proc.pid), 1)}
                            sync_trace.append({**row, **per_market(m.body, _SYNC_TRACE)})
                        if ready:
                            break
                    await asyncio.sleep(0.5)
                t_live = time.monotonic() - t_start
                result["live_curve"] = live_curve
                if not ready:
                    result["error"] = f"{int(live)}/{want} books live after {t_live:.0f} s"
                    _log(result["error"] + "\n" + gw.tail())
                    return result
                result["time_to_live_s"] = round(t_live, 1)
                result["live_vs_rate_bound"] = round(t_live / rate_bound, 3) if rate_bound else None
                _log(
                    f"{'every book live' if want else 'every connection open'} after "
                    f"{t_live:.1f} s (rate bound {rate_bound} s, window bound {window_bound} s)"
                )
                await asyncio.sleep(args.settle)
                modelled = 0.0
                if natural or speed == 1.0:
                    base = await window(http, gw, fake, args.duration, 1.0)
                    base["rss_per_book_kb"] = round(base["rss_mb"] * 1024 / books, 1)
                    result["base"] = base
                    modelled = base["fake_sent_per_s"]
                    _log(f"1x: {base}")
                if speed != 1.0:
                    await fake.command(f"speed {speed}")
                    await asyncio.sleep(args.settle)
                    same = await window(http, gw, fake, args.duration, speed)
                    same["rss_per_book_kb"] = round(same["rss_mb"] * 1024 / books, 1)
                    _log(f"{speed:.3g}x (the full market's rate): {same}")
                else:
                    same = base
                result["same_rate"] = same
                if args.bunch_ms > 0:
                    # the same rate again, the fake sending what falls due within
                    # --bunch-ms together: fewer, fuller socket reads (see read_split)
                    await fake.command(f"quantum {args.bunch_ms / 1000}")
                    await asyncio.sleep(args.settle)
                    bunched = await window(http, gw, fake, args.duration, speed)
                    await fake.command("quantum 0")
                    result["bunched"] = bunched
                    _log(f"{speed:.3g}x, sent {args.bunch_ms:g} ms at a time: {bunched}")
                if headroom:
                    result["headroom"] = await raise_rate(args, http, gw, fake, modelled)
                if args.idle > 0:
                    result["idle"] = await idle_window(args, http, gw, fake, same, want)
            result["fake_ws"] = (await fake.command("stats"))["ws"]
        finally:
            if gw is not None:
                await gw.stop()
            await fake.stop()
    return result


async def idle_window(
    args: argparse.Namespace,
    http: aiohttp.ClientSession,
    gw: Gateway,
    fake: Fake,
    loaded: dict[str, Any],
    books: int,
) -> dict[str, Any]:
    """The gateway's CPU with its books live and the fake paused, and per frame net of it.

    ``net_us_per_frame`` = (cores in ``loaded`` - cores idle) / frames per s in ``loaded``:
    the CPU the frames themselves cost, without the timers, periodic tasks, audits and
    scrapes that run whatever the rate.  Only counted when the paused window received
    (almost) nothing and at least 99 % of the books stayed live.
    """
    m0 = await gw.scrape(http)
    await fake.command(f"speed {_PAUSED}")
    await asyncio.sleep(args.settle)
    w = await window(http, gw, fake, args.idle, _PAUSED)
    m1 = await gw.scrape(http)
    if m0 is not None and m1 is not None:  # from the pause on, the settle included
        for name in ("gaps", "resyncs", "crossed"):
            key = f"meltica_book_{name}_total"
            w[f"{name}_since_pause"] = m1.get(key) - m0.get(key)
    # a book that left live while paused stays out (no diff comes to bridge its new
    # snapshot) but costs nothing more; at most 1 % of the books may be out
    ok = w["books_live"] >= 0.99 * books and w["frames_per_s"] <= 0.01 * loaded["frames_per_s"]
    w["valid"] = ok
    # the same net figure from the ticks' cores and from the scheduler's ns clock
    for cores, net in (
        ("gateway_cores", "net_us_per_frame"),
        ("sched_cores", "net_sched_us_per_frame"),
    ):
        w[net] = (
            round((loaded[cores] - w[cores]) / loaded["frames_per_s"] * 1e6, 2)
            if ok and loaded["frames_per_s"]
            else None
        )
    _log(f"paused: {w}")
    return w


async def raise_rate(
    args: argparse.Namespace, http: aiohttp.ClientSession, gw: Gateway, fake: Fake, modelled: float
) -> list[dict[str, Any]]:
    """Speed the market up step by step until a gateway budget breaks or the fake saturates.

    A step where the fake sends less than 90 % of the asked rate is marked ``fake_limited``;
    the gateway's budgets are still judged at what it did send.  Once the fake's rate grows
    by less than 10 % from one step to the next it is saturated and the climb stops: the
    gateway's headroom is then above what this set-up can offer.
    """
    steps: list[dict[str, Any]] = []
    # frames due within the next millisecond go out together (FakeExchange's quantum): at
    # 100k frames/s a write per connection every few frames would cost the fake more than
    # the gateway spends
    await fake.command(f"quantum {_PACE_QUANTUM_S}")
    for speed in args.speeds:
        # generate the step's market ahead while serving at 1x, then serve it at ``speed``:
        # the step reads (settle + window + the scrapes' few seconds) x speed of market time
        await fake.command("speed 1")
        need = (args.settle + args.step_duration + _AHEAD_MARGIN_S) * speed
        ahead = await fake.command(f"ahead {need}", timeout=_AHEAD_TIMEOUT_S)
        _log(
            f"{speed}x: {ahead['ahead_s']} s of market generated ahead ({ahead['buffered']:,} "
            f"frames, {ahead['ahead_cpu_s']} CPU s)"
        )
        await fake.command(f"speed {speed}")
        await asyncio.sleep(args.settle)
        try:
            w = await window(http, gw, fake, args.step_duration, speed)
        except MetricsUnanswered as exc:
            # an operator's scrape that gets no answer is a broken gateway, not a bench error
            steps.append({"speed": speed, "broken": [str(exc)], "loadavg": loadavg()})
            _log(f"{speed}x: {exc}")
            break
        w["ahead_s"] = ahead["ahead_s"]
        w["asked_per_s"] = round(modelled * speed)
        w["fake_limited"] = w["fake_sent_per_s"] < 0.9 * modelled * speed
        w["broken"] = broken(w, args)
        saturated = bool(steps) and w["fake_sent_per_s"] < 1.1 * steps[-1]["fake_sent_per_s"]
        steps.append(w)
        _log(f"{speed}x: {w}")
        if w["broken"]:
            break
        if saturated:
            w["broken"] = ["none; the fake exchange is saturated (its rate grew < 10 %)"]
            break
    return steps


def judge_report(report: dict[str, Any]) -> str:
    """Set ``budgets`` and ``table_md`` (the tables as printed, for bench/report.py to put
    into docs/benchmarks.md) of ``report`` from the windows it holds; returns the tables."""
    full, curve, kinds = report["full"], report["curve"], report.get("kind_curve") or {}
    verdict = judge(full, curve)
    if kinds:
        verdict["per_kind"] = judge_kinds(kinds)
    report["budgets"] = verdict
    report["table_md"] = table(full, curve, verdict, kinds)
    return str(report["table_md"])


def rejudge(path: Path) -> int:
    """Recompute ``budgets`` and ``table_md`` of a results JSON from the windows it holds (after
    a change to how they are judged or shown; nothing is measured again)."""
    report = json.loads(path.read_text())
    text = judge_report(report)
    path.write_text(json.dumps(report, indent=1, default=str))
    print(text)
    return 0


def judge(full: dict[str, Any], curve: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "time_to_live_s" in full:
        ratio = full["live_vs_rate_bound"]
        out["live_within_1.2x_bound"] = ratio is not None and ratio <= _LIVE_BUDGET
    if "base" in full:
        out["full_market_cores"] = full["base"]["gateway_cores"]
        out["full_market_within_half_core"] = full["base"]["gateway_cores"] <= _CPU_BUDGET_CORES
    steps = full.get("headroom") or []
    held = [w for w in steps if not broken_gateway(w)]
    if steps:
        first = next((w for w in steps if broken_gateway(w)), None)
        out["headroom_held_up_to_per_s"] = max((w["frames_per_s"] for w in held), default=0)
        out["headroom_first_broken"] = (
            None if first is None else f"{first['speed']}x: {'; '.join(first['broken'])}"
        )
        out["headroom_fake_limited"] = any(w.get("fake_limited") for w in steps)
    out.update(judge_curve(curve))
    return out


def judge_curve(curve: list[dict[str, Any]]) -> dict[str, Any]:
    """Memory per book and CPU per frame over the curve: flat is max / min <= 1.5.

    Memory: the RSS each step of the curve adds per added book (from the previous, smaller
    point; the first point's total RSS is mostly the interpreter), so every point from the
    smallest on takes part.  CPU: per frame at the same offered rate (``same_rate``), over
    every point; beside it, per frame net of the paused gateway's CPU where measured.
    """
    out: dict[str, Any] = {}
    ok = sorted((r for r in curve if "same_rate" in r), key=lambda r: r["books"])
    prev = None
    for r in ok:
        r["marginal_rss_per_book_kb"] = (
            round(
                (r["same_rate"]["rss_mb"] - prev["same_rate"]["rss_mb"])
                * 1024
                / (r["books"] - prev["books"]),
                1,
            )
            if prev is not None and r["books"] > prev["books"]
            else None
        )
        prev = r
    mem = [r["marginal_rss_per_book_kb"] for r in ok if r["marginal_rss_per_book_kb"] is not None]
    cpu = [r["same_rate"]["cpu_us_per_frame"] for r in ok if r["same_rate"]["cpu_us_per_frame"]]
    net = [
        r["idle"]["net_us_per_frame"] for r in ok if (r.get("idle") or {}).get("net_us_per_frame")
    ]
    out["curve_symbols"] = [r["symbols"] for r in ok]
    if len(mem) >= 2:
        out["memory_per_book_max_over_min"] = (
            round(max(mem) / min(mem), 2) if min(mem) > 0 else None
        )
        out["memory_per_book_flat"] = min(mem) > 0 and max(mem) / min(mem) <= _FLAT_BUDGET
    if len(cpu) >= 2:
        out["cpu_per_frame_max_over_min"] = round(max(cpu) / min(cpu), 2)
        out["cpu_per_frame_flat"] = max(cpu) / min(cpu) <= _FLAT_BUDGET
    if len(net) >= 2 and len(net) == len(ok) and min(net) > 0:
        out["net_cpu_per_frame_max_over_min"] = round(max(net) / min(net), 2)
    fit = mix_fit(ok)
    if fit is not None:
        out["cpu_per_frame_mix_fit"] = fit
    split = read_split(ok)
    if split is not None:  # reported, not judged (see read_split)
        out["read_split"] = split
    natural = [r["base"]["cpu_us_per_frame"] for r in ok if r["base"]["cpu_us_per_frame"]]
    if len(natural) >= 2:  # reported, not judged: each point at its own, lower rate
        out["natural_rate_cpu_per_frame_max_over_min"] = round(max(natural) / min(natural), 2)
    return out


def read_split(points: list[dict[str, Any]]) -> dict[str, Any] | None:
    """CPU per frame split into a cost per frame at each point and one cost per socket read,
    from the two windows of every point at the same rate (``same_rate``: the fake sending
    each frame when due; ``bunched``: what falls due within ``--bunch-ms`` sent together, so
    the gateway reads fuller batches).

    Model: µs CPU per frame = a_i + b / (frames per batch), with a_i the cost of a frame at
    point i and b the cost of one socket read (wake-up, read, the per-batch path), common to
    every point.  Least squares over all windows: for a given b each a_i is its two windows'
    mean of (c - b x), and b = sum (x - mean_i x)(c - mean_i c) / sum (x - mean_i x)^2, x = 1 /
    frames per batch; ``worst_residual``: the worst window's relative miss of that fit (large:
    the cost of a read is not one figure over the points), and ``per_read_us_by_point``:
    each point's own (c1 - c2) / (x1 - x2) where its bunched batches are at least 1.5x fuller
    (else None).  Reported beside the raw figures, not instead of them: how many frames
    a read brings depends on how the feed arrives (here, the fake's pacing and the
    connection count), not on the gateway.  None unless every point has both windows.
    """
    rows = []
    for r in points:
        ws = [r.get("same_rate"), r.get("bunched")]
        if any(
            w is None or not w.get("frames_per_batch") or not w.get("sched_us_per_frame")
            for w in ws
        ):
            return None
        rows.append([(1.0 / w["frames_per_batch"], w["sched_us_per_frame"]) for w in ws])
    if len(rows) < 2:
        return None
    sxx = sxy = 0.0
    for pair in rows:
        mx = sum(x for x, _ in pair) / len(pair)
        my = sum(c for _, c in pair) / len(pair)
        sxx += sum((x - mx) ** 2 for x, _ in pair)
        sxy += sum((x - mx) * (c - my) for x, c in pair)
    if sxx <= 0:
        return None
    b = sxy / sxx
    a = [round(sum(c - b * x for x, c in pair) / len(pair), 2) for pair in rows]
    # how well one b fits: the worst window's miss, relative; and each point's own b where
    # its two windows' batches differ enough (1.5x) to say anything
    fits = zip(a, rows, strict=True)
    worst = max(abs(c - (ai + b * x)) / c for ai, pair in fits for x, c in pair)
    own = [
        round((c1 - c2) / (x1 - x2), 1) if x1 >= 1.5 * x2 else None for (x1, c1), (x2, c2) in rows
    ]
    return {
        "per_read_us": round(b, 1),
        "worst_residual": round(worst, 3),
        "per_read_us_by_point": own,
        "per_frame_us": a,
        "per_frame_max_over_min": _ratio(a),
        "bunched_us_per_frame": [r["bunched"]["sched_us_per_frame"] for r in points],
        "bunched_frames_per_batch": [r["bunched"]["frames_per_batch"] for r in points],
        "bunched_max_over_min": _ratio([r["bunched"]["sched_us_per_frame"] for r in points]),
    }


def _ratio(values: list[float | None]) -> float | None:
    """max / min of ``values``, None unless every one is a positive number (two at least)."""
    if len(values) < 2 or any(v is None or v <= 0 for v in values):
        return None
    nums = [v for v in values if v is not None]
    return round(max(nums) / min(nums), 2)


def judge_kinds(kinds: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """CPU per event of each kind over the symbol counts: flat is max / min <= 1.5.

    Judged on ``sched_us_per_frame`` (the gateway's CPU from the scheduler's nanosecond
    clock, read at the same instants as the tick-based ``cpu_us_per_frame``, which is
    reported beside it: a one-kind window holds few 10 ms ticks).  A kind is judged only
    when every one of its points was measured; otherwise ``flat`` is None and the missing
    symbol counts are listed.  ``all_flat``: every judged kind flat, and none unjudged.
    """
    out: dict[str, Any] = {}
    verdicts = []
    for kind, points in kinds.items():
        pts = sorted(points, key=lambda r: r["symbols"])
        ok = [r for r in pts if "same_rate" in r]
        us = [r["same_rate"].get("sched_us_per_frame") for r in ok]
        ratio = _ratio(us)
        complete = len(ok) == len(pts) and ratio is not None
        row: dict[str, Any] = {
            "symbols": [r["symbols"] for r in ok],
            "frames_per_s": [r["same_rate"]["frames_per_s"] for r in ok],
            "us_per_frame": us,
            "max_over_min": ratio,
            "flat": (ratio <= _FLAT_BUDGET) if complete and ratio is not None else None,
            "tick_us_per_frame": [r["same_rate"]["cpu_us_per_frame"] for r in ok],
            "tick_max_over_min": _ratio([r["same_rate"]["cpu_us_per_frame"] for r in ok]),
            "net_us_per_frame": [(r.get("idle") or {}).get("net_sched_us_per_frame") for r in ok],
        }
        row["net_max_over_min"] = _ratio(row["net_us_per_frame"])
        split = read_split(ok)
        if split is not None:  # reported, not judged (see read_split)
            row["read_split"] = split
        if len(ok) < len(pts):
            row["missing"] = [r["symbols"] for r in pts if "same_rate" not in r]
        out[kind] = row
        verdicts.append(row["flat"])
    out["all_flat"] = bool(verdicts) and all(v is True for v in verdicts)
    return out


def mix_fit(points: list[dict[str, Any]]) -> dict[str, Any] | None:
    """CPU per frame at the same rate as ``other + (depth - other) x depth share``, by least
    squares over the curve's points (reported, not judged).

    The share of depth diffs in what the market offers grows with the symbol count (the
    tail's symbols send little but a diff every 100 ms), and a diff costs more than a
    bookTicker or trade (a book to apply and publish).  If one pair of per-stream costs fits
    every point, the curve's slope is the mix, not a cost that grows with the symbol count.
    """
    xy = [
        (r["offered_mix"]["depth"], r["same_rate"]["cpu_us_per_frame"])
        for r in points
        if r.get("offered_mix") and r["same_rate"]["cpu_us_per_frame"]
    ]
    if len(xy) < 3:
        return None
    n = len(xy)
    mx, my = sum(x for x, _ in xy) / n, sum(y for _, y in xy) / n
    sxx = sum((x - mx) ** 2 for x, _ in xy)
    if sxx <= 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in xy) / sxx
    other = my - slope * mx
    worst = max(abs(y - (other + slope * x)) / y for x, y in xy)
    return {
        "other_us_per_frame": round(other, 2),
        "depth_us_per_frame": round(other + slope, 2),
        "worst_residual": round(worst, 3),
    }


def broken_gateway(w: dict[str, Any]) -> bool:
    return bool(w.get("broken")) and not w["broken"][0].startswith("none;")


def table(
    full: dict[str, Any],
    curve: list[dict[str, Any]],
    verdict: dict[str, Any],
    kinds: dict[str, list[dict[str, Any]]] | None = None,
) -> str:
    lines = ["## Full market", ""]
    if "time_to_live_s" in full:
        lines.append(
            f"{full['books']} books ({full['spot']} spot + {full['usdm']} usdm): every book "
            f"live after **{full['time_to_live_s']} s**; REST-budget lower bound "
            f"{full['rate_bound_s']} s (books x weight / budget per minute; clock-window "
            f"bound {full['window_bound_s']} s): ratio {full['live_vs_rate_bound']} "
            f"(budget <= {_LIVE_BUDGET})"
        )
    elif "error" in full:
        lines.append(f"not live: {full['error']}")
    if "base" in full:
        b = full["base"]
        lines += [
            "",
            "| speed | frames/s received | fake sent/s (asked) | gateway cores | cores per 10k/s "
            "| µs/frame | p99 ms (bucket bound) | RSS MB | gaps/disc/paused | load avg | broken |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for w in [b, *full.get("headroom", [])]:
            if "frames_per_s" not in w:  # no /metrics answer in that step
                lines.append(f"| {w['speed']}x | {'; '.join(w['broken'])} |")
                continue
            asked = f" ({w['asked_per_s']:,})" if "asked_per_s" in w else ""
            lines.append(
                f"| {w['speed']}x | {w['frames_per_s']:,} | {w['fake_sent_per_s']:,}{asked} | "
                f"{w['gateway_cores']} | {w['cpu_cores_per_10k']} | {w['cpu_us_per_frame']} | "
                f"{w['p99_ms']} | {w['rss_mb']} | {w['gaps']:.0f}/{w['disconnects']:.0f}/"
                f"{w['paused']:.0f} | {w['loadavg'][0]} | {'; '.join(w.get('broken', [])) or '-'} |"
            )
        lines.append("")
        lines.append(f"RSS per live book (total / books): {b['rss_per_book_kb']} KB")
    if curve:
        lines += _curve_table(curve)
        if verdict.get("read_split"):
            lines += _split_lines({"whole feed": verdict["read_split"]})
    if kinds:
        lines += _kind_table(kinds, verdict.get("per_kind") or {})
    whole = {k: v for k, v in verdict.items() if k not in ("per_kind", "read_split")}
    lines += ["", "Budgets (whole feed): " + json.dumps(whole)]
    if "per_kind" in verdict:
        lines += ["", "Budgets (per kind): " + json.dumps(verdict["per_kind"])]
    return "\n".join(lines)


def _curve_table(curve: list[dict[str, Any]]) -> list[str]:
    lines = [
        "",
        "## Whole feed: curves at the same offered rate (the full market's)",
        "",
        "Each smaller market's clock sped up so that it offers the full market's total frame "
        "rate; memory per added book is the RSS a step adds over the previous (smaller) point "
        "per added book; net CPU is per frame after subtracting the gateway's CPU with the same "
        "books live and the fake paused. Natural rate: the same market at its own clock.",
        "",
        "| symbols | books | live after s | rate bound s | speed | frames/s | frames/batch "
        "| RSS MB | RSS/book KB | added RSS/added book KB | µs CPU/frame | idle cores "
        "| net µs CPU/frame | depth / bookTicker / trade share | natural frames/s "
        "| natural µs CPU/frame | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in curve:
        if "same_rate" not in r:
            lines.append(f"| {r['symbols']} | {r['books']} | {r.get('error', 'failed')} |")
            continue
        w, b, i = r["same_rate"], r["base"], r.get("idle") or {}
        idle = i.get("gateway_cores") if i.get("valid") else None
        lines.append(
            f"| {r['symbols']} | {r['books']} | {r['time_to_live_s']} | {r['rate_bound_s']} | "
            f"{w['speed']:.3g}x | {w['frames_per_s']:,} | {w.get('frames_per_batch')} | "
            f"{w['rss_mb']} | {round(w['rss_mb'] * 1024 / r['books'], 1)} | "
            f"{r.get('marginal_rss_per_book_kb')} | {w['cpu_us_per_frame']} | {idle} | "
            f"{i.get('net_us_per_frame')} | {mix(r)} | {b['frames_per_s']:,} | "
            f"{b['cpu_us_per_frame']} | "
            f"{w['loadavg'][0]} |"
        )
    return lines


def _kind_table(kinds: dict[str, list[dict[str, Any]]], verdict: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## Per kind: CPU per event with the gateway subscribing one kind",
        "",
        "Each point subscribes one kind on every symbol, its clock sped up so that it offers "
        "the full market's rate of that kind. µs CPU/frame from the scheduler's ns clock "
        "(ticks: the same from /proc/<pid>/stat's 10 ms ticks); net: after subtracting the "
        "gateway's CPU with the fake paused. levels/diff: bids + asks per depth diff offered "
        "(the smaller markets are the busiest symbols, whose diffs carry more levels).",
        "",
        "| kind | symbols | live/ready after s | speed | offered/s | levels/diff | frames/s "
        "| frames/batch | µs CPU/frame | ticks µs CPU/frame | idle cores | net µs CPU/frame "
        "| RSS MB | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, points in kinds.items():
        for r in points:
            if "same_rate" not in r:
                lines.append(f"| {kind} | {r['symbols']} | {r.get('error', 'failed')} |")
                continue
            w, i = r["same_rate"], r.get("idle") or {}
            lines.append(
                f"| {kind} | {r['symbols']} | {r.get('time_to_live_s')} | {w['speed']:.3g}x | "
                f"{r.get('offered_per_s', 0):,} | {r.get('levels_per_diff') or ''} | "
                f"{w['frames_per_s']:,} | "
                f"{w.get('frames_per_batch')} | "
                f"{w.get('sched_us_per_frame')} | {w['cpu_us_per_frame']} | "
                f"{i.get('sched_cores') if i.get('valid') else None} | "
                f"{i.get('net_sched_us_per_frame')} | {w['rss_mb']} | {w['loadavg'][0]} |"
            )
    lines += [
        "",
        "| kind | max / min µs CPU/frame | flat (<= 1.5) | ticks max / min | net max / min |",
    ]
    lines.append("|---|---|---|---|---|")
    for kind in kinds:
        v = verdict.get(kind) or {}
        lines.append(
            f"| {kind} | {v.get('max_over_min')} | {v.get('flat')} | "
            f"{v.get('tick_max_over_min')} | {v.get('net_max_over_min')} |"
        )
    splits = {k: (verdict.get(k) or {}).get("read_split") for k in kinds}
    lines += _split_lines({k: v for k, v in splits.items() if v})
    return lines


def _split_lines(splits: dict[str, dict[str, Any]]) -> list[str]:
    """The read_split of each curve (whole feed or a kind) as a table."""
    if not splits:
        return []
    lines = [
        "",
        "Per socket read and per frame (read_split: each point measured again with the fake "
        "sending what falls due within --bunch-ms together; µs CPU per frame = a + b / frames "
        "per batch, b common, by least squares over both windows of every point):",
        "",
        "| curve | bunched frames/batch | bunched µs CPU/frame | bunched max / min "
        "| b: µs per read | a: µs per frame | a max / min | worst residual "
        "| each point's own b |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, v in splits.items():
        lines.append(
            f"| {name} | {' / '.join(map(str, v['bunched_frames_per_batch']))} | "
            f"{' / '.join(map(str, v['bunched_us_per_frame']))} | {v['bunched_max_over_min']} | "
            f"{v['per_read_us']} | {' / '.join(map(str, v['per_frame_us']))} | "
            f"{v['per_frame_max_over_min']} | {v['worst_residual']} | "
            f"{' / '.join(map(str, v['per_read_us_by_point']))} |"
        )
    return lines


def mix(r: dict[str, Any]) -> str:
    m = r.get("offered_mix")
    if not m:
        return "-"
    return " / ".join(f"{m[k]:.0%}" for k in ("depth", "bookTicker", "trade"))


def plot(
    curve: list[dict[str, Any]], path: Path, kinds: dict[str, list[dict[str, Any]]] | None = None
) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _log("matplotlib not installed: no PNG")
        return
    ok = sorted((r for r in curve if "same_rate" in r), key=lambda r: r["books"])
    per_kind = {
        k: sorted((r for r in pts if "same_rate" in r), key=lambda r: r["symbols"])
        for k, pts in (kinds or {}).items()
    }
    per_kind = {k: v for k, v in per_kind.items() if v}
    if not ok and not per_kind:
        return
    panels = (2 if ok else 0) + (1 if per_kind else 0)
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4), squeeze=False)
    axs = list(axes[0])
    if ok:
        ax1, ax2 = axs.pop(0), axs.pop(0)
        xs = [r["symbols"] for r in ok]
        ax1.plot(
            xs,
            [r["same_rate"]["rss_mb"] * 1024 / r["books"] for r in ok],
            "o-",
            label="RSS / books",
        )
        marg = [(r["symbols"], r.get("marginal_rss_per_book_kb")) for r in ok]
        marg = [(x, y) for x, y in marg if y]
        if marg:
            ax1.plot(*zip(*marg, strict=True), "s--", label="added RSS / added book")
        ax1.set(
            xscale="log", yscale="log", xlabel="symbols", ylabel="KB per live book", title="memory"
        )
        ax1.legend()
        ax2.plot(
            xs, [r["same_rate"]["cpu_us_per_frame"] for r in ok], "o-", label="same offered rate"
        )
        net = [(r["symbols"], (r.get("idle") or {}).get("net_us_per_frame")) for r in ok]
        net = [(x, y) for x, y in net if y]
        if net:
            ax2.plot(*zip(*net, strict=True), "s--", label="same rate, net of idle")
        if all("base" in r for r in ok):
            ax2.plot(xs, [r["base"]["cpu_us_per_frame"] for r in ok], "^:", label="natural rate")
        ax2.set(xscale="log", xlabel="symbols", ylabel="µs CPU per frame", title="whole feed")
        ax2.set_ylim(bottom=0)
        ax2.legend()
    if per_kind:
        ax3 = axs.pop(0)
        for kind, pts in per_kind.items():
            ax3.plot(
                [r["symbols"] for r in pts],
                [r["same_rate"].get("sched_us_per_frame") for r in pts],
                "o-",
                label=f"{kind} ({pts[0].get('offered_per_s', 0):,}/s offered)",
            )
        ax3.set(
            xscale="log", xlabel="symbols", ylabel="µs CPU per frame", title="one kind subscribed"
        )
        ax3.set_ylim(bottom=0)
        ax3.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    _log(f"wrote {path}")


def generation(args: argparse.Namespace, seconds: float = 5.0) -> dict[str, Any]:
    """How fast one process generates the full market (no serving): frames/s of CPU time."""
    spot, usdm = split_symbols(args.symbols)
    market = SyntheticMarket.binance(spot=spot, usdm=usdm, seed=args.seed, duration_s=seconds)
    t0 = time.process_time()
    n = sum(1 for _ in market.frames())
    cpu = time.process_time() - t0
    out = {
        "market_frames_per_s": round(n / seconds),
        "generated_per_cpu_s": round(n / cpu),
        "cores_at_modelled_rate": round(cpu / seconds, 3),
        "loadavg": loadavg(),
    }
    _log(f"generation: {out}")
    return out


# the streams the gateway subscribes (STREAMS), as the fake names them
_SUBSCRIBED: Final = ("trade", "bookTicker", "depth")


def offered_mix(total: int, seed: int, seconds: float) -> dict[str, float]:
    """Frames per market second of each stream the gateway subscribes, ``total`` symbols.

    Counted by generating the first ``seconds`` of the same market the fake serves (same
    seed).
    """
    spot, usdm = split_symbols(total)
    market = SyntheticMarket.binance(spot=spot, usdm=usdm, seed=seed, duration_s=seconds)
    counts = dict.fromkeys(_SUBSCRIBED, 0)
    for f in market.frames():
        kind = f.stream.split("@")[1]
        if kind in counts:
            counts[kind] += 1
    return {k: n / seconds for k, n in counts.items()}


def levels_per_diff(total: int, seed: int, seconds: float) -> float | None:
    """Mean price levels (bids + asks) per depth diff offered, ``total`` symbols: the size of
    the event the depth points of the per-kind curve are offered.  The smaller markets are
    the busiest symbols (ranks 1..n of the Zipf shape), whose 100 ms windows gather more
    book changes each: the figure falls as the symbol count grows."""
    spot, usdm = split_symbols(total)
    market = SyntheticMarket.binance(spot=spot, usdm=usdm, seed=seed, duration_s=seconds)
    diffs = levels = 0
    for f in market.frames():
        if f.stream.split("@")[1] == "depth":
            data = json.loads(f.payload)
            diffs += 1
            levels += len(data["b"]) + len(data["a"])
    return round(levels / diffs, 2) if diffs else None


def offered_rate(total: int, seed: int, seconds: float) -> float:
    """All subscribed frames per market second (``offered_mix`` summed): the ratio of two
    is the clock speed that offers the smaller market the larger one's total rate."""
    return sum(offered_mix(total, seed, seconds).values())


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    gen = generation(args)
    mixes = {n: offered_mix(n, args.seed, args.rate_seconds) for n in [*args.curve, args.symbols]}
    rates = {n: sum(mix.values()) for n, mix in mixes.items()}
    gen["offered_per_s"] = {str(n): round(r) for n, r in rates.items()}
    # the share of each stream in what is offered: the mix changes with the symbol count
    gen["offered_mix"] = {
        str(n): {k: round(v / rates[n], 3) for k, v in mix.items()} for n, mix in mixes.items()
    }
    _log(f"offered frames per market second (subscribed streams): {gen['offered_per_s']}")
    curve: list[dict[str, Any]] = []
    full: dict[str, Any] = {}
    if args.whole_feed:
        for n in args.curve:
            speed = round(rates[args.symbols] / rates[n], 3) if args.same_rate else 1.0
            curve.append(await one_run(args, n, headroom=False, speed=speed))
        full = await one_run(args, args.symbols, headroom=bool(args.speeds))
        curve.append(full)
        for r in curve:
            r["offered_mix"] = gen["offered_mix"][str(r["symbols"])]
    kinds = await kind_curve(args, mixes)
    return {
        "command": " ".join(sys.argv),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "args": {k: v for k, v in vars(args).items() if k != "func"},
        "generation": gen,
        "full": full,
        "curve": curve,
        "kind_curve": kinds,
    }


async def kind_curve(
    args: argparse.Namespace, mixes: dict[int, dict[str, float]]
) -> dict[str, list[dict[str, Any]]]:
    """The per-kind curve: at every symbol count (``--curve`` and ``--symbols``), a gateway
    subscribing ONE kind (``--kinds``), offered the full market's rate of that kind.

    A market's clock is sped up by (the full market's frames of that kind per market
    second) / (its own), counted offline as for the whole-feed curve (``offered_mix``), so
    every point of a kind gets the same offered rate of the same kind and the mix cannot
    move the figure.  One window at that speed (no natural-rate window), then the paused
    one (``--idle``).
    """
    out: dict[str, list[dict[str, Any]]] = {}
    full = mixes[args.symbols]
    sizes = {}
    if "depth" in args.kinds:
        sizes = {n: levels_per_diff(n, args.seed, args.rate_seconds) for n in mixes}
        _log(f"levels per depth diff offered: {sizes}")
    for kind in args.kinds:
        stream = KIND_STREAM[kind]
        points = []
        for n in [*args.curve, args.symbols]:
            own = mixes[n][stream]
            if own <= 0:
                points.append({"symbols": n, "error": f"no {stream} frames offered"})
                continue
            speed = round(full[stream] / own, 3)
            r = await one_run(args, n, headroom=False, speed=speed, streams=(kind,), natural=False)
            r["offered_per_s"] = round(full[stream])
            if kind == "depth":
                r["levels_per_diff"] = sizes[n]
            points.append(r)
        out[kind] = points
    return out


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _kinds(text: str) -> list[str]:
    kinds = [x.strip() for x in text.split(",") if x.strip()]
    for k in kinds:
        if k not in KIND_STREAM:
            raise argparse.ArgumentTypeError(f"{k!r} is not one of {', '.join(KIND_STREAM)}")
    return kinds


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        p = argparse.ArgumentParser(prog="bench_full_market.py serve")
        p.add_argument("serve")
        p.add_argument("--spot", type=int, required=True)
        p.add_argument("--usdm", type=int, required=True)
        p.add_argument("--seed", type=int, default=1)
        import uvloop

        return uvloop.run(serve(p.parse_args()))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--symbols", type=int, default=2400, help="full-market symbols (4:1)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per measured window")
    p.add_argument("--settle", type=float, default=5.0, help="seconds before each window")
    p.add_argument("--curve", type=_ints, default=[10, 100, 600], help="smaller runs")
    p.add_argument(
        "--speeds",
        type=_floats,
        default=[2.0, 4.0, 8.0, 12.0, 16.0, 20.0, 24.0, 32.0],
        help="headroom steps",
    )
    p.add_argument("--step-duration", type=float, default=10.0, help="seconds per headroom window")
    p.add_argument("--depth-limit", type=int, default=100, help="depth_snapshot_limit")
    p.add_argument("--budget-fraction", type=float, default=0.5, help="REST budget fraction")
    p.add_argument("--p99-bound-ms", type=float, default=10.0, help="headroom latency bound")
    p.add_argument("--live-timeout", type=float, default=900.0, help="seconds to wait for live")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--same-rate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="speed each curve point's clock up to the full market's total frame rate",
    )
    p.add_argument(
        "--rate-seconds", type=float, default=20.0, help="market seconds counted for the rates"
    )
    p.add_argument(
        "--idle", type=float, default=10.0, help="seconds of the paused window (0: none)"
    )
    p.add_argument(
        "--kinds",
        type=_kinds,
        default=list(STREAMS),
        help="the per-kind curve's kinds, comma-separated ('': no per-kind curve)",
    )
    p.add_argument(
        "--whole-feed",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the whole-feed runs (the full market and its curve); --no-whole-feed: per kind only",
    )
    p.add_argument(
        "--bunch-ms",
        type=float,
        default=20.0,
        help="a second window per point with the fake sending what falls due within this many"
        " ms together (fuller socket reads: the per-read cost split out); 0: none",
    )
    p.add_argument("--set", action="append", default=[], help="gateway config override")
    p.add_argument("--json", type=Path, default=RESULTS / "full_market.json")
    p.add_argument("--png", type=Path, default=RESULTS / "full_market.png")
    p.add_argument(
        "--rejudge",
        type=Path,
        default=None,
        help="run nothing: recompute the budgets and tables of a results JSON from its windows",
    )
    args = p.parse_args()
    if args.rejudge is not None:
        return rejudge(args.rejudge)
    if args.symbols < 2 or any(n < 2 for n in args.curve):
        p.error("symbol counts must be >= 2")
    if not args.whole_feed and not args.kinds:
        p.error("--no-whole-feed with no --kinds: nothing to run")
    import uvloop

    report = uvloop.run(bench(args))
    g = report["generation"]
    print(
        f"Generation (one process, no serving): {g['market_frames_per_s']:,} frames per market "
        f"second, generated at {g['generated_per_cpu_s']:,} frames per CPU second: "
        f"{g['cores_at_modelled_rate']} of a core at the modelled rate\n"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1, default=str))  # the windows, judged or not
    _log(f"wrote {args.json}")
    text = judge_report(report)
    args.json.write_text(json.dumps(report, indent=1, default=str))
    print(text)
    plot(report["curve"], args.png, report["kind_curve"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

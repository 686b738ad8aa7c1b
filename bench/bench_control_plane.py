"""Control-plane propagation: a subscribe request to the first event of its stream delivered.

The fake exchange (synthetic spot market) runs in its own process; the gateway (`Engine`) runs
here on uvloop.  Each cycle subscribes one symbol's ``book_ticker`` through the Control Bus and
times, from just before ``engine.request(...)``:

- subscribe -> reply (the reply's ``propagation_ns`` is reported too);
- subscribe -> the first event of the new stream delivered to an in-memory Data Bus consumer
  (the consumer task's wake-up, i.e. what a subscriber sees);
- unsubscribe -> reply, then every event of the unsubscribed stream the consumer still gets
  until the symbol is subscribed again (>= 0.5 s later; ``--quiet-ms`` after the last one):
  ``violations`` are events *received* (``ts_recv``) after the unsubscribe reply, which the
  table must drop (must be 0); ``late_inflight`` are events received before the reply but
  consumed after it (published before the table changed; informational).

The first event's wait includes the exchange's own publishing interval: after the SUBSCRIBE,
the fake sends the stream's next frame when its synthetic clock gets there.  The synthetic
book_ticker rate is ~50 per symbol per simulated second, so ``--speed 100`` gives ~5000
events/s per stream: the gaps are exponential, so the wait is too, with a mean of ~0.2 ms and
a p99 of ~0.9 ms (4.6 x the mean).  The measured rate is reported, and so is the gap between
consecutive deliveries of a live stream to the consumer (the cadence the exchange and the
gateway actually achieve on the machine at the time).

Binance (and the fake) close a spot connection that sends more than 5 messages in any second,
and a cycle costs two (SUBSCRIBE, UNSUBSCRIBE).  Requests are paced so the gateway's own
per-connection limiter never has to hold one back (it is checked before every request), and
``--lanes N`` spreads the cycles over N connections (``max_streams_per_connection=2``: one
low-rate keep-alive stream, kline_1m, plus one benchmark stream each); cycle i subscribes on
connection i mod N and then unsubscribes the stream of cycle i-N+1, so N-1 benchmark streams
are live while a new one is subscribed.  Two lanes (the default) run 200 cycles in ~50 s;
``--lanes 1`` measures an otherwise idle gateway and takes twice as long.

``--nats`` runs the whole loop through a ``nats-server -js`` of the bench's own (free loopback
port, JetStream store in a temporary directory): the gateway runs with ``bus.backend=nats``
(it publishes every event into the JetStream stream) and answers control requests on
``meltica.control.bench``; the bench sends its subscribe and unsubscribe requests over NATS
request/reply, and observes the events at an independent NATS consumer of its own: a core
nats-py subscription, on a connection of its own, to
``meltica.binance.spot.book_ticker.*`` (the subjects the gateway publishes the stream's
events on).  A core subscription receives the JetStream-published messages as the server
routes them, without a JetStream consumer's pull round trips, so it is the earliest point a
remote reader can see an event.  Each message's payload is decoded (v1 wire JSON) in the
subscription's callback, where "first event" and the late-event checks are taken, so the
timings include the request's and the reply's trips through the server, the JSON on both
sides, and each event's publish to the server and delivery to the consumer.  The gateway's
in-memory Data Bus is not read in this mode; the "gateway process" CPU includes the consumer,
and the delivery gap is measured per message (each message is its own delivery).

Run:  python bench/bench_control_plane.py [--cycles 200] [--lanes 2] [--nats] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

ROOT = str(Path(__file__).resolve().parents[1])
sys.path.insert(0, ROOT)  # this checkout, not an installed copy
# ... and the same for the fake exchange child (``python -m meltica``)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)

import uvloop  # noqa: E402
from harness import cpu_model  # noqa: E402

from meltica.broker import connect, control_subject, subject_filter  # noqa: E402
from meltica.commands.common import FakeProcess, local_overrides  # noqa: E402
from meltica.config import NatsConfig, load_config  # noqa: E402
from meltica.control import ControlReply, ControlRequest  # noqa: E402
from meltica.engine import Engine  # noqa: E402
from meltica.wire import decode  # noqa: E402

MARKET: Final = "spot"
CHANNEL = "book_ticker"
KEEPALIVE = "kline_1m"  # one low-rate stream per connection keeps it open
FILLER = "mini_ticker"  # subscribed with the keep-alive, then dropped, to leave one free place
BUDGET_MS = 20.0
FIRST_EVENT_TIMEOUT_S = 5.0

GATEWAY_ID: Final = "bench"

_child_pid: int | None = None


def _start_nats(store: str) -> tuple[subprocess.Popen[bytes], str]:
    """A ``nats-server`` of our own on a free loopback port (waits until it accepts)."""
    binary = shutil.which("nats-server")
    if binary is None:
        raise SystemExit("--nats needs nats-server on PATH")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            *(binary, "-js", "-a", "127.0.0.1", "-p", str(port)),
            *("-sd", os.path.join(store, "js"), "-l", os.path.join(store, "nats.log")),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as c:
            if c.recv(5) == b"INFO ":
                return proc, f"nats://127.0.0.1:{port}"
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("nats-server did not come up")


@dataclass
class Watch:
    """What the consumer knows about each benchmark symbol."""

    first: dict[str, tuple[int, asyncio.Future[int]]] = field(default_factory=dict)
    off_since: dict[str, int] = field(default_factory=dict)  # symbol -> unsub reply, wall ns
    live_since: dict[str, int] = field(default_factory=dict)  # symbol -> first event, perf ns
    counts: dict[str, int] = field(default_factory=dict)  # events while live
    rates: list[float] = field(default_factory=list)  # events/s per stream while live
    last_batch: dict[str, int] = field(default_factory=dict)  # symbol -> last delivery, perf ns
    batch_gaps: list[int] = field(default_factory=list)  # ns between deliveries of a live stream
    violations: int = 0
    late_inflight: int = 0
    events: int = 0

    def on_batch(self, batch: list[Any]) -> None:
        now = time.perf_counter_ns()
        last = self.last_batch
        for ev in batch:
            self.events += 1
            sym = ev.symbol
            off = self.off_since.get(sym)
            if off is not None:
                if ev.ts_recv >= off:
                    self.violations += 1
                else:
                    self.late_inflight += 1
                continue
            if sym in self.counts:
                self.counts[sym] += 1
                prev = last.get(sym)
                if prev != now:
                    if prev is not None and len(self.batch_gaps) < 1_000_000:
                        self.batch_gaps.append(now - prev)
                    last[sym] = now
            waiting = self.first.get(sym)
            if waiting is not None and ev.ts_recv >= waiting[0]:
                del self.first[sym]
                if not waiting[1].done():
                    waiting[1].set_result(now)
                self.live_since[sym] = now
                self.counts[sym] = 1
                last[sym] = now

    def expect(self, sym: str, wall_ns: int) -> asyncio.Future[int]:
        self.off_since.pop(sym, None)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.first[sym] = (wall_ns, fut)
        return fut

    def stopped(self, sym: str, wall_ns: int) -> None:
        self.off_since[sym] = wall_ns
        since = self.live_since.pop(sym, None)
        n = self.counts.pop(sym, 0)
        self.last_batch.pop(sym, None)
        if since is not None and n > 1:
            self.rates.append((n - 1) / ((time.perf_counter_ns() - since) / 1e9))


async def consume(engine: Engine, watch: Watch) -> None:
    consumer = engine.bus.subscribe("bench", kinds=[CHANNEL], markets=[MARKET])
    try:
        async for batch in consumer:
            watch.on_batch(batch)
    finally:
        consumer.close()


async def listen(nc: Any, subject: str, watch: Watch) -> Any:
    """A core NATS subscription feeding ``watch`` one decoded event per message.

    The callback runs in the subscription's own task, so its wake-up is what a remote
    subscriber sees.  Returns the subscription, registered at the server.
    """

    async def on_msg(msg: Any) -> None:
        watch.on_batch([decode(msg.data)])

    sub = await nc.subscribe(subject, cb=on_msg)
    await nc.flush()  # the server has the subscription before the first request
    return sub


def _connections(engine: Engine) -> list[Any]:
    """The open connections of the market (gateway internals; empty if they moved)."""
    manager = engine.managers[MARKET]
    out = []
    for slot in getattr(manager, "_slots", ()):
        for conn in (slot.active, slot.incoming):
            if conn is not None and conn.state == "open":
                out.append(conn)
    return out


async def pace(engine: Engine, fallback_s: float) -> float:
    """Wait until every connection's message limiter would send one more message now.

    Returns the seconds waited.  Without access to the limiters, waits ``fallback_s``.
    """
    conns = _connections(engine)
    if not conns:
        await asyncio.sleep(fallback_s)
        return fallback_s
    t0 = time.perf_counter()
    while True:
        wait = max(conn.limiter.delay(conn.clock()) for conn in conns)
        if wait <= 0:
            return time.perf_counter() - t0
        await asyncio.sleep(wait + 0.001)


def _pongs(engine: Engine) -> int:
    return sum(int(getattr(conn, "pongs_sent", 0)) for conn in _connections(engine))


def _check(reply: ControlReply, what: str) -> None:
    if not reply.ok:
        raise RuntimeError(f"{what} failed: {reply.error}")


def _cpu_s(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    s = sorted(values)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)]


def summary(values_ns: list[int]) -> dict[str, float | int]:
    ms = [v / 1e6 for v in values_ns]
    if not ms:
        return {"n": 0}
    return {
        "n": len(ms),
        "p50_ms": pct(ms, 50),
        "p90_ms": pct(ms, 90),
        "p99_ms": pct(ms, 99),
        "max_ms": max(ms),
        "mean_ms": statistics.fmean(ms),
    }


def machine() -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "uvloop": getattr(uvloop, "__version__", "?"),
        "loadavg": os.getloadavg(),
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    global _child_pid
    task = asyncio.current_task()
    assert task is not None
    # SIGTERM cancels the run like Ctrl-C does, so the cleanup below always runs
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    fake = await FakeProcess.start(
        [
            "--synthetic",
            "--markets",
            MARKET,
            "--symbols",
            str(args.symbols),
            "--speed",
            str(args.speed),
            "--seed",
            "1",
        ]
    )
    _child_pid = fake.proc.pid
    engine: Engine | None = None
    consumer: asyncio.Task[None] | None = None
    server: subprocess.Popen[bytes] | None = None
    requester = None
    listener = None
    try:
        overrides = [
            *local_overrides({MARKET: fake.ws_urls[MARKET]}, fake.rest_url),
            "telemetry.metrics_enabled=false",
            f"binance.{MARKET}.max_streams_per_connection=2",
        ]
        if args.nats:
            server, nats_url = _start_nats(args.nats_store)
            overrides += ["bus.backend=nats", f"nats.url={nats_url}", f"gateway.id={GATEWAY_ID}"]
        cfg = load_config(None, env={}, overrides=overrides)
        engine = Engine(cfg, subscribe_on_start=False)
        await engine.start()
        send = engine.request
        if args.nats:
            requester = await connect(NatsConfig(url=nats_url), name="bench-ctl")
            send = _over_nats(requester)
        symbols = sorted(engine.instruments.symbols(MARKET))
        lanes = args.lanes
        if len(symbols) < lanes + 2:
            raise SystemExit(f"need --symbols >= lanes + 2 ({lanes + 2}), have {len(symbols)}")
        msgs = cfg.binance.market(MARKET).control_msgs_per_second
        fallback_s = 1.2 / msgs
        pong_overlaps = 0

        # one connection per lane, each holding one keep-alive stream and one free place
        for sym in symbols[:lanes]:
            _check(
                await engine.request(
                    ControlRequest(
                        "subscribe", market=MARKET, symbols=(sym,), channels=(KEEPALIVE, FILLER)
                    )
                ),
                "keep-alive subscribe",
            )
        _check(
            await engine.request(
                ControlRequest(
                    "unsubscribe", market=MARKET, symbols=tuple(symbols[:lanes]), channels=(FILLER,)
                )
            ),
            "filler unsubscribe",
        )
        connections = len(_connections(engine))

        watch = Watch()
        nats_subject = None
        if args.nats:
            # an independent consumer: its own connection, the events as published on NATS
            listener = await connect(NatsConfig(url=nats_url), name="bench-consumer")
            nats_subject = subject_filter(cfg.binance.market(MARKET).venue, MARKET, CHANNEL, None)
            await listen(listener, nats_subject, watch)
        else:
            consumer = asyncio.get_running_loop().create_task(consume(engine, watch))
        sub_reply: list[int] = []
        sub_prop: list[int] = []
        sub_first: list[int] = []
        unsub_reply: list[int] = []
        unsub_prop: list[int] = []
        timeouts = 0
        paced_s = 0.0
        live: deque[str] = deque()
        total = args.warmup + args.cycles
        cpu0 = _cpu_s(fake.proc.pid)
        own0 = time.process_time()
        t_start = time.perf_counter()
        for i in range(total):
            measured = i >= args.warmup
            sym = _next_symbol(symbols, live, i)
            paced_s += await pace(engine, fallback_s)
            fut = watch.expect(sym, time.time_ns())
            pongs = _pongs(engine)
            t0 = time.perf_counter_ns()
            reply = await send(
                ControlRequest("subscribe", market=MARKET, symbols=(sym,), channels=(CHANNEL,))
            )
            t1 = time.perf_counter_ns()
            pong_overlaps += _pongs(engine) != pongs
            _check(reply, f"subscribe {sym}")
            live.append(sym)
            try:
                t2 = await asyncio.wait_for(fut, FIRST_EVENT_TIMEOUT_S)
            except TimeoutError:
                timeouts += 1
                watch.first.pop(sym, None)
                t2 = None
            if measured:
                sub_reply.append(t1 - t0)
                sub_prop.append(reply.propagation_ns or 0)
                if t2 is not None:
                    sub_first.append(t2 - t0)
            while len(live) >= lanes:
                old = live.popleft()
                paced_s += await pace(engine, fallback_s)
                pongs = _pongs(engine)
                t3 = time.perf_counter_ns()
                reply = await send(
                    ControlRequest(
                        "unsubscribe", market=MARKET, symbols=(old,), channels=(CHANNEL,)
                    )
                )
                t4 = time.perf_counter_ns()
                pong_overlaps += _pongs(engine) != pongs
                watch.stopped(old, time.time_ns())
                _check(reply, f"unsubscribe {old}")
                if measured:
                    unsub_reply.append(t4 - t3)
                    unsub_prop.append(reply.propagation_ns or 0)
            if args.progress and (i + 1) % 50 == 0:
                print(f"  {i + 1}/{total} cycles", file=sys.stderr, flush=True)
        elapsed = time.perf_counter() - t_start
        cpu1 = _cpu_s(fake.proc.pid)
        own = time.process_time() - own0
        await asyncio.sleep(args.quiet_ms / 1000)  # the last unsubscribe's watch window
        while live:
            old = live.popleft()
            _check(
                await engine.request(
                    ControlRequest(
                        "unsubscribe", market=MARKET, symbols=(old,), channels=(CHANNEL,)
                    )
                ),
                f"unsubscribe {old}",
            )
        rate = statistics.median(watch.rates) if watch.rates else 0.0
        first = summary(sub_first)
        return {
            "transport": "nats" if args.nats else "in-process",
            "nats_subject": nats_subject,
            "cycles": args.cycles,
            "warmup": args.warmup,
            "lanes": lanes,
            "connections": connections,
            "symbols": len(symbols),
            "speed": args.speed,
            "subscribe_reply": summary(sub_reply),
            "subscribe_propagation": summary(sub_prop),
            "subscribe_first_event": first,
            "unsubscribe_reply": summary(unsub_reply),
            "unsubscribe_propagation": summary(unsub_prop),
            "first_event_timeouts": timeouts,
            "violations": watch.violations,
            "late_inflight": watch.late_inflight,
            "stream_rate_eps": rate,
            "stream_mean_gap_ms": 1000 / rate if rate else None,
            "delivery_gap": summary(watch.batch_gaps),
            "pong_overlaps": pong_overlaps,
            "events_seen": watch.events,
            "elapsed_s": elapsed,
            "paced_s": paced_s,
            "fake_cpu_pct": None if cpu0 is None or cpu1 is None else 100 * (cpu1 - cpu0) / elapsed,
            "gateway_cpu_pct": 100 * own / elapsed,
            "dispatch": engine.dispatcher.stats(),
            "budget_ms": BUDGET_MS,
            "budget_ok": bool(first.get("n"))
            and float(first["p99_ms"]) <= BUDGET_MS
            and timeouts == 0,
        }
    finally:
        if consumer is not None:
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)
        if requester is not None:
            await requester.close()
        if listener is not None:
            await listener.close()
        if engine is not None:
            await engine.stop()
        await fake.stop()
        _child_pid = None
        if server is not None:
            server.terminate()
            server.wait(10)


def _over_nats(nc: Any) -> Any:
    """``send(req) -> reply`` over NATS request/reply to this bench's gateway."""
    subject = control_subject(GATEWAY_ID)

    async def send(req: ControlRequest) -> ControlReply:
        msg = await nc.request(subject, json.dumps(req.to_dict()).encode(), timeout=30)
        return ControlReply.from_dict(json.loads(msg.data))

    return send


def _next_symbol(symbols: list[str], live: deque[str], i: int) -> str:
    """Round-robin over the symbols, skipping those still subscribed."""
    n = len(symbols)
    for k in range(n):
        sym = symbols[(i + k) % n]
        if sym not in live:
            return sym
    raise RuntimeError("no free symbol")


def report(res: dict[str, Any], command: str) -> None:
    print(f"command: {command}")
    m = res["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, uvloop {m['uvloop']}")
    print(f"         load avg {' '.join(f'{x:.2f}' for x in m['loadavg'])}")
    if res["transport"] == "nats":
        print(
            "transport: subscribe/unsubscribe over NATS request/reply (meltica.control."
            f"{GATEWAY_ID}); gateway bus.backend=nats; events at an independent core NATS "
            f"subscription on {res['nats_subject']}"
        )
    else:
        print("transport: in-process Control Bus; first event at an in-memory Data Bus consumer")
    print(
        f"setup: synthetic {MARKET}, {res['symbols']} symbols, speed {res['speed']}x, "
        f"{res['lanes']} lane(s) on {res['connections']} connection(s), "
        f"{res['cycles']} cycles (+{res['warmup']} warm-up) in {res['elapsed_s']:.1f} s "
        f"({res['paced_s']:.1f} s spent pacing to the 5 msg/s limit)"
    )
    gap = res["stream_mean_gap_ms"]
    print(
        f"stream: {CHANNEL} at {res['stream_rate_eps']:.0f} events/s per stream "
        f"(mean gap {gap:.3f} ms)"
        if gap
        else f"stream: {CHANNEL}: rate not measured"
    )
    print(
        f"cpu: fake exchange {res['fake_cpu_pct']:.0f}% of a core, "
        f"gateway process {res['gateway_cpu_pct']:.0f}%"
    )
    print(f"{'':28} {'n':>6} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}  (ms)")
    for key, label in (
        ("subscribe_reply", "subscribe -> reply"),
        ("subscribe_propagation", "  (reply.propagation_ns)"),
        ("subscribe_first_event", "subscribe -> first event"),
        ("unsubscribe_reply", "unsubscribe -> reply"),
        ("unsubscribe_propagation", "  (reply.propagation_ns)"),
        ("delivery_gap", "live stream delivery gap"),
    ):
        s = res[key]
        if s.get("n"):
            print(
                f"{label:28} {s['n']:>6} {s['p50_ms']:>8.3f} {s['p90_ms']:>8.3f} "
                f"{s['p99_ms']:>8.3f} {s['max_ms']:>8.3f}"
            )
    print(
        f"after unsubscribe: violations {res['violations']} (received after the reply), "
        f"late in-flight {res['late_inflight']}; first-event timeouts {res['first_event_timeouts']}"
    )
    print(f"requests during which a pong went out: {res['pong_overlaps']}")
    p99 = res["subscribe_first_event"].get("p99_ms", float("nan"))
    verdict = "PASS" if res["budget_ok"] else "FAIL"
    print(f"budget: p99 subscribe -> first event {p99:.3f} ms <= {BUDGET_MS:g} ms: {verdict}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cycles", type=int, default=200, help="measured cycles (default 200)")
    p.add_argument("--warmup", type=int, default=4, help="unmeasured cycles first (default 4)")
    p.add_argument("--lanes", type=int, default=2, help="connections to rotate over (default 2)")
    p.add_argument(
        "--symbols", type=int, help="synthetic spot symbols (default: lanes + 2, at least 4)"
    )
    p.add_argument("--speed", type=float, default=100.0, help="fake exchange speed (default 100)")
    p.add_argument(
        "--quiet-ms", type=float, default=100.0, help="watch window after the last unsubscribe"
    )
    p.add_argument(
        "--nats",
        action="store_true",
        help="requests over NATS request/reply, bus.backend=nats, events at a NATS consumer "
        "(starts its own nats-server -js)",
    )
    p.add_argument("--json", metavar="OUT", help="write the results as JSON")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    if args.cycles < 1 or args.lanes < 1:
        p.error("--cycles and --lanes must be >= 1")
    if args.symbols is None:
        args.symbols = max(4, args.lanes + 2)
    if args.symbols < args.lanes + 2:
        p.error(f"--symbols must be >= lanes + 2 ({args.lanes + 2})")
    command = " ".join([Path(sys.executable).name, *sys.argv])
    try:
        with tempfile.TemporaryDirectory() as store:
            args.nats_store = store
            res = uvloop.run(bench(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if _child_pid is not None:  # belt and braces: never leave the fake exchange behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(_child_pid, signal.SIGKILL)
    res["machine"] = machine()
    res["command"] = command
    report(res, command)
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2, default=str) + "\n")
        print(f"wrote {out}")
    return 0 if res["budget_ok"] and res["violations"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

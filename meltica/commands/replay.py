"""``meltica-engine replay CAPTURE``: a recorded session through the whole gateway.

The capture is served by the fake exchange (in this process, on loopback) the
way Binance would serve it: every stream over WebSocket, depth snapshots over
REST.  The gateway subscribes to the capture's streams before the first frame
goes out (the fake's "manual" start), so every recorded frame reaches it; at
``--speed max`` the fake sends as fast as the gateway reads.  Every Data Bus
event is written in the wire format (a ``block`` consumer: nothing is lost),
and a report says what happened: frames, events by kind (``derived`` ones from
analytics hooks included), analytics hook errors, gaps, resyncs, drops (the
bus consumer's, and the dispatch table's by reason), throughput,
receive->consumer latency, and the book check — at every exchange
``bookTicker`` whose update id equals a published book's update id, the
book's best bid/ask must equal the exchange's.

The report's ``parse_rejects`` counts the frames the parser rejected, by reason.
It is printed as a table (on stdout when the events go to a file, else on
stderr); ``--report-json FILE`` writes all of it as JSON, with a ``timeline``
(events/s and latency by exchange time, gap and resync times) that ``--plot``
draws.  Progress (``--progress``, the default on a terminal) goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from rich.console import Console

from meltica._core.events import Fixed
from meltica.broker import BrokerError
from meltica.commands.common import apply_log_level, local_overrides, open_output
from meltica.commands.replay_view import (
    MAX_SPEED_LATENCY_NOTE,
    PlotError,
    ProgressLine,
    Timeline,
    check_plot_available,
    plot,
    summary_table,
)
from meltica.config import load_config
from meltica.engine import Engine
from meltica.errors import CaptureError, ConfigError, MelticaError
from meltica.monitor import BusMonitor
from meltica.wire import encode_lines

# (bid price, bid qty, ask price, ask qty); Fixed compares by value, whatever the exponent
_Top = tuple[Fixed, Fixed, Fixed, Fixed]


@dataclass
class BookCheck:
    """Exchange bookTicker vs the gateway's published book at the same update id.

    A point is an update id for which both the exchange's bookTicker and a
    published top-N book exist; they arrive in either order (a diff-depth
    event covers 100 ms of updates), so recent tickers are kept per symbol.
    """

    points: int = 0
    mismatches: int = 0
    examples: list[str] = field(default_factory=list)
    keep: int = 4096
    _tickers: dict[tuple[str, str], OrderedDict[int, _Top]] = field(default_factory=dict)
    _book: dict[tuple[str, str], tuple[int, _Top]] = field(default_factory=dict)

    def observe(self, batch: list[Any]) -> None:
        for ev in batch:
            kind = ev.kind
            if kind == "book_ticker":
                key = (ev.market, ev.symbol)
                uid, top = ev.update_id, (ev.bid_price, ev.bid_qty, ev.ask_price, ev.ask_qty)
                book = self._book.get(key)
                if book is not None and book[0] == uid:
                    self._compare(key, uid, top, book[1])
                    continue
                recent = self._tickers.setdefault(key, OrderedDict())
                recent[uid] = top
                if len(recent) > self.keep:
                    recent.popitem(last=False)
            elif kind == "book_snapshot" and ev.source == "book":
                bids, asks = ev.bids, ev.asks
                if not bids or not asks:
                    continue
                key = (ev.market, ev.symbol)
                top = (bids[0][0], bids[0][1], asks[0][0], asks[0][1])
                self._book[key] = (ev.update_id, top)
                ticker = self._tickers.get(key, {}).pop(ev.update_id, None)
                if ticker is not None:
                    self._compare(key, ev.update_id, ticker, top)

    def _compare(self, key: tuple[str, str], uid: int, ticker: _Top, book: _Top) -> None:
        self.points += 1
        if ticker != book:
            self.mismatches += 1
            if len(self.examples) < 5:
                self.examples.append(f"{key[0]}:{key[1]} u={uid}: ticker {ticker} != book {book}")


async def run_replay(args: argparse.Namespace) -> int:
    err = Console(stderr=True)
    events_on_stdout = args.output in (None, "-")
    if args.report_json == "-" and events_on_stdout:
        print(
            "error: --report-json -: stdout carries the events; give -o FILE for them",
            file=sys.stderr,
        )
        return 2
    if args.plot is not None:
        try:
            check_plot_available()
        except PlotError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    with ExitStack() as stack:
        # the outputs are opened before anything starts: an unwritable path is a
        # one-line bad-input error, not a traceback after the whole replay
        out = open_output(stack, args.output)
        if out is None:
            return 2
        report_out: BinaryIO | None = None
        if args.report_json is not None:
            report_out = open_output(stack, args.report_json)
            if report_out is None:
                return 2
        if args.plot is not None:
            existed = os.path.exists(args.plot)
            try:
                open(args.plot, "ab").close()
            except OSError as exc:
                print(f"error: cannot write {args.plot}: {exc.strerror}", file=sys.stderr)
                return 2
            if not existed:
                os.remove(args.plot)
        # the table goes to stdout unless the events or the JSON report are there
        table_console = (
            err if events_on_stdout or args.report_json == "-" else Console(soft_wrap=False)
        )
        return await _replay(args, err, out, report_out, table_console)


async def _replay(
    args: argparse.Namespace,
    err: Console,
    out: BinaryIO,
    report_out: BinaryIO | None,
    table_console: Console,
) -> int:
    from meltica.replay.exchange import FakeExchange
    from meltica.replay.faults import FaultPlan
    from meltica.replay.source import CaptureSource

    progress_on = args.progress if args.progress is not None else sys.stderr.isatty()
    progress = ProgressLine(sys.stderr, enabled=progress_on)
    scanned = [0]

    def on_scan(bytes_read: int) -> None:
        scanned[0] += 4096
        progress.update(bytes_read, scanned[0])

    try:
        total = sum(os.path.getsize(p) for p in args.capture)
    except OSError:
        total = 0  # CaptureSource names the file that is missing
    # streams, symbols and snapshots must be known before the gateway subscribes:
    # the capture is read once for them, with progress, then replayed
    progress.start("scan", total, "frames")
    try:
        source = CaptureSource(args.capture, market=args.market, on_scan=on_scan)
    except (CaptureError, ValueError) as exc:
        progress.abort()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    progress.finish(source.size_bytes, source.frame_count)
    market = source.market
    streams = sorted(source.streams(market))
    depth_speed = _depth_speed(market, streams)
    try:
        faults = FaultPlan.parse(args.fault)
    except ValueError as exc:
        progress.abort()
        print(f"error: --fault: {exc}", file=sys.stderr)
        return 2
    fake = FakeExchange(source, speed=args.speed, start="manual", faults=faults)
    await fake.start()
    engine: Engine | None = None
    try:
        overrides = local_overrides(
            {market: fake.ws_url(market)},
            fake.rest_url,
            symbols={market: [s.lower() for s in source.symbols(market)]},
            recorded_snapshots=True,
        )
        if depth_speed is not None:
            overrides.append(f"binance.{market}.depth_speed_ms={depth_speed}")
        if market == "spot":
            overrides.append(f"binance.spot.venue={source.venue}")
        overrides += ["telemetry.metrics_enabled=false", *args.set]
        if args.manifest is not None:
            overrides.append(f"gaps.path={args.manifest}")
        try:
            config = load_config(args.config, overrides=overrides)
            apply_log_level(args, config)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        engine = Engine(config, subscribe_on_start=False)
        consumer = engine.bus.subscribe("replay", policy="block")
        monitor = BusMonitor()
        timeline = Timeline()
        check = BookCheck()
        await engine.start()
        reply = await engine.subscribe_streams(market, streams)
        if not reply.ok:
            print(f"error: subscribing {streams} failed: {reply.error}", file=sys.stderr)
            return 1
        t0 = time.monotonic()
        progress.start("replay", source.size_bytes, "frames")
        fake.begin()

        def received() -> int:
            assert engine is not None
            return sum(int(m.stats().get("frames", 0)) for m in engine.managers.values())

        def write(batch: list[Any]) -> None:
            now = time.time_ns()
            monitor.observe(batch, now)
            timeline.observe(batch, now)
            check.observe(batch)
            out.write(encode_lines(batch))

        span_s = (source.last_ns - source.first_ns) / 1e9

        def show(sent: int) -> None:
            # the fake can send far ahead of what the writer has written (at --speed max):
            # the share done is that of the capture's time the written events reached
            done = timeline.position_s / span_s if span_s > 0 else None
            progress.update(
                source.frames_meter.bytes_read, sent, f"{monitor.events:,} events", done=done
            )

        assert engine is not None
        bus = engine.bus
        await _pump(consumer, write, fake, received, show, lambda: bus.paused)
        elapsed = time.monotonic() - t0
        await engine.stop()
        rest = consumer.poll()
        while rest:
            write(rest)
            rest = consumer.poll()
        out.flush()
        progress.finish(
            source.frames_meter.bytes_read, fake.frames_read, f"{monitor.events:,} events"
        )
        report = _report(engine, fake, source, monitor, check, consumer, received(), elapsed)
        report["speed"] = "max" if args.speed is None else args.speed
        if args.speed is None:
            report["latency_note"] = MAX_SPEED_LATENCY_NOTE
        report["timeline"] = timeline.to_dict()
        report["faults"] = [str(f) for f in faults.faults]
        # a book whose capture holds no depth snapshot can never sync: say so, it is
        # the capture's limit; any other book that is not live is a failure
        not_live = [k for k, state in report["books"].items() if state != "live"]
        unsyncable = [
            k for k in not_live if source.depth_snapshot(market, k.split(":", 1)[1], 1000) is None
        ]
        report["books_without_snapshot_in_capture"] = unsyncable
        table_console.print(summary_table(report))
        if report_out is not None:
            report_out.write(json.dumps(report, indent=2).encode() + b"\n")
            report_out.flush()
        if args.plot is not None:
            plot(report, args.plot)
        failed = set(not_live) - set(unsyncable)
        for key in unsyncable:
            err.print(f"warning: {key}: the capture holds no depth snapshot; no book to check")
        for key in sorted(failed):
            err.print(f"error: {key}: book not live at the end of the replay")
        nats_lost = report.get("nats", {}).get("lost", 0)
        bad = (
            report["gaps"]
            or report["gap_manifest"]["total"]
            or report["drops"]
            or report["book_check"]["mismatches"]
            or failed
            or nats_lost
        )
        return 1 if bad else 0
    except BrokerError as exc:  # the broker's config keys: like any config error
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except MelticaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if engine is not None:
            await engine.stop()
        await fake.stop()


def _depth_speed(market: str, streams: list[str]) -> int | None:
    """The depth update speed the capture's diff-depth streams use (ms), if any."""
    for s in streams:
        name = s.split("@", 1)[1] if "@" in s else s
        if name == "depth":  # the bare name is the market's default speed
            return 1000 if market == "spot" else 250
        if name.startswith("depth@") and name.endswith("ms"):
            return int(name[6:-2])
    return None


async def _pump(
    consumer: Any,
    write: Callable[[list[Any]], None],
    fake: Any,
    received: Callable[[], int],
    progress: Callable[[int], None],
    paused: Callable[[], bool],
) -> None:
    """Consume until the fake has sent everything and the gateway went quiet.

    Readers paused by the bus (a ``block`` consumer, e.g. the NATS publisher during a
    broker outage, at high water) are not quiet: what the fake sent still waits in the
    sockets, unread, and stopping then would drop it."""
    quiet_since: float | None = None
    last_seen = -1
    while True:
        try:
            batch = await asyncio.wait_for(consumer.next_batch(), 0.1)
        except TimeoutError:
            batch = []
        if batch:
            write(batch)
        n = received()
        progress(fake.frames_read)
        if not fake.finished.is_set():
            continue
        now = time.monotonic()
        if batch or n != last_seen or paused():
            last_seen, quiet_since = n, now
        elif quiet_since is not None and now - quiet_since >= 0.5:
            return


def _report(
    engine: Engine,
    fake: Any,
    source: Any,
    monitor: BusMonitor,
    check: BookCheck,
    consumer: Any,
    received: int,
    elapsed: float,
) -> dict[str, Any]:
    cstat = engine.conductor.status()
    instruments = cstat["instruments"]
    return {
        "capture": [str(p) for p in source.paths],
        "market": source.market,
        "frames": {
            "in_capture": source.frame_count,
            "sent": fake.frames_published,
            "received": received,
        },
        "events": monitor.events,
        "by_kind": dict(sorted(monitor.kinds.items())),
        "parse_rejects": _parse_rejects(engine),
        "gaps": sum(i.get("gaps", 0) for i in instruments.values()),
        "resyncs": sum(i.get("resyncs", 0) for i in instruments.values()),
        "drops": consumer.dropped,
        # the dispatch table's drops by reason (meltica_dispatch_dropped_total)
        "dispatch_dropped": engine.table.drops(),
        "analytics": {
            "derived": int(cstat["counters"].get("derived", 0)),
            "hook_errors": cstat["hook_errors"],
        },
        "books": {k: v.get("state") for k, v in instruments.items()},
        # every hole with its outcome (docs/gaps.md); --manifest FILE has the entries
        "gap_manifest": engine.gaps.summary(),
        "throughput_frames_per_s": round(received / max(elapsed, 1e-9), 1),
        "elapsed_s": round(elapsed, 3),
        # the ring consumer's span from its first to its last event
        "consumer_span_s": round(monitor.elapsed_s, 3),
        "latency_us": monitor.summary()["latency_us"],
        "book_check": {
            "points": check.points,
            "mismatches": check.mismatches,
            "examples": check.examples,
        },
        **_nats_report(engine),
    }


def _parse_rejects(engine: Engine) -> dict[str, int]:
    """Frames the parsers rejected, by error reason (reasons with none left out)."""
    out: dict[str, int] = {}
    for manager in engine.managers.values():
        for reason, n in manager.parse_rejects().items():
            if n:
                out[reason] = out.get(reason, 0) + n
    return dict(sorted(out.items()))


def _nats_report(engine: Engine) -> dict[str, Any]:
    """The JetStream publisher's counters (bus.backend nats): ``lost`` is what
    did not reach the stream, dropped (outage_policy drop) or unacknowledged."""
    pub = engine.nats_bus
    if pub is None:
        return {}
    stats = pub.stats()
    dropped = dict(pub.dropped)
    lost = sum(dropped.values()) + int(stats["window_depth"])
    return {"nats": {**stats, "dropped": dropped, "lost": lost}}

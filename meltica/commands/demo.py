"""``meltica-engine demo``: the whole gateway offline, with a live terminal view.

A fake Binance (``meltica-engine fake-exchange --synthetic``) runs in its own
process on loopback with a synthetic market of a few spot and USD-M symbols;
the gateway connects to it exactly as it would to Binance (WebSocket + REST),
and a Data Bus consumer feeds the view: per-symbol top of book from the
Conductor's books, trades/s, events/s, receive->consumer latency, gaps,
resyncs and drops.  ``--duration`` stops it and prints a summary; the exit
status is 0 only if events flowed on every demo symbol.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from typing import Any

from rich.console import Console
from rich.live import Live

from meltica.commands.common import FakeProcess, apply_log_level, local_overrides
from meltica.config import load_config
from meltica.engine import Engine
from meltica.errors import MelticaError
from meltica.monitor import BusMonitor

MARKETS = ("spot", "usdm")


def demo_symbols(per_market: int, seed: int) -> dict[str, list[str]]:
    """The symbols the fake exchange's synthetic market will list."""
    from meltica.replay.synthetic import SyntheticMarket

    src = SyntheticMarket(markets=MARKETS, symbols_per_market=per_market, seed=seed)
    return {m: src.symbols(m) for m in MARKETS}


async def run_demo(args: argparse.Namespace) -> int:
    console = Console()
    if not console.is_terminal:
        console = Console(width=140)
    symbols = demo_symbols(args.symbols, args.seed)
    try:
        fake = await FakeProcess.start(
            [
                "--synthetic",
                "--markets",
                ",".join(MARKETS),
                "--symbols",
                str(args.symbols),
                "--seed",
                str(args.seed),
                "--speed",
                str(args.speed),
            ]
        )
    except MelticaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    engine: Engine | None = None
    try:
        overrides = [
            *local_overrides(fake.ws_urls, fake.rest_url, symbols=symbols),
            f"telemetry.metrics_port={args.metrics_port}",
            *args.set,
        ]
        config = load_config(args.config, overrides=overrides)
        apply_log_level(args, config)
        engine = Engine(config)
        monitor = BusMonitor()
        consumer = engine.bus.subscribe("demo-view", policy="drop_oldest")
        await engine.start()
        if engine.metrics is not None:
            console.print(f"metrics: {engine.metrics.url}/metrics", style="dim")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        deadline = None if args.duration is None else time.monotonic() + args.duration

        def extra() -> dict[str, Any]:
            return {"bus drops": consumer.dropped, "books": _books(engine)}

        live_view = args.view and console.is_terminal
        with (
            Live(
                monitor.table("Meltica demo", extra()),
                console=console,
                refresh_per_second=4,
                transient=False,
            )
            if live_view
            else contextlib.nullcontext() as live
        ):
            last_draw = 0.0
            while not stop.is_set():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                try:
                    batch = await asyncio.wait_for(consumer.next_batch(), 0.25)
                except TimeoutError:
                    batch = []
                if batch:
                    monitor.observe(batch, time.time_ns())
                now = time.monotonic()
                if live is not None and now - last_draw >= 0.25:
                    live.update(monitor.table("Meltica demo", extra()))
                    last_draw = now
        await engine.stop()
        console.print(monitor.table("Meltica demo: summary", extra()))
        summary = monitor.summary()
        summary["bus_drops"] = consumer.dropped
        summary["books"] = _books(engine)
        missing = [
            f"{m}:{s}" for m in MARKETS for s in symbols[m] if f"{m}:{s}" not in summary["symbols"]
        ]
        summary["symbols_without_events"] = missing
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(summary, fh, indent=2)
        if missing:
            print(f"error: no events from {', '.join(missing)}", file=sys.stderr)
            return 1
        return 0
    except MelticaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if engine is not None:
            await engine.stop()
        await fake.stop()


def _books(engine: Engine | None) -> str:
    if engine is None:
        return ""
    states = [i["state"] for i in engine.conductor.status()["instruments"].values()]
    live = sum(1 for s in states if s == "live")
    return f"{live}/{len(states)} live"

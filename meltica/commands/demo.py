"""``meltica-engine demo``: the whole gateway offline, with a live terminal view.

A fake Binance (``meltica-engine fake-exchange --synthetic``) runs in its own
process on loopback with a synthetic market of a few spot and USD-M symbols;
the gateway connects to it exactly as it would to Binance (WebSocket + REST),
and the live view (`meltica.view.LiveView`, the same one ``top`` shows for a
remote gateway) is fed in-process: a Data Bus consumer gives it prices and
trades, the engine's metric registry (read once a second, as a scrape would)
connections, rates, REST weight, bus lag and book states.  ``--snapshot FILE``
writes the last frame at 80x24 (SVG, HTML or text).  ``--duration`` stops it
and prints a summary of what the consumer saw; the exit status is 0 only if
events flowed on every demo symbol.
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
from rich.text import Text

from meltica.commands.common import FakeProcess, apply_log_level, local_overrides
from meltica.config import load_config
from meltica.engine import Engine
from meltica.errors import MelticaError
from meltica.monitor import BusMonitor
from meltica.view import LiveView, write_snapshot

MARKETS = ("spot", "usdm")
SCRAPE_S = 1.0  # metrics read into the view, seconds
DRAW_S = 0.25  # redraws, seconds


def demo_symbols(per_market: int, seed: int) -> dict[str, list[str]]:
    """The symbols the fake exchange's synthetic market will list."""
    from meltica.replay.synthetic import SyntheticMarket

    src = SyntheticMarket(markets=MARKETS, symbols_per_market=per_market, seed=seed)
    return {m: src.symbols(m) for m in MARKETS}


async def run_demo(args: argparse.Namespace) -> int:
    console = Console()
    if not console.is_terminal:
        console = Console(width=80)
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
        view = LiveView("Meltica demo")
        for market, names in symbols.items():
            for symbol in names:
                inst = engine.instruments.get(market, symbol)
                if inst is not None:
                    view.set_instrument(market, symbol, inst.tick_size, inst.step_size)
        if engine.metrics is not None:
            view.feeds["metrics"] = f"{engine.metrics.url}/metrics"
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        deadline = None if args.duration is None else time.monotonic() + args.duration
        # the live view follows the terminal's size; --snapshot draws 80x24
        live_view = args.view and console.is_terminal
        with (
            Live(console=console, auto_refresh=False, transient=False)
            if live_view
            else contextlib.nullcontext() as live
        ):
            last_draw = last_scrape = 0.0
            while not stop.is_set():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                try:
                    batch = await asyncio.wait_for(consumer.next_batch(), 0.25)
                except TimeoutError:
                    batch = []
                now = time.monotonic()
                if batch:
                    monitor.observe(batch, time.time_ns())
                    view.observe(batch, now)
                if now - last_scrape >= SCRAPE_S:
                    _scrape(engine, view, now)
                    last_scrape = now
                if now - last_draw >= DRAW_S:
                    view.tick(now)
                    last_draw = now
                    if live is not None:
                        live.update(view.render(now, height=console.height), refresh=True)
        if args.snapshot:
            now = time.monotonic()
            view.tick(now)
            write_snapshot(view, now, args.snapshot)
        await engine.stop()
        summary = monitor.summary()
        summary["bus_drops"] = consumer.dropped
        summary["books"] = _books(engine)
        console.print(_summary_text(summary, monitor.elapsed_s))
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


def _summary_text(summary: dict[str, Any], elapsed_s: float) -> Text:
    """The whole run in a few lines that wrap at the terminal's width (80 is fine)."""
    lat = summary["latency_us"]
    t = Text()
    t.append("Meltica demo: summary", style="bold")
    t.append(
        f"\n{elapsed_s:.1f} s, {summary['events']:,} events ({summary['events_per_s']:,.0f}/s "
        f"on average); receive -> consumer latency p50 {lat['p50']:,} µs, p99 {lat['p99']:,} µs, "
        f"max {lat['max']:,} µs"
    )
    t.append(
        f"\ngaps {summary['gap']}, resyncs {summary['resync_started']}, stale "
        f"{summary['stale']}, bus drops {summary['bus_drops']}, books {summary['books']}"
    )
    per_symbol = ", ".join(
        f"{key} {v['events']:,}" for key, v in summary["symbols"].items() if not key.endswith(":*")
    )
    t.append(f"\nevents by symbol: {per_symbol}")
    return t


def _scrape(engine: Engine, view: LiveView, now: float) -> None:
    """The engine's metrics into the view, read in-process as a scrape would."""
    if engine.metrics is not None:
        view.update_metrics(engine.metrics.registry.collect(), now)


def _books(engine: Engine | None) -> str:
    if engine is None:
        return ""
    states = [i["state"] for i in engine.conductor.status()["instruments"].values()]
    live = sum(1 for s in states if s == "live")
    return f"{live}/{len(states)} live"

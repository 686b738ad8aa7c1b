"""Loop stalls of the gateway's housekeeping: a /metrics scrape and a full collection.

Two things a gateway process does besides the data that can hold its event loop for
milliseconds, both measured in one process on an ``Engine`` built from the default
config (not started) with ``--books`` books tracked by its Conductor (4:1 spot:USD-M,
as the whole market), so the state they walk has the whole market's size:

1. A ``/metrics`` scrape: the body made in one go (``generate_latest`` of the server's
   registry: what the server did before) next to the sliced render the server uses
   (``render_sliced``: samples read in slices of ``SCRAPE_SLICE_S``, formatted
   ``RENDER_CHUNK`` at a time).  Reported: the longest time the loop was held (a
   ``call_soon`` ticker measures the gaps between its runs) and the total time; the
   two bodies are compared (the same text but for process_/python_ lines).
2. A full (generation 2) collection of the process's heap, unfrozen, and after
   ``gc.collect(); gc.freeze()`` as ``Engine.start`` does.

Medians of ``--rounds`` rounds; the machine is shared and noisy (load average printed).

Run (from the repository root):
    PYTHONPATH=. .venv/bin/python bench/bench_stalls.py [--books 2400] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import statistics
import time

from prometheus_client import generate_latest

from meltica.config import load_config
from meltica.engine import Engine
from meltica.telemetry.metrics import render_sliced


def _own(body: bytes) -> list[str]:
    pat = re.compile(r"(# (HELP|TYPE) )?(process_|python_)")
    return [line for line in body.decode().splitlines() if not pat.match(line)]


async def _held(render: str, engine: Engine) -> tuple[float, float, bytes]:
    """(longest loop hold, total) in ms while one scrape body is made."""
    assert engine.metrics is not None
    loop = asyncio.get_running_loop()
    gaps: list[float] = []
    state = {"t": time.perf_counter(), "run": True}

    def tick() -> None:
        now = time.perf_counter()
        gaps.append(now - state["t"])
        state["t"] = now
        if state["run"]:
            loop.call_soon(tick)

    loop.call_soon(tick)
    await asyncio.sleep(0)
    t0 = time.perf_counter()
    if render == "sliced":
        body = await render_sliced(engine.metrics.collector, engine.metrics.runtime)
    else:
        body = generate_latest(engine.metrics.registry)
    total = time.perf_counter() - t0
    await asyncio.sleep(0)
    state["run"] = False
    await asyncio.sleep(0)
    return max(gaps) * 1e3, total * 1e3, body


def _full_collection_ms() -> float:
    t0 = time.perf_counter()
    gc.collect()
    return (time.perf_counter() - t0) * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--books", type=int, default=2400)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    engine = Engine(
        load_config(None, env={}, overrides=["telemetry.metrics_port=0"]),
        subscribe_on_start=False,
    )
    for i in range(args.books):
        engine.conductor.track("spot" if i % 5 else "usdm", f"S{i}USDT")
    print(f"load average {os.getloadavg()[0]:.2f}; {args.books} books; medians of {args.rounds}")

    async def scrapes() -> dict[str, list[tuple[float, float]]]:
        out: dict[str, list[tuple[float, float]]] = {"one go": [], "sliced": []}
        bodies = {}
        for _ in range(args.rounds):
            for kind in out:  # interleaved
                held, total, bodies[kind] = await _held(kind, engine)
                out[kind].append((held, total))
        same = _own(bodies["one go"]) == _own(bodies["sliced"])
        print(f"/metrics body {len(bodies['sliced']) / 1e6:.2f} MB, same text: {same}")
        return out

    gc.unfreeze()
    for label, frozen in (("unfrozen", False), ("frozen", True)):
        if frozen:
            gc.collect()
            gc.freeze()
        runs = asyncio.run(scrapes())
        for kind, xs in runs.items():
            held = statistics.median(x[0] for x in xs)
            total = statistics.median(x[1] for x in xs)
            print(
                f"heap {label:8s} scrape {kind:6s}: longest loop hold {held:7.1f} ms, "
                f"body made in {total:7.1f} ms"
            )
        tracked = len(gc.get_objects())
        full = statistics.median(_full_collection_ms() for _ in range(args.rounds))
        print(
            f"heap {label:8s} full collection {full:6.1f} ms "
            f"({tracked:,} tracked objects, {gc.get_freeze_count():,} frozen)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The gateway's collector set-up: start-up's heap frozen out of the collector while running.

A full collection walks every tracked object; the ~70k that imports and start-up leave
in a gateway process made one hold the loop for ~25 ms (docs/benchmarks.md, "End to
end").  ``Engine.start`` collects once and freezes what survives (``gc.freeze``) before
its connections open; ``stop`` unfreezes.  No timing here: the stall is measured by
bench/bench_e2e.py.
"""

from __future__ import annotations

import gc
from typing import Any

from aio import run

from meltica.commands.common import local_overrides
from meltica.config import load_config
from meltica.replay.synthetic import SyntheticMarket


def test_start_freezes_the_start_up_heap_and_stop_unfreezes_it() -> None:
    from meltica.engine import Engine
    from meltica.replay.exchange import FakeExchange

    market = SyntheticMarket(symbols={"spot": ["BTCUSDT"]}, seed=1)

    async def body() -> dict[str, Any]:
        async with FakeExchange(market, speed=1.0) as fake:
            overrides = local_overrides(
                {"spot": fake.ws_url("spot")}, fake.rest_url, symbols={"spot": ["BTCUSDT"]}
            )
            config = load_config(
                None,
                env={},
                overrides=[*overrides, "telemetry.metrics_enabled=false"],
            )
            engine = Engine(config)
            gc.unfreeze()
            before = gc.get_freeze_count()
            await engine.start()
            try:
                running = gc.get_freeze_count()
                # what the collector still walks: only what was allocated since the freeze
                tracked = len(gc.get_objects())
                books = len(engine.conductor.status()["instruments"])
            finally:
                await engine.stop()
            return {
                "before": before,
                "running": running,
                "tracked": tracked,
                "books": books,
                "after": gc.get_freeze_count(),
            }

    got = run(body, timeout=60)
    assert got["before"] == 0
    assert got["books"] == 1  # the engine really started and subscribed
    # the engine, its config, the imported modules: far more than start-up leaves tracked
    assert got["running"] > 10_000
    assert got["tracked"] < got["running"]
    assert got["after"] == 0

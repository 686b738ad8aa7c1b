"""``/metrics`` made in slices: the same text as ``generate_latest``, the loop served meanwhile.

With the whole market's books a scrape reads and formats ~27k samples; made in one go
that held the event loop (and the data) ~260 ms.  The server reads the samples in time
slices and formats them `RENDER_CHUNK` at a time, giving the loop back in between.  No
timing here: what is checked is the body and that other callbacks ran during the scrape.
"""

from __future__ import annotations

import asyncio
import re

import aiohttp
from aio import run
from prometheus_client import generate_latest

from meltica.telemetry.catalog import sample
from meltica.telemetry.metrics import (
    RENDER_CHUNK,
    Histogram,
    MetricsServer,
    Sample,
    StatsCollector,
)

BOOKS = 1000


def _samples() -> list[Sample]:
    out = [sample("build_info", 1, version="test")]
    for i in range(BOOKS):
        out.append(sample("book_live", i % 2, market="spot", symbol=f"S{i}USDT"))
        out.append(sample("book_gaps_total", i, market="spot", symbol=f"S{i}USDT"))
    return out


def _own(text: str) -> list[str]:
    """The lines of our families (process_* and python_* move between two reads)."""
    return [
        line
        for line in text.splitlines()
        if not re.match(r"(# (HELP|TYPE) )?(process_|python_)", line)
    ]


def test_the_sliced_scrape_serves_the_generate_latest_text_and_lets_the_loop_run() -> None:
    hist = Histogram("pipeline_latency_seconds", "receive to publish")
    hist.observe(0.001, 3)

    async def body() -> tuple[str, str, int]:
        server = MetricsServer(StatsCollector(_samples, lambda: [hist]), port=0)
        await server.start()
        ticks = 0
        stop = False

        async def ticker() -> None:
            nonlocal ticks
            while not stop:
                ticks += 1
                await asyncio.sleep(0)

        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{server.url}/metrics") as resp:
                    assert resp.status == 200
                # the ticker starts once the first scrape is done: it counts only the second
                task = asyncio.get_running_loop().create_task(ticker())
                await asyncio.sleep(0)
                start = ticks
                async with session.get(f"{server.url}/metrics") as resp:
                    text = await resp.text()
                during = ticks - start
                stop = True
                await task
            return text, generate_latest(server.registry).decode(), during
        finally:
            await server.stop()

    text, reference, during = run(body, timeout=60)
    assert _own(text) == _own(reference)
    assert sum(1 for line in text.splitlines() if line.startswith("meltica_book_live{")) == BOOKS
    assert "process_" in text and "meltica_pipeline_latency_seconds_bucket" in text
    # formatting alone gives the loop back once per RENDER_CHUNK samples of a family
    assert during >= 2 * BOOKS // RENDER_CHUNK

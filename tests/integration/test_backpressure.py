"""Back-pressure end to end: a slow ``block`` consumer pauses the WebSocket readers and
loses nothing, while the fake exchange sends a real capture as fast as it can."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aio import run

from meltica.commands.common import local_overrides
from meltica.config import load_config
from meltica.engine import Engine
from meltica.replay.exchange import FakeExchange
from meltica.replay.source import CaptureSource


def test_slow_block_consumer_pauses_readers_and_loses_nothing(captures_dir: Path) -> None:
    path = captures_dir / "hftbacktest/examples/spot/btcusdt_20240808.gz"
    source = CaptureSource(path)
    streams = sorted(source.streams("spot"))

    async def scenario() -> None:
        fake = FakeExchange(source, speed=None, start="manual")
        await fake.start()
        overrides = [
            *local_overrides(
                {"spot": fake.ws_url("spot")}, fake.rest_url, symbols={"spot": ["btcusdt"]}
            ),
            "binance.spot.depth_speed_ms=100",
            "bus.capacity=16384",
            "telemetry.metrics_enabled=false",
        ]
        engine = Engine(load_config(None, env={}, overrides=overrides), subscribe_on_start=False)
        consumer = engine.bus.subscribe("slow", policy="block")
        kinds: dict[str, int] = {}
        try:
            await engine.start()
            reply = await engine.subscribe_streams("spot", streams)
            assert reply.ok, reply
            fake.begin()
            while True:
                try:
                    batch = await asyncio.wait_for(consumer.next_batch(), 5.0)
                except TimeoutError:
                    break  # the capture is over and everything was read
                for ev in batch:
                    kinds[ev.kind] = kinds.get(ev.kind, 0) + 1
                await asyncio.sleep(0.002)  # a slow consumer: ~256 events per 2 ms at most
            assert fake.finished.is_set()
            stats = engine.bus.stats()
            assert stats["overflows"] == 0, stats
            assert stats["pauses"] >= 1, stats  # the readers were paused at least once
            assert consumer.dropped == 0
        finally:
            await engine.stop()
            await fake.stop()
        # every recorded frame became exactly one delivered exchange event
        assert kinds.get("trade") == 9757, kinds
        assert kinds.get("book_ticker") == 28040, kinds
        assert kinds.get("book_delta") == 3451, kinds

    run(scenario)

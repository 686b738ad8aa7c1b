"""Back-pressure end to end: a slow ``block`` consumer pauses the WebSocket readers and
loses nothing, while the fake exchange sends a real capture as fast as it can."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aio import run
from fakeproc import REPLAY_CAPTURE, batches, replay_engine, start_replay

from meltica.replay.exchange import FakeExchange
from meltica.replay.source import CaptureSource


def test_slow_block_consumer_pauses_readers_and_loses_nothing(captures_dir: Path) -> None:
    source = CaptureSource(captures_dir / REPLAY_CAPTURE)

    async def scenario() -> None:
        fake = FakeExchange(source, speed=None, start="manual")
        await fake.start()
        engine = replay_engine(fake)
        consumer = engine.bus.subscribe("slow", policy="block")
        kinds: dict[str, int] = {}
        try:
            await start_replay(engine, fake, source)
            # until a quiet spell: the capture is over and everything was read
            async for batch in batches(consumer):
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

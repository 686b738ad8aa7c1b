"""A bus consumer task that keeps every event it receives (integration tests)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from meltica.engine import Engine


class Collector:
    """A bus consumer task that keeps every event it receives."""

    def __init__(self, engine: Engine, name: str, **filters: Any) -> None:
        self.consumer = engine.bus.subscribe(name, **filters)
        self.events: list[Any] = []
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        async for batch in self.consumer:
            self.events.extend(batch)

    async def wait_for(self, pred: Callable[[Any], bool], timeout: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for ev in self.events[seen:]:
                if pred(ev):
                    return ev
            seen = len(self.events)
            await asyncio.sleep(0.02)
        raise AssertionError(f"no matching event within {timeout} s ({len(self.events)} seen)")

    async def close(self) -> None:
        self.consumer.close()
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    def kinds(self, market: str, symbol: str) -> set[str]:
        return {e.kind for e in self.events if e.market == market and e.symbol == symbol}

"""`meltica replay`'s pump: it does not end while the bus holds the readers paused.

A ``block`` consumer (the NATS publisher during a broker outage) pauses the readers at high
water; the fake has sent everything by then, but the gateway has not read it.  Ending on
"quiet" at that point dropped the capture's tail unread.
"""

from __future__ import annotations

import asyncio
from typing import Any

from meltica.commands.replay import _pump


class _Idle:
    """A consumer with nothing to deliver."""

    async def next_batch(self) -> list[Any]:
        await asyncio.sleep(3600)
        return []


class _Finished:
    frames_read = 10

    def __init__(self) -> None:
        self.finished = asyncio.Event()
        self.finished.set()


def test_pump_waits_while_the_readers_are_paused() -> None:
    calls = 0
    paused_for = 12  # pump turns (0.1 s each when nothing comes) with the readers paused

    def paused() -> bool:
        nonlocal calls
        calls += 1
        return calls <= paused_for

    async def main() -> None:
        await _pump(_Idle(), lambda batch: None, _Finished(), lambda: 10, lambda n: None, paused)

    asyncio.run(main())
    # it ended only after the readers were resumed, then quiet for its 0.5 s
    assert calls > paused_for

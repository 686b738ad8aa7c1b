"""A slow consumer of each bus policy (docs/bus.md), next to a fast one.

The harness's own consumer (policy ``block``, reading as fast as it can) sees the whole
run and meets the user-level checks; a second consumer reads slowly for a while and gets
what its policy promises:

- ``block``: everything, in order (the gateway's readers pause instead);
- ``drop_oldest``: a subsequence in order, each loss announced by a ``gap`` marker whose
  ordinals name exactly the events it did not get, and counted;
- ``conflate``: no key twice in a row it could not keep up with, and at the end the
  latest event of every key.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fault_harness import Scenario, run_fault

from meltica.engine import Engine

SLOW_S = 2.0  # how long the consumer dawdles (real seconds, from its first read)
# the ring: 512 events.  A block consumer may lag half of it before the readers pause (the
# other half is the reserve for what they already read); the others lag at most 64.
RING = 512


def _slow_consumer(policy: str, got: list[Any]) -> Any:
    def setup(engine: Engine) -> None:
        capacity = None if policy == "block" else 64
        consumer = engine.bus.subscribe("slow", policy=policy, capacity=capacity)

        async def read() -> None:
            loop = asyncio.get_running_loop()
            until: float | None = None
            while True:
                batch = await consumer.next_batch(max_n=1)
                got.extend(batch)
                until = until or loop.time() + SLOW_S
                if loop.time() < until:
                    await asyncio.sleep(0.05)  # at most 20 events/s: slower than the market

        asyncio.get_running_loop().create_task(read())

    return setup


def _is_marker(e: Any) -> bool:
    return e.venue == "meltica" and e.kind == "gap"


@pytest.mark.parametrize("policy", ["block", "drop_oldest", "conflate"])
def test_a_slow_consumer_gets_what_its_policy_promises(policy: str) -> None:
    got: list[Any] = []
    out = run_fault(Scenario(setup=_slow_consumer(policy, got), overrides=[f"bus.capacity={RING}"]))
    out.assert_user_properties()  # the fast consumer, and the gateway, are unharmed
    full = out.events
    slow = out.metrics_for_consumer("slow")
    if policy == "block":
        assert [e.key for e in got] == [e.key for e in full]
        assert out.metric("meltica_bus_pauses_total") >= 1
        assert slow["dropped"] == slow["conflated"] == 0
    elif policy == "drop_oldest":
        markers = [e for e in got if _is_marker(e)]
        assert markers, "the consumer never fell behind: the test proves nothing"
        pos = {id(e): i for i, e in enumerate(full)}
        ordinal = 0  # 1-based ordinal of the last event the consumer saw or was told of
        lost = 0
        for e in got:
            if _is_marker(e):
                assert e.reason == "slow_consumer" and e.from_seq == ordinal + 1
                lost += e.to_seq - e.from_seq + 1
                ordinal = e.to_seq
            else:
                ordinal += 1
                assert pos[id(e)] == ordinal - 1, "an event out of order, or one not announced"
        assert lost == slow["dropped"] and len(markers) == slow["gaps"]
        assert out.metric("meltica_bus_pauses_total") == 0  # a drop consumer never pauses
    else:
        assert slow["conflated"] > 0, "the consumer never fell behind: the test proves nothing"
        latest_full: dict[tuple[Any, ...], str] = {}
        latest_slow: dict[tuple[Any, ...], str] = {}
        for events, latest in ((full, latest_full), (got, latest_slow)):
            for e in events:
                latest[_conflation_key(e)] = e.key
        assert latest_slow == latest_full
        assert len({e.key for e in got}) == len(got)
        assert out.metric("meltica_bus_pauses_total") == 0


def _conflation_key(e: Any) -> tuple[Any, ...]:
    """(market, symbol, kind, snapshot source): docs/bus.md's conflation key for the
    kinds this run publishes."""
    return (
        e.market,
        e.symbol,
        e.kind,
        getattr(e, "source", None) if e.kind == "book_snapshot" else None,
    )

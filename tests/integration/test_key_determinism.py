"""Event keys depend on exchange fields only: two replays of one real capture through two
gateways (different ``gateway.id``) publish the same keys, and events under one key differ
only in the fields docs/deployment.md lists (``ts_recv``, ``trace``).

What is compared: every event the in-memory Data Bus delivers except the control kinds
(their keys carry a local sequence number, docs/wire-format.md).  Fused book snapshots are
included: with ``conductor.publish_interval_ms: 0`` (the default) one is published per
applied update, so their update ids come from the exchange; with 1000 one per second of
exchange time, the state as of that second's last update (docs/conductor.md), chosen from
exchange times, so the keys agree too.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aio import run
from fakeproc import REPLAY_CAPTURE, batches, replay_engine, start_replay

from meltica.replay.exchange import FakeExchange
from meltica.replay.source import CaptureSource

CONTROL_KINDS = {"gap", "resync_started", "resync_done", "stale", "connection_state"}
# the fields two gateways may set differently for the same exchange event
MAY_DIFFER = {"ts_recv", "trace"}


async def replay(
    path: Path, gateway: str, interval_ms: int
) -> tuple[dict[str, dict[str, Any]], Counter[str]]:
    """Every non-control event of one replay by key, and how many of each kind came."""
    source = CaptureSource(path)
    fake = FakeExchange(source, speed=None, start="manual")
    await fake.start()
    engine = replay_engine(
        fake, f"gateway.id={gateway}", f"conductor.publish_interval_ms={interval_ms}"
    )
    consumer = engine.bus.subscribe("keys", policy="block")
    events: dict[str, dict[str, Any]] = {}
    kinds: Counter[str] = Counter()
    try:
        await start_replay(engine, fake, source)
        while True:
            async for batch in batches(consumer):
                for ev in batch:
                    if ev.kind in CONTROL_KINDS:
                        continue
                    kinds[ev.kind] += 1
                    events[ev.key] = ev.to_wire()
            if fake.finished.is_set():
                break  # else only a quiet spell: wait on
        assert consumer.dropped == 0
    finally:
        await engine.stop()
        await fake.stop()
    return events, kinds


@pytest.mark.parametrize("interval_ms", [0, 1000])
def test_two_replays_publish_the_same_keys(captures_dir: Path, interval_ms: int) -> None:
    path = captures_dir / REPLAY_CAPTURE

    async def scenario() -> tuple[Any, Any, Any, Any]:
        a, ka = await replay(path, "gw-a", interval_ms)
        b, kb = await replay(path, "gw-b", interval_ms)
        return a, ka, b, kb

    a, kinds_a, b, kinds_b = run(scenario, timeout=280)
    # every exchange event of the capture came, each under its own key
    assert kinds_a["trade"] == 9757 and kinds_a["book_delta"] == 3451, kinds_a
    assert kinds_a["book_snapshot"] > 0, kinds_a
    if interval_ms:  # throttled: about one book snapshot per second of exchange time
        books = [
            ev for ev in a.values() if ev["kind"] == "book_snapshot" and ev["source"] == "book"
        ]
        assert 100 < len(books) < kinds_a["book_delta"] // 5, len(books)
    assert sum(kinds_a.values()) == len(a) and sum(kinds_b.values()) == len(b)
    assert a.keys() == b.keys(), sorted(a.keys() ^ b.keys())[:10]
    assert kinds_a == kinds_b
    differ: Counter[str] = Counter()
    for key, ev in a.items():
        other = b[key]
        for name in ev.keys() | other.keys():
            if ev.get(name) != other.get(name):
                differ[name] += 1
    assert set(differ) <= MAY_DIFFER, differ
    assert differ["ts_recv"] > 0  # two runs do receive at different times

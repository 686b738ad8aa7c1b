"""Book audits through the real engine against the fake exchange.

The synthetic market streams spot BTCUSDT depth diffs over a loopback WebSocket and
answers REST depth snapshots from its own book.  A ``phantom`` fault turns one level
removal of one diff into a tiny level: the gateway's book then holds a level the
exchange no longer has, with no sequence gap.  The audit (every 0.2 s) finds it,
counts it, announces the resync and resyncs the book; audits before and after it
match; every published book snapshot stays within the verified depth it reports;
/metrics and ``GET /book`` show the outcome and the verified depth.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from aio import run

from meltica._core.events import BookDepth, Control
from meltica.commands.common import local_overrides
from meltica.config import load_config
from meltica.engine import Engine
from meltica.replay.exchange import FakeExchange
from meltica.replay.faults import FaultPlan
from meltica.replay.synthetic import SyntheticMarket


def audit_samples(page: str) -> dict[str, float]:
    out = {}
    for line in page.splitlines():
        if line.startswith('meltica_book_audits_total{market="spot"'):
            labels, value = line.rsplit(" ", 1)
            out[labels.split('outcome="', 1)[1].split('"', 1)[0]] = float(value)
    return out


def test_phantom_level_is_found_by_the_audit_and_the_book_resynced() -> None:
    async def scenario() -> None:
        market = SyntheticMarket(symbols={"spot": ["BTCUSDT"]}, seed=11)
        plan = FaultPlan.parse(["phantom:market=spot,symbol=BTCUSDT,at_s=2.5"])
        fake = FakeExchange(market, speed=1.0, faults=plan)
        await fake.start()
        overrides = local_overrides(
            {"spot": fake.ws_url("spot")},
            fake.rest_url,
            symbols={"spot": ["btcusdt"]},
            streams={"spot": ["depth"]},
        )
        overrides += [
            "telemetry.metrics_port=0",
            "conductor.audit_interval_s=0.2",
            "conductor.book_depth=500",
        ]
        engine = Engine(load_config(None, env={}, overrides=overrides))
        consumer = engine.bus.subscribe(
            "books", kinds=["book_snapshot", "resync_started", "resync_done"], policy="block"
        )
        got: list[Any] = []
        counts = engine.auditor.counts
        try:
            await engine.start()

            def resynced() -> bool:
                started = [
                    i
                    for i, e in enumerate(got)
                    if isinstance(e, Control) and e.kind == "resync_started"
                ]
                return bool(started) and any(
                    isinstance(e, Control) and e.kind == "resync_done" and e.reason == "resynced"
                    for e in got[started[0] :]
                )

            while not resynced():
                got += await asyncio.wait_for(consumer.next_batch(), 60)
            # audits go on matching once the book is right again
            spot = counts["spot"]
            after = spot["match"]
            while spot["match"] < after + 2:
                got += await asyncio.wait_for(consumer.next_batch(), 60)
            assert engine.metrics is not None
            async with aiohttp.ClientSession() as http:
                async with http.get(engine.metrics.url + "/metrics") as resp:
                    assert resp.status == 200
                    page = await resp.text()
                async with http.get(engine.metrics.url + "/book/spot/BTCUSDT") as resp:
                    assert resp.status == 200
                    book = await resp.json()
        finally:
            consumer.close()
            await engine.stop()
            await fake.stop()

        starts = [e for e in got if isinstance(e, Control) and e.kind == "resync_started"]
        assert [e.reason for e in starts] == ["audit_mismatch"], [e.reason for e in starts]
        assert spot["mismatch"] == 1 and spot["rotted"] == 0, spot
        assert spot["match"] >= 3, spot  # before the fault (2.5 s) and after the resync
        assert audit_samples(page)["mismatch"] == 1
        # the gap manifest has the audit's entry: the update ids the book may have been
        # wrong over, up to the audited one, resynced
        [gap] = [g for g in engine.gaps.entries() if g["cause"].startswith("audit_")]
        assert (gap["stream"], gap["cause"]) == ("depth", "audit_mismatch")
        assert gap["outcome"] == "resynced"
        assert gap["last_id"] is not None and (gap["first_id"] or 0) <= gap["last_id"]
        snaps = [e for e in got if isinstance(e, BookDepth) and e.source in ("book", "bbo")]
        assert snaps
        for e in snaps:
            assert e.verified_bids is not None and e.verified_asks is not None
            assert len(e.bids) <= e.verified_bids and len(e.asks) <= e.verified_asks
        snap = book["snapshot"]
        assert snap["verified_bids"] >= len(snap["bids"]) > 0
        assert snap["verified_asks"] >= len(snap["asks"]) > 0

    run(scenario, timeout=180)

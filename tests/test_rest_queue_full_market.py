"""Start-up with more books than the REST client's default queue, against the fake exchange.

Every book queues one depth snapshot as soon as its first diff arrives and the weight budget
lets them out a window at a time, so at start the whole market's books wait in the REST
queue together.  The engine sizes the queue for them: none may fail with ``RestQueueFull``
(which the Conductor counts as a snapshot error and answers with its growing back-off).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aio import run
from fakeproc import spot_books_engine

from meltica.adapters.binance.rest import REST_MAX_PENDING
from meltica.replay.synthetic import SyntheticMarket

BOOKS = REST_MAX_PENDING + 176  # 1,200


def test_every_book_queues_its_snapshot_past_the_default_bound() -> None:
    from meltica.replay.exchange import FakeExchange

    market = SyntheticMarket.binance(spot=BOOKS, usdm=0, seed=1)
    symbols = market.symbols("spot")

    async def body() -> dict[str, Any]:
        async with FakeExchange(market, speed=1.0) as fake:
            engine = spot_books_engine(
                fake,
                symbols,
                ["depth"],
                # a budget of 250 weight a minute: 46 snapshots after exchangeInfo, so
                # nearly every book is still waiting in the queue when all have asked
                "binance.spot.rest_weight_limit_per_minute=500",
            )
            await engine.start()
            try:
                asked = 0
                for _ in range(600):  # until every book has asked for its snapshot
                    insts = engine.conductor.status()["instruments"].values()
                    asked = sum(1 for i in insts if i["fetching"] or i["state"] == "live")
                    if asked >= BOOKS or engine.rest.stats("spot")["rejected"]:
                        break
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.5)
                insts = list(engine.conductor.status()["instruments"].values())
                return {
                    "asked": asked,
                    "rest": engine.rest.stats("spot"),
                    "snapshot_errors": sum(i["snapshot_errors"] for i in insts),
                    "live": sum(1 for i in insts if i["state"] == "live"),
                }
            finally:
                await engine.stop()

    out = run(body, timeout=120)
    assert out["rest"]["rejected"] == 0
    assert out["snapshot_errors"] == 0
    assert out["asked"] == BOOKS
    # the budget, not the queue, is what holds them back: most are still queued
    assert out["live"] < 100
    assert out["rest"]["outstanding"] > REST_MAX_PENDING

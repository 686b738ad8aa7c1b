"""Books waiting behind the REST weight budget hold only a small tail of diffs, against the
fake exchange (docs/conductor.md "States and rules", ``snapshot_wait_tail``).

Many spot books ask for their snapshots at once and a small budget lets them out a window at
a time (the client's and the fake's windows shortened to a few seconds so that the queue
drains in a test's time).  While a book's request is not sent, its buffer holds at most the
tail; every book then syncs with no gap and ends equal to the fake's book at the same
update id.
"""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from typing import Any

import pytest
from aio import run
from fakeproc import spot_books_engine

from meltica.replay.synthetic import SyntheticMarket

BOOKS = 120
TAIL = 3
WINDOW_S = 4.0


def test_books_waiting_for_the_budget_hold_the_tail_and_sync(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import meltica.adapters.binance.rest as client_rest
    import meltica.replay.rest as fake_rest
    from meltica.replay.exchange import FakeExchange

    monkeypatch.setattr(client_rest, "WINDOW_S", WINDOW_S)
    monkeypatch.setattr(fake_rest, "WINDOW_S", WINDOW_S)
    market = SyntheticMarket.binance(spot=BOOKS, usdm=0, seed=1)
    symbols = market.symbols("spot")

    async def body() -> dict[str, Any]:
        async with FakeExchange(market, speed=1.0) as fake:
            engine = spot_books_engine(
                fake,
                symbols,
                ["depth"],
                f"conductor.snapshot_wait_tail={TAIL}",
                # 200 weight a window: ~36 snapshots of weight 5 after exchangeInfo, so
                # the last books wait three windows or more wherever in a window it starts
                "binance.spot.rest_weight_limit_per_minute=400",
            )
            await engine.start()
            try:
                most_unsent = most_sent = 0
                superseded: dict[str, int] = {}
                live = 0
                for _ in range(1200):
                    insts = engine.conductor.status()["instruments"]
                    for key, i in insts.items():
                        if i["state"] == "live":
                            continue
                        if i["snapshot_sent"]:
                            most_sent = max(most_sent, i["buffered"])
                        else:
                            most_unsent = max(most_unsent, i["buffered"])
                        superseded[key] = i["superseded"]
                    live = sum(1 for i in insts.values() if i["state"] == "live")
                    if live == BOOKS:
                        break
                    await asyncio.sleep(0.05)
                fake.speed = 1e-9  # stop the stream (the next frame is due in ~never)
                await asyncio.sleep(1.0)
                insts = engine.conductor.status()["instruments"]
                same = differ = 0
                for sym in symbols:
                    book = engine.conductor.book("spot", sym)
                    assert book is not None
                    snap = json.loads(market.depth_snapshot("spot", sym, 20) or b"{}")
                    if book.update_id != snap["lastUpdateId"]:
                        continue  # the fake's last frame for it is not sent yet
                    ours = [(Decimal(str(p)), Decimal(str(q))) for p, q in book.bids(20)]
                    theirs = [(Decimal(p), Decimal(q)) for p, q in snap["bids"]]
                    ours_a = [(Decimal(str(p)), Decimal(str(q))) for p, q in book.asks(20)]
                    theirs_a = [(Decimal(p), Decimal(q)) for p, q in snap["asks"]]
                    if ours == theirs and ours_a == theirs_a:
                        same += 1
                    else:
                        differ += 1
                return {
                    "live": live,
                    "most_unsent": most_unsent,
                    "most_sent": most_sent,
                    "superseded": superseded,
                    "gaps": sum(i["gaps"] for i in insts.values()),
                    "overflows": sum(i["buffer_overflows"] for i in insts.values()),
                    "errors": sum(i["snapshot_errors"] for i in insts.values()),
                    "same": same,
                    "differ": differ,
                }
            finally:
                await engine.stop()

    out = run(body, timeout=240)
    assert out["live"] == BOOKS
    assert out["gaps"] == 0 and out["overflows"] == 0 and out["errors"] == 0
    # while queued, never more than the tail; books that waited long dropped many
    assert 1 <= out["most_unsent"] <= TAIL
    waited = [n for n in out["superseded"].values() if n >= 3 * TAIL]
    assert len(waited) >= 10, sorted(out["superseded"].values())
    # every book equal to the fake's at the same update id (all but a book or two whose
    # last frame the paused fake still holds)
    assert out["differ"] == 0 and out["same"] >= BOOKS - 2, out

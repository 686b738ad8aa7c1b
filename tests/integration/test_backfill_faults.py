"""Zero lost trades across drops, closes and stalls: backfill by id, end to end.

The fake exchange serves a market (the synthetic one, or a real capture) over loopback
WebSocket and REST with one scripted fault; a running Engine subscribes to its trade
streams and a bus consumer keeps every event.  Once the source is exhausted and the
backfill idle, every trade id the source produced (the fake's tape) has been delivered
exactly once; the ones the fault removed came from REST (``source: rest``) after a
``gap`` naming them and before a ``gap_filled`` naming them.  With a budget too small
for the hole, the hole is reported lost with its exact range and nothing else is missing.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aio import run

from meltica.commands.common import local_overrides
from meltica.config import load_config
from meltica.engine import Engine
from meltica.replay.exchange import FakeExchange
from meltica.replay.faults import FaultPlan
from meltica.replay.source import CaptureSource, MarketSource
from meltica.replay.synthetic import SyntheticMarket

pytestmark = pytest.mark.timeout(180)

STREAMS = {"trade": "trade", "agg_trade": "aggTrade"}
SPOT_CAPTURE = "hftbacktest/examples/spot/btcusdt_20240808.gz"
USDM_CAPTURE = "hftbacktest/examples/usdm/btcusdt_20240718.gz"


def capture(root: Path, name: str) -> Path:
    path = root / name
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"capture {name} not under {root}; CI=true requires it")
        pytest.skip(f"capture {name} not under {root}")
    return path


def tape_ids(source: MarketSource, market: str, kind: str) -> list[int]:
    tape: Any = getattr(source, "tape")  # noqa: B009 - not on the MarketSource protocol
    items = tape.get(market, "BTCUSDT", kind, 0, 10**9) or []
    return [i["id"] if kind == "trade" else i["a"] for i in items]


async def serve(
    source: MarketSource,
    markets: tuple[str, ...],
    kinds: tuple[str, ...],
    faults: list[str],
    speed: float,
    extra: tuple[str, ...] = (),
) -> tuple[list[Any], dict[str, int]]:
    """Run the fake with ``faults`` and a gateway until the source is done and every hole
    settled; returns the consumer's events and the backfill's counters."""
    fake = FakeExchange(source, speed=speed, faults=FaultPlan.parse(faults), start="manual")
    await fake.start()
    overrides = local_overrides(
        {m: fake.ws_url(m) for m in markets},
        fake.rest_url,
        symbols={m: ["btcusdt"] for m in markets},
        streams={m: list(kinds) for m in markets},
        recorded_snapshots=isinstance(source, CaptureSource),
    )
    overrides += ["telemetry.metrics_enabled=false", "binance.backfill.api_key=test-key"]
    overrides += list(extra)
    engine = Engine(load_config(None, env={}, overrides=overrides), subscribe_on_start=False)
    consumer = engine.bus.subscribe(
        "trades", kinds=[*kinds, "gap", "gap_filled"], policy="block", capacity=1 << 16
    )
    got: list[Any] = []
    try:
        await engine.start()
        for m in markets:
            reply = await engine.subscribe_streams(m, [f"btcusdt@{STREAMS[k]}" for k in kinds])
            assert reply.ok, reply.error
        fake.begin()
        assert engine.backfill is not None
        settled_at: float | None = None
        while True:
            try:
                got += await asyncio.wait_for(consumer.next_batch(), 0.2)
                continue
            except TimeoutError:
                pass
            s = engine.backfill.stats()
            idle = s["holes"] == s["holes_filled"] + s["holes_lost"] and not s["waiting"]
            if fake.finished.is_set() and idle:
                # a quiet moment with nothing left: the last batches are in
                settled_at = settled_at or time.monotonic()
                if time.monotonic() - settled_at > 0.5:
                    break
            else:
                settled_at = None
        return got, engine.backfill.stats()
    finally:
        consumer.close()
        await engine.stop()
        await fake.stop()


def check_exactly_once(source: MarketSource, events: list[Any], market: str, kind: str) -> int:
    """Every id of the source delivered once, the backfilled ones inside a gap /
    gap_filled pair naming them; returns how many came from REST."""
    want = tape_ids(source, market, kind)
    assert want, f"the source made no {market} {kind}"
    mine = [e for e in events if e.market == market]
    trades = [e for e in mine if e.kind == kind]
    counts = Counter(e.trade_id for e in trades)
    assert [i for i, n in counts.items() if n > 1] == [], "a trade was delivered twice"
    assert sorted(counts) == want, (
        f"{market} {kind}: missing {sorted(set(want) - set(counts))[:10]}, "
        f"extra {sorted(set(counts) - set(want))[:10]}"
    )
    rest = [(i, e) for i, e in enumerate(mine) if e.kind == kind and e.source == "rest"]
    for pos, ev in rest:
        gaps = [
            g
            for g in mine[:pos]
            if g.kind == "gap" and g.reason == kind and g.from_seq <= ev.trade_id <= g.to_seq
        ]
        done = [
            g
            for g in mine[pos + 1 :]
            if g.kind == "gap_filled"
            and g.state == "filled"
            and g.reason == kind
            and g.from_seq <= ev.trade_id <= g.to_seq
        ]
        assert gaps and done, f"{market} {kind} {ev.trade_id}: not between gap and gap_filled"
    ids = [e.trade_id for _, e in rest]
    assert ids == sorted(ids), "backfilled trades out of id order"
    lost = [e for e in mine if e.kind == "gap_filled" and e.state == "lost"]
    assert lost == []
    return len(rest)


def synthetic() -> SyntheticMarket:
    return SyntheticMarket(
        symbols={"spot": ["BTCUSDT"], "usdm": ["BTCUSDT"]}, seed=11, duration_s=40
    )


SYNTHETIC_FAULTS = [
    "drop:symbol=BTCUSDT,at_s=1,count=25,stream=trade",
    "drop:symbol=BTCUSDT,at_s=1,count=15,stream=aggTrade",
    "close:at_s=1.5,code=1001",
    "stall:at_s=1.5,delay_s=1",
]


@pytest.mark.parametrize("fault", SYNTHETIC_FAULTS)
def test_synthetic_market_every_trade_once_across(fault: str) -> None:
    source = synthetic()

    async def scenario() -> None:
        events, stats = await serve(
            source, ("spot", "usdm"), ("trade", "agg_trade"), [fault], speed=10
        )
        filled = {
            (m, k): check_exactly_once(source, events, m, k)
            for m in ("spot", "usdm")
            for k in ("trade", "agg_trade")
        }
        assert sum(filled.values()) > 0, "the fault removed nothing: the test proves nothing"
        assert stats["ids_filled"] == sum(filled.values()) == stats["ids_missing"]
        assert stats["ids_lost"] == 0

    run(scenario, timeout=150)


@pytest.mark.parametrize(
    "fault",
    [
        "drop:symbol=BTCUSDT,at_s=2,count=200,stream=trade",
        "close:at_s=3,code=1001",
        "stall:at_s=3,delay_s=1",
    ],
)
def test_real_spot_capture_every_trade_once_across(fault: str, captures_dir: Path) -> None:
    source = CaptureSource(capture(captures_dir, SPOT_CAPTURE))

    async def scenario() -> None:
        events, stats = await serve(source, ("spot",), ("trade",), [fault], speed=40)
        filled = check_exactly_once(source, events, "spot", "trade")
        assert filled > 0 and stats["ids_filled"] == filled and stats["ids_lost"] == 0

    run(scenario, timeout=150)


def test_real_usdm_capture_trades_need_the_api_key_and_get_it(captures_dir: Path) -> None:
    source = CaptureSource(capture(captures_dir, USDM_CAPTURE))

    async def scenario() -> None:
        fault = "drop:symbol=BTCUSDT,at_s=1,count=40,stream=trade"
        events, stats = await serve(source, ("usdm",), ("trade",), [fault], speed=40)
        filled = check_exactly_once(source, events, "usdm", "trade")
        assert filled == 40 and stats["ids_lost"] == 0

    run(scenario, timeout=150)


def test_a_hole_over_the_budget_is_lost_with_its_exact_range() -> None:
    source = synthetic()

    async def scenario() -> None:
        events, stats = await serve(
            source,
            ("spot",),
            ("trade",),
            ["drop:symbol=BTCUSDT,at_s=1,count=30,stream=trade"],
            speed=10,
            extra=("binance.backfill.max_ids=10",),
        )
        want = tape_ids(source, "spot", "trade")
        trades = [e for e in events if e.kind == "trade"]
        got = Counter(e.trade_id for e in trades)
        assert all(n == 1 for n in got.values())
        missing = sorted(set(want) - set(got))
        assert len(missing) == 30 and missing == list(range(missing[0], missing[0] + 30))
        lost = [e for e in events if e.kind == "gap_filled" and e.state == "lost"]
        assert [(e.from_seq, e.to_seq, e.reason) for e in lost] == [
            (missing[0], missing[-1], "trade:too_large")
        ]
        gap = [e for e in events if e.kind == "gap"]
        assert [(e.from_seq, e.to_seq, e.state) for e in gap] == [(missing[0], missing[-1], "lost")]
        assert not any(e.source == "rest" for e in trades)
        assert stats["ids_lost"] == 30 and stats["requests"] == 0

    run(scenario, timeout=150)

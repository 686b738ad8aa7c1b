"""Analytics hooks: built-ins on fused outputs and trades, loading by path, isolation."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest
from test_conductor import Harness, delta, rest, run, settle

from meltica._core.events import Event, event_from_wire
from meltica.conductor.analytics import BUILTINS, Derived, load_hook


class Boom:
    name = "boom"
    kinds = frozenset({"book"})

    def on_event(self, event: Event) -> None:
        raise RuntimeError("hook bug")


def trade(tid: int, price: str, qty: str, t_ms: int) -> Event:
    return event_from_wire(
        {
            "v": 1,
            "venue": "binance",
            "market": "spot",
            "symbol": "AAA",
            "kind": "trade",
            "seq": tid,
            "ts_recv": 0,
            "trade_id": tid,
            "price": price,
            "qty": qty,
            "side": "buy",
            "ts_event": t_ms * 1_000_000,
        }
    )


def test_builtin_hooks_emit_derived_events_and_a_failing_hook_is_isolated() -> None:
    hooks: list[Any] = [*BUILTINS.values(), Boom(), "meltica.conductor.analytics:Imbalance"]

    async def scenario() -> Harness:
        h = Harness(analytics=hooks)
        h.snaps = {"AAA": [rest("AAA", 100, bid="10", ask="11")]}
        h.cond.track("spot", "AAA")
        h.feed(delta("AAA", 101, 101, asks=[("11", "3")]))
        await settle()
        batch: list[Any] = [
            trade(1, "10", "1", 1000),
            trade(2, "12", "3", 2000),
            trade(3, "20", "1", 70_000),
        ]
        h.cond.on_events(batch)
        return h

    h = run(scenario)
    d = {(e.name, e.seq): dict(e.values) for e in h.out if isinstance(e, Derived)}
    assert d[("mid", 101)] == {"mid": "10.5"}
    assert d[("spread", 101)] == {"spread": "1"}
    assert Decimal(d[("microprice", 101)]["microprice"]) == Decimal("10.25")  # (10*3 + 11*1) / 4
    assert Decimal(d[("imbalance", 101)]["imbalance"]) == Decimal("-0.5")
    assert d[("vwap", 2)]["vwap"] == "11.5"  # (10*1 + 12*3) / 4
    assert d[("vwap", 3)] == {"vwap": "20", "volume": "1", "trades": "1"}  # window slid
    assert h.cond.hook_errors["boom"] == 1 and h.cond.counters["hook_errors"] == 1
    k = next(e for e in h.out if isinstance(e, Derived) and e.name == "mid")
    assert k.key == "binance:spot:AAA:derived:mid:101"
    assert k.to_wire()["kind"] == "derived"


def test_load_hook_rejects_bad_specs() -> None:
    with pytest.raises(ValueError):
        load_hook("no_colon")
    with pytest.raises(ValueError):
        load_hook(
            type(
                "Bad",
                (),
                {"name": "x", "kinds": frozenset({"nope"}), "on_event": lambda self, e: None},
            )()
        )
    fn = load_hook(lambda e: None)
    assert fn.kinds == frozenset({"book", "bbo"})


def test_hook_sees_throttled_flush_outputs() -> None:
    seen: list[int] = []

    def spy(e: Any) -> None:
        seen.append(e.update_id)

    async def scenario() -> None:
        h = Harness(analytics=[spy], publish_interval_ms=20)
        h.snaps = {"AAA": [rest("AAA", 100)]}
        h.cond.track("spot", "AAA")
        h.feed(delta("AAA", 101, 101))
        await settle()
        h.feed(delta("AAA", 102, 102), delta("AAA", 103, 103, bids=[("10", "7")]))
        await asyncio.sleep(0.08)

    run(scenario)
    assert seen[-1] == 103 and 102 not in seen

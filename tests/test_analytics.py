"""Analytics hooks: built-ins on fused outputs and trades, loading by path, isolation."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from test_conductor import Harness, delta, rest, run, settle

from meltica._core.events import Event, event_from_wire
from meltica.bus.data import InMemoryDataBus
from meltica.conductor import Conductor
from meltica.conductor.analytics import BUILTINS, Derived, Mid, derive, load_hook
from meltica.errors import AnalyticsError
from meltica.wire import decode, encode


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
    assert h.cond.hook_errors["boom"] == {"raised": 1, "bad_output": 0}
    assert h.cond.counters["hook_errors"] == 1
    k = next(e for e in h.out if isinstance(e, Derived) and e.name == "mid")
    assert k.key == "binance:spot:AAA:derived:mid:101"
    assert k.to_wire()["kind"] == "derived"
    assert isinstance(k, Event) and k.kind == "derived" and k.seq == 101


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


class Junk:
    """Returns a different kind of junk on each call (never a valid output)."""

    name = "junk"
    kinds = frozenset({"bbo"})

    def __init__(self) -> None:
        self.calls = 0

    def on_event(self, event: Event) -> Any:
        self.calls += 1
        good = derive(event, "junk", {"x": "1"})
        return [
            1.5,  # not iterable
            good,  # one event, not an iterable of them
            {"mid": "1"},  # a mapping: iterates over str keys
            [good, "not an event"],  # one bad item spoils the call
            [event],  # an event, but not a derived one
        ][(self.calls - 1) % 5]


class HalfGen:
    """A generator hook that yields one event and then fails."""

    name = "halfgen"
    kinds = frozenset({"book"})

    def on_event(self, event: Event) -> Iterator[Derived]:
        yield derive(event, "halfgen", {"x": "1"})
        raise ValueError("halfway")


def bus_run(hooks: list[Any]) -> tuple[list[Event], list[Event], Conductor]:
    """A scripted market (sync, live updates, a gap and a resync) through a Conductor
    whose downstream is the real in-memory Data Bus; what two consumers receive."""
    snaps = [rest("AAA", 100, bid="10", ask="11"), rest("AAA", 205, bid="10", ask="12")]

    async def fetch(market: str, symbol: str) -> Any:
        await asyncio.sleep(0)
        return snaps.pop(0)

    async def scenario() -> tuple[list[Event], list[Event], Conductor]:
        bus = InMemoryDataBus(1 << 12)
        everything = bus.subscribe("all", policy="block")
        derived_only = bus.subscribe("derived", kinds=["derived"], policy="block")
        cond = Conductor(bus.publish_batch, fetch, analytics=hooks, snapshot_retry_s=0)
        cond.track("spot", "AAA")
        cond.on_events([delta("AAA", 99, 101, asks=[("11", "3")])])
        await settle()
        for u in range(102, 110):
            cond.on_events([delta("AAA", u, u, bids=[(f"10.{u - 100}", "2")])])
        cond.on_events([delta("AAA", 200, 201)])  # a gap: resync
        cond.on_events([delta("AAA", 202, 206)])
        await settle()
        cond.on_events([delta("AAA", 207, 207), delta("AAA", 208, 208)])
        await cond.stop()
        return everything.poll(1 << 12), derived_only.poll(1 << 12), cond

    return run(scenario)


def not_derived(events: list[Event]) -> list[tuple[str, Any]]:
    # control events' keys hold a clock-seeded local sequence: compare what they say
    return [
        (
            e.kind,
            e.key if e.kind not in CONTROL else (getattr(e, "reason", ""), e.to_wire()["to_seq"]),
        )
        for e in events
        if e.kind != "derived"
    ]


CONTROL = {"gap", "resync_started", "resync_done", "stale", "connection_state"}


def test_hooks_through_the_real_bus_cost_no_event_and_errors_are_isolated(
    caplog: pytest.LogCaptureFixture,
) -> None:
    plain, plain_derived, _ = bus_run([])
    with caplog.at_level(logging.ERROR, logger="meltica.conductor"):
        hooked, derived, cond = bus_run([Mid(), Junk(), HalfGen(), Boom()])
    kinds = Counter(e.kind for e in plain)
    assert {"book_delta", "book_snapshot", "resync_done", "gap"} <= kinds.keys()
    assert plain_derived == []
    # every exchange, fused and control event, in the same order, with or without hooks
    assert not_derived(hooked) == not_derived(plain)
    # the good hook's outputs are on the bus: one mid per fused BBO, keyed by its update id
    bbo = [e for e in plain if e.kind == "book_snapshot" and e.source == "bbo"]
    mids = [e for e in hooked if e.kind == "derived"]
    assert mids == derived  # the kinds=["derived"] consumer gets the same objects
    assert all(isinstance(e, Derived) and e.name == "mid" for e in mids)
    assert [e.seq for e in mids] == [e.update_id for e in bbo] and len(mids) == len(bbo) > 3
    assert mids[0].key == f"binance:spot:AAA:derived:mid:{bbo[0].update_id}"
    assert decode(encode(mids[0])).to_wire() == mids[0].to_wire()
    # errors: per hook and reason; the good hook has none
    fused = sum(1 for e in plain if e.kind == "book_snapshot" and e.source == "book")
    st = cond.status()["hook_errors"]
    assert st["mid"] == {"raised": 0, "bad_output": 0}
    assert st["junk"] == {"raised": 0, "bad_output": len(bbo)}
    assert st["halfgen"] == {"raised": fused, "bad_output": 0}
    assert st["boom"] == {"raised": fused, "bad_output": 0}
    assert cond.counters["hook_errors"] == len(bbo) + 2 * fused
    assert cond.counters["derived"] == len(mids)
    # logged once per (hook, reason)
    logged = Counter(
        r.getMessage().split(":")[0] + ":" + r.getMessage().split(": ")[1].split(" ")[0]
        for r in caplog.records
        if r.getMessage().startswith("analytics hook")  # not the books' resync lines
    )
    assert logged == {
        "analytics hook junk:bad_output": 1,
        "analytics hook halfgen:raised": 1,
        "analytics hook boom:raised": 1,
    }


def test_derived_is_a_canonical_event_with_checked_fields() -> None:
    d = Derived("binance", "usdm", "BTCUSDT", "vwap", 7, None, 9, {"vwap": Decimal("1.50")})
    assert isinstance(d, Event) and d.kind == "derived"
    assert dict(d.values) == {"vwap": "1.50"}
    with pytest.raises(TypeError):
        d.values["vwap"] = "2"  # type: ignore[index]
    bad: list[dict[str, Any]] = [
        {"values": {"vwap": 1.5}},  # floats are not exact
        {"values": {"vwap": "1e5"}},
        {"values": {"vwap": Decimal("NaN")}},
        {"values": {"": "1"}},
        {"values": ["1"]},
        {"seq": None},
        {"seq": True},
        {"ts_recv": 1.0},
        {"venue": "kraken"},
        {"market": "futures"},
        {"name": ""},
    ]
    base: dict[str, Any] = dict(
        venue="binance",
        market="usdm",
        symbol="BTCUSDT",
        name="vwap",
        seq=7,
        ts_event=None,
        ts_recv=9,
        values={"vwap": "1"},
    )
    for change in bad:
        with pytest.raises(AnalyticsError):
            Derived(**(base | change))
    assert issubclass(AnalyticsError, ValueError)


def test_engine_exports_hook_errors_per_hook_and_reason() -> None:
    from meltica.config import load_config
    from meltica.engine import Engine

    hooks = '["meltica.conductor.analytics:Mid","test_analytics:Boom"]'

    async def scenario() -> list[Any]:
        config = load_config(
            None, overrides=[f"conductor.analytics={hooks}", "telemetry.metrics_enabled=false"]
        )
        engine = Engine(config, subscribe_on_start=False)
        snaps = [rest("AAA", 100)]

        async def fetch(market: str, symbol: str, on_sent: Any = None) -> Any:
            if on_sent is not None:  # the engine's conductor keeps a tail until the send
                on_sent()
            await asyncio.sleep(0)
            return snaps.pop(0)

        cond = engine.conductor
        cond._fetch = fetch  # scripted REST snapshot
        cond.track("spot", "AAA")
        cond.on_events([delta("AAA", 99, 101)])
        await settle()
        cond.on_events([delta("AAA", 102, 102)])
        await cond.stop()
        return [s for s in engine.samples() if s.name == "analytics_hook_errors_total"]

    samples = run(scenario)
    got = {dict(s.labels)["hook"] + ":" + dict(s.labels)["reason"]: s.value for s in samples}
    assert got == {"mid:raised": 0, "mid:bad_output": 0, "boom:raised": 2, "boom:bad_output": 0}
    assert {s.kind for s in samples} == {"counter"}


def test_derive_copies_the_source_identity_times_and_trace() -> None:
    src = trade(5, "10", "1", 1000)
    src.trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    d = derive(src, "x", {"x": 1})
    assert (d.venue, d.market, d.symbol, d.seq) == ("binance", "spot", "AAA", 5)
    assert (d.ts_event, d.ts_recv, d.trace) == (src.ts_event, src.ts_recv, src.trace)
    assert d.key == "binance:spot:AAA:derived:x:5" and dict(d.values) == {"x": "1"}
    assert derive(src, "x", {}, seq=9).seq == 9

"""In-memory Data Bus: delivery, filters, many consumers, wake-ups, lifecycle."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aio
import pytest

from meltica import Control, Event, FrameParser
from meltica.bus import (
    Consumer,
    ConsumerClosed,
    DataBus,
    InMemoryDataBus,
)
from meltica.errors import MelticaError

T = TypeVar("T")
PARSERS = {"spot": FrameParser(), "usdm": FrameParser(market="usdm")}


def trade(t: int, symbol: str = "BTCUSDT", market: str = "spot") -> Event:
    frame = (
        f'{{"e":"trade","E":1,"s":"{symbol}","t":{t},"p":"1.5","q":"2","T":1,"m":true}}'
    ).encode()
    (ev,) = PARSERS[market].parse(frame, 11)
    assert isinstance(ev, Event)
    return ev


def book_ticker(u: int, symbol: str = "BTCUSDT", market: str = "spot") -> Event:
    frame = f'{{"u":{u},"s":"{symbol}","b":"1.0","B":"1","a":"2.0","A":"1"}}'.encode()
    (ev,) = PARSERS[market].parse(frame, 11)
    assert isinstance(ev, Event)
    return ev


def connection_state(seq: int) -> Control:
    return Control(
        "connection_state", venue="binance", market="spot", symbol="", seq=seq, ts_recv=1
    )


def run(coro_fn: Callable[[], Awaitable[T]], *, use_uvloop: bool = True) -> T:
    """Run on uvloop (or asyncio); an exception reaching the loop's handler fails the test."""
    return aio.run(coro_fn, 60, loop="uvloop" if use_uvloop else "asyncio")


def seqs(batch: list[Event]) -> list[int | None]:
    return [ev.seq for ev in batch]


def test_bus_satisfies_protocols() -> None:
    bus = InMemoryDataBus(16)
    assert isinstance(bus, DataBus)
    assert isinstance(bus.subscribe("a"), Consumer)


def test_events_delivered_once_in_order_by_reference() -> None:
    bus = InMemoryDataBus(64)
    c = bus.subscribe("a")
    events = [trade(t) for t in range(1, 11)]
    bus.publish_batch(events[:4])
    bus.publish_batch(events[4:])
    got = c.poll(100)
    assert got == events and all(a is b for a, b in zip(got, events, strict=True))
    assert c.poll(100) == []
    assert (c.delivered, c.lag, bus.published) == (10, 0, 10)


def test_bus_lets_go_of_events_every_consumer_has_read() -> None:
    # memory holds the unread events, not a ring's worth of old ones
    bus = InMemoryDataBus(64)
    fast, slow = bus.subscribe("fast"), bus.subscribe("slow")
    events = [trade(t) for t in range(1, 9)]
    base = [sys.getrefcount(ev) for ev in events]
    bus.publish_batch(events)
    assert [sys.getrefcount(ev) for ev in events] == [r + 1 for r in base]
    assert len(fast.poll(100)) == 8 and len(slow.poll(3)) == 3
    # the slow consumer has not read 4..8 yet: only 1..3 are let go
    assert [sys.getrefcount(ev) for ev in events] == base[:3] + [r + 1 for r in base[3:]]
    slow.close()
    assert [sys.getrefcount(ev) for ev in events] == base
    fast.close()
    bus.publish_batch(events)  # nobody attached: nothing is kept
    assert [sys.getrefcount(ev) for ev in events] == base


def test_consumer_sees_only_events_published_after_subscribing() -> None:
    bus = InMemoryDataBus(16)
    bus.publish_batch([trade(1), trade(2)])
    c = bus.subscribe("late")
    bus.publish_batch([trade(3)])
    assert seqs(c.poll()) == [3]


def test_poll_respects_max_n_and_default_batch_size() -> None:
    bus = InMemoryDataBus(64, batch_size=3)
    c = bus.subscribe("a")
    bus.publish_batch([trade(t) for t in range(1, 9)])
    assert seqs(c.poll()) == [1, 2, 3]
    assert seqs(c.poll(4)) == [4, 5, 6, 7]
    assert seqs(c.poll(0)) == []
    assert seqs(c.poll(10)) == [8]


def test_filters_by_kind_market_and_symbol() -> None:
    bus = InMemoryDataBus(64)
    trades = bus.subscribe("trades", kinds=["trade"])
    eth = bus.subscribe("eth", symbols=["ethusdt"])
    usdm_bbo = bus.subscribe("usdm_bbo", kinds=["book_ticker"], markets=["usdm"])
    everything = bus.subscribe("all")
    batch = [
        trade(1),
        book_ticker(10),
        trade(2, "ETHUSDT"),
        book_ticker(11, "ETHUSDT", "usdm"),
        trade(3, "ETHUSDT", "usdm"),
        book_ticker(12, "BTCUSDT", "usdm"),
        connection_state(1),  # no symbol: passes symbol filters, not kind filters
    ]
    bus.publish_batch(batch)
    assert [e.key for e in trades.poll(100)] == [batch[i].key for i in (0, 2, 4)]
    assert [e.key for e in eth.poll(100)] == [batch[i].key for i in (2, 3, 4, 6)]
    assert [e.key for e in usdm_bbo.poll(100)] == [batch[i].key for i in (3, 5)]
    assert everything.poll(100) == batch
    # a filtered consumer's lag counts ring positions, and reading moves past skipped ones
    assert trades.lag == 0 and eth.lag == 0 and usdm_bbo.lag == 0


def test_bad_subscriptions_and_events_raise() -> None:
    bus = InMemoryDataBus(16)
    bus.subscribe("a")
    with pytest.raises(ValueError, match="already subscribed"):
        bus.subscribe("a")
    with pytest.raises(ValueError, match="unknown event kind"):
        bus.subscribe("b", kinds=["trades"])
    with pytest.raises(ValueError, match="at least one kind"):
        bus.subscribe("b", kinds=[])
    with pytest.raises(ValueError, match="policy"):
        bus.subscribe("b", policy="lossy")
    with pytest.raises(ValueError, match="capacity"):
        bus.subscribe("b", capacity=17)
    with pytest.raises(ValueError, match="power of two"):
        InMemoryDataBus(100)
    with pytest.raises(TypeError, match="must be Event"):
        bus.publish_batch([trade(1), "not an event"])  # type: ignore[list-item]
    assert bus.published == 0  # nothing of a bad batch was written


def test_many_consumers_each_get_everything_and_publish_cost_is_per_batch() -> None:
    bus = InMemoryDataBus(1024)
    consumers = [bus.subscribe(f"c{i}", policy="drop_oldest") for i in range(50)]
    events = [trade(t) for t in range(1, 501)]
    for i in range(0, 500, 50):
        bus.publish_batch(events[i : i + 50])
    assert bus.stats()["evicted"] == 0
    for c in consumers:
        assert c.poll(1000) == events
        assert c.stats()["dropped"] == 0


def test_wakeup_once_per_batch_not_per_event() -> None:
    async def main() -> None:
        bus = InMemoryDataBus(1024)
        a = bus.subscribe("a")
        b = bus.subscribe("b", kinds=["book_ticker"])
        got: dict[str, list[Event]] = {"a": [], "b": []}

        async def read(c: Any) -> None:
            async for batch in c:
                got[c.name].extend(batch)

        tasks = [asyncio.ensure_future(read(c)) for c in (a, b)]
        await asyncio.sleep(0)
        for k in range(5):
            bus.publish_batch([trade(100 * k + t) for t in range(100)])
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        # b wanted none of those: never woken, and its cursor followed the head
        assert (a.wakeups, b.wakeups, b.lag) == (5, 0, 0)
        bus.publish_batch([book_ticker(1), trade(999), book_ticker(2)])
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert (a.wakeups, b.wakeups, bus.wakeups) == (6, 1, 7)
        bus.close()
        await asyncio.gather(*tasks)
        assert len(got["a"]) == 503
        assert seqs(got["b"]) == [1, 2]

    run(main)


def test_next_batch_waits_then_returns_and_close_ends_iteration() -> None:
    async def main() -> None:
        bus = InMemoryDataBus(16)
        c = bus.subscribe("a")
        waiter = asyncio.ensure_future(c.next_batch())
        await asyncio.sleep(0)
        assert not waiter.done()
        bus.publish_batch([trade(1), trade(2)])
        assert seqs(await waiter) == [1, 2]
        waiter = asyncio.ensure_future(c.next_batch())
        await asyncio.sleep(0)
        with pytest.raises(ValueError, match="max_n"):
            await c.next_batch(0)
        c.close()
        with pytest.raises(ConsumerClosed):
            await waiter
        c.close()  # idempotent
        assert c.closed and bus.stats()["consumers"] == 0
        with pytest.raises(ConsumerClosed):
            c.poll()
        assert issubclass(ConsumerClosed, MelticaError)
        # a closed consumer holds nothing back: the ring is free to wrap
        bus.publish_batch([trade(t) for t in range(100)])
        assert bus.depth == 0

    run(main)
    run(main, use_uvloop=False)


def test_name_is_reusable_after_close_and_stats_are_plain_ints() -> None:
    bus = InMemoryDataBus(16)
    bus.subscribe("a").close()
    c = bus.subscribe("a")
    bus.publish_batch([trade(1)])
    stats = c.stats()
    assert stats["lag"] == 1 and stats["delivered"] == 0
    assert all(type(v) is int for v in stats.values())
    assert all(type(v) is int for v in bus.stats().values())


def test_publish_latency_is_observed_per_batch_from_its_first_event() -> None:
    from meltica.telemetry.metrics import Histogram

    bus = InMemoryDataBus(16, clock=lambda: 11 + 250_000)  # 250 µs after ts_recv=11
    bus.latency = hist = Histogram("x", "y")
    bus.publish_batch([trade(1), trade(2)])
    bus.publish_batch([connection_state(1)])  # ts_recv 1: observed too
    bus.publish_batch([])
    assert hist.n == 2
    assert hist.counts[hist.buckets.index(2.5e-4)] == 1  # 250 µs, in the 250 µs bucket
    unstamped = Control(
        "connection_state", venue="binance", market="spot", symbol="", seq=2, ts_recv=0
    )
    bus.publish_batch([unstamped])  # no receive time: nothing to observe
    assert hist.n == 2


def test_publish_latency_goes_to_any_observer_and_the_real_clock_by_default() -> None:
    seen: list[float] = []

    class Observer:
        def observe(self, seconds: float, count: int = 1) -> None:
            seen.append(seconds)

    bus = InMemoryDataBus(16)  # time.time_ns: the compiled path reads CLOCK_REALTIME itself
    bus.latency = Observer()
    first = trade(1)
    first.ts_recv = time.time_ns() - 5_000_000  # received 5 ms ago
    bus.publish_batch([first, trade(2)])
    assert len(seen) == 1 and 0.005 <= seen[0] < 60
    bus.latency = None
    bus.publish_batch([trade(3)])
    assert len(seen) == 1

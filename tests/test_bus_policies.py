"""Data Bus policies under slow consumers: block, drop_oldest, conflate.

Memory bounds are asserted on the ring's counters (depth, lag, held events,
reference counts), never on wall time.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_bus import book_ticker, run, seqs, trade

from meltica import Control, Derived, Event, FrameParser
from meltica.bus import ConsumerOverflow, InMemoryDataBus
from meltica.errors import MelticaError


def kline(open_min: int, interval: str = "1m", e_ms: int = 1) -> Event:
    frame = (
        f'{{"e":"kline","E":{e_ms},"s":"BTCUSDT","k":{{"t":{open_min * 60000},'
        f'"T":{open_min * 60000 + 59999},"s":"BTCUSDT","i":"{interval}","f":1,"L":2,'
        '"o":"1","c":"1","h":"1","l":"1","v":"1","n":2,"x":false,"q":"1","V":"1",'
        '"Q":"1","B":"0"}}'
    ).encode()
    (ev,) = FrameParser().parse(frame, 11)
    assert isinstance(ev, Event)
    return ev


def split(batch: list[Event]) -> tuple[list[Control], list[Event]]:
    gaps = [e for e in batch if isinstance(e, Control) and e.kind == "gap"]
    return gaps, [e for e in batch if not (isinstance(e, Control) and e.kind == "gap")]


# drop_oldest


def test_drop_oldest_reports_exactly_what_it_dropped() -> None:
    bus = InMemoryDataBus(16)
    c = bus.subscribe("slow", policy="drop_oldest")
    for t in range(1, 41, 5):
        bus.publish_batch([trade(x) for x in range(t, t + 5)])
    assert c.lag == 16 and bus.depth == 16  # bounded by the ring, not by the backlog
    batch = c.poll(5)
    marker = batch[0]
    assert isinstance(marker, Control)
    assert (marker.kind, marker.reason, marker.from_seq, marker.to_seq) == (
        "gap",
        "slow_consumer",
        1,
        24,
    )
    assert marker.seq == 1 and marker.ts_recv > 0
    assert seqs(batch[1:]) == [25, 26, 27, 28]
    assert c.dropped == 24
    # a second episode: 29..44 are lost, the marker comes before 45
    bus.publish_batch([trade(x) for x in range(41, 61)])
    batch = c.poll(100)
    assert isinstance(batch[0], Control)
    assert (batch[0].from_seq, batch[0].to_seq, batch[0].seq) == (29, 44, 2)
    assert seqs(batch[1:]) == list(range(45, 61))
    assert (c.dropped, c.delivered, c.stats()["gaps"]) == (40, 20, 2)
    assert c.poll(10) == []  # the marker is given once


def test_drop_oldest_counts_only_events_matching_its_filter() -> None:
    bus = InMemoryDataBus(8)
    c = bus.subscribe("trades", kinds=["trade"], policy="drop_oldest")
    for t in range(1, 21):  # trade ids 1..20 interleaved with book tickers
        bus.publish_batch([trade(t), book_ticker(t)])
    gaps, events = split(c.poll(100))
    assert seqs(events) == [17, 18, 19, 20]
    assert len(gaps) == 1 and (gaps[0].from_seq, gaps[0].to_seq) == (1, 16)
    assert c.dropped == 16


def test_drop_oldest_batch_larger_than_capacity() -> None:
    bus = InMemoryDataBus(8)
    c = bus.subscribe("a", policy="drop_oldest")
    bus.publish_batch([trade(t) for t in range(1, 31)])
    gaps, events = split(c.poll(100))
    assert (gaps[0].from_seq, gaps[0].to_seq) == (1, 22)
    assert seqs(events) == list(range(23, 31))


def test_drop_oldest_consumer_capacity_below_the_ring() -> None:
    bus = InMemoryDataBus(64)
    small = bus.subscribe("small", policy="drop_oldest", capacity=4)
    big = bus.subscribe("big", policy="drop_oldest")
    bus.publish_batch([trade(t) for t in range(1, 11)])
    gaps, events = split(small.poll(100))
    assert (gaps[0].from_seq, gaps[0].to_seq, seqs(events)) == (1, 6, [7, 8, 9, 10])
    assert seqs(big.poll(100)) == list(range(1, 11))


@settings(max_examples=150, deadline=None)
@given(
    capacity_log2=st.integers(1, 5),
    ops=st.lists(
        st.tuples(st.booleans(), st.integers(0, 40), st.sampled_from([None, ("trade",)])),
        max_size=40,
    ),
)
def test_drop_oldest_loses_nothing_silently(
    capacity_log2: int, ops: list[tuple[bool, int, tuple[str, ...] | None]]
) -> None:
    """Every matching event is delivered once or inside exactly one gap, in order."""
    capacity = 1 << capacity_log2
    bus = InMemoryDataBus(capacity)
    kinds = ops[0][2] if ops else None
    c = bus.subscribe("p", policy="drop_oldest", kinds=kinds)
    published: list[Event] = []
    ordinal = 0  # ordinal of the last matching event accounted for
    received: list[Event] = []
    n = 0

    def drain(batch: list[Event]) -> None:
        nonlocal ordinal
        for ev in batch:
            if isinstance(ev, Control) and ev.kind == "gap":
                assert ev.from_seq == ordinal + 1
                assert ev.to_seq is not None and ev.to_seq >= ev.from_seq
                ordinal = ev.to_seq
            else:
                ordinal += 1
                received.append(ev)

    for is_publish, k, _ in ops:
        if is_publish:
            batch = [trade(n + i) if (n + i) % 3 else book_ticker(n + i) for i in range(k)]
            n += k
            published.extend(batch)
            bus.publish_batch(batch)
            assert c.lag <= capacity and bus.depth <= capacity
        else:
            drain(c.poll(max(1, k)))
    drain(c.poll(10_000))
    matching = [e for e in published if kinds is None or e.kind in kinds]
    assert ordinal == len(matching) == c.delivered + c.dropped
    # what was received is the matching sequence with whole runs cut out, order kept
    assert len(received) == c.delivered
    positions = [matching.index(e) for e in received]
    assert positions == sorted(positions)


def test_ring_releases_overwritten_events() -> None:
    bus = InMemoryDataBus(8)
    bus.subscribe("a", policy="drop_oldest")
    ev = trade(1)
    base = sys.getrefcount(ev)
    bus.publish_batch([ev])
    assert sys.getrefcount(ev) == base + 1  # one pointer store
    bus.publish_batch([trade(t) for t in range(2, 10)])
    assert sys.getrefcount(ev) == base


# block


def test_block_pauses_the_reader_and_loses_nothing() -> None:
    calls: list[str] = []
    bus = InMemoryDataBus(
        64, on_pause=lambda: calls.append("pause"), on_resume=lambda: calls.append("resume")
    )
    c = bus.subscribe("strict", policy="block")
    fast = bus.subscribe("fast", policy="drop_oldest")
    t = 0
    for _ in range(3):  # 24 events: below high water (32)
        bus.publish_batch([trade(t + i) for i in range(8)])
        t += 8
        fast.poll(100)
    assert calls == [] and not bus.paused
    bus.publish_batch([trade(t + i) for i in range(8)])  # lag 32 -> pause
    t += 8
    assert calls == ["pause"] and bus.paused
    bus.publish_batch([trade(t + i) for i in range(32)])  # frames already read: the reserve
    t += 32
    assert calls == ["pause"] and c.lag == 64 and bus.depth == 64
    got: list[Event] = []
    got += c.poll(64 - 9)  # lag 9: still above low water (8)
    assert calls == ["pause"] and c.lag == 9
    got += c.poll(1)  # lag 8 <= low water
    assert calls == ["pause", "resume"] and not bus.paused
    got += c.poll(100)
    assert seqs(got) == list(range(64))
    assert c.dropped == 0 and fast.dropped == 0
    assert bus.stats()["pauses"] == 1 and bus.stats()["resumes"] == 1


def test_block_overflow_fails_that_consumer_only() -> None:
    bus = InMemoryDataBus(16)
    strict = bus.subscribe("strict", policy="block")
    other = bus.subscribe("other", policy="drop_oldest")
    bus.publish_batch([trade(t) for t in range(16)])
    assert strict.lag == 16
    bus.publish_batch([trade(t) for t in range(16, 20)])  # nowhere to go: strict fails
    assert bus.stats()["overflows"] == 1 and strict.stats()["failed"] == 1
    with pytest.raises(ConsumerOverflow, match="strict") as info:
        strict.poll()
    assert isinstance(info.value, MelticaError) and isinstance(info.value, BufferError)
    gaps, events = split(other.poll(100))
    assert gaps and seqs(events) == list(range(4, 20))
    assert not bus.paused  # the failed consumer no longer holds the readers


def test_a_batch_split_by_an_overflow_wakes_consumers_of_both_parts() -> None:
    """A block consumer with room for part of a batch fails; the batch is
    written in two parts, and a waiting consumer of a kind that only the first
    part holds is still woken and gets its event."""

    async def main() -> None:
        bus = InMemoryDataBus(16)
        strict = bus.subscribe("strict", policy="block")
        trades = bus.subscribe("trades", kinds=["trade"], policy="block")
        waiter = asyncio.ensure_future(trades.next_batch())
        await asyncio.sleep(0)
        bus.publish_batch([book_ticker(t) for t in range(15)])  # strict: room for 1 more
        await asyncio.sleep(0)
        assert not waiter.done() and trades.lag == 0
        bus.publish_batch([trade(100), book_ticker(15), book_ticker(16)])
        assert strict.stats()["failed"] == 1
        got = await asyncio.wait_for(waiter, 1.0)
        assert seqs(got) == [100] and trades.wakeups == 1

    run(main)


def test_block_slow_consumer_with_pausing_reader_keeps_memory_bounded() -> None:
    """A reader that honours pause/resume and a slow block consumer: all events
    arrive, in order, and the ring never holds more than its capacity."""

    async def main() -> None:
        resumed = asyncio.Event()
        resumed.set()
        bus = InMemoryDataBus(64, on_pause=resumed.clear, on_resume=resumed.set)
        c = bus.subscribe("slow", policy="block", capacity=32)
        max_depth = 0
        total = 2000

        async def reader() -> None:
            nonlocal max_depth
            t = 0
            while t < total:
                await resumed.wait()
                # a socket read already in flight: up to 8 frames even once paused
                bus.publish_batch([trade(t + i) for i in range(8)])
                t += 8
                max_depth = max(max_depth, bus.depth)
                await asyncio.sleep(0)

        async def consumer() -> list[Event]:
            got: list[Event] = []
            while len(got) < total:
                got += await c.next_batch(3)
                for _ in range(3):  # slower than the reader
                    await asyncio.sleep(0)
            return got

        got, _ = await asyncio.gather(consumer(), reader())
        assert seqs(got) == list(range(total))
        assert max_depth <= 32 and c.dropped == 0
        assert bus.pauses >= 1 and bus.pauses == bus.resumes + int(bus.paused)
        assert bus.overflows == 0

    run(main)


def test_default_policy_comes_from_the_bus() -> None:
    bus = InMemoryDataBus(16, policy="conflate")
    assert bus.subscribe("a").policy == "conflate"
    assert bus.subscribe("b", policy="block").policy == "block"
    with pytest.raises(ValueError, match="policy"):
        InMemoryDataBus(16, policy="nope")


# conflate


def test_conflate_gives_latest_per_key_when_lagging() -> None:
    bus = InMemoryDataBus(8)
    c = bus.subscribe("view", policy="conflate")
    for u in range(1, 21):
        bus.publish_batch(
            [book_ticker(u), book_ticker(u, "ETHUSDT"), book_ticker(u, "BTCUSDT", "usdm")]
        )
    bus.publish_batch([kline(1, "1m"), kline(1, "5m"), kline(2, "1m")])
    assert c.stats()["lag"] <= 8 + 6  # ring positions plus at most one held event per key
    got = c.poll(100)
    keys = [e.key for e in got]
    assert keys == [
        "binance:spot:BTCUSDT:book_ticker:20",
        "binance:spot:ETHUSDT:book_ticker:20",
        "binance:usdm:BTCUSDT:book_ticker:20",
        "binance:spot:BTCUSDT:kline:5m:60000000000:1000000",
        "binance:spot:BTCUSDT:kline:1m:120000000000:1000000",
    ]
    assert c.conflated == 63 - 5 and c.delivered == 5 and c.dropped == 0
    assert c.poll(100) == []


def test_conflate_keeps_the_latest_derived_value_per_name() -> None:
    """Two analytics hooks on one symbol are two streams of state, not one."""
    bus = InMemoryDataBus(8)
    c = bus.subscribe("view", policy="conflate", kinds=["derived"])
    for u in range(1, 21):
        bus.publish_batch(
            [
                Derived("binance", "spot", "BTCUSDT", name, u, None, u, {name: str(u)})
                for name in ("mid", "spread")
            ]
        )
    got = c.poll(100)
    assert [e.key for e in got] == [
        "binance:spot:BTCUSDT:derived:mid:20",
        "binance:spot:BTCUSDT:derived:spread:20",
    ]
    assert c.conflated == 38 and c.dropped == 0


def test_conflate_delivers_everything_when_keeping_up() -> None:
    bus = InMemoryDataBus(64)
    c = bus.subscribe("view", policy="conflate")
    for u in range(1, 6):
        bus.publish_batch([book_ticker(u)])
        assert seqs(c.poll(10)) == [u]
    bus.publish_batch([book_ticker(u) for u in range(6, 9)])
    assert seqs(c.poll(10)) == [6, 7, 8]  # 3 unread <= max_n: no conflation
    bus.publish_batch([book_ticker(u) for u in range(9, 20)])
    assert seqs(c.poll(4)) == [19]  # 11 unread > max_n: latest only
    assert c.conflated == 10


def test_conflate_memory_is_bounded_by_keys() -> None:
    bus = InMemoryDataBus(16)
    c = bus.subscribe("view", policy="conflate", capacity=8)
    symbols = ["BTCUSDT", "ETHUSDT", "BNBUSDT"]
    for u in range(1, 2001):
        bus.publish_batch([book_ticker(u, symbols[u % 3])])
        stats = c.stats()
        assert stats["lag"] <= 8 + len(symbols)
        assert bus.depth <= 16
    got = c.poll(100)
    assert sorted(seqs(got)) == [1998, 1999, 2000]  # type: ignore[type-var]


def test_conflate_batch_reads_are_split_by_max_n() -> None:
    bus = InMemoryDataBus(32)
    c = bus.subscribe("view", policy="conflate")
    symbols = [f"S{i}USDT" for i in range(6)]
    bus.publish_batch([book_ticker(u, s) for u in range(1, 4) for s in symbols])
    first = c.poll(4)
    rest = c.poll(4)
    assert [e.symbol for e in first + rest] == symbols
    assert {e.seq for e in first + rest} == {3}
    got: Any = c.poll(4)
    assert got == []

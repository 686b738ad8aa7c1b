"""ConnectionManager against the fake exchange over real loopback sockets.

Helpers here (``run``, ``Collector``, ``GatedExchange``, ``expected_keys``) are also
used by test_ws_faults.py.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aio import run

from meltica._core.parser import FrameParser
from meltica.adapters.binance.ws import ConnectionManager, SubscribeError, stream_route
from meltica.adapters.binance.ws_limits import Backoff, SlidingWindow
from meltica.adapters.binance.ws_overlap import Overlap, group_of
from meltica.replay.exchange import FakeExchange
from meltica.replay.source import CaptureSource, MarketSource, combined_frame
from meltica.replay.synthetic import SyntheticMarket

T = TypeVar("T")

SPOT_CAPTURE = "hftbacktest/examples/spot/btcusdt_20240808.gz"
USDM_CAPTURE = "cryptofeed/sample_data/BINANCE_FUTURES.ws.1.0"


class GatedExchange(FakeExchange):
    """A fake exchange whose timeline starts once all of ``gate`` is subscribed."""

    def __init__(self, source: MarketSource, gate: set[str], **kw: Any) -> None:
        super().__init__(source, **kw)
        self._gate = set(gate)

    def _on_subscribe(self, market: str, streams: set[str]) -> None:
        self._gate -= streams
        if not self._gate:
            self._subscribed.set()


class Collector:
    """The manager's sink and on_control: records events, batches and states."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.batches = 0
        self.states: list[tuple[str, str | None, str]] = []
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    def sink(self, batch: list[Any]) -> None:
        assert isinstance(batch, list) and batch
        self.batches += 1
        self.events.extend(batch)
        self._poke()

    def on_control(self, ev: Any) -> None:
        assert ev.kind == "connection_state"
        self.states.append((ev.state, ev.connection, ev.reason))
        self._poke()

    def _poke(self) -> None:
        for cond, fut in list(self._waiters):
            if not fut.done() and cond():
                fut.set_result(None)

    async def until(self, cond: Callable[[], bool], timeout: float = 30) -> None:
        if cond():
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((cond, fut))
        try:
            await asyncio.wait_for(fut, timeout)
        finally:
            self._waiters = [w for w in self._waiters if w[1] is not fut]

    def keys(self) -> list[str]:
        return [ev.key for ev in self.events]


def manager(url: str | dict[str, str], market: str, col: Collector, **kw: Any) -> ConnectionManager:
    opts: dict[str, Any] = {
        "control_msgs_per_second": 5 if market == "spot" else 10,
        "max_streams_per_connection": 1024 if market == "spot" else 200,
        "silence_timeout_s": 2.0,
        "reconnect_initial_s": 0.05,
        "reconnect_max_s": 0.5,
        "ack_timeout_s": 1.0,
        "overlap_max_s": 1.0,
        "rng": random.Random(1).random,
    }
    opts.update(kw)
    return ConnectionManager(url, market=market, sink=col.sink, on_control=col.on_control, **opts)


def urls_for(ex: FakeExchange, market: str) -> str | dict[str, str]:
    base = ex.ws_url(market)
    if market == "spot":
        return base
    return {"public": base + "/public", "market": base + "/market"}


def expected_keys(source: MarketSource, market: str, streams: set[str] | None = None) -> list[str]:
    """Keys of the events the source's frames carry, parsed independently of the manager."""
    parser = FrameParser(market=market)
    keys: list[str] = []
    for frame in source.frames():
        if streams is not None and frame.stream not in streams:
            continue
        for ev in parser.parse(combined_frame(frame)):
            keys.append(ev.key)
    return keys


def per_group(events: list[Any]) -> dict[Any, list[str]]:
    out: dict[Any, list[str]] = {}
    for ev in events:
        out.setdefault(group_of(ev), []).append(ev.key)
    return out


def capture(captures_dir: Path, name: str) -> CaptureSource:
    return CaptureSource(captures_dir / name)


# ---------------------------------------------------------------- over sockets


def test_usdm_capture_routed_paths_deliver_exactly_the_recorded_events(
    captures_dir: Path,
) -> None:
    source = capture(captures_dir, USDM_CAPTURE)
    streams = sorted(source.streams("usdm"))
    want = expected_keys(source, "usdm")

    async def scenario() -> tuple[Collector, dict[str, int | float]]:
        col = Collector()
        async with GatedExchange(source, set(streams), speed=None) as ex:
            mgr = manager(urls_for(ex, "usdm"), "usdm", col)
            await mgr.start()
            await mgr.subscribe(streams)
            assert mgr.streams() == frozenset(streams)
            await col.until(lambda: len(col.events) >= len(want))
            await asyncio.sleep(0.05)  # nothing more may come
            stats = mgr.stats()
            await mgr.stop()
            return col, stats

    col, stats = run(scenario)
    assert sorted(col.keys()) == sorted(want)
    assert len(set(col.keys())) == len(col.keys())
    # per stream, in recorded order
    assert per_group(col.events) == per_group_keys(want, source)
    assert stats["connections"] == 2  # /public and /market
    assert stats["parse_errors"] == 0
    assert stats["batches"] < stats["events"]  # batched, not one call per event
    assert ("connected", "usdm-0", "open") in col.states


def per_group_keys(keys: list[str], source: MarketSource) -> dict[Any, list[str]]:
    parser = FrameParser(market=source.markets[0])
    events = [ev for f in source.frames() for ev in parser.parse(combined_frame(f))]
    assert [ev.key for ev in events] == keys
    return per_group(events)


def test_subscribe_and_unsubscribe_at_runtime() -> None:
    source = SyntheticMarket(markets=("spot",), symbols_per_market=3, seed=3, duration_s=30.0)
    syms = [s.lower() for s in source.symbols("spot")]
    a, b = f"{syms[0]}@bookTicker", f"{syms[1]}@trade"

    async def scenario() -> None:
        col = Collector()
        async with FakeExchange(source, speed=1.0) as ex:
            mgr = manager(urls_for(ex, "spot"), "spot", col)
            await mgr.start()
            await mgr.subscribe([a])
            assert mgr.streams() == {a}
            await col.until(lambda: any(e.kind == "book_ticker" for e in col.events))
            await mgr.subscribe([b])
            await col.until(lambda: any(e.kind == "trade" for e in col.events))
            assert ex.ws["spot"].subscribed() == {a, b}
            await mgr.unsubscribe([a])
            assert mgr.streams() == {b}
            assert ex.ws["spot"].subscribed() == {b}
            n_bt = sum(e.kind == "book_ticker" for e in col.events)
            n_tr = sum(e.kind == "trade" for e in col.events)
            await col.until(lambda: sum(e.kind == "trade" for e in col.events) > n_tr + 2)
            assert sum(e.kind == "book_ticker" for e in col.events) == n_bt
            # one connection served all of it; unsubscribing the last stream closes it
            assert mgr.stats()["connects"] == 1
            await mgr.unsubscribe([b])
            assert mgr.streams() == frozenset()
            await col.until(lambda: mgr.stats()["connections"] == 0)
            await mgr.stop()

    run(scenario)


def test_a_rejected_subscribe_raises_and_the_connection_keeps_running() -> None:
    source = SyntheticMarket(markets=("spot",), symbols_per_market=3, seed=3, duration_s=30.0)
    syms = [s.lower() for s in source.symbols("spot")]

    async def scenario() -> None:
        col = Collector()
        async with FakeExchange(source, speed=1.0, ws_options={"max_streams": 2}) as ex:
            mgr = manager(urls_for(ex, "spot"), "spot", col, max_streams_per_connection=5)
            await mgr.start()
            await mgr.subscribe([f"{syms[0]}@trade"])
            with pytest.raises(SubscribeError, match="too many streams"):
                await mgr.subscribe([f"{s}@bookTicker" for s in syms])
            assert mgr.streams() == {f"{syms[0]}@trade"}
            assert mgr.stats()["subscribe_errors"] == 1
            await mgr.subscribe([f"{syms[1]}@trade"])  # still fine
            await col.until(lambda: {e.symbol for e in col.events} >= {s.upper() for s in syms[:2]})
            await mgr.stop()

    run(scenario)


def test_2000_streams_at_once_stay_within_the_exchange_limits() -> None:
    rates = {k: 0.0 for k in ("depth", "agg_trade", "kline", "ticker", "mini_ticker")}
    rates.update(book_ticker=0.2, trade=0.2)
    source = SyntheticMarket(
        markets=("spot",), symbols_per_market=1000, rates=rates, seed=5, duration_s=2.0
    )
    streams = sorted(source.streams("spot"))
    assert len(streams) == 2000

    async def scenario() -> tuple[dict[str, int | float], Any]:
        col = Collector()
        async with FakeExchange(source, speed=1.0) as ex:
            mgr = manager(urls_for(ex, "spot"), "spot", col, ack_timeout_s=5.0)
            await mgr.start()
            await mgr.subscribe(streams)
            assert ex.ws["spot"].subscribed() == set(streams)
            stats = mgr.stats()
            counters = ex.ws["spot"].counters
            await mgr.stop()
            return stats, counters

    stats, counters = run(scenario)
    assert counters.limit_violations == 0
    assert counters.connections_opened == 2  # 1024 + 976
    assert stats["streams_acked"] == 2000
    assert stats["subscribe_errors"] == 0
    assert stats["ack_timeouts"] == 0


def test_spot_capture_per_stream_silence_is_reported(captures_dir: Path) -> None:
    source = capture(captures_dir, SPOT_CAPTURE)
    quiet = "ethusdt@trade"  # not in the capture: acked, never any data

    async def scenario() -> tuple[frozenset[str], dict[str, int | float]]:
        col = Collector()
        async with FakeExchange(source, speed=50.0) as ex:
            mgr = manager(urls_for(ex, "spot"), "spot", col, silence_timeout_s=0.4)
            await mgr.start()
            await mgr.subscribe(["btcusdt@bookTicker", quiet])
            await col.until(lambda: bool(mgr.silent_streams()))
            silent, stats = mgr.silent_streams(), mgr.stats()
            await mgr.stop()
            return silent, stats

    silent, stats = run(scenario)
    assert silent == {quiet}
    assert stats["streams_silent"] == 1
    assert stats["ping_timeouts"] == 0 and stats["disconnects"] == 0  # the connection is fine


# ---------------------------------------------------------------- pure parts


def test_stream_routes_and_urls() -> None:
    assert stream_route("btcusdt@bookTicker") == "public"
    assert stream_route("btcusdt@depth@100ms") == "public"
    assert stream_route("btcusdt@depth20") == "public"
    assert stream_route("btcusdt@aggTrade") == "market"
    assert stream_route("btcusdt@markPrice@1s") == "market"
    col = Collector()
    mgr = ConnectionManager(
        "ws://h:1/", market="spot", sink=col.sink, on_control=col.on_control, time_unit="us"
    )
    assert mgr._url("all") == "ws://h:1/stream?timeUnit=MICROSECOND"
    with pytest.raises(ValueError):
        ConnectionManager({"public": "x"}, market="usdm", sink=col.sink, on_control=print)


def test_sliding_window_never_allows_more_than_limit_in_a_window() -> None:
    w = SlidingWindow(5, 1.0)
    now, sent = 0.0, []
    for _ in range(200):
        d = w.delay(now)
        if d == 0:
            w.record(now)
            sent.append(now)
        now += 0.037
    for t in sent:
        assert sum(1 for u in sent if t - 1.0 < u <= t) <= 5
    assert len(sent) >= 5 * int(now) - 5  # and it does use the budget


def test_backoff_is_capped_jittered_and_resets() -> None:
    b = Backoff(0.5, 4.0, random.Random(2).random)
    delays = [b.next_delay() for _ in range(8)]
    bases = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    for d, base in zip(delays, bases, strict=True):
        assert base / 2 <= d <= base
    assert len(set(delays)) == len(delays)
    b.reset()
    assert b.next_delay() <= 0.5


def _trades(ids: list[int]) -> list[Any]:
    parser = FrameParser(market="spot")
    out = []
    for i in ids:
        frame = (
            f'{{"e":"trade","E":{i},"s":"BTCUSDT","t":{i},"p":"1.0","q":"1.0","T":{i},"m":true}}'
        )
        out.extend(parser.parse(frame))
    return out


def test_overlap_switches_where_sequences_line_up() -> None:
    got: list[Any] = []
    ov = Overlap(got.extend)
    ov.on_old(_trades([1, 2, 3]))
    ov.on_new(_trades([2, 3, 4, 5]))  # lines up at 2; 3 was delivered by the old one too
    assert [e.seq for e in got] == [1, 2, 3, 4, 5]
    ov.on_old(_trades([4, 5]))  # switched: dropped
    ov.on_new(_trades([6]))
    residual = ov.old_gone()
    residual(_trades([7]))
    assert [e.seq for e in got] == [1, 2, 3, 4, 5, 6, 7]
    assert ov.dropped == 1 + 1 + 2


def test_overlap_buffers_new_until_old_catches_up() -> None:
    got: list[Any] = []
    ov = Overlap(got.extend)
    ov.on_old(_trades([1]))
    ov.on_new(_trades([3, 4, 5]))  # the old one still has 2, 3 in flight
    assert [e.seq for e in got] == [1]
    ov.on_old(_trades([2, 3]))  # 3 is common: switch, 4 and 5 follow
    ov.on_old(_trades([4]))  # dropped
    ov.on_new(_trades([6]))
    assert [e.seq for e in got] == [1, 2, 3, 4, 5, 6]
    assert ov.groups_pending() == 0


def test_overlap_old_gone_releases_buffers_without_duplicates() -> None:
    got: list[Any] = []
    ov = Overlap(got.extend)
    ov.on_old(_trades([10, 11, 12]))
    ov.on_new(_trades([12, 13]))  # old died before 12 was seen as common? no: it matches
    ov2_got: list[Any] = []
    ov2 = Overlap(ov2_got.extend)
    ov2.on_old(_trades([10, 11]))
    ov2.on_new(_trades([12, 13]))  # never lines up; then the old one dies
    residual = ov2.old_gone()
    residual(_trades([14]))
    assert [e.seq for e in got] == [10, 11, 12, 13]
    assert [e.seq for e in ov2_got] == [10, 11, 12, 13, 14]


def test_overlap_new_gone_resumes_old_without_duplicates() -> None:
    got: list[Any] = []
    ov = Overlap(got.extend)
    ov.on_old(_trades([1, 2]))
    ov.on_new(_trades([2, 3, 4]))  # switched at 2; 3, 4 from new
    residual = ov.new_gone()
    residual(_trades([3, 4, 5]))  # the old one resumes; 3 and 4 were delivered already
    assert [e.seq for e in got] == [1, 2, 3, 4, 5]

"""Dispatcher (meltica/dispatcher/dispatcher.py) against a fake exchange side.

The fakes have the surfaces the real parts have: ``FakeSubscriber`` is a
ConnectionManager (``async subscribe/unsubscribe``, ``streams()``), ``Registry``
an InstrumentRegistry (``get``), ``FakeConductor`` the Conductor's
``track/untrack/resync``.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import pytest
import uvloop

from meltica._core.dispatch import DispatchTable
from meltica._core.events import Event
from meltica._core.parser import FrameParser
from meltica.control import ControlReply, ControlRequest
from meltica.dispatcher import Dispatcher


class FakeSubscriber:
    """The exchange side of one market: acks after ``delay``; ``reject`` streams fail."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.acked: set[str] = set()
        self.calls: list[tuple[str, list[str]]] = []
        self.reject: set[str] = set()
        self.fail_unsubscribe = False
        self.hang = False
        self.before_ack: Callable[[list[str]], None] | None = None
        self.inflight = 0
        self.max_inflight = 0

    async def _wait(self) -> None:
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            if self.hang:
                await asyncio.Event().wait()
            await asyncio.sleep(self.delay)
        finally:
            self.inflight -= 1

    async def subscribe(self, streams: Iterable[str]) -> None:
        wanted = list(streams)
        self.calls.append(("subscribe", wanted))
        if self.before_ack is not None:
            self.before_ack(wanted)
        await self._wait()
        self.acked |= {s for s in wanted if s not in self.reject}
        bad = [s for s in wanted if s in self.reject]
        if bad:
            raise RuntimeError(f"rejected by the exchange: {bad}")

    async def unsubscribe(self, streams: Iterable[str]) -> None:
        gone = list(streams)
        self.calls.append(("unsubscribe", gone))
        await self._wait()
        if self.fail_unsubscribe:
            self.acked -= set(gone[:1])  # the manager dropped one before it failed
            raise ConnectionError("connection lost")
        self.acked -= set(gone)

    def streams(self) -> frozenset[str]:
        return frozenset(self.acked)


class Registry:
    def __init__(self, known: dict[str, set[str]]) -> None:
        self.known = known

    def get(self, market: str, symbol: str) -> object | None:
        return object() if symbol.upper() in self.known.get(market, set()) else None


class FakeConductor:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def track(self, market: str, symbol: str) -> None:
        self.calls.append(("track", market, symbol))

    async def untrack(self, market: str, symbol: str) -> bool:
        self.calls.append(("untrack", market, symbol))
        return True

    def resync(self, market: str, symbol: str) -> bool:
        self.calls.append(("resync", market, symbol))
        return True


class Harness:
    def __init__(self, delay: float = 0.0, *, conductor: bool = True, **kw: Any) -> None:
        self.subs = {"spot": FakeSubscriber(delay), "usdm": FakeSubscriber(delay)}
        self.registry = Registry(
            {"spot": {"BTCUSDT", "ETHUSDT"}, "usdm": {"BTCUSDT", "ETHUSDT", "XRPUSDT"}}
        )
        self.conductor = FakeConductor() if conductor else None
        self.batches: list[list[Any]] = []
        self.ticks = itertools.count(0, 1000)
        self.table = DispatchTable()
        self.d = Dispatcher(
            self.table,
            self.subs,
            self.registry,
            self.batches.append,
            clock=lambda: next(self.ticks),
            conductor=self.conductor,
            depth_speed_ms={"spot": 100, "usdm": 500},
            **kw,
        )

    async def sub(self, market: str, symbols: list[str], channels: list[str]) -> ControlReply:
        return await self.d.subscribe(ControlRequest("subscribe", market, symbols, channels))

    async def unsub(self, market: str, symbols: list[str], channels: list[str]) -> ControlReply:
        return await self.d.unsubscribe(ControlRequest("unsubscribe", market, symbols, channels))


def run(coro: Callable[[], Awaitable[None]]) -> None:
    uvloop.run(coro())


SPOT = FrameParser(market="spot")
USDM = FrameParser(market="usdm")


def trade(t: int, symbol: str = "BTCUSDT", parser: FrameParser = SPOT) -> Event:
    frame = (
        f'{{"stream":"{symbol.lower()}@trade","data":{{"e":"trade","E":1,"s":"{symbol}",'
        f'"t":{t},"p":"1.5","q":"2","T":1,"m":true}}}}'
    )
    (ev,) = parser.parse(frame.encode())
    return ev


def depth(u: int, symbol: str = "BTCUSDT") -> Event:
    frame = (
        f'{{"stream":"{symbol.lower()}@depth@500ms","data":{{"e":"depthUpdate","E":1,"T":1,'
        f'"s":"{symbol}","U":{u},"u":{u},"pu":{u - 1},"b":[["1","1"]],"a":[]}}}}'
    )
    (ev,) = USDM.parse(frame.encode())
    return ev


# ------------------------------------------------------------------ subscribe


def test_subscribe_routes_streams_and_measures_propagation() -> None:
    async def main() -> None:
        h = Harness()
        reply = await h.sub("usdm", ["btcusdt", "ETHUSDT"], ["trade", "depth", "kline_1m"])
        assert reply.ok, reply.error
        assert h.subs["usdm"].calls == [
            (
                "subscribe",
                [
                    "btcusdt@trade",
                    "btcusdt@depth@500ms",
                    "btcusdt@kline_1m",
                    "ethusdt@trade",
                    "ethusdt@depth@500ms",
                    "ethusdt@kline_1m",
                ],
            )
        ]
        assert reply.propagation_ns is not None and reply.propagation_ns > 0
        assert h.d.last_propagation_ns == reply.propagation_ns
        assert len(h.table) == 6
        assert ("usdm", "BTCUSDT", "kline", "1m") in h.table
        assert reply.result["subscribed"] == {
            "BTCUSDT": ["depth", "kline_1m", "trade"],
            "ETHUSDT": ["depth", "kline_1m", "trade"],
        }
        assert h.conductor is not None
        assert h.conductor.calls == [("track", "usdm", "BTCUSDT"), ("track", "usdm", "ETHUSDT")]
        bid, eid = h.d.instrument_id("usdm", "BTCUSDT"), h.d.instrument_id("usdm", "ethusdt")
        assert bid is not None and eid is not None and bid != eid
        entry = h.table.get("usdm", "BTCUSDT", "book_delta")
        assert entry is not None and entry["instrument_id"] == bid and entry["channel"] == "depth"

    run(main)


def test_on_events_filters_and_calls_downstream_once() -> None:
    async def main() -> None:
        h = Harness()
        assert (await h.sub("usdm", ["BTCUSDT"], ["trade", "depth"])).ok
        a, b = trade(1, parser=USDM), depth(10)
        batch = [a, trade(1, parser=USDM), b, trade(5, "ETHUSDT", USDM), trade(2, parser=SPOT)]
        h.d.on_events(batch)
        assert h.batches == [[a, b]]
        h.d.on_events([trade(1, parser=USDM)])  # all dropped: downstream not called
        assert len(h.batches) == 1
        assert h.table.stats()["duplicates"] == 2 and h.table.unrouted == 2

    run(main)


def test_subscribe_is_idempotent() -> None:
    async def main() -> None:
        h = Harness()
        assert (await h.sub("spot", ["BTCUSDT"], ["trade"])).ok
        reply = await h.sub("spot", ["btcusdt"], ["trade", "trade"])
        assert reply.ok and reply.result["added"] == []
        assert len(h.subs["spot"].calls) == 1
        # partly new: only the new stream goes to the exchange
        reply = await h.sub("spot", ["BTCUSDT"], ["trade", "agg_trade"])
        assert reply.ok and reply.result["streams"] == ["btcusdt@aggTrade"]

    run(main)


@pytest.mark.parametrize(
    ("market", "symbols", "channels", "error"),
    [
        ("coinm", ["BTCUSD_PERP"], ["trade"], "unknown market 'coinm' (known: spot, usdm)"),
        (None, ["BTCUSDT"], ["trade"], "request needs a market"),
        ("spot", ["BTCUSDT"], ["mark_price", "nope"], "unknown spot channel(s): 'mark_price'"),
        ("usdm", ["BTCUSDT"], ["kline_1s"], "'kline_1s'"),
        ("spot", ["BTCUSDT", "DOGEUSDT", "XRPUSDT"], ["trade"], "symbol(s): DOGEUSDT, XRPUSDT"),
        ("spot", [], ["trade"], "at least one symbol"),
        ("spot", ["BTCUSDT"], [], "at least one channel"),
        ("spot", ["BTC/USDT"], ["trade"], "not a Binance symbol"),
    ],
)
def test_invalid_requests_are_refused(
    market: str | None, symbols: list[str], channels: list[str], error: str
) -> None:
    async def main() -> None:
        h = Harness()
        reply = await h.d.subscribe(ControlRequest("subscribe", market, symbols, channels))
        assert not reply.ok and reply.error is not None and error in reply.error
        assert h.subs["spot"].calls == [] and h.subs["usdm"].calls == [] and len(h.table) == 0
        assert h.d.counters["rejected"] == 1

    run(main)


def test_too_many_streams_in_one_request() -> None:
    async def main() -> None:
        h = Harness()
        h.registry.known["spot"] |= {f"S{i}USDT" for i in range(400)}
        symbols = [f"S{i}USDT" for i in range(400)]
        reply = await h.sub("spot", symbols, ["trade", "depth", "book_ticker"])
        assert not reply.ok and reply.error is not None and "at most 1024" in reply.error

    run(main)


def test_first_events_before_the_ack_are_not_dropped() -> None:
    async def main() -> None:
        h = Harness(delay=0.01)
        early = trade(7)
        h.subs["spot"].before_ack = lambda streams: h.d.on_events([early])
        assert (await h.sub("spot", ["BTCUSDT"], ["trade"])).ok
        assert h.batches == [[early]]

    run(main)


def test_exchange_failure_rolls_everything_back() -> None:
    async def main() -> None:
        h = Harness()
        assert (await h.sub("spot", ["BTCUSDT"], ["trade"])).ok
        h.subs["spot"].reject = {"ethusdt@depth@100ms"}
        reply = await h.sub("spot", ["BTCUSDT", "ETHUSDT"], ["trade", "depth"])
        assert not reply.ok and reply.error is not None
        assert "subscribe failed at the exchange: RuntimeError" in reply.error
        # table, exchange, conductor and ids are what they were before the request
        assert h.table.routes() == [("spot", "BTCUSDT", "trade", None)]
        assert h.subs["spot"].streams() == {"btcusdt@trade"}
        assert h.subs["spot"].calls[-1] == (
            "unsubscribe",
            ["btcusdt@depth@100ms", "ethusdt@trade", "ethusdt@depth@100ms"],
        )
        assert h.conductor is not None
        assert sorted(h.conductor.calls) == sorted(
            [
                ("track", "spot", "BTCUSDT"),
                ("track", "spot", "ETHUSDT"),
                ("untrack", "spot", "BTCUSDT"),
                ("untrack", "spot", "ETHUSDT"),
            ]
        )
        assert h.d.subscriptions() == {("spot", "BTCUSDT"): frozenset({"trade"})}
        assert h.d.instrument_id("spot", "ETHUSDT") is None
        assert h.d.counters["rollbacks"] == 1 and h.d.counters["failed"] == 1

    run(main)


def test_ack_timeout_rolls_back() -> None:
    async def main() -> None:
        h = Harness(ack_timeout_s=0.05)
        h.subs["usdm"].hang = True
        reply = await h.sub("usdm", ["BTCUSDT"], ["trade"])
        assert (
            not reply.ok and reply.error is not None and "no ack before the timeout" in reply.error
        )
        assert len(h.table) == 0 and h.d.subscriptions() == {}
        assert h.d.counters["rollback_errors"] == 1  # the rollback unsubscribe hung too

    run(main)


def test_cancelled_subscribe_rolls_back_and_propagates() -> None:
    async def main() -> None:
        h = Harness(delay=10)
        task = asyncio.ensure_future(h.sub("spot", ["BTCUSDT"], ["trade"]))
        await asyncio.sleep(0.01)
        assert len(h.table) == 1  # routes go in before the exchange acks
        h.subs["spot"].delay = 0
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert len(h.table) == 0 and h.subs["spot"].calls[-1][0] == "unsubscribe"

    run(main)


# ------------------------------------------------------------------ unsubscribe


def test_unsubscribe_exchange_then_table() -> None:
    async def main() -> None:
        h = Harness()
        assert (await h.sub("usdm", ["BTCUSDT"], ["trade", "depth"])).ok
        reply = await h.unsub("usdm", ["btcusdt"], ["depth", "trade", "liquidation"])
        assert reply.ok and reply.result["removed"] == ["usdm:BTCUSDT:depth", "usdm:BTCUSDT:trade"]
        assert reply.propagation_ns is not None and reply.propagation_ns > 0
        assert h.subs["usdm"].calls[-1] == ("unsubscribe", ["btcusdt@depth@500ms", "btcusdt@trade"])
        assert len(h.table) == 0 and h.d.instrument_id("usdm", "BTCUSDT") is None
        assert h.conductor is not None and h.conductor.calls[-1] == ("untrack", "usdm", "BTCUSDT")
        # stragglers of the removed route: unrouted, dropped
        h.d.on_events([trade(9, parser=USDM)])
        assert h.batches == [] and h.table.unrouted == 1
        # idempotent, and a delisted symbol needs no registry entry to be unsubscribed
        again = await h.unsub("usdm", ["BTCUSDT", "GONEUSDT"], ["trade"])
        assert again.ok and again.result["removed"] == []
        assert len(h.subs["usdm"].calls) == 2

    run(main)


def test_unsubscribe_failure_keeps_the_table_as_the_exchange_has_it() -> None:
    async def main() -> None:
        h = Harness()
        assert (await h.sub("spot", ["BTCUSDT"], ["trade", "book_ticker"])).ok
        h.subs["spot"].fail_unsubscribe = True
        reply = await h.unsub("spot", ["BTCUSDT"], ["trade", "book_ticker"])
        assert not reply.ok and reply.error is not None
        assert "ConnectionError: connection lost (1 of 2 streams removed)" in reply.error
        assert h.table.routes() == [("spot", "BTCUSDT", "book_ticker", None)]
        assert h.d.subscriptions() == {("spot", "BTCUSDT"): frozenset({"book_ticker"})}

    run(main)


def test_partial_depth_channels_share_a_route() -> None:
    async def main() -> None:
        h = Harness()
        assert (await h.sub("spot", ["BTCUSDT"], ["depth5", "depth20"])).ok
        entry = h.table.get("spot", "BTCUSDT", "book_snapshot")
        assert entry is not None and entry["channel"] == "depth20+depth5"
        assert h.subs["spot"].streams() == {"btcusdt@depth5@100ms", "btcusdt@depth20@100ms"}
        assert h.conductor is not None and h.conductor.calls == []  # only diff depth has a book
        assert (await h.unsub("spot", ["BTCUSDT"], ["depth5"])).ok
        entry = h.table.get("spot", "BTCUSDT", "book_snapshot")
        assert entry is not None and entry["channel"] == "depth20"
        assert (await h.unsub("spot", ["BTCUSDT"], ["depth20"])).ok
        assert len(h.table) == 0

    run(main)


# ------------------------------------------------------------------ list, status, resync


def test_list_status_resync() -> None:
    async def main() -> None:
        h = Harness()
        assert (await h.sub("spot", ["BTCUSDT"], ["depth", "trade"])).ok
        assert (await h.sub("usdm", ["XRPUSDT"], ["mark_price"])).ok
        listed = await h.d.list(ControlRequest("list"))
        assert listed.ok
        assert listed.result["subscriptions"] == {
            "spot": {"BTCUSDT": ["depth", "trade"]},
            "usdm": {"XRPUSDT": ["mark_price"]},
        }
        assert listed.result["exchange_streams"]["usdm"] == ["xrpusdt@markPrice@1s"]
        one = await h.d.list(ControlRequest("list", "spot", ["ethusdt"]))
        assert one.result["subscriptions"] == {"spot": {}}
        bad = await h.d.list(ControlRequest("list", "nyse"))
        assert not bad.ok and "unknown market 'nyse'" in (bad.error or "")

        h.d.on_events([trade(1), trade(1)])
        status = await h.d.status(ControlRequest("status", "spot", ["BTCUSDT"]))
        assert status.ok
        assert status.result["table"]["duplicates"] == 1 and status.result["table"]["routes"] == 3
        assert status.result["exchange_streams"] == {"spot": 2, "usdm": 1}
        assert {r["kind"] for r in status.result["routes"]} == {"trade", "book_delta"}
        assert status.result["dispatcher"]["instruments"] == 2

        ok = await h.d.resync(ControlRequest("resync", "spot", ["btcusdt"]))
        assert ok.ok and ok.result == {"resynced": ["BTCUSDT"]}
        assert h.conductor is not None and h.conductor.calls[-1] == ("resync", "spot", "BTCUSDT")
        no_book = await h.d.resync(ControlRequest("resync", "usdm", ["XRPUSDT"]))
        assert not no_book.ok and "not subscribed to usdm depth" in (no_book.error or "")

    run(main)


def test_resync_without_conductor() -> None:
    async def main() -> None:
        h = Harness(conductor=False)
        assert (await h.sub("spot", ["BTCUSDT"], ["depth"])).ok
        reply = await h.d.handle(ControlRequest("resync", "spot", ["BTCUSDT"]))
        assert not reply.ok and "needs a conductor" in (reply.error or "")

    run(main)


def test_handle_dispatches_every_op() -> None:
    async def main() -> None:
        h = Harness()
        for op in ("subscribe", "list", "status", "resync", "unsubscribe"):
            reply = await h.d.handle(ControlRequest(op, "spot", ["BTCUSDT"], ["depth"]))  # type: ignore[arg-type]
            assert reply.ok, (op, reply.error)
            assert reply.propagation_ns is not None
        assert h.d.counters["requests"] == 5

    run(main)


def test_constructor_checks() -> None:
    with pytest.raises(ValueError, match="dapi"):
        Dispatcher(DispatchTable(), {"dapi": FakeSubscriber()}, Registry({}), print)
    with pytest.raises(ValueError, match="ack_timeout_s"):
        Dispatcher(DispatchTable(), {}, Registry({}), print, ack_timeout_s=0)

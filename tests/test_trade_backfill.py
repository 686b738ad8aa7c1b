"""Trades by id: the fake exchange's endpoints, BinanceRest.trades_from and TradeBackfill.

Everything runs over real loopback sockets against the fake REST server, whose trade tape
is filled by iterating a synthetic market (the frames a gateway would have received).
Client and server share the fake clock of test_rest_client, so weight windows are exact.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aio
import aiohttp
import pytest
from test_rest_client import FakeTime, client_for, tracer, wait_until

from meltica._core.events import Control, Trade
from meltica.adapters.binance.backfill import HoleOutcome, TradeBackfill
from meltica.adapters.binance.rest import RestRequestError, RestStatusError
from meltica.config import load_config
from meltica.errors import ConfigError
from meltica.replay.rest import RestServer
from meltica.replay.source import StreamFrame
from meltica.replay.synthetic import SyntheticMarket
from meltica.replay.tape import TradeTape

pytestmark = pytest.mark.timeout(60)

Runner = Callable[[Callable[[], Awaitable[None]]], None]


@pytest.fixture(params=aio.LOOPS)
def run(request: pytest.FixtureRequest) -> Runner:
    return functools.partial(aio.run, timeout=30.0, loop=request.param)


def played(n: int = 4000) -> tuple[SyntheticMarket, list[StreamFrame]]:
    """A synthetic spot + usdm market, ``n`` frames into its timeline (the tape holds
    their trades); returns the trade and agg trade frames it yielded."""
    src = SyntheticMarket(symbols={"spot": ["BTCUSDT"], "usdm": ["BTCUSDT"]}, seed=5)
    frames = [
        f for f in itertools.islice(src.frames(), n) if f.stream.endswith(("@trade", "@aggTrade"))
    ]
    return src, frames


def live(frames: list[StreamFrame], market: str, stream: str) -> list[Trade]:
    """The events the gateway's parser makes of the frames (the live copies)."""
    from meltica._core.parser import FrameParser

    parser = FrameParser(market=market)
    out: list[Trade] = []
    for f in frames:
        if f.market == market and f.stream == stream:
            (ev,) = parser.parse(f.payload, 1)
            assert isinstance(ev, Trade)
            out.append(ev)
    return out


def serving(
    run: Runner, body: Callable[..., Awaitable[None]], *, auto: bool = True, **server_options: Any
) -> None:
    clock = FakeTime(auto=auto)
    src, frames = played()

    async def main() -> None:
        server = RestServer(src, clock=clock, **server_options)
        await server.start()
        try:
            await body(server, clock, frames)
        finally:
            await server.stop()

    run(main)


async def get(server: RestServer, path: str, **kw: Any) -> tuple[int, Any, dict[str, str]]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(server.url + path, **kw) as resp,
    ):
        return resp.status, json.loads(await resp.read()), dict(resp.headers)


# ---------------------------------------------------------------- the fake's endpoints


def test_fake_serves_agg_trades_by_id_from_what_it_streamed(run: Runner) -> None:
    async def body(server: RestServer, clock: FakeTime, frames: list[StreamFrame]) -> None:
        spot = [
            json.loads(f.payload)
            for f in frames
            if f.market == "spot" and f.stream == "btcusdt@aggTrade"
        ]
        assert len(spot) > 20
        first = spot[3]["a"]
        status, items, headers = await get(
            server, "/api/v3/aggTrades", params={"symbol": "BTCUSDT", "fromId": first, "limit": 5}
        )
        assert status == 200
        assert [i["a"] for i in items] == [first + k for k in range(5)]
        for item, sent in zip(items, spot[3:8], strict=True):
            assert item == {k: sent[k] for k in ("a", "p", "q", "f", "l", "T", "m", "M")}
        assert headers["X-MBX-USED-WEIGHT-1M"] == "4"
        # no fromId: the latest `limit`
        status, items, _ = await get(
            server, "/api/v3/aggTrades", params={"symbol": "BTCUSDT", "limit": 2}
        )
        assert [i["a"] for i in items] == [spot[-2]["a"], spot[-1]["a"]]

    serving(run, body)


def test_fake_historical_trades_weights_and_the_futures_api_key(run: Runner) -> None:
    async def body(server: RestServer, clock: FakeTime, frames: list[StreamFrame]) -> None:
        spot = [
            json.loads(f.payload)
            for f in frames
            if f.market == "spot" and f.stream.endswith("@trade")
        ]
        t = spot[0]
        status, items, headers = await get(
            server, "/api/v3/historicalTrades", params={"symbol": "BTCUSDT", "fromId": t["t"]}
        )
        assert status == 200 and headers["X-MBX-USED-WEIGHT-1M"] == "25"
        assert items[0]["id"] == t["t"] and items[0]["price"] == t["p"]
        assert items[0]["qty"] == t["q"] and items[0]["time"] == t["T"]
        assert items[0]["isBuyerMaker"] is t["m"]
        assert len(items) == min(500, len(spot))  # spot's default limit
        params = {"symbol": "BTCUSDT", "fromId": "0"}
        status, err, headers = await get(server, "/fapi/v1/historicalTrades", params=params)
        assert (status, err["code"]) == (401, -2014)
        assert headers["X-MBX-USED-WEIGHT-1M"] == "20"  # charged all the same
        status, items, _ = await get(
            server, "/fapi/v1/historicalTrades", params=params, headers={"X-MBX-APIKEY": "k"}
        )
        assert status == 200 and 0 < len(items) <= 100  # futures' default limit
        assert "isBestMatch" not in items[0] and "quoteQty" in items[0]

    serving(run, body)


@pytest.mark.parametrize(
    ("path", "params", "status", "code"),
    [
        ("/api/v3/aggTrades", {}, 400, -1102),
        ("/api/v3/aggTrades", {"symbol": "btc usdt"}, 400, -1100),
        ("/api/v3/aggTrades", {"symbol": "BTCUSDT", "fromId": "-1"}, 400, -1100),
        ("/api/v3/aggTrades", {"symbol": "BTCUSDT", "limit": "x"}, 400, -1100),
        ("/api/v3/aggTrades", {"symbol": "BTCUSDT", "limit": "1001"}, 400, -1130),
        ("/api/v3/aggTrades", {"symbol": "BTCUSDT", "limit": "0"}, 400, -1130),
        ("/api/v3/historicalTrades", {"symbol": "BTCUSDT", "limit": "1001"}, 400, -1130),
        ("/fapi/v1/aggTrades", {"symbol": "BTCUSDT", "limit": "1001"}, 400, -1130),
        ("/api/v3/aggTrades", {"symbol": "NOPEUSDT"}, 400, -1121),
        ("/dapi/v1/aggTrades", {"symbol": "BTCUSD_PERP"}, 400, -1121),
    ],
)
def test_fake_rejects_bad_parameters_as_binance_does(
    run: Runner, path: str, params: dict[str, str], status: int, code: int
) -> None:
    async def body(server: RestServer, clock: FakeTime, frames: list[StreamFrame]) -> None:
        got, err, _ = await get(server, path, params=params)
        assert (got, err["code"]) == (status, code)
        assert isinstance(err["msg"], str) and err["msg"]

    serving(run, body)


def test_fake_futures_historical_limit_is_500(run: Runner) -> None:
    async def body(server: RestServer, clock: FakeTime, frames: list[StreamFrame]) -> None:
        key = {"X-MBX-APIKEY": "k"}
        p = {"symbol": "BTCUSDT", "limit": "501"}
        got, err, _ = await get(server, "/fapi/v1/historicalTrades", params=p, headers=key)
        assert (got, err["code"]) == (400, -1130)
        p["limit"] = "500"
        got, _, _ = await get(server, "/fapi/v1/historicalTrades", params=p, headers=key)
        assert got == 200

    serving(run, body)


def test_tape_keeps_the_latest_and_the_first_copy_of_an_id() -> None:
    tape = TradeTape(capacity=3)

    def frame(tid: int, p: str = "1") -> StreamFrame:
        body = f'{{"e":"trade","s":"X","t":{tid},"p":"{p}","q":"2","T":1,"m":true}}'
        return StreamFrame(0, "spot", "x@trade", body.encode())

    for tid in (1, 2, 2, 3, 1, 4, 5):
        tape.observe(frame(tid, p=str(tid)))
    tape.observe(StreamFrame(0, "spot", "x@trade", b"{not json"))
    items = tape.get("spot", "X", "trade", 0, 10)
    assert items is not None
    # capacity 3: trimmed at 6 kept; all 5 distinct ids are still here
    assert [i["id"] for i in items] == [1, 2, 3, 4, 5]
    assert items[0]["quoteQty"] == "2"
    assert tape.get("spot", "X", "trade", 4, 10) == items[3:]
    assert tape.get("spot", "Y", "trade", 0, 10) is None
    for tid in range(6, 12):
        tape.observe(frame(tid))
    kept = tape.get("spot", "X", "trade", 0, 100)
    assert kept is not None and kept[-1]["id"] == 11 and len(kept) < 11


# ---------------------------------------------------------------- the client


def test_backfilled_events_equal_the_live_ones_but_for_source_and_event_time(
    run: Runner,
) -> None:
    async def body(server: RestServer, clock: FakeTime, frames: list[StreamFrame]) -> None:
        async with client_for(server, clock, api_key="k") as client:
            for market, kind, stream in [
                ("spot", "trade", "btcusdt@trade"),
                ("spot", "agg_trade", "btcusdt@aggTrade"),
                ("usdm", "trade", "btcusdt@trade"),
                ("usdm", "agg_trade", "btcusdt@aggTrade"),
            ]:
                want = live(frames, market, stream)[2:12]
                assert len(want) == 10, (market, kind)
                got = await client.trades_from(market, "btcusdt", kind, want[0].trade_id, 10)
                assert [e.trade_id for e in got] == [e.trade_id for e in want]
                for g, w in zip(got, want, strict=True):
                    assert g.source == "rest" and w.source == "stream"
                    assert g.ts_event is None
                    a, b = g.to_wire(), w.to_wire()
                    for d in (a, b):
                        for k in ("ts_event", "ts_recv", "source"):
                            d.pop(k, None)
                    assert a == b  # key, seq, price, qty, side, ids, ts_transaction
                    assert g.key == w.key

    serving(run, body)


def test_trades_from_rejects_bad_arguments_and_surfaces_status_errors(run: Runner) -> None:
    async def body(server: RestServer, clock: FakeTime, frames: list[StreamFrame]) -> None:
        async with client_for(server, clock) as client:
            with pytest.raises(RestRequestError):
                await client.trades_from("spot", "BTCUSDT", "trade", 1, 1001)
            with pytest.raises(RestRequestError):
                await client.trades_from("usdm", "BTCUSDT", "trade", 1, 501)
            with pytest.raises(RestRequestError):
                await client.trades_from("spot", "BTCUSDT", "kline", 1)
            with pytest.raises(RestStatusError) as info:
                await client.trades_from("usdm", "BTCUSDT", "trade", 1)  # no API key
            assert (info.value.status, info.value.code) == (401, -2014)
            assert await client.trades_from("spot", "BTCUSDT", "agg_trade", 10**15) == []

    serving(run, body)


def test_backfill_requests_wait_behind_book_snapshots(run: Runner) -> None:
    """One request per window (budget 20, weight 20): a backfill page queued first is
    granted after a depth snapshot queued later."""
    started: list[tuple[float, str]] = []

    async def body(server: RestServer, clock: FakeTime, frames: list[StreamFrame]) -> None:
        async with client_for(
            server, clock, limits={"usdm": (40, 0.5)}, trace_configs=[tracer(clock, started)]
        ) as client:
            first = asyncio.create_task(client.depth_snapshot("usdm", "BTCUSDT", 1000))
            await wait_until(first.done, "first sent")
            fill = asyncio.create_task(client.trades_from("usdm", "BTCUSDT", "agg_trade", 0))
            await wait_until(
                lambda: client.stats("usdm")["queue_depth"] == 1 and clock.sleeping == 1,
                "fill held for the next window",
            )
            depth = asyncio.create_task(client.depth_snapshot("usdm", "BTCUSDT", 1000))
            await wait_until(lambda: client.stats("usdm")["queue_depth"] == 2, "depth queued")
            while not (fill.done() and depth.done()):
                if clock.sleeping:
                    clock.advance(60)
                await asyncio.sleep(0.005)
        paths = [url.split("/fapi/v1/")[1].split("?")[0] for _, url in started]
        assert paths == ["depth", "depth", "aggTrades"]
        assert server.counters.rate_limited == 0

    serving(run, body, auto=False, weight_limits={"usdm": 20})


# ---------------------------------------------------------------- TradeBackfill


class Sink:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def __call__(self, batch: list[Any]) -> None:
        self.events.extend(batch)


class Table:
    """Stands in for the DispatchTable: hands out the holes a test sets."""

    def __init__(self) -> None:
        self.holes: list[tuple[str, str, str, int, int]] = []
        self.on_holes: Callable[[], None] | None = None

    def take_holes(self) -> list[tuple[str, str, str, int, int]]:
        out, self.holes = self.holes, []
        return out

    def found(self, *holes: tuple[str, str, str, int, int]) -> None:
        self.holes.extend(holes)
        assert self.on_holes is not None
        self.on_holes()


def ids_of(frames: list[StreamFrame], market: str, stream: str) -> list[int]:
    return [e.trade_id for e in live(frames, market, stream)]


def test_backfill_fills_a_hole_in_pages_between_gap_and_gap_filled(run: Runner) -> None:
    async def body(server: RestServer, clock: FakeTime, frames: list[StreamFrame]) -> None:
        ids = ids_of(frames, "usdm", "btcusdt@aggTrade")
        assert len(ids) > 40
        first, last = ids[5], ids[35]
        sink, table, outcomes = Sink(), Table(), []
        async with client_for(server, clock) as client:
            bf = TradeBackfill(client, sink, venues={"usdm": "binance"}, on_outcome=outcomes.append)
            bf.attach(table)
            table.found(("usdm", "BTCUSDT", "agg_trade", first, last))
            await wait_until(lambda: bool(outcomes), "outcome")
            await bf.stop()
        kinds = [e.kind for e in sink.events]
        assert kinds[0] == "gap" and kinds[-1] == "gap_filled"
        gap, done = sink.events[0], sink.events[-1]
        assert isinstance(gap, Control) and isinstance(done, Control)
        assert (gap.from_seq, gap.to_seq, gap.state, gap.reason) == (
            first,
            last,
            "backfill",
            "agg_trade",
        )
        assert (done.from_seq, done.to_seq, done.state) == (first, last, "filled")
        trades = sink.events[1:-1]
        assert [e.trade_id for e in trades] == list(range(first, last + 1))
        assert all(e.source == "rest" and e.kind == "agg_trade" for e in trades)
        assert outcomes == [
            HoleOutcome(
                "usdm", "BTCUSDT", "agg_trade", first, last, "filled", "", outcomes[0].found_ns
            )
        ]
        stats = bf.stats()
        assert stats["ids_filled"] == last - first + 1 and stats["ids_lost"] == 0
        assert stats["requests"] == 1 and stats["holes"] == 1

    serving(run, body)


def test_backfill_reports_exact_lost_ranges(run: Runner) -> None:
    async def body(server: RestServer, clock: FakeTime, frames: list[StreamFrame]) -> None:
        spot = ids_of(frames, "spot", "btcusdt@trade")
        usdm = ids_of(frames, "usdm", "btcusdt@trade")
        sink, table, outcomes = Sink(), Table(), []
        async with client_for(server, clock) as client:  # no API key
            bf = TradeBackfill(client, sink, venues={}, max_ids=10, on_outcome=outcomes.append)
            bf.attach(table)
            beyond = spot[-1] + 1
            table.found(
                ("spot", "BTCUSDT", "trade", spot[0], spot[0] + 10),  # 11 ids > max_ids
                ("usdm", "BTCUSDT", "trade", usdm[0], usdm[3]),  # futures trades need a key
                ("spot", "BTCUSDT", "trade", spot[2], spot[4]),  # fillable
                ("spot", "BTCUSDT", "trade", beyond, beyond + 2),  # not on the exchange
            )
            await wait_until(lambda: len(outcomes) == 4, "outcomes")
            await bf.stop()
        got = {(o.market, o.first, o.last, o.outcome, o.reason) for o in outcomes}
        assert got == {
            ("spot", spot[0], spot[0] + 10, "lost", "too_large"),
            ("usdm", usdm[0], usdm[3], "lost", "api_key_required"),
            ("spot", spot[2], spot[4], "filled", ""),
            ("spot", beyond, beyond + 2, "lost", "not_served"),
        }
        lost = [e for e in sink.events if e.kind == "gap_filled" and e.state == "lost"]
        assert sorted((e.from_seq, e.to_seq, e.reason) for e in lost) == sorted(
            [
                (spot[0], spot[0] + 10, "trade:too_large"),
                (usdm[0], usdm[3], "trade:api_key_required"),
                (beyond, beyond + 2, "trade:not_served"),
            ]
        )
        stats = bf.stats()
        assert stats["ids_lost"] == 11 + 4 + 3 and stats["ids_filled"] == 3
        assert stats["holes_lost"] == 3 and stats["holes_filled"] == 1

    serving(run, body)


def test_backfill_loses_what_is_left_when_the_hole_grows_too_old(run: Runner) -> None:
    """Budget 20 per window and pages of weight 20: the first page goes out, the second
    waits for the next window; the hole's age passes max_age_s meanwhile, so the rest
    is lost from exactly the first id not delivered."""

    async def body(server: RestServer, clock: FakeTime, frames: list[StreamFrame]) -> None:
        ids = ids_of(frames, "usdm", "btcusdt@aggTrade")
        sink, table, outcomes = Sink(), Table(), []
        async with client_for(server, clock, limits={"usdm": (40, 0.5)}) as client:
            bf = TradeBackfill(
                client,
                sink,
                venues={},
                max_age_s=30,
                page=5,
                on_outcome=outcomes.append,
                clock=clock,
            )
            bf.attach(table)
            first, last = ids[0], ids[19]  # four pages, one per minute window
            assert last == first + 19
            table.found(("usdm", "BTCUSDT", "agg_trade", first, last))
            await wait_until(lambda: len(outcomes) == 2, "outcomes")
            await bf.stop()
        delivered = [e.trade_id for e in sink.events if e.kind == "agg_trade"]
        # pages at 1005 s, 1020.5 s (age 15.5) and 1080.5 s; then the age is 75.5 > 30
        assert delivered == list(range(first, first + 15))
        filled, lost = sorted(outcomes, key=lambda o: o.first)
        assert (filled.outcome, filled.first, filled.last) == ("filled", first, delivered[-1])
        assert (lost.outcome, lost.reason) == ("lost", "too_old")
        assert (lost.first, lost.last) == (delivered[-1] + 1, last)

    serving(run, body, weight_limits={"usdm": 20})


def test_backfill_config_keys_are_checked_at_start() -> None:
    cfg = load_config(None, env={}, overrides=["binance.backfill.max_ids=5"])
    assert cfg.binance.backfill.max_ids == 5
    for bad, key in [
        ("binance.backfill.max_ids=0", "binance.backfill.max_ids"),
        ("binance.backfill.max_age_s=0.5", "binance.backfill.max_age_s"),
        ("binance.backfill.max_holes=0", "binance.backfill.max_holes"),
        ("binance.backfill.enabled=maybe", "binance.backfill.enabled"),
        ("binance.backfill.max_idz=3", "binance.backfill.max_idz"),
    ]:
        with pytest.raises(ConfigError) as info:
            load_config(None, env={}, overrides=[bad])
        assert key in str(info.value)


class TapeSource:
    """A source that is only a tape: spot BTCUSDT trades with the ids given."""

    markets = ("spot",)

    def __init__(self, ids: list[int]) -> None:
        self.tape = TradeTape()
        for tid in ids:
            body = f'{{"e":"trade","s":"BTCUSDT","t":{tid},"p":"1","q":"1","T":1,"m":true}}'
            self.tape.observe(StreamFrame(0, "spot", "btcusdt@trade", body.encode()))

    def symbols(self, market: str) -> list[str]:
        return ["BTCUSDT"]


def test_ids_the_exchange_skips_inside_a_hole_are_lost_exactly(run: Runner) -> None:
    clock = FakeTime()

    async def main() -> None:
        source: Any = TapeSource([1, 2, 3, 6, 7, 9, 10])
        server = RestServer(source, clock=clock)
        await server.start()
        sink, table, outcomes = Sink(), Table(), []
        try:
            async with client_for(server, clock) as client:
                bf = TradeBackfill(client, sink, venues={}, on_outcome=outcomes.append)
                bf.attach(table)
                table.found(("spot", "BTCUSDT", "trade", 2, 10))
                await wait_until(lambda: len(outcomes) == 5, "outcomes")
                await bf.stop()
        finally:
            await server.stop()
        got = sorted((o.first, o.last, o.outcome, o.reason) for o in outcomes)
        assert got == [
            (2, 3, "filled", ""),
            (4, 5, "lost", "not_served"),
            (6, 7, "filled", ""),
            (8, 8, "lost", "not_served"),
            (9, 10, "filled", ""),
        ]
        assert [e.trade_id for e in sink.events if e.kind == "trade"] == [2, 3, 6, 7, 9, 10]
        assert bf.stats()["ids_lost"] == 3 and bf.stats()["holes_lost"] == 1

    run(main)


def test_stop_mid_fill_reports_what_was_delivered_and_loses_the_rest(run: Runner) -> None:
    async def body(server: RestServer, clock: FakeTime, frames: list[StreamFrame]) -> None:
        ids = ids_of(frames, "usdm", "btcusdt@aggTrade")
        first, last = ids[0], ids[0] + 19
        sink, table, outcomes = Sink(), Table(), []
        async with client_for(server, clock, limits={"usdm": (40, 0.5)}) as client:
            bf = TradeBackfill(client, sink, venues={}, page=5, on_outcome=outcomes.append)
            bf.attach(table)
            table.found(("usdm", "BTCUSDT", "agg_trade", first, last))
            # the first page is delivered; the second waits for the next window
            await wait_until(
                lambda: len(sink.events) == 6 and clock.sleeping == 1, "second page held"
            )
            await bf.stop()
        got = sorted((o.first, o.last, o.outcome, o.reason) for o in outcomes)
        assert got == [(first, first + 4, "filled", ""), (first + 5, last, "lost", "stopped")]

    serving(run, body, auto=False, weight_limits={"usdm": 20})


def test_check_config_masks_the_api_key(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from meltica.config import check_config

    path = tmp_path / "c.yaml"
    path.write_text("binance:\n  backfill:\n    api_key: s3cr3t-key\n")
    assert check_config(str(path), env={}) == 0
    out = capsys.readouterr().out
    assert "s3cr3t-key" not in out and "api_key: '***'" in out


def test_pages_wait_while_the_bus_holds_the_readers_paused(run: Runner) -> None:
    async def body(server: RestServer, clock: FakeTime, frames: list[StreamFrame]) -> None:
        ids = ids_of(frames, "spot", "btcusdt@trade")
        sink, table, outcomes = Sink(), Table(), []
        paused = [True]
        async with client_for(server, clock) as client:
            bf = TradeBackfill(
                client,
                sink,
                venues={},
                max_batch=4,
                paused=lambda: paused[0],
                on_outcome=outcomes.append,
            )
            bf.attach(table)
            table.found(("spot", "BTCUSDT", "trade", ids[0], ids[9]))
            await wait_until(lambda: client.stats("spot")["responses"] == 1, "page fetched")
            for _ in range(20):
                await asyncio.sleep(0.005)
            assert [e.kind for e in sink.events] == ["gap"]  # held while paused
            paused[0] = False
            await wait_until(lambda: bool(outcomes), "filled")
            await bf.stop()
        assert [e.trade_id for e in sink.events if e.kind == "trade"] == ids[:10]

    serving(run, body)


def test_the_engine_wires_the_backfill_unless_switched_off() -> None:
    from meltica.engine import Engine

    async def build(*overrides: str) -> Engine:
        return Engine(
            load_config(None, env={}, overrides=["telemetry.metrics_enabled=false", *overrides])
        )

    on = aio.run(lambda: build())
    assert on.backfill is not None and on.table.on_holes is not None
    assert on.rest.api_key is None
    off = aio.run(lambda: build("binance.backfill.enabled=false"))
    assert off.backfill is None and off.table.on_holes is None
    keyed = aio.run(lambda: build("binance.backfill.api_key=k"))
    assert keyed.rest.api_key == "k"

"""Smoke suite: the whole gateway against the fake exchange over loopback.

Fake Binance (WebSocket + REST, synthetic spot and USD-M market) -> Engine
(ConnectionManager, Dispatcher, Conductor, SnapshotStore, Data Bus) -> bus
consumers.  Covers start-up, subscribe and unsubscribe at runtime, scripted
faults (an injected gap on one symbol, a dropped connection), /metrics, the
tail endpoint, and a clean, idempotent shutdown.  No wall-time assertions:
waits are bounded by generous deadlines and only conditions are asserted.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any, TypeVar

import aiohttp
from aio import run
from bus_collector import Collector
from fakeproc import synthetic_engine

from meltica.config import load_config
from meltica.control import ControlRequest
from meltica.engine import Engine
from meltica.replay.exchange import FakeExchange
from meltica.replay.faults import FaultPlan
from meltica.replay.synthetic import SyntheticMarket

T = TypeVar("T")


def make_engine(fake: FakeExchange, source: SyntheticMarket, *extra: str) -> Engine:
    return synthetic_engine(
        fake,
        source,
        "telemetry.metrics_port=0",
        "binance.usdm.streams=[agg_trade, book_ticker, depth]",
        *extra,
    )


def test_gateway_end_to_end_with_faults_and_runtime_control() -> None:
    source = SyntheticMarket(markets=("spot", "usdm"), symbols_per_market=2, seed=7)
    spot_a, spot_b = source.symbols("spot")
    faults = FaultPlan.parse(
        [
            # a gap on one spot symbol: only that book must resync
            f"drop:market=spot,symbol={spot_a},at_frame=400,count=3",
            # the first usdm /public connection is cut; the gateway must reconnect
            "close:market=usdm,connection=0,at_frame=600,code=1011",
        ]
    )

    async def scenario() -> None:
        fake = FakeExchange(source, speed=4.0, faults=faults)
        await fake.start()
        engine = make_engine(fake, source)
        events = Collector(engine, "all")
        try:
            await engine.start()
            await engine.start()  # idempotent
            assert engine.state == "running"

            # every configured symbol flows, and every book goes live
            for market in ("spot", "usdm"):
                for sym in source.symbols(market):
                    await events.wait_for(
                        lambda e, m=market, s=sym: (
                            e.market == m
                            and e.symbol == s
                            and e.kind == "book_snapshot"
                            and e.source == "book"
                        )
                    )

            # the injected gap: gap -> resync_started -> resync_done, on spot_a only
            gap = await events.wait_for(lambda e: e.kind == "gap" and e.market == "spot")
            at = events.events.index(gap)
            await events.wait_for(
                lambda e: (
                    e.kind == "resync_done" and e.symbol == spot_a and events.events.index(e) > at
                )
            )
            # (a dropped connection also means lost frames: the usdm books resync then)
            troubled = {
                (e.market, e.symbol)
                for e in events.events
                if e.kind in ("gap", "resync_started") and e.market == "spot"
            }
            assert troubled == {("spot", spot_a)}, troubled
            assert gap.symbol == spot_a
            assert any(
                e.symbol == spot_b and e.kind == "book_ticker" for e in events.events[at:]
            )  # the other book kept flowing

            # the dropped usdm connection: data flows again afterwards.  Positions are
            # taken by identity from the event found, never from len(): the reconnect
            # (0.05 s) can land before the test polls again.  The reconnect's own
            # "connected" comes first (frames read before the drop may still be in
            # flight after the "disconnected" event, so data alone proves nothing).
            def position(ev: Any) -> int:
                return next(i for i, e in enumerate(events.events) if e is ev)

            dropped = position(
                await events.wait_for(
                    lambda e: (
                        e.kind == "connection_state"
                        and e.market == "usdm"
                        and e.state in ("disconnected", "reconnecting")
                    )
                )
            )
            back = position(
                await events.wait_for(
                    lambda e: (
                        e.kind == "connection_state"
                        and e.market == "usdm"
                        and e.state == "connected"
                        and position(e) > dropped
                    )
                )
            )
            await events.wait_for(
                lambda e: e.market == "usdm" and e.kind == "book_ticker" and position(e) > back
            )
            stats = engine.managers["usdm"].stats()
            assert stats["connects"] >= 3, stats  # /public, /market, and the reconnect

            # SnapshotStore: every live book is stored, version = its update id
            for (market, sym), inst in engine.conductor._instruments.items():
                if inst.state == "live":
                    got = engine.store.get(f"binance:{market}:{sym}:book")
                    assert got is not None, (market, sym, engine.store.stats())
                    assert got[0] <= inst.book.update_id

            # runtime subscribe: a new channel on spot_b; its first event arrives
            reply = await engine.request(
                ControlRequest(
                    "subscribe", market="spot", symbols=(spot_b,), channels=("agg_trade",)
                )
            )
            assert reply.ok, reply
            await events.wait_for(lambda e: e.kind == "agg_trade" and e.symbol == spot_b)
            again = await engine.request(
                ControlRequest(
                    "subscribe", market="spot", symbols=(spot_b,), channels=("agg_trade",)
                )
            )
            assert again.ok  # idempotent

            # runtime unsubscribe: after the reply, no trade of spot_b is delivered
            reply = await engine.request(
                ControlRequest("unsubscribe", market="spot", symbols=(spot_b,), channels=("trade",))
            )
            assert reply.ok, reply
            mark = len(events.events)
            await asyncio.sleep(1.0)
            late = [e for e in events.events[mark:] if e.kind == "trade" and e.symbol == spot_b]
            assert late == []
            assert any(e.symbol == spot_b for e in events.events[mark:])  # the rest flows

            # an unknown symbol is a clear error reply, nothing changes
            bad = await engine.request(
                ControlRequest(
                    "subscribe", market="spot", symbols=("NOPEUSDT",), channels=("trade",)
                )
            )
            assert not bad.ok and "NOPEUSDT" in (bad.error or "")

            # no event reached the consumer twice (by key)
            keys = [e.key for e in events.events if e.kind not in ("connection_state",)]
            dups = sorted({k for k in keys if keys.count(k) > 1})
            assert not dups, dups

            # /metrics and /readyz answer; the tail endpoint streams wire JSON
            assert engine.metrics is not None
            async with aiohttp.ClientSession() as http:
                async with http.get(engine.metrics.url + "/metrics") as resp:
                    body = await resp.text()
                assert resp.status == 200
                assert "meltica_ws_frames_total" in body
                assert "meltica_bus_published" in body
                assert "meltica_pipeline_latency_seconds_bucket" in body
                async with http.get(engine.metrics.url + "/healthz") as resp:
                    assert resp.status == 200
                async with http.get(
                    engine.metrics.url + "/tail", params={"kind": "book_ticker"}
                ) as resp:
                    line = await asyncio.wait_for(resp.content.readline(), 30)
                    wire = json.loads(line)
                    assert wire["kind"] == "book_ticker" and wire["v"] == 1
        finally:
            await engine.stop()
            await engine.stop()  # idempotent
            await events.close()
            await fake.stop()
        assert engine.state == "stopped"
        assert all(m.stats()["connections"] == 0 for m in engine.managers.values())

    run(scenario)


def test_engine_stop_before_start_and_bad_exchange() -> None:
    async def scenario() -> None:
        cfg = load_config(
            None,
            env={},
            overrides=[
                "binance.markets=[spot]",
                "binance.spot.ws_url=ws://127.0.0.1:9",
                "binance.spot.rest_url=http://127.0.0.1:9",
                "binance.rest_retry_deadline_s=0.5",
                "telemetry.metrics_enabled=false",
            ],
        )
        engine = Engine(cfg)
        await engine.stop()  # never started: fine
        try:
            await engine.start()
        except Exception as exc:
            from meltica.engine import StartupError

            assert isinstance(exc, StartupError), exc
            assert "exchangeInfo" in str(exc)
        else:
            raise AssertionError("start against a dead exchange must fail")
        assert engine.state == "stopped"

    run(scenario)


def test_rest_faults_end_with_live_books_and_tail_cli_streams_events() -> None:
    """429 (Retry-After), 418 (ban), 5xx and a stale snapshot on the depth endpoint: every
    book still goes live (stale snapshots are refetched), and `meltica-engine tail` prints
    the running gateway's events."""
    source = SyntheticMarket(markets=("spot", "usdm"), symbols_per_market=2, seed=11)
    spot_a, spot_b = source.symbols("spot")
    usdm_a, usdm_b = source.symbols("usdm")
    faults = FaultPlan.parse(
        [
            f"rest_status:market=spot,symbol={spot_a},code=503,count=2",
            f"rest_status:market=spot,symbol={spot_b},code=429,retry_after=1,count=1",
            f"rest_status:market=usdm,symbol={usdm_a},code=418,retry_after=1,count=1",
            f"rest_stale:market=usdm,symbol={usdm_b},count=1",
        ]
    )

    async def scenario() -> None:
        fake = FakeExchange(source, speed=4.0, faults=faults)
        await fake.start()
        engine = make_engine(fake, source, "binance.rest_retry_deadline_s=30")
        events = Collector(engine, "all")
        try:
            await engine.start()
            for market, sym in (
                ("spot", spot_a),
                ("spot", spot_b),
                ("usdm", usdm_a),
                ("usdm", usdm_b),
            ):
                await events.wait_for(
                    lambda e, m=market, s=sym: (
                        e.market == m
                        and e.symbol == s
                        and e.kind == "book_snapshot"
                        and e.source == "book"
                    ),
                    timeout=90,
                )
            status = engine.conductor.status()["instruments"]
            assert all(i["state"] == "live" for i in status.values()), status
            assert status[f"usdm:{usdm_b}"]["refetches"] >= 1, status[f"usdm:{usdm_b}"]
            spot_rest, usdm_rest = engine.rest.stats("spot"), engine.rest.stats("usdm")
            assert spot_rest["server_errors"] == 2 and spot_rest["rate_limited"] == 1, spot_rest
            assert usdm_rest["banned"] == 1, usdm_rest

            # the tail command against the running gateway's endpoint
            assert engine.metrics is not None
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "meltica",
                "tail",
                "--url",
                engine.metrics.url,
                "--kind",
                "book_ticker",
                "--symbol",
                spot_a,
                "--count",
                "3",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0, err.decode()
            lines = [json.loads(x) for x in out.decode().splitlines()]
            assert len(lines) == 3
            assert all(x["kind"] == "book_ticker" and x["symbol"] == spot_a for x in lines)
        finally:
            await engine.stop()
            await events.close()
            await fake.stop()

    run(scenario)

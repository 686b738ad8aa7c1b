"""The brokers fail: the NATS server and Redis are killed (``kill -9``) and started again
mid-run, and the Control Bus on NATS is abused.

A consumer of the JetStream stream (our own, reading every message) must find every trade
id of the source exactly once and no event key twice; the in-memory consumer meets every
user-level check; Redis ends holding the latest book, equal to the reference; and while a
broker is down ``/readyz`` and the counters say so.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import aiohttp
import nats
import nats.errors
from brokers import NatsServer, RedisServer
from fault_harness import Outcome, Scenario, run_fault, stream_events

from meltica import wire
from meltica.broker import control_subject
from meltica.engine import Engine
from meltica.snapshot.redis_store import redis_client

GATEWAY = "fault-gw"


def _nats(url: str, *extra: str) -> list[str]:
    return ["bus.backend=nats", f"nats.url={url}", f"gateway.id={GATEWAY}", *extra]


def _assert_stream_exact(out: Outcome, streamed: list[dict[str, Any]]) -> None:
    """The stream holds each key once, and every trade id of the source once."""
    keys = Counter(e["key"] for e in streamed)
    assert not [k for k, n in keys.items() if n > 1], "keys twice in the stream"
    for (market, symbol, channel), ids in out.reference.trades.items():
        if channel not in out.scenario.streams.get(market, ()):
            continue
        got = Counter(
            e["trade_id"]
            for e in streamed
            if (e["market"], e["symbol"], e["kind"]) == (market, symbol, channel)
        )
        assert set(got) == set(ids), (channel, sorted(set(ids) ^ set(got))[:10])
    # everything the gateway published reached the stream
    published = {e.key for e in out.events if e.kind != "connection_state"}
    assert published <= set(keys), sorted(published - set(keys))[:10]


def test_nats_killed_and_restarted_loses_and_duplicates_nothing(
    nats_server: NatsServer,
) -> None:
    async def during(engine: Engine, out: Outcome) -> None:
        await asyncio.sleep(1.0)
        nats_server.kill()
        await asyncio.sleep(1.0)  # the outage
        await asyncio.to_thread(nats_server.start)

    out = run_fault(Scenario(during=during, overrides=_nats(nats_server.url)))
    out.assert_user_properties()
    assert out.metric("meltica_nats_disconnects_total") >= 1
    assert out.metric("meltica_nats_republished_total") > 0
    assert out.metric("meltica_nats_dropped_total") == 0
    _assert_stream_exact(out, asyncio.run(stream_events(nats_server.url)))


# past the responder's pending queue (1024 messages, docs/control-plane.md): every request
# of the flood is answered all the same, served, refused as full, or dropped and told so
FLOOD = 1500


def test_control_plane_abuse_over_nats_is_answered_counted_and_harmless(
    nats_server: NatsServer,
) -> None:
    seen: dict[str, Any] = {}

    async def during(engine: Engine, out: Outcome) -> None:
        await asyncio.sleep(0.5)
        nc = await nats.connect(nats_server.url)
        mine, every = control_subject(GATEWAY), control_subject()

        async def ask(subject: str, payload: bytes) -> dict[str, Any]:
            try:
                msg = await nc.request(subject, payload, timeout=10)
            except nats.errors.TimeoutError:
                return {"timeout": True}
            reply: dict[str, Any] = json.loads(msg.data)
            return reply

        try:
            seen["huge"] = await ask(mine, b"{" + b" " * 200_000 + b"}")
            seen["not_json"] = await ask(mine, b"\xff{{")
            seen["unknown_op"] = await ask(mine, json.dumps({"op": "explode"}).encode())
            # a change of one gateway asked of every gateway
            seen["broadcast_subscribe"] = await ask(
                every,
                json.dumps(
                    {
                        "op": "subscribe",
                        "market": "spot",
                        "symbols": ["BTCUSDT"],
                        "channels": ["trade"],
                    }
                ).encode(),
            )
            bodies = [
                {"op": "status"},
                {"op": "list"},
                {
                    "op": "subscribe",
                    "market": "spot",
                    "symbols": ["NOPEUSDT"],
                    "channels": ["trade"],
                },
            ]
            seen["flood"] = await asyncio.gather(
                *(ask(mine, json.dumps(bodies[i % 3]).encode()) for i in range(FLOOD))
            )
            seen["after"] = await ask(mine, json.dumps({"op": "status"}).encode())
        finally:
            await nc.close()

    out = run_fault(Scenario(during=during, overrides=_nats(nats_server.url)))
    for name in ("huge", "not_json", "unknown_op", "broadcast_subscribe"):
        assert seen[name]["ok"] is False and seen[name]["error"], (name, seen[name])
    assert seen["after"]["ok"] is True
    flood = seen["flood"]
    assert len(flood) == FLOOD and not [r for r in flood if "timeout" in r]
    assert sum(r["ok"] for r in flood) > 0
    dropped = sum(not r["ok"] and "was dropped" in r["error"] for r in flood)
    assert dropped > 0, "the flood never filled the queue: the test proves nothing"
    assert out.metric("meltica_control_nats_dropped_total") == dropped
    assert out.metric("meltica_control_nats_oversized_total") == 1
    assert out.metric("meltica_control_nats_not_broadcast_total") == 1
    assert out.metric("meltica_control_nats_replies_total") == FLOOD + 5 - dropped
    assert out.metric("meltica_control_crashes_total") == 0
    assert out.disconnects() == {}
    out.assert_user_properties()
    assert out.metric("meltica_nats_dropped_total") == 0


def test_redis_killed_and_restarted_ends_with_the_latest_book(redis_server: RedisServer) -> None:
    seen: dict[str, Any] = {}

    async def during(engine: Engine, out: Outcome) -> None:
        assert engine.metrics is not None
        await asyncio.sleep(1.0)
        redis_server.kill()
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                async with http.get(f"{engine.metrics.url}/readyz") as resp:
                    seen["readyz"] = (resp.status, await resp.text())
                if seen["readyz"][0] == 503:
                    break
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        await asyncio.to_thread(redis_server.start)

    out = run_fault(
        Scenario(
            during=during,
            overrides=[
                "snapshot.backend=redis",
                f"snapshot.redis_url={redis_server.url}",
                "snapshot.redis_timeout_s=0.3",
            ],
        )
    )
    status, body = seen["readyz"]
    assert status == 503 and f"redis 127.0.0.1:{redis_server.port} unreachable" in body
    out.assert_user_properties()  # ready again at the end, too

    async def stored() -> tuple[Any, bytes]:
        raw = redis_client(redis_server.url, 5.0)
        try:
            data, version = await raw.mget(
                "meltica:binance:spot:BTCUSDT:book", "meltica:binance:spot:BTCUSDT:book:version"
            )
            return data, version
        finally:
            await raw.aclose()

    data, version = asyncio.run(stored())
    ev = wire.decode(data)
    last = [e for e in out.events if e.kind == "book_snapshot" and e.source == "book"][-1]
    assert ev.update_id == last.update_id == int(version)
    ref_bids, ref_asks = out.reference.books[("spot", "BTCUSDT")][ev.update_id]
    assert tuple((p.decimal, q.decimal) for p, q in ev.bids) == ref_bids[: len(ev.bids)]
    assert tuple((p.decimal, q.decimal) for p, q in ev.asks) == ref_asks[: len(ev.asks)]

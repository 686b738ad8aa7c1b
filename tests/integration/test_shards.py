"""The book query and shards, end to end.

Gateways run as `Engine` instances in this process against an in-process
synthetic fake exchange (real WebSocket and REST sockets on loopback); the
NATS tests start their own ``nats-server``; ``ctl`` runs as a real subprocess.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import aiohttp
import pytest
from aio import run
from brokers import NatsServer

from meltica.commands.common import local_overrides
from meltica.commands.ctl import CtlError, _resend_to
from meltica.config import load_config
from meltica.control import ControlRequest
from meltica.engine import Engine
from meltica.replay.exchange import FakeExchange
from meltica.replay.synthetic import SyntheticMarket
from meltica.shard import Shard, shard_of

# depth included: books sync from the fake's REST snapshots and go live
STREAMS = ["trade", "book_ticker", "depth"]


def make_engine(fake: FakeExchange, symbols: list[str], *extra: str, start: bool = True) -> Engine:
    overrides = [
        *local_overrides(
            {"spot": fake.ws_url("spot")},
            fake.rest_url,
            symbols={"spot": symbols},
            streams={"spot": STREAMS},
        ),
        "telemetry.metrics_port=0",
        *extra,
    ]
    return Engine(load_config(None, env={}, overrides=overrides), subscribe_on_start=start)


async def ctl(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "meltica", "ctl", *args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if not k.startswith("MELTICA_")},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def wait_live(engine: Engine, symbol: str, timeout_s: float = 60.0) -> None:
    key = f"spot:{symbol}"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while engine.conductor.status()["instruments"].get(key, {}).get("state") != "live":
        assert loop.time() < deadline, engine.conductor.status()["instruments"]
        await asyncio.sleep(0.05)


def test_book_over_http_and_ctl_over_http() -> None:
    source = SyntheticMarket(markets=("spot",), symbols_per_market=2, seed=5)
    sym, other = source.symbols("spot")

    async def scenario() -> None:
        fake = FakeExchange(source, speed=2.0)
        await fake.start()
        engine = make_engine(fake, [sym])
        try:
            await engine.start()
            await wait_live(engine, sym)
            assert engine.metrics is not None
            url = engine.metrics.url
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{url}/book/spot/{sym}?depth=3") as resp:
                    assert resp.status == 200
                    body = await resp.json()
                assert body["state"] == "live" and body["symbol"] == sym
                assert body["key"] == f"binance:spot:{sym}:book" and body["depth"] == 3
                snap = body["snapshot"]
                assert snap["kind"] == "book_snapshot" and snap["source"] == "book"
                assert snap["symbol"] == sym and body["update_id"] == snap["update_id"]
                assert len(snap["bids"]) == 3 and len(snap["asks"]) == 3
                assert body["age_s"] >= 0
                # the same snapshot as the store holds (a later one when the book moved on)
                entry = engine.store.get(f"binance:spot:{sym}:book")
                assert entry is not None and entry[0] >= body["update_id"]
                stored: Any = entry[1]
                if entry[0] == body["update_id"]:
                    assert snap["bids"] == stored.to_wire()["bids"][:3]
                # without depth: every level the book's fused snapshot holds
                async with http.get(f"{url}/book/spot/{sym.lower()}") as resp:
                    full = await resp.json()
                assert resp.status == 200 and full["depth"] is None
                assert len(full["snapshot"]["bids"]) > 3

                async with http.get(f"{url}/book/spot/{other}") as resp:
                    assert resp.status == 404
                    assert "no book for spot:" + other in (await resp.json())["error"]
                async with http.get(f"{url}/book/usdm/{sym}") as resp:
                    assert resp.status == 404
                    assert "unknown market 'usdm'" in (await resp.json())["error"]
                for bad in ("0", "-2", "x", ""):
                    async with http.get(f"{url}/book/spot/{sym}?depth={bad}") as resp:
                        assert resp.status == 400, bad
                        assert "depth must be an integer >= 1" in (await resp.json())["error"]

            code, out, err = await ctl(
                "book", "--market", "spot", "--symbol", sym, "--depth", "2", "--url", url
            )
            assert code == 0, err
            reply = json.loads(out)
            assert reply["ok"] and reply["result"]["state"] == "live"
            assert len(reply["result"]["snapshot"]["asks"]) == 2
            assert reply["result"]["update_id"] == reply["result"]["snapshot"]["update_id"]
            code, out, err = await ctl("book", "--market", "spot", "--symbol", other, "--url", url)
            assert code == 1 and "no book for spot:" + other in json.loads(out)["error"]
            code, out, err = await ctl("book", "--market", "spot", "--url", url)
            assert code == 2 and "book needs --symbols" in err
        finally:
            await engine.stop()
            await fake.stop()

    run(scenario, timeout=180)


def test_two_shards_on_one_nats_server(tmp_path: Any) -> None:
    """east is shard 0/2, west 1/2, both configured with every symbol."""
    source = SyntheticMarket(markets=("spot",), symbols_per_market=6, seed=3)
    symbols = source.symbols("spot")
    mine = {i: [s for s in symbols if shard_of("spot", s, 2) == i] for i in (0, 1)}
    assert mine[0] and mine[1], mine  # the test needs a symbol on each shard
    east_sym, west_sym = mine[0][0], mine[1][0]
    server = NatsServer(tmp_path)
    server.start()

    async def scenario() -> None:
        fake = FakeExchange(source, speed=2.0)
        await fake.start()
        nats_set = ["bus.backend=nats", f"nats.url={server.url}"]
        engines: list[Engine] = []
        try:
            east = make_engine(fake, symbols, *nats_set, "gateway.id=east", "gateway.shard=0/2")
            west = make_engine(fake, symbols, *nats_set, "gateway.id=west", "gateway.shard=1/2")
            engines += [east, west]
            await east.start()
            await west.start()
            # each subscribed its shard's configured symbols only
            assert {s for _, s in east.dispatcher.subscriptions()} == set(mine[0])
            assert {s for _, s in west.dispatcher.subscriptions()} == set(mine[1])

            code, out, err = await ctl("status", "--nats", server.url, "--wait", "1")
            assert code == 0, err
            replies = json.loads(out)
            assert [r["result"]["gateway"] for r in replies] == ["east", "west"]
            assert [r["result"]["shard"] for r in replies] == ["0/2", "1/2"]
            assert [r["result"]["symbols"] for r in replies] == [
                {"spot": sorted(mine[0])},
                {"spot": sorted(mine[1])},
            ]
            for r in replies:
                assert set(r["result"]["health"]) == {"ready", "not_ready"}

            # asked directly, east names the owner of west's symbol
            reply = await east.request(
                ControlRequest(
                    "unsubscribe", market="spot", symbols=(west_sym,), channels=("trade",)
                )
            )
            assert not reply.ok and reply.result["owner_shard"] == "1/2"
            assert reply.result["gateway"] == "east" and reply.result["shard"] == "0/2"

            # ctl sent to east routes to west
            await wait_live(west, west_sym)
            code, out, err = await ctl(
                "book", "--market", "spot", "--symbol", west_sym,
                "--nats", server.url, "--gateway", "east",
            )  # fmt: skip
            assert code == 0, err
            assert "routed to gateway west (shard 1/2)" in err
            book = json.loads(out)["result"]
            assert book["gateway"] == "west" and book["symbol"] == west_sym
            assert book["state"] == "live" and book["snapshot"]["bids"]

            unsub = ["--market", "spot", "--symbols", west_sym, "--channels", "trade"]
            code, out, err = await ctl(
                "unsubscribe", *unsub, "--nats", server.url, "--gateway", "east"
            )
            assert code == 0, err
            assert json.loads(out)["result"]["gateway"] == "west"
            assert west.dispatcher.subscriptions()[("spot", west_sym)] == {"book_ticker", "depth"}
            # without --gateway ctl picks the owner from the shards status reports
            code, out, err = await ctl("subscribe", *unsub, "--nats", server.url)
            assert code == 0, err
            assert json.loads(out)["result"]["gateway"] == "west"
            assert west.dispatcher.subscriptions()[("spot", west_sym)] == set(STREAMS)
            code, out, err = await ctl(
                "resync", "--market", "spot", "--symbols", east_sym, "--nats", server.url
            )
            assert code == 0, err
            assert json.loads(out)["result"]["gateway"] == "east"
            # symbols of both shards in one request: ctl says to split it
            both = ",".join((east_sym, west_sym))
            code, out, err = await ctl(
                "resync", "--market", "spot", "--symbols", both, "--nats", server.url
            )
            assert code == 2 and "span shards 0/2, 1/2" in err
            assert all(("spot", s) not in east.dispatcher.subscriptions() for s in mine[1]) and all(
                ("spot", s) not in west.dispatcher.subscriptions() for s in mine[0]
            )
        finally:
            for engine in engines:
                await engine.stop()
            await fake.stop()

    try:
        run(scenario, timeout=240)
    finally:
        server.stop()


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_ctl_over_http_routes_to_the_owning_shard() -> None:
    """Two gateways (memory bus), east on shard 0/2 and west on 1/2, each with its
    own HTTP server; ctl is given both URLs and finds the owner from status."""
    source = SyntheticMarket(markets=("spot",), symbols_per_market=6, seed=3)
    symbols = source.symbols("spot")
    mine = {i: [s for s in symbols if shard_of("spot", s, 2) == i] for i in (0, 1)}
    assert mine[0] and mine[1], mine
    east_sym, west_sym = mine[0][0], mine[1][0]

    async def scenario() -> None:
        fake = FakeExchange(source, speed=2.0)
        await fake.start()
        engines: list[Engine] = []
        try:
            east = make_engine(fake, symbols, "gateway.id=east", "gateway.shard=0/2")
            west = make_engine(fake, symbols, "gateway.id=west", "gateway.shard=1/2")
            engines += [east, west]
            await east.start()
            await west.start()
            assert east.metrics is not None and west.metrics is not None
            e_url, w_url = east.metrics.url, west.metrics.url
            both = ["--url", w_url, "--url", e_url]

            # status asks every URL: a list sorted by gateway
            code, out, err = await ctl("status", *both)
            assert code == 0, err
            replies = json.loads(out)
            assert [r["result"]["gateway"] for r in replies] == ["east", "west"]
            assert [r["result"]["shard"] for r in replies] == ["0/2", "1/2"]

            # a book of west's shard, east's URL first: ctl goes to west straight away
            await wait_live(west, west_sym)
            code, out, err = await ctl(
                "book", "--market", "spot", "--symbol", west_sym, "--url", e_url, "--url", w_url
            )
            assert code == 0, err
            assert "routed" not in err
            book = json.loads(out)["result"]
            assert book["gateway"] == "west" and book["symbol"] == west_sym
            assert book["state"] == "live" and book["snapshot"]["bids"]

            # changes go to the owner too, whichever order the URLs come in
            unsub = ["--market", "spot", "--symbols", west_sym, "--channels", "trade"]
            code, out, err = await ctl("unsubscribe", *unsub, "--url", e_url, "--url", w_url)
            assert code == 0, err
            assert json.loads(out)["result"]["gateway"] == "west"
            assert west.dispatcher.subscriptions()[("spot", west_sym)] == {"book_ticker", "depth"}
            code, out, err = await ctl("subscribe", *unsub, *both)
            assert code == 0, err
            assert west.dispatcher.subscriptions()[("spot", west_sym)] == set(STREAMS)
            code, out, err = await ctl("resync", "--market", "spot", "--symbols", east_sym, *both)
            assert code == 0, err
            assert json.loads(out)["result"]["gateway"] == "east"
            # symbols of both shards in one request: ctl says to split it
            code, out, err = await ctl(
                "resync", "--market", "spot", "--symbols", f"{east_sym},{west_sym}", *both
            )
            assert code == 2 and out == "" and "span shards 0/2, 1/2" in _one_error_line(err)

            # only east's URL: east refuses west's symbol, and no URL given owns it
            code, out, err = await ctl("resync", "--market", "spot", "--symbols", west_sym,
                                       "--url", e_url)  # fmt: skip
            assert code == 2 and out == ""
            line = _one_error_line(err)
            assert "no --url given is a gateway of shard 1/2" in line and e_url in line
            # east's URL and one where nothing listens: the owner is not among them
            nowhere = w_url.rsplit(":", 1)[0] + ":1"
            code, out, err = await ctl(
                "resync", "--market", "spot", "--symbols", west_sym, "--url", e_url,
                "--url", nowhere, "--timeout", "5",
            )  # fmt: skip
            assert code == 2 and out == ""
            line = _one_error_line(err)
            assert "no --url is a gateway of shard 1/2" in line
            assert f"{nowhere} (unreachable)" in line and "gateway east, shard 0/2" in line
            # nothing was changed on either gateway by the refused requests
            assert all(("spot", s) not in east.dispatcher.subscriptions() for s in mine[1])
            assert west.dispatcher.subscriptions()[("spot", west_sym)] == set(STREAMS)
        finally:
            for engine in engines:
                await engine.stop()
            await fake.stop()

    run(scenario, timeout=240)


# What the union test compares: the keys (docs/wire-format.md) of the exchange events,
# which are functions of exchange fields only (trade id, update ids).  Fused book
# snapshots are left out (their update ids depend on when each gateway's REST
# snapshot synced its book), and so are control events (local sequence numbers).
EXCHANGE_KINDS = ("trade", "book_ticker", "book_delta")


def test_disjoint_shards_union_equals_one_gateway() -> None:
    source = SyntheticMarket(markets=("spot",), symbols_per_market=5, seed=21, duration_s=20)
    symbols = source.symbols("spot")
    # the frames the fake will send (the source is a function of its arguments)
    expected_trades = sum(
        1
        for f in SyntheticMarket(
            markets=("spot",), symbols_per_market=5, seed=21, duration_s=20
        ).frames()
        if f.stream.endswith("@trade")
    )
    assert expected_trades > 0

    async def scenario() -> dict[str, set[str]]:
        fake = FakeExchange(source, speed=None, start="manual")
        await fake.start()
        engines: dict[str, Engine] = {}
        keys: dict[str, set[str]] = {}
        try:
            for name, shard in (("solo", "0/1"), ("a", "0/2"), ("b", "1/2")):
                engines[name] = make_engine(
                    fake,
                    symbols,
                    f"gateway.id={name}",
                    f"gateway.shard={shard}",
                    "telemetry.metrics_enabled=false",
                    "bus.capacity=16384",
                )
            consumers = {
                n: e.bus.subscribe("keys", kinds=EXCHANGE_KINDS, policy="block")
                for n, e in engines.items()
            }
            for e in engines.values():
                await e.start()
            fake.begin()

            async def drain(name: str) -> None:
                seen = keys.setdefault(name, set())
                while True:
                    try:
                        batch = await asyncio.wait_for(consumers[name].next_batch(), 5.0)
                    except TimeoutError:
                        if fake.finished.is_set():
                            return
                        continue
                    seen.update(ev.key for ev in batch)

            await asyncio.gather(*(drain(n) for n in engines))
            for n, c in consumers.items():
                assert c.dropped == 0, n
        finally:
            for e in engines.values():
                await e.stop()
            await fake.stop()
        return keys

    keys = run(scenario, timeout=280)
    solo, a, b = keys["solo"], keys["a"], keys["b"]
    assert sum(1 for k in solo if ":trade:" in k) == expected_trades
    for kind in EXCHANGE_KINDS:
        assert any(f":{kind}:" in k for k in solo), kind
    assert a and b and not a & b
    assert a | b == solo
    # each shard's keys are of its own symbols only
    for keyset, index in ((a, 0), (b, 1)):
        assert {k.split(":")[2] for k in keyset} == {
            s for s in symbols if Shard(index, 2).owns("spot", s)
        }


def test_ctl_http_resends_a_refusal_to_the_url_of_the_owner_shard() -> None:
    """The fallback behind the status-based choice (a gateway whose shard changed
    since its status was read): the refusal's owner_shard picks the URL to resend to."""

    def status(gateway: str, shard: str) -> dict[str, Any]:
        return {"ok": True, "error": None, "result": {"gateway": gateway, "shard": shard}}

    refused = {
        "ok": False,
        "error": "not this gateway's shard (0/2): spot:X -> shard 1/2",
        "result": {"shard": "0/2", "owner_shard": "1/2", "gateway": "east"},
    }
    found: dict[str, Any] = {
        "http://a": status("east", "0/2"),
        "http://b": "cannot reach http://b/control: refused",
        "http://c": status("west", "1/2"),
    }
    urls = list(found)
    assert _resend_to(refused, "http://a", found, urls) == "http://c"
    assert _resend_to(status("east", "0/2"), "http://a", found, urls) is None  # ok: stands
    plain = {"ok": False, "error": "unknown symbol", "result": {"gateway": "east"}}
    assert _resend_to(plain, "http://a", found, urls) is None  # not a shard refusal
    del found["http://c"]
    with pytest.raises(CtlError, match="no --url given is a gateway of shard 1/2") as err:
        _resend_to(refused, "http://a", found, urls[:2])
    assert "http://b (unreachable)" in str(err.value)

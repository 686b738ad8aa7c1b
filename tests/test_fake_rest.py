"""The fake exchange's REST server over real loopback sockets: weights and headers per
docs/rest.md, limit validation, the 429 -> 418 ban cycle under an injected clock, every
REST fault kind exactly as scripted, and the server's lifecycle.  Each test runs on stdlib
asyncio and on uvloop, fails if the loop's exception handler fires, and has a small timeout."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aio
import aiohttp
import pytest

from meltica.replay.faults import Fault, FaultPlan
from meltica.replay.rest import STALE_ID_OFFSET, RestServer, depth_weight
from meltica.replay.source import StreamFrame

pytestmark = pytest.mark.timeout(30)

TEST_TIMEOUT_S = 8.0
WEIGHT = "X-MBX-USED-WEIGHT-1M"
SPOT_SNAPSHOT = (
    b'{"lastUpdateId":50093239218,"bids":[["61837.63000000","3.78826000"]],'
    b'"asks":[["61837.64000000","1.54698000"]]}'
)
USDM_SNAPSHOT = (
    b'{"lastUpdateId":4984034747463,"E":1721347201585,"T":1721347201533,'
    b'"bids":[["64020.30","1.000"]],"asks":[["64020.40","2.000"]]}'
)
TOO_MUCH = (
    "Too much request weight used; current limit is {} request weight per 1 MINUTE. "
    "Please use WebSocket Streams for live updates to avoid polling the API."
)


class FakeSource:
    """A MarketSource of fixed snapshot bodies; records every depth_snapshot call."""

    markets: tuple[str, ...] = ("spot", "usdm")

    def __init__(self) -> None:
        self.snapshots = {
            ("spot", "BTCUSDT"): SPOT_SNAPSHOT,
            ("spot", "ETHUSDT"): SPOT_SNAPSHOT.replace(b"50093239218", b"7000000000"),
            ("usdm", "BTCUSDT"): USDM_SNAPSHOT,
        }
        self.calls: list[tuple[str, str, int]] = []

    def symbols(self, market: str) -> list[str]:
        return sorted(s for m, s in self.snapshots if m == market)

    def streams(self, market: str) -> set[str]:
        return set()

    def exchange_info(self, market: str) -> dict[str, Any]:
        return {
            "timezone": "UTC",
            "serverTime": 1723161255000,
            "symbols": [{"symbol": s, "status": "TRADING"} for s in self.symbols(market)],
        }

    def frames(self) -> Iterator[StreamFrame]:
        return iter(())

    def depth_snapshot(self, market: str, symbol: str, limit: int) -> bytes | None:
        self.calls.append((market, symbol, limit))
        return self.snapshots.get((market, symbol))


class FakeClock:
    """An injectable monotonic clock; 1005 s is 5 s into a minute window ending at 1020."""

    def __init__(self, now: float = 1005.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


Runner = Callable[[Callable[[], Awaitable[None]]], None]


@pytest.fixture(params=aio.LOOPS)
def run(request: pytest.FixtureRequest) -> Runner:
    """Run one async test body on a fresh loop; fail if the loop's exception handler fired."""
    return functools.partial(aio.run, timeout=TEST_TIMEOUT_S, loop=request.param)


class Reply:
    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def weight(self) -> int:
        return int(self.headers[WEIGHT])


async def get(
    session: aiohttp.ClientSession, server: RestServer, path: str, **params: Any
) -> Reply:
    async with session.get(server.url + path, params=params) as resp:
        return Reply(resp.status, resp.headers, await resp.read())


def serve(
    run: Runner,
    body: Callable[[RestServer, aiohttp.ClientSession], Awaitable[None]],
    **options: Any,
) -> FakeSource:
    """Start a RestServer on FakeSource, run ``body`` with a client session, stop it."""
    source = FakeSource()
    options.setdefault("clock", FakeClock())

    async def main() -> None:
        server = RestServer(source, **options)
        await server.start()
        try:
            async with aiohttp.ClientSession() as session:
                await body(server, session)
        finally:
            await server.stop()

    run(main)
    return source


# ---------------------------------------------------------------- depth, weights, headers


def test_spot_depth_weights_and_headers(run: Runner) -> None:
    cases = [  # (limit param, weight), docs/rest.md
        (None, 5),
        (1, 5),
        (100, 5),
        (101, 25),
        (500, 25),
        (501, 50),
        (1000, 50),
        (1001, 250),
        (5000, 250),
    ]

    async def body(server: RestServer, session: aiohttp.ClientSession) -> None:
        used = 0
        for limit, weight in cases:
            params = (
                {"symbol": "BTCUSDT"} if limit is None else {"symbol": "BTCUSDT", "limit": limit}
            )
            reply = await get(session, server, "/api/v3/depth", **params)
            used += weight
            assert reply.status == 200
            assert reply.body == SPOT_SNAPSHOT  # the source's bytes, untouched
            assert reply.headers["Content-Type"].startswith("application/json")
            assert reply.weight == used
        assert server.used_weight("spot") == used
        assert server.counters.weight["spot"] == used
        assert server.counters.requests["/api/v3/depth"] == len(cases)
        assert server.used_weight("usdm") == 0

    source = serve(run, body)
    assert [c[2] for c in source.calls] == [100, 1, 100, 101, 500, 501, 1000, 1001, 5000]


def test_usdm_depth_weights_and_headers(run: Runner) -> None:
    cases = [(5, 2), (10, 2), (20, 2), (50, 2), (100, 5), (None, 10), (500, 10), (1000, 20)]

    async def body(server: RestServer, session: aiohttp.ClientSession) -> None:
        used = 0
        for limit, weight in cases:
            params = (
                {"symbol": "BTCUSDT"} if limit is None else {"symbol": "BTCUSDT", "limit": limit}
            )
            reply = await get(session, server, "/fapi/v1/depth", **params)
            used += weight
            assert (reply.status, reply.body, reply.weight) == (200, USDM_SNAPSHOT, used)
        # spot's bucket is separate
        assert (await get(session, server, "/api/v3/ping")).weight == 1

    source = serve(run, body)
    assert [c[2] for c in source.calls] == [5, 10, 20, 50, 100, 500, 500, 1000]


def test_depth_weight_table() -> None:
    assert [depth_weight("spot", n) for n in (1, 100, 101, 500, 501, 1000, 1001, 5000)] == [
        5,
        5,
        25,
        25,
        50,
        50,
        250,
        250,
    ]
    assert [depth_weight("coinm", n) for n in (5, 10, 20, 50, 100, 500, 1000)] == [
        2,
        2,
        2,
        2,
        5,
        10,
        20,
    ]


def test_limit_clamping_and_validation(run: Runner) -> None:
    async def body(server: RestServer, session: aiohttp.ClientSession) -> None:
        reply = await get(session, server, "/api/v3/depth", symbol="BTCUSDT", limit=10000)
        assert (reply.status, reply.weight) == (200, 250)  # clamped to 5000
        used = 250
        for bad in ("0", "-5", "abc", "1.5"):
            reply = await get(session, server, "/api/v3/depth", symbol="BTCUSDT", limit=bad)
            used += 5  # charged the default limit's weight
            assert (reply.status, reply.json["code"], reply.weight) == (400, -1100, used)
            assert "limit" in reply.json["msg"]
        fused = 0
        for bad in ("7", "200", "5000", "0", "x"):
            reply = await get(session, server, "/fapi/v1/depth", symbol="BTCUSDT", limit=bad)
            fused += 10
            assert (reply.status, reply.json["code"], reply.weight) == (400, -1100, fused)

    source = serve(run, body)
    assert source.calls == [("spot", "BTCUSDT", 5000)]


def test_symbol_errors(run: Runner) -> None:
    async def body(server: RestServer, session: aiohttp.ClientSession) -> None:
        for path in ("/api/v3/depth", "/fapi/v1/depth", "/dapi/v1/depth"):
            reply = await get(session, server, path)
            assert reply.status == 400
            assert reply.json["code"] == -1102
            assert "'symbol'" in reply.json["msg"]
            assert WEIGHT in reply.headers
            assert (await get(session, server, path, symbol="")).json["code"] == -1102
            reply = await get(session, server, path, symbol="NOPEUSDT")
            assert (reply.status, reply.json) == (400, {"code": -1121, "msg": "Invalid symbol."})
            reply = await get(session, server, path, symbol="btcusdt")
            assert (reply.status, reply.json["code"]) == (400, -1100)
            # a symbol the adapter may ask for is legal here too: unknown, not illegal
            reply = await get(session, server, path, symbol="币安人生USDT")
            assert (reply.status, reply.json["code"]) == (400, -1121)
            reply = await get(session, server, path, symbol="币安人生usdt")
            assert (reply.status, reply.json["code"]) == (400, -1100)
        # coinm is not served by this source: every symbol is unknown there
        reply = await get(session, server, "/dapi/v1/depth", symbol="BTCUSD_PERP")
        assert (reply.status, reply.json["code"]) == (400, -1121)
        assert reply.weight == 6 * 10 + 10

    source = serve(run, body)
    assert source.calls == [
        ("spot", "NOPEUSDT", 100),
        ("spot", "币安人生USDT", 100),
        ("usdm", "NOPEUSDT", 500),
        ("usdm", "币安人生USDT", 500),
    ]


def test_exchange_info_ping_time(run: Runner) -> None:
    async def body(server: RestServer, session: aiohttp.ClientSession) -> None:
        reply = await get(session, server, "/api/v3/exchangeInfo")
        assert (reply.status, reply.weight) == (200, 20)
        assert reply.json == FakeSource().exchange_info("spot")
        reply = await get(session, server, "/api/v3/exchangeInfo", symbol="ETHUSDT")
        assert [s["symbol"] for s in reply.json["symbols"]] == ["ETHUSDT"]
        assert reply.weight == 40
        reply = await get(session, server, "/api/v3/exchangeInfo", symbol="NOPE")
        assert (reply.status, reply.json["code"], reply.weight) == (400, -1121, 60)
        reply = await get(session, server, "/fapi/v1/exchangeInfo")
        assert (reply.status, reply.weight) == (200, 1)
        assert [s["symbol"] for s in reply.json["symbols"]] == ["BTCUSDT"]
        reply = await get(session, server, "/dapi/v1/exchangeInfo")
        assert (reply.status, reply.json["symbols"], reply.weight) == (200, [], 1)

        reply = await get(session, server, "/api/v3/ping")
        assert (reply.status, reply.json, reply.weight) == (200, {}, 61)
        reply = await get(session, server, "/fapi/v1/ping")
        assert (reply.status, reply.json, reply.weight) == (200, {}, 2)
        for path, used in (("/api/v3/time", 62), ("/fapi/v1/time", 3)):
            reply = await get(session, server, path)
            assert reply.status == 200
            assert abs(reply.json["serverTime"] - time.time() * 1000) < 5000
            assert reply.weight == used

        async with session.get(server.url + "/api/v3/nothing") as resp:
            assert resp.status == 404

    serve(run, body)


# ---------------------------------------------------------------- weight window, 429, 418


def test_weight_window_429_then_recovery(run: Runner) -> None:
    clock = FakeClock(1005.0)

    async def body(server: RestServer, session: aiohttp.ClientSession) -> None:
        for i in range(4):
            reply = await get(session, server, "/api/v3/depth", symbol="BTCUSDT")
            assert (reply.status, reply.weight) == (200, 5 * (i + 1))
        reply = await get(session, server, "/api/v3/depth", symbol="BTCUSDT")
        assert reply.status == 429
        assert reply.headers["Retry-After"] == "15"  # the minute window ends at 1020
        assert reply.json == {"code": -1003, "msg": TOO_MUCH.format(20)}
        assert reply.weight == 20  # a refused request is not charged
        # usdm has its own bucket and limit
        reply = await get(session, server, "/fapi/v1/depth", symbol="BTCUSDT")
        assert (reply.status, reply.weight) == (200, 10)
        # the client waits as told: a new window, no ban
        clock.now = 1020.0
        reply = await get(session, server, "/api/v3/depth", symbol="BTCUSDT")
        assert (reply.status, reply.weight) == (200, 5)
        assert server.counters.rate_limited == 1
        assert server.counters.banned == 0

    serve(run, body, clock=clock, weight_limits={"spot": 20})


def test_request_heavier_than_what_is_left(run: Runner) -> None:
    clock = FakeClock(1005.0)

    async def body(server: RestServer, session: aiohttp.ClientSession) -> None:
        assert (await get(session, server, "/api/v3/depth", symbol="BTCUSDT")).weight == 5
        reply = await get(session, server, "/api/v3/depth", symbol="BTCUSDT", limit=1000)
        assert (reply.status, reply.weight) == (429, 5)  # 5 + 50 > 30
        assert reply.json["msg"] == TOO_MUCH.format(30)

    serve(run, body, clock=clock, weight_limits={"spot": 30})


def test_ignoring_429_gets_418_ban_then_recovery(run: Runner) -> None:
    clock = FakeClock(1005.0)

    async def body(server: RestServer, session: aiohttp.ClientSession) -> None:
        for _ in range(2):
            assert (await get(session, server, "/api/v3/depth", symbol="BTCUSDT")).status == 200
        first = await get(session, server, "/api/v3/depth", symbol="BTCUSDT")
        assert (first.status, first.headers["Retry-After"]) == (429, "15")
        # three more during the back-off are still 429 (Retry-After counts down) ...
        for retry_after in ("14", "13", "12"):
            clock.now += 1.0
            reply = await get(session, server, "/api/v3/ping")
            assert (reply.status, reply.headers["Retry-After"]) == (429, retry_after)
            assert reply.json["code"] == -1003
        # ... the fourth earns the ban
        clock.now += 1.0  # 1009
        t_wall = time.time()
        reply = await get(session, server, "/api/v3/ping")
        assert (reply.status, reply.headers["Retry-After"]) == (418, "120")
        assert reply.json["code"] == -1003
        msg = reply.json["msg"]
        prefix = "Way too much request weight used; IP banned until "
        assert msg.startswith(prefix)
        until_ms = int(msg[len(prefix) :].split(".", 1)[0])
        assert abs(until_ms - (t_wall + 120) * 1000) < 5000
        assert reply.weight == 10
        # banned past the window's end, on every route of the market
        for now, retry_after in ((1021.0, "108"), (1128.5, "1")):
            clock.now = now
            for path in ("/api/v3/depth", "/api/v3/exchangeInfo", "/api/v3/time"):
                reply = await get(session, server, path, symbol="BTCUSDT")
                assert (reply.status, reply.headers["Retry-After"]) == (418, retry_after)
                assert reply.weight == 0  # a new window, nothing charged
        # the futures bucket is not banned
        assert (await get(session, server, "/fapi/v1/ping")).status == 200
        # the ban ends at 1009 + 120
        clock.now = 1129.0
        reply = await get(session, server, "/api/v3/depth", symbol="BTCUSDT")
        assert (reply.status, reply.weight) == (200, 5)
        assert "Retry-After" not in reply.headers
        c = server.counters
        assert (c.rate_limited, c.banned, c.bans) == (4, 7, 1)
        assert (c.responses[429], c.responses[418]) == (4, 7)

    serve(run, body, clock=clock, weight_limits={"spot": 10})


def test_ban_after_zero_ignored_429s(run: Runner) -> None:
    clock = FakeClock(1005.0)

    async def body(server: RestServer, session: aiohttp.ClientSession) -> None:
        assert (await get(session, server, "/fapi/v1/ping")).status == 200
        assert (await get(session, server, "/fapi/v1/ping")).status == 429
        reply = await get(session, server, "/fapi/v1/ping")
        assert (reply.status, reply.headers["Retry-After"]) == (418, "5")
        # the ban is over but the minute's weight is still spent: back to 429, not 418
        clock.now = 1010.0
        assert (await get(session, server, "/fapi/v1/ping")).status == 429
        clock.now = 1020.0
        assert (await get(session, server, "/fapi/v1/ping")).status == 200

    serve(run, body, clock=clock, weight_limits={"usdm": 1}, ban_after_429=0, ban_s=5.0)


# ---------------------------------------------------------------- faults


def plan(*texts: str) -> FaultPlan:
    return FaultPlan.parse(texts)


def test_fault_rest_status_matches_market_symbol_and_count(run: Runner) -> None:
    async def body(server: RestServer, session: aiohttp.ClientSession) -> None:
        other_symbol = await get(session, server, "/api/v3/depth", symbol="ETHUSDT")
        other_market = await get(session, server, "/fapi/v1/depth", symbol="BTCUSDT")
        no_symbol = await get(session, server, "/api/v3/ping")
        assert (other_symbol.status, other_market.status, no_symbol.status) == (200, 200, 200)
        for _ in range(2):
            reply = await get(session, server, "/api/v3/depth", symbol="BTCUSDT")
            assert (reply.status, reply.headers["Retry-After"]) == (429, "2")
            assert reply.json == {"code": -1003, "msg": TOO_MUCH.format(6000)}
            assert WEIGHT in reply.headers
        reply = await get(session, server, "/api/v3/depth", symbol="BTCUSDT")
        assert (reply.status, reply.body) == (200, SPOT_SNAPSHOT)
        # scripted 429s are not the limiter's: no back-off, no ban
        assert server.counters.rate_limited == 0
        assert server.counters.faults["rest_status"] == 2
        assert server.counters.responses[429] == 2

    serve(
        run,
        body,
        faults=plan("rest_status:market=spot,symbol=BTCUSDT,code=429,retry_after=2,count=2"),
    )


def test_fault_rest_status_codes_and_bodies(run: Runner) -> None:
    async def body(server: RestServer, session: aiohttp.ClientSession) -> None:
        reply = await get(session, server, "/fapi/v1/exchangeInfo")
        assert (reply.status, reply.json["code"]) == (503, -1008)
        assert "Retry-After" not in reply.headers
        reply = await get(session, server, "/fapi/v1/depth", symbol="BTCUSDT")
        assert (reply.status, reply.json["code"]) == (408, -1007)
        reply = await get(session, server, "/fapi/v1/depth", symbol="BTCUSDT")
        assert (reply.status, reply.headers["Retry-After"]) == (418, "30")
        assert reply.json["msg"].startswith("Way too much request weight used; IP banned until ")
        reply = await get(session, server, "/fapi/v1/depth", symbol="BTCUSDT")
        assert (reply.status, reply.json) == (
            500,
            {
                "code": -1000,
                "msg": "An unknown error occurred while processing the request.",
            },
        )
        assert (await get(session, server, "/fapi/v1/depth", symbol="BTCUSDT")).status == 200
        assert server.counters.faults["rest_status"] == 4

    faults = plan(
        "rest_status:code=503",
        "rest_status:code=408",
        "rest_status:code=418,retry_after=30",
        "rest_status",  # no code: 500
    )
    serve(run, body, faults=faults)


def test_fault_at_s_waits_for_the_clock(run: Runner) -> None:
    clock = FakeClock(1005.0)

    async def body(server: RestServer, session: aiohttp.ClientSession) -> None:
        clock.now = 1014.9
        assert (await get(session, server, "/api/v3/ping")).status == 200
        clock.now = 1015.0  # 10 s after start()
        assert (await get(session, server, "/api/v3/ping")).status == 500
        assert (await get(session, server, "/api/v3/ping")).status == 200

    serve(run, body, clock=clock, faults=plan("rest_status:code=500,at_s=10"))


def test_fault_rest_timeout_client_times_out_then_normal(run: Runner) -> None:
    async def body(server: RestServer, session: aiohttp.ClientSession) -> None:
        short = aiohttp.ClientTimeout(total=0.2)
        t0 = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            async with session.get(
                server.url + "/api/v3/depth", params={"symbol": "BTCUSDT"}, timeout=short
            ) as resp:
                await resp.read()
        assert time.monotonic() - t0 < 0.45  # the client gave up, the server did not answer
        t0 = time.monotonic()
        reply = await get(session, server, "/api/v3/depth", symbol="BTCUSDT")
        assert (reply.status, reply.body) == (200, SPOT_SNAPSHOT)
        assert time.monotonic() - t0 < 0.3
        assert server.counters.faults["rest_timeout"] == 1

    serve(run, body, faults=plan("rest_timeout:delay_s=0.5"))


def test_fault_rest_timeout_closes_without_response(run: Runner) -> None:
    async def body(server: RestServer, session: aiohttp.ClientSession) -> None:
        # aiohttp's client retries an idempotent request once when the server disconnects
        # (RFC 9112 §9.3.1), so two scripted drops are needed for the caller to see one.
        t0 = time.monotonic()
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await get(session, server, "/api/v3/depth", symbol="BTCUSDT")
        assert time.monotonic() - t0 >= 0.4
        assert server.counters.faults["rest_timeout"] == 2
        assert server.counters.responses.total() == 0
        assert (await get(session, server, "/api/v3/depth", symbol="BTCUSDT")).status == 200

    serve(run, body, faults=plan("rest_timeout:delay_s=0.2,count=2"))


def test_fault_rest_timeout_without_delay_is_released_by_stop(run: Runner) -> None:
    async def main() -> None:
        server = RestServer(FakeSource(), faults=plan("rest_timeout"))
        await server.start()
        async with aiohttp.ClientSession() as session:
            pending = asyncio.ensure_future(get(session, server, "/api/v3/ping"))
            while server.counters.faults["rest_timeout"] == 0:
                await asyncio.sleep(0.01)
            t0 = time.monotonic()
            await server.stop()
            assert time.monotonic() - t0 < 0.5
            # disconnected; aiohttp's one retry then finds the port closed
            with pytest.raises(aiohttp.ClientConnectionError):
                await pending

    run(main)


def test_fault_rest_slow(run: Runner) -> None:
    async def body(server: RestServer, session: aiohttp.ClientSession) -> None:
        t0 = time.monotonic()
        reply = await get(session, server, "/fapi/v1/depth", symbol="BTCUSDT")
        assert time.monotonic() - t0 >= 0.3
        assert (reply.status, reply.body, reply.weight) == (200, USDM_SNAPSHOT, 10)
        t0 = time.monotonic()
        assert (await get(session, server, "/fapi/v1/depth", symbol="BTCUSDT")).status == 200
        assert time.monotonic() - t0 < 0.3

    serve(run, body, faults=plan("rest_slow:market=usdm,delay_s=0.3"))


def test_fault_rest_stale(run: Runner) -> None:
    async def body(server: RestServer, session: aiohttp.ClientSession) -> None:
        # only a depth answer can be stale: other routes and failing requests leave it armed
        assert (await get(session, server, "/api/v3/ping")).status == 200
        assert (await get(session, server, "/api/v3/depth", symbol="NOPEUSDT")).status == 400
        fresh = json.loads(SPOT_SNAPSHOT)
        for _ in range(2):
            reply = await get(session, server, "/api/v3/depth", symbol="BTCUSDT")
            assert reply.status == 200
            assert reply.json == {
                **fresh,
                "lastUpdateId": fresh["lastUpdateId"] - STALE_ID_OFFSET,
            }
        reply = await get(session, server, "/api/v3/depth", symbol="BTCUSDT")
        assert reply.body == SPOT_SNAPSHOT
        assert server.counters.faults["rest_stale"] == 2

    serve(run, body, faults=plan("rest_stale:count=2"))


def test_fault_slow_and_stale_on_one_request(run: Runner) -> None:
    async def body(server: RestServer, session: aiohttp.ClientSession) -> None:
        t0 = time.monotonic()
        reply = await get(session, server, "/fapi/v1/depth", symbol="BTCUSDT")
        assert time.monotonic() - t0 >= 0.1
        assert reply.json["lastUpdateId"] == 4984034747463 - STALE_ID_OFFSET
        assert reply.json["E"] == 1721347201585  # the rest of the body is kept

    serve(run, body, faults=FaultPlan((Fault("rest_slow", delay_s=0.1), Fault("rest_stale"))))


def test_ws_faults_are_ignored(run: Runner) -> None:
    async def body(server: RestServer, session: aiohttp.ClientSession) -> None:
        assert (await get(session, server, "/api/v3/depth", symbol="BTCUSDT")).status == 200
        assert not server.counters.faults

    serve(run, body, faults=plan("close:code=1001", "drop:symbol=BTCUSDT,count=5"))


# ---------------------------------------------------------------- lifecycle and config


def test_start_stop_idempotent_and_port_freed(run: Runner) -> None:
    async def main() -> None:
        server = RestServer(FakeSource())
        with pytest.raises(RuntimeError):
            _ = server.port
        await server.start()
        port = server.port
        assert server.url == f"http://127.0.0.1:{port}"
        await server.start()
        assert server.port == port
        async with aiohttp.ClientSession() as session:
            assert (await get(session, server, "/api/v3/ping")).status == 200
            await server.stop()
            await server.stop()
            assert not server.running
            with pytest.raises(aiohttp.ClientConnectorError):
                await get(session, server, "/api/v3/ping")
            # the port is free: a new server binds it
            again = RestServer(FakeSource(), port=port)
            async with again:
                assert again.port == port
                assert (await get(session, again, "/api/v3/ping")).status == 200
            # and the first one can start again
            await server.start()
            assert (await get(session, server, "/fapi/v1/ping")).status == 200
            await server.stop()

    run(main)


def test_stop_before_start_is_a_no_op(run: Runner) -> None:
    async def main() -> None:
        await RestServer(FakeSource()).stop()

    run(main)


def test_port_freed_for_a_plain_socket(run: Runner) -> None:
    async def main() -> None:
        server = RestServer(FakeSource())
        await server.start()
        port = server.port
        await server.stop()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))

    run(main)


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "example.com", ""])
def test_refuses_non_loopback_host(host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        RestServer(FakeSource(), host=host)


def test_loopback_hosts() -> None:
    assert RestServer(FakeSource(), host="localhost").host == "127.0.0.1"
    assert RestServer(FakeSource(), host="127.0.0.2", port=8080).url == "http://127.0.0.2:8080"
    assert RestServer(FakeSource(), host="::1", port=8080).url == "http://[::1]:8080"


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="unknown market"):
        RestServer(FakeSource(), weight_limits={"spto": 10})
    with pytest.raises(ValueError, match="positive"):
        RestServer(FakeSource(), weight_limits={"spot": 0})
    with pytest.raises(ValueError):
        RestServer(FakeSource(), ban_s=0)
    with pytest.raises(ValueError):
        RestServer(FakeSource(), ban_after_429=-1)
    server = RestServer(FakeSource(), weight_limits={"usdm": 100})
    assert dict(server.weight_limits) == {"spot": 6000, "usdm": 100, "coinm": 2400}


def test_logs_nothing_above_debug(run: Runner, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    clock = FakeClock(1005.0)

    async def body(server: RestServer, session: aiohttp.ClientSession) -> None:
        for _ in range(6):
            await get(session, server, "/fapi/v1/ping")
        await get(session, server, "/api/v3/depth", symbol="BTCUSDT")
        await get(session, server, "/api/v3/depth", symbol="NOPEUSDT")

    serve(
        run,
        body,
        clock=clock,
        weight_limits={"usdm": 1},
        ban_after_429=1,
        faults=plan("rest_status:code=503,market=spot"),
    )
    loud = [r for r in caplog.records if r.levelno > logging.DEBUG]
    assert not loud, [r.getMessage() for r in loud]
    assert any(r.name == "meltica.replay.rest" for r in caplog.records)

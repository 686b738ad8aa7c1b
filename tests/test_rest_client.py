"""BinanceRest against the fake exchange's REST server over real loopback sockets.

The client and the server share one fake clock, so weight windows, 429 back-offs, 418 bans
and retry deadlines are exact and nothing is asserted on wall time.  ``FakeTime`` either
advances by itself when something sleeps (``auto``) or only when the test says so, which
lets a test look at the system while a back-off or ban is in force.  Each test runs on
stdlib asyncio and on uvloop and fails if the loop's exception handler fired.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aio
import aiohttp
import pytest

from meltica.adapters.binance.rest import (
    BinanceRest,
    RestBanned,
    RestClosed,
    RestDeadlineError,
    RestMarket,
    RestQueueFull,
    RestRequestError,
    RestStatusError,
    depth_limit,
    depth_weight,
)
from meltica.config import default_config
from meltica.errors import ConfigError, MelticaError, ValueRangeError
from meltica.replay.faults import Fault, FaultPlan
from meltica.replay.rest import STALE_ID_OFFSET, RestServer
from meltica.replay.synthetic import SyntheticMarket

pytestmark = pytest.mark.timeout(60)

TEST_TIMEOUT_S = 30.0
START = 1005.0  # 5 s into the minute window [960, 1020)
USDM_SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "DOGEUSDT", "ADAUSDT"]


class FakeTime:
    """A clock and a sleep for both client and server.

    ``auto``: a sleep moves the clock to its end at once.  Otherwise sleepers wait until
    ``advance`` moves the clock past their end.
    """

    def __init__(self, now: float = START, *, auto: bool = True) -> None:
        self.now = now
        self.auto = auto
        self.sleeps: list[float] = []
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        end = self.now + seconds
        if self.auto:
            self.now = max(self.now, end)
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((end, fut))
        await fut

    @property
    def sleeping(self) -> int:
        return sum(1 for _, f in self._sleepers if not f.done())

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for end, fut in self._sleepers:
            if end <= self.now and not fut.done():
                fut.set_result(None)
        self._sleepers = [(e, f) for e, f in self._sleepers if not f.done()]


Runner = Callable[[Callable[[], Awaitable[None]]], None]


@pytest.fixture(params=aio.LOOPS)
def run(request: pytest.FixtureRequest) -> Runner:
    """Run one async test body on a fresh loop; fail if the loop's exception handler fired."""
    return functools.partial(aio.run, timeout=TEST_TIMEOUT_S, loop=request.param)


def market_source() -> SyntheticMarket:
    return SyntheticMarket(
        symbols={"spot": ["BTCUSDT", "ETHUSDT"], "usdm": USDM_SYMBOLS}, depth_levels=120
    )


def tracer(clock: FakeTime, log: list[tuple[float, str]]) -> aiohttp.TraceConfig:
    """Records (fake time, URL) of every request the client starts."""
    trace = aiohttp.TraceConfig()

    async def on_start(_s: Any, _c: Any, params: aiohttp.TraceRequestStartParams) -> None:
        log.append((clock(), str(params.url)))

    trace.on_request_start.append(on_start)
    return trace


def client_for(
    server: RestServer,
    clock: FakeTime,
    *,
    limits: Mapping[str, tuple[int, float]] | None = None,
    **options: Any,
) -> BinanceRest:
    limits = limits or {"spot": (6000, 0.5), "usdm": (2400, 0.5)}
    markets = {
        m: RestMarket(server.url, weight_limit_per_minute=lim, budget_fraction=frac)
        for m, (lim, frac) in limits.items()
    }
    options.setdefault("rng", __import__("random").Random(7))
    return BinanceRest(markets, clock=clock, sleep=clock.sleep, **options)


async def wait_until(cond: Callable[[], bool], what: str) -> None:
    """Yield to the loop until ``cond()``; fail naming ``what`` if it never comes (a generous
    bound that only a broken client reaches, never a timing assertion)."""
    for _ in range(2000):
        if cond():
            return
        await asyncio.sleep(0.005)
    pytest.fail(f"never happened: {what}")


def serving(
    run: Runner,
    body: Callable[[RestServer, FakeTime], Awaitable[None]],
    *,
    auto: bool = True,
    faults: tuple[Fault, ...] = (),
    **server_options: Any,
) -> None:
    clock = FakeTime(auto=auto)

    async def main() -> None:
        server = RestServer(
            market_source(), clock=clock, faults=FaultPlan(faults), **server_options
        )
        await server.start()
        try:
            await body(server, clock)
        finally:
            await server.stop()

    run(main)


# ---------------------------------------------------------------- limits and weights


def test_depth_limit_rounds_up_to_the_cheapest_accepted_value() -> None:
    spot = {1: 100, 37: 100, 100: 100, 101: 500, 500: 500, 501: 1000, 1001: 5000, 5000: 5000}
    spot[9999] = 5000  # Binance clamps spot at 5000
    for asked, expected in spot.items():
        assert depth_limit("spot", asked, 100) == expected, asked
    usdm = {1: 5, 5: 5, 6: 10, 11: 20, 21: 50, 51: 100, 101: 500, 501: 1000, 1000: 1000}
    usdm[5000] = 1000
    for asked, expected in usdm.items():
        assert depth_limit("usdm", asked, 500) == expected, asked
    assert depth_limit("usdm", None, 500) == 500
    assert depth_limit("spot", None, 1000) == 1000
    for bad in (0, -5):
        with pytest.raises(RestRequestError):
            depth_limit("spot", bad, 100)
    with pytest.raises(RestRequestError):
        depth_limit("dapi", 5, 5)
    weights = [(m, lim, depth_weight(m, lim)) for m in ("spot", "usdm") for lim in (5, 100, 1000)]
    assert weights == [
        ("spot", 5, 5),
        ("spot", 100, 5),
        ("spot", 1000, 50),
        ("usdm", 5, 2),
        ("usdm", 100, 5),
        ("usdm", 1000, 20),
    ]
    assert depth_weight("spot", 5000) == 250


def test_urls_and_tls_policy() -> None:
    def make(url: str, **kw: Any) -> BinanceRest:
        return BinanceRest({"spot": RestMarket(url, 6000)}, **kw)

    make("https://api.binance.com")
    make("http://127.0.0.1:8080")
    make("http://localhost:8080/")
    make("http://[::1]:8080")
    for bad in ("http://api.binance.com", "ftp://127.0.0.1", "https://"):
        with pytest.raises(ConfigError):
            make(bad)
    lax = ssl.create_default_context()
    lax.check_hostname = False
    lax.verify_mode = ssl.CERT_NONE
    with pytest.raises(ConfigError):
        make("https://api.binance.com", ssl_context=lax)
    with pytest.raises(ConfigError):
        BinanceRest({"dapi": RestMarket("https://dapi.binance.com", 2400)})


def test_from_config_budgets() -> None:
    client = BinanceRest.from_config(default_config().binance)
    assert client.markets == ("spot", "usdm")
    assert client.budget("spot") == 3000  # 6000 x 0.5
    assert client.budget("usdm") == 1200  # 2400 x 0.5


# ---------------------------------------------------------------- requests


def test_depth_snapshots_round_limits_and_parse(run: Runner) -> None:
    async def body(server: RestServer, clock: FakeTime) -> None:
        async with client_for(server, clock) as client:
            spot = await client.depth_snapshot("spot", "btcusdt", 37)
            usdm = await client.depth_snapshot("usdm", "ETHUSDT", 7)
            dflt = await client.depth_snapshot("usdm", "BTCUSDT")
            assert (spot.kind, spot.market, spot.symbol, spot.source) == (
                "book_snapshot",
                "spot",
                "BTCUSDT",
                "rest",
            )
            assert (usdm.market, usdm.symbol) == ("usdm", "ETHUSDT")
            assert spot.update_id > 0 and usdm.update_id > 0
            assert spot.ts_recv > 0
            # 37 -> 100 levels on spot (same weight as 37), 7 -> 10 on usdm
            assert (spot.n_bids, spot.n_asks) == (100, 100)
            assert (usdm.n_bids, usdm.n_asks) == (10, 10)
            assert dflt.n_bids == 120  # RestMarket.depth_limit 1000; the source has 120
            assert server.counters.weight["spot"] == 5
            assert server.counters.weight["usdm"] == 2 + 20
            assert client.stats("usdm")["server_weight"] == 22
            assert client.stats("usdm")["weight_used"] == 22
            names = {(s.name, s.labels) for s in client.samples()}
            assert ("rest_requests_total", (("market", "usdm"),)) in names
            assert ("rest_queue_depth", (("market", "spot"),)) in names
            info = await client.exchange_info("spot")
            assert [s["symbol"] for s in info["symbols"]] == ["BTCUSDT", "ETHUSDT"]
            assert server.counters.weight["spot"] == 5 + 20

    serving(run, body)


class ImpossibleDepth(SyntheticMarket):
    """The synthetic market, but ETHUSDT's depth snapshot holds a negative quantity."""

    def depth_snapshot(self, market: str, symbol: str, limit: int) -> bytes | None:
        if symbol == "ETHUSDT":
            return b'{"lastUpdateId":5,"bids":[["100.5","-1"]],"asks":[["101","2"]]}'
        return super().depth_snapshot(market, symbol, limit)


def test_depth_snapshot_with_impossible_values_is_rejected_and_counted(run: Runner) -> None:
    clock = FakeTime(auto=True)

    async def main() -> None:
        source = ImpossibleDepth(symbols={"spot": ["BTCUSDT", "ETHUSDT"]}, depth_levels=20)
        server = RestServer(source, clock=clock, faults=FaultPlan(()))
        await server.start()
        try:
            async with client_for(server, clock, limits={"spot": (6000, 0.5)}) as client:
                with pytest.raises(ValueRangeError, match="negative quantity"):
                    await client.depth_snapshot("spot", "ETHUSDT", 5)
                assert (await client.depth_snapshot("spot", "BTCUSDT", 5)).n_bids == 20
                assert client.stats("spot")["parse_errors"] == 1
                rejects = {
                    s.labels: s.value
                    for s in client.samples()
                    if s.name == "rest_parse_rejects_total"
                }
                assert rejects[(("market", "spot"), ("reason", "value_range"))] == 1
                assert rejects[(("market", "spot"), ("reason", "number"))] == 0
        finally:
            await server.stop()

    run(main)


def test_bad_symbol_is_a_status_error_not_retried(run: Runner) -> None:
    async def body(server: RestServer, clock: FakeTime) -> None:
        async with client_for(server, clock) as client:
            with pytest.raises(RestStatusError) as info:
                await client.depth_snapshot("spot", "NOPEUSDT", 100)
            assert (info.value.status, info.value.code) == (400, -1121)
            assert isinstance(info.value, MelticaError)
            st = client.stats("spot")
            assert (st["requests"], st["retries"], st["status_errors"]) == (1, 0, 1)

    serving(run, body)


def test_burst_never_exceeds_the_weight_budget(run: Runner) -> None:
    """170 snapshots at once; the server's limits equal the client's budgets, so a single
    request over budget would be answered 429."""
    n_usdm, n_spot = 130, 40

    async def body(server: RestServer, clock: FakeTime) -> None:
        async with client_for(server, clock) as client:
            jobs = [client.depth_snapshot("usdm", USDM_SYMBOLS[i % 7], 1000) for i in range(n_usdm)]
            jobs += [client.depth_snapshot("spot", "BTCUSDT", 5000) for _ in range(n_spot)]
            books = await asyncio.gather(*jobs)
            assert len(books) == n_usdm + n_spot
            assert server.counters.rate_limited == 0
            assert server.counters.banned == 0
            assert dict(server.counters.responses) == {200: n_usdm + n_spot}
            assert server.counters.weight["usdm"] == 20 * n_usdm
            assert server.counters.weight["spot"] == 250 * n_spot
            # usdm: 60 per 1200-weight window -> 3 windows; spot: 12 per 3000 -> 4 windows
            assert clock.now >= 1020 + 2 * 60
            for market in ("usdm", "spot"):
                st = client.stats(market)
                assert st["rate_limited"] == 0 and st["retries"] == 0
                assert st["deferred"] >= 1  # the markets share the clock: either may roll it
                assert st["outstanding"] == 0 and st["queue_depth"] == 0

    serving(run, body, weight_limits={"usdm": 1200, "spot": 3000})


def test_budget_over_the_server_limit_is_caught_by_the_server(run: Runner) -> None:
    """The control for the burst test: a client whose budget exceeds the server's limit
    does get 429s, honours their Retry-After (no ban) and still completes every request."""

    async def body(server: RestServer, clock: FakeTime) -> None:
        async with client_for(
            server, clock, limits={"usdm": (2400, 1.0)}, retry_deadline_s=600
        ) as client:
            jobs = [client.depth_snapshot("usdm", "BTCUSDT", 1000) for _ in range(80)]
            await asyncio.gather(*jobs)
            assert server.counters.rate_limited > 0
            assert server.counters.banned == 0
            assert client.stats("usdm")["rate_limited"] == server.counters.rate_limited

    serving(run, body, weight_limits={"usdm": 1200})


def test_weight_used_by_others_counts_against_the_budget(run: Runner) -> None:
    """Another program on the same IP used 1000 of the 1200: the header tells the client."""

    async def body(server: RestServer, clock: FakeTime) -> None:
        async with aiohttp.ClientSession() as other:
            for _ in range(50):
                url = server.url + "/fapi/v1/depth?symbol=BTCUSDT&limit=1000"
                async with other.get(url) as resp:
                    assert resp.status == 200
        assert server.used_weight("usdm") == 1000
        async with client_for(server, clock) as client:
            await asyncio.gather(
                *(client.depth_snapshot("usdm", "BTCUSDT", 1000) for _ in range(30))
            )
            assert server.counters.rate_limited == 0
            assert clock.now >= 1020  # the rest waited for the next window
            assert client.stats("usdm")["deferred"] >= 1

    serving(run, body, weight_limits={"usdm": 1200})


def test_429_backs_off_its_market_for_retry_after(run: Runner) -> None:
    started: list[tuple[float, str]] = []

    async def body(server: RestServer, clock: FakeTime) -> None:
        async with client_for(server, clock, trace_configs=[tracer(clock, started)]) as client:
            usdm = asyncio.create_task(client.depth_snapshot("usdm", "BTCUSDT", 100))
            await wait_until(lambda: clock.sleeping > 0, "usdm back-off")
            assert client.stats("usdm")["rate_limited"] == 1
            # spot is not held by usdm's 429
            await client.depth_snapshot("spot", "BTCUSDT", 100)
            assert clock.now == START and not usdm.done()
            clock.advance(6.5)
            await asyncio.sleep(0.05)
            assert not usdm.done() and server.counters.requests["/fapi/v1/depth"] == 1
            clock.advance(0.5)
            book = await usdm
            assert book.symbol == "BTCUSDT"
        usdm_starts = [t for t, url in started if "/fapi/" in url]
        assert usdm_starts == [START, START + 7]
        assert client.stats("usdm")["retries"] == 1

    serving(
        run,
        body,
        auto=False,
        faults=(Fault("rest_status", market="usdm", code=429, retry_after=7),),
    )


def test_418_stops_every_market_until_the_ban_ends(run: Runner) -> None:
    started: list[tuple[float, str]] = []

    async def body(server: RestServer, clock: FakeTime) -> None:
        async with client_for(server, clock, trace_configs=[tracer(clock, started)]) as client:
            spot = asyncio.create_task(client.depth_snapshot("spot", "BTCUSDT", 100))
            await wait_until(lambda: client.stats("spot")["banned"] == 1, "the 418")
            assert client.banned_until() == START + 20
            usdm = asyncio.create_task(client.depth_snapshot("usdm", "BTCUSDT", 100))
            info = asyncio.create_task(client.exchange_info("usdm"))
            await wait_until(lambda: clock.sleeping >= 2, "both schedulers held")
            await asyncio.sleep(0.05)
            assert server.counters.requests["/fapi/v1/depth"] == 0
            assert server.counters.requests["/fapi/v1/exchangeInfo"] == 0
            assert not (spot.done() or usdm.done() or info.done())
            clock.advance(19.9)
            await asyncio.sleep(0.05)
            assert len(started) == 1
            clock.advance(0.1)
            await asyncio.gather(spot, usdm, info)
        assert started[0][0] == START
        assert len(started) == 4
        assert all(t >= START + 20 for t, _ in started[1:])
        assert client.stats("spot")["banned"] == 1 and client.stats("usdm")["banned"] == 0
        assert client.stats("usdm")["bans"] == 1

    serving(
        run,
        body,
        auto=False,
        faults=(Fault("rest_status", market="spot", code=418, retry_after=20),),
    )


def test_ban_longer_than_the_deadline_is_a_typed_error(run: Runner) -> None:
    async def body(server: RestServer, clock: FakeTime) -> None:
        async with client_for(server, clock, retry_deadline_s=10) as client:
            with pytest.raises(RestBanned) as info:
                await client.depth_snapshot("spot", "BTCUSDT", 100)
            assert info.value.retry_after == 120
            assert isinstance(info.value, ConnectionError)
            # the ban still holds every market: this one waits it out (fake time)
            await client.depth_snapshot("usdm", "BTCUSDT", 100)
            assert clock.now >= START + 120

    serving(run, body, faults=(Fault("rest_status", market="spot", code=418, retry_after=120),))


def test_5xx_timeouts_and_dropped_connections_are_retried(run: Runner) -> None:
    faults = (
        Fault("rest_status", market="usdm", code=503, count=2),
        Fault("rest_timeout", market="usdm"),  # held until the server stops
        Fault("rest_timeout", market="usdm", delay_s=0.01),  # then the connection is closed
        Fault("rest_slow", market="usdm", delay_s=5.0),  # slower than the request timeout
        Fault("rest_status", market="usdm", code=408),
    )

    async def body(server: RestServer, clock: FakeTime) -> None:
        async with client_for(server, clock, request_timeout_s=0.3) as client:
            book = await client.depth_snapshot("usdm", "BTCUSDT", 100)
            assert book.n_bids == 100
            st = client.stats("usdm")
            assert (st["requests"], st["retries"]) == (7, 6)
            assert (st["server_errors"], st["timeouts"], st["connection_errors"]) == (3, 2, 1)
            assert server.counters.requests["/fapi/v1/depth"] == 7
            assert sum(server.counters.faults.values()) == 6
            backoffs = clock.sleeps
            assert len(backoffs) == 6 and all(0 < s <= 5.0 for s in backoffs)

    serving(run, body, faults=faults)


def test_retries_stop_at_the_deadline(run: Runner) -> None:
    async def body(server: RestServer, clock: FakeTime) -> None:
        async with client_for(
            server, clock, retry_deadline_s=10, backoff_initial_s=0.5, backoff_max_s=2.0
        ) as client:
            with pytest.raises(RestDeadlineError) as info:
                await client.depth_snapshot("spot", "ETHUSDT", 100)
            assert isinstance(info.value, TimeoutError) and isinstance(info.value, MelticaError)
            assert "HTTP 500" in str(info.value)
            st = client.stats("spot")
            assert st["failures"] == 1
            assert st["requests"] == server.counters.requests["/api/v3/depth"] > 4
            assert clock.now - START <= 10
        assert server.counters.responses[500] == st["requests"]

    serving(run, body, faults=(Fault("rest_status", market="spot", code=500, count=1000),))


def test_stale_snapshot_is_returned_as_is(run: Runner) -> None:
    async def body(server: RestServer, clock: FakeTime) -> None:
        async with client_for(server, clock) as client:
            stale = await client.depth_snapshot("spot", "BTCUSDT", 100)
            fresh = await client.depth_snapshot("spot", "BTCUSDT", 100)
            assert fresh.update_id - stale.update_id == STALE_ID_OFFSET

    serving(run, body, faults=(Fault("rest_stale", market="spot"),))


# ---------------------------------------------------------------- queue


def test_urgent_requests_jump_the_queue(run: Runner) -> None:
    """One request per window (budget 20, weight 20): five normal ones queue, then two
    urgent ones arrive and are served right after the one already sent."""
    started: list[tuple[float, str]] = []

    async def body(server: RestServer, clock: FakeTime) -> None:
        async with client_for(
            server, clock, limits={"usdm": (40, 0.5)}, trace_configs=[tracer(clock, started)]
        ) as client:
            normal = [
                asyncio.create_task(client.depth_snapshot("usdm", s, 1000))
                for s in USDM_SYMBOLS[:5]
            ]
            await wait_until(lambda: normal[0].done() and clock.sleeping == 1, "first sent")
            urgent = [
                asyncio.create_task(client.depth_snapshot("usdm", s, 1000, urgent=True))
                for s in USDM_SYMBOLS[5:]
            ]
            await wait_until(lambda: client.stats("usdm")["queue_depth"] == 6, "queued")
            while not all(t.done() for t in normal + urgent):
                if clock.sleeping:
                    clock.advance(60)
                await asyncio.sleep(0.005)
        order = [url.split("symbol=")[1].split("&")[0] for _, url in started]
        expected = USDM_SYMBOLS[:1] + USDM_SYMBOLS[5:] + USDM_SYMBOLS[1:5]
        assert order == expected
        assert server.counters.rate_limited == 0
        assert client.stats("usdm")["urgent"] == 2

    serving(run, body, auto=False, weight_limits={"usdm": 20})


def test_on_sent_is_called_once_when_the_budget_lets_the_request_out(run: Runner) -> None:
    """One request per window (budget 20, weight 20): the second request's ``on_sent`` is
    not called while it waits for the next window, then once, before it is sent."""
    started: list[tuple[float, str]] = []
    sent: dict[str, list[int]] = {"a": [], "b": []}

    async def body(server: RestServer, clock: FakeTime) -> None:
        async with client_for(
            server, clock, limits={"usdm": (40, 0.5)}, trace_configs=[tracer(clock, started)]
        ) as client:
            jobs = [
                asyncio.create_task(
                    client.depth_snapshot(
                        "usdm",
                        sym,
                        1000,
                        urgent=True,
                        on_sent=lambda k=k: sent[k].append(len(started)),
                    )
                )
                for k, sym in (("a", "BTCUSDT"), ("b", "ETHUSDT"))
            ]
            await wait_until(lambda: jobs[0].done() and clock.sleeping == 1, "first answered")
            assert sent == {"a": [0], "b": []}  # b waits for the budget: not sent
            while not jobs[1].done():
                if clock.sleeping:
                    clock.advance(60)
                await asyncio.sleep(0.005)
            await asyncio.gather(*jobs)
        # each called once, before its own request started
        assert sent == {"a": [0], "b": [1]} and len(started) == 2

    serving(run, body, auto=False, weight_limits={"usdm": 20})


def test_low_requests_wait_behind_every_other_and_headroom_counts_the_queue(
    run: Runner,
) -> None:
    """Audit snapshots (``low=True``) are served after normal and urgent ones queued
    later; ``headroom`` is the budget minus the window's use and the queued weight."""
    started: list[tuple[float, str]] = []

    async def body(server: RestServer, clock: FakeTime) -> None:
        async with client_for(
            server, clock, limits={"usdm": (40, 0.5)}, trace_configs=[tracer(clock, started)]
        ) as client:
            assert client.headroom("usdm") == 20
            first = asyncio.create_task(client.depth_snapshot("usdm", USDM_SYMBOLS[0], 1000))
            await wait_until(first.done, "first sent")
            assert client.headroom("usdm") == 0
            low = [
                asyncio.create_task(client.depth_snapshot("usdm", s, 1000, low=True))
                for s in USDM_SYMBOLS[1:3]
            ]
            await wait_until(lambda: client.stats("usdm")["queue_depth"] == 2, "low queued")
            rest = [
                asyncio.create_task(client.depth_snapshot("usdm", s, 1000))
                for s in USDM_SYMBOLS[3:5]
            ]
            rest.append(
                asyncio.create_task(
                    client.depth_snapshot("usdm", USDM_SYMBOLS[5], 1000, urgent=True)
                )
            )
            await wait_until(lambda: client.stats("usdm")["queue_depth"] == 5, "queued")
            while not all(t.done() for t in low + rest):
                if clock.sleeping:
                    clock.advance(60)
                await asyncio.sleep(0.005)
        order = [url.split("symbol=")[1].split("&")[0] for _, url in started]
        expected = [USDM_SYMBOLS[i] for i in (0, 5, 3, 4, 1, 2)]
        assert order == expected
        assert server.counters.rate_limited == 0

    serving(run, body, auto=False, weight_limits={"usdm": 20})


def test_queue_is_bounded_and_close_fails_the_waiting(run: Runner) -> None:
    async def body(server: RestServer, clock: FakeTime) -> None:
        client = client_for(server, clock, limits={"usdm": (40, 0.5)}, max_pending=3)
        first = await client.depth_snapshot("usdm", "BTCUSDT", 1000)  # fills the window
        assert first.symbol == "BTCUSDT"
        waiting = [
            asyncio.create_task(client.depth_snapshot("usdm", "BTCUSDT", 1000)) for _ in range(3)
        ]
        await wait_until(lambda: client.stats("usdm")["queue_depth"] == 3, "queued")
        with pytest.raises(RestQueueFull) as info:
            await client.depth_snapshot("usdm", "ETHUSDT", 1000)
        assert isinstance(info.value, asyncio.QueueFull)
        assert client.stats("usdm")["rejected"] == 1
        with pytest.raises(RestRequestError):
            await client.exchange_info("spot")  # not configured
        tiny = client_for(server, clock, limits={"spot": (100, 0.05)})
        with pytest.raises(RestRequestError):  # weight 250 > budget 5: never admissible
            await tiny.depth_snapshot("spot", "BTCUSDT", 5000)
        assert tiny.stats("spot")["requests"] == 0
        await tiny.close()
        await client.close()
        results = await asyncio.gather(*waiting, return_exceptions=True)
        assert all(isinstance(r, RestClosed) for r in results)
        with pytest.raises(RestClosed):
            await client.depth_snapshot("usdm", "BTCUSDT", 5)
        await client.close()  # idempotent

    serving(run, body, auto=False, weight_limits={"usdm": 20})

"""The fake exchange's REST side: depth snapshots, exchangeInfo and trades by id, with
Binance's limits.

``RestServer`` is one aiohttp server for every market of a ``MarketSource``: the gateway
fetches its depth snapshots here while ``WsServer`` streams the diffs, so a correct client
syncs its books exactly as against Binance.  It charges request weight per docs/rest.md,
enforces the per-minute limits of §8 (429 with ``Retry-After``, then a 418 ban for clients
that ignore it) and plays the REST faults of a ``FaultPlan`` (docs/fake-exchange.md, "REST
server" and "Faults").  It listens on loopback only.

Weight accounting, as Binance does it: one bucket per market (spot, usdm, coinm are separate
hosts with separate limits), each counting the weight used in the current clock minute
(``floor(clock() / 60)``; by default wall-clock minutes, as Binance's and the gateway's
windows are: a fake on another clock would have its minutes turn over at a different second
and report the budget spent into the client's fresh window), reported in
``X-MBX-USED-WEIGHT-1M`` on every response of a known route, errors included.  A request
whose weight would push the bucket past its limit is refused with 429 and starts a back-off
that lasts until the minute ends (``Retry-After``). Every request to that bucket during the
back-off is refused too (429); the ``ban_after_429 + 1``-th one is answered 418 and bans the
bucket for ``ban_s`` seconds, during which every request is 418.  Refused requests are not
charged.  Requests that pass the limiter are charged even when they then fail validation
(invalid limits are charged the default limit's weight) or are hit by a scripted fault.

REST faults (``Fault.kind``): ``rest_status`` answers ``code`` (default 500) with a
Binance-like error body and ``Retry-After: retry_after`` when set; ``rest_timeout`` holds the
request ``delay_s`` seconds (until ``stop()`` when unset) and then closes the connection
without answering; ``rest_slow`` answers normally after ``delay_s``; ``rest_stale`` serves the
source's depth snapshot with ``lastUpdateId`` lowered by ``STALE_ID_OFFSET`` (floored at 0),
so the snapshot is older than every buffered diff event: a correct client sees it (spot:
``lastUpdateId`` below the first event's ``U``; futures: no event with ``U <= lastUpdateId
<= u``) and must fetch again (docs/conductor.md).  A fault matches a request
when its ``market`` and ``symbol`` (if set) agree and ``at_s`` (if set) seconds of ``clock``
have passed since ``start()``; each applies to the next ``count`` matching requests and is
then spent.  ``rest_stale`` only matches depth requests that would succeed; the other kinds
match any route.  ``connection`` and ``at_frame`` mean nothing for REST and are ignored.
Scripted 429/418 answers do not touch the limiter's state.

Trades by id (``aggTrades``, ``historicalTrades``): served from the source's ``tape``
(meltica/replay/tape.py: every trade its ``frames()`` yielded, faults or not), with
Binance's weights, default and largest limits (``TRADES_BY_ID``) and error bodies: -1102
without a symbol, -1100 for characters out of range in ``symbol``/``fromId``/``limit``,
-1130 for a limit out of range, -1121 for an unknown symbol, and 401 / -2014 for a futures
``historicalTrades`` request without an ``X-MBX-APIKEY`` header.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import math
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from meltica._core.events import MARKETS
from meltica.replay.faults import Fault, FaultPlan
from meltica.replay.source import MarketSource

__all__ = [
    "DEFAULT_WEIGHT_LIMITS",
    "STALE_ID_OFFSET",
    "TRADES_BY_ID",
    "RestCounters",
    "RestServer",
    "depth_weight",
]

log = logging.getLogger("meltica.replay.rest")

DEFAULT_WEIGHT_LIMITS: Mapping[str, int] = {"spot": 6000, "usdm": 2400, "coinm": 2400}
WINDOW_S = 60.0
WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"
# How far behind a rest_stale snapshot is: far more than any capture's events span, so the
# stale body is unmistakably older than the first buffered event.
STALE_ID_OFFSET = 1_000_000
# Backstop for runner.cleanup(): held requests are released by stop() itself, so only a
# misbehaving handler could make shutdown wait this long.
SHUTDOWN_TIMEOUT_S = 1.0

SPOT_DEPTH_DEFAULT = 100
SPOT_DEPTH_MAX = 5000
FUTURES_DEPTH_DEFAULT = 500
FUTURES_DEPTH_LIMITS = (5, 10, 20, 50, 100, 500, 1000)
_FUTURES_DEPTH_WEIGHT = {5: 2, 10: 2, 20: 2, 50: 2, 100: 5, 500: 10, 1000: 20}
# Binance's legal range for ``symbol``: no lower-case ASCII letter; letters of other
# scripts are legal (Binance lists symbols such as 币安人生USDT).  The exchange's own check,
# so looser than the adapter's rule (streams.is_symbol), never stricter.
_SYMBOL_RE = re.compile(r"(?:[^\Wa-z]|[-.]){1,20}")

# path -> (market, endpoint)
_ROUTES: dict[str, tuple[str, str]] = {
    "/api/v3/depth": ("spot", "depth"),
    "/fapi/v1/depth": ("usdm", "depth"),
    "/dapi/v1/depth": ("coinm", "depth"),
    "/api/v3/exchangeInfo": ("spot", "exchangeInfo"),
    "/fapi/v1/exchangeInfo": ("usdm", "exchangeInfo"),
    "/dapi/v1/exchangeInfo": ("coinm", "exchangeInfo"),
    "/api/v3/ping": ("spot", "ping"),
    "/fapi/v1/ping": ("usdm", "ping"),
    "/dapi/v1/ping": ("coinm", "ping"),
    "/api/v3/time": ("spot", "time"),
    "/fapi/v1/time": ("usdm", "time"),
    "/dapi/v1/time": ("coinm", "time"),
    "/api/v3/aggTrades": ("spot", "aggTrades"),
    "/fapi/v1/aggTrades": ("usdm", "aggTrades"),
    "/dapi/v1/aggTrades": ("coinm", "aggTrades"),
    "/api/v3/historicalTrades": ("spot", "historicalTrades"),
    "/fapi/v1/historicalTrades": ("usdm", "historicalTrades"),
    "/dapi/v1/historicalTrades": ("coinm", "historicalTrades"),
}
# Trades by id: (weight, default limit, largest limit) per market and endpoint, as
# Binance documents them (docs/rest.md, "Trades by id")
TRADES_BY_ID: Mapping[str, Mapping[str, tuple[int, int, int]]] = {
    "spot": {"aggTrades": (4, 500, 1000), "historicalTrades": (25, 500, 1000)},
    "usdm": {"aggTrades": (20, 500, 1000), "historicalTrades": (20, 100, 500)},
    "coinm": {"aggTrades": (20, 500, 1000), "historicalTrades": (20, 100, 500)},
}
_TRADE_KINDS = {"aggTrades": "agg_trade", "historicalTrades": "trade"}
API_KEY_HEADER = "X-MBX-APIKEY"

# Binance's error codes and messages for the statuses a rest_status fault can script.
_STATUS_ERRORS: dict[int, tuple[int, str]] = {
    400: (-1000, "An unknown error occurred while processing the request."),
    403: (-1000, "Forbidden."),
    408: (
        -1007,
        "Timeout waiting for response from backend server. "
        "Send status unknown; execution status unknown.",
    ),
    500: (-1000, "An unknown error occurred while processing the request."),
    502: (-1001, "Internal error; unable to process your request. Please try again."),
    503: (
        -1008,
        "Server is currently overloaded with other requests. Please try again in a few minutes.",
    ),
    504: (-1007, "Timeout waiting for response from backend server."),
}


def depth_weight(market: str, limit: int) -> int:
    """Request weight of a depth snapshot of ``limit`` levels (docs/rest.md).

    Spot limits are taken as already clamped to 1..5000; futures limits must be valid.
    """
    if market == "spot":
        if limit <= 100:
            return 5
        if limit <= 500:
            return 25
        if limit <= 1000:
            return 50
        return 250
    return _FUTURES_DEPTH_WEIGHT[limit]


@dataclass(slots=True)
class RestCounters:
    """What the server saw, for tests and the CLI's summary.

    ``rate_limited`` / ``banned`` count the limiter's own 429 / 418 answers; scripted ones
    are in ``faults`` (and every answer, whatever its origin, in ``responses``).
    """

    requests: Counter[str] = field(default_factory=Counter)  # per path, every request
    weight: Counter[str] = field(default_factory=Counter)  # weight charged per market, total
    responses: Counter[int] = field(default_factory=Counter)  # answers per HTTP status
    rate_limited: int = 0  # limiter 429s
    banned: int = 0  # limiter 418s (the banning request and every request during a ban)
    bans: int = 0  # bans imposed
    faults: Counter[str] = field(default_factory=Counter)  # REST faults applied, per kind


@dataclass(slots=True)
class _Bucket:
    """One market's request-weight limiter."""

    limit: int
    window: int = -1  # index of the clock minute ``used`` belongs to
    used: int = 0
    backoff_until: float | None = None  # a 429 was sent: the client must wait until then
    backoff_requests: int = 0  # requests received during the current back-off
    banned_until: float | None = None

    def roll(self, now: float) -> None:
        window = math.floor(now / WINDOW_S)
        if window != self.window:
            self.window, self.used = window, 0

    def window_end(self) -> float:
        return (self.window + 1) * WINDOW_S


@dataclass(slots=True)
class _Refusal:
    status: int
    retry_after: int
    body: dict[str, Any]


def _retry_seconds(until: float, now: float) -> int:
    # Retry-After is whole seconds; rounding up never tells a client to come back early.
    return max(1, math.ceil(until - now))


def _too_much_weight(limit: int) -> dict[str, Any]:
    return {
        "code": -1003,
        "msg": f"Too much request weight used; current limit is {limit} request weight per "
        "1 MINUTE. Please use WebSocket Streams for live updates to avoid polling the API.",
    }


def _ban_body(seconds_left: float) -> dict[str, Any]:
    # Binance names the ban's end in epoch ms; the injected clock need not be wall time,
    # so the remaining duration is added to the wall clock.
    until_ms = int((time.time() + seconds_left) * 1000)
    return {
        "code": -1003,
        "msg": f"Way too much request weight used; IP banned until {until_ms}. "
        "Please use WebSocket Streams for live updates to avoid bans.",
    }


def _bad_limit(legal: str) -> dict[str, Any]:
    return {
        "code": -1100,
        "msg": f"Illegal characters found in parameter 'limit'; legal range is '{legal}'.",
    }


def _parse_depth_limit(market: str, raw: str | None) -> int | dict[str, Any]:
    """The limit to serve, or the -1100 error body."""
    if market == "spot":
        if raw is None:
            return SPOT_DEPTH_DEFAULT
        if not raw.isdigit() or len(raw) > 20:
            return _bad_limit("^[0-9]{1,20}$")
        value = int(raw)
        if value < 1:
            return _bad_limit(f"1..{SPOT_DEPTH_MAX}")
        return min(value, SPOT_DEPTH_MAX)  # Binance clamps, it does not refuse
    if raw is None:
        return FUTURES_DEPTH_DEFAULT
    if not raw.isdigit() or int(raw) not in _FUTURES_DEPTH_WEIGHT:
        return _bad_limit(", ".join(map(str, FUTURES_DEPTH_LIMITS)))
    return int(raw)


def _bad_symbol(symbol: str | None) -> dict[str, Any] | None:
    """Binance's error body for a missing or malformed ``symbol`` parameter, or None."""
    if not symbol:
        return {
            "code": -1102,
            "msg": "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.",
        }
    if _SYMBOL_RE.fullmatch(symbol) is None:
        return {
            "code": -1100,
            "msg": "Illegal characters found in parameter 'symbol'; "
            "legal range is '^[A-Z0-9-_.]{1,20}$'.",
        }
    return None


def _stale(body: bytes) -> bytes:
    obj = json.loads(body)
    if not isinstance(obj, dict) or not isinstance(obj.get("lastUpdateId"), int):
        return body  # nothing to age; serve what the source gave
    obj["lastUpdateId"] = max(0, obj["lastUpdateId"] - STALE_ID_OFFSET)
    return json.dumps(obj, separators=(",", ":")).encode()


def _loopback_host(host: str) -> str:
    """``host`` if it is a loopback address ("localhost" -> 127.0.0.1), else ValueError."""
    if host == "localhost":
        # One address only: "localhost" would bind IPv4 and IPv6 on two different ports.
        return "127.0.0.1"
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"RestServer binds to loopback only; {host!r} is not an IP") from None
    if not addr.is_loopback:
        raise ValueError(f"RestServer binds to loopback only; {host!r} is not loopback")
    return host


class RestServer:
    """Binance's public market-data REST endpoints for every market of ``source``.

    ``weight_limits`` overrides per-market limits (keys "spot", "usdm", "coinm"; missing
    keys keep Binance's 6000 / 2400 / 2400).  ``clock`` drives the weight windows, bans and
    ``at_s`` (tests inject a fake one); holds (``delay_s``) are real time.
    """

    def __init__(
        self,
        source: MarketSource,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: FaultPlan = FaultPlan(),  # noqa: B008 - frozen and immutable
        weight_limits: Mapping[str, int] | None = None,
        ban_after_429: int = 3,
        ban_s: float = 120.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        limits = dict(DEFAULT_WEIGHT_LIMITS)
        for market, limit in (weight_limits or {}).items():
            if market not in limits:
                raise ValueError(f"weight_limits: unknown market {market!r} (one of {MARKETS})")
            if limit < 1:
                raise ValueError(f"weight_limits[{market!r}] must be positive, got {limit}")
            limits[market] = limit
        if ban_after_429 < 0:
            raise ValueError("ban_after_429 must be >= 0")
        if ban_s <= 0:
            raise ValueError("ban_s must be positive")
        self.source = source
        self.host = _loopback_host(host)
        self.weight_limits: Mapping[str, int] = limits
        self.ban_after_429 = ban_after_429
        self.ban_s = ban_s
        self.counters = RestCounters()
        self._requested_port = port
        self._bound_port: int | None = None
        self._clock = clock
        self._buckets = {market: _Bucket(limit) for market, limit in limits.items()}
        # One remaining-uses slot per REST fault: a market-less fault is shared by all
        # markets, so its count must be too.
        self._faults: tuple[Fault, ...] = faults.rest()
        self._fault_left = [f.count for f in self._faults]
        self._started_at = 0.0
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()
        self._lock = asyncio.Lock()

    # -- lifecycle (each step idempotent)

    async def start(self) -> None:
        async with self._lock:
            if self._runner is not None:
                return
            self._closing = asyncio.Event()
            app = web.Application()
            for path, (market, endpoint) in _ROUTES.items():
                app.router.add_get(path, self._handler(market, endpoint), allow_head=False)
            # access_log=None: the library logs nothing unless asked.
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
            await runner.setup()
            try:
                site = web.TCPSite(runner, self.host, self._requested_port)
                await site.start()
            except BaseException:
                await runner.cleanup()
                raise
            self._runner = runner
            self._bound_port = int(runner.addresses[0][1])
            self._started_at = self._clock()
            log.debug("REST server listening on %s", self.url)

    async def stop(self) -> None:
        async with self._lock:
            runner, self._runner = self._runner, None
            if runner is None:
                return
            # Release held requests (rest_timeout / rest_slow) now, so cleanup() does not
            # wait out their delays.
            self._closing.set()
            await runner.cleanup()
            log.debug("REST server on port %s stopped", self._bound_port)

    async def __aenter__(self) -> RestServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        return self._runner is not None

    @property
    def port(self) -> int:
        """The bound port (kept after ``stop()``); the configured one before ``start()``."""
        if self._bound_port is not None:
            return self._bound_port
        if self._requested_port:
            return self._requested_port
        raise RuntimeError("RestServer: port 0 is chosen at start(); start the server first")

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def used_weight(self, market: str) -> int:
        """Weight used by ``market`` in the current minute window."""
        bucket = self._buckets[market]
        bucket.roll(self._clock())
        return bucket.used

    # -- requests

    def _handler(
        self, market: str, endpoint: str
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._handle(request, market, endpoint)

        return handle

    async def _handle(self, request: web.Request, market: str, endpoint: str) -> web.StreamResponse:
        self.counters.requests[request.path] += 1
        query = request.query
        symbol = query.get("symbol")
        limit: int | dict[str, Any] = 0
        if endpoint == "depth":
            limit = _parse_depth_limit(market, query.get("limit"))
            default = SPOT_DEPTH_DEFAULT if market == "spot" else FUTURES_DEPTH_DEFAULT
            weight = depth_weight(market, limit if isinstance(limit, int) else default)
        elif endpoint == "exchangeInfo":
            weight = 20 if market == "spot" else 1
        elif endpoint in _TRADE_KINDS:
            weight = TRADES_BY_ID[market][endpoint][0]
        else:
            weight = 1

        bucket = self._buckets[market]
        refusal = self._admit(bucket, weight)
        if refusal is not None:
            return self._respond(
                bucket, refusal.status, refusal.body, {"Retry-After": str(refusal.retry_after)}
            )
        self.counters.weight[market] += weight

        fault = self._take_fault(market, symbol, ("rest_status", "rest_timeout", "rest_slow"))
        if fault is not None:
            if fault.kind == "rest_status":
                return self._fault_status(bucket, fault)
            stopping = await self._hold(fault.delay_s)
            if fault.kind == "rest_timeout" or stopping:
                return self._drop(request)

        if endpoint == "depth":
            return self._depth(bucket, market, symbol, limit)
        if endpoint == "exchangeInfo":
            return self._exchange_info(bucket, market, symbol)
        if endpoint in _TRADE_KINDS:
            return self._trades(bucket, market, endpoint, request)
        if endpoint == "time":
            return self._respond(bucket, 200, {"serverTime": time.time_ns() // 1_000_000})
        return self._respond(bucket, 200, {})

    def _depth(
        self, bucket: _Bucket, market: str, symbol: str | None, limit: int | dict[str, Any]
    ) -> web.Response:
        bad = _bad_symbol(symbol)
        if bad is not None:
            return self._respond(bucket, 400, bad)
        assert symbol is not None  # _bad_symbol refuses a missing one
        if isinstance(limit, dict):
            return self._respond(bucket, 400, limit)
        body = None
        if market in self.source.markets:
            body = self.source.depth_snapshot(market, symbol, limit)
        if body is None:
            return self._respond(bucket, 400, {"code": -1121, "msg": "Invalid symbol."})
        if self._take_fault(market, symbol, ("rest_stale",)) is not None:
            body = _stale(body)
        return self._respond(bucket, 200, body)

    def _trades(
        self, bucket: _Bucket, market: str, endpoint: str, request: web.Request
    ) -> web.Response:
        """aggTrades / historicalTrades: the source's trades from ``fromId`` on (or the
        latest), from its tape, with Binance's parameter checks and error bodies."""
        query = request.query
        symbol = query.get("symbol")
        _, default, largest = TRADES_BY_ID[market][endpoint]
        # MARKET_DATA on the futures markets: an API key must come with the request
        keyed = endpoint == "historicalTrades" and market != "spot"
        if keyed and not request.headers.get(API_KEY_HEADER):
            return self._respond(bucket, 401, {"code": -2014, "msg": "API-key format invalid."})
        bad = _bad_symbol(symbol)
        if bad is not None:
            return self._respond(bucket, 400, bad)
        numbers: dict[str, int | None] = {}
        for name in ("fromId", "limit"):
            raw = query.get(name)
            if raw is None:
                numbers[name] = None
            elif not raw.isdigit() or len(raw) > 19:
                return self._respond(
                    bucket,
                    400,
                    {
                        "code": -1100,
                        "msg": f"Illegal characters found in parameter '{name}'; "
                        "legal range is '^[0-9]{1,19}$'.",
                    },
                )
            else:
                numbers[name] = int(raw)
        limit = numbers["limit"] if numbers["limit"] is not None else default
        if not 1 <= limit <= largest:
            return self._respond(
                bucket,
                400,
                {"code": -1130, "msg": "Data sent for parameter 'limit' is not valid."},
            )
        tape = getattr(self.source, "tape", None)
        items = None
        if tape is not None and market in self.source.markets:
            items = tape.get(market, symbol, _TRADE_KINDS[endpoint], numbers["fromId"], limit)
            if items is None and symbol in self.source.symbols(market):
                items = []  # a listed symbol that has not traded yet
        if items is None:
            return self._respond(bucket, 400, {"code": -1121, "msg": "Invalid symbol."})
        return self._respond(bucket, 200, json.dumps(items, separators=(",", ":")).encode())

    def _exchange_info(self, bucket: _Bucket, market: str, symbol: str | None) -> web.Response:
        if market in self.source.markets:
            info = self.source.exchange_info(market)
        else:
            info = {"timezone": "UTC", "serverTime": time.time_ns() // 1_000_000, "symbols": []}
        if symbol is not None:
            # Binance's ?symbol= filter (spot); futures ignore it there, harmless here.
            chosen = [s for s in info.get("symbols", []) if s.get("symbol") == symbol]
            if not chosen:
                return self._respond(bucket, 400, {"code": -1121, "msg": "Invalid symbol."})
            info = {**info, "symbols": chosen}
        return self._respond(bucket, 200, info)

    # -- weight limiter

    def _admit(self, bucket: _Bucket, weight: int) -> _Refusal | None:
        """None if the request may proceed (the caller charges it), else the refusal."""
        now = self._clock()
        bucket.roll(now)
        if bucket.banned_until is not None:
            if now < bucket.banned_until:
                self.counters.banned += 1
                return _Refusal(
                    418,
                    _retry_seconds(bucket.banned_until, now),
                    _ban_body(bucket.banned_until - now),
                )
            bucket.banned_until = None
            bucket.backoff_until, bucket.backoff_requests = None, 0
        if bucket.backoff_until is not None:
            if now < bucket.backoff_until:
                bucket.backoff_requests += 1
                if bucket.backoff_requests > self.ban_after_429:
                    bucket.banned_until = now + self.ban_s
                    self.counters.banned += 1
                    self.counters.bans += 1
                    log.debug("weight ban for %.0f s after ignored 429s", self.ban_s)
                    return _Refusal(
                        418, _retry_seconds(bucket.banned_until, now), _ban_body(self.ban_s)
                    )
                self.counters.rate_limited += 1
                return _Refusal(
                    429, _retry_seconds(bucket.backoff_until, now), _too_much_weight(bucket.limit)
                )
            bucket.backoff_until, bucket.backoff_requests = None, 0
        if bucket.used + weight > bucket.limit:
            bucket.backoff_until = bucket.window_end()
            self.counters.rate_limited += 1
            log.debug(
                "weight limit %d reached (used %d, asked %d)", bucket.limit, bucket.used, weight
            )
            return _Refusal(
                429, _retry_seconds(bucket.backoff_until, now), _too_much_weight(bucket.limit)
            )
        bucket.used += weight
        return None

    # -- faults

    def _take_fault(self, market: str, symbol: str | None, kinds: tuple[str, ...]) -> Fault | None:
        """The first live fault of ``kinds`` matching the request, with one use consumed."""
        elapsed: float | None = None
        for i, fault in enumerate(self._faults):
            if fault.kind not in kinds or self._fault_left[i] <= 0:
                continue
            if fault.market is not None and fault.market != market:
                continue
            if fault.symbol is not None and (symbol is None or symbol.upper() != fault.symbol):
                continue
            if fault.at_s is not None:
                if elapsed is None:
                    elapsed = self._clock() - self._started_at
                if elapsed < fault.at_s:
                    continue
            self._fault_left[i] -= 1
            self.counters.faults[fault.kind] += 1
            log.debug("REST fault %s (%d uses left)", fault, self._fault_left[i])
            return fault
        return None

    def _fault_status(self, bucket: _Bucket, fault: Fault) -> web.Response:
        status = fault.code if fault.code is not None else 500
        headers = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = str(fault.retry_after)
        body: dict[str, Any]
        if status == 429:
            body = _too_much_weight(bucket.limit)
        elif status == 418:
            body = _ban_body(fault.retry_after if fault.retry_after is not None else self.ban_s)
        else:
            code, msg = _STATUS_ERRORS.get(status, _STATUS_ERRORS[500])
            body = {"code": code, "msg": msg}
        return self._respond(bucket, status, body, headers)

    async def _hold(self, delay_s: float | None) -> bool:
        """Wait ``delay_s`` (None: until stop); True if the server is stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), delay_s)
        return self._closing.is_set()

    def _drop(self, request: web.Request) -> web.Response:
        # Close the connection without a status line.  aiohttp then fails to write the
        # returned response with a ConnectionError, which it treats as a client that went
        # away: nothing is sent and nothing is logged.
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=204)

    # -- responses

    def _respond(
        self,
        bucket: _Bucket,
        status: int,
        body: bytes | Mapping[str, Any],
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        if not isinstance(body, bytes):
            # Compact, as Binance writes it; snapshot bytes from the source pass untouched.
            body = json.dumps(body, separators=(",", ":")).encode()
        self.counters.responses[status] += 1
        out = {WEIGHT_HEADER: str(bucket.used)}
        if headers:
            out.update(headers)
        return web.Response(status=status, body=body, content_type="application/json", headers=out)

"""Binance REST: depth snapshots and exchangeInfo through a weight-aware scheduler.

The Conductor fetches book snapshots here and the ``InstrumentRegistry`` its exchangeInfo
(docs/pipeline.md).  Every request passes one scheduler per market that knows the request's
weight (docs/rest.md), keeps the weight used in the current minute window below a budget
(limit × fraction) by holding requests until the next window, tracks the exchange's own count
from ``X-MBX-USED-WEIGHT-1M``, backs a market off on 429 ``Retry-After`` and stops every
market on a 418 ban (bans are per IP).  5xx, 408, timeouts and dropped connections are
retried with jittered exponential backoff until a per-request deadline.  Urgent requests
(books out of sync) are granted before normal ones.  Each market's outstanding requests are
bounded; past the bound a request fails at once with ``RestQueueFull``.

Time: ``clock`` (seconds; wall time by default, since Binance's windows are clock minutes)
drives windows, back-offs and deadlines and ``sleep`` waits on it; tests inject both.  The
per-request ``request_timeout_s`` is real time (aiohttp's timer).  TLS verification is always
on; plain ``http`` is accepted for loopback hosts only (the local fake exchange).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import ipaddress
import itertools
import json
import logging
import math
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from meltica._core.events import BookDepth, Trade, as_backfilled
from meltica._core.parser import PARSE_REASONS, FrameParser
from meltica.errors import ConfigError, MelticaError, ParseError
from meltica.log import fields
from meltica.telemetry import catalog
from meltica.telemetry.metrics import Histogram, Sample
from meltica.telemetry.spans import end_span, start_span

if TYPE_CHECKING:
    from meltica.config import BinanceConfig

__all__ = [
    "API_KEY_HEADER",
    "EXCHANGE_INFO_WEIGHT",
    "REST_MAX_PENDING",
    "SPOT_DEPTH_LIMITS",
    "TRADES_BY_ID",
    "TRADE_ENDPOINTS",
    "USDM_DEPTH_LIMITS",
    "BinanceRest",
    "RestBanned",
    "RestClosed",
    "RestDeadlineError",
    "RestError",
    "RestMarket",
    "RestQueueFull",
    "RestRateLimited",
    "RestRequestError",
    "RestStatusError",
    "depth_limit",
    "depth_weight",
]

log = logging.getLogger("meltica.rest")

WINDOW_S = 60.0
WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"
DEFAULT_BAN_S = 120.0  # Binance's first ban step, when a 418 names no Retry-After

_PATHS = {
    "spot": {"depth": "/api/v3/depth", "exchangeInfo": "/api/v3/exchangeInfo"},
    "usdm": {"depth": "/fapi/v1/depth", "exchangeInfo": "/fapi/v1/exchangeInfo"},
    "coinm": {"depth": "/dapi/v1/depth", "exchangeInfo": "/dapi/v1/exchangeInfo"},
}
# Trades by id (backfill, docs/rest.md "Trades by id"): endpoint per canonical kind
TRADE_ENDPOINTS: Mapping[str, str] = {"trade": "historicalTrades", "agg_trade": "aggTrades"}
for _m, _prefix in (("spot", "/api/v3"), ("usdm", "/fapi/v1"), ("coinm", "/dapi/v1")):
    for _endpoint in TRADE_ENDPOINTS.values():
        _PATHS[_m][_endpoint] = f"{_prefix}/{_endpoint}"
# outstanding requests per market by default (the engine adds one per configured book)
REST_MAX_PENDING = 1024

# (weight, largest limit) per market and endpoint
TRADES_BY_ID: Mapping[str, Mapping[str, tuple[int, int]]] = {
    "spot": {"aggTrades": (4, 1000), "historicalTrades": (25, 1000)},
    "usdm": {"aggTrades": (20, 1000), "historicalTrades": (20, 500)},
    "coinm": {"aggTrades": (20, 1000), "historicalTrades": (20, 500)},
}
# historicalTrades on the futures markets is MARKET_DATA: it needs this header
API_KEY_HEADER = "X-MBX-APIKEY"
PRIORITY_URGENT, PRIORITY_NORMAL, PRIORITY_BACKGROUND, PRIORITY_AUDIT = 0, 1, 2, 3
EXCHANGE_INFO_WEIGHT: Mapping[str, int] = {"spot": 20, "usdm": 1, "coinm": 1}
# Spot accepts any limit 1..5000; weight steps at these bounds (docs/rest.md).
SPOT_DEPTH_LIMITS: tuple[tuple[int, int], ...] = ((100, 5), (500, 25), (1000, 50), (5000, 250))
USDM_DEPTH_LIMITS: tuple[tuple[int, int], ...] = (
    (5, 2),
    (10, 2),
    (20, 2),
    (50, 2),
    (100, 5),
    (500, 10),
    (1000, 20),
)
# COIN-M: the same limits and weights as USD-M
_DEPTH_LIMITS = {
    "spot": SPOT_DEPTH_LIMITS,
    "usdm": USDM_DEPTH_LIMITS,
    "coinm": USDM_DEPTH_LIMITS,
}


# ---------------------------------------------------------------- errors


class RestError(MelticaError):
    """A Binance REST request failed."""

    reason = "rest"


class RestRequestError(RestError, ValueError):
    """The request cannot be made as asked (unknown market, bad limit, weight over budget)."""

    reason = "rest_request"


class RestStatusError(RestError):
    """Binance answered a status that retrying cannot fix (400 bad symbol, 403 WAF, ...)."""

    reason = "rest_status"

    def __init__(self, message: str, status: int, code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class RestDeadlineError(RestError, TimeoutError):
    """Retries (5xx, 408, timeouts, dropped connections) did not succeed before the deadline."""

    reason = "rest_deadline"


class RestRateLimited(RestError, ConnectionError):
    """A 429 back-off outlasts the request's retry deadline."""

    reason = "rest_rate_limited"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RestBanned(RestRateLimited):
    """A 418 IP ban outlasts the request's retry deadline (every market is stopped)."""

    reason = "rest_banned"


class RestQueueFull(RestError, asyncio.QueueFull):
    """The market already has ``max_pending`` outstanding requests."""

    reason = "rest_queue_full"


class RestClosed(RestError, RuntimeError):
    """The client was closed."""

    reason = "rest_closed"


# ---------------------------------------------------------------- weights and limits


def depth_limit(market: str, requested: int | None, default: int) -> int:
    """The depth limit to ask for: the cheapest Binance accepts with at least ``requested``.

    Futures accept only 5/10/20/50/100/500/1000, so ``requested`` rounds up to the next
    one.  Spot accepts 1..5000 but charges by band (<=100, <=500, <=1000, <=5000), so it
    rounds up to the band's top: the same weight buys the most levels.  Above the maximum
    the maximum is used (Binance clamps spot the same way).  None means ``default``.
    """
    table = _DEPTH_LIMITS.get(market)
    if table is None:
        raise RestRequestError(f"unknown market {market!r} (one of {sorted(_DEPTH_LIMITS)})")
    want = default if requested is None else requested
    if isinstance(want, bool) or not isinstance(want, int) or want < 1:
        raise RestRequestError(f"depth limit must be a positive int, got {want!r}")
    for limit, _ in table:
        if want <= limit:
            return limit
    return table[-1][0]


def depth_weight(market: str, limit: int) -> int:
    """Request weight of a depth snapshot of ``limit`` levels (docs/rest.md)."""
    for top, weight in _DEPTH_LIMITS[market]:
        if limit <= top:
            return weight
    return _DEPTH_LIMITS[market][-1][1]


# ---------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class RestMarket:
    """One market's REST endpoint and weight budget."""

    base_url: str
    weight_limit_per_minute: int
    budget_fraction: float = 0.5
    depth_limit: int = 1000  # used when depth_snapshot() gets no limit
    venue: str = "binance"  # events' venue ("binance_us" for Binance.US)

    @property
    def budget(self) -> int:
        return max(1, math.floor(self.weight_limit_per_minute * self.budget_fraction))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_url(market: str, url: str) -> str:
    parts = urlsplit(url)
    if not parts.hostname:
        raise ConfigError(f"binance.{market}.rest_url: no host in {url!r}")
    if parts.scheme == "https":
        return url.rstrip("/")
    if parts.scheme == "http" and _is_loopback(parts.hostname):
        return url.rstrip("/")
    raise ConfigError(
        f"binance.{market}.rest_url: {url!r} must be https (http only for loopback hosts)"
    )


def _check_ssl(ctx: ssl.SSLContext | None) -> ssl.SSLContext:
    if ctx is None:
        return ssl.create_default_context()
    if ctx.verify_mode != ssl.CERT_REQUIRED or not ctx.check_hostname:
        raise ConfigError("BinanceRest: TLS certificate and host name verification cannot be off")
    return ctx


# ---------------------------------------------------------------- scheduler state


@dataclass(slots=True)
class _Market:
    """One market's scheduler state and counters."""

    name: str
    cfg: RestMarket
    base_url: str
    budget: int
    parser: FrameParser
    heap: list[tuple[int, int, int, asyncio.Future[int]]] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    window: int = -1
    own_used: int = 0  # weight we were granted in ``window``
    seen_used: int = 0  # highest X-MBX-USED-WEIGHT-1M of ``window``
    in_flight: int = 0
    in_flight_weight: int = 0  # granted, not yet answered (not in ``seen_used`` for sure)
    outstanding: int = 0  # accepted requests not yet finished (queued, in flight, retrying)
    backoff_until: float = 0.0  # 429 Retry-After
    # counters
    requests: int = 0
    responses: int = 0
    retries: int = 0
    rate_limited: int = 0
    banned: int = 0
    server_errors: int = 0
    timeouts: int = 0
    connection_errors: int = 0
    status_errors: int = 0
    parse_errors: int = 0
    failures: int = 0
    rejected: int = 0
    deferred: int = 0
    urgent: int = 0
    weight_used: int = 0  # total weight granted, all windows
    last_server_weight: int = 0

    def roll(self, now: float) -> None:
        window = math.floor(now / WINDOW_S)
        if window != self.window:
            # Requests still in flight may be charged in the new window: count them there.
            self.window, self.own_used, self.seen_used = window, self.in_flight_weight, 0

    def estimate(self) -> int:
        """Weight used in the current window, as far as we can tell, conservatively."""
        return max(self.own_used, self.seen_used + self.in_flight_weight)


@dataclass(slots=True)
class _Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes


def _retry_after(headers: Mapping[str, str]) -> float | None:
    raw = headers.get("Retry-After")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if value >= 0 else None


def _binance_error(body: bytes) -> tuple[int | None, str]:
    try:
        obj = json.loads(body)
    except ValueError:
        return None, body[:200].decode(errors="replace")
    if isinstance(obj, dict):
        code = obj.get("code")
        return (code if isinstance(code, int) else None), str(obj.get("msg", ""))
    return None, body[:200].decode(errors="replace")


class BinanceRest:
    """Binance's market-data REST endpoints behind a weight-aware scheduler.

    ``markets`` maps "spot" / "usdm" / "coinm" to their endpoint and budget.  A request is retried
    on 5xx/408/timeouts/dropped connections with jittered exponential backoff
    (``backoff_initial_s`` doubling up to ``backoff_max_s``) while the next attempt can
    start within ``retry_deadline_s`` of the first; 429/418 waits count toward the same
    deadline.  ``max_pending`` bounds each market's outstanding requests and
    ``max_in_flight`` its concurrent ones.  ``trace_configs`` go to aiohttp's session
    (tracing, tests).
    """

    def __init__(
        self,
        markets: Mapping[str, RestMarket],
        *,
        request_timeout_s: float = 10.0,
        retry_deadline_s: float = 30.0,
        backoff_initial_s: float = 0.25,
        backoff_max_s: float = 5.0,
        max_pending: int = REST_MAX_PENDING,
        max_in_flight: int = 4,
        window_margin_s: float = 0.5,
        max_body_bytes: int = 16 << 20,
        ssl_context: ssl.SSLContext | None = None,
        trace_configs: Sequence[aiohttp.TraceConfig] = (),
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        api_key: str | None = None,
    ) -> None:
        if not markets:
            raise ConfigError("BinanceRest: no markets")
        # OpenTelemetry tracer, set by the engine when tracing is on: one span per request
        self.tracer: Any = None
        if request_timeout_s <= 0 or retry_deadline_s < 0:
            raise ConfigError("BinanceRest: request_timeout_s > 0 and retry_deadline_s >= 0")
        if not 0 < backoff_initial_s <= backoff_max_s:
            raise ConfigError("BinanceRest: 0 < backoff_initial_s <= backoff_max_s")
        if max_pending < 1 or max_in_flight < 1 or window_margin_s < 0:
            raise ConfigError("BinanceRest: max_pending >= 1, max_in_flight >= 1, margin >= 0")
        self._markets: dict[str, _Market] = {}
        for name, cfg in markets.items():
            if name not in _PATHS:
                raise ConfigError(f"BinanceRest: unknown market {name!r} (one of {list(_PATHS)})")
            if cfg.weight_limit_per_minute < 1 or not 0 < cfg.budget_fraction <= 1:
                raise ConfigError(f"binance.{name}: weight limit >= 1 and 0 < fraction <= 1")
            self._markets[name] = _Market(
                name=name,
                cfg=cfg,
                base_url=_check_url(name, cfg.base_url),
                budget=cfg.budget,
                parser=FrameParser(venue=cfg.venue, market=name, max_frame_bytes=max_body_bytes),
            )
            depth_limit(name, cfg.depth_limit, cfg.depth_limit)  # validates it
        self.request_timeout_s = request_timeout_s
        self.retry_deadline_s = retry_deadline_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.max_pending = max_pending
        self.max_in_flight = max_in_flight
        self.window_margin_s = window_margin_s
        self._ssl = _check_ssl(ssl_context)
        self._trace_configs = list(trace_configs)
        self._clock = clock
        # (market, endpoint) -> latency histogram; endpoints are the keys of _PATHS
        self._latency: dict[tuple[str, str], Histogram] = {}
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        self._seq = itertools.count()
        self._ban_until = 0.0
        self._bans = 0
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        # sent only with historicalTrades (MARKET_DATA on the futures markets)
        self.api_key = api_key or None
        # parsers of REST trade bodies (times in ms: no X-MBX-TIME-UNIT is sent)
        self._trade_parsers: dict[str, FrameParser] = {}

    @classmethod
    def from_config(cls, cfg: BinanceConfig, **options: Any) -> BinanceRest:
        """A client for ``cfg.markets`` (``binance.<market>`` sections); options as __init__."""
        markets: dict[str, RestMarket] = {}
        for name in cfg.markets:
            section = cfg.market(name)
            markets[name] = RestMarket(
                base_url=section.rest_base_url,
                weight_limit_per_minute=section.rest_weight_limit_per_minute,
                budget_fraction=section.rest_weight_budget_fraction,
                depth_limit=section.depth_snapshot_limit,
                venue=getattr(section, "venue", "binance"),
            )
        return cls(markets, **options)

    # -- public API

    async def depth_snapshot(
        self,
        market: str,
        symbol: str,
        limit: int | None = None,
        *,
        urgent: bool = False,
        low: bool = False,
        on_sent: Callable[[], None] | None = None,
    ) -> BookDepth:
        """A REST depth snapshot as a ``book_snapshot`` event (``source == "rest"``).

        ``limit`` is rounded up as ``depth_limit`` says; ``urgent`` (a book out of sync)
        puts the request ahead of every non-urgent one of its market, ``low`` (a book
        audit) behind every other one.  ``on_sent`` is called once, when the weight
        budget lets the request out and it is first sent: the snapshot is taken after
        that moment (the Conductor buffers little until then, docs/conductor.md).
        """
        st = self._market(market)
        levels = depth_limit(market, limit, st.cfg.depth_limit)
        sym = symbol.upper()
        body = await self._request(
            st,
            "depth",
            {"symbol": sym, "limit": str(levels)},
            depth_weight(market, levels),
            urgent,
            PRIORITY_AUDIT if low else None,
            on_sent,
        )
        try:
            return st.parser.parse_rest_depth(body, sym, time.time_ns())
        except ParseError:
            st.parse_errors += 1
            raise

    async def exchange_info(self, market: str) -> dict[str, Any]:
        """The market's exchangeInfo body, decoded."""
        st = self._market(market)
        body = await self._request(st, "exchangeInfo", {}, EXCHANGE_INFO_WEIGHT[market], False)
        try:
            obj = json.loads(body)
        except ValueError as exc:
            st.parse_errors += 1
            raise ParseError(f"{market} exchangeInfo: not valid JSON") from exc
        if not isinstance(obj, dict):
            st.parse_errors += 1
            raise ParseError(f"{market} exchangeInfo: not a JSON object")
        return obj

    async def trades_from(
        self, market: str, symbol: str, kind: str, from_id: int, limit: int | None = None
    ) -> list[Trade]:
        """Trades of ``kind`` ("trade": historicalTrades, "agg_trade": aggTrades) from id
        ``from_id`` on, oldest first, at most ``limit`` (default and cap: the endpoint's
        largest, TRADES_BY_ID), as canonical events with ``source == "rest"`` and the keys
        their live copies have.  Scheduled below book snapshots (PRIORITY_BACKGROUND)."""
        st = self._market(market)
        endpoint = TRADE_ENDPOINTS.get(kind)
        if endpoint is None:
            raise RestRequestError(f"no REST endpoint serves {kind!r} by id")
        weight, largest = TRADES_BY_ID[market][endpoint]
        n = largest if limit is None else limit
        if not 1 <= n <= largest or from_id < 0:
            raise RestRequestError(
                f"{market} {endpoint}: limit 1..{largest} and fromId >= 0, got {n}, {from_id}"
            )
        sym = symbol.upper()
        params = {"symbol": sym, "fromId": str(from_id), "limit": str(n)}
        body = await self._request(st, endpoint, params, weight, False, PRIORITY_BACKGROUND)
        try:
            return self._parse_trades(market, st.cfg.venue, sym, kind, body)
        except ParseError:
            st.parse_errors += 1
            raise

    def _parse_trades(
        self, market: str, venue: str, sym: str, kind: str, body: bytes
    ) -> list[Trade]:
        """A REST trade list as events: each item becomes the stream frame Binance would
        have sent (docs/rest.md has the field map) and goes through the frame parser."""
        try:
            items = json.loads(body)
        except ValueError as exc:
            raise ParseError(f"{market} {kind} by id: not valid JSON") from exc
        if not isinstance(items, list):
            raise ParseError(f"{market} {kind} by id: not a JSON list")
        parser = self._trade_parsers.get(market)
        if parser is None:
            parser = self._trade_parsers[market] = FrameParser(venue=venue, market=market)
        now = time.time_ns()
        out: list[Trade] = []
        for item in items:
            if not isinstance(item, dict):
                raise ParseError(f"{market} {kind} by id: an item is not an object")
            try:
                if kind == "trade":
                    frame = {
                        "e": "trade", "s": sym, "t": item["id"], "p": item["price"],
                        "q": item["qty"], "T": item["time"], "m": item["isBuyerMaker"],
                    }  # fmt: skip
                else:
                    frame = {
                        "e": "aggTrade", "s": sym, "a": item["a"], "p": item["p"],
                        "q": item["q"], "f": item["f"], "l": item["l"], "T": item["T"],
                        "m": item["m"],
                    }  # fmt: skip
            except KeyError as exc:
                raise ParseError(f"{market} {kind} by id: item lacks {exc}") from None
            events = parser.parse(json.dumps(frame, separators=(",", ":")), now)
            if len(events) != 1 or not isinstance(events[0], Trade):
                raise ParseError(f"{market} {kind} by id: item is not a trade: {item!r}")
            out.append(as_backfilled(events[0]))
        out.sort(key=lambda ev: ev.trade_id)
        return out

    async def close(self) -> None:
        """Stop the schedulers, fail queued requests with ``RestClosed``, close the session."""
        if self._closed:
            return
        self._closed = True
        for st in self._markets.values():
            task, st.task = st.task, None
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for _, _, _, fut in st.heap:
                if not fut.done():
                    fut.set_exception(RestClosed("BinanceRest closed"))
            st.heap.clear()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> BinanceRest:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def markets(self) -> tuple[str, ...]:
        return tuple(self._markets)

    def budget(self, market: str) -> int:
        """The weight per minute window this client allows itself on ``market``."""
        return self._market(market).budget

    def headroom(self, market: str) -> int:
        """Weight still free in ``market``'s current window (budget minus use and
        queued requests); 0 while backed off or banned."""
        st = self._market(market)
        now = self._clock()
        if self._ban_until > now or st.backoff_until > now:
            return 0
        st.roll(now)
        queued = sum(w for _, _, w, fut in st.heap if not fut.done())
        return max(0, st.budget - st.estimate() - queued)

    def banned_until(self) -> float:
        """``clock`` time a 418 ban ends (0 or past: not banned)."""
        return self._ban_until

    def stats(self, market: str) -> dict[str, int | float]:
        """Counters and gauges of one market, for metrics and tests."""
        st = self._market(market)
        st.roll(self._clock())
        return {
            "requests": st.requests,
            "responses": st.responses,
            "retries": st.retries,
            "rate_limited": st.rate_limited,
            "banned": st.banned,
            "server_errors": st.server_errors,
            "timeouts": st.timeouts,
            "connection_errors": st.connection_errors,
            "status_errors": st.status_errors,
            "parse_errors": st.parse_errors,
            "failures": st.failures,
            "rejected": st.rejected,
            "deferred": st.deferred,
            "urgent": st.urgent,
            "weight_used": st.weight_used,
            "window_weight": st.estimate(),
            "server_weight": st.last_server_weight,
            "budget": st.budget,
            "weight_limit": st.cfg.weight_limit_per_minute,
            "queue_depth": sum(1 for *_, fut in st.heap if not fut.done()),
            "outstanding": st.outstanding,
            "in_flight": st.in_flight,
            "bans": self._bans,
        }

    def samples(self) -> Iterator[Sample]:
        """The counters as telemetry ``Sample``s (``meltica_rest_*``, label ``market``;
        declared in meltica/telemetry/catalog.py)."""
        for market in self._markets:
            yield from catalog.stats_samples("rest", self.stats(market), market=market)
            rejects = self._markets[market].parser.rejects
            for reason in PARSE_REASONS:
                yield catalog.sample(
                    "rest_parse_rejects_total", rejects.get(reason, 0), market=market, reason=reason
                )
        yield catalog.sample("rest_bans_total", self._bans)

    def histograms(self) -> Iterator[Histogram]:
        """Request latency per market and endpoint (send to whole body read)."""
        yield from self._latency.values()

    # -- request path

    def _market(self, market: str) -> _Market:
        st = self._markets.get(market)
        if st is None:
            raise RestRequestError(f"market {market!r} not configured (have {list(self._markets)})")
        return st

    async def _request(
        self,
        st: _Market,
        endpoint: str,
        params: dict[str, str],
        weight: int,
        urgent: bool,
        priority: int | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> bytes:
        span = start_span(
            self.tracer,
            f"rest {endpoint}",
            kind=SpanKind.CLIENT,
            attributes={
                "meltica.market": st.name,
                "meltica.symbol": params.get("symbol", ""),
                "meltica.rest.weight": weight,
                "meltica.rest.urgent": urgent,
                "http.request.method": "GET",
            },
        )
        # ended inside use_span, which then finds it ended and does not record the error again
        with contextlib.nullcontext() if span is None else trace.use_span(span, end_on_exit=False):
            try:
                body = await self._scheduled(
                    st, endpoint, params, weight, urgent, priority, on_sent
                )
            except BaseException as exc:
                if span is not None:
                    span.set_attribute("meltica.rest.server_weight", st.last_server_weight)
                    status = getattr(exc, "status", None)
                    if isinstance(status, int):
                        span.set_attribute("http.response.status_code", status)
                    end_span(span, error=exc)
                raise
        if span is None:
            return body
        span.set_attributes(
            {"http.response.status_code": 200, "meltica.rest.server_weight": st.last_server_weight}
        )
        end_span(span)
        return body

    async def _scheduled(
        self,
        st: _Market,
        endpoint: str,
        params: dict[str, str],
        weight: int,
        urgent: bool,
        priority: int | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> bytes:
        if self._closed:
            raise RestClosed("BinanceRest closed")
        if weight > st.budget:
            st.rejected += 1
            raise RestRequestError(
                f"{st.name} {endpoint}: weight {weight} exceeds the budget of "
                f"{st.budget} per minute"
            )
        if st.outstanding >= self.max_pending:
            st.rejected += 1
            raise RestQueueFull(
                f"{st.name}: {st.outstanding} REST requests outstanding (max_pending="
                f"{self.max_pending})"
            )
        url = st.base_url + _PATHS[st.name][endpoint]
        what = f"{st.name} {endpoint} {params.get('symbol', '')}".rstrip()
        where = fields(market=st.name, symbol=params.get("symbol") or None)
        if priority is None:
            priority = PRIORITY_URGENT if urgent else PRIORITY_NORMAL
        seq = next(self._seq)
        st.urgent += urgent
        st.outstanding += 1
        deadline: float | None = None
        attempt = 0
        failure = ""
        cause: BaseException | None = None
        try:
            while True:
                window = await self._grant(st, priority, seq, weight)
                if deadline is None:
                    deadline = self._clock() + self.retry_deadline_s
                    if on_sent is not None:
                        on_sent()
                attempt += 1
                try:
                    answer = await self._send(st, endpoint, url, params, weight)
                except (TimeoutError, aiohttp.ClientError) as exc:
                    if isinstance(exc, TimeoutError):
                        st.timeouts += 1
                    else:
                        st.connection_errors += 1
                    failure = f"{type(exc).__name__}: {exc}"
                    cause = exc
                else:
                    cause = None
                    self._observe(st, window, answer.headers)
                    status = answer.status
                    if self.tracer is not None:
                        trace.get_current_span().add_event(
                            "response", {"http.response.status_code": status, "attempt": attempt}
                        )
                    if status == 200:
                        return answer.body
                    failure = f"HTTP {status}"
                    if status in (429, 418):
                        self._limited(st, status, answer, deadline, what, where)
                    elif status >= 500 or status == 408:
                        st.server_errors += 1
                    else:
                        st.status_errors += 1
                        code, msg = _binance_error(answer.body)
                        raise RestStatusError(
                            f"{what}: HTTP {status} code={code} {msg}", status, code
                        )
                    if status in (429, 418):
                        st.retries += 1
                        continue  # the scheduler holds the request until the back-off ends
                delay = min(self.backoff_max_s, self.backoff_initial_s * 2 ** (attempt - 1))
                delay *= 0.5 + 0.5 * self._rng.random()
                if self._clock() + delay > deadline:
                    st.failures += 1
                    raise RestDeadlineError(
                        f"{what}: no success in {attempt} attempts within "
                        f"{self.retry_deadline_s} s (last: {failure})"
                    ) from cause
                st.retries += 1
                log.debug("%s: %s, retry %d in %.2f s", what, failure, attempt, delay, extra=where)
                await self._sleep(delay)
        finally:
            st.outstanding -= 1

    def _limited(
        self,
        st: _Market,
        status: int,
        answer: _Answer,
        deadline: float,
        what: str,
        where: dict[str, str],
    ) -> None:
        """Record a 429 (this market backs off) or 418 (every market stops) and check the
        request's deadline."""
        now = self._clock()
        st.roll(now)
        after = _retry_after(answer.headers)
        _, msg = _binance_error(answer.body)
        if status == 418:
            st.banned += 1
            until = now + (after if after is not None else DEFAULT_BAN_S)
            if until > self._ban_until:
                self._bans += 1
                self._ban_until = until
                log.warning(
                    "%s: IP banned for %.0f s, all REST requests stopped: %s",
                    what,
                    until - now,
                    msg,
                    extra=where,
                )
            if self._ban_until > deadline:
                st.failures += 1
                left = self._ban_until - now
                raise RestBanned(f"{what}: IP banned for {left:.0f} s: {msg}", left)
            return
        st.rate_limited += 1
        if after is None:
            after = (st.window + 1) * WINDOW_S - now
        until = now + after
        st.backoff_until = max(st.backoff_until, until)
        log.warning("%s: rate limited (429), backing off %.1f s: %s", what, after, msg, extra=where)
        if st.backoff_until > deadline:
            st.failures += 1
            raise RestRateLimited(f"{what}: rate limited for {after:.0f} s: {msg}", after)

    def _observe(self, st: _Market, window: int, headers: Mapping[str, str]) -> None:
        st.responses += 1
        raw = headers.get(WEIGHT_HEADER)
        if raw is None or not raw.isdigit():
            return
        used = int(raw)
        st.last_server_weight = used
        st.roll(self._clock())
        if window == st.window:  # a count from an earlier window says nothing about this one
            st.seen_used = max(st.seen_used, used)

    async def _send(
        self, st: _Market, endpoint: str, url: str, params: Mapping[str, str], weight: int
    ) -> _Answer:
        st.requests += 1
        try:
            session = self._open_session()
            timeout = aiohttp.ClientTimeout(total=self.request_timeout_s)
            t0 = time.perf_counter()
            headers = None
            if endpoint == "historicalTrades" and self.api_key is not None:
                headers = {API_KEY_HEADER: self.api_key}
            async with session.get(url, params=params, timeout=timeout, headers=headers) as resp:
                body = await resp.read()
                self._observe_latency(st.name, endpoint, time.perf_counter() - t0)
                return _Answer(resp.status, resp.headers, body)
        finally:
            self._release(st, weight)

    def _observe_latency(self, market: str, endpoint: str, seconds: float) -> None:
        h = self._latency.get((market, endpoint))
        if h is None:
            h = catalog.histogram("rest_request_duration_seconds", market=market, endpoint=endpoint)
            self._latency[(market, endpoint)] = h
        h.observe(seconds)

    def _release(self, st: _Market, weight: int) -> None:
        st.in_flight -= 1
        st.in_flight_weight -= weight
        st.wake.set()

    def _open_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RestClosed("BinanceRest closed")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=0),
                trace_configs=self._trace_configs or None,
                trust_env=False,
                headers={"User-Agent": "meltica"},
            )
            # aiohttp silently resends an idempotent request once when the connection drops
            # (RFC 9112 §9.3.1); Binance would charge that hidden request's weight outside
            # the scheduler.  Every resend must be ours: counted, budgeted, backed off.
            if hasattr(self._session, "_retry_connection"):
                self._session._retry_connection = False
        return self._session

    # -- scheduler

    async def _grant(self, st: _Market, priority: int, seq: int, weight: int) -> int:
        """Wait for the scheduler to admit a request of ``weight``; returns its window."""
        if self._closed:
            raise RestClosed("BinanceRest closed")
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        heapq.heappush(st.heap, (priority, seq, weight, fut))
        if st.task is None:
            st.task = asyncio.create_task(self._schedule(st), name=f"meltica-rest-{st.name}")
        st.wake.set()
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release(st, weight)  # granted, then cancelled before it could run
            raise

    def _hold(self, st: _Market, weight: int) -> float:
        """Seconds the head request must wait (0: admit now)."""
        now = self._clock()
        wait = max(self._ban_until - now, st.backoff_until - now)
        if wait > 0:
            return wait
        st.roll(now)
        if st.estimate() + weight > st.budget:
            return (st.window + 1) * WINDOW_S + self.window_margin_s - now
        return 0.0

    async def _schedule(self, st: _Market) -> None:
        while True:
            while st.heap and st.heap[0][3].done():  # cancelled by its caller
                heapq.heappop(st.heap)
            if not st.heap or st.in_flight >= self.max_in_flight:
                st.wake.clear()
                await st.wake.wait()
                continue
            weight = st.heap[0][2]
            wait = self._hold(st, weight)
            if wait > 0:
                st.deferred += 1
                log.debug(
                    "%s: REST scheduler holds %.2f s", st.name, wait, extra=fields(market=st.name)
                )
                await self._sleep(wait)
                continue
            _, _, _, fut = heapq.heappop(st.heap)
            st.own_used += weight
            st.weight_used += weight
            st.in_flight += 1
            st.in_flight_weight += weight
            fut.set_result(st.window)

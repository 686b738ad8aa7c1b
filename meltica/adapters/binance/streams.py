"""Meltica channel names <-> Binance stream names, and the route a stream's events carry.

The one place that knows Binance's stream vocabulary for subscriptions.  A *channel* is
Meltica's name as config.py validates it (``trade``, ``agg_trade``, ``book_ticker``,
``depth``, ``depth5|10|20``, ``ticker``, ``ticker_1h|4h|1d``, ``mini_ticker``,
``mark_price``, ``liquidation``, ``kline_<interval>``); a *stream* is Binance's
(``btcusdt@aggTrade``, ``btcusdt@depth@100ms``, ``btcusdt@kline_1m``, ...).  A *route*
is what the events of a stream carry: event kind plus qualifier (kline interval, ticker
window); the Dispatcher keys its table by it.  ``meltica._core.parser.classify_stream``
reads the same names on the hot path; tests keep the two consistent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

from meltica.config import KLINE_INTERVALS, SPOT_STREAMS, USDM_STREAMS
from meltica.errors import MelticaError

__all__ = [
    "DEPTH_SPEEDS_MS",
    "MARKETS",
    "StreamError",
    "StreamRoute",
    "channel_of",
    "channels",
    "is_channel",
    "path_class",
    "route_of",
    "stream_name",
]


class StreamError(MelticaError, ValueError):
    """A channel, stream name, market or depth speed Meltica does not know."""

    reason = "stream"


PathClass = Literal["public", "market"]

MARKETS: Final = ("spot", "usdm", "coinm")
# COIN-M streams are USD-M's (same payloads, symbols like btcusd_perp)
_FIXED_CHANNELS: Final = {"spot": SPOT_STREAMS, "usdm": USDM_STREAMS, "coinm": USDM_STREAMS}
# Update speeds Binance offers for depth streams; the first is the one a bare
# ``@depth`` / ``@depth<N>`` stream has (spot 1000 ms, futures 250 ms).  Futures
# ``@depth@0ms`` is the real-time stream older sessions (hftbacktest) recorded.
DEPTH_SPEEDS_MS: Final = {
    "spot": (1000, 100),
    "usdm": (250, 100, 500, 0),
    "coinm": (250, 100, 500, 0),
}
# Speeds only read, never asked for.
_READ_ONLY_SPEEDS_MS: Final = {"spot": (), "usdm": (), "coinm": ()}

# channel -> Binance channel part of the stream name (kline_<i>, ticker_<w> keep theirs)
_TO_BINANCE: Final = {
    "trade": "trade",
    "agg_trade": "aggTrade",
    "book_ticker": "bookTicker",
    "depth": "depth",
    "depth5": "depth5",
    "depth10": "depth10",
    "depth20": "depth20",
    "ticker": "ticker",
    "mini_ticker": "miniTicker",
    "mark_price": "markPrice",
    "liquidation": "forceOrder",
}
_FROM_BINANCE: Final = {v: k for k, v in _TO_BINANCE.items()}
_DEPTH_CHANNELS: Final = frozenset(("depth", "depth5", "depth10", "depth20"))
_PUBLIC_CHANNELS: Final = _DEPTH_CHANNELS | {"book_ticker"}
_TICKER_WINDOWS: Final = {"ticker": "24h", "mini_ticker": "mini"}
# Mark price is asked for at 1 s (the default stream is 3 s); both names read back.
_MARK_PRICE_SUFFIX: Final = "@1s"
_SYMBOL_RE: Final = re.compile(r"[a-z0-9][a-z0-9_.\-]*")


@dataclass(frozen=True, slots=True)
class StreamRoute:
    """What a channel's events carry: ``kind`` (event kind name) and ``qualifier``.

    ``qualifier`` is the kline interval or ticker window (events carry them), else None.
    Partial depth (``depth5|10|20``) gives ``book_snapshot`` events that do not say how
    many levels were asked for, so the three share one route; ``levels`` keeps the
    number for information.
    """

    kind: str
    qualifier: str | None = None
    levels: int | None = None


def _check_market(market: str) -> None:
    if market not in _FIXED_CHANNELS:
        raise StreamError(f"unknown market {market!r} (known: {', '.join(MARKETS)})")


def is_channel(market: str, channel: str) -> bool:
    """True if ``channel`` is a valid channel name for ``market``."""
    _check_market(market)
    if channel in _FIXED_CHANNELS[market]:
        return True
    kline, _, interval = channel.partition("_")
    return kline == "kline" and interval in KLINE_INTERVALS[market]


def channels(market: str) -> frozenset[str]:
    """Every channel of ``market``, each ``kline_<interval>`` spelled out."""
    _check_market(market)
    klines = {f"kline_{i}" for i in KLINE_INTERVALS[market]}
    return frozenset(_FIXED_CHANNELS[market] | klines)


def _check_channel(market: str, channel: str) -> None:
    if not is_channel(market, channel):
        raise StreamError(f"unknown {market} channel {channel!r}")


def route_of(market: str, channel: str) -> StreamRoute:
    """The route a channel's events carry (kind name, qualifier)."""
    _check_channel(market, channel)
    if channel in ("trade", "agg_trade", "book_ticker", "mark_price", "liquidation"):
        return StreamRoute(channel)
    if channel == "depth":
        return StreamRoute("book_delta")
    if channel in _DEPTH_CHANNELS:
        return StreamRoute("book_snapshot", None, int(channel[5:]))
    if channel.startswith("kline_"):
        return StreamRoute("kline", channel[6:])
    if channel in _TICKER_WINDOWS:
        return StreamRoute("ticker", _TICKER_WINDOWS[channel])
    return StreamRoute("ticker", channel[7:])  # ticker_1h|4h|1d


def path_class(market: str, channel: str) -> PathClass | None:
    """USD-M routed path of a channel: ``public`` (book_ticker, depth*) or ``market``.

    None for spot, which has one path.
    """
    _check_channel(market, channel)
    if market != "usdm":
        return None
    return "public" if channel in _PUBLIC_CHANNELS else "market"


def stream_name(market: str, symbol: str, channel: str, *, depth_speed_ms: int = 100) -> str:
    """The Binance stream of ``channel`` for ``symbol`` (any case).

    ``depth_speed_ms`` applies to depth channels: the market's default speed gives the
    bare name (spot ``btcusdt@depth`` = 1000 ms), others an ``@<n>ms`` suffix.
    """
    _check_channel(market, channel)
    sym = symbol.lower()
    if _SYMBOL_RE.fullmatch(sym) is None:
        raise StreamError(f"{symbol!r} is not a Binance symbol")
    if channel.startswith(("kline_", "ticker_")):
        return f"{sym}@{channel}"
    name = f"{sym}@{_TO_BINANCE[channel]}"
    if channel in _DEPTH_CHANNELS:
        speeds = DEPTH_SPEEDS_MS[market]
        if depth_speed_ms not in speeds:
            raise StreamError(
                f"{market} depth speed must be one of {', '.join(map(str, speeds))} ms, "
                f"got {depth_speed_ms}"
            )
        if depth_speed_ms != speeds[0]:
            name += f"@{depth_speed_ms}ms"
    elif channel == "mark_price":
        name += _MARK_PRICE_SUFFIX
    return name


def channel_of(market: str, stream: str) -> tuple[str, str]:
    """``(SYMBOL, channel)`` of a per-symbol Binance stream name; StreamError otherwise."""
    _check_market(market)
    base, sep, rest = stream.partition("@")
    if not sep or _SYMBOL_RE.fullmatch(base) is None:
        raise StreamError(f"{stream!r} is not a per-symbol {market} stream")
    part, _, suffix = rest.partition("@")
    channel = part if part.startswith(("kline_", "ticker_")) else _FROM_BINANCE.get(part, "")
    ok = is_channel(market, channel)
    if ok and suffix:
        if channel in _DEPTH_CHANNELS:
            # the default speed has no suffix (``@depth``, never ``@depth@1000ms``)
            speeds = (*DEPTH_SPEEDS_MS[market][1:], *_READ_ONLY_SPEEDS_MS[market])
            ok = suffix in {f"{s}ms" for s in speeds}
        else:
            ok = channel == "mark_price" and "@" + suffix == _MARK_PRICE_SUFFIX
    if not ok:
        raise StreamError(f"unknown {market} stream {stream!r}")
    return base.upper(), channel

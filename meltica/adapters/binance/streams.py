"""Binance's vocabulary: channel names, stream names, symbol rules and routes.

The one home of these facts.  A *channel* is Meltica's name, the same in config, in
``ctl`` and in ``record`` (``trade``, ``agg_trade``, ``book_ticker``, ``depth``,
``depth5|10|20``, ``ticker``, ``ticker_1h|4h|1d``, ``mini_ticker``, ``mark_price``,
``liquidation``, ``kline_<interval>``); a *stream* is Binance's (``btcusdt@aggTrade``,
``btcusdt@depth@100ms``, ``btcusdt@kline_1m``, ...).  A *route* is what the events of a
stream carry: event kind plus qualifier (kline interval, ticker window); the Dispatcher
keys its table by it.  A *symbol* is checked and spelled by :func:`is_symbol`,
:func:`symbol_key` and :func:`stream_symbol`.  config.py validates with this module;
the Dispatcher receives :data:`VOCABULARY` from the engine (it does not import the
adapter).  ``meltica._core.parser.classify_stream`` reads the same names on the hot
path; tests keep the two consistent.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from meltica.errors import MelticaError

__all__ = [
    "BOOK_CHANNEL",
    "DEPTH_SPEEDS_MS",
    "KLINE_INTERVALS",
    "MARKETS",
    "SPOT_CHANNELS",
    "SYMBOL_RULE",
    "USDM_CHANNELS",
    "VOCABULARY",
    "BinanceVocabulary",
    "StreamError",
    "StreamRoute",
    "channel_list",
    "channel_of",
    "channels",
    "is_channel",
    "is_symbol",
    "path_class",
    "route_of",
    "stream_name",
    "stream_symbol",
    "symbol_key",
]


class StreamError(MelticaError, ValueError):
    """A channel, stream name, symbol, market or depth speed Meltica does not know."""

    reason = "stream"


PathClass = Literal["public", "market"]

MARKETS: Final = ("spot", "usdm", "coinm")
_COMMON_CHANNELS: Final = (
    "trade",
    "agg_trade",
    "book_ticker",
    "depth",
    "depth5",
    "depth10",
    "depth20",
    "ticker",
    "mini_ticker",
)
SPOT_CHANNELS: Final = frozenset((*_COMMON_CHANNELS, "ticker_1h", "ticker_4h", "ticker_1d"))
USDM_CHANNELS: Final = frozenset((*_COMMON_CHANNELS, "mark_price", "liquidation"))
# COIN-M streams are USD-M's (same payloads, symbols like btcusd_perp)
_FIXED_CHANNELS: Final = {"spot": SPOT_CHANNELS, "usdm": USDM_CHANNELS, "coinm": USDM_CHANNELS}
_FUTURES_INTERVALS: Final = ("1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h")
# ``kline_<i>`` is a channel for every interval of its market.
KLINE_INTERVALS: Final[Mapping[str, frozenset[str]]] = {
    "spot": frozenset(("1s", *_FUTURES_INTERVALS, "1d", "3d", "1w", "1M")),
    "usdm": frozenset((*_FUTURES_INTERVALS, "1d", "3d", "1w", "1M")),
    "coinm": frozenset((*_FUTURES_INTERVALS, "1d", "3d", "1w", "1M")),
}
# The channel whose (un)subscription starts / stops a market's order book.
BOOK_CHANNEL: Final = "depth"
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

# Symbols: letters of any script (Binance lists symbols such as 币安人生USDT), ASCII
# digits, and "_" joining a futures contract's parts (btcusd_perp, btcusdt_251226).
# Only ASCII letters have a case: REST and payloads spell them upper, stream names
# lower.  Unicode case mapping is not used, since it is not reversible (ß -> SS).
_DIGITS: Final = frozenset(string.digits)
_TO_UPPER: Final = str.maketrans(string.ascii_lowercase, string.ascii_uppercase)
_TO_LOWER: Final = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
SYMBOL_RULE: Final = "letters, digits and '_' only, not starting with '_', e.g. 'btcusdt'"


def is_symbol(symbol: str) -> bool:
    """True if ``symbol`` (any ASCII case) is spelled like a Binance symbol."""
    return (
        bool(symbol)
        and symbol[0] != "_"
        and all(c.isalpha() or c in _DIGITS or c == "_" for c in symbol)
    )


def _check_symbol(symbol: str) -> None:
    if not is_symbol(symbol):
        raise StreamError(f"{symbol!r} is not a Binance symbol ({SYMBOL_RULE})")


def symbol_key(symbol: str) -> str:
    """The symbol as REST, payloads and the dispatch table spell it (``BTCUSDT``).

    StreamError if it is not a symbol.
    """
    _check_symbol(symbol)
    return symbol.translate(_TO_UPPER)


def stream_symbol(symbol: str) -> str:
    """The symbol as stream names and config spell it (``btcusdt``); StreamError if invalid."""
    _check_symbol(symbol)
    return symbol.translate(_TO_LOWER)


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


def channel_list(market: str) -> str:
    """The channels of ``market`` for an error message (klines as ``kline_<interval>``)."""
    _check_market(market)
    return f"{', '.join(sorted(_FIXED_CHANNELS[market]))}, kline_<interval>"


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
    sym = stream_symbol(symbol)
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
    # stream names spell symbols in lower case: upper-case ASCII is not one
    if not sep or not is_symbol(base) or base.translate(_TO_LOWER) != base:
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
    return base.translate(_TO_UPPER), channel


class BinanceVocabulary:
    """This module as one object, handed to whoever needs Binance's names.

    The Dispatcher receives it (its ``Vocabulary`` protocol) instead of importing the
    adapter; every method is the module function of the same name.
    """

    markets: Final = MARKETS
    book_channel: Final = BOOK_CHANNEL

    is_channel = staticmethod(is_channel)
    channels = staticmethod(channels)
    channel_list = staticmethod(channel_list)
    route_of = staticmethod(route_of)
    stream_name = staticmethod(stream_name)
    channel_of = staticmethod(channel_of)
    is_symbol = staticmethod(is_symbol)
    symbol_key = staticmethod(symbol_key)
    stream_symbol = staticmethod(stream_symbol)


VOCABULARY: Final = BinanceVocabulary()

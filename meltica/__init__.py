"""Meltica: a Binance market-data gateway.

Frames from Binance become canonical, idempotent events (``meltica.Trade``,
``meltica.BookDepth``, ...) parsed by the compiled ``FrameParser``; the wire
format for brokers and files is ``meltica.wire``.  This module is the
friendly surface over the compiled ``meltica._core``.
"""

from importlib.metadata import PackageNotFoundError, version

from meltica._core.events import (
    KIND_NAMES,
    BookDepth,
    BookTicker,
    Control,
    Derived,
    Event,
    Fixed,
    Kline,
    Liquidation,
    MarkPrice,
    Ticker,
    Trade,
)
from meltica._core.parser import FrameParser, Reply, Route, classify_stream
from meltica.errors import MelticaError

try:
    __version__ = version("meltica-engine")
except PackageNotFoundError:  # running from a source tree without metadata
    __version__ = "0.0.0+unknown"

KINDS = tuple(k for k in KIND_NAMES if k)

__all__ = [
    "KINDS",
    "BookDepth",
    "BookTicker",
    "Control",
    "Derived",
    "Event",
    "Fixed",
    "FrameParser",
    "Kline",
    "Liquidation",
    "MarkPrice",
    "MelticaError",
    "Reply",
    "Route",
    "Ticker",
    "Trade",
    "__version__",
    "classify_stream",
]

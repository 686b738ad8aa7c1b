"""Meltica: a Binance market-data gateway.

Frames from Binance become canonical, idempotent events (``meltica.Trade``,
``meltica.BookDepth``, ...) parsed by the compiled ``FrameParser``; the wire
format for brokers and files is ``meltica.wire``.  This module is the
friendly surface over the compiled ``meltica._core``, and the door for
embedding the gateway: ``Engine(load_config(bus={"capacity": 1024}))``.
``Engine`` and ``load_config`` are imported on first use, so ``import
meltica`` (e.g. by a consumer using ``meltica.client``) stays light.
"""

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from meltica.config import Config, load_config
    from meltica.engine import Engine

try:
    __version__ = version("meltica-engine")
except PackageNotFoundError:  # running from a source tree without metadata
    __version__ = "0.0.0+unknown"

KINDS = tuple(k for k in KIND_NAMES if k)

# name -> module, imported when first asked for (the engine pulls in the whole gateway)
_LAZY = {"Config": "meltica.config", "Engine": "meltica.engine", "load_config": "meltica.config"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'meltica' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "KINDS",
    "BookDepth",
    "BookTicker",
    "Config",
    "Control",
    "Derived",
    "Engine",
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
    "load_config",
]

"""Binance's names have one home (meltica/adapters/binance/streams.py).

Config, the Dispatcher and the stream-name mapping accept and reject exactly the same
symbols and channels, and the Dispatcher gets them handed in: it imports no adapter.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterable

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from meltica._core.dispatch import DispatchTable
from meltica.adapters.binance import streams
from meltica.adapters.binance.streams import VOCABULARY, StreamError
from meltica.config import SpotConfig, UsdmConfig
from meltica.control import ControlRequest
from meltica.dispatcher import Dispatcher
from meltica.errors import ConfigError

# Letters of several scripts and cases, digits, and the separators the old rules differed on.
_SYMBOL_CHARS = "abcXYZ019_-./ 币安人生ßéÉ²\t@"


class _Exchange:
    async def subscribe(self, names: Iterable[str]) -> None:
        pass

    async def unsubscribe(self, names: Iterable[str]) -> None:
        pass

    def streams(self) -> frozenset[str]:
        return frozenset()


class _Everything:
    """A registry that knows every symbol: only the name rules decide."""

    def get(self, market: str, symbol: str) -> object:
        return object()


def _dispatcher_accepts(market: str, symbol: str, channel: str) -> bool:
    d = Dispatcher(
        DispatchTable(),
        {market: _Exchange()},
        _Everything(),
        lambda batch: None,
        vocabulary=VOCABULARY,
    )
    req = ControlRequest("subscribe", market, (symbol,), (channel,))
    reply = asyncio.run(d.subscribe(req))
    if not reply.ok:
        assert reply.error is not None
        assert "symbol" in reply.error or "channel" in reply.error, reply.error
    return reply.ok


def _config_accepts(market: str, *, symbol: str = "btcusdt", channel: str = "trade") -> bool:
    section = SpotConfig if market == "spot" else UsdmConfig
    try:
        section(symbols=(symbol,), streams=(channel,))
    except ConfigError:
        return False
    return True


def _stream_name_accepts(market: str, symbol: str, channel: str) -> bool:
    try:
        name = streams.stream_name(market, symbol, channel)
    except StreamError:
        return False
    # what the mapping builds it reads back, to the Dispatcher's spelling of the symbol
    assert streams.channel_of(market, name) == (streams.symbol_key(symbol), channel)
    return True


def test_the_dispatcher_imports_no_adapter() -> None:
    code = (
        "import sys, meltica.dispatcher.dispatcher; "
        "print(sorted(m for m in sys.modules if m.startswith('meltica.adapters')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == "[]"


@settings(max_examples=300, deadline=None)
@given(symbol=st.text(alphabet=_SYMBOL_CHARS, max_size=12) | st.text(max_size=8))
@example(symbol="btcusdt")
@example(symbol="BTCUSD_PERP")
@example(symbol="btcusdt_251226")
@example(symbol="币安人生USDT")  # listed by Binance: letters of any script
@example(symbol="btc-usdt")  # the old stream rule took '-' and '.', config did not
@example(symbol="btc.usdt")
@example(symbol="_btc")
@example(symbol="")
@example(symbol="BTC/USDT")
def test_config_dispatcher_and_stream_names_agree_on_symbols(symbol: str) -> None:
    expected = streams.is_symbol(symbol)
    assert _config_accepts("spot", symbol=symbol) is expected
    assert _dispatcher_accepts("spot", symbol, "trade") is expected
    assert _stream_name_accepts("spot", symbol, "trade") is expected


_CHANNELS = sorted(streams.channels("spot") | streams.channels("usdm"))
_NEAR_MISSES = ["aggTrade", "bookTicker", "kline_", "kline_1s ", "kline_2d", "depth15", "Trade"]


@settings(max_examples=300, deadline=None)
@given(
    market=st.sampled_from(["spot", "usdm"]),
    channel=st.sampled_from(_CHANNELS + _NEAR_MISSES) | st.text(max_size=10),
)
@example(market="usdm", channel="kline_1s")  # spot only
@example(market="spot", channel="mark_price")  # futures only
def test_config_dispatcher_and_stream_names_agree_on_channels(market: str, channel: str) -> None:
    expected = streams.is_channel(market, channel)
    assert _config_accepts(market, channel=channel) is expected
    assert _dispatcher_accepts(market, "BTCUSDT", channel) is expected
    assert _stream_name_accepts(market, "btcusdt", channel) is expected


def test_symbol_spellings() -> None:
    # ASCII letters have a case; other scripts are kept as written (no ß -> SS).
    assert streams.symbol_key("btcusd_perp") == "BTCUSD_PERP"
    assert streams.stream_symbol("BTCUSD_PERP") == "btcusd_perp"
    assert streams.symbol_key("币安人生usdt") == "币安人生USDT"
    assert streams.symbol_key("straße") == "STRAßE"
    assert SpotConfig(symbols=("币安人生USDT",)).symbols == ("币安人生usdt",)
    assert streams.stream_name("spot", "币安人生USDT", "trade") == "币安人生usdt@trade"
    with pytest.raises(StreamError, match="'btc-usdt' is not a Binance symbol"):
        streams.symbol_key("btc-usdt")
    # stream names spell symbols in lower case
    with pytest.raises(StreamError):
        streams.channel_of("spot", "BTCUSDT@trade")

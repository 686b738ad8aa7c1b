"""A channel has one name in the config (``binance.<market>.streams``), in ``ctl`` and in
``record``, and means the same stream in all three (meltica/adapters/binance/streams.py)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from meltica.adapters.binance import streams as vocabulary
from meltica.cli import DEFAULT_RECORD_STREAMS
from meltica.commands.ctl import CtlError, build_request
from meltica.config import load_config
from meltica.errors import ConfigError
from meltica.record import DEFAULT_STREAMS, streams_for

MARKETS = ("spot", "usdm")


def _ctl(market: str, channels: str) -> argparse.Namespace:
    return argparse.Namespace(op="subscribe", market=market, symbols="btcusdt", channels=channels)


@pytest.mark.parametrize("market", MARKETS)
def test_every_channel_is_accepted_alike_by_config_ctl_and_record(market: str) -> None:
    channels = sorted(vocabulary.channels(market))
    assert {"trade", "agg_trade", "book_ticker", "depth"} <= set(channels)
    for channel in channels:
        config = load_config(overrides=[f"binance.{market}.streams=[{channel}]"])
        assert config.binance.market(market).streams == (channel,)
        assert build_request(_ctl(market, channel)).channels == (channel,)
        speed = config.binance.market(market).depth_speed_ms
        (name,) = streams_for(["BTCUSDT"], [channel], market, speed)
        # record subscribes to the stream the gateway subscribes to for the channel
        assert name == vocabulary.stream_name(market, "btcusdt", channel, depth_speed_ms=speed)
        assert vocabulary.channel_of(market, name) == ("BTCUSDT", channel)


@pytest.mark.parametrize("market", MARKETS)
def test_a_binance_spelling_is_not_a_channel_in_config_or_ctl(market: str) -> None:
    for spelling in ("bookTicker", "aggTrade", "depth@100ms"):
        with pytest.raises(ConfigError, match=f"binance.{market}.streams"):
            load_config(overrides=[f"binance.{market}.streams=[{spelling}]"])
        with pytest.raises(CtlError, match="--channels"):
            build_request(_ctl(market, spelling))


def test_record_defaults_are_channels_the_config_accepts() -> None:
    assert DEFAULT_RECORD_STREAMS == DEFAULT_STREAMS  # the CLI's copy of the default
    assert all(vocabulary.is_channel("spot", c) for c in DEFAULT_STREAMS)
    load_config(overrides=[f"binance.spot.streams=[{','.join(DEFAULT_STREAMS)}]"])


def test_ctl_cli_names_an_unknown_channel() -> None:
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "meltica", "ctl", "subscribe", "--market", "usdm"),
            *("--symbols", "btcusdt", "--channels", "book_ticker,bookTicker"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ.copy(),
    )
    assert proc.returncode == 2
    assert "bookTicker" in proc.stderr and "book_ticker" in proc.stderr  # the known list
    assert "Traceback" not in proc.stderr

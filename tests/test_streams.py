"""Channel <-> Binance stream mapping (meltica/adapters/binance/streams.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meltica._core.events import KIND_IDS
from meltica._core.parser import classify_stream
from meltica.adapters.binance import streams
from meltica.adapters.binance.streams import (
    KLINE_INTERVALS,
    SPOT_CHANNELS,
    USDM_CHANNELS,
    StreamError,
)
from meltica.adapters.binance.ws import stream_route
from meltica.replay.source import CaptureSource

PARTIAL_DEPTH_ROUTE = 100  # parser's route kind for <s>@depth<N>
ALL_CHANNELS = [(m, c) for m in ("spot", "usdm") for c in sorted(streams.channels(m))]


def test_channels_are_what_config_accepts() -> None:
    for market, fixed in (("spot", SPOT_CHANNELS), ("usdm", USDM_CHANNELS)):
        klines = {f"kline_{i}" for i in KLINE_INTERVALS[market]}
        assert streams.channels(market) == fixed | klines
    assert "mark_price" not in streams.channels("spot")
    assert "ticker_1h" not in streams.channels("usdm")
    assert "kline_1s" not in streams.channels("usdm")


@pytest.mark.parametrize(("market", "channel"), ALL_CHANNELS)
def test_round_trip_every_channel(market: str, channel: str) -> None:
    for speed in streams.DEPTH_SPEEDS_MS[market]:
        name = streams.stream_name(market, "BTCUSDT", channel, depth_speed_ms=speed)
        assert name.startswith("btcusdt@")  # stream names carry lower-case symbols
        assert streams.channel_of(market, name) == ("BTCUSDT", channel)


@pytest.mark.parametrize(("market", "channel"), ALL_CHANNELS)
def test_route_agrees_with_parser(market: str, channel: str) -> None:
    route = streams.route_of(market, channel)
    kind, symbol, qualifier = classify_stream(streams.stream_name(market, "ethusdt", channel))
    assert symbol == "ETHUSDT"
    if kind == PARTIAL_DEPTH_ROUTE:
        assert route.kind == "book_snapshot"
        assert route.qualifier is None
        assert str(route.levels) == qualifier
    else:
        assert KIND_IDS[route.kind] == kind
        assert route.qualifier == qualifier


@pytest.mark.parametrize(("market", "channel"), ALL_CHANNELS)
def test_path_class_agrees_with_connection_manager(market: str, channel: str) -> None:
    cls = streams.path_class(market, channel)
    if market == "spot":
        assert cls is None
    else:
        assert cls == stream_route(streams.stream_name(market, "btcusdt", channel))


@pytest.mark.parametrize(
    ("market", "channel", "speed", "expected"),
    [
        ("spot", "trade", 100, "btcusdt@trade"),
        ("spot", "agg_trade", 100, "btcusdt@aggTrade"),
        ("spot", "book_ticker", 100, "btcusdt@bookTicker"),
        ("spot", "depth", 100, "btcusdt@depth@100ms"),
        ("spot", "depth", 1000, "btcusdt@depth"),
        ("spot", "depth10", 100, "btcusdt@depth10@100ms"),
        ("spot", "depth20", 1000, "btcusdt@depth20"),
        ("spot", "ticker", 100, "btcusdt@ticker"),
        ("spot", "ticker_4h", 100, "btcusdt@ticker_4h"),
        ("spot", "mini_ticker", 100, "btcusdt@miniTicker"),
        ("spot", "kline_1s", 100, "btcusdt@kline_1s"),
        ("spot", "kline_1M", 100, "btcusdt@kline_1M"),
        ("usdm", "depth", 250, "btcusdt@depth"),
        ("usdm", "depth", 500, "btcusdt@depth@500ms"),
        ("usdm", "depth5", 100, "btcusdt@depth5@100ms"),
        ("usdm", "mark_price", 100, "btcusdt@markPrice@1s"),
        ("usdm", "liquidation", 100, "btcusdt@forceOrder"),
        ("usdm", "kline_1m", 100, "btcusdt@kline_1m"),
    ],
)
def test_stream_names(market: str, channel: str, speed: int, expected: str) -> None:
    assert streams.stream_name(market, "BtcUsdt", channel, depth_speed_ms=speed) == expected


def test_routes() -> None:
    assert streams.route_of("spot", "depth") == streams.StreamRoute("book_delta")
    assert streams.route_of("usdm", "depth20") == streams.StreamRoute("book_snapshot", None, 20)
    assert streams.route_of("spot", "kline_15m") == streams.StreamRoute("kline", "15m")
    assert streams.route_of("spot", "ticker") == streams.StreamRoute("ticker", "24h")
    assert streams.route_of("usdm", "mini_ticker") == streams.StreamRoute("ticker", "mini")
    assert streams.route_of("spot", "ticker_1d") == streams.StreamRoute("ticker", "1d")
    assert streams.route_of("usdm", "liquidation") == streams.StreamRoute("liquidation")


@pytest.mark.parametrize(
    ("market", "stream", "expected"),
    [
        ("usdm", "btcusdt@depth@0ms", ("BTCUSDT", "depth")),  # hftbacktest's real-time diff
        ("coinm", "btcusd_perp@depth@100ms", ("BTCUSD_PERP", "depth")),
        ("coinm", "btcusd_perp@bookTicker", ("BTCUSD_PERP", "book_ticker")),
        ("usdm", "btcusdt@markPrice", ("BTCUSDT", "mark_price")),  # the 3 s stream
        ("spot", "lrcbtc@kline_1m", ("LRCBTC", "kline_1m")),
    ],
)
def test_channel_of_reads_other_spellings(
    market: str, stream: str, expected: tuple[str, str]
) -> None:
    assert streams.channel_of(market, stream) == expected


@pytest.mark.parametrize(
    ("market", "stream"),
    [
        ("spot", "!miniTicker@arr"),
        ("spot", "btcusdt"),
        ("spot", "btcusdt@depth@1000ms"),  # the default speed has no suffix
        ("spot", "btcusdt@depth@0ms"),
        ("spot", "btcusdt@markPrice@1s"),  # futures only
        ("usdm", "btcusdt@ticker_1h"),  # spot only
        ("usdm", "btcusdt@kline_1s"),
        ("usdm", "btcusdt@trade@100ms"),
        ("usdm", "btcusdt@depth@250ms"),
        ("usdm", "btcusdt@avgPrice"),
        ("usdm", "BTC USDT@trade"),
    ],
)
def test_channel_of_rejects(market: str, stream: str) -> None:
    with pytest.raises(StreamError):
        streams.channel_of(market, stream)


def test_errors_name_what_is_wrong() -> None:
    with pytest.raises(StreamError, match="unknown market 'dapi'"):
        streams.channels("dapi")
    with pytest.raises(StreamError, match="unknown spot channel 'mark_price'"):
        streams.route_of("spot", "mark_price")
    with pytest.raises(StreamError, match="depth speed must be one of 1000, 100 ms, got 250"):
        streams.stream_name("spot", "btcusdt", "depth", depth_speed_ms=250)
    with pytest.raises(StreamError, match="not a Binance symbol"):
        streams.stream_name("spot", "btc/usdt", "trade")
    assert isinstance(StreamError("x"), ValueError)


def test_every_stream_in_the_captures_is_read(captures_dir: Path) -> None:
    files = sorted(captures_dir.glob("hftbacktest/examples/*/*.gz"))
    files += [captures_dir / "cryptofeed/sample_data" / f for f in ("BINANCE.ws.1.0",)]
    files += [captures_dir / "cryptofeed/sample_data/BINANCE_FUTURES.ws.1.0"]
    seen = 0
    for path in files:
        source = CaptureSource(path)
        for stream in source.streams(source.market):
            symbol, channel = streams.channel_of(source.market, stream)
            route = streams.route_of(source.market, channel)
            kind, parsed_symbol, _ = classify_stream(stream)
            assert parsed_symbol == symbol
            assert KIND_IDS[route.kind] == kind or kind == PARTIAL_DEPTH_ROUTE
            seen += 1
    assert seen >= 20

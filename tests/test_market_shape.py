"""The whole-market shape of the synthetic exchange, and the fake's connection-attempt limit.

``SyntheticMarket.binance()`` is the fake exchange's model of Binance's full market: about
1,800 spot and 450 USD-M symbols, trade, aggTrade, bookTicker and depth@100ms each, at a
Zipf-distributed rate (docs/fake-exchange.md, "The whole market").  No timing here: the
benchmark is bench/bench_full_market.py.
"""

from __future__ import annotations

import math
from collections import Counter
from itertools import islice
from typing import Any

import pytest
from aio import run
from fakeproc import spot_books_engine
from picows import WSHandshakeError, WSListener, ws_connect

from meltica.replay.synthetic import (
    BINANCE_HEAD_RATES,
    BINANCE_SYMBOLS,
    BINANCE_ZIPF_EXPONENT,
    SCALED_RATES,
    SyntheticMarket,
    zipf_activity,
)
from meltica.replay.ws import WsServer


def _frames_by_symbol(market: SyntheticMarket) -> Counter[tuple[str, str]]:
    counts: Counter[tuple[str, str]] = Counter()
    for frame in market.frames():
        counts[(frame.market, frame.stream.partition("@")[0])] += 1
    return counts


def test_default_shape_has_binance_symbol_counts_and_streams() -> None:
    market = SyntheticMarket.binance(seed=3)
    assert market.markets == ("spot", "usdm")
    assert BINANCE_SYMBOLS == {"spot": 1800, "usdm": 450}
    for name, count in BINANCE_SYMBOLS.items():
        symbols = market.symbols(name)
        assert len(symbols) == len(set(symbols)) == count
        assert symbols[0] == "BTCUSDT"  # rank 1, the busiest
        kinds = Counter(s.partition("@")[2] for s in market.streams(name))
        # every symbol has trade, aggTrade, bookTicker and depth@100ms, and nothing periodic
        assert kinds == {k: count for k in ("trade", "aggTrade", "bookTicker", "depth@100ms")}
    # the busiest symbol runs at the head rates; rank r at r ** -exponent of them
    for name in market.markets:
        head = market.rates_of(name, "BTCUSDT")
        for key in SCALED_RATES:
            assert head[key] == BINANCE_HEAD_RATES[name][key]
        rank = 100
        other = market.rates_of(name, market.symbols(name)[rank - 1])
        for key in SCALED_RATES:
            expected = head[key] * rank**-BINANCE_ZIPF_EXPONENT
            assert math.isclose(other[key], expected, rel_tol=1e-12)
    assert market.rates_of("spot", "BTCUSDT")["kline"] == 0.0


def test_smaller_shapes_and_scale() -> None:
    market = SyntheticMarket.binance(spot=0, usdm=7, scale=2.0, seed=1)
    assert market.markets == ("usdm",)
    assert len(market.symbols("usdm")) == 7
    assert market.rates_of("usdm", "BTCUSDT")["trade"] == 2 * BINANCE_HEAD_RATES["usdm"]["trade"]
    # periodic streams can be turned back on
    with_ticker = SyntheticMarket.binance(spot=2, usdm=0, rates={"ticker": 1.0})
    assert "btcusdt@ticker" in with_ticker.streams("spot")
    assert zipf_activity(3, 1.0) == [1.0, 0.5, 1 / 3]
    with pytest.raises(ValueError):
        SyntheticMarket.binance(scale=0)
    with pytest.raises(ValueError):
        zipf_activity(3, -1.0)


def test_rate_concentration_top_one_percent() -> None:
    """A few symbols carry most of the flow: the busiest 1 % carry far more than 1 %."""
    market = SyntheticMarket.binance(seed=11, duration_s=3.0)
    counts = _frames_by_symbol(market)
    total = sum(counts.values())
    n_symbols = sum(BINANCE_SYMBOLS.values())
    # the modelled whole market: about 10k frames per second (docs/fake-exchange.md)
    assert 6_000 < total / 3.0 < 15_000
    ranked = sorted(counts.values(), reverse=True)
    top = sum(ranked[: n_symbols // 100])
    assert top / total > 0.15  # 1 % of the symbols, more than 15 % of every frame
    # bookTicker and trade (depth frames saturate at 10/s per symbol) are more concentrated
    flow: Counter[tuple[str, str]] = Counter()
    for frame in SyntheticMarket.binance(seed=11, duration_s=3.0).frames():
        if not frame.stream.endswith("@depth@100ms"):
            flow[(frame.market, frame.stream.partition("@")[0])] += 1
    ranked_flow = sorted(flow.values(), reverse=True)
    assert sum(ranked_flow[: n_symbols // 100]) / sum(ranked_flow) > 0.25
    # the head is orders of magnitude busier than the median symbol
    assert counts[("spot", "btcusdt")] > 50 * max(1, ranked[len(ranked) // 2])


def test_deterministic_by_seed_and_independent_of_other_symbols() -> None:
    def first(market: SyntheticMarket, n: int = 3000) -> list[tuple[int, str, bytes]]:
        return [(f.ts_ns, f.stream, f.payload) for f in islice(market.frames(), n)]

    a = first(SyntheticMarket.binance(spot=60, usdm=20, seed=5))
    b = first(SyntheticMarket.binance(spot=60, usdm=20, seed=5))
    c = first(SyntheticMarket.binance(spot=60, usdm=20, seed=6))
    assert a == b
    assert a != c
    # a symbol's rate depends on its rank only, so its frames do not change with the others
    small = SyntheticMarket.binance(spot=10, usdm=0, seed=5, duration_s=2.0)
    large = SyntheticMarket.binance(spot=40, usdm=0, seed=5, duration_s=2.0)

    def btc(market: SyntheticMarket) -> list[bytes]:
        return [f.payload for f in market.frames() if f.stream.startswith("btcusdt@")]

    assert btc(small) == btc(large)


def test_activity_of_one_changes_nothing_for_existing_callers() -> None:
    plain = SyntheticMarket(markets=("spot", "usdm"), symbols_per_market=3, seed=2)
    ones = SyntheticMarket(
        markets=("spot", "usdm"),
        symbols_per_market=3,
        seed=2,
        activity={"spot": [1.0] * 3, "usdm": [1.0] * 3},
    )
    assert [f.payload for f in islice(plain.frames(), 2000)] == [
        f.payload for f in islice(ones.frames(), 2000)
    ]
    half = SyntheticMarket(markets=("spot",), symbols_per_market=1, seed=2, duration_s=20.0)
    slow = SyntheticMarket(
        markets=("spot",), symbols_per_market=1, seed=2, duration_s=20.0, activity={"spot": [0.2]}
    )
    trades = [sum(1 for f in m.frames() if f.stream.endswith("@trade")) for m in (half, slow)]
    assert trades[1] < trades[0] / 2  # 0.2 x the rate: far fewer trades


def test_bad_activity_and_market_rates_are_errors() -> None:
    with pytest.raises(ValueError, match="2 values for 3 symbols"):
        SyntheticMarket(markets=("spot",), symbols_per_market=3, activity={"spot": [1, 1]})
    with pytest.raises(ValueError, match="finite"):
        SyntheticMarket(markets=("spot",), symbols_per_market=1, activity={"spot": [-1]})
    with pytest.raises(ValueError, match="not in"):
        SyntheticMarket(markets=("spot",), activity={"usdm": []})
    with pytest.raises(ValueError, match="unknown rate"):
        SyntheticMarket(markets=("spot",), market_rates={"spot": {"nope": 1.0}})


def test_ws_server_refuses_connects_past_the_window_limit() -> None:
    """Binance: 300 connection attempts per 5 min per IP; past it, the upgrade fails (429)."""

    async def body() -> None:
        server = WsServer("spot", max_connects=3, connects_window_s=60.0)
        await server.start()
        try:
            for _ in range(3):
                transport, _ = await ws_connect(WSListener, server.url + "/ws/btcusdt@trade")
                transport.disconnect()
            with pytest.raises(WSHandshakeError) as info:
                await ws_connect(WSListener, server.url + "/ws/btcusdt@trade")
            assert info.value.response is not None
            assert info.value.response.status == 429
            assert server.counters.connects_refused == 1
            assert server.counters.connections_opened == 3
        finally:
            await server.stop()

    run(body, timeout=20)
    with pytest.raises(ValueError):
        WsServer("spot", max_connects=0)


def test_engine_subscribes_more_streams_than_one_control_request_carries() -> None:
    """Start-up subscribes every configured symbol, even past 1024 streams per request.

    400 spot symbols x 3 channels = 1200 streams: more than one control request may carry
    (1024) and more than one connection holds (1024), against the fake's real limits.
    """
    from meltica.dispatcher.dispatcher import MAX_STREAMS_PER_REQUEST
    from meltica.replay.exchange import FakeExchange

    market = SyntheticMarket.binance(spot=400, usdm=0, seed=1)
    channels = ["trade", "book_ticker", "depth"]
    assert len(market.symbols("spot")) * len(channels) > MAX_STREAMS_PER_REQUEST

    async def body() -> dict[str, Any]:
        async with FakeExchange(market, speed=1.0) as fake:
            engine = spot_books_engine(fake, market.symbols("spot"), channels)
            await engine.start()
            try:
                stats = dict(engine.managers["spot"].stats())
                stats["opened"] = fake.ws["spot"].counters.connections_opened
                stats["subscribed"] = len(fake.ws["spot"].subscribed())
                return stats
            finally:
                await engine.stop()

    stats = run(body, timeout=120)
    assert stats["streams"] == 1200
    assert stats["subscribed"] == 1200  # the fake holds every one of them
    assert stats["opened"] >= 2  # 1024 streams per connection at most

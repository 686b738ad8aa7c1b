"""Instruments from exchangeInfo: parsing real-shaped bodies for spot and USD-M, the registry
fed by BinanceRest from the fake exchange over loopback, status changes, failed refreshes
keeping the old data, and the refresh schedule under an injected clock."""

from __future__ import annotations

import asyncio
import copy
from decimal import Decimal
from typing import Any

import pytest

from meltica.adapters.binance.instruments import (
    Instrument,
    InstrumentError,
    InstrumentRegistry,
    StatusChange,
    parse_exchange_info,
)
from meltica.adapters.binance.rest import BinanceRest, RestDeadlineError, RestMarket
from meltica.errors import MelticaError
from meltica.replay.faults import Fault, FaultPlan
from meltica.replay.rest import RestServer
from meltica.replay.synthetic import SyntheticMarket

pytestmark = pytest.mark.timeout(60)

# Entries shaped as Binance sends them (trimmed of fields the parser ignores).
SPOT_BTC: dict[str, Any] = {
    "symbol": "BTCUSDT",
    "status": "TRADING",
    "baseAsset": "BTC",
    "baseAssetPrecision": 8,
    "quoteAsset": "USDT",
    "quotePrecision": 8,
    "quoteAssetPrecision": 8,
    "orderTypes": ["LIMIT", "MARKET"],
    "filters": [
        {
            "filterType": "PRICE_FILTER",
            "minPrice": "0.01000000",
            "maxPrice": "1000000.00000000",
            "tickSize": "0.01000000",
        },
        {
            "filterType": "LOT_SIZE",
            "minQty": "0.00001000",
            "maxQty": "9000.00000000",
            "stepSize": "0.00001000",
        },
        {"filterType": "ICEBERG_PARTS", "limit": 10},
        {
            "filterType": "MARKET_LOT_SIZE",
            "minQty": "0.00000000",
            "maxQty": "84.01874422",
            "stepSize": "0.00000000",
        },
    ],
    "permissionSets": [["SPOT", "MARGIN"]],
}
SPOT_SHIB: dict[str, Any] = {
    "symbol": "SHIBUSDT",
    "status": "BREAK",
    "baseAsset": "SHIB",
    "quoteAsset": "USDT",
    "quoteAssetPrecision": 8,
    "baseAssetPrecision": 2,
    "filters": [
        {"filterType": "PRICE_FILTER", "tickSize": "0.00000001"},
        {"filterType": "LOT_SIZE", "stepSize": "1.00"},
    ],
}
USDM_BTC: dict[str, Any] = {
    "symbol": "BTCUSDT",
    "pair": "BTCUSDT",
    "contractType": "PERPETUAL",
    "status": "TRADING",
    "baseAsset": "BTC",
    "quoteAsset": "USDT",
    "marginAsset": "USDT",
    "pricePrecision": 2,
    "quantityPrecision": 3,
    "filters": [
        {
            "minPrice": "556.80",
            "maxPrice": "4529764",
            "filterType": "PRICE_FILTER",
            "tickSize": "0.10",
        },
        {"stepSize": "0.001", "filterType": "LOT_SIZE", "maxQty": "1000", "minQty": "0.001"},
        {"stepSize": "0.001", "filterType": "MARKET_LOT_SIZE", "maxQty": "120", "minQty": "0.001"},
        {"limit": 200, "filterType": "MAX_NUM_ORDERS"},
    ],
}
USDM_YFI: dict[str, Any] = {  # tick of 1 and a price filter switched off on the lot side
    "symbol": "YFIUSDT",
    "status": "TRADING",
    "baseAsset": "YFI",
    "quoteAsset": "USDT",
    "pricePrecision": 0,
    "quantityPrecision": 3,
    "filters": [
        {"filterType": "PRICE_FILTER", "tickSize": "1"},
        {"filterType": "LOT_SIZE", "stepSize": "0"},
    ],
}


def body(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"timezone": "UTC", "serverTime": 1723161255000, "symbols": list(entries)}


def test_parse_spot_and_usdm_entries() -> None:
    spot, errors = parse_exchange_info("spot", body(SPOT_BTC, SPOT_SHIB))
    assert errors == []
    assert spot["BTCUSDT"] == Instrument(
        market="spot",
        symbol="BTCUSDT",
        status="TRADING",
        base="BTC",
        quote="USDT",
        tick_size=Decimal("0.01"),
        step_size=Decimal("0.00001"),
        price_exp=-2,
        qty_exp=-5,
        trading=True,
    )
    shib = spot["SHIBUSDT"]
    assert (shib.price_exp, shib.qty_exp, shib.trading, shib.status) == (-8, 0, False, "BREAK")
    usdm, errors = parse_exchange_info("usdm", body(USDM_BTC, USDM_YFI))
    assert errors == []
    btc = usdm["BTCUSDT"]
    # the tick decides the exponent, not pricePrecision (2)
    assert (btc.tick_size, btc.step_size, btc.price_exp, btc.qty_exp) == (
        Decimal("0.1"),
        Decimal("0.001"),
        -1,
        -3,
    )
    yfi = usdm["YFIUSDT"]
    assert (yfi.tick_size, yfi.price_exp) == (Decimal(1), 0)
    assert (yfi.step_size, yfi.qty_exp) == (Decimal("0.001"), -3)  # from quantityPrecision


def test_bad_entries_are_skipped_and_reported() -> None:
    no_tick = copy.deepcopy(SPOT_BTC)
    no_tick["symbol"] = "ETHUSDT"
    no_tick["filters"] = [{"filterType": "LOT_SIZE", "stepSize": "0.0001"}]
    del no_tick["quotePrecision"], no_tick["quoteAssetPrecision"]
    bad_tick = copy.deepcopy(SPOT_SHIB)
    bad_tick["symbol"] = "XUSDT"
    bad_tick["filters"][0]["tickSize"] = "abc"
    del bad_tick["quoteAssetPrecision"]
    out, errors = parse_exchange_info(
        "spot",
        body(SPOT_BTC, no_tick, bad_tick, {"status": "TRADING"}, "junk"),  # type: ignore[arg-type]
    )
    assert list(out) == ["BTCUSDT"]
    assert len(errors) == 4 and all(isinstance(e, InstrumentError) for e in errors)
    assert any("ETHUSDT" in str(e) and "tickSize" in str(e) for e in errors)
    with pytest.raises(InstrumentError):
        parse_exchange_info("spot", {"code": -1121, "msg": "Invalid symbol."})


class StubSource:
    """An exchangeInfo source with scripted bodies or failures, recording call times."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.bodies: dict[str, list[dict[str, Any] | Exception]] = {}
        self.calls: list[tuple[str, float]] = []
        self.clock = clock
        self.stop_after: int | None = None
        self.stopped = asyncio.Event()

    async def exchange_info(self, market: str) -> dict[str, Any]:
        self.calls.append((market, self.clock() if self.clock else 0.0))
        if self.stop_after is not None and len(self.calls) >= self.stop_after:
            self.stopped.set()
            await asyncio.Event().wait()  # park the registry until the test cancels it
        script = self.bodies[market]
        item = script.pop(0) if len(script) > 1 else script[0]
        if isinstance(item, Exception):
            raise item
        return copy.deepcopy(item)


class FakeClock:
    def __init__(self, now: float = 5000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


def test_registry_lookup_status_changes_and_failed_refresh() -> None:
    seen: list[list[StatusChange]] = []

    async def main() -> None:
        source = StubSource()
        halted = copy.deepcopy(SPOT_BTC)
        halted["status"] = "HALT"
        source.bodies["spot"] = [
            body(SPOT_BTC, SPOT_SHIB),
            RestDeadlineError("spot exchangeInfo: no success"),
            body(halted, SPOT_BTC | {"symbol": "ETHUSDT"}),
        ]
        reg = InstrumentRegistry(source, on_change=seen.append)
        assert reg.get("spot", "BTCUSDT") is None and reg.symbols("spot") == []
        assert await reg.refresh("spot") == []  # first load: nothing "changed"
        assert reg.symbols("spot") == ["BTCUSDT", "SHIBUSDT"]
        btc = reg.get("spot", "btcusdt")
        assert btc is not None and btc.trading and btc.price_exp == -2
        assert reg.get("SPOT", "BTCUSDT") is None and reg.get("usdm", "BTCUSDT") is None
        with pytest.raises(RestDeadlineError):
            await reg.refresh("spot")
        assert reg.get("spot", "BtcUsdt") == btc  # previous data kept
        assert reg.stats()["failures"] == 1
        changes = await reg.refresh("spot")
        assert changes == [
            StatusChange("spot", "BTCUSDT", "TRADING", "HALT"),
            StatusChange("spot", "ETHUSDT", None, "TRADING"),
            StatusChange("spot", "SHIBUSDT", "BREAK", None),
        ]
        assert seen == [changes]
        halted_btc = reg.get("spot", "BTCUSDT")
        assert halted_btc is not None and not halted_btc.trading
        assert reg.stats() == {
            "refreshes": 2,
            "failures": 1,
            "invalid": 0,
            "changes": 3,
            "instruments_spot": 2,
        }

    asyncio.run(main())


def test_run_refreshes_on_schedule_and_retries_failures() -> None:
    async def main() -> None:
        clock = FakeClock(5000.0)
        source = StubSource(clock)
        source.bodies["spot"] = [body(SPOT_BTC)]
        source.bodies["usdm"] = [
            body(USDM_BTC),
            body(USDM_BTC),
            ValueError("boom"),  # the third usdm refresh fails: retried after retry_s
            body(USDM_BTC, USDM_YFI),
        ]
        source.stop_after = 12
        reg = InstrumentRegistry(source, retry_s=30.0, clock=clock, sleep=clock.sleep)
        task = asyncio.create_task(reg.run({"spot": 100.0, "usdm": 250.0}))
        await asyncio.wait_for(source.stopped.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        rel = [(m, t - 5000.0) for m, t in source.calls]
        assert [t for m, t in rel if m == "spot"] == [0, 100, 200, 300, 400, 500, 600, 700]
        assert [t for m, t in rel if m == "usdm"] == [0, 250, 500, 530]
        assert reg.stats()["failures"] == 1
        assert reg.stats()["refreshes"] == 10  # 12 calls: one failed, the last is parked
        yfi = reg.get("usdm", "yfiusdt")
        assert yfi is not None and yfi.price_exp == 0

    asyncio.run(main())


def test_run_after_a_load_waits_one_interval_first() -> None:
    """``loaded=True`` (the engine's start() has just fetched every market): no
    refresh at once, the first one interval later."""

    async def main() -> None:
        clock = FakeClock(5000.0)
        source = StubSource(clock)
        source.bodies["spot"] = [body(SPOT_BTC)]
        source.bodies["usdm"] = [body(USDM_BTC)]
        source.stop_after = 5
        reg = InstrumentRegistry(source, clock=clock, sleep=clock.sleep)
        task = asyncio.create_task(reg.run({"spot": 100.0, "usdm": 250.0}, loaded=True))
        await asyncio.wait_for(source.stopped.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        rel = [(m, t - 5000.0) for m, t in source.calls]
        assert rel == [("spot", 100), ("spot", 200), ("usdm", 250), ("spot", 300), ("spot", 400)]

    asyncio.run(main())


def test_rest_exchange_info_to_instruments() -> None:
    """The registry fed by BinanceRest from the fake exchange (synthetic market) over loopback,
    spot and usdm; a refresh hit by 5xx until the deadline keeps the previous data."""
    market = SyntheticMarket(
        symbols={"spot": ["BTCUSDT", "DOGEUSDT"], "usdm": ["BTCUSDT", "ETHUSDT"]}
    )

    async def main() -> None:
        fault = Fault("rest_status", market="usdm", code=502, count=1000, at_s=100)
        clock = FakeClock(1000.0)
        server = RestServer(market, clock=clock, faults=FaultPlan((fault,)))
        await server.start()
        markets = {m: RestMarket(server.url, 2400) for m in ("spot", "usdm")}
        rest = BinanceRest(markets, clock=clock, sleep=clock.sleep, retry_deadline_s=5)
        try:
            reg = InstrumentRegistry(rest, clock=clock, sleep=clock.sleep)
            for m in ("spot", "usdm"):
                await reg.refresh(m)
                assert reg.symbols(m) == sorted(market.symbols(m))
                for entry in market.exchange_info(m)["symbols"]:
                    inst = reg.get(m, entry["symbol"].lower())
                    assert inst is not None and inst.trading
                    tick = Decimal(entry["filters"][0]["tickSize"])
                    step = Decimal(entry["filters"][1]["stepSize"])
                    assert (inst.tick_size, inst.step_size) == (tick, step)
                    assert Decimal(1).scaleb(inst.price_exp) == tick.normalize() or tick >= 1
                    assert (inst.base, inst.quote) == (entry["baseAsset"], entry["quoteAsset"])
            spot_btc = reg.get("spot", "BTCUSDT")
            usdm_btc = reg.get("usdm", "BTCUSDT")
            assert spot_btc is not None and usdm_btc is not None
            assert (spot_btc.price_exp, usdm_btc.price_exp) == (-2, -1)
            assert server.counters.weight == {"spot": 20, "usdm": 1}
            clock.now += 100  # the 502 fault is live from here
            with pytest.raises(MelticaError):
                await reg.refresh("usdm")
            assert reg.get("usdm", "ETHUSDT") is not None
            assert reg.stats()["failures"] == 1
        finally:
            await rest.close()
            await server.stop()

    asyncio.run(main())

"""Impossible values over real sockets: fake Binance -> running gateway -> bus consumer.

The fake exchange serves a scripted spot session on loopback in which trade and
bookTicker frames with impossible values (a price of zero or below, a negative
quantity, a negative trade or update id) sit between good frames, several frames to
a socket write.  The gateway must deliver every good event to a bus consumer, none
of the bad ones, keep the connection up, and count the rejects by reason on
/metrics.  The ``replay`` command reports them too.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
from aio import run

from meltica.capture import CaptureWriter
from meltica.commands.common import local_overrides
from meltica.config import load_config
from meltica.engine import Engine
from meltica.replay.exchange import FakeExchange
from meltica.replay.source import StreamFrame
from meltica.replay.synthetic import SyntheticMarket

GOOD = 60  # good trades (ids 1..GOOD) and good bookTickers (update ids 1..GOOD)
E_MS = int(time.time() * 1000)


def _trade(symbol: str, trade_id: int, price: str = "61837.63", qty: str = "0.02") -> bytes:
    return (
        f'{{"e":"trade","E":{E_MS},"s":"{symbol}","t":{trade_id},"p":"{price}",'
        f'"q":"{qty}","T":{E_MS},"m":true,"M":true}}'
    ).encode()


def _book_ticker(symbol: str, update_id: int, bid: str = "61837.63", bid_qty: str = "1") -> bytes:
    return (
        f'{{"u":{update_id},"s":"{symbol}","b":"{bid}","B":"{bid_qty}","a":"61837.64","A":"2"}}'
    ).encode()


def _bad_frames(symbol: str) -> list[tuple[str, bytes]]:
    """(stream kind, payload) of frames the parser must reject; their ids are > 1000 (or
    negative), so none of them can pass for a good event."""
    return [
        ("trade", _trade(symbol, 1001, price="0.00000000")),
        ("trade", _trade(symbol, 1002, price="-61837.63")),
        ("trade", _trade(symbol, 1003, qty="-0.02")),
        ("trade", _trade(symbol, -4)),
        ("bookTicker", _book_ticker(symbol, 1005, bid="-1")),
        ("bookTicker", _book_ticker(symbol, 1006, bid_qty="-1")),
        ("bookTicker", _book_ticker(symbol, -7)),
    ]


class ScriptedSpot:
    """A MarketSource: the synthetic market's symbols, exchangeInfo and snapshots, but
    only the frames of the script (good and bad interleaved, the last one good)."""

    def __init__(self) -> None:
        self.synthetic = SyntheticMarket(markets=("spot",), symbols_per_market=1, seed=3)
        self.markets = self.synthetic.markets
        (self.symbol,) = self.synthetic.symbols("spot")
        self.bad = _bad_frames(self.symbol)

    def symbols(self, market: str) -> list[str]:
        return self.synthetic.symbols(market)

    def streams(self, market: str) -> set[str]:
        return self.synthetic.streams(market)

    def exchange_info(self, market: str) -> dict[str, Any]:
        return self.synthetic.exchange_info(market)

    def depth_snapshot(self, market: str, symbol: str, limit: int) -> bytes | None:
        return self.synthetic.depth_snapshot(market, symbol, limit)

    def frames(self) -> Iterator[StreamFrame]:
        sym = self.symbol.lower()
        bad = iter(self.bad)
        ts = E_MS * 1_000_000
        for i in range(1, GOOD + 1):
            yield StreamFrame(ts, "spot", f"{sym}@trade", _trade(self.symbol, i))
            yield StreamFrame(ts, "spot", f"{sym}@bookTicker", _book_ticker(self.symbol, i))
            if i % 8 == 0:
                kind, payload = next(bad, ("", b""))
                if payload:
                    yield StreamFrame(ts, "spot", f"{sym}@{kind}", payload)


def test_impossible_values_never_reach_consumers_and_are_counted() -> None:
    source = ScriptedSpot()
    assert len(source.bad) == 7 and len(source.bad) <= GOOD // 8

    async def scenario() -> None:
        # speed None: frames go out in runs, many to one socket write, so a rejected
        # frame shares its read (and the listener's batch) with good ones
        fake = FakeExchange(source, speed=None)
        await fake.start()
        overrides = [
            *local_overrides(
                {"spot": fake.ws_url("spot")}, fake.rest_url, symbols={"spot": [source.symbol]}
            ),
            "telemetry.metrics_port=0",
            "binance.spot.streams=[trade, book_ticker]",
        ]
        engine = Engine(load_config(None, env={}, overrides=overrides))
        consumer = engine.bus.subscribe("all", kinds=["trade", "book_ticker"])
        events: list[Any] = []
        last_good = asyncio.Event()

        async def consume() -> None:
            async for batch in consumer:
                events.extend(batch)
                if any(e.kind == "book_ticker" and e.update_id == GOOD for e in batch):
                    last_good.set()

        task = asyncio.get_running_loop().create_task(consume())
        try:
            await engine.start()
            # the last frame of the script is good: once it is here, every frame was judged
            await asyncio.wait_for(last_good.wait(), 60)
            await asyncio.wait_for(fake.finished.wait(), 60)

            trades = sorted(e.trade_id for e in events if e.kind == "trade")
            tickers = sorted(e.update_id for e in events if e.kind == "book_ticker")
            assert trades == list(range(1, GOOD + 1))
            assert tickers == list(range(1, GOOD + 1))

            manager = engine.managers["spot"]
            assert manager.stats()["parse_errors"] == len(source.bad)
            assert manager.stats()["connections"] == 1
            assert manager.parse_rejects()["value_range"] == len(source.bad)
            assert sum(manager.parse_rejects().values()) == len(source.bad)

            assert engine.metrics is not None
            async with (
                aiohttp.ClientSession() as http,
                http.get(engine.metrics.url + "/metrics") as resp,
            ):
                assert resp.status == 200
                body = await resp.text()
            line = re.search(
                r'^meltica_ws_parse_rejects_total\{market="spot",reason="value_range"\} (\S+)$',
                body,
                re.M,
            )
            assert line is not None, body
            assert float(line.group(1)) == len(source.bad)
            assert re.search(
                r'^meltica_ws_parse_rejects_total\{market="spot",reason="number"\} 0\.0$',
                body,
                re.M,
            )
        finally:
            consumer.close()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await engine.stop()
            await fake.stop()

    run(scenario, timeout=120)


def test_replay_reports_rejected_frames_by_reason(tmp_path: Path) -> None:
    """``python -m meltica replay`` of a capture with two impossible trades among twenty
    good ones: the good ones are written, the bad ones are not, the report counts them."""
    capture = tmp_path / "bad.gz"
    ts = E_MS * 1_000_000
    with CaptureWriter(capture, venue="binance", market="spot") as w:
        url = "wss://stream.binance.com:9443/stream?streams=btcusdt@trade"
        w.write_conn(ts, "c0", {"event": "connect", "url": url})
        for i in range(1, 21):
            w.write_ws(ts + i, "c0", _envelope("btcusdt@trade", _trade("BTCUSDT", i)))
            if i == 10:
                for bad in (_trade("BTCUSDT", 1000, price="-1"), _trade("BTCUSDT", 1001, qty="-1")):
                    w.write_ws(ts + i, "c0", _envelope("btcusdt@trade", bad))
    out = tmp_path / "events.jsonl"
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "meltica", "replay", str(capture)),
            *("--speed", "max", "-o", str(out), "--no-progress"),
            *("--report-json", str(tmp_path / "report.json")),
        ],
        cwd=tmp_path,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["parse_rejects"] == {"value_range": 2}
    assert report["frames"]["sent"] == report["frames"]["in_capture"] == 22
    events = [json.loads(line) for line in out.read_bytes().splitlines()]
    trade_ids = sorted(e["trade_id"] for e in events if e["kind"] == "trade")
    assert trade_ids == list(range(1, 21))


def _envelope(stream: str, payload: bytes) -> bytes:
    return b'{"stream":"' + stream.encode() + b'","data":' + payload + b"}"

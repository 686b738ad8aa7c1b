"""``meltica-engine record`` against the fake exchange over loopback.

The recorder must write every frame the exchange sent, byte-identical and in
order, with ns receive times, the connection event and one REST depth
snapshot per symbol; the capture must read back and normalize cleanly.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

from meltica.capture import capture_info, read_capture
from meltica.record import RecordOptions, market_urls, record, streams_for
from meltica.replay.exchange import FakeExchange
from meltica.replay.source import StreamFrame, combined_frame


class ListSource:
    """A few spot frames of two symbols and their depth snapshots."""

    markets = ("spot",)

    def __init__(self) -> None:
        self.frames_list: list[StreamFrame] = []
        for i in range(50):
            for sym in ("BTCUSDT", "ETHUSDT"):
                u = 100 + 2 * i
                depth = {
                    "e": "depthUpdate",
                    "E": 1_700_000_000_000 + i,
                    "s": sym,
                    "U": u,
                    "u": u + 1,
                    "b": [[f"{100 - i % 3}.00000000", "1.00000000"]],
                    "a": [[f"{101 + i % 3}.00000000", "0.00000000"]],
                }
                trade = {
                    "e": "trade",
                    "E": 1_700_000_000_000 + i,
                    "s": sym,
                    "t": 1000 + i,
                    "p": "100.50000000",
                    "q": "0.01000000",
                    "T": 1_700_000_000_000 + i,
                    "m": bool(i % 2),
                    "M": True,
                }
                for stream, obj in (
                    (f"{sym.lower()}@depth@100ms", depth),
                    (f"{sym.lower()}@trade", trade),
                ):
                    payload = json.dumps(obj, separators=(",", ":")).encode()
                    self.frames_list.append(StreamFrame(i, "spot", stream, payload))

    def symbols(self, market: str) -> list[str]:
        return ["BTCUSDT", "ETHUSDT"]

    def streams(self, market: str) -> set[str]:
        return {f.stream for f in self.frames_list}

    def exchange_info(self, market: str) -> dict[str, Any]:
        return {"symbols": []}

    def frames(self) -> Iterator[StreamFrame]:
        return iter(self.frames_list)

    def depth_snapshot(self, market: str, symbol: str, limit: int) -> bytes | None:
        body = {"lastUpdateId": 150, "bids": [["99.00000000", "2.00000000"]], "asks": []}
        return json.dumps(body).encode() if symbol in ("BTCUSDT", "ETHUSDT") else None


def test_stream_names_and_routed_urls() -> None:
    names = streams_for(["BTCUSDT"], ["depth@100ms", "trade", "bookTicker"])
    assert names == ["btcusdt@depth@100ms", "btcusdt@trade", "btcusdt@bookTicker"]
    assert market_urls("spot", "wss://x:9443", names) == [
        "wss://x:9443/stream?streams=btcusdt@depth@100ms/btcusdt@trade/btcusdt@bookTicker"
    ]
    assert market_urls("usdm", "wss://f/", names) == [
        "wss://f/public/stream?streams=btcusdt@depth@100ms/btcusdt@bookTicker",
        "wss://f/market/stream?streams=btcusdt@trade",
    ]


def test_record_against_the_fake_exchange(tmp_path: Path) -> None:
    source = ListSource()
    out = tmp_path / "rec.jsonl.gz"
    errors: list[dict[str, Any]] = []

    async def scenario() -> tuple[int, int]:
        asyncio.get_running_loop().set_exception_handler(lambda _l, ctx: errors.append(ctx))
        async with FakeExchange(source, speed=None) as ex:
            options = RecordOptions(
                out=out,
                symbols=["BTCUSDT", "ETHUSDT"],
                market="spot",
                streams=["depth@100ms", "trade"],
                ws_url=ex.ws_url("spot"),
                rest_url=ex.rest_url,
                duration_s=1.0,
                snapshot_delay_s=0.2,
            )
            recorder = await asyncio.wait_for(record(options), 30)
            return recorder.frames, recorder.snapshots

    frames, snapshots = uvloop.run(scenario())
    assert not errors
    assert (frames, snapshots) == (len(source.frames_list), 2)

    info = capture_info(out)
    assert (info.format, info.venue, info.market) == ("meltica", "binance", "spot")
    records = list(read_capture(out))
    kinds = [r.kind for r in records]
    assert kinds[0] == "conn" and kinds.count("rest") == 2 and kinds.count("ws") == frames
    ws = [r for r in records if r.kind == "ws"]
    assert [r.payload for r in ws] == [combined_frame(f) for f in source.frames_list]
    assert all(a.ts_recv <= b.ts_recv for a, b in itertools.pairwise(ws))
    assert all(r.ts_recv > 1_600_000_000 * 10**9 for r in records)  # ns since the epoch
    rest_urls = sorted(r.url or "" for r in records if r.kind == "rest")
    assert [u.split("symbol=")[1].split("&")[0] for u in rest_urls] == ["BTCUSDT", "ETHUSDT"]

    # the capture normalizes with no rejects: 2 snapshots + every frame
    result = subprocess.run(
        [sys.executable, "-m", "meltica", "normalize", str(out), "-o", str(tmp_path / "ev.jsonl")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=os.environ.copy(),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "rejects: 0" in result.stderr
    lines = (tmp_path / "ev.jsonl").read_text().splitlines()
    assert len(lines) == frames + 2


def test_record_cli_takes_channel_names(tmp_path: Path) -> None:
    """``record --streams`` takes config's channel names as well as Binance's spellings."""
    source = ListSource()
    ticker = {"u": 7, "s": "BTCUSDT", "b": "100.0", "B": "1.0", "a": "101.0", "A": "2.0"}
    payload = json.dumps(ticker, separators=(",", ":")).encode()
    source.frames_list += [
        StreamFrame(60 + i, "spot", "btcusdt@bookTicker", payload) for i in range(5)
    ]
    out = tmp_path / "rec.jsonl.gz"

    async def scenario() -> tuple[int, str]:
        async with FakeExchange(source, speed=None) as ex:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                *("-m", "meltica", "record", "BTCUSDT", "--out", str(out)),
                *("--streams", "book_ticker,trade", "--duration", "1"),
                *("--ws-url", ex.ws_url("spot"), "--rest-url", ex.rest_url),
                stderr=asyncio.subprocess.PIPE,
                env=os.environ.copy(),
            )
            _, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode is not None
            return proc.returncode, err.decode()

    code, err = uvloop.run(scenario())
    assert code == 0, err
    records = list(read_capture(out))
    url = next(r.payload for r in records if r.kind == "conn")
    assert b"streams=btcusdt@bookTicker/btcusdt@trade" in url
    frames = [json.loads(r.payload)["stream"] for r in records if r.kind == "ws"]
    assert frames.count("btcusdt@bookTicker") == 5
    assert frames.count("btcusdt@trade") == 50


def test_stream_names_from_channels_and_binance_spellings() -> None:
    names = streams_for(["BTCUSDT"], ["agg_trade", "depth", "depth@500ms", "avgPrice"], "usdm")
    # a channel means what it means in config (depth at depth_speed_ms, 100 by default);
    # any other name is a Binance spelling, kept as written
    assert names == [
        "btcusdt@aggTrade",
        "btcusdt@depth@100ms",
        "btcusdt@depth@500ms",
        "btcusdt@avgPrice",
    ]
    assert streams_for(["BTCUSDT"], ["depth", "depth5"], "spot", 1000) == [
        "btcusdt@depth",
        "btcusdt@depth5",
    ]
    with pytest.raises(ValueError, match="depth speed"):
        streams_for(["BTCUSDT"], ["depth"], "spot", 250)
    assert streams_for(["BTCUSDT"], ["mark_price", "markPrice"], "usdm") == [
        "btcusdt@markPrice@1s",
        "btcusdt@markPrice",
    ]

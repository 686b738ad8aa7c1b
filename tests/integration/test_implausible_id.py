"""One trade frame with a corrupt id (2**63 - 1) must not silence its stream.

A small capture (spot BTCUSDT trades 100..119 with one frame of id 2**63 - 1 in
the middle) is served by the fake exchange over loopback sockets to a running
Engine: every real trade reaches a bus consumer exactly once, and /metrics
shows the dispatch table's drops by reason.  The same capture through the
``replay`` command: its report shows them too.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
from aio import run

from meltica.capture import CaptureWriter
from meltica.commands.common import local_overrides
from meltica.config import load_config
from meltica.engine import Engine
from meltica.replay.exchange import FakeExchange
from meltica.replay.source import CaptureSource

CORRUPT = 2**63 - 1
REAL = list(range(100, 120))
STREAM = "btcusdt@trade"


def write_capture(path: Path) -> None:
    ids = [*REAL[:5], CORRUPT, *REAL[5:]]
    with CaptureWriter(path, venue="binance", market="spot") as w:
        url = f"wss://stream.binance.com:9443/stream?streams={STREAM}"
        w.write_conn(1, "c1", {"event": "connect", "url": url})
        for i, tid in enumerate(ids):
            ms = 1_700_000_000_000 + i
            data = {"e": "trade", "E": ms, "s": "BTCUSDT", "t": tid, "p": "100.00"}
            data |= {"q": "0.5", "T": ms, "m": True, "M": True}
            frame = json.dumps({"stream": STREAM, "data": data}).encode()
            w.write_ws(10 + i, "c1", frame)


def dropped_samples(page: str) -> dict[str, float]:
    out = {}
    for line in page.splitlines():
        if line.startswith("meltica_dispatch_dropped_total{"):
            labels, value = line.rsplit(" ", 1)
            reason = labels.split('reason="', 1)[1].split('"', 1)[0]
            out[reason] = float(value)
    return out


def test_corrupt_trade_id_does_not_silence_the_stream(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.jsonl.gz"
    write_capture(path)

    async def scenario() -> None:
        fake = FakeExchange(CaptureSource(path), speed=None, start="manual")
        await fake.start()
        overrides = local_overrides(
            {"spot": fake.ws_url("spot")}, fake.rest_url, symbols={"spot": ["btcusdt"]}
        )
        overrides += ["telemetry.metrics_port=0", "binance.spot.streams=[trade]"]
        engine = Engine(load_config(None, env={}, overrides=overrides), subscribe_on_start=False)
        consumer = engine.bus.subscribe("trades", kinds=["trade"], policy="block")
        got: list[Any] = []
        try:
            await engine.start()
            reply = await engine.subscribe_streams("spot", [STREAM])
            assert reply.ok, reply.error
            fake.begin()
            while not got or got[-1].trade_id != REAL[-1]:
                got += await asyncio.wait_for(consumer.next_batch(), 60)
            ids = [e.trade_id for e in got]
            # the corrupt one is delivered (nothing could tell it from a real jump
            # yet); every real trade after it too, once, in order
            assert ids == [*REAL[:5], CORRUPT, *REAL[5:]]
            assert engine.metrics is not None
            async with (
                aiohttp.ClientSession() as http,
                http.get(engine.metrics.url + "/metrics") as resp,
            ):
                assert resp.status == 200
                page = await resp.text()
            assert "# TYPE meltica_dispatch_dropped_total counter" in page
            drops = dropped_samples(page)
            assert drops == {"duplicate": 0, "unrouted": 0, "invalid": 0, "implausible": 1}
        finally:
            consumer.close()
            await engine.stop()
            await fake.stop()

    run(scenario, timeout=120)


def test_replay_report_shows_the_dispatch_drops(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.jsonl.gz"
    write_capture(path)
    out = tmp_path / "events.jsonl"
    args = ["replay", str(path), "--speed", "max", "-o", str(out), "--no-progress"]
    args += ["--report-json", str(tmp_path / "report.json")]
    proc = subprocess.run(
        [sys.executable, "-m", "meltica", *args],
        cwd=tmp_path,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["dispatch_dropped"] == {
        "duplicate": 0,
        "unrouted": 0,
        "invalid": 0,
        "implausible": 1,
    }
    events = [json.loads(x) for x in out.read_text().splitlines()]
    trades = [e["trade_id"] for e in events if e["kind"] == "trade"]
    assert trades == [*REAL[:5], CORRUPT, *REAL[5:]]

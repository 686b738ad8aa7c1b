"""The gap manifest through the real CLI and a real gateway (docs/gaps.md).

- ``replay`` of real captures with no fault: the manifest is empty.
- ``replay --fault`` with a connection close and dropped frames: the manifest's
  depth entries are exactly the update ids missing from the delivered stream,
  and the streams without ids have the outage's time range, lost.
- a gateway (`Engine`) against the synthetic fake exchange with depth frames
  dropped: ``GET /gaps``, the ``gaps.path`` file and the metrics agree, and the
  gap ends ``resynced``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aio import run

from meltica.commands.common import local_overrides
from meltica.config import load_config
from meltica.engine import Engine
from meltica.replay.exchange import FakeExchange
from meltica.replay.faults import FaultPlan
from meltica.replay.synthetic import SyntheticMarket

CLEAN = [
    "hftbacktest/examples/spot/btcusdt_20240808.gz",
    "hftbacktest/examples/usdm/btcusdt_20240808.gz",
    "hftbacktest/examples/spot/btcusdt_20240809.gz",
]


def replay(capture: Path, tmp: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], Any]:
    report = tmp / "report.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "meltica",
            "--log-level",
            "WARNING",
            "replay",
            str(capture),
            "-o",
            str(tmp / "events.jsonl"),
            "--manifest",
            str(tmp / "gaps.jsonl"),
            "--report-json",
            str(report),
            "--no-progress",
            *extra,
        ],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.exists(), proc.stderr
    return proc, json.loads(report.read_text())


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize("name", CLEAN)
def test_a_replay_with_no_fault_has_an_empty_manifest(
    captures_dir: Path, tmp_path: Path, name: str
) -> None:
    proc, report = replay(captures_dir / name, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert lines(tmp_path / "gaps.jsonl") == []
    assert report["gap_manifest"]["total"] == 0 and report["faults"] == []
    assert "gap manifest" in proc.stdout and "empty" in proc.stdout


def test_a_replay_with_faults_lists_exactly_what_went_missing(
    captures_dir: Path, tmp_path: Path
) -> None:
    proc, report = replay(
        captures_dir / CLEAN[0],
        tmp_path,
        # paced: at max speed the fake races through the capture while nobody is
        # connected, and how much of it is lost then depends on the machine's load
        "--speed",
        "50",
        "--fault",
        "close:at_frame=10000",
        "--fault",
        "drop:at_frame=20000,count=300",
    )
    # gaps were found: the replay says so in its exit status
    assert proc.returncode == 1, proc.stderr
    assert report["faults"] == ["close:at_frame=10000", "drop:at_frame=20000,count=300"]
    gaps = lines(tmp_path / "gaps.jsonl")
    assert gaps, proc.stdout
    assert report["gap_manifest"]["total"] == len(gaps)
    # the update ids the delivered depth stream skipped, from the events themselves
    holes: list[tuple[int, int]] = []
    prev: int | None = None
    reconnects = 0
    trades: list[int] = []
    refilled: set[int] = set()
    for line in (tmp_path / "events.jsonl").read_text().splitlines():
        ev = json.loads(line)
        reconnects += ev["kind"] == "connection_state" and ev["state"] == "reconnecting"
        if ev["kind"] == "trade":
            trades.append(ev["trade_id"])
            if ev.get("source") == "rest":
                refilled.add(ev["trade_id"])
        if ev["kind"] != "book_delta":
            continue
        if prev is not None and ev["first_update_id"] != prev + 1:
            holes.append((prev + 1, ev["first_update_id"] - 1))
        prev = ev["update_id"]
    assert holes, "the faults removed no depth update: the test proves nothing"
    depth = [g for g in gaps if g["stream"] == "depth"]
    assert sorted((g["first_id"], g["last_id"]) for g in depth) == holes
    for g in depth:
        assert g["cause"] == "continuity" and g["outcome"] in ("resynced", "open")
        assert (g["market"], g["symbol"]) == ("spot", "BTCUSDT")
    # trades: the id holes, filled from REST (binance.backfill, on by default): the
    # entries' ranges are exactly the ids delivered with source rest, each id once
    filled = [g for g in gaps if g["stream"] == "trade"]
    assert filled and all(g["outcome"] == "filled" and g["reason"] == "" for g in filled)
    assert {i for g in filled for i in range(g["first_id"], g["last_id"] + 1)} == refilled
    assert len(trades) == len(set(trades)) and len(trades) == report["by_kind"]["trade"]
    # book_ticker has no ids: each outage's time range, lost, once (the close fault
    # closes every connection at its 10000th frame)
    outages: dict[tuple[int, int], list[str]] = {}
    for g in gaps:
        if g["stream"] not in ("depth", "trade"):
            assert g["outcome"] == "lost" and g["first_id"] is None and g["last_id"] is None
            assert g["from_ns"] < g["to_ns"] and g["cause"] == "server_close_1000"
            outages.setdefault((g["from_ns"], g["to_ns"]), []).append(g["stream"])
    assert reconnects >= 1 and len(outages) == reconnects
    assert all(streams == ["book_ticker"] for streams in outages.values())
    spans = sorted(outages)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))


def test_gateway_serves_gaps_over_http_writes_the_file_and_counts_them(tmp_path: Path) -> None:
    source = SyntheticMarket(markets=("spot",), symbols_per_market=2, seed=11)
    sym, _other = source.symbols("spot")
    path = tmp_path / "gaps.jsonl"
    # three depth frames of one symbol never reach the gateway
    faults = FaultPlan.parse([f"drop:symbol={sym},at_frame=120,count=3"])

    async def scenario() -> None:
        fake = FakeExchange(source, speed=4.0, faults=faults)
        await fake.start()
        overrides = [
            *local_overrides(
                {"spot": fake.ws_url("spot")},
                fake.rest_url,
                symbols={"spot": [sym]},
                streams={"spot": ["trade", "book_ticker", "depth"]},
            ),
            "telemetry.metrics_port=0",
            f"gaps.path={path}",
        ]
        engine = Engine(load_config(None, env={}, overrides=overrides))
        try:
            await engine.start()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 90
            while not engine.gaps.counts:
                assert loop.time() < deadline, engine.gaps.entries()
                await asyncio.sleep(0.1)
            assert engine.metrics is not None
            url = engine.metrics.url
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{url}/gaps?symbol={sym.lower()}") as resp:
                    assert resp.status == 200
                    body = await resp.json()
                async with http.get(f"{url}/gaps?outcome=gone") as resp:
                    assert resp.status == 400
                    assert "outcome must be one of" in (await resp.json())["error"]
                async with http.get(f"{url}/gaps?limit=x") as resp:
                    assert resp.status == 400
                async with http.get(f"{url}/metrics") as resp:
                    metrics = await resp.text()
            [gap] = body["gaps"]
            assert gap["stream"] == "depth" and gap["cause"] == "continuity"
            assert gap["outcome"] == "resynced" and gap["symbol"] == sym
            assert gap["first_id"] <= gap["last_id"]
            assert body["summary"]["by_outcome"]["resynced"] == 1
            assert (
                'meltica_gaps_total{cause="continuity",outcome="resynced",stream="depth"} 1.0'
                in metrics.splitlines()
            )
            assert "meltica_gaps_open 0.0" in metrics.splitlines()
            assert lines(path) == [gap]
        finally:
            await engine.stop()
            await fake.stop()

    run(scenario, timeout=180)

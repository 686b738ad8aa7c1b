"""The Data Bus on NATS JetStream, end to end: ``replay --set bus.backend=nats``
(a subprocess: fake exchange -> gateway -> a real ``nats-server -js``), read back
by an independent nats-py consumer of the stream.

The replay also writes every in-memory bus event to a file (its ``block``
consumer): that file is what the stream must hold, each event exactly once.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import nats
import pytest
from brokers import NatsServer, free_port, stream_messages

from meltica.broker import subject_of

CAPTURE = "hftbacktest/examples/usdm/btcusdt_20240808.gz"  # 344 s, ~105k events
HANG_GUARD_S = 240


def replay_cmd(capture: Path, out: Path, url: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "meltica",
        "replay",
        str(capture),
        "-o",
        str(out),
        "--report-json",
        str(report_path(out)),
        "--no-progress",
        "--set",
        "bus.backend=nats",
        "--set",
        f"nats.url={url}",
        *extra,
    ]


def report_path(out: Path) -> Path:
    """Where ``replay_cmd`` has the JSON report written: beside the events."""
    return out.with_name(out.name + ".report.json")


def report_of(out: Path) -> dict[str, Any]:
    return json.loads(report_path(out).read_text())  # type: ignore[no-any-return]


def check_messages(msgs: list[Any]) -> list[dict[str, Any]]:
    """The contract of each message: subject, Nats-Msg-Id = key, v1 wire JSON."""
    events = []
    for m in msgs:
        ev = json.loads(m.data)
        assert m.subject == subject_of(ev["venue"], ev["market"], ev["kind"], ev["symbol"])
        assert m.headers["Nats-Msg-Id"] == ev["key"]
        assert ev["v"] == 1
        events.append(ev)
    return events


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def trade_ids(events: list[dict[str, Any]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for ev in events:
        if ev["kind"] in ("trade", "agg_trade"):
            out[f"{ev['market']}:{ev['symbol']}"].append(ev["trade_id"])
    return out


async def wait_for_messages(url: str, at_least: int) -> None:
    """Until the stream holds `at_least` messages (the replay is under way)."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + HANG_GUARD_S
        while time.monotonic() < deadline:
            try:
                if (await js.stream_info("MELTICA")).state.messages >= at_least:
                    return
            except nats.js.errors.NotFoundError:
                pass
            await asyncio.sleep(0.05)
        raise AssertionError(f"the stream never reached {at_least} messages")
    finally:
        await nc.close()


def test_replay_through_nats_every_trade_once_in_order(
    captures_dir: Path, tmp_path: Path, nats_server: NatsServer
) -> None:
    out = tmp_path / "events.jsonl"
    proc = subprocess.run(
        replay_cmd(captures_dir / CAPTURE, out, nats_server.url, "--speed", "max"),
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
        env=os.environ.copy(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    report = report_of(out)
    bus = read_lines(out)
    assert report["nats"]["published"] == len(bus) == report["nats"]["acked"]
    assert report["nats"]["lost"] == 0
    streamed = check_messages(asyncio.run(stream_messages(nats_server.url)))
    assert [e["key"] for e in streamed] == [e["key"] for e in bus]
    trades = trade_ids(streamed)
    assert sum(len(v) for v in trades.values()) > 10_000
    for symbol, ids in trades.items():
        assert ids == sorted(set(ids)), f"{symbol}: trade ids repeated or out of order"
    assert trades == trade_ids(bus)


def test_kill_9_of_nats_server_mid_replay_loses_and_duplicates_nothing(
    captures_dir: Path, tmp_path: Path, nats_server: NatsServer
) -> None:
    out = tmp_path / "events.jsonl"
    proc = subprocess.Popen(
        replay_cmd(captures_dir / CAPTURE, out, nats_server.url, "--speed", "40"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    try:
        asyncio.run(wait_for_messages(nats_server.url, 20_000))
        nats_server.kill()
        time.sleep(2)  # the outage itself: the server is down this long
        nats_server.start()
        _, stderr = proc.communicate(timeout=HANG_GUARD_S)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    report = report_of(out)
    assert report["nats"]["disconnects"] >= 1 and report["nats"]["republished"] > 0
    assert report["nats"]["lost"] == 0
    bus = read_lines(out)
    streamed = check_messages(asyncio.run(stream_messages(nats_server.url)))
    keys = [e["key"] for e in streamed]
    assert len(keys) == len(set(keys)), "duplicated events in the stream"
    assert sorted(keys) == sorted(e["key"] for e in bus), "lost events"
    for symbol, ids in trade_ids(streamed).items():
        assert ids == sorted(ids), f"{symbol}: trades out of order"


def test_longer_outage_under_drop_counts_drops_and_names_them_in_gap_events(
    captures_dir: Path, tmp_path: Path, nats_server: NatsServer
) -> None:
    out = tmp_path / "events.jsonl"
    proc = subprocess.Popen(
        replay_cmd(
            captures_dir / CAPTURE,
            out,
            nats_server.url,
            "--speed",
            "40",
            "--set",
            "nats.outage_policy=drop",
            "--set",
            "nats.publish_buffer=512",
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    try:
        asyncio.run(wait_for_messages(nats_server.url, 10_000))
        nats_server.kill()
        time.sleep(3)  # the outage: far longer than 512 events at this rate
        nats_server.start()
        _, stderr = proc.communicate(timeout=HANG_GUARD_S)
    finally:
        proc.kill()
    assert "Traceback" not in stderr
    assert proc.returncode == 1, stderr[-3000:]  # events were lost: the replay says so
    report = report_of(out)
    dropped = sum(report["nats"]["dropped"].values())
    assert dropped > 0 and report["nats"]["lost"] == dropped
    bus = read_lines(out)
    streamed = check_messages(asyncio.run(stream_messages(nats_server.url)))
    keys = [e["key"] for e in streamed]
    assert len(keys) == len(set(keys))
    gaps = [e for e in streamed if e["kind"] == "gap" and e["reason"] == "bus_outage"]
    assert gaps and report["nats"]["gaps"] == len(gaps)
    in_stream = set(keys)
    missing = [e for e in bus if e["key"] not in in_stream]
    assert len(missing) == dropped

    def label(e: dict[str, Any]) -> str:
        # a gap's state: the kind, and the source of a book snapshot
        return f"book_snapshot:{e['source']}" if e["kind"] == "book_snapshot" else e["kind"]

    # every missing event is named by a gap event of its subject, and a gap names
    # only missing events
    for ev in missing:
        assert any(
            g["symbol"] == ev["symbol"]
            and g["market"] == ev["market"]
            and g["state"] == label(ev)
            and g["from_seq"] <= ev["seq"] <= g["to_seq"]
            for g in gaps
        ), f"dropped without a gap event: {ev['key']}"
    for g in gaps:
        named = [
            e
            for e in bus
            if label(e) == g["state"]
            and e["symbol"] == g["symbol"]
            and e["seq"] is not None
            and g["from_seq"] <= e["seq"] <= g["to_seq"]
        ]
        assert named and all(e["key"] not in in_stream for e in named)
    assert set(keys) - {g["key"] for g in gaps} <= {e["key"] for e in bus}


@pytest.mark.parametrize("case", ["wrong_password", "unreachable"])
def test_bad_nats_settings_fail_at_start_naming_the_key(
    captures_dir: Path, tmp_path: Path, case: str
) -> None:
    extra = ["--set", "nats.connect_timeout_s=2"]
    if case == "wrong_password":
        server = NatsServer(tmp_path, user="meltica", password="right")
        server.start()
        url = server.url
        extra += ["--set", "nats.user=meltica", "--set", "nats.password=wrong"]
        key = "nats.user/nats.password"
    else:
        server = None
        url = f"nats://127.0.0.1:{free_port()}"
        key = "nats.url"
    try:
        proc = subprocess.run(
            replay_cmd(captures_dir / CAPTURE, tmp_path / "o.jsonl", url, *extra),
            capture_output=True,
            text=True,
            timeout=HANG_GUARD_S,
            env=os.environ.copy(),
        )
    finally:
        if server is not None:
            server.stop()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and key in errors[0], proc.stderr[-3000:]


def test_an_existing_stream_is_checked_and_a_storage_change_names_the_key(
    nats_server: NatsServer,
) -> None:
    from meltica.broker import BrokerError, connect
    from meltica.bus.nats import ensure_stream
    from meltica.config import NatsConfig

    async def go() -> None:
        cfg = NatsConfig(url=nats_server.url)
        nc = await connect(cfg, name="test")
        try:
            assert (await ensure_stream(nc, cfg, ["binance"]))["created"] is True
            # found again (as nats-py reports it), same settings: accepted as is
            assert await ensure_stream(nc, cfg, ["binance"]) == {"created": False, "updated": []}
            longer = NatsConfig(url=nats_server.url, max_age_s=7200.0)
            assert (await ensure_stream(nc, longer, ["binance"]))["updated"] == ["nats.max_age_s"]
            with pytest.raises(BrokerError, match=r"^nats\.storage: "):
                await ensure_stream(
                    nc, NatsConfig(url=nats_server.url, storage="memory"), ["binance"]
                )
        finally:
            await nc.close()

    asyncio.run(go())

"""``meltica-engine ctl`` against a real gateway, over NATS and over HTTP.

A synthetic fake exchange runs in its own process, a ``nats-server`` of the
test's own on a free loopback port, and the gateway as ``python -m meltica run``
(``bus.backend=nats``, ``gateway.id=gw1``, subscribed to one symbol's trades at
start).  ``ctl`` runs as a real subprocess.  The tests watch what the gateway
publishes through its ``/tail`` endpoint (the in-memory Data Bus), and, in
``test_ctl_first_event_at_a_nats_consumer``, at an independent consumer of the
NATS Data Bus (``meltica.client``) in the test process.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
from aio import run
from brokers import NatsServer, free_port
from fakeproc import fake_exchange

from meltica.client import connect as client_connect
from meltica.commands.common import local_overrides
from meltica.replay.synthetic import SyntheticMarket

GATEWAY = "gw1"
SOURCE = SyntheticMarket(markets=("spot",), symbols_per_market=2)
MARKER, TARGET = SOURCE.symbols("spot")  # MARKER: subscribed at start; TARGET: by ctl


@dataclass
class Gateway:
    url: str  # its HTTP server
    nats: str


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    server.start()
    fake = ExitStack()  # the fake exchange's process, stopped last
    ws, rest = fake.enter_context(
        fake_exchange("--markets", "spot", "--symbols", "2", "--speed", "2", "--duration", "900")
    )
    overrides = [
        *local_overrides(ws, rest, symbols={"spot": [MARKER]}, streams={"spot": ["trade"]}),
        "telemetry.metrics_port=0",
        "bus.backend=nats",
        f"nats.url={server.url}",
        f"gateway.id={GATEWAY}",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "meltica", "run", *(a for o in overrides for a in ("--set", o))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    # drain stderr all along (a full pipe would stall the gateway); note the URL and readiness
    lines: list[str] = []
    ready = threading.Event()

    def drain() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "INFO meltica.engine: running:" in line:
                ready.set()
        ready.set()  # exited

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    try:
        assert ready.wait(120) and proc.poll() is None, "".join(lines)[-3000:]
        url = re.search(r"metrics (http://127\.0\.0\.1:\d+)/metrics", "".join(lines))
        assert url is not None, "".join(lines)[-3000:]
        yield Gateway(url.group(1), server.url)
    finally:
        proc.terminate()
        proc.wait(30)
        thread.join(10)
        if proc.stderr is not None:
            proc.stderr.close()
        fake.close()
        server.stop()
    assert "Traceback" not in "".join(lines), "".join(lines)[-3000:]


async def ctl(*args: str) -> tuple[int, str, str]:
    """``python -m meltica ctl ARGS`` as a subprocess: (exit status, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "meltica", "ctl", *args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=os.environ.copy(),
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def ctl_sync(*args: str) -> tuple[int, str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "meltica", "ctl", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.returncode, proc.stdout, proc.stderr


async def tail_events(session: aiohttp.ClientSession, url: str) -> AsyncIterator[dict[str, Any]]:
    async with session.get(
        f"{url}/tail", params=[("kind", "trade"), ("symbol", MARKER), ("symbol", TARGET)]
    ) as resp:
        assert resp.status == 200
        async for line in resp.content:
            yield json.loads(line)


def _where(gateway: Gateway, transport: str) -> list[str]:
    if transport == "http":
        return ["--url", gateway.url]
    if transport == "nats":
        return ["--nats", gateway.nats, "--gateway", GATEWAY]
    return ["--nats", gateway.nats]  # nats-discover: the one gateway that answers


@pytest.mark.parametrize("transport", ["nats", "nats-discover", "http"])
def test_ctl_subscribe_first_event_unsubscribe_no_late_events(
    gateway: Gateway, transport: str
) -> None:
    where = _where(gateway, transport)
    sub = ["--market", "spot", "--symbols", TARGET.lower(), "--channels", "trade"]

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            events = tail_events(session, gateway.url)
            # the tail's bus consumer exists once its first event is here
            assert (await anext(events))["symbol"] == MARKER

            before = time.time_ns()
            code, out, err = await ctl("subscribe", *sub, *where)
            assert code == 0, err
            reply = json.loads(out)
            assert reply["ok"] and reply["result"]["gateway"] == GATEWAY
            assert reply["result"]["added"] == [f"spot:{TARGET}:trade"]
            async for ev in events:  # the first event of the new stream
                if ev["symbol"] == TARGET:
                    assert ev["ts_recv"] > before
                    break

            code, out, err = await ctl("unsubscribe", *sub, *where)
            assert code == 0, err
            assert json.loads(out)["ok"]
            replied = time.time_ns()  # the reply was sent before ctl exited
            # MARKER's stream shares the connection: once its events received after the
            # reply are through, every frame of TARGET before them is through too
            late, markers = [], 0
            async for ev in events:
                if ev["symbol"] == TARGET and ev["ts_recv"] > replied:
                    late.append(ev)
                elif ev["symbol"] == MARKER and ev["ts_recv"] > replied:
                    markers += 1
                    if markers == 20:
                        break
            assert late == []
            code, out, _ = await ctl("list", "--market", "spot", *where)
            listed = json.loads(out)
            listed = listed[0] if isinstance(listed, list) else listed
            assert listed["result"]["subscriptions"]["spot"] == {MARKER: ["trade"]}
            await events.aclose()

    run(scenario, timeout=180)


# what the NATS consumer subscribes to; a test of the test points it elsewhere
NATS_CONSUMER = {"market": "spot", "kind": "trade"}
WAIT_S = 60.0  # hang guard for one awaited event


@pytest.mark.parametrize("transport", ["nats", "http"])
def test_ctl_first_event_at_a_nats_consumer(gateway: Gateway, transport: str) -> None:
    """ctl subscribe -> the stream's first event at a NATS Data Bus consumer -> ctl
    unsubscribe -> no event of the stream received after the reply reaches that consumer."""
    where = _where(gateway, transport)
    sub = ["--market", "spot", "--symbols", TARGET.lower(), "--channels", "trade"]

    async def scenario() -> None:
        async with client_connect(gateway.nats, name="test-consumer") as client:
            events = client.subscribe(**NATS_CONSUMER, symbol=[MARKER, TARGET], start="new")
            await events.open()  # start="new" begins here, before the subscribe

            async def next_event() -> Any:
                return await asyncio.wait_for(anext(events), WAIT_S)

            # the stream the gateway had from the start reaches the consumer
            assert (await next_event()).symbol == MARKER

            before = time.time_ns()
            code, out, err = await ctl("subscribe", *sub, *where)
            assert code == 0, err
            reply = json.loads(out)
            assert reply["ok"] and reply["result"]["added"] == [f"spot:{TARGET}:trade"]
            while (ev := await next_event()).symbol != TARGET:  # the new stream's first event
                pass
            assert ev.ts_recv > before and ev.market == "spot" and ev.kind == "trade"

            code, out, err = await ctl("unsubscribe", *sub, *where)
            assert code == 0, err
            assert json.loads(out)["ok"]
            replied = time.time_ns()  # the reply was sent before ctl exited
            # MARKER's stream shares the gateway's connection and the NATS publisher keeps
            # the bus order: once MARKER events received after the reply are here, every
            # TARGET event received before them is here too
            late, markers = [], 0
            while markers < 20:
                ev = await next_event()
                if ev.symbol == TARGET and ev.ts_recv > replied:
                    late.append(ev)
                elif ev.symbol == MARKER and ev.ts_recv > replied:
                    markers += 1
            assert late == []

    run(scenario, timeout=240)


def test_ctl_list_and_status_gather_over_nats(gateway: Gateway) -> None:
    for op in ("list", "status"):
        code, out, err = ctl_sync(op, "--nats", gateway.nats)
        assert code == 0, err
        replies = json.loads(out)
        assert [r["result"]["gateway"] for r in replies] == [GATEWAY]
        assert all(r["ok"] for r in replies)


@pytest.mark.parametrize("transport", ["nats", "http"])
def test_ctl_error_reply_exits_1(gateway: Gateway, transport: str) -> None:
    code, out, err = ctl_sync(
        "subscribe",
        *("--market", "spot", "--symbols", "nosuchusdt", "--channels", "trade"),
        *_where(gateway, transport),
    )
    assert code == 1, err
    reply = json.loads(out)
    assert not reply["ok"] and "NOSUCHUSDT" in reply["error"]


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_ctl_unreachable_and_bad_usage_exit_2(gateway: Gateway) -> None:
    nowhere = free_port()  # nothing listens there
    code, out, err = ctl_sync("status", "--nats", f"nats://127.0.0.1:{nowhere}", "--timeout", "5")
    assert code == 2 and out == ""
    assert f"127.0.0.1:{nowhere}" in _one_error_line(err)
    code, out, err = ctl_sync("status", "--url", f"http://127.0.0.1:{nowhere}")
    assert code == 2 and out == ""
    assert f"127.0.0.1:{nowhere}" in _one_error_line(err)
    code, out, err = ctl_sync("status", "--nats", gateway.nats, "--gateway", "nobody")
    assert code == 2 and "meltica.control.nobody" in _one_error_line(err)
    code, out, err = ctl_sync("subscribe", "--market", "spot", "--channels", "trade")
    assert code == 2 and "--symbols" in _one_error_line(err)
    code, out, err = ctl_sync(
        "subscribe", *("--market", "spot", "--symbols", "btcusdt", "--channels", "trades")
    )
    assert code == 2 and "trades" in _one_error_line(err)
    code, out, err = ctl_sync("status", "--nats", "http://127.0.0.1:1")
    assert code == 2 and "--nats" in _one_error_line(err)
    code, _, err = ctl_sync("explode")  # argparse's own usage error
    assert code == 2 and "Traceback" not in err


def test_nats_abuse_gets_error_replies_and_the_gateway_keeps_serving(gateway: Gateway) -> None:
    async def scenario() -> None:
        nc = await nats.connect(gateway.nats)
        try:
            subject = f"meltica.control.{GATEWAY}"

            async def ask(subj: str, payload: bytes) -> dict[str, Any]:
                reply: dict[str, Any] = json.loads((await nc.request(subj, payload, 30)).data)
                return reply

            for payload, needle in (
                (b"{not json", "not JSON"),
                (b"\xff\xfe", "not JSON"),
                (b'{"op": "explode", "request_id": "r1"}', "unknown control op"),
                (b'{"op": "status", "symbols": "BTCUSDT"}', "list of strings"),
                (b"[1, 2]", "must be an object"),
                (b'{"op": "list", "request_id": "' + b"x" * 70_000 + b'"}', "over 65536 bytes"),
            ):
                reply = await ask(subject, payload)
                assert not reply["ok"] and needle in reply["error"], reply
                assert reply["result"]["gateway"] == GATEWAY
            assert (await ask(subject, b'{"op": "explode", "request_id": "r1"}'))[
                "request_id"
            ] == "r1"
            # changing ops are not broadcast: every gateway says where they go
            reply = await ask(
                "meltica.control",
                json.dumps({"op": "resync", "market": "spot", "symbols": [MARKER]}).encode(),
            )
            assert not reply["ok"] and "meltica.control.<gateway id>" in reply["error"]
            await nc.publish(subject, b'{"op": "status"}')  # no reply subject: ignored
            reply = await ask(subject, b'{"op": "status", "request_id": "after"}')
            assert reply["ok"] and reply["request_id"] == "after"
        finally:
            await nc.close()
        async with aiohttp.ClientSession() as session, session.get(gateway.url + "/metrics") as r:
            text = await r.text()
        assert re.search(r"meltica_control_nats_oversized_total [1-9]", text), text[-2000:]
        assert re.search(r"meltica_control_nats_not_broadcast_total [1-9]", text)
        assert re.search(r"meltica_control_malformed_total [1-9]", text)

    run(scenario, timeout=120)


def test_http_abuse_gets_error_replies(gateway: Gateway) -> None:
    async def scenario() -> None:
        url = gateway.url + "/control"
        async with aiohttp.ClientSession() as session:

            async def post(data: Any, **kw: Any) -> tuple[int, dict[str, Any]]:
                async with session.post(url, data=data, **kw) as resp:
                    return resp.status, await resp.json()

            status, body = await post(b"{not json")
            assert status == 400 and not body["ok"] and "not JSON" in body["error"]
            status, body = await post(b'{"op": "explode"}')
            assert status == 400 and "unknown control op 'explode'" in body["error"]
            status, body = await post(b'{"op": "list", "x": 1}')
            assert status == 400 and "unknown control request field" in body["error"]
            status, body = await post(b" " * 1_000_000)
            assert status == 413 and "over 65536 bytes" in body["error"]

            async def chunks() -> AsyncIterator[bytes]:  # no Content-Length
                for _ in range(100):
                    yield b" " * 1000

            status, body = await post(chunks())
            assert status == 413 and not body["ok"]
            status, body = await post(b'{"op": "status", "request_id": "ok-after"}')
            assert status == 200 and body["ok"] and body["request_id"] == "ok-after"
            async with session.get(url) as resp:
                assert resp.status == 405

    run(scenario, timeout=120)


def test_readme_ctl_usage_parses() -> None:
    """The README's ctl lines are commands the parser accepts."""
    from meltica.cli import build_parser

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    found = re.findall(r"^meltica-engine (ctl .+)$", readme, re.M)
    assert len(found) >= 3, found
    for line in found:
        build_parser().parse_args(line.split())

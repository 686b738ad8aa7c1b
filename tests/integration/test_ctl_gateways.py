"""Several gateways on one NATS server, and ``POST /control`` off loopback.

Two `Engine` instances (``gateway.id`` ``east`` and ``west``) run in this
process against one in-process fake exchange and share a ``nats-server``;
``ctl`` runs as a subprocess.  The HTTP tests bind the gateway's server to an
address of this machine that is not loopback (or the wildcard when it has
none) and call it there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
from typing import Any

import aiohttp
from aio import run
from brokers import NatsServer

from meltica.commands.common import local_overrides
from meltica.config import load_config
from meltica.engine import Engine
from meltica.replay.exchange import FakeExchange
from meltica.replay.synthetic import SyntheticMarket

SOURCE = SyntheticMarket(markets=("spot",), symbols_per_market=2, seed=3)
SYM_A, SYM_B = SOURCE.symbols("spot")


def make_engine(fake: FakeExchange, *extra: str) -> Engine:
    overrides = [
        *local_overrides(
            {"spot": fake.ws_url("spot")},
            fake.rest_url,
            symbols={"spot": [SYM_A]},
            streams={"spot": ["trade"]},
        ),
        "telemetry.metrics_port=0",
        *extra,
    ]
    return Engine(load_config(None, env={}, overrides=overrides))


async def ctl(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "meltica", "ctl", *args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if not k.startswith("MELTICA_TELEMETRY")},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def test_two_gateways_answer_list_and_status_and_changes_need_a_gateway(tmp_path: Any) -> None:
    server = NatsServer(tmp_path)
    server.start()

    async def scenario() -> None:
        fake = FakeExchange(SOURCE, speed=2.0)
        await fake.start()
        nats_set = ["bus.backend=nats", f"nats.url={server.url}"]
        engines: list[Engine] = []
        try:
            east = make_engine(fake, *nats_set, "gateway.id=east")
            west = make_engine(fake, *nats_set, "gateway.id=west")
            engines += [east, west]
            await east.start()
            await west.start()
            for op in ("list", "status"):
                code, out, err = await ctl(op, "--nats", server.url, "--wait", "1")
                assert code == 0, err
                replies = json.loads(out)
                assert [r["result"]["gateway"] for r in replies] == ["east", "west"]
                assert all(r["ok"] for r in replies)

            sub = ["--market", "spot", "--symbols", SYM_B, "--channels", "trade"]
            code, out, err = await ctl("subscribe", *sub, "--nats", server.url)
            assert code == 2 and out == ""
            assert "2 gateways answer (east, west): choose one with --gateway" in err

            code, out, err = await ctl("subscribe", *sub, "--nats", server.url, "--gateway", "west")
            assert code == 0, err
            assert json.loads(out)["result"]["gateway"] == "west"
            assert (east.dispatcher.subscriptions().get(("spot", SYM_B)) or set()) == set()
            assert west.dispatcher.subscriptions()[("spot", SYM_B)] == {"trade"}
            assert east.control_nats is not None and west.control_nats is not None
            # list, status, the refused subscribe's discovery (status), and west's subscribe
            assert west.control_nats.stats()["replies"] == 4
            assert east.control_nats.stats()["replies"] == 3
        finally:
            for engine in engines:
                await engine.stop()
            await fake.stop()
        assert east.nats is None and west.nats is None  # closed on stop

    try:
        run(scenario, timeout=180)
    finally:
        server.stop()


def _non_loopback_address() -> tuple[str, str]:
    """(address to bind, address to call): one of this machine's own addresses that is
    not loopback (a UDP connect picks the source address and sends nothing), else the
    wildcard, called on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: any route will do
            addr: str = s.getsockname()[0]
        except OSError:
            addr = ""
    if addr and not addr.startswith("127."):
        return addr, addr
    return "0.0.0.0", "127.0.0.1"


def test_control_off_loopback_needs_the_bearer_token() -> None:
    bind, call = _non_loopback_address()

    async def scenario() -> None:
        fake = FakeExchange(SOURCE, speed=2.0)
        await fake.start()
        engines: list[Engine] = []
        try:
            guarded = make_engine(
                fake, f"telemetry.metrics_host={bind}", "telemetry.control_token=s3cret"
            )
            bare = make_engine(fake, f"telemetry.metrics_host={bind}")
            engines += [guarded, bare]
            await guarded.start()
            await bare.start()
            assert guarded.metrics is not None and bare.metrics is not None
            url = f"http://{call}:{guarded.metrics.port}/control"
            status_req = {"op": "status", "request_id": "s1"}
            async with aiohttp.ClientSession() as session:

                async def post(target: str, **headers: str) -> tuple[int, dict[str, Any]]:
                    async with session.post(target, json=status_req, headers=headers) as resp:
                        return resp.status, await resp.json()

                status, body = await post(url)
                assert status == 401 and not body["ok"] and "Bearer" in body["error"]
                status, body = await post(url, Authorization="Bearer wrong")
                assert status == 403 and not body["ok"]
                status, body = await post(url, Authorization="Basic s3cret")
                assert status == 401
                status, body = await post(url, Authorization="Bearer s3cret")
                assert status == 200 and body["ok"] and body["request_id"] == "s1"
                # no token configured, not loopback: refused whatever the caller sends
                bare_url = f"http://{call}:{bare.metrics.port}/control"
                status, body = await post(bare_url, Authorization="Bearer s3cret")
                assert status == 403 and "telemetry.control_token is not set" in body["error"]

            base = f"http://{call}:{guarded.metrics.port}"
            code, out, err = await ctl("status", "--url", base, "--token", "s3cret")
            assert code == 0, err
            assert json.loads(out)["ok"]
            code, out, err = await ctl("status", "--url", base)
            assert code == 1, err  # the 401 is an error reply
            assert "Bearer" in json.loads(out)["error"]
            assert guarded.control_http.stats()["unauthorized"] == 3
            assert guarded.control_http.stats()["forbidden"] == 1
        finally:
            for engine in engines:
                with contextlib.suppress(Exception):
                    await engine.stop()
            await fake.stop()

    run(scenario, timeout=180)

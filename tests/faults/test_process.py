"""The gateway process is stopped: SIGTERM (a clean stop) and SIGKILL, each followed by a
restart, while the market runs.  ``meltica-engine run`` is a real subprocess publishing to a
real ``nats-server -js``; the fake exchange runs in the test.

What the stream's consumer must see: no event key twice (after SIGKILL the restarted
gateway publishes again what the killed one had published, and JetStream's deduplication
by ``Nats-Msg-Id`` = key must absorb it); the trade ids in order, each once, with exactly
one hole, the trades the exchange sent while no gateway was subscribed; after the restart
every trade to the end.  SIGTERM exits 0 and flushes what it had read.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
from brokers import NatsServer, free_port
from fault_harness import Reference, stream_events

from meltica.commands.common import local_overrides
from meltica.replay.exchange import FakeExchange
from meltica.replay.synthetic import SyntheticMarket

SEED = 5
DURATION_S = 16.0  # synthetic seconds
SPEED = 2.0


class GatewayProcess:
    """``python -m meltica run`` against the fake exchange, publishing to NATS."""

    def __init__(self, fake: FakeExchange, nats_url: str, tmp: Path) -> None:
        self.port = free_port()
        overrides = [
            *local_overrides(
                {"spot": fake.ws_url("spot")},
                fake.rest_url,
                symbols={"spot": ["btcusdt"]},
                streams={"spot": ["trade", "book_ticker", "depth"]},
            ),
            "bus.backend=nats",
            f"nats.url={nats_url}",
            "gateway.id=proc-gw",
            f"telemetry.metrics_port={self.port}",
            "binance.reconnect_initial_s=0.05",
        ]
        self.cmd = [sys.executable, "-m", "meltica", "--log-level", "INFO", "run"]
        for o in overrides:
            self.cmd += ["--set", o]
        self.tmp = tmp
        self.runs = 0
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def log(self) -> Path:
        return self.tmp / f"gateway-{self.runs}.log"

    async def start(self) -> None:
        self.runs += 1
        with self.log.open("w") as err:
            # the caller's environment as it is: CI runs an installed package
            self.proc = await asyncio.create_subprocess_exec(
                *self.cmd, stdout=asyncio.subprocess.DEVNULL, stderr=err, env=dict(os.environ)
            )

    async def ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                assert self.proc is not None and self.proc.returncode is None, self.tail()
                try:
                    async with http.get(f"http://127.0.0.1:{self.port}/readyz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"gateway not ready: {self.tail()}")

    async def signal(self, sig: int, timeout_s: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return await asyncio.wait_for(self.proc.wait(), timeout_s)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


async def _messages_in_stream(url: str) -> int:
    nc = await nats.connect(url)
    try:
        try:
            info = await nc.jetstream().stream_info("MELTICA")
        except nats.js.errors.NotFoundError:
            return 0
        return int(info.state.messages)
    finally:
        await nc.close()


async def _wait(pred: Any, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not await pred():
        assert time.monotonic() < deadline, f"timed out: {what}"
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_the_gateway_stopped_and_restarted_duplicates_nothing(
    sig: int, tmp_path: Path, nats_server: NatsServer
) -> None:
    source = SyntheticMarket(
        markets=("spot",), symbols_per_market=1, seed=SEED, duration_s=DURATION_S
    )
    expected = Reference(
        SyntheticMarket(markets=("spot",), symbols_per_market=1, seed=SEED, duration_s=DURATION_S)
    ).trades[("spot", "BTCUSDT", "trade")]

    async def scenario() -> tuple[int, list[dict[str, Any]]]:
        fake = FakeExchange(source, speed=SPEED)
        await fake.start()
        gw = GatewayProcess(fake, nats_server.url, tmp_path)
        try:
            await gw.start()
            await gw.ready()

            async def some() -> bool:
                return await _messages_in_stream(nats_server.url) >= 200

            await _wait(some, "events in the stream")
            status = await gw.signal(sig)
            await asyncio.sleep(0.5)  # the market goes on without a gateway
            await gw.start()
            await gw.ready()
            await asyncio.wait_for(fake.finished.wait(), 120)
            await asyncio.sleep(1.0)  # the last frames through the pipeline
            assert await gw.signal(signal.SIGTERM) == 0, gw.tail()
        finally:
            if gw.proc is not None and gw.proc.returncode is None:
                gw.proc.kill()
                await gw.proc.wait()
            await fake.stop()
        return status, await stream_events(nats_server.url)

    from aio import run

    status, streamed = run(scenario, timeout=240)
    assert status == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
    keys = Counter(e["key"] for e in streamed)
    assert not [k for k, n in keys.items() if n > 1], "an event key twice in the stream"
    ids = [e["trade_id"] for e in streamed if e["kind"] == "trade"]
    assert ids == sorted(set(ids)), "trades out of order or twice"
    assert set(ids) <= set(expected)
    # one hole: the trades sent while no gateway was subscribed; then every one to the end
    first = ids[0]
    want = [i for i in sorted(expected) if i >= first]
    holes = [(a, b) for a, b in itertools.pairwise(ids) if b != a + 1]
    assert len(holes) == 1, holes
    assert ids[-1] == want[-1], "the restarted gateway did not deliver to the end"
    assert len(ids) > len(want) // 2

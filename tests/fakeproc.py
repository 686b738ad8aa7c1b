"""The fake exchange as the gateway tests reach it: a synthetic one in its own
process (``meltica-engine fake-exchange``), for tests that run the gateway as a
user would, a real ``run`` subprocess against loopback URLs; and an `Engine`
pointed at an in-process `FakeExchange` that serves a synthetic market or
replays a capture, with the batches a consumer of it reads."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager

from meltica import Event
from meltica.bus.data import Consumer
from meltica.commands.common import local_overrides
from meltica.config import load_config
from meltica.engine import Engine
from meltica.replay.exchange import FakeExchange
from meltica.replay.source import CaptureSource
from meltica.replay.synthetic import SyntheticMarket

# the spot capture the replay tests send: BTCUSDT, depth at 100 ms
REPLAY_CAPTURE = "hftbacktest/examples/spot/btcusdt_20240808.gz"
REPLAY_SYMBOLS = {"spot": ["btcusdt"]}


@contextmanager
def fake_exchange(*args: str) -> Iterator[tuple[dict[str, str], str]]:
    """Start ``fake-exchange --synthetic ARGS``; yields (ws urls by market, rest url)
    once it printed them, and stops the process on exit."""
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "meltica", "--log-level", "WARNING", "fake-exchange"),
            *("--synthetic", *args),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        ws: dict[str, str] = {}
        rest = ""
        assert proc.stdout is not None
        while not rest:
            line = proc.stdout.readline()
            assert line, "the fake exchange exited before printing its URLs"
            head, _, url = line.strip().partition(": ")
            if head.startswith("ws "):
                ws[head[3:]] = url
            elif head == "rest":
                rest = url
        yield ws, rest
    finally:
        proc.terminate()
        proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()


def engine_against(
    fake: FakeExchange,
    symbols: Mapping[str, Sequence[str]],
    *overrides: str,
    subscribe_on_start: bool = True,
) -> Engine:
    """An `Engine` pointed at ``fake`` for ``symbols`` by market (only those
    markets enabled), with the config ``overrides`` after; not started."""
    local = local_overrides(
        {m: fake.ws_url(m) for m in symbols},
        fake.rest_url,
        symbols=symbols,
        recorded_snapshots=isinstance(fake.source, CaptureSource),
    )
    config = load_config(None, env={}, overrides=[*local, *overrides])
    return Engine(config, subscribe_on_start=subscribe_on_start)


def spot_books_engine(
    fake: FakeExchange, symbols: Sequence[str], channels: Sequence[str], *overrides: str
) -> Engine:
    """An `Engine` for ``fake``'s spot ``symbols`` and ``channels``, books of 100-level
    snapshots, no /metrics and no audits, the config ``overrides`` after: the many-books
    start-ups (REST queue, wait tail, connection packing)."""
    return engine_against(
        fake,
        {"spot": symbols},
        f"binance.spot.streams=[{', '.join(channels)}]",
        "telemetry.metrics_enabled=false",
        "conductor.audit_interval_s=0",
        "binance.spot.depth_snapshot_limit=100",
        *overrides,
    )


def synthetic_engine(fake: FakeExchange, source: SyntheticMarket, *overrides: str) -> Engine:
    """An `Engine` for ``fake`` serving the synthetic ``source``: every market and
    symbol of it, spot trade, book_ticker and depth, reconnects after 0.05 to 0.5 s;
    the config ``overrides`` after."""
    return engine_against(
        fake,
        {m: source.symbols(m) for m in source.markets},
        "binance.spot.streams=[trade, book_ticker, depth]",
        "binance.reconnect_initial_s=0.05",
        "binance.reconnect_max_s=0.5",
        *overrides,
    )


def replay_engine(fake: FakeExchange, *overrides: str) -> Engine:
    """An `Engine` for ``fake`` replaying REPLAY_CAPTURE: a bus of 16384, no
    /metrics, the config ``overrides`` after; nothing subscribed at start
    (`start_replay` subscribes the capture's streams)."""
    return engine_against(
        fake,
        REPLAY_SYMBOLS,
        "binance.spot.depth_speed_ms=100",
        "bus.capacity=16384",
        "telemetry.metrics_enabled=false",
        *overrides,
        subscribe_on_start=False,
    )


async def start_replay(engine: Engine, fake: FakeExchange, source: CaptureSource) -> None:
    """Start ``engine``, subscribe it to the spot streams of ``source`` and let
    ``fake`` (started with ``start="manual"``) begin sending."""
    await engine.start()
    reply = await engine.subscribe_streams("spot", sorted(source.streams("spot")))
    assert reply.ok, reply
    fake.begin()


async def batches(consumer: Consumer, idle_s: float = 5.0) -> AsyncIterator[list[Event]]:
    """The batches ``consumer`` receives, until none comes for ``idle_s``."""
    while True:
        try:
            batch = await asyncio.wait_for(consumer.next_batch(), idle_s)
        except TimeoutError:
            return
        yield batch

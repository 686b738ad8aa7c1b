"""The JetStream publisher's outage policy on a real ``nats-server -js``: error
replies hold the publishes, the oldest frame alone probes on a backoff schedule,
and the window is sent again once, when a probe is acknowledged.

The outage is a stream that goes away: with no stream bound to the subjects,
every publish is answered ``503`` (no responders), as while a cluster elects a
stream leader; the stream is created again to end it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import nats
from brokers import NatsServer, nats_clients, read_stream, start_publisher
from test_nats_acks import HANG_GUARD_S, trades

from meltica.bus.nats import (
    ACK_TIMEOUT_S,
    PROBE_FIRST_S,
    PROBE_MAX_S,
    TICK_S,
    ensure_stream,
)
from meltica.config import NatsConfig


def most_probes(elapsed_s: float) -> int:
    """How many probes the schedule sends at most within `elapsed_s` of the first
    error reply (each probe waits at least its delay; a tick late only delays)."""
    t, delay, n = 0.0, PROBE_FIRST_S, 0
    while True:
        t += delay
        if t > elapsed_s:
            return n
        n += 1
        delay = min(delay * 2, PROBE_MAX_S)


async def wait_until(cond: object, what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"never: {what}"
        await asyncio.sleep(0.01)


async def stream_keys(nc: nats.NATS, stream: str) -> list[str]:
    return [m.headers["Nats-Msg-Id"] for m in await read_stream(nc, stream, HANG_GUARD_S)]


def test_error_replies_hold_the_window_probe_with_backoff_and_resend_it_once(
    nats_server: NatsServer,
) -> None:
    async def run() -> None:
        cfg = NatsConfig(url=nats_server.url, publish_buffer=8192, storage="memory")
        async with nats_clients(nats_server.url, 2) as (nc, admin):
            await ensure_stream(admin, cfg, ["binance"])
            bus, pub = await start_publisher(nc, cfg)
            before = trades(1000)
            bus.publish_batch(before)
            await wait_until(lambda: pub.window.acked == 1000, "the first events acked")
            assert pub.stats()["outages"] == 0

            # the outage: the stream is gone, every publish gets a 503
            await admin.jetstream().delete_stream(cfg.stream)
            during = trades(5000, start=1000)
            for i in range(0, len(during), 500):
                bus.publish_batch(during[i : i + 500])
                await asyncio.sleep(0.01)
            await wait_until(lambda: pub.window.errors > 0, "an error reply")
            held_at = time.monotonic()
            assert pub._held
            await asyncio.sleep(2.0)
            await wait_until(lambda: bus.depth == 0 or pub.window.room == 0, "the ring read")
            probes = pub.window.republished
            elapsed = time.monotonic() - held_at
            # only the oldest frame goes out during the outage, on the schedule
            assert 1 <= probes <= most_probes(elapsed + TICK_S), (probes, elapsed)
            # every frame is refused at most once, plus the probes: no resend storm
            assert pub.window.errors <= len(during) + probes
            assert pub.window.unacked == len(during) and pub._held

            # the stream is back: one probe is acked, then the window once
            await ensure_stream(admin, cfg, ["binance"])
            await wait_until(lambda: pub.window.unacked == 0, "the window drained")
            stats = pub.stats()
            assert stats["outages"] == 1, stats
            assert stats["published"] == stats["acked"] == 6000
            # the probes, then each held frame once (the one probe acked is not resent)
            assert probes < stats["republished"] <= probes + len(during), stats
            assert not pub._held and pub._backoff == 0  # the schedule starts over
            assert await pub.close(HANG_GUARD_S) == 0
            keys = Counter(await stream_keys(admin, cfg.stream))
            assert keys == Counter(ev.key for ev in during)  # each once, none lost

    asyncio.run(run())


def test_a_reconnect_probes_first_and_then_resends_the_window_once(
    nats_server: NatsServer,
) -> None:
    """kill -9 and restart of the server (the store kept): the publisher holds its
    window over the outage and resends it once the reconnect's probe is acked."""

    async def run() -> None:
        cfg = NatsConfig(url=nats_server.url, publish_buffer=8192, storage="file")
        async with nats_clients(
            nats_server.url, 1, max_reconnect_attempts=-1, reconnect_time_wait=0.1
        ) as (nc,):
            await ensure_stream(nc, cfg, ["binance"])
            bus, pub = await start_publisher(nc, cfg)
            events = trades(4000)
            bus.publish_batch(events[:2000])
            await wait_until(lambda: pub.window.acked == 2000, "the first events acked")
            nats_server.kill()
            bus.publish_batch(events[2000:])
            await wait_until(lambda: not pub.connected, "the disconnect seen")
            nats_server.start()
            await wait_until(lambda: pub.window.unacked == 0, "the window drained")
            stats = pub.stats()
            assert stats["disconnects"] == 1 and stats["outages"] == 1, stats
            assert stats["republished"] <= 1 + 2000, stats  # the probe, then the rest once
            assert await pub.close(HANG_GUARD_S) == 0
            keys = Counter(await stream_keys(nc, cfg.stream))
            assert keys == Counter(ev.key for ev in events)

    asyncio.run(run())


def test_unanswered_publishes_time_out_into_one_outage_and_one_resend(
    nats_server: NatsServer,
) -> None:
    """No stream and no error either: a plain subscriber takes the publishes and never
    answers.  Once the oldest frame is older than ACK_TIMEOUT_S (the publisher's clock
    is moved on) and no ack came for ACK_STALL_S, an outage begins; the stream then
    appears and the probe and the one resend store every event once."""

    async def run() -> None:
        cfg = NatsConfig(url=nats_server.url, publish_buffer=1024, storage="memory")
        skew = 0

        def clock() -> int:
            return time.time_ns() + skew

        async with nats_clients(nats_server.url, 2) as (nc, admin):
            swallowed = 0

            async def swallow(msg: object) -> None:
                nonlocal swallowed
                swallowed += 1

            await admin.subscribe("meltica.>", cb=swallow)
            await admin.flush()
            bus, pub = await start_publisher(nc, cfg, 1 << 12, 64, clock=clock)
            events = trades(300)
            bus.publish_batch(events)
            await wait_until(lambda: swallowed == 300, "the publishes delivered, unanswered")
            assert pub.window.unacked == 300 and pub.stats()["outages"] == 0
            skew = int((ACK_TIMEOUT_S + 1) * 1e9)
            await wait_until(lambda: pub._held, "the ack timeout")
            assert pub.stats()["outages"] == 1 and pub.window.republished == 1  # the probe
            assert pub.window.errors == 0
            await ensure_stream(admin, cfg, ["binance"])
            await wait_until(lambda: pub.window.unacked == 0, "the window drained")
            stats = pub.stats()
            assert stats["outages"] == 1, stats
            # the probes, then the rest of the window once
            assert 1 < stats["republished"] <= 300 + 16, stats
            assert await pub.close(HANG_GUARD_S) == 0
            keys = Counter(await stream_keys(admin, cfg.stream))
            assert keys == Counter(ev.key for ev in events)

    asyncio.run(run())

"""``meltica.client`` and ``tail --nats`` against a real nats-server.

The events are real (a synthetic Binance market through the compiled parser),
published here with plain nats-py exactly as the contract between the Data Bus
publisher and its consumers says: stream MELTICA on ``meltica.binance.>``, one
event per message on ``meltica.<venue>.<market>.<kind>.<SYMBOL>``, payload the
event's v1 wire JSON, header ``Nats-Msg-Id`` = the event's key.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aio
import nats
import pytest
from brokers import NatsServer

from meltica import Control, Event, FrameParser
from meltica.broker import BrokerError, subject_of
from meltica.client import Subscription, connect
from meltica.errors import ConfigError, MessageDecodeError, WireError
from meltica.replay.source import combined_frame
from meltica.replay.synthetic import SyntheticMarket
from meltica.wire import decode, encode

T = TypeVar("T")
HANG_GUARD_S = 60


def run(fn: Callable[[], Awaitable[T]]) -> T:
    return aio.run(fn, HANG_GUARD_S)


def market_events(n: int, seed: int = 3) -> list[Event]:
    """``n`` real events of two markets x two symbols, all kinds the synthetic market makes."""
    market = SyntheticMarket(markets=("spot", "usdm"), symbols_per_market=2, seed=seed)
    parsers = {m: FrameParser(market=m) for m in market.markets}
    out: list[Event] = []
    for frame in market.frames():
        parsed = parsers[frame.market].parse(combined_frame(frame), frame.ts_ns)
        out += [ev for ev in parsed if isinstance(ev, Event)]
        if len(out) >= n:
            return out[:n]
    raise AssertionError("the synthetic market ended")


def keys(events: list[Event]) -> list[str]:
    return [ev.key for ev in events]


class Publisher:
    """The Data Bus publisher's side of the contract, in plain nats-py."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.nc: Any = None
        self.js: Any = None

    async def __aenter__(self) -> Publisher:
        self.nc = await nats.connect(self.url)
        self.js = self.nc.jetstream()
        await self.js.add_stream(name="MELTICA", subjects=["meltica.binance.>"])
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.nc.close()

    async def publish(self, events: list[Event]) -> list[int]:
        """Each event as one message; the stream sequences the server gave them."""
        seqs = []
        for ev in events:
            ack = await self.js.publish(
                subject_of(ev.venue, ev.market, ev.kind, ev.symbol),
                encode(ev),
                headers={"Nats-Msg-Id": ev.key},
            )
            seqs.append(ack.seq)
        return seqs

    async def publish_raw(self, subject: str, payload: bytes) -> int:
        ack = await self.js.publish(subject, payload)
        return int(ack.seq)


async def take(sub: Subscription, n: int) -> list[Event]:
    out: list[Event] = []
    if n == 0:
        return out
    async for ev in sub:
        out.append(ev)
        if len(out) == n:
            break
    return out


async def next_is(sub: Subscription, pub: Publisher, sentinel: Event) -> None:
    """Nothing more is pending for ``sub``: the next event it yields is ``sentinel``,
    published now (so no sleep has to guess how long "nothing more" takes)."""
    await pub.publish([sentinel])
    (ev,) = await take(sub, 1)
    assert ev.key == sentinel.key, f"expected nothing before the sentinel, got {ev.key}"


# ---------------------------------------------------------------- durable consumers


def test_durable_consumer_restart_loses_and_repeats_nothing(nats_server: NatsServer) -> None:
    """Readers under one durable name, each stopping mid-batch, together see every
    event exactly once and in order, including those published while none ran."""
    events = market_events(420)
    first, later, sentinel = events[:300], events[300:419], events[419]

    async def go() -> None:
        async with Publisher(nats_server.url) as pub:
            await pub.publish(first)
            got: list[Event] = []
            # stop points inside batches, on a batch boundary and at what was published
            for stop_after, batch in ((37, 16), (64 - 37, 16), (150, 50), (1, 7)):
                async with connect(nats_server.url) as client:
                    sub = client.subscribe(durable="reader", start="all", batch=batch)
                    got += await take(sub, stop_after)
            await pub.publish(later)
            async with connect(nats_server.url) as client:
                sub = client.subscribe(durable="reader", start="new")  # start ignored: resumes
                got += await take(sub, len(events) - 1 - len(got))
                await next_is(sub, pub, sentinel)
            assert keys(got) == keys(first + later)
            assert [encode(ev) for ev in got] == [encode(ev) for ev in first + later]

    run(go)


def test_durable_consumer_after_a_crash_resumes_in_order(nats_server: NatsServer) -> None:
    """``tail --nats --durable`` killed with SIGKILL mid-stream: the next run goes on
    in stream order from the last acknowledgement, losing nothing (at least once)."""
    events = market_events(400)

    async def publish() -> None:
        async with Publisher(nats_server.url) as pub:
            await pub.publish(events)

    run(publish)
    args = ["--nats", nats_server.url, "--durable", "crash", "--start", "all"]
    with tail(args) as first:
        assert first.stdout is not None
        lines = [first.stdout.readline() for _ in range(150)]
        first.send_signal(signal.SIGKILL)
        first.wait(HANG_GUARD_S)
        # what it wrote before the kill and this test had not read yet is in the pipe:
        # it was handed out (and may have been acknowledged) all the same
        lines += first.stdout.read().splitlines(keepends=True)
    printed = [decode(line).key for line in lines if line.endswith(b"\n")]
    assert len(printed) >= 150 and printed == keys(events[: len(printed)])
    with tail(args) as second:
        assert second.stdout is not None
        try:
            resumed = [decode(second.stdout.readline()).key]
            while resumed[-1] != events[-1].key:
                resumed.append(decode(second.stdout.readline()).key)
        finally:
            second.terminate()
            second.wait(HANG_GUARD_S)
    start = keys(events).index(resumed[0])
    assert start <= len(printed), "an event never handed out was skipped"
    assert resumed == keys(events[start:])


def tail_env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def tail_command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "meltica", "tail", *args]


def tail(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        tail_command(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=tail_env()
    )


# ---------------------------------------------------------------- filters and start positions


def test_filters_select_on_the_server_and_the_client(nats_server: NatsServer) -> None:
    events = market_events(300)
    state = Control("connection_state", venue="binance", market="usdm", symbol="", seq=1, ts_recv=1)
    events.insert(100, state)

    def want(market: Any = None, kind: Any = None, symbol: Any = None) -> list[str]:
        def ok(value: str, wanted: Any) -> bool:
            return wanted is None or value in ((wanted,) if isinstance(wanted, str) else wanted)

        return [
            ev.key
            for ev in events
            if ok(ev.market, market) and ok(ev.kind, kind) and ok(ev.symbol, symbol)
        ]

    cases: list[dict[str, Any]] = [
        {"market": "usdm", "kind": "trade"},
        {"symbol": "ETHUSDT"},
        {"kind": ["trade", "agg_trade"], "symbol": "BTCUSDT"},  # several: filtered here
        {"market": ["spot"], "kind": "book_delta"},
        {"kind": "connection_state"},  # an event without a symbol: subject token "_"
        {},
    ]

    async def go() -> None:
        async with Publisher(nats_server.url) as pub, connect(nats_server.url) as client:
            await pub.publish(events)
            for case in cases:
                expected = want(**case)
                assert expected, case
                sub = client.subscribe(start="all", batch=32, **case)
                got = await take(sub, len(expected))
                assert keys(got) == expected, case
                assert sub.stats()["events"] == len(expected)
            # a symbol is upper-cased like the subjects; stats count what the client dropped
            sub = client.subscribe(symbol="btcusdt", kind=["trade", "ticker"], start="all")
            expected = want(symbol="BTCUSDT", kind=("trade", "ticker"))
            assert keys(await take(sub, len(expected))) == expected
            assert sub.stats()["filtered"] > 0

    run(go)


def test_start_positions(nats_server: NatsServer) -> None:
    events = market_events(90)
    old, new, sentinel = events[:40], events[40:89], events[89]

    async def go() -> None:
        async with Publisher(nats_server.url) as pub, connect(nats_server.url) as client:
            seqs = await pub.publish(old)
            between = dt.datetime.now(dt.UTC)
            # "new": opened before the next events are published, sees only those
            fresh = client.subscribe(start="new")
            await fresh.open()
            seqs += await pub.publish(new)
            assert keys(await take(fresh, len(new))) == keys(new)
            await next_is(fresh, pub, sentinel)

            everything = client.subscribe(start="all")
            assert keys(await take(everything, 90)) == keys(events)
            by_seq = client.subscribe(start=seqs[25])
            assert keys(await take(by_seq, 90 - 25)) == keys(events[25:])
            by_time = client.subscribe(start=between)
            got = await take(by_time, 50)
            assert keys(got) == keys([*new, sentinel])
            assert by_time.last_seq == seqs[-1] + 1  # the sentinel's stream sequence

    run(go)


def test_bad_arguments_are_typed_errors(nats_server: NatsServer) -> None:
    async def go() -> None:
        async with connect(nats_server.url) as client:
            for bad in (
                {"kind": "trades"},
                {"market": "futures"},
                {"symbol": "BTC.USDT"},
                {"start": "latest"},
                {"start": 0},
                {"start": dt.datetime(2024, 1, 1)},  # no timezone
                {"batch": 0},
                {"durable": "my.app"},
                {"on_error": "ignore"},
            ):
                with pytest.raises(ConfigError, match=r"subscribe\("):
                    client.subscribe(**bad)
            async with Publisher(nats_server.url) as pub:
                await pub.publish(market_events(1))
            with pytest.raises(BrokerError, match=r"nats\.stream: no stream 'OTHER'"):
                await take(client.subscribe(stream="OTHER"), 1)
            # a durable name belongs to one filter
            await client.subscribe(durable="d", kind="trade").open()
            with pytest.raises(ConfigError, match="durable='d'"):
                await client.subscribe(durable="d", kind="ticker").open()

    run(go)


def test_connection_errors_name_the_key(tmp_path: Any) -> None:
    server = NatsServer(tmp_path, user="alice", password="secret")
    server.start()
    try:

        async def go() -> None:
            with pytest.raises(BrokerError, match=r"nats\.user/nats\.password"):
                await connect(server.url, user="alice", password="wrong")
            with pytest.raises(ConfigError, match=r"nats\.password"):
                connect(server.url, user="alice")
            async with connect(server.url, user="alice", password="secret") as client:
                assert client.nats is not None and client.nats.is_connected
            server.stop()
            with pytest.raises(BrokerError, match=r"nats\.url: cannot connect"):
                await connect(server.url, connect_timeout_s=2)

        run(go)
    finally:
        server.stop()


# ---------------------------------------------------------------- decode errors


BAD = b'{"v":1,"kind":"trade","venue":"binance"'  # cut short


def test_a_malformed_message_is_counted_and_skipped(nats_server: NatsServer) -> None:
    events = market_events(60)

    async def go() -> None:
        async with Publisher(nats_server.url) as pub, connect(nats_server.url) as client:
            await pub.publish(events[:30])
            await pub.publish_raw("meltica.binance.spot.trade.BTCUSDT", BAD)
            await pub.publish(events[30:])
            sub = client.subscribe(start="all", batch=8)
            assert keys(await take(sub, 60)) == keys(events)
            assert sub.stats()["decode_errors"] == 1

    run(go)


def test_on_error_raise_raises_a_typed_error_and_iteration_goes_on(
    nats_server: NatsServer,
) -> None:
    events = market_events(61)

    async def go() -> None:
        subject = "meltica.binance.spot.trade.BTCUSDT"
        async with Publisher(nats_server.url) as pub:
            await pub.publish(events[:20])
            bad_seqs = [await pub.publish_raw(subject, BAD)]
            await pub.publish(events[20:40])
            bad_seqs.append(await pub.publish_raw(subject, BAD))
            await pub.publish(events[40:60])
            got: list[Event] = []
            async with connect(nats_server.url) as client:
                sub = client.subscribe(start="all", durable="strict", on_error="raise", batch=8)
                for bad_seq in bad_seqs:
                    with pytest.raises(MessageDecodeError) as info:
                        async for ev in sub:  # the same iterator goes on after an error
                            got.append(ev)
                    assert isinstance(info.value, WireError | ValueError)
                    assert info.value.subject == subject
                    assert info.value.stream_seq == bad_seq
                assert keys(got) == keys(events[:40])
                assert sub.stats()["decode_errors"] == 2
            # closed right after the error: the bad message still counts as consumed,
            # so a restart neither raises it again nor repeats or loses an event
            async with connect(nats_server.url) as client:
                sub = client.subscribe(durable="strict", on_error="raise")
                got += await take(sub, 20)
                await next_is(sub, pub, events[60])
            assert keys(got) == keys(events[:60])

    run(go)


# ---------------------------------------------------------------- tail --nats


def test_tail_nats_prints_wire_lines(nats_server: NatsServer) -> None:
    events = market_events(200)

    async def publish() -> None:
        async with Publisher(nats_server.url) as pub:
            await pub.publish(events)

    run(publish)
    trades = [ev for ev in events if ev.kind == "trade" and ev.market == "spot"]
    args = ["--nats", nats_server.url, "--start", "all", "--kind", "trade", "--market", "spot"]
    done = subprocess.run(
        tail_command([*args, "--count", str(len(trades))]),
        capture_output=True,
        timeout=HANG_GUARD_S,
        env=tail_env(),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"".join(encode(ev) + b"\n" for ev in trades)
    bad = subprocess.run(
        tail_command(["--nats", "http://127.0.0.1:1", "--count", "1"]),
        capture_output=True,
        timeout=HANG_GUARD_S,
        env=tail_env(),
        check=False,
    )
    assert bad.returncode == 2
    assert b"error: nats.url: scheme must be nats or tls" in bad.stderr
    misuse = subprocess.run(
        tail_command(["--durable", "x", "--count", "1"]),
        capture_output=True,
        timeout=HANG_GUARD_S,
        env=tail_env(),
        check=False,
    )
    assert misuse.returncode == 2
    assert b"need --nats" in misuse.stderr

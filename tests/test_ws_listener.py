"""FrameListener over a real socket: events in batches, rare frames to the owner, counters."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from picows import WSMsgType, ws_connect
from picows.picows import _make_test_ws_frame
from test_ws_manager import run

from meltica._core.parser import FrameParser, Reply
from meltica.adapters.binance.listener import FrameListener
from meltica.errors import MalformedFrame
from meltica.replay.faults import FaultPlan
from meltica.replay.source import StreamFrame
from meltica.replay.ws import WsServer

TRADE = '{{"e":"trade","E":{i},"s":"BTCUSDT","t":{i},"p":"1.5","q":"2","T":{i},"m":false}}'


class Owner:
    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self.errors: list[BaseException] = []
        self.pings: list[bytes] = []
        self.closes: list[tuple[int, str]] = []
        self.disconnected = asyncio.get_running_loop().create_future()

    def on_reply(self, reply: Reply) -> None:
        self.replies.append(reply)

    def on_parse_error(self, exc: BaseException) -> None:
        self.errors.append(exc)

    def on_ping(self, payload: bytes) -> None:
        self.pings.append(payload)

    def on_close_frame(self, code: int, reason: str) -> None:
        self.closes.append((code, reason))

    def on_disconnected(self) -> None:
        self.disconnected.set_result(None)


def frames(n: int, start: int = 1) -> list[StreamFrame]:
    return [
        StreamFrame(i, "spot", "btcusdt@trade", TRADE.format(i=i).encode())
        for i in range(start, start + n)
    ]


async def _until(cond: Any, timeout: float = 10) -> None:
    async def poll() -> None:
        while not cond():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout)


def test_events_arrive_in_batches_replies_and_errors_go_to_the_owner() -> None:
    async def scenario() -> None:
        server = WsServer(
            "spot", faults=FaultPlan.parse(["malformed:at_frame=5"]), ping_interval_s=0.1
        )
        await server.start()
        try:
            owner = Owner()
            batches: list[list[Any]] = []
            loop = asyncio.get_running_loop()
            listener = FrameListener(FrameParser(market="spot"), owner, batches.append, loop)
            transport, _ = await ws_connect(
                lambda: listener, f"{server.url}/stream", enable_auto_pong=False
            )
            sub = {"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 7}
            transport.send(WSMsgType.TEXT, json.dumps(sub).encode())
            await _until(lambda: owner.replies)
            assert owner.replies[0].kind == "ack" and owner.replies[0].id == 7
            server.publish_many(frames(200))  # one write: frames share socket reads
            await _until(lambda: sum(map(len, batches)) >= 199)
            events = [e for b in batches for e in b]
            # the 6th frame was replaced by a malformed one: counted, skipped
            assert [e.seq for e in events] == [i for i in range(1, 201) if i != 6]
            assert len(batches) < 50  # one sink call per batch, not per frame
            # a batch is one socket read, and the frames of a read share its receive time
            assert all(len({e.ts_recv for e in b}) == 1 for b in batches)
            stamps = [b[0].ts_recv for b in batches]
            assert stamps == sorted(stamps) and stamps[-1] <= listener.last_recv_ns
            assert listener.parse_errors == 1 and isinstance(owner.errors[0], MalformedFrame)
            assert listener.events == 199 and listener.replies == 1
            assert listener.data_frames == 201 and listener.batches == len(batches)
            assert listener.bytes > 200 * 60 and listener.last_recv_ns > 0
            await _until(lambda: owner.pings)  # server pings reach the owner to be answered
            assert listener.pings >= 1
            transport.send_pong(owner.pings[-1])
            server.send_server_shutdown()
            await _until(lambda: len(owner.replies) == 2)
            assert owner.replies[1].kind == "server_shutdown"
            for conn in list(server._conns):
                conn.close(1001, "bye")
            await _until(lambda: owner.closes)
            assert owner.closes[0][0] == 1001
            transport.send_close()
            transport.disconnect()
            await owner.disconnected
        finally:
            await server.stop()

    run(scenario)


def test_pause_reading_holds_frames_until_resumed() -> None:
    async def scenario() -> None:
        server = WsServer("spot")
        await server.start()
        try:
            owner = Owner()
            got: list[Any] = []
            loop = asyncio.get_running_loop()
            listener = FrameListener(FrameParser(market="spot"), owner, got.extend, loop)
            transport, _ = await ws_connect(lambda: listener, f"{server.url}/ws/btcusdt@trade")
            await _until(lambda: server.subscribed())
            listener.pause_reading()
            server.publish_many(frames(10))
            await asyncio.sleep(0.1)
            assert got == []
            listener.resume_reading()
            await _until(lambda: len(got) == 10)
            transport.disconnect()
            await owner.disconnected
        finally:
            await server.stop()

    run(scenario)


def test_held_events_go_out_in_chunks_that_can_pause_again() -> None:
    """Resumed after a pause, a listener hands on what it held at most max_batch events
    per sink call and stops as soon as the sink pauses it again (the bus does so at its
    high water): a whole held socket read must not land on a block consumer at once."""

    async def scenario() -> None:
        server = WsServer("spot")
        await server.start()
        try:
            owner = Owner()
            calls: list[list[Any]] = []
            loop = asyncio.get_running_loop()
            listener: FrameListener

            def sink(batch: list[Any]) -> None:
                calls.append(list(batch))
                listener.pause_reading()  # every chunk fills the "bus" again

            listener = FrameListener(FrameParser(market="spot"), owner, sink, loop)
            listener.max_batch = 4
            transport, _ = await ws_connect(lambda: listener, f"{server.url}/ws/btcusdt@trade")
            await _until(lambda: server.subscribed())
            listener.pause_reading()
            server.publish_many(frames(10))
            await asyncio.sleep(0.1)
            assert calls == []
            for expected in (1, 2, 3):
                listener.resume_reading()
                await _until(lambda n=expected: len(calls) == n)
                await asyncio.sleep(0.02)
                assert len(calls) == expected  # paused again after one chunk
            assert [len(c) for c in calls] == [4, 4, 2]
            assert [ev.trade_id for c in calls for ev in c] == list(range(1, 11))
            transport.disconnect()
            await owner.disconnected
        finally:
            await server.stop()

    run(scenario)


def test_the_last_frame_of_a_socket_read_hands_the_batch_on_at_once() -> None:
    """picows marks the last complete frame of each read (``last_in_buffer``): the
    batch goes out inside that call, not a turn of the event loop later."""

    async def main() -> None:
        batches: list[list[Any]] = []
        listener = FrameListener(
            FrameParser(market="spot"), Owner(), batches.append, asyncio.get_running_loop()
        )
        frame = _make_test_ws_frame(WSMsgType.TEXT, TRADE.format(i=7).encode(), True, False)
        assert frame.last_in_buffer
        listener.on_ws_frame(None, frame)
        assert [[e.seq for e in b] for b in batches] == [[7]]  # no await in between
        assert listener.batches == 1
        listener.on_ws_frame(None, _make_test_ws_frame(WSMsgType.PING, b"", True, False))
        assert listener.batches == 1  # nothing collected: no empty batch

    run(main)

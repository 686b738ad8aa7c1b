"""The fake exchange's WebSocket server (meltica/replay/ws.py) over real loopback sockets.

Every test runs on uvloop and on the stdlib loop, fails when the loop's exception handler
fires or picows / Meltica log an error, and keeps its timers short.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import pytest
import uvloop
from picows import WSFrame, WSHandshakeError, WSListener, WSMsgType, WSTransport, ws_connect

from meltica.replay.faults import FaultPlan
from meltica.replay.source import StreamFrame, combined_frame
from meltica.replay.ws import WsServer, stream_class


class Runner(Protocol):
    def __call__(self, body: Callable[[], Awaitable[None]], timeout: float = 8.0) -> None: ...


class _ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(params=["uvloop", "asyncio"])
def run(request: pytest.FixtureRequest) -> Runner:
    """Run a test coroutine on a fresh loop; fail on loop-handler calls and logged errors."""

    def runner(body: Callable[[], Awaitable[None]], timeout: float = 8.0) -> None:
        contexts: list[dict[str, Any]] = []
        errors = _ErrorLog()
        loggers = [logging.getLogger("picows"), logging.getLogger("meltica")]
        for logger in loggers:
            logger.addHandler(errors)

        async def main() -> None:
            asyncio.get_running_loop().set_exception_handler(lambda _, ctx: contexts.append(ctx))
            await asyncio.wait_for(body(), timeout)

        factory = uvloop.new_event_loop if request.param == "uvloop" else None
        try:
            with asyncio.Runner(loop_factory=factory) as runner_:
                runner_.run(main())
        finally:
            for logger in loggers:
                logger.removeHandler(errors)
        assert not contexts, f"loop exception handler called: {contexts}"
        assert not errors.records, [r.getMessage() for r in errors.records]

    return runner


class Client(WSListener):
    """Collects every frame; answers a CLOSE with a CLOSE, like a polite client."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[tuple[WSMsgType, bytes]] = []
        self.close_code: int | None = None
        self.gone = asyncio.Event()
        self._changed = asyncio.Event()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            self.close_code = int(frame.get_close_code().value)
            transport.send_close(frame.get_close_code())
            transport.disconnect()
        else:
            self.frames.append((frame.msg_type, frame.get_payload_as_bytes()))
        self._changed.set()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.gone.set()
        self._changed.set()

    @property
    def texts(self) -> list[bytes]:
        return [p for t, p in self.frames if t == WSMsgType.TEXT]

    def of_type(self, msg_type: WSMsgType) -> list[bytes]:
        return [p for t, p in self.frames if t == msg_type]

    def json(self) -> list[Any]:
        return [json.loads(t) for t in self.texts]

    async def wait(self, predicate: Callable[[], bool], timeout: float = 2.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def wait_texts(self, n: int, timeout: float = 2.0) -> list[bytes]:
        await self.wait(lambda: len(self.texts) >= n, timeout)
        return self.texts

    async def request(
        self, transport: WSTransport, msg: dict[str, Any] | bytes, timeout: float = 2.0
    ) -> Any:
        """Send one control message and return the next text frame, parsed."""
        before = len(self.texts)
        transport.send(WSMsgType.TEXT, msg if isinstance(msg, bytes) else json.dumps(msg).encode())
        texts = await self.wait_texts(before + 1, timeout)
        return json.loads(texts[before])


@contextlib.asynccontextmanager
async def serving(market: str = "spot", **kwargs: Any) -> AsyncIterator[WsServer]:
    server = WsServer(market, **kwargs)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def connect(server: WsServer, path: str, **kwargs: Any) -> tuple[WSTransport, Client]:
    transport, client = await ws_connect(Client, server.url + path, **kwargs)
    assert isinstance(client, Client)
    return transport, client


def frame(stream: str, i: int, market: str = "spot", envelope: bytes | None = None) -> StreamFrame:
    symbol = stream.partition("@")[0].upper()
    payload = b'{"e":"x","s":"%s","stream":"%s","i":%d}' % (symbol.encode(), stream.encode(), i)
    return StreamFrame(i, market, stream, payload, envelope)


async def settle(seconds: float = 0.05) -> None:
    await asyncio.sleep(seconds)


# -- paths and delivery


def test_raw_path_delivers_payloads_in_order(run: Runner) -> None:
    async def body() -> None:
        async with serving() as server:
            _, client = await connect(server, "/ws/btcusdt@depth/ethusdt@trade")
            sent = []
            for i in range(50):
                f = frame("btcusdt@depth" if i % 2 else "ethusdt@trade", i)
                assert server.publish(f) == 1
                sent.append(f.payload)
                assert server.publish(frame("xrpusdt@depth", i)) == 0
            assert await client.wait_texts(50) == sent
            await settle()
            assert client.texts == sent
            assert server.counters.frames_sent == 50

    run(body)


def test_combined_path_wraps_or_uses_the_envelope(run: Runner) -> None:
    async def body() -> None:
        async with serving() as server:
            _, combined = await connect(server, "/stream?streams=btcusdt@depth/btcusdt@trade")
            _, raw = await connect(server, "/ws/btcusdt@depth")
            envelope = b'{"stream":"btcusdt@depth", "data":{"recorded":true}}'
            frames = [
                frame("btcusdt@depth", 1),
                frame("btcusdt@trade", 2),
                frame("btcusdt@depth", 3, envelope=envelope),
            ]
            assert [server.publish(f) for f in frames] == [2, 1, 2]
            got = await combined.wait_texts(3)
            assert got == [combined_frame(f) for f in frames]
            assert got[0] == b'{"stream":"btcusdt@depth","data":' + frames[0].payload + b"}"
            assert got[2] == envelope
            assert await raw.wait_texts(2) == [frames[0].payload, frames[2].payload]
            assert server.subscribed() == {"btcusdt@depth", "btcusdt@trade"}

    run(body)


def test_usdm_routed_and_legacy_paths_filter_stream_classes(run: Runner) -> None:
    async def body() -> None:
        streams = "btcusdt@depth@100ms/btcusdt@aggTrade/!bookTicker/btcusdt@kline_1m"
        async with serving("usdm") as server:
            _, public = await connect(server, f"/public/ws/{streams}")
            _, market = await connect(server, f"/market/ws/{streams}")
            tl, legacy = await connect(server, f"/ws/{streams}")
            _, legacy_combined = await connect(server, f"/stream?streams={streams}")
            _, market_combined = await connect(server, f"/market/stream?streams={streams}")
            frames = [frame(s, i, "usdm") for i, s in enumerate(streams.split("/"))]
            for f in frames:
                server.publish(f)
            public_payloads = [frames[0].payload, frames[2].payload]
            market_payloads = [frames[1].payload, frames[3].payload]
            assert await public.wait_texts(2) == public_payloads
            assert await market.wait_texts(2) == market_payloads
            assert await legacy.wait_texts(2) == public_payloads
            assert await legacy_combined.wait_texts(2) == [
                combined_frame(frames[0]),
                combined_frame(frames[2]),
            ]
            assert await market_combined.wait_texts(2) == [
                combined_frame(frames[1]),
                combined_frame(frames[3]),
            ]
            await settle()
            assert len(public.texts) == len(legacy.texts) == 2
            # Market-class streams are accepted on the legacy path, silently without data.
            reply = await legacy.request(tl, {"method": "LIST_SUBSCRIPTIONS", "id": 7})
            assert reply == {"result": streams.split("/"), "id": 7}
            assert server.subscribed() == set(streams.split("/"))
            assert [stream_class(s) for s in streams.split("/")] == [
                "public",
                "market",
                "public",
                "market",
            ]

    run(body)


def test_legacy_paths_can_serve_every_class_for_old_captures(run: Runner) -> None:
    async def body() -> None:
        streams = ["btcusdt@depth@0ms", "btcusdt@trade", "btcusdt@markPrice@1s"]
        async with serving("usdm", legacy_all_classes=True) as server:
            _, legacy = await connect(server, "/stream?streams=" + "/".join(streams))
            _, public = await connect(server, "/public/ws/" + "/".join(streams))
            frames = [frame(s, i, "usdm") for i, s in enumerate(streams)]
            assert [server.publish(f) for f in frames] == [2, 1, 1]
            assert await legacy.wait_texts(3) == [combined_frame(f) for f in frames]
            assert await public.wait_texts(1) == [frames[0].payload]

    run(body)


@pytest.mark.parametrize(
    ("market", "path"),
    [
        ("spot", "/public/ws/btcusdt@depth"),
        ("spot", "/nope"),
        ("spot", "/"),
        ("usdm", "/private/ws?listenKey=x"),
        ("usdm", "/public/nope"),
        ("coinm", "/wss"),
    ],
)
def test_unknown_paths_get_404(run: Runner, market: str, path: str) -> None:
    async def body() -> None:
        async with serving(market) as server:
            with pytest.raises(WSHandshakeError) as info:
                await connect(server, path)
            assert info.value.response is not None
            assert info.value.response.status == 404
            assert server.counters.connections_opened == 0

    run(body)


# -- control messages


def test_control_messages(run: Runner) -> None:
    async def body() -> None:
        async with serving(max_msgs_per_s=1000) as server:
            t, c = await connect(server, "/ws")
            assert server.subscribed() == set()
            ack = await c.request(
                t, {"method": "SUBSCRIBE", "params": ["btcusdt@depth", "btcusdt@trade"], "id": 1}
            )
            assert ack == {"result": None, "id": 1}
            assert c.texts[-1] == b'{"result":null,"id":1}'
            assert server.subscribed() == {"btcusdt@depth", "btcusdt@trade"}
            listed = await c.request(t, {"method": "LIST_SUBSCRIPTIONS", "id": 2})
            assert listed == {"result": ["btcusdt@depth", "btcusdt@trade"], "id": 2}
            assert await c.request(
                t, {"method": "GET_PROPERTY", "params": ["combined"], "id": 3}
            ) == {"result": False, "id": 3}
            f1 = frame("btcusdt@depth", 1)
            server.publish(f1)
            assert (await c.wait_texts(4))[3] == f1.payload
            assert await c.request(
                t, {"method": "SET_PROPERTY", "params": ["combined", True], "id": 4}
            ) == {"result": None, "id": 4}
            assert await c.request(
                t, {"method": "GET_PROPERTY", "params": ["combined"], "id": 5}
            ) == {"result": True, "id": 5}
            f2 = frame("btcusdt@depth", 2)
            server.publish(f2)
            assert (await c.wait_texts(7))[6] == combined_frame(f2)
            assert await c.request(
                t, {"method": "UNSUBSCRIBE", "params": ["btcusdt@depth", "nothere@x"], "id": 6}
            ) == {"result": None, "id": 6}
            assert server.publish(frame("btcusdt@depth", 3)) == 0
            assert server.subscribed() == {"btcusdt@trade"}
            assert await c.request(t, {"method": "LIST_SUBSCRIPTIONS", "id": 7}) == {
                "result": ["btcusdt@trade"],
                "id": 7,
            }
            # Spot ids: null and short alphanumeric strings are accepted too.
            assert await c.request(t, {"method": "LIST_SUBSCRIPTIONS", "id": None}) == {
                "result": ["btcusdt@trade"],
                "id": None,
            }
            assert await c.request(t, {"method": "LIST_SUBSCRIPTIONS", "id": "abc123"}) == {
                "result": ["btcusdt@trade"],
                "id": "abc123",
            }
            st, sc = await connect(server, "/stream?streams=btcusdt@depth")
            assert await sc.request(
                st, {"method": "GET_PROPERTY", "params": ["combined"], "id": 1}
            ) == {"result": True, "id": 1}
            assert server.counters.control_messages == 10

    run(body)


def test_ack_precedes_the_first_data_frame(run: Runner) -> None:
    """on_subscribe may publish at once; the client still sees the ack first."""

    async def body() -> None:
        calls: list[tuple[str, set[str]]] = []

        def on_subscribe(market: str, streams: set[str]) -> None:
            calls.append((market, streams))
            for stream in sorted(streams):
                server.publish(frame(stream, 1, market))

        async with serving(
            "usdm", on_subscribe=on_subscribe, known_streams={"btcusdt@depth", "btcusdt@trade"}
        ) as server:
            t, c = await connect(server, "/ws/btcusdt@depth")
            assert await c.wait_texts(1) == [frame("btcusdt@depth", 1, "usdm").payload]
            params = ["btcusdt@trade", "btcusdt@bookTicker", "ethusdt@depth"]
            ack = await c.request(t, {"method": "SUBSCRIBE", "params": params, "id": 9})
            assert ack == {"result": None, "id": 9}
            # Legacy path: trade is market class (no data); ethusdt@depth is not a known stream.
            assert calls == [("usdm", {"btcusdt@depth"})]
            assert server.subscribed() == {"btcusdt@depth"}
            _, c2 = await connect(server, "/market/stream?streams=btcusdt@trade")
            assert calls[-1] == ("usdm", {"btcusdt@trade"})
            assert (await c2.wait_texts(1))[0] == combined_frame(frame("btcusdt@trade", 1, "usdm"))

    run(body)


@pytest.mark.parametrize(
    ("market", "message", "error"),
    [
        (
            "spot",
            b"{not json",
            {"code": 3, "msg": "Invalid JSON: expected value at line 1 column 2"},
        ),
        (
            "spot",
            b"\xff\xfe",
            {"code": 3, "msg": "Invalid JSON: expected value at line 1 column 1"},
        ),
        (
            "spot",
            b'{"params":[],"id":1}',
            {"code": 2, "msg": "Invalid request: missing field `method`"},
        ),
        (
            "spot",
            b'{"method":"SUBSCRIBEX","params":[],"id":1}',
            {
                "code": 2,
                "msg": "Invalid request: unknown variant `SUBSCRIBEX`, expected one of "
                "`SUBSCRIBE`, `UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`, `SET_PROPERTY`, `GET_PROPERTY`",
            },
        ),
        (
            "spot",
            b'{"method":"LIST_SUBSCRIPTIONS","id":-1}',
            {"code": 2, "msg": "Invalid request: request ID must be an unsigned integer"},
        ),
        (
            "spot",
            b'{"method":"LIST_SUBSCRIPTIONS","id":1.5}',
            {"code": 2, "msg": "Invalid request: request ID must be an unsigned integer"},
        ),
        (
            "spot",
            b'{"method":"LIST_SUBSCRIPTIONS","id":"has space"}',
            {"code": 2, "msg": "Invalid request: request ID must be an unsigned integer"},
        ),
        (
            "usdm",
            b'{"method":"LIST_SUBSCRIPTIONS","id":"abc"}',
            {"code": 2, "msg": "Invalid request: request ID must be an unsigned integer"},
        ),
        (
            "usdm",
            b'{"method":"LIST_SUBSCRIPTIONS"}',
            {"code": 2, "msg": "Invalid request: request ID must be an unsigned integer"},
        ),
        (
            "spot",
            b'{"method":"SET_PROPERTY","params":["combined",true,1],"id":1}',
            {"code": 2, "msg": "Invalid request: too many parameters"},
        ),
        (
            "spot",
            b'{"method":"GET_PROPERTY","params":[5],"id":1}',
            {"code": 2, "msg": "Invalid request: property name must be a string"},
        ),
        (
            "spot",
            b'{"method":"SET_PROPERTY","params":["colour",true],"id":4}',
            {"code": 0, "msg": "Unknown property", "id": 4},
        ),
        (
            "spot",
            b'{"method":"GET_PROPERTY","params":["colour"],"id":5}',
            {"code": 0, "msg": "Unknown property", "id": 5},
        ),
        (
            "spot",
            b'{"method":"SET_PROPERTY","params":["combined","yes"],"id":1}',
            {"code": 1, "msg": "Invalid value type: expected Boolean"},
        ),
        (
            "spot",
            b'{"method":"SUBSCRIBE","params":[1],"id":1}',
            {"code": 2, "msg": "Invalid request: stream names must be strings"},
        ),
    ],
)
def test_error_frames(run: Runner, market: str, message: bytes, error: dict[str, Any]) -> None:
    async def body() -> None:
        async with serving(market) as server:
            t, c = await connect(server, "/ws/btcusdt@depth")
            assert await c.request(t, message) == error
            # The request changed nothing; the connection stays usable.
            listed = await c.request(t, {"method": "LIST_SUBSCRIPTIONS", "id": 1})
            assert listed == {"result": ["btcusdt@depth"], "id": 1}
            get = {"method": "GET_PROPERTY", "params": ["combined"], "id": 2}
            assert await c.request(t, get) == {"result": False, "id": 2}

    run(body)


def test_stream_limit(run: Runner) -> None:
    async def body() -> None:
        async with serving("usdm") as server:
            t, c = await connect(server, "/ws")
            streams = [f"s{i}usdt@depth" for i in range(1024)]
            sub = {"method": "SUBSCRIBE", "params": streams, "id": 1}
            assert await c.request(t, sub) == {"result": None, "id": 1}
            over = {"method": "SUBSCRIBE", "params": ["one@depth", "s0usdt@depth"], "id": 2}
            error = await c.request(t, over)
            assert error["code"] == 2 and error["msg"].startswith("Invalid request: too many")
            listed = await c.request(t, {"method": "LIST_SUBSCRIPTIONS", "id": 3})
            assert listed["result"] == streams
            # Re-subscribing to held streams does not count twice.
            again = {"method": "SUBSCRIBE", "params": streams[:10], "id": 4}
            assert await c.request(t, again) == {"result": None, "id": 4}
            assert len(server.subscribed()) == 1024
        async with serving("spot", max_streams=2) as server:
            with pytest.raises(WSHandshakeError) as info:
                await connect(server, "/stream?streams=a@depth/b@depth/c@depth")
            assert info.value.response is not None
            assert info.value.response.status == 400
            _, c = await connect(server, "/stream?streams=a@depth/b@depth")
            assert server.subscribed() == {"a@depth", "b@depth"}

    run(body)


# -- limits: rate, ping/pong, lifetime


def test_message_rate_limit_closes_a_spammer(run: Runner) -> None:
    async def body() -> None:
        async with serving() as server:
            t, spammer = await connect(server, "/ws")
            tq, quiet = await connect(server, "/ws")
            for i in range(8):
                t.send(WSMsgType.TEXT, b'{"method":"LIST_SUBSCRIPTIONS","id":%d}' % i)
            await asyncio.wait_for(spammer.gone.wait(), 2)
            assert spammer.close_code == 1008
            assert len(spammer.texts) == 5  # five answered, the sixth closed the connection
            assert server.counters.limit_violations == 1
            # Pings count too.
            tp, pinger = await connect(server, "/ws")
            for i in range(6):
                tp.send_ping(b"p%d" % i)
            await asyncio.wait_for(pinger.gone.wait(), 2)
            assert pinger.close_code == 1008
            assert pinger.of_type(WSMsgType.PONG) == [b"p0", b"p1", b"p2", b"p3", b"p4"]
            assert server.counters.limit_violations == 2
            # Five per second is fine.
            for i in range(5):
                tq.send(WSMsgType.TEXT, b'{"method":"LIST_SUBSCRIPTIONS","id":%d}' % i)
            await quiet.wait_texts(5)
            await settle(0.1)
            assert not quiet.gone.is_set()
            assert server.counters.connections_opened - server.counters.connections_closed == 1

    run(body)


def test_unanswered_pings_drop_the_client_and_good_clients_stay(run: Runner) -> None:
    async def body() -> None:
        async with serving("usdm", ping_interval_s=0.2, pong_timeout_s=0.5) as server:
            _, good = await connect(server, "/ws/btcusdt@depth")  # picows answers pings
            _, deaf = await connect(server, "/ws/btcusdt@depth", enable_auto_pong=False)
            loop = asyncio.get_running_loop()
            started = loop.time()
            await asyncio.wait_for(deaf.gone.wait(), 2)
            elapsed = loop.time() - started
            assert 0.6 <= elapsed < 1.2, elapsed  # first ping at 0.2 s + 0.5 s deadline
            assert deaf.close_code == 1008
            pings = deaf.of_type(WSMsgType.PING)
            assert pings and all(pings) and len(set(pings)) == len(pings)
            assert server.counters.pong_timeouts == 1
            await settle(0.6)
            assert not good.gone.is_set()
            assert server.publish(frame("btcusdt@depth", 1, "usdm")) == 1
            assert await good.wait_texts(1)

    run(body)


def test_client_pings_are_answered_and_unsolicited_pongs_keep_nothing_alive(run: Runner) -> None:
    async def body() -> None:
        async with serving("spot", ping_interval_s=0.25, pong_timeout_s=0.3) as server:
            t, c = await connect(server, "/ws", enable_auto_pong=False)
            t.send_ping(b"hello")
            await c.wait(lambda: bool(c.of_type(WSMsgType.PONG)))
            assert c.of_type(WSMsgType.PONG) == [b"hello"]
            await c.wait(lambda: bool(c.of_type(WSMsgType.PING)))
            t.send_pong(b"")  # unsolicited: wrong payload
            await asyncio.wait_for(c.gone.wait(), 2)
            assert server.counters.pong_timeouts == 1

    run(body)


def test_lifetime_cut(run: Runner) -> None:
    async def body() -> None:
        async with serving(lifetime_s=0.3) as server:
            loop = asyncio.get_running_loop()
            started = loop.time()
            _, c = await connect(server, "/ws/btcusdt@depth")
            await asyncio.wait_for(c.gone.wait(), 2)
            assert 0.25 <= loop.time() - started < 1.0
            assert c.close_code == 1000
            await settle()
            assert server.counters.connections_closed == 1
            assert server.subscribed() == set()

    run(body)


# -- faults


async def publish_numbered(
    server: WsServer, stream: str, start: int, stop: int, market: str = "spot"
) -> list[bytes]:
    payloads = []
    for i in range(start, stop):
        f = frame(stream, i, market)
        server.publish(f)
        payloads.append(f.payload)
    return payloads


def test_fault_close_on_one_connection(run: Runner) -> None:
    async def body() -> None:
        faults = FaultPlan.parse(["close:connection=1,at_frame=3,code=4001"])
        async with serving(faults=faults) as server:
            _, c0 = await connect(server, "/ws/btcusdt@depth")
            _, c1 = await connect(server, "/ws/btcusdt@depth")
            sent = await publish_numbered(server, "btcusdt@depth", 0, 6)
            await asyncio.wait_for(c1.gone.wait(), 2)
            assert c1.close_code == 4001
            assert c1.texts == sent[:3]
            assert await c0.wait_texts(6) == sent
            assert server.counters.faults_fired == 1

    run(body)


def test_fault_close_at_seconds_and_for_every_connection(run: Runner) -> None:
    async def body() -> None:
        faults = FaultPlan.parse(["close:at_s=0.2", "close:market=usdm,at_s=0.01"])
        async with serving(faults=faults) as server:
            loop = asyncio.get_running_loop()
            started = loop.time()
            _, c0 = await connect(server, "/ws")
            _, c1 = await connect(server, "/ws")
            await asyncio.wait_for(asyncio.gather(c0.gone.wait(), c1.gone.wait()), 2)
            assert loop.time() - started >= 0.19
            assert c0.close_code == c1.close_code == 1000
            assert server.counters.faults_fired == 2  # once per connection; usdm's not here

    run(body)


def test_fault_abort_sends_half_a_frame_then_drops_tcp(run: Runner) -> None:
    async def body() -> None:
        faults = FaultPlan.parse(["abort:at_frame=2"])
        async with serving(faults=faults) as server:
            reader, writer = await asyncio.open_connection(server.host, server.port)
            writer.write(
                b"GET /ws/btcusdt@depth HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n"
            )
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101")
            big = StreamFrame(0, "spot", "btcusdt@depth", b'{"p":"' + b"x" * 300 + b'"}')
            small = frame("btcusdt@depth", 1)
            server.publish(small)
            server.publish(small)
            assert server.publish(big) == 0
            assert server.publish(small) == 0
            wire = await asyncio.wait_for(reader.read(), 2)  # to EOF
            writer.close()
            full_small = b"\x81" + bytes([len(small.payload)]) + small.payload
            full_big = b"\x81\x7e" + len(big.payload).to_bytes(2, "big") + big.payload
            assert wire == full_small * 2 + full_big[: len(full_big) // 2]
            # A picows client just sees the connection go, without a CLOSE frame.
            _, c = await connect(server, "/ws/btcusdt@depth")
            sent = await publish_numbered(server, "btcusdt@depth", 0, 4)
            await asyncio.wait_for(c.gone.wait(), 2)
            assert c.texts == sent[:2]
            assert c.close_code is None

    run(body)


def test_fault_stall_drops_data_and_pongs(run: Runner) -> None:
    async def body() -> None:
        faults = FaultPlan.parse(["stall:at_frame=2,delay_s=0.3"])
        async with serving(faults=faults, max_msgs_per_s=100) as server:
            t, c = await connect(server, "/ws/btcusdt@depth")
            sent = await publish_numbered(server, "btcusdt@depth", 0, 5)
            t.send_ping(b"during")
            t.send(WSMsgType.TEXT, b'{"method":"LIST_SUBSCRIPTIONS","id":1}')
            await settle(0.15)
            assert c.texts == sent[:2]
            assert c.of_type(WSMsgType.PONG) == []
            await settle(0.25)
            after = await publish_numbered(server, "btcusdt@depth", 5, 7)
            t.send_ping(b"after")
            await c.wait(lambda: bool(c.of_type(WSMsgType.PONG)))
            assert c.of_type(WSMsgType.PONG) == [b"after"]
            assert c.texts == sent[:2] + after  # the stalled frames are gone, not late
            assert server.counters.frames_dropped == 3

    run(body)


def test_fault_drop_depth_of_one_symbol(run: Runner) -> None:
    async def body() -> None:
        faults = FaultPlan.parse(["drop:symbol=btcusdt,at_frame=2,count=2"])
        streams = ["btcusdt@depth", "btcusdt@trade", "ethusdt@depth"]
        async with serving(faults=faults) as server:
            _, c = await connect(server, "/ws/" + "/".join(streams))
            order = [0, 1, 2, 0, 1, 2, 0, 0, 1]
            frames = [frame(streams[k], i) for i, k in enumerate(order)]
            for f in frames:
                server.publish(f)
            # BTCUSDT frames 0 and 1 count to 2; then the next two btcusdt@depth (3, 6) go.
            expected = [f.payload for i, f in enumerate(frames) if i not in (3, 6)]
            assert await c.wait_texts(len(expected)) == expected
            await settle()
            assert c.texts == expected

    run(body)


def test_fault_duplicate_and_reorder(run: Runner) -> None:
    async def body() -> None:
        faults = FaultPlan.parse(
            ["duplicate:connection=0,at_frame=1,count=2", "reorder:connection=1,at_frame=1"]
        )
        async with serving(faults=faults) as server:
            _, dup = await connect(server, "/stream?streams=btcusdt@depth")
            _, reo = await connect(server, "/stream?streams=btcusdt@depth")
            frames = [frame("btcusdt@depth", i) for i in range(5)]
            written = [server.publish(f) for f in frames]
            assert written == [2, 1, 2, 2, 2]  # the held frame waits for its successor
            w = [combined_frame(f) for f in frames]
            assert await dup.wait_texts(7) == [w[0], w[1], w[1], w[2], w[2], w[3], w[4]]
            assert await reo.wait_texts(5) == [w[0], w[2], w[1], w[3], w[4]]

    run(body)


def test_fault_shutdown_event_then_close(run: Runner) -> None:
    async def body() -> None:
        faults = FaultPlan.parse(["shutdown:at_frame=1,delay_s=0.2"])
        async with serving(faults=faults) as server:
            _, raw = await connect(server, "/ws/btcusdt@depth")
            _, comb = await connect(server, "/stream?streams=btcusdt@depth")
            loop = asyncio.get_running_loop()
            server.publish(frame("btcusdt@depth", 0))
            started = loop.time()
            await raw.wait_texts(2)
            event = raw.json()[1]
            assert event.keys() == {"e", "E"} and event["e"] == "serverShutdown"
            assert isinstance(event["E"], int)
            wrapped = (await comb.wait_texts(2))[1]
            assert json.loads(wrapped)["stream"] == "!serverShutdown"
            assert json.loads(wrapped)["data"]["e"] == "serverShutdown"
            await asyncio.wait_for(asyncio.gather(raw.gone.wait(), comb.gone.wait()), 2)
            assert loop.time() - started >= 0.15
            assert raw.close_code == comb.close_code == 1001

    run(body)


def test_server_shutdown_on_demand(run: Runner) -> None:
    async def body() -> None:
        async with serving() as server:
            _, raw = await connect(server, "/ws")
            _, comb = await connect(server, "/stream")
            server.send_server_shutdown()
            assert json.loads((await raw.wait_texts(1))[0])["e"] == "serverShutdown"
            assert json.loads((await comb.wait_texts(1))[0])["stream"] == "!serverShutdown"
            await settle()
            assert not raw.gone.is_set()

    run(body)


def test_fault_bad_frames(run: Runner) -> None:
    async def body() -> None:
        faults = FaultPlan.parse(
            [
                "malformed:connection=0,at_frame=1",
                "truncated:connection=1,at_frame=1",
                "oversized:connection=2,at_frame=1,count=100000",
                "unknown_event:connection=3,at_frame=1,symbol=BTCUSDT",
                "unknown_event:connection=4,at_frame=1",
            ]
        )
        async with serving(faults=faults) as server:
            clients = [(await connect(server, "/ws/btcusdt@depth"))[1] for _ in range(4)]
            _, comb = await connect(server, "/stream?streams=btcusdt@depth")
            frames = [frame("btcusdt@depth", i) for i in range(3)]
            for f in frames:
                server.publish(f)
            p = [f.payload for f in frames]
            malformed, truncated, oversized, unknown = clients
            assert await malformed.wait_texts(3) == [p[0], b'{"e":"trade",', p[2]]
            assert await truncated.wait_texts(3) == [p[0], p[1][: len(p[1]) // 2], p[2]]
            got = await oversized.wait_texts(4)
            assert got[0] == p[0] and got[2:] == p[1:]
            assert len(got[1]) == 100000 and isinstance(json.loads(got[1]), dict)
            got = await unknown.wait_texts(4)
            assert got[0] == p[0] and got[2:] == p[1:]
            event = json.loads(got[1])
            assert event["e"] == "madeUpEvent" and event["s"] == "BTCUSDT"
            assert isinstance(event["E"], int)
            got = await comb.wait_texts(4)
            wrapped = json.loads(got[1])
            assert wrapped["data"]["e"] == "madeUpEvent" and wrapped["data"]["s"] == "X"
            assert wrapped["stream"] == "x@madeUpEvent"
            assert got[2:] == [combined_frame(f) for f in frames[1:]]
            assert server.counters.faults_fired == 5

    run(body)


# -- back-pressure and lifecycle


@pytest.mark.parametrize("use_aiofastnet", [None, False], ids=["picows-default", "loop-transport"])
def test_drain_waits_for_a_slow_reader(run: Runner, use_aiofastnet: bool | None) -> None:
    async def body() -> None:
        high_water = 256 * 1024
        async with serving(high_water=high_water, use_aiofastnet=use_aiofastnet) as server:
            await server.drain()  # nothing buffered: returns at once
            t, c = await connect(server, "/ws/btcusdt@depth")
            t.underlying_transport.pause_reading()
            payload = b'{"pad":"' + b"x" * (32 * 1024) + b'"}'
            published = 0
            peak = 0

            async def timeline() -> None:
                nonlocal published, peak
                for i in range(2000):
                    server.publish(StreamFrame(i, "spot", "btcusdt@depth", payload))
                    published += 1
                    peak = max(peak, *server.write_buffer_sizes())
                    await server.drain()

            task = asyncio.create_task(timeline())
            # Wait until the publisher is stuck in drain(): the count stops moving.
            last = -1
            while published != last:
                last = published
                await asyncio.sleep(0.2)
            assert not task.done()
            assert 0 < published < 2000
            # Bounded: at most one frame past the high-water mark was ever queued.
            assert peak <= high_water + len(payload) + 64
            t.underlying_transport.resume_reading()
            await asyncio.wait_for(task, 5)
            texts = await c.wait_texts(2000, timeout=5)
            assert len(texts) == 2000 and set(texts) == {payload}

    run(body, timeout=15)


def test_drain_ignores_connections_that_go_away(run: Runner) -> None:
    async def body() -> None:
        async with serving(high_water=64 * 1024) as server:
            t, _ = await connect(server, "/ws/btcusdt@depth")
            t.underlying_transport.pause_reading()
            payload = b'"' + b"y" * 65536 + b'"'
            drain: asyncio.Task[None] | None = None
            for i in range(1000):
                server.publish(StreamFrame(i, "spot", "btcusdt@depth", payload))
                drain = asyncio.create_task(server.drain())
                await asyncio.sleep(0)
                if not drain.done():
                    break
            assert drain is not None and not drain.done()
            t.disconnect(graceful=False)
            await asyncio.wait_for(drain, 3)

    run(body)


def test_stop_is_idempotent_and_closes_everything(run: Runner) -> None:
    async def body() -> None:
        never_started = WsServer("coinm")
        await never_started.stop()
        server = WsServer("spot")
        await server.start()
        await server.start()
        port = server.port
        assert port > 0 and server.url == f"ws://127.0.0.1:{port}"
        _, c1 = await connect(server, "/ws/btcusdt@depth")
        t2, c2 = await connect(server, "/ws/btcusdt@depth")
        t2.underlying_transport.pause_reading()  # cannot answer the CLOSE: aborted later
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.gather(server.stop(), server.stop())
        assert 0.9 <= loop.time() - started < 2.0  # one close grace period for c2
        await server.stop()
        assert c1.gone.is_set() and c1.close_code == 1001
        t2.underlying_transport.resume_reading()
        await asyncio.wait_for(c2.gone.wait(), 2)
        assert server.counters.connections_opened == server.counters.connections_closed == 2
        assert server.subscribed() == set()
        with pytest.raises(OSError):
            await connect(server, "/ws")

    run(body)


def test_publish_with_nobody_listening(run: Runner) -> None:
    async def body() -> None:
        async with serving() as server:
            assert server.publish(frame("btcusdt@depth", 0)) == 0
            t, c = await connect(server, "/ws/btcusdt@depth")
            t.send_close()
            await asyncio.wait_for(c.gone.wait(), 2)
            await settle()
            assert server.publish(frame("btcusdt@depth", 1)) == 0
            assert server.counters.connections_closed == 1

    run(body)


def test_constructor_defaults() -> None:
    spot, usdm = WsServer("spot"), WsServer("usdm")
    assert (spot.max_msgs_per_s, spot.ping_interval_s, spot.pong_timeout_s) == (5, 20.0, 60.0)
    assert (usdm.max_msgs_per_s, usdm.ping_interval_s, usdm.pong_timeout_s) == (10, 180.0, 600.0)
    with pytest.raises(ValueError, match="unknown market"):
        WsServer("margin")

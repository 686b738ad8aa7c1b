"""JetStream acks of the NATS publisher: taken out of the received bytes in
compiled code (`AckReader`), everything else left to nats-py's own parser.

The reader is driven with every way a read can split the server's byte stream,
and the publisher on a real ``nats-server -js`` with other traffic on the same
connection.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from brokers import NatsServer, nats_clients, start_publisher
from nats.protocol.parser import Parser

from meltica import Event, FrameParser
from meltica.bus._natspub import AckReader, FrameWindow
from meltica.bus.nats import _AckSplitter, ensure_stream
from meltica.config import NatsConfig

PREFIX = b"_MELTICA_ACK.test"
SID = 7
HANG_GUARD_S = 60


def trades(n: int, start: int = 0) -> list[Event]:
    parser = FrameParser()
    out: list[Event] = []
    for i in range(start, start + n):
        sym = ("BTCUSDT", "ETHUSDT")[i % 2]
        frame = (
            f'{{"e":"trade","E":1723161256299,"s":"{sym}","t":{i},"p":"61496.50",'
            f'"q":"0.014","T":1723161256298,"m":true}}'
        )
        (ev,) = parser.parse(frame.encode(), time.time_ns())
        out.append(ev)
    return out


def msg(subject: bytes, sid: int, payload: bytes, reply: bytes = b"") -> bytes:
    mid = b" " + reply if reply else b""
    return b"MSG %s %d%s %d\r\n%s\r\n" % (subject, sid, mid, len(payload), payload)


def ack(n: int, extra: bytes = b"") -> bytes:
    return msg(PREFIX + b".%d" % n, SID, b'{"stream":"MELTICA","seq":%d%s}' % (n, extra))


def server_bytes() -> tuple[bytes, bytes]:
    """A byte stream of acks mixed with other operations, and those others alone."""
    hdr = b"NATS/1.0 503\r\n\r\n"
    others = [
        b'INFO {"server_id":"x","max_payload":1048576}\r\n',
        b"PING\r\n",
        msg(b"svc.echo", 3, b"hello world", reply=b"_INBOX.abc.1"),
        b"HMSG %s.3 %d %d %d\r\n%s\r\n" % (PREFIX, SID, len(hdr), len(hdr), hdr),
        msg(PREFIX + b".3", SID, b'{"error":{"code":503,"description":"unavailable"}}'),
        b"+OK\r\n",
        msg(b"other", 4, b""),
        b"-ERR 'Stale Connection'\r\n",
    ]
    acks = [ack(1), ack(2), ack(4, b',"duplicate":true'), ack(99), ack(5)]
    order = [others[0], acks[0], others[1], others[2], acks[1], others[3], others[4]]
    order += [others[5], acks[2], acks[3], others[6], acks[4], others[7]]
    return b"".join(order), b"".join(others)


def fresh_window() -> FrameWindow:
    window = FrameWindow(16, PREFIX)
    _, taken = window.append(trades(5), 1)
    assert taken == 5
    return window


def check_window(window: FrameWindow, reader: AckReader) -> None:
    assert (window.acked, window.duplicates, window.late, window.errors) == (4, 1, 1, 0)
    assert window.unacked == 1 and window.head == 3  # event 3 waits for a resend
    assert reader.fast_acks == 5


def test_ack_reader_applies_acks_wherever_the_reads_split_and_passes_the_rest_in_order() -> None:
    data, others = server_bytes()
    for cut in range(len(data) + 1):
        window = fresh_window()
        reader = AckReader(window, SID)
        rest = reader.feed(data[:cut]) + reader.feed(data[cut:])
        assert rest == others, f"split at {cut}"
        assert reader.take_tail() == b""
        check_window(window, reader)
    window = fresh_window()
    reader = AckReader(window, SID)
    rest = b"".join(reader.feed(data[i : i + 1]) for i in range(len(data)))
    assert rest == others
    check_window(window, reader)


def test_ack_reader_holds_an_incomplete_operation_and_reset_forgets_it() -> None:
    window = fresh_window()
    reader = AckReader(window, SID)
    whole = ack(1)
    assert reader.feed(whole[:-3]) == b""
    assert window.acked == 0
    reader.reset()  # a new connection: the partial ack is gone with the old one
    assert reader.feed(b"PING\r\n") == b"PING\r\n"
    assert reader.feed(whole[:10]) == b""
    assert reader.take_tail() == whole[:10]
    assert reader.feed(whole) == b"" and window.acked == 1


def test_ack_reader_passes_a_malformed_message_to_the_client_parser() -> None:
    for op in (b"MSG a b c d e f", b"MSG a 7 x", b"HMSG a b c d e f g", b"HMSG a 7 2 x"):
        reader = AckReader(fresh_window(), SID)
        bad = op + b"\r\nxx\r\n" + ack(1)
        assert reader.feed(bad) == bad, op  # nats-py's parser raises its ProtocolError on it
        assert reader.fast_acks == 0


class _Client:
    """What nats-py's Parser calls on its client."""

    def __init__(self) -> None:
        self.calls: list[Any] = []
        self._ps: Any = None

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, hdr: Any):
        self.calls.append(("msg", sid, subject, reply, data))

    async def _process_ping(self) -> None:
        self.calls.append(("ping",))

    async def _process_pong(self) -> None:
        self.calls.append(("pong",))

    async def _process_info(self, info: Any) -> None:
        self.calls.append(("info",))

    async def _process_err(self, err: str) -> None:
        self.calls.append(("err", err))


def test_splitter_takes_over_and_hands_back_a_parser_in_the_middle_of_a_message() -> None:
    async def run() -> None:
        nc = _Client()
        inner = Parser(nc)
        nc._ps = inner
        await inner.parse(b"MSG foo 3 5\r\nhel")  # a message cut by the read
        window = fresh_window()
        acked: list[int] = []
        splitter = _AckSplitter(
            nc,  # type: ignore[arg-type]
            inner,
            AckReader(window, SID),
            lambda: acked.append(window.acked),
        )
        nc._ps = splitter
        await splitter.parse(b"lo\r\n" + ack(1) + b"PING\r\n" + ack(2) + b"MSG bar 3 2\r\n")
        await splitter.parse(b"ab\r\nPO")  # a control line cut by the read
        await splitter.parse(b"NG\r\n" + ack(4) + b"MSG baz 3 2\r\nx")
        assert window.acked == 3 and acked[-1] == 3
        splitter.detach()  # the partial message goes back to the client's parser
        assert nc._ps is inner
        await inner.parse(b"y\r\n" + ack(5))
        assert nc.calls == [
            ("msg", 3, b"foo", b"", b"hello"),
            ("ping",),
            ("msg", 3, b"bar", b"", b"ab"),
            ("pong",),
            ("msg", 3, b"baz", b"", b"xy"),
            ("msg", SID, PREFIX + b".5", b"", b'{"stream":"MELTICA","seq":5}'),
        ]

    asyncio.run(run())


@pytest.mark.parametrize("events", [20_000])
def test_publisher_acks_bypass_the_client_message_path_beside_other_traffic(
    nats_server: NatsServer, events: int
) -> None:
    """Every ack is applied in compiled code: none reaches nats-py's per-message
    path, while requests and replies on the same connection still flow."""

    async def run() -> None:
        cfg = NatsConfig(url=nats_server.url, publish_buffer=4096, storage="memory")
        async with nats_clients(nats_server.url, 2) as (nc, other):
            await ensure_stream(nc, cfg, ["binance"])
            bus, pub = await start_publisher(nc, cfg)
            ack_sid = pub._sub._id
            through_client = 0
            inner = nc._process_msg

            async def counting(sid: int, *rest: Any) -> None:
                nonlocal through_client
                if sid == ack_sid:
                    through_client += 1
                await inner(sid, *rest)  # type: ignore[arg-type]

            nc._process_msg = counting  # type: ignore[method-assign,assignment]

            async def echo(m: Any) -> None:
                await other.publish(m.reply, m.data)

            await other.subscribe("svc.echo", cb=echo)
            await other.flush()
            replies = []
            all_events = trades(events)
            for i in range(0, events, 500):
                bus.publish_batch(all_events[i : i + 500])
                if i % 2000 == 0:
                    r = await nc.request("svc.echo", b"%d" % i, timeout=HANG_GUARD_S)
                    replies.append(int(r.data))
                while bus.depth > 8000:
                    await asyncio.sleep(0.001)
            deadline = time.monotonic() + HANG_GUARD_S
            while pub.window.acked < events and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert await pub.close(HANG_GUARD_S) == 0
            assert replies == list(range(0, events, 2000))
            assert pub.window.acked == pub.window.published == events
            info = await nc.jetstream().stream_info(cfg.stream)
            assert info.state.messages == events
            assert through_client == 0
            assert nc._ps.__class__ is Parser  # close hands the parser back

    asyncio.run(run())

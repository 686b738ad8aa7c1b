"""JetStream's duplicate acks as nats-server writes them:
``{"stream":"S", "seq":N,"duplicate": true}`` (a space after the colon).

The ack reader counts them as duplicates whatever the white space, and only when
the value is ``true``; a real server's duplicate ack is counted too."""

from __future__ import annotations

import asyncio

import nats
import pytest
from brokers import NatsServer
from test_nats_acks import PREFIX, SID, msg, trades

from meltica.bus._natspub import AckReader, FrameWindow


@pytest.mark.parametrize(
    ("body", "duplicate"),
    [
        (b'{"stream":"MELTICA", "seq":1,"duplicate": true}', True),  # nats-server 2.9/2.10
        (b'{"stream":"MELTICA","seq":1,"duplicate":true}', True),
        (b'{"stream":"MELTICA","seq":1,"duplicate":\t\n true}', True),
        (b'{"stream":"MELTICA","seq":1,"duplicate": false}', False),
        (b'{"stream":"MELTICA", "seq":1}', False),
    ],
)
def test_duplicate_ack_counted_whatever_the_white_space(body: bytes, duplicate: bool) -> None:
    window = FrameWindow(16, PREFIX)
    window.append(trades(1), 1)
    reader = AckReader(window, SID)
    assert reader.feed(msg(PREFIX + b".1", SID, body)) == b""
    assert (window.acked, window.duplicates) == (1, int(duplicate))


def test_a_real_servers_duplicate_ack_is_counted(nats_server: NatsServer) -> None:
    async def acks() -> list[bytes]:
        nc = await nats.connect(nats_server.url)
        try:
            await nc.jetstream().add_stream(name="D", subjects=["d.>"])
            return [
                (await nc.request("d.x", b"{}", headers={"Nats-Msg-Id": "k"}, timeout=5)).data
                for _ in range(2)
            ]
        finally:
            await nc.close()

    first, second = asyncio.run(acks())
    window = FrameWindow(16, PREFIX)
    window.append(trades(2), 1)
    reader = AckReader(window, SID)
    reader.feed(msg(PREFIX + b".1", SID, first) + msg(PREFIX + b".2", SID, second))
    assert (window.acked, window.duplicates) == (2, 1), (first, second)

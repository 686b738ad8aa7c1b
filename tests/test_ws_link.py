"""Dead links, fragmented messages and oversized frames, over real loopback sockets.

A connection that stops delivering anything is pinged and replaced within the
configured bound; an idle but healthy one is kept alive by the exchange's pongs; a
message the server fragments is reassembled and parsed once, or refused whole when
it outgrows ``max_frame_bytes``; a frame over picows' own limit ends in one counted,
labelled reconnect and leaves no unretrieved future behind.
"""

from __future__ import annotations

import asyncio
import gc
import json
from typing import Any

import pytest
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_create_server
from test_ws_listener import TRADE, frames
from test_ws_manager import Collector, manager, run

from meltica._core.parser import FrameParser
from meltica.config import load_config
from meltica.engine import Engine
from meltica.replay.faults import FaultPlan
from meltica.replay.ws import WsServer


async def _until(cond: Any, timeout: float = 20) -> None:
    async def poll() -> None:
        while not cond():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


# ---------------------------------------------------------------- dead links


@pytest.mark.parametrize("market", ["spot", "usdm", "coinm"])
def test_default_config_finds_a_dead_link_within_10s(market: str) -> None:
    cfg = load_config(env={}, overrides=[f"binance.markets=[{market}]"])
    mgr = Engine(cfg).managers[market]
    assert mgr.ping_interval_s == cfg.binance.market(market).ping_interval_s
    assert mgr.pong_timeout_s == cfg.binance.market(market).pong_timeout_s
    assert mgr.dead_link_bound_s <= 10.0


def test_an_idle_healthy_connection_is_kept_alive_by_pongs() -> None:
    """No data at all (and no server pings), yet the exchange answers our pings: the
    connection stays, every ping inside the message limit."""

    async def scenario() -> tuple[dict[str, int | float], dict[str, int], Any]:
        server = WsServer("spot", ping_interval_s=3600)
        await server.start()
        try:
            col = Collector()
            # a ping every ~0.4 s: inside spot's 5 messages per 1.25 s with the SUBSCRIBE
            mgr = manager(server.url, "spot", col, ping_interval_s=0.4, pong_timeout_s=1.0)
            await mgr.start()
            await mgr.subscribe(["btcusdt@trade"])
            await _until(lambda: mgr.stats()["pongs"] >= 3)
            stats, reasons = mgr.stats(), mgr.disconnects_by_reason()
            await mgr.stop()
            return stats, reasons, server.counters
        finally:
            await server.stop()

    stats, reasons, counters = run(scenario)
    assert stats["ping_timeouts"] == 0 and stats["disconnects"] == 0
    assert not any(reasons.values())
    assert counters.connections_opened == 1 and counters.limit_violations == 0


def test_a_link_that_goes_dead_is_replaced_with_reason_ping_timeout() -> None:
    """The server stops sending and answering (socket left open): the manager pings,
    gives up after pong_timeout_s, reconnects, and data flows on the new connection."""

    async def scenario() -> tuple[Collector, dict[str, int | float], dict[str, int]]:
        server = WsServer(
            "spot",
            faults=FaultPlan.parse(["stall:connection=0,at_frame=10,delay_s=600"]),
            ping_interval_s=3600,
        )
        await server.start()
        try:
            col = Collector()
            mgr = manager(server.url, "spot", col, ping_interval_s=0.2, pong_timeout_s=0.3)
            await mgr.start()
            await mgr.subscribe(["btcusdt@trade"])
            server.publish_many(frames(20))  # frames 11..20 vanish in the stall
            await col.until(lambda: ("connected", "spot-0") in {s[:2] for s in col.states[1:]})
            await _until(
                lambda: server.subscribed() == {"btcusdt@trade"} and len(server._conns) == 1
            )
            await _until(lambda: mgr.stats()["streams_acked"] == 1)
            server.publish_many(frames(5, start=21))
            await col.until(lambda: bool(col.events) and col.events[-1].seq == 25)
            stats, reasons = mgr.stats(), mgr.disconnects_by_reason()
            await mgr.stop()
            return col, stats, reasons
        finally:
            await server.stop()

    col, stats, reasons = run(scenario, timeout=60)
    assert reasons["ping_timeout"] == 1 and stats["disconnects"] == 1
    assert stats["ping_timeouts"] == 1 and stats["reconnects"] == 1
    assert [s for s, _, _ in col.states[:4]] == [
        "connected",
        "disconnected",
        "reconnecting",
        "connected",
    ]
    assert [e.seq for e in col.events] == [*range(1, 11), *range(21, 26)]


# ---------------------------------------------------------------- fragmented messages


def _trade(i: int, pad: int = 0) -> bytes:
    data = TRADE.format(i=i)
    if pad:
        data = data[:-1] + ',"x":"' + " " * pad + '"}'
    return json.dumps({"stream": "btcusdt@trade", "data": json.loads(data)}).encode()


def _parts(payload: bytes, n: int) -> list[bytes]:
    step = -(-len(payload) // n)
    return [payload[i : i + step] for i in range(0, len(payload), step)]


class _FragmentingServer(WSListener):  # type: ignore[misc]
    """Acks the SUBSCRIBE, then sends ``script``: a list of (payload, fragments)."""

    def __init__(self, script: list[tuple[bytes, int]]) -> None:
        super().__init__()
        self.script = script

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.PING:
            transport.send_pong(frame.get_payload_as_bytes())
        if frame.msg_type != WSMsgType.TEXT:
            return
        req = json.loads(frame.get_payload_as_bytes())
        transport.send(WSMsgType.TEXT, json.dumps({"result": None, "id": req["id"]}).encode())
        for payload, n in self.script:
            parts = _parts(payload, n)
            for k, part in enumerate(parts):
                kind = WSMsgType.TEXT if k == 0 else WSMsgType.CONTINUATION
                transport.send(kind, part, fin=k == len(parts) - 1)
                if k == 0 and n > 1:
                    transport.send_ping(b"between fragments")  # control frames may interleave


def test_fragmented_messages_are_reassembled_or_refused_whole() -> None:
    limit = 512
    script = [
        (_trade(1), 1),
        (_trade(2), 3),  # reassembled
        (_trade(3, pad=1000), 4),  # over max_frame_bytes once assembled: refused whole
        (_trade(4), 1),  # flows on after the refusal
        (_trade(5), 2),
    ]
    want = [ev.key for i in (1, 2, 4, 5) for ev in FrameParser(market="spot").parse(_trade(i))]

    async def scenario() -> tuple[Collector, dict[str, int | float]]:
        server = await ws_create_server(lambda _req: _FragmentingServer(script), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        col = Collector()
        mgr = manager(f"ws://127.0.0.1:{port}", "spot", col, max_frame_bytes=limit)
        try:
            await mgr.start()
            await mgr.subscribe(["btcusdt@trade"])
            await col.until(lambda: len(col.events) >= 4, 10)
            return col, {**mgr.stats(), "oversized": mgr.parse_rejects()["oversized"]}
        finally:
            await mgr.stop()
            server.close()
            await server.wait_closed()

    col, stats = run(scenario)
    assert col.keys() == want  # each once, in order; the refused one not at all
    assert stats["fragmented"] == 2 and stats["fragmented_refused"] == 1
    assert stats["parse_errors"] == 1  # the refused message, nothing else
    assert stats["oversized"] == 1  # counted by reason like a frame the parser refuses
    assert stats["disconnects"] == 0


# ---------------------------------------------------------------- oversized frames


def test_a_frame_over_the_socket_limit_reconnects_once_and_leaves_no_loose_future() -> None:
    """20 MiB is past picows' max_frame_size (4 x max_frame_bytes): picows closes with
    1009.  One labelled disconnect, one reconnect, data again, and no "Future exception
    was never retrieved" (run() fails on any loop exception)."""

    async def scenario() -> tuple[Collector, dict[str, int | float], dict[str, int]]:
        server = WsServer(
            "spot",
            faults=FaultPlan.parse([f"oversized:connection=0,at_frame=5,count={20 << 20}"]),
        )
        await server.start()
        try:
            col = Collector()
            mgr = manager(server.url, "spot", col)
            await mgr.start()
            await mgr.subscribe(["btcusdt@trade"])
            server.publish_many(frames(5))
            await col.until(lambda: [s for s, _, _ in col.states].count("connected") == 2)
            await _until(lambda: mgr.stats()["streams_acked"] == 1)
            server.publish_many(frames(5, start=6))
            await col.until(lambda: bool(col.events) and col.events[-1].seq == 10)
            stats, reasons = mgr.stats(), mgr.disconnects_by_reason()
            await mgr.stop()
        finally:
            await server.stop()
        gc.collect()  # an unretrieved future's exception is reported when it is freed
        await asyncio.sleep(0)
        return col, stats, reasons

    col, stats, reasons = run(scenario, timeout=60)
    assert reasons["frame_too_large"] == 1 and stats["disconnects"] == 1
    assert stats["reconnects"] == 1
    assert [e.seq for e in col.events][-5:] == [6, 7, 8, 9, 10]

"""RunAhead: the source's frames unchanged, generated ahead into a bounded buffer; what the
fake serves beside the stream is ahead of it, never behind; a FakeExchange serving it while
its speed and quantum change delivers every frame byte-identical and in order."""

from __future__ import annotations

import asyncio
import json
from itertools import islice

import pytest
from aio import run
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from meltica.replay.exchange import FakeExchange
from meltica.replay.runahead import RunAhead
from meltica.replay.source import StreamFrame, combined_frame
from meltica.replay.synthetic import SyntheticMarket


def market(duration_s: float = 3.0) -> SyntheticMarket:
    return SyntheticMarket(
        markets=("spot", "usdm"), symbols_per_market=3, seed=5, duration_s=duration_s
    )


def as_tuples(frames: list[StreamFrame]) -> list[tuple[int, str, str, bytes]]:
    return [(f.ts_ns, f.market, f.stream, f.payload) for f in frames]


def test_frames_are_the_sources_with_fills_in_between() -> None:
    expected = as_tuples(list(market().frames()))
    ahead = RunAhead(market(), capacity=500)
    assert ahead.fill(100) == 0  # no iteration yet: nothing to run ahead of
    got: list[StreamFrame] = []
    it = ahead.frames()
    for i, frame in enumerate(it):
        got.append(frame)
        if i % 700 == 0:
            ahead.fill(10_000)
            assert ahead.buffered <= 500
    assert as_tuples(got) == expected
    assert ahead.generated == len(expected)
    assert ahead.fill(100) == 0  # exhausted


def test_fill_is_bounded_and_reports_its_span() -> None:
    ahead = RunAhead(market(), capacity=300)
    it = ahead.frames()
    first = next(it)
    assert ahead.fill(1_000) == 300
    assert ahead.fill(1_000) == 0
    assert ahead.buffered == 300
    nxt = list(islice(it, 300))
    assert ahead.buffered == 0
    assert ahead.ahead_s() == 0.0
    ahead.fill(200)
    span = ahead.ahead_s()
    assert span > 0
    assert nxt[-1].ts_ns >= first.ts_ns
    with pytest.raises(ValueError, match="capacity"):
        RunAhead(market(), capacity=0)


@pytest.mark.parametrize("mkt", ["spot", "usdm"])
def test_snapshot_runs_ahead_of_the_stream_never_behind(mkt: str) -> None:
    source = market(duration_s=20.0)
    ahead = RunAhead(source, capacity=100_000)
    it = ahead.frames()
    streamed = list(islice(it, 400))
    ahead.fill(2_000)
    symbol = source.symbols(mkt)[0]
    (depth,) = (s for s in source.streams(mkt) if s.startswith(f"{symbol.lower()}@depth"))
    body = ahead.depth_snapshot(mkt, symbol, 1000)
    assert body is not None
    last_id = json.loads(body)["lastUpdateId"]
    seen = [json.loads(f.payload)["u"] for f in streamed if (f.market, f.stream) == (mkt, depth)]
    assert seen and last_id >= seen[-1]  # never behind what was streamed
    later = [json.loads(f.payload) for f in it if (f.market, f.stream) == (mkt, depth)]
    # the stream carries on from the snapshot without a hole: a client that buffers the
    # diffs until they pass lastUpdateId syncs from it by Binance's procedure
    following = next(d for d in later if d["u"] > last_id)
    if mkt == "spot":
        assert following["U"] <= last_id + 1 <= following["u"]
    else:  # futures chain diffs by pu, the u of the diff before
        assert following["pu"] == last_id


class Collector(WSListener):  # type: ignore[misc]
    def __init__(self, expected: int) -> None:
        self.frames: list[bytes] = []
        self.expected = expected
        self.first = asyncio.get_running_loop().create_future()
        self.done = asyncio.get_running_loop().create_future()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type != WSMsgType.TEXT:
            return
        payload = frame.get_payload_as_bytes()
        if payload.startswith(b'{"result"'):
            return
        self.frames.append(payload)
        if not self.first.done():
            self.first.set_result(None)
        if len(self.frames) >= self.expected and not self.done.done():
            self.done.set_result(None)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        for fut in (self.first, self.done):
            if not fut.done():
                fut.set_result(None)


def test_served_at_changing_speeds_every_frame_arrives_in_order() -> None:
    expected = [combined_frame(f) for f in market().frames() if f.market == "spot"]
    source = market()
    ahead = RunAhead(source, capacity=100_000)
    streams = sorted(source.streams("spot"))

    async def scenario() -> list[bytes]:
        async with FakeExchange(ahead, speed=20.0) as ex:
            listener = Collector(len(expected))
            url = f"{ex.ws_url('spot')}/stream?streams=" + "/".join(streams)
            transport, _ = await ws_connect(lambda: listener, url)
            await listener.first
            ex.speed = 1.0  # slow down while generating ahead ...
            await ahead.run_ahead(1.0)
            assert ahead.ahead_s() >= 1.0 or ahead.buffered == 0
            ex.quantum = 0.002
            ex.speed = 50.0  # ... then serve the buffer fast
            await listener.done
            transport.disconnect()
            return listener.frames

    got = run(scenario, timeout=120)
    assert got == expected

"""``FakeExchange(subscribers=N)``: the replay waits until every stream has N subscribed
connections, then both clients receive the same frames from the first one on."""

from __future__ import annotations

import asyncio

import pytest
from aio import run
from test_fake_exchange import Collector, connect

from meltica.replay.exchange import FakeExchange
from meltica.replay.synthetic import SyntheticMarket


def test_two_subscribers_receive_the_same_frames_from_the_first() -> None:
    def make() -> SyntheticMarket:
        return SyntheticMarket(markets=("spot",), symbols_per_market=1, seed=3, duration_s=2.0)

    source = make()
    streams = sorted(source.streams("spot"))
    total = sum(1 for _ in make().frames())

    async def scenario() -> tuple[list[bytes], list[bytes], int]:
        async with FakeExchange(source, speed=None, subscribers=2) as ex:
            url = f"{ex.ws_url('spot')}/stream?streams=" + "/".join(streams)
            first = Collector(total)
            t1 = await connect(url, first)
            await asyncio.sleep(0.5)  # alone, the first client gets nothing
            held = ex.frames_read
            second = Collector(total)
            t2 = await connect(url, second)
            await asyncio.wait_for(asyncio.gather(first.done, second.done), 60)
            t1.disconnect()
            t2.disconnect()
            return first.frames, second.frames, held

    a, b, held = run(scenario)
    assert held == 0
    assert len(a) == total and a == b


def test_subscribers_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="subscribers"):
        FakeExchange(SyntheticMarket(markets=("spot",), symbols_per_market=1), subscribers=0)

"""Control Bus (meltica/bus/control.py) and the control messages' JSON form."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest
import uvloop
from hypothesis import given
from hypothesis import strategies as st
from test_dispatcher import Harness

from meltica.bus.control import ControlBus, InProcessControlBus
from meltica.control import ControlError, ControlReply, ControlRequest


def req(op: str, market: str | None = "spot", symbols: Any = ("BTCUSDT",), channels: Any = ()):
    return ControlRequest(op, market, tuple(symbols), tuple(channels))  # type: ignore[arg-type]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_same_stream_requests_never_interleave(loop: str) -> None:
    """Subscribe/unsubscribe storms on one stream end as if run one by one, in order."""

    async def main() -> None:
        h = Harness(delay=0.002)
        bus: ControlBus = InProcessControlBus(h.d)
        rng = random.Random(7)
        ops = [rng.choice(["subscribe", "unsubscribe"]) for _ in range(40)]
        replies = await asyncio.gather(*(bus.request(req(op, channels=["trade"])) for op in ops))
        assert all(r.ok for r in replies)
        # sequential semantics: the exchange saw a change exactly when the state flipped
        expected, state = [], False
        for op in ops:
            if (op == "subscribe") != state:
                state = not state
                expected.append((op, ["btcusdt@trade"]))
        assert h.subs["spot"].calls == expected
        assert h.subs["spot"].max_inflight == 1
        assert (("spot", "BTCUSDT", "trade", None) in h.table) == state
        assert h.subs["spot"].streams() == ({"btcusdt@trade"} if state else set())

    if loop == "uvloop":
        uvloop.run(main())
    else:
        asyncio.run(main())


def test_different_instruments_run_concurrently() -> None:
    async def main() -> None:
        h = Harness(delay=0.01)
        bus = InProcessControlBus(h.d)
        replies = await asyncio.gather(
            bus.request(req("subscribe", "usdm", ["BTCUSDT"], ["trade"])),
            bus.request(req("subscribe", "usdm", ["ETHUSDT"], ["trade"])),
            bus.request(req("subscribe", "usdm", ["XRPUSDT", "BTCUSDT"], ["depth"])),
            bus.request(req("status", None, ())),
        )
        assert all(r.ok for r in replies)
        assert h.subs["usdm"].max_inflight == 2  # the third waits for BTCUSDT's first
        assert len(h.table) == 4

    uvloop.run(main())


def test_full_bus_answers_with_an_error() -> None:
    async def main() -> None:
        h = Harness(delay=0.02)
        bus = InProcessControlBus(h.d, max_pending=2)
        replies = await asyncio.gather(
            *(
                bus.request(req("subscribe", symbols=[s], channels=["trade"]))
                for s in ("BTCUSDT", "ETHUSDT", "BTCUSDT")
            )
        )
        assert [r.ok for r in replies] == [True, True, False]
        assert replies[2].error == "control bus full: 2 requests pending (max 2)"
        assert replies[2].request_id
        assert bus.stats()["full"] == 1 and bus.stats()["pending"] == 0

    uvloop.run(main())


def test_timeout_cancels_and_rolls_back() -> None:
    async def main() -> None:
        # the rollback's own unsubscribe is bounded by the Dispatcher's ack timeout
        h = Harness(ack_timeout_s=0.05)
        h.subs["spot"].hang = True
        bus = InProcessControlBus(h.d, timeout_s=0.02)
        reply = await bus.request(req("subscribe", channels=["trade"]))
        assert not reply.ok and reply.error == "subscribe timed out after 0.02 s (rolled back)"
        assert len(h.table) == 0 and h.d.counters["rollbacks"] == 1
        assert bus.counters["timeouts"] == 1

    uvloop.run(main())


def test_handler_crash_is_an_error_reply() -> None:
    class Broken:
        async def handle(self, r: ControlRequest) -> ControlReply:
            raise KeyError("boom")

    async def main() -> None:
        bus = InProcessControlBus(Broken())
        reply = await bus.request(req("list"))
        assert not reply.ok and reply.error == "internal error: KeyError: 'boom'"
        assert bus.counters["crashes"] == 1 and bus.pending == 0

    uvloop.run(main())


def test_close_waits_for_in_flight_then_refuses() -> None:
    async def main() -> None:
        h = Harness(delay=0.02)
        bus = InProcessControlBus(h.d)
        pending = asyncio.ensure_future(bus.request(req("subscribe", channels=["trade"])))
        await asyncio.sleep(0)
        await bus.close()
        assert pending.done() and pending.result().ok
        late = await bus.request(req("list"))
        assert not late.ok and late.error == "control bus is closed"
        await bus.close()

    uvloop.run(main())


def test_request_json() -> None:
    async def main() -> None:
        h = Harness()
        bus = InProcessControlBus(h.d)
        body = json.dumps(
            {
                "op": "subscribe",
                "market": "spot",
                "symbols": ["btcusdt"],
                "channels": ["trade"],
                "request_id": "r1",
            }
        )
        reply = json.loads(await bus.request_json(body))
        assert reply["ok"] and reply["request_id"] == "r1" and reply["propagation_ns"] > 0
        bad = json.loads(await bus.request_json(b'{"op":"explode","request_id":"r2"}'))
        assert bad == {
            "request_id": "r2",
            "ok": False,
            "error": "unknown control op 'explode' (known: subscribe, unsubscribe, list, resync, "
            "status, book)",
            "result": {},
            "propagation_ns": None,
        }
        junk = json.loads(await bus.request_json(b"not json"))
        assert not junk["ok"] and junk["request_id"] == ""
        assert bus.counters["malformed"] == 2

    uvloop.run(main())


def test_constructor_checks() -> None:
    h = Harness()
    with pytest.raises(ValueError):
        InProcessControlBus(h.d, max_pending=0)
    with pytest.raises(ValueError):
        InProcessControlBus(h.d, timeout_s=0)


# ------------------------------------------------------------------ messages

names = st.text("ABCXYZ019_", min_size=1, max_size=8)


@given(
    st.builds(
        ControlRequest,
        st.sampled_from(["subscribe", "unsubscribe", "list", "resync", "status"]),
        st.one_of(st.none(), st.sampled_from(["spot", "usdm"])),
        st.lists(names, max_size=3).map(tuple),
        st.lists(names, max_size=3).map(tuple),
        names,
    )
)
def test_request_json_round_trip(r: ControlRequest) -> None:
    assert ControlRequest.from_dict(json.loads(json.dumps(r.to_dict()))) == r


@given(
    st.builds(
        ControlReply,
        names,
        st.booleans(),
        st.one_of(st.none(), names),
        st.dictionaries(names, st.one_of(st.integers(), names, st.lists(names))),
        st.one_of(st.none(), st.integers(0, 10**12)),
    )
)
def test_reply_json_round_trip(r: ControlReply) -> None:
    assert ControlReply.from_dict(json.loads(json.dumps(r.to_dict()))) == r


@pytest.mark.parametrize(
    ("d", "match"),
    [
        ({"op": "subscribe", "symbols": "BTCUSDT"}, "'symbols' must be a list of strings"),
        ({"op": "subscribe", "channels": [1]}, "'channels' must be a list of strings"),
        ({"op": "list", "market": 3}, "'market' must be a string"),
        ({"op": "list", "extra": 1}, "unknown control request field"),
        ({"market": "spot"}, "unknown control op None"),
        ([], "must be an object"),
    ],
)
def test_request_from_dict_errors(d: Any, match: str) -> None:
    with pytest.raises(ControlError, match=match):
        ControlRequest.from_dict(d)


def test_request_defaults_and_checks() -> None:
    a, b = ControlRequest("list"), ControlRequest("list")
    assert a.request_id != b.request_id
    assert ControlRequest("subscribe", "spot", ["x"], ["trade"]).symbols == ("x",)  # type: ignore[arg-type]
    with pytest.raises(ControlError):
        ControlRequest("drop")  # type: ignore[arg-type]
    with pytest.raises(ControlError):
        ControlReply.from_dict({"request_id": "x", "ok": 1})
    with pytest.raises(ControlError):
        ControlReply.from_dict({"request_id": "x", "ok": True, "propagation_ns": 1.5})

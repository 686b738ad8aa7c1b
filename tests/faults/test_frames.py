"""Faults in what the frames carry: gaps, duplicates, reordering, stale and bad frames,
impossible values, implausible ids, a skewed exchange clock.

The link stays up in all of these: no reconnect, and (but for the gaps, which resync) the
user sees the source exactly.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fault_harness import Scenario, channel_of_stream, run_fault
from picows import WSMsgType

from meltica.replay import ws as fake_ws
from meltica.replay.source import StreamFrame

AT = 150


def _depth_holes(events: list[Any], symbol: str) -> list[tuple[int, int]]:
    """The update ids the delivered book_delta stream of ``symbol`` skipped (spot)."""
    holes, prev = [], None
    for e in events:
        if e.kind == "book_delta" and e.symbol == symbol:
            if prev is not None and e.first_update_id != prev + 1:
                holes.append((prev + 1, e.first_update_id - 1))
            prev = e.update_id
    return holes


def test_dropped_depth_frames_resync_and_the_manifest_names_the_ids() -> None:
    out = run_fault(Scenario(faults=["drop:symbol=BTCUSDT,at_frame=40,count=3"]))
    holes = _depth_holes(out.events, "BTCUSDT")
    assert holes, "the fault removed no depth update: the test proves nothing"
    depth = [g for g in out.gaps if g["stream"] == "depth"]
    assert sorted((g["first_id"], g["last_id"]) for g in depth) == holes
    assert all(g["outcome"] == "resynced" and g["cause"] == "continuity" for g in depth)
    assert out.metric("meltica_gaps_total", stream="depth", outcome="resynced") == len(depth)
    assert out.metric("meltica_book_resyncs_total", symbol="BTCUSDT") >= 1
    assert out.disconnects() == {}
    out.assert_user_properties()


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(f"duplicate:connection=0,at_frame={AT},count=40", id="duplicated"),
        pytest.param(f"reorder:connection=0,at_frame={AT}", id="reordered"),
    ],
)
def test_duplicated_and_reordered_frames_reach_the_user_once(fault: str) -> None:
    out = run_fault(Scenario(faults=[fault]))
    assert out.disconnects() == {} and out.fake_connections["spot"] == 1
    if fault.startswith("duplicate"):
        assert out.metric("meltica_dispatch_dropped_total", reason="duplicate") > 0
    out.assert_user_properties()


def _stale(after: int, back: int) -> Any:
    """After ``after`` frames, every trade and depth frame is followed by a copy of the
    one ``back`` frames of its stream earlier: old data the exchange sends again."""

    def edit(frames: Iterator[StreamFrame]) -> Iterator[StreamFrame]:
        history: dict[str, list[StreamFrame]] = {}
        for i, frame in enumerate(frames):
            yield frame
            seen = history.setdefault(frame.stream, [])
            seen.append(frame)
            if (
                i >= after
                and len(seen) > back
                and channel_of_stream(frame.stream)
                in (
                    "trade",
                    "depth",
                )
            ):
                old = seen[-1 - back]
                yield StreamFrame(frame.ts_ns, frame.market, frame.stream, old.payload)
            del seen[: -back - 1]

    return edit


def test_stale_frames_change_nothing() -> None:
    out = run_fault(Scenario(edit=_stale(AT, 3)))
    assert out.disconnects() == {}
    assert out.gaps == []  # an old depth update is not a hole: the book skips it
    assert out.metric("meltica_book_resyncs_total") == 0
    out.assert_user_properties()


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        pytest.param(f"malformed:connection=0,at_frame={AT}", "malformed", id="malformed"),
        pytest.param(f"truncated:connection=0,at_frame={AT}", "malformed", id="truncated"),
        pytest.param(
            f"oversized:connection=0,at_frame={AT},count=100000", "oversized", id="oversized"
        ),
    ],
)
def test_a_bad_frame_is_counted_and_the_link_stays_up(fault: str, reason: str) -> None:
    out = run_fault(Scenario(faults=[fault], overrides=["parser.max_frame_bytes=65536"]))
    assert out.metric("meltica_ws_parse_rejects_total", market="spot", reason=reason) == 1
    assert out.metric("meltica_ws_parse_rejects_total", market="spot") == 1
    assert out.disconnects() == {} and out.fake_connections["spot"] == 1
    # a frame the fault replaced is gone; a trade in it is a hole in the ids
    out.assert_recovered_properties()


def test_an_unknown_event_kind_is_skipped() -> None:
    out = run_fault(Scenario(faults=[f"unknown_event:connection=0,at_frame={AT},count=5"]))
    assert out.disconnects() == {} and out.fake_connections["spot"] == 1
    assert out.metric("meltica_ws_parse_rejects_total", market="spot") == 0
    out.assert_user_properties()


def _fragmenting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every data frame of the fake exchange goes out as three WebSocket fragments
    (TEXT fin=0, CONTINUATION fin=0, CONTINUATION fin=1); the list counts them."""
    sent = [0]

    def send(self: Any, message: bytes) -> None:
        sent[0] += 1
        n = max(1, len(message) // 3)
        self.transport.send(WSMsgType.TEXT, message[:n], fin=False)
        self.transport.send(WSMsgType.CONTINUATION, message[n : 2 * n], fin=False)
        self.transport.send(WSMsgType.CONTINUATION, message[2 * n :], fin=True)
        self._check_buffer()

    def deliver_batch(self: Any, messages: list[bytes]) -> None:
        for message in messages:
            send(self, message)
        self.frames += len(messages)
        self.server.counters.frames_sent += len(messages)

    monkeypatch.setattr(fake_ws._Connection, "_send", send)
    monkeypatch.setattr(fake_ws._Connection, "deliver_batch", deliver_batch)
    return sent


def test_fragmented_frames_are_reassembled(monkeypatch: pytest.MonkeyPatch) -> None:
    fragmented = _fragmenting(monkeypatch)
    out = run_fault(Scenario())
    assert fragmented[0] > 100
    assert out.metric("meltica_ws_fragmented_total", market="spot") >= fragmented[0]
    assert out.metric("meltica_ws_parse_rejects_total", market="spot") == 0
    assert out.disconnects() == {}
    out.assert_user_properties()


def _with_bad_copies(after: int, every: int) -> Any:
    """After ``after`` frames, each ``every``-th trade, depth and bookTicker frame is
    preceded by a copy with an impossible value (zero price, negative quantity): the
    good frame must win."""

    def spoil(frame: StreamFrame) -> bytes | None:
        d = json.loads(frame.payload)
        channel = channel_of_stream(frame.stream)
        if channel in ("trade", "agg_trade"):
            d["p"] = "0.00000000"
        elif channel == "depth" and d["b"]:
            d["b"][0][1] = "-1.00000000"
        elif channel == "bookTicker":
            d["B"] = "-1.00000000"
        else:
            return None
        return json.dumps(d, separators=(",", ":")).encode()

    def edit(frames: Iterator[StreamFrame]) -> Iterator[StreamFrame]:
        for i, frame in enumerate(frames):
            if i >= after and i % every == 0:
                bad = spoil(frame)
                if bad is not None:
                    yield StreamFrame(frame.ts_ns, frame.market, frame.stream, bad)
            yield frame

    return edit


def test_impossible_values_are_rejected_and_the_good_data_flows() -> None:
    out = run_fault(Scenario(edit=_with_bad_copies(AT, 7)))
    rejected = out.metric("meltica_ws_parse_rejects_total", market="spot", reason="value_range")
    assert rejected > 0
    assert out.disconnects() == {}
    out.assert_user_properties()


CORRUPT_ID = 2**63 - 1


def _implausible_ids(after: int, every: int, injected: list[int]) -> Any:
    """After ``after`` frames, each ``every``-th trade frame is preceded by a copy whose
    id is near 2**63: a corrupt id far ahead of the stream, a different one each time
    (``injected`` lists them)."""

    def edit(frames: Iterator[StreamFrame]) -> Iterator[StreamFrame]:
        for i, frame in enumerate(frames):
            if i >= after and i % every == 0 and channel_of_stream(frame.stream) == "trade":
                d = json.loads(frame.payload)
                d["t"] = CORRUPT_ID - len(injected)
                bad = json.dumps(d, separators=(",", ":")).encode()
                injected.append(d["t"])
                yield StreamFrame(frame.ts_ns, frame.market, frame.stream, bad)
            yield frame

    return edit


def test_an_implausible_trade_id_does_not_silence_the_stream() -> None:
    injected: list[int] = []
    out = run_fault(Scenario(edit=_implausible_ids(AT, 3, injected)))
    assert injected
    # each corrupt id passes when it comes (the table cannot tell it from a real jump yet),
    # and the real trade after it disproves it: the route rewinds, counted implausible
    corrupt = [e.trade_id for e in out.events if e.kind == "trade" and e.trade_id > 2**62]
    assert corrupt == injected
    assert out.metric("meltica_dispatch_dropped_total", reason="implausible") == len(injected)
    out.foreign_trade_ids = set(injected)
    out.assert_user_properties()


@pytest.mark.parametrize(
    "skew_s", [pytest.param(-3 * 86400, id="3d_behind"), pytest.param(3600, id="1h_ahead")]
)
def test_an_exchange_clock_far_from_ours_changes_nothing(skew_s: int) -> None:
    start_ns = time.time_ns() + skew_s * 1_000_000_000
    out = run_fault(Scenario(start_ns=start_ns))
    assert out.disconnects() == {} and out.gaps == []
    # the events carry the exchange's times, the receive times are ours
    trades = [e for e in out.events if e.kind == "trade"]
    assert all(abs(e.ts_event - start_ns) < 60 * 10**9 for e in trades)
    assert all(abs(e.ts_recv - time.time_ns()) < 600 * 10**9 for e in trades)
    out.assert_user_properties()

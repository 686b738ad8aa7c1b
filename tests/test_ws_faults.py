"""Scripted connection faults: data flows again, and what is delivered matches the capture.

Rotations (age, serverShutdown, a shortened 24 h lifetime) must lose and duplicate
nothing; a drop (close codes, abort mid-frame, stall) may lose only the events the
exchange sent while no connection was subscribed: one hole per drop, nothing
duplicated, everything else in recorded order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_ws_manager import (
    SPOT_CAPTURE,
    USDM_CAPTURE,
    Collector,
    GatedExchange,
    capture,
    expected_keys,
    manager,
    per_group,
    run,
    urls_for,
)

from meltica.replay.faults import FaultPlan

# spot capture: 41k frames over 346 s; at 100x about 3.5 s
SPOT_SPEED = 100.0
# USD-M capture: 1.5k frames over 30 s, 16 streams on /public and /market; at 10x about 3 s
USDM_SPEED = 10.0


def _scenario(
    captures_dir: Path,
    name: str,
    market: str,
    speed: float,
    faults: list[str],
    ws_options: dict[str, Any] | None = None,
    **mgr_kw: Any,
) -> tuple[list[str], Collector, dict[str, int | float], Any]:
    source = capture(captures_dir, name)
    streams = sorted(source.streams(market))
    want = expected_keys(source, market)

    async def scenario() -> tuple[Collector, dict[str, int | float], Any]:
        col = Collector()
        async with GatedExchange(
            source,
            set(streams),
            speed=speed,
            faults=FaultPlan.parse(faults),
            ws_options=ws_options,
        ) as ex:
            mgr = manager(urls_for(ex, market), market, col, **mgr_kw)
            await mgr.start()
            await mgr.subscribe(streams)
            last = want[-1]
            await col.until(lambda: bool(col.events) and col.events[-1].key == last, 60)
            await ex.finished.wait()
            stats = mgr.stats()
            for reason, count in mgr.disconnects_by_reason().items():
                stats[f"disconnects[{reason}]"] = count
            await mgr.stop()
            return col, stats, ex.ws[market].counters

    col, stats, counters = run(scenario)
    assert counters.limit_violations == 0
    return want, col, stats, counters


def _holes(want: list[str], got: list[str]) -> int:
    """Maximal runs of ``want`` missing from ``got``; ``got`` must be an ordered subsequence."""
    assert len(set(got)) == len(got), "duplicate events delivered"
    pos = {k: i for i, k in enumerate(want)}
    idx = [pos[k] for k in got]  # KeyError: an event that was never recorded
    assert idx == sorted(idx), "events out of recorded order"
    holes, prev = 0, -1
    for i in idx:
        holes += i != prev + 1
        prev = i
    return holes + (prev != len(want) - 1)


# ---------------------------------------------------------------- rotations: exact


@pytest.mark.parametrize(
    ("faults", "ws_options", "mgr_kw", "min_rotations"),
    [
        pytest.param([], None, {"rotate_after_s": 0.6}, 2, id="age"),
        pytest.param(
            ["shutdown:connection=0,at_frame=100,delay_s=1.0"], None, {}, 1, id="server_shutdown"
        ),
        pytest.param([], {"lifetime_s": 1.2}, {"rotate_after_s": 0.7}, 2, id="short_24h_cut"),
    ],
)
def test_rotation_loses_and_duplicates_nothing(
    captures_dir: Path,
    faults: list[str],
    ws_options: dict[str, Any] | None,
    mgr_kw: dict[str, Any],
    min_rotations: int,
) -> None:
    want, col, stats, _counters = _scenario(
        captures_dir, USDM_CAPTURE, "usdm", USDM_SPEED, faults, ws_options, **mgr_kw
    )
    got = col.keys()
    assert len(got) == len(want) and set(got) == set(want)
    # per stream, in recorded order
    want_groups: dict[Any, list[str]] = {}
    for key, group in zip(want, _groups_of(col, want), strict=True):
        want_groups.setdefault(group, []).append(key)
    assert per_group(col.events) == want_groups
    assert stats["rotations"] >= min_rotations
    # the connections overlapped: events both delivered were dropped once, not lost
    assert stats["duplicates_dropped"] > 0
    assert stats["reconnects"] == 0
    assert ("rotated", "usdm-0") in {(s, c) for s, c, _ in col.states}


def _groups_of(col: Collector, want: list[str]) -> list[Any]:
    from meltica.adapters.binance.ws_overlap import group_of

    by_key = {ev.key: group_of(ev) for ev in col.events}
    return [by_key[k] for k in want]


# ---------------------------------------------------------------- drops: data flows again


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("close:connection=0,at_frame=2000,code=1001", "server_close_1001"),
        ("close:connection=0,at_frame=2000,code=1011", "server_close_1011"),
        ("close:connection=0,at_frame=2000,code=4000", "server_close_other"),
        ("abort:connection=0,at_frame=2000", "error"),
        # a dead link: no data, no pings, no pongs, the socket left open
        ("stall:connection=0,at_frame=2000,delay_s=30", "ping_timeout"),
    ],
)
def test_a_dropped_connection_comes_back_with_one_hole_and_no_duplicates(
    captures_dir: Path, fault: str, reason: str
) -> None:
    want, col, stats, counters = _scenario(
        captures_dir,
        SPOT_CAPTURE,
        "spot",
        SPOT_SPEED,
        [fault],
        ping_interval_s=0.25,
        pong_timeout_s=0.25,
    )
    got = col.keys()
    assert _holes(want, got) == 1
    assert len(got) > len(want) // 2
    assert stats["reconnects"] == 1
    assert counters.connections_opened == 2
    states = [s for s, _, _ in col.states]
    assert states[:4] == ["connected", "disconnected", "reconnecting", "connected"]
    # the disconnect metric names the cause, and only that one
    assert stats[f"disconnects[{reason}]"] == stats["disconnects"] == 1
    assert stats["ping_timeouts"] == (1 if reason == "ping_timeout" else 0)


@pytest.mark.parametrize(
    "fault",
    [
        "malformed:connection=0,at_frame=1000",
        "truncated:connection=0,at_frame=1000",
        "oversized:connection=0,at_frame=1000,count=100000",
    ],
)
def test_a_bad_frame_is_counted_and_skipped(captures_dir: Path, fault: str) -> None:
    want, col, stats, counters = _scenario(
        captures_dir, SPOT_CAPTURE, "spot", SPOT_SPEED, [fault], max_frame_bytes=65536
    )
    assert stats["parse_errors"] == 1
    assert stats["reconnects"] == 0 and counters.connections_opened == 1
    got = col.keys()
    missing = len(want) - len(got)
    assert _holes(want, got) == (1 if missing else 0)
    assert missing <= 1  # the frame the fault replaced (oversized adds one instead)

"""Faults of the WebSocket link: cut, closed, silent, rotated, shut down.

Each runs a real gateway against the fake exchange with one scripted fault and checks what
a user cares about (fault_harness.Outcome): every trade once (lost only where the manifest
says so, by exact id range), no key twice, books equal to the reference, no crossed book,
ready again, and the disconnect counter naming the fault.
"""

from __future__ import annotations

from typing import Any

import pytest
from fault_harness import Scenario, run_fault

from meltica.engine import Engine

# the fault fires about a third into the run, so recovery has time before the source ends
AT = 150


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        pytest.param(f"abort:connection=0,at_frame={AT}", "error", id="abort_mid_frame"),
        pytest.param(f"close:connection=0,at_frame={AT},code=1001", "server_close_1001", id="1001"),
        pytest.param(f"close:connection=0,at_frame={AT},code=1008", "server_close_1008", id="1008"),
        pytest.param(f"close:connection=0,at_frame={AT},code=1011", "server_close_1011", id="1011"),
    ],
)
def test_a_dropped_connection_recovers_and_says_why(fault: str, reason: str) -> None:
    out = run_fault(Scenario(faults=[fault]))
    # the disconnect counter moved once, with the fault's reason and no other
    assert out.disconnects() == {reason: 1.0}
    assert out.metric("meltica_ws_reconnects_total", market="spot") == 1
    assert out.fake_connections["spot"] == 2
    # the outage is in the manifest: one lost time range per id-less stream
    lost = {g["stream"] for g in out.gaps if g["outcome"] == "lost" and g["cause"] == reason}
    assert "book_ticker" in lost
    out.assert_recovered_properties()


def _pinging(engine: Engine) -> None:
    for manager in engine.managers.values():
        manager.ping_interval_s = 0.3
        manager.pong_timeout_s = 0.4


def test_a_dead_link_is_found_by_ping_and_replaced() -> None:
    """Silence without pings: no data, no server pings, no pong to ours (a stall)."""
    out = run_fault(
        Scenario(faults=[f"stall:connection=0,at_frame={AT},delay_s=20"], setup=_pinging)
    )
    assert out.disconnects() == {"ping_timeout": 1.0}
    assert out.metric("meltica_ws_ping_timeouts_total", market="spot") == 1
    out.assert_recovered_properties()


def _quiet(start: int, gap_ns: int) -> Any:
    """The market goes quiet for ``gap_ns`` of exchange time after ``start`` frames."""

    def edit(frames: Any) -> Any:
        for i, frame in enumerate(frames):
            if i >= start:
                object.__setattr__(frame, "ts_ns", frame.ts_ns + gap_ns)
            yield frame

    return edit


@pytest.mark.parametrize(
    "server_ping_s", [pytest.param(0.2, id="server_pings"), pytest.param(None, id="no_pings")]
)
def test_a_quiet_market_on_a_live_link_is_not_a_disconnect(server_ping_s: float | None) -> None:
    """Silence with a live link: 2.5 s without data.  With the server pinging, its pings
    prove the link; without, our pings are answered.  Either way nothing is dropped."""
    out = run_fault(
        Scenario(
            edit=_quiet(AT, 5_000_000_000),  # 5 s of exchange time = 2.5 s at speed 2
            setup=_pinging,
            ws_options={"ping_interval_s": server_ping_s} if server_ping_s else None,
        )
    )
    assert out.disconnects() == {}
    assert out.fake_connections["spot"] == 1 and out.gaps == []
    out.assert_user_properties()


def test_the_24h_cut_without_rotation_is_a_reconnect() -> None:
    """The exchange ends every connection at its lifetime (24 h, here 1.2 s); a gateway
    that does not rotate first reconnects, and what it lost is in the manifest."""
    out = run_fault(Scenario(ws_options={"lifetime_s": 1.2}))
    assert out.metric("meltica_ws_reconnects_total", market="spot") >= 1
    assert sum(out.disconnects().values()) == out.metric(
        "meltica_ws_reconnects_total", market="spot"
    )
    out.assert_recovered_properties()


def _rotating(engine: Engine) -> None:
    for manager in engine.managers.values():
        manager.rotate_after_s = 0.7


@pytest.mark.parametrize("markets", [("spot",), ("usdm",)])
def test_the_24h_cut_with_rotation_loses_nothing(markets: tuple[str, ...]) -> None:
    """Rotation before the cut (make-before-break): no reconnect, no gap, every trade."""
    out = run_fault(Scenario(markets=markets, ws_options={"lifetime_s": 1.2}, setup=_rotating))
    market = markets[0]
    assert out.metric("meltica_ws_rotations_total", market=market) >= 2
    assert out.metric("meltica_ws_reconnects_total", market=market) == 0
    assert out.gaps == []
    out.assert_user_properties()


def test_server_shutdown_is_a_rotation_that_loses_nothing() -> None:
    out = run_fault(Scenario(faults=[f"shutdown:connection=0,at_frame={AT},delay_s=1.0"]))
    assert out.metric("meltica_ws_rotations_total", market="spot") >= 1
    assert out.metric("meltica_ws_reconnects_total", market="spot") == 0
    assert out.disconnects() in ({}, {"rotation": 1.0})
    assert out.gaps == []
    out.assert_user_properties()

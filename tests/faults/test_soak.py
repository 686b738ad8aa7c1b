"""The long variant: two markets, two symbols each, two and a half minutes of market with
a fault of every link and frame kind along the way, and the same user-level checks.

Marked ``soak``: CI deselects it (pyproject's addopts); run it with
``pytest -m soak faults/test_soak.py``.
"""

from __future__ import annotations

import pytest
from fault_harness import Scenario, run_fault

from meltica.engine import Engine

FAULTS = [
    "reorder:market=spot,connection=0,at_frame=500",
    "duplicate:market=spot,connection=0,at_frame=1000,count=50",
    "close:market=spot,connection=0,at_frame=3000,code=1001",
    "abort:market=usdm,connection=1,at_frame=2000",
    "drop:market=spot,symbol=ETHUSDT,at_frame=4000,count=5",
    "drop:market=usdm,symbol=BTCUSDT,at_frame=3000,count=2",
    "malformed:market=usdm,connection=0,at_frame=5000",
    "unknown_event:market=spot,connection=1,at_frame=800,count=3",
    "stall:market=spot,connection=1,at_frame=2500,delay_s=10",
    "rest_status:code=429,retry_after=1,at_s=40",
    "rest_stale:symbol=ETHUSDT,at_s=60,count=2",
    "shutdown:market=usdm,connection=2,at_frame=4000,delay_s=1",
]


def _pinging(engine: Engine) -> None:
    for manager in engine.managers.values():
        manager.ping_interval_s = 0.5
        manager.pong_timeout_s = 1.0


@pytest.mark.soak
def test_soak_every_fault_kind_over_minutes() -> None:
    out = run_fault(
        Scenario(
            faults=FAULTS,
            markets=("spot", "usdm"),
            symbols=2,
            duration_s=300.0,
            speed=2.0,
            setup=_pinging,
            timeout_s=400,
        )
    )
    print("disconnects:", out.disconnects("spot"), out.disconnects("usdm"))
    print("gaps:", out.gap_summary)
    print("rest faults applied:", out.rest_faults)
    out.assert_recovered_properties()


@pytest.mark.soak
def test_soak_the_24h_cut_with_rotation_by_config() -> None:
    """The rotation age from config (``binance.rotate_after_s``, at least 60 s) ahead of a
    75 s connection lifetime: every connection rotates before its cut, twice over
    150 s, and nothing is lost or reconnected."""
    out = run_fault(
        Scenario(
            markets=("spot", "usdm"),
            duration_s=300.0,
            speed=2.0,
            ws_options={"lifetime_s": 75.0},
            overrides=["binance.rotate_after_s=60"],
            timeout_s=400,
        )
    )
    for market in ("spot", "usdm"):
        assert out.metric("meltica_ws_rotations_total", market=market) >= 2
        assert out.metric("meltica_ws_reconnects_total", market=market) == 0
    assert out.gaps == []
    out.assert_user_properties()

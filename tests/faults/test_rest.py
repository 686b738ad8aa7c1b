"""REST faults on the depth snapshot: rate limits, bans, refusals, server errors, time-outs,
slow and stale answers.

The first snapshot of the book meets the fault; depth frames dropped later make the book
resync through a second one.  Whatever the fault, the book ends equal to the reference,
the counters name what happened, and the gateway is ready again.
"""

from __future__ import annotations

import pytest
from fault_harness import Scenario, run_fault

DROP = "drop:symbol=BTCUSDT,at_frame=120,count=2"


@pytest.mark.parametrize(
    ("fault", "counter", "at_least"),
    [
        pytest.param(
            "rest_status:symbol=BTCUSDT,code=429,retry_after=1",
            "meltica_rest_rate_limited_total",
            1,
            id="429",
        ),
        pytest.param(
            "rest_status:symbol=BTCUSDT,code=418,retry_after=1",
            "meltica_rest_banned_total",
            1,
            id="418",
        ),
        pytest.param(
            "rest_status:symbol=BTCUSDT,code=403", "meltica_rest_status_errors_total", 1, id="403"
        ),
        pytest.param(
            "rest_status:symbol=BTCUSDT,code=500,count=2",
            "meltica_rest_server_errors_total",
            2,
            id="500",
        ),
        pytest.param(
            "rest_status:symbol=BTCUSDT,code=503", "meltica_rest_server_errors_total", 1, id="503"
        ),
        pytest.param(
            "rest_timeout:symbol=BTCUSDT,delay_s=1.5",
            "meltica_rest_timeouts_total",
            1,
            id="timeout",
        ),
        pytest.param("rest_slow:symbol=BTCUSDT,delay_s=0.4", None, 0, id="slow"),
        pytest.param(
            "rest_stale:symbol=BTCUSDT,count=3", "meltica_book_refetches_total", 1, id="stale"
        ),
    ],
)
def test_a_rest_fault_on_the_snapshot_heals_the_book(
    fault: str, counter: str | None, at_least: int
) -> None:
    out = run_fault(
        Scenario(
            faults=[fault, DROP],
            # a time-out at 0.6 s: the timeout fault holds 1.5 s, the slow one answers at 0.4
            overrides=["binance.rest_request_timeout_s=0.6", "conductor.snapshot_retry_s=0.2"],
        )
    )
    kind = fault.split(":")[0]
    assert out.rest_faults.get(kind, 0) >= 1, out.rest_faults
    if counter is not None:
        assert out.metric(counter) >= at_least, counter
    else:
        assert out.metric("meltica_rest_failures_total") == 0
        assert out.metric("meltica_rest_retries_total") == 0
    # the dropped frames (a hole if the book was live by then): every depth hole resynced
    depth = [g for g in out.gaps if g["stream"] == "depth"]
    assert all(g["outcome"] == "resynced" for g in depth), depth
    assert out.metric("meltica_gaps_open") == 0
    assert out.disconnects() == {}
    out.assert_user_properties()

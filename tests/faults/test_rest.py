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


# each fault on the snapshot of BTCUSDT: the counter that must show it (None: no failure
# nor retry at all) and its least value
FAULTS = {
    "429": ("rest_status:code=429,retry_after=1", "meltica_rest_rate_limited_total", 1),
    "418": ("rest_status:code=418,retry_after=1", "meltica_rest_banned_total", 1),
    "403": ("rest_status:code=403", "meltica_rest_status_errors_total", 1),
    "500": ("rest_status:code=500,count=2", "meltica_rest_server_errors_total", 2),
    "503": ("rest_status:code=503", "meltica_rest_server_errors_total", 1),
    "timeout": ("rest_timeout:delay_s=1.5", "meltica_rest_timeouts_total", 1),
    "slow": ("rest_slow:delay_s=0.4", None, 0),
    "stale": ("rest_stale:count=3", "meltica_book_refetches_total", 1),
}


@pytest.mark.parametrize(("fault", "counter", "at_least"), FAULTS.values(), ids=FAULTS.keys())
def test_a_rest_fault_on_the_snapshot_heals_the_book(
    fault: str, counter: str | None, at_least: int
) -> None:
    out = run_fault(
        Scenario(
            faults=[f"{fault},symbol=BTCUSDT", DROP],
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

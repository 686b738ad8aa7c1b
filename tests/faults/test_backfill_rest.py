"""REST faults during trade backfill: trade frames are dropped (a hole in the trade ids)
and the request that fills the hole meets a 429, a 418, a 5xx, a time-out or a slow
answer.  The hole is filled all the same: every trade id exactly once, the manifest entry
``filled``, the counter naming the REST fault moved.

"""

from __future__ import annotations

import pytest
from fault_harness import Scenario, run_fault

# 5 trade frames of BTCUSDT dropped about 2 s into the run; the REST fault armed from 1 s
# after the fake exchange started (after the first depth snapshot), so the next request
# for BTCUSDT it meets is the backfill's
DROP = "drop:stream=trade,symbol=BTCUSDT,at_frame=260,count=5"
TRADES_PATH = "/api/v3/historicalTrades"


@pytest.mark.parametrize(
    ("fault", "counter", "requests"),
    [
        pytest.param(
            "rest_status:code=429,retry_after=1", "meltica_rest_rate_limited_total", 2, id="429"
        ),
        pytest.param(
            "rest_status:code=418,retry_after=1", "meltica_rest_banned_total", 2, id="418"
        ),
        pytest.param("rest_status:code=503", "meltica_rest_server_errors_total", 2, id="503"),
        pytest.param("rest_timeout:delay_s=1.5", "meltica_rest_timeouts_total", 2, id="timeout"),
        pytest.param("rest_slow:delay_s=0.4", None, 1, id="slow"),
    ],
)
def test_a_rest_fault_during_backfill_still_fills_the_hole(
    fault: str, counter: str | None, requests: int
) -> None:
    out = run_fault(
        Scenario(
            faults=[DROP, f"{fault},symbol=BTCUSDT,at_s=1.0"],
            duration_s=8.0,
            overrides=["binance.rest_request_timeout_s=0.6"],
        )
    )
    assert out.rest_faults.get(fault.split(":")[0]) == 1, out.rest_faults
    assert out.rest_requests.get(TRADES_PATH) == requests, out.rest_requests
    if counter is not None:
        assert out.metric(counter) >= 1, counter
    trades = [g for g in out.gaps if g["stream"] == "trade"]
    assert trades and all(g["outcome"] == "filled" for g in trades), trades
    assert out.disconnects() == {}
    out.assert_user_properties()

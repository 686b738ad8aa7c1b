"""No fault: the harness's checks hold on a clean run (and would fail on a broken one)."""

from __future__ import annotations

from fault_harness import Scenario, run_fault


def test_a_clean_run_delivers_every_trade_once_and_books_equal_the_reference() -> None:
    out = run_fault(Scenario(markets=("spot", "usdm")))
    out.assert_user_properties()
    assert out.gaps == []
    assert out.disconnects("spot") == {} and out.disconnects("usdm") == {}

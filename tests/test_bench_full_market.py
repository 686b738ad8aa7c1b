"""bench/bench_full_market.py's curve: the offered rate and the flatness verdict.

No timing and no processes: the rates come from generating the synthetic market, the
verdict from made-up windows.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load() -> Any:
    # the module puts its checkout on PYTHONPATH for its child processes; keep ours as it was
    saved, path = os.environ.get("PYTHONPATH"), list(sys.path)
    sys.path.insert(0, str(ROOT / "bench"))  # its ``harness`` import, as when run as a script
    spec = importlib.util.spec_from_file_location(
        "bench_full_market", ROOT / "bench/bench_full_market.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = path
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    return module


bench = _load()


def _point(symbols: int, rss_mb: float, us: float, idle: float | None = None) -> dict[str, Any]:
    frames = 10_000
    same = {"rss_mb": rss_mb, "cpu_us_per_frame": us, "frames_per_s": frames, "speed": 2.0}
    r: dict[str, Any] = {
        "symbols": symbols,
        "books": symbols,
        "same_rate": same,
        "base": {"cpu_us_per_frame": us * 2},
    }
    if idle is not None:
        r["idle"] = {"valid": True, "gateway_cores": idle, "net_us_per_frame": us - idle * 100}
    return r


def test_memory_per_added_book_from_the_previous_point() -> None:
    curve = [_point(100, 53.0, 8.0), _point(10, 50.0, 8.0), _point(600, 70.0, 8.0)]
    verdict = bench.judge_curve(curve)
    by_n = {r["symbols"]: r["marginal_rss_per_book_kb"] for r in curve}
    assert by_n == {10: None, 100: round(3 * 1024 / 90, 1), 600: round(17 * 1024 / 500, 1)}
    assert verdict["curve_symbols"] == [10, 100, 600]
    assert verdict["memory_per_book_max_over_min"] == round(by_n[600] / by_n[100], 2)
    assert verdict["memory_per_book_flat"] is True


def test_cpu_per_frame_flat_over_every_point_including_the_smallest() -> None:
    flat = [_point(10, 50, 9.0, 0.01), _point(100, 53, 8.0, 0.01), _point(600, 70, 7.0, 0.02)]
    verdict = bench.judge_curve(flat)
    assert verdict["cpu_per_frame_max_over_min"] == round(9 / 7, 2)
    assert verdict["cpu_per_frame_flat"] is True
    assert verdict["net_cpu_per_frame_max_over_min"] == round(8 / 5, 2)
    # a smallest run that costs twice the others per frame breaks the budget
    steep = [_point(10, 50, 16.0), _point(100, 53, 8.0), _point(600, 70, 8.0)]
    assert bench.judge_curve(steep)["cpu_per_frame_flat"] is False


def test_memory_not_flat() -> None:
    curve = [_point(10, 50.0, 8.0), _point(100, 53.0, 8.0), _point(600, 120.0, 8.0)]
    assert bench.judge_curve(curve)["memory_per_book_flat"] is False


@pytest.mark.parametrize(("small", "large"), [(10, 100), (100, 600)])
def test_offered_rate_grows_with_the_symbol_count(small: int, large: int) -> None:
    a, b = bench.offered_rate(small, 1, 2.0), bench.offered_rate(large, 1, 2.0)
    assert 0 < a < b
    assert bench.offered_rate(small, 1, 2.0) == a  # the same market for a seed


def test_mix_fit_recovers_per_stream_costs() -> None:
    # 4 µs per bookTicker / trade, 10 µs per depth diff: the per-frame cost is the mix
    points = []
    for n, share in ((10, 0.1), (100, 0.25), (600, 0.4), (2400, 0.5)):
        r = _point(n, 50.0 + n / 30, 4 + 6 * share)
        r["offered_mix"] = {"depth": share, "bookTicker": 0.8 - share, "trade": 0.2}
        points.append(r)
    fit = bench.mix_fit(points)
    assert fit == {"other_us_per_frame": 4.0, "depth_us_per_frame": 10.0, "worst_residual": 0.0}
    verdict = bench.judge_curve(points)
    assert verdict["cpu_per_frame_flat"] is False  # 7 / 4.6: the verdict stays on the totals
    assert verdict["cpu_per_frame_mix_fit"] == fit
    assert bench.mix_fit(points[:2]) is None  # two points always fit a line

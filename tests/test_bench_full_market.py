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


def _kind_point(symbols: int, us: float | None, ticks: float = 0.0) -> dict[str, Any]:
    same = {
        "speed": 2.0,
        "frames_per_s": 1_000,
        "sched_us_per_frame": us,
        "cpu_us_per_frame": ticks or us,
        "rss_mb": 60.0,
        "loadavg": [1.0, 1.0, 1.0],
    }
    idle = {"valid": True, "sched_cores": 0.001, "net_sched_us_per_frame": None}
    if us is not None:
        idle["net_sched_us_per_frame"] = us - 1.0
    return {"symbols": symbols, "books": symbols, "same_rate": same, "idle": idle}


def test_cpu_per_event_judged_per_kind() -> None:
    kinds = {
        "trade": [_kind_point(100, 4.0, 6.0), _kind_point(10, 3.0, 3.0), _kind_point(600, 4.4)],
        "depth": [_kind_point(10, 20.0), _kind_point(100, 10.0), _kind_point(600, 11.0)],
    }
    verdict = bench.judge_kinds(kinds)
    trade = verdict["trade"]
    assert trade["symbols"] == [10, 100, 600]  # sorted by symbol count
    assert trade["us_per_frame"] == [3.0, 4.0, 4.4]
    assert trade["max_over_min"] == round(4.4 / 3.0, 2)
    assert trade["flat"] is True
    # judged on the ns clock; the tick figure is reported beside it, not judged
    assert trade["tick_max_over_min"] == 2.0
    assert trade["net_max_over_min"] == round(3.4 / 2.0, 2)
    assert verdict["depth"]["max_over_min"] == 2.0
    assert verdict["depth"]["flat"] is False
    assert verdict["all_flat"] is False
    assert bench.judge_kinds({"trade": kinds["trade"]})["all_flat"] is True


def test_a_kind_with_a_missing_point_is_not_judged() -> None:
    points = [_kind_point(10, 4.0), {"symbols": 100, "error": "0/100 books live"}]
    points.append(_kind_point(600, 4.1))
    verdict = bench.judge_kinds({"depth": points})
    assert verdict["depth"]["flat"] is None
    assert verdict["depth"]["missing"] == [100]
    assert verdict["all_flat"] is False
    # a point without a figure (no frames in its window) is not a flat curve either
    verdict = bench.judge_kinds({"trade": [_kind_point(10, 4.0), _kind_point(100, None)]})
    assert verdict["trade"]["max_over_min"] is None
    assert verdict["trade"]["flat"] is None
    assert bench.judge_kinds({})["all_flat"] is False


def test_per_kind_table_beside_the_whole_feed_verdict() -> None:
    kinds = {"book_ticker": [_kind_point(10, 4.0), _kind_point(100, 5.0)]}
    whole = [_point(10, 50.0, 8.0), _point(100, 53.0, 9.0)]
    for r in whole:
        r.update(time_to_live_s=1.0, rate_bound_s=0.0)
        r["same_rate"].update(loadavg=[1.0], frames_per_s=9_000)
        r["base"].update(frames_per_s=1_000)
    verdict = bench.judge({}, whole)
    verdict["per_kind"] = bench.judge_kinds(kinds)
    text = bench.table({}, whole, verdict, kinds)
    assert "## Whole feed" in text and "## Per kind" in text
    assert "| book_ticker | 1.25 | True |" in text
    assert "Budgets (whole feed): " in text and '"cpu_per_frame_flat": true' in text
    assert "Budgets (per kind): " in text


def test_kinds_option() -> None:
    assert bench._kinds("depth, trade") == ["depth", "trade"]
    assert bench._kinds("") == []
    with pytest.raises(Exception, match="aggTrade"):
        bench._kinds("aggTrade")


def test_every_kind_offered_at_every_curve_count() -> None:
    # the per-kind curve speeds each market up by the full market's rate of a kind over its
    # own: both must be positive for every kind the gateway can subscribe
    for n in (10, 100):
        mix = bench.offered_mix(n, 1, 2.0)
        assert all(mix[stream] > 0 for stream in bench.KIND_STREAM.values())


def test_levels_per_diff_falls_as_the_market_grows() -> None:
    # the smaller markets are the busiest symbols: their 100 ms windows gather more changes
    small, large = bench.levels_per_diff(10, 1, 2.0), bench.levels_per_diff(200, 1, 2.0)
    assert small is not None and large is not None
    assert small > large >= 1.0


def test_levels_per_diff_in_the_per_kind_table() -> None:
    depth = [_kind_point(10, 8.0), _kind_point(100, 6.0)]
    depth[0]["levels_per_diff"], depth[1]["levels_per_diff"] = 17.08, 5.16
    kinds = {"depth": depth, "trade": [_kind_point(10, 4.0), _kind_point(100, 4.0)]}
    text = "\n".join(bench._kind_table(kinds, bench.judge_kinds(kinds)))
    assert "| levels/diff |" in text
    assert "| depth | 10 | None | 2x | 0 | 17.08 | 1,000 |" in text
    assert "| trade | 10 | None | 2x | 0 |  | 1,000 |" in text


def _split_point(symbols: int, a: float, b: float, fpb: tuple[float, float]) -> dict[str, Any]:
    """Two windows of one point whose CPU per frame is exactly a + b / frames per batch."""
    r: dict[str, Any] = {"symbols": symbols, "books": symbols}
    for key, f in zip(("same_rate", "bunched"), fpb, strict=True):
        r[key] = {"frames_per_batch": f, "sched_us_per_frame": round(a + b / f, 6)}
    return r


def test_read_split_recovers_the_per_read_and_per_frame_costs() -> None:
    points = [
        _split_point(10, 5.0, 40.0, (4.0, 40.0)),
        _split_point(100, 5.5, 40.0, (20.0, 60.0)),
        _split_point(2400, 6.5, 40.0, (90.0, 120.0)),
    ]
    split = bench.read_split(points)
    assert split is not None
    assert split["per_read_us"] == 40.0
    assert split["per_frame_us"] == [5.0, 5.5, 6.5]
    assert split["per_frame_max_over_min"] == 1.3
    assert split["worst_residual"] == 0.0
    # each point's own per-read cost where its two batch sizes differ enough (not 90 / 120)
    assert split["per_read_us_by_point"] == [40.0, 40.0, None]
    # the raw figures at the bunched windows, reported beside
    assert split["bunched_frames_per_batch"] == [40.0, 60.0, 120.0]
    assert split["bunched_max_over_min"] == round((6.5 + 40 / 120) / (5.0 + 1.0), 2)
    # a point without its bunched window: no split (never a split of some of the points)
    del points[1]["bunched"]
    assert bench.read_split(points) is None
    # one batch size per point says nothing about the per-read cost
    same = [_split_point(10, 5.0, 40.0, (4.0, 4.0)), _split_point(100, 6.0, 40.0, (9.0, 9.0))]
    assert bench.read_split(same) is None


def test_read_split_in_the_per_kind_verdict_and_table() -> None:
    points = [_kind_point(10, 9.0), _kind_point(100, 6.0)]
    for r, (a, fpb) in zip(points, ((5.0, (4.0, 40.0)), (5.5, (20.0, 80.0))), strict=True):
        s = _split_point(r["symbols"], a, 16.0, fpb)
        r["same_rate"].update(s["same_rate"])
        r["bunched"] = s["bunched"]
    verdict = bench.judge_kinds({"depth": points})
    assert verdict["depth"]["read_split"]["per_frame_us"] == [5.0, 5.5]
    text = bench.table({}, [], {"per_kind": verdict}, {"depth": points})
    assert "| depth | 40.0 / 80.0 |" in text and "| 16.0 | 5.0 / 5.5 | 1.1 | 0.0 |" in text

"""bench/micro/compare.py: ratios from pytest-benchmark JSON and the 10 % regression rule.

Synthetic JSON only: no timing here.  The micro-benchmarks themselves are not tests (the test
command never collects bench/micro; the last test checks that).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_compare", ROOT / "bench/micro/compare.py")
assert _spec and _spec.loader
compare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare)


def record(group: str, role: str, median: float) -> dict[str, Any]:
    return {"group": group, "name": f"{group}-{role}", "extra_info": {"role": role},
            "stats": {"median": median, "min": median / 2}}  # fmt: skip


def run_json(tmp: Path, medians: dict[str, tuple[float, float]]) -> Path:
    """A pytest-benchmark JSON file with (ours, baseline) medians per group."""
    benchmarks = []
    for group, (ours, base) in medians.items():
        benchmarks += [record(group, "ours", ours), record(group, "baseline", base)]
    path = tmp / "run.json"
    path.write_text(json.dumps({"machine_info": {}, "benchmarks": benchmarks}))
    return path


def baseline_json(tmp: Path, ratios: dict[str, float]) -> Path:
    path = tmp / "baseline.json"
    path.write_text(json.dumps({"ratios": ratios}))
    return path


BASE = {"parse[trade]": 0.40, "bus-handoff[1c]": 5.0}


def test_ratio_is_ours_over_baseline_median() -> None:
    recs = [record("a", "baseline", 200.0), record("a", "ours", 50.0), record("b", "ours", 1.0)]
    # "b" has no baseline timing: no ratio
    assert compare.ratios(recs) == {"a": 0.25}


def test_pass_within_tolerance(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 0.40 -> 0.436 (+9 %), 5.0 -> 4.8 (-4 %)
    cur = run_json(tmp_path, {"parse[trade]": (43.6, 100.0), "bus-handoff[1c]": (48.0, 10.0)})
    rc = compare.main(["--current", str(cur), "--baseline", str(baseline_json(tmp_path, BASE))])
    out = capsys.readouterr().out
    assert rc == 0
    assert "| parse[trade] | 0.400 | 0.436 | +9.0% | ok |" in out
    assert "REGRESSED" not in out


def test_regression_by_11_percent_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # bus: 5.0 -> 5.55 (+11 %); the parse ratio is unchanged
    cur = run_json(tmp_path, {"parse[trade]": (40.0, 100.0), "bus-handoff[1c]": (55.5, 10.0)})
    rc = compare.main(["--current", str(cur), "--baseline", str(baseline_json(tmp_path, BASE))])
    out = capsys.readouterr().out
    assert rc == 1
    assert "| bus-handoff[1c] | 5.000 | 5.550 | +11.0% | REGRESSED |" in out
    assert "| parse[trade] | 0.400 | 0.400 | +0.0% | ok |" in out


def test_improvement_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # parse: 0.40 -> 0.30 (-25 %)
    cur = run_json(tmp_path, {"parse[trade]": (30.0, 100.0), "bus-handoff[1c]": (50.0, 10.0)})
    rc = compare.main(["--current", str(cur), "--baseline", str(baseline_json(tmp_path, BASE))])
    out = capsys.readouterr().out
    assert rc == 0
    assert "| parse[trade] | 0.400 | 0.300 | -25.0% | improved |" in out


def test_missing_and_new_pairs_do_not_fail() -> None:
    rows, regressed = compare.compare({"new[x]": 1.0}, {"old[y]": 1.0})
    assert not regressed
    assert [(r["pair"], r["status"]) for r in rows] == [
        ("new[x]", "new"),
        ("old[y]", "not measured"),
    ]


def test_tolerance_boundary() -> None:
    _, regressed = compare.compare({"a": 1.0999}, {"a": 1.0})
    assert not regressed
    _, regressed = compare.compare({"a": 1.1001}, {"a": 1.0})
    assert regressed


def test_update_writes_a_baseline_compare_reads(tmp_path: Path) -> None:
    cur = run_json(tmp_path, {"parse[trade]": (40.0, 100.0)})
    out = tmp_path / "new-baseline.json"
    assert compare.main(["--current", str(cur), "--baseline", str(out), "--update"]) == 0
    assert json.loads(out.read_text())["ratios"] == {"parse[trade]": 0.4}
    assert compare.main(["--current", str(cur), "--baseline", str(out)]) == 0


def test_a_baseline_from_another_cpu_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cur = run_json(tmp_path, {"parse[trade]": (40.0, 100.0)})
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"machine": {"cpu": "Other CPU 9000"}, "ratios": BASE}))
    assert compare.main(["--current", str(cur), "--baseline", str(base)]) == 0
    assert "note: base.json was recorded on 'Other CPU 9000', this run is on" in (
        capsys.readouterr().out
    )
    base.write_text(json.dumps({"machine": {"cpu": compare.cpu_model()}, "ratios": BASE}))
    assert compare.main(["--current", str(cur), "--baseline", str(base)]) == 0
    assert "note:" not in capsys.readouterr().out


def test_update_records_the_cpu(tmp_path: Path) -> None:
    cur = run_json(tmp_path, {"parse[trade]": (40.0, 100.0)})
    out = tmp_path / "new-baseline.json"
    assert compare.main(["--current", str(cur), "--baseline", str(out), "--update"]) == 0
    assert json.loads(out.read_text())["machine"]["cpu"] == compare.cpu_model()


def test_committed_baseline_covers_every_pair() -> None:
    committed = json.loads((ROOT / "bench/micro/baseline.json").read_text())["ratios"]
    names = [line.split("[", 1)[0] for line in committed]
    assert {"parse", "book-apply", "bus-handoff", "snapshot-cas", "wire-encode", "wire-decode"} <= (
        set(names)
    )
    assert all(r > 0 for r in committed.values())


@pytest.mark.parametrize("cwd", ["tests", "."])
def test_the_test_command_does_not_collect_the_micro_benchmarks(cwd: str) -> None:
    # what `make test` runs (cd tests && pytest) and a bare `pytest` at the root (testpaths),
    # collection only; -P: meltica comes from where the suite imports it (an installed
    # package in CI), not from the working directory's source tree
    proc = subprocess.run(
        [sys.executable, "-P", "-m", "pytest", "--collect-only", "-q"],
        cwd=ROOT / cwd, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    collected = [line for line in proc.stdout.splitlines() if "::" in line]
    assert any("test_bench_compare.py::" in line for line in collected)
    assert not [line for line in collected if "bench/" in line or "test_micro.py" in line]

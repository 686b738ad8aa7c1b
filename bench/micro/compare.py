"""Ratios of the micro-benchmark pairs, and their comparison with the committed baseline.

A pair's ratio is ours ÷ baseline of the two median times pytest-benchmark measured in the
same session (both sides do the same operations on the same inputs), so lower is better and
the machine's speed cancels out.  A ratio regresses when it grows by more than the tolerance
(10 % by default) over the one in ``baseline.json``.

    python bench/micro/compare.py              # run the benchmarks, compare, exit 1 on a regression
    python bench/micro/compare.py --runs 3     # median ratio of 3 sessions per pair
    python bench/micro/compare.py --update     # run and write the ratios to baseline.json
    python bench/micro/compare.py --current RUN.json   # compare a saved pytest-benchmark JSON
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BASELINE = HERE / "baseline.json"
TOLERANCE = 0.10

if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))  # bench/, for its harness

from harness import cpu_model  # noqa: E402


def ratios(benchmarks: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """ours ÷ baseline median per group, from pytest-benchmark records.

    Each record has ``group``, ``extra_info.role`` ("ours" or "baseline") and
    ``stats.median`` (the layout of ``--benchmark-json``'s ``benchmarks`` list).  A group
    without both roles has no ratio.
    """
    med: dict[str, dict[str, float]] = {}
    for b in benchmarks:
        role = b.get("extra_info", {}).get("role")
        group = b.get("group")
        if role in ("ours", "baseline") and group:
            med.setdefault(group, {})[role] = float(b["stats"]["median"])
    return {g: m["ours"] / m["baseline"] for g, m in sorted(med.items()) if len(m) == 2}


def compare(
    current: Mapping[str, float], baseline: Mapping[str, float], tolerance: float = TOLERANCE
) -> tuple[list[dict[str, Any]], bool]:
    """One row per pair of either side and whether any ratio regressed beyond ``tolerance``.

    ``status``: ``ok``, ``REGRESSED`` (current > baseline × (1 + tolerance)), ``improved``
    (current < baseline ÷ (1 + tolerance)), ``not measured`` (in the baseline only, e.g. its
    inputs were skipped) or ``new`` (no baseline yet).
    """
    rows: list[dict[str, Any]] = []
    regressed = False
    for name in sorted(set(current) | set(baseline)):
        cur, base = current.get(name), baseline.get(name)
        change = None
        if cur is None:
            status = "not measured"
        elif base is None:
            status = "new"
        else:
            change = cur / base - 1.0
            if cur > base * (1.0 + tolerance):
                status = "REGRESSED"
                regressed = True
            elif cur < base / (1.0 + tolerance):
                status = "improved"
            else:
                status = "ok"
        rows.append(
            {"pair": name, "baseline": base, "current": cur, "change": change, "status": status}
        )
    return rows, regressed


def table(rows: list[dict[str, Any]]) -> str:
    def fmt(x: float | None, spec: str) -> str:
        return "-" if x is None else format(x, spec)

    lines = [
        "| pair | baseline ratio | current ratio | change | status |",
        "|---|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['pair']} | {fmt(r['baseline'], '.3f')} | {fmt(r['current'], '.3f')} "
            f"| {fmt(r['change'], '+.1%')} | {r['status']} |"
        )
    return "\n".join(lines)


def run_session(extra: list[str]) -> dict[str, float]:
    """One ``pytest bench/micro --benchmark-only`` session; its ratios."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run.json"
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            str(HERE),
            "--benchmark-only",
            f"--benchmark-json={out}",
            "-q",
            *extra,
        ]
        rc = subprocess.run(cmd, cwd=HERE.parents[1]).returncode
        if rc != 0:
            raise SystemExit(f"benchmark session failed (exit {rc}): {' '.join(cmd)}")
        return ratios(json.loads(out.read_text())["benchmarks"])


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "load_avg": os.getloadavg()[0],
    }


def other_cpu(baseline: Mapping[str, Any], cpu: str, name: str = BASELINE.name) -> str | None:
    """A note when ``baseline`` (the file ``name``'s contents) was recorded on another CPU
    model than ``cpu`` (None: the same, or not recorded).  Both sides of a pair run on the
    same CPU, but not every pair's ratio is the same on every CPU: a regression found
    across CPUs may be the CPU."""
    recorded = (baseline.get("machine") or {}).get("cpu")
    if not recorded or recorded == cpu:
        return None
    return (
        f"note: {name} was recorded on {recorded!r}, this run is on {cpu!r}; "
        "a ratio can move with the CPU (re-baseline on this one: --update)"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", type=Path, default=BASELINE)
    ap.add_argument("--current", type=Path, help="a pytest-benchmark JSON file instead of a run")
    ap.add_argument("--runs", type=int, default=1, help="sessions; the median ratio is used")
    ap.add_argument("--tolerance", type=float, default=TOLERANCE)
    ap.add_argument("--update", action="store_true", help="write the ratios as the baseline")
    ap.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    args = ap.parse_args(argv)
    if args.current:
        current = ratios(json.loads(args.current.read_text())["benchmarks"])
    else:
        sessions = [run_session(args.pytest_args) for _ in range(max(1, args.runs))]
        names = set().union(*sessions)
        current = {n: statistics.median(s[n] for s in sessions if n in s) for n in sorted(names)}
    if args.update:
        doc = {
            "what": "ours ÷ baseline median time per micro-benchmark pair (lower is better)",
            "command": f"python bench/micro/compare.py --update --runs {max(1, args.runs)}",
            "runs": max(1, args.runs),
            "machine": machine(),
            "ratios": current,
        }
        args.baseline.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {len(current)} ratios to {args.baseline}")
        return 0
    recorded = json.loads(args.baseline.read_text())
    rows, regressed = compare(current, recorded["ratios"], args.tolerance)
    print(table(rows))
    note = other_cpu(recorded, cpu_model(), args.baseline.name)
    if note:
        print(f"\n{note}")
    if regressed:
        print(f"\nFAIL: a ratio grew by more than {args.tolerance:.0%} over {args.baseline.name}")
        return 1
    print(f"\nok: no ratio grew by more than {args.tolerance:.0%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

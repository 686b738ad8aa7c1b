"""pytest-benchmark set-up for the micro-benchmarks: inputs once per session, ratios at the end.

These are benchmarks, not tests: they live outside ``tests/`` (the test command never collects
them) and run with ``pytest bench/micro --benchmark-only``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare
import pairs


@pytest.fixture(scope="session")
def inputs() -> pairs.Inputs:
    return pairs.Inputs()


@pytest.fixture
def need_source(request: pytest.FixtureRequest) -> Any:
    def check(source: str) -> None:
        if source == "captures" and not pairs.captures_present():
            reason = (
                f"real captures not found at {pairs.bench_parse.CAPTURES} (set MELTICA_CAPTURES)"
            )
            if os.environ.get("CI") == "true":
                pytest.fail(f"{reason}; CI=true requires them")
            pytest.skip(reason)

    return check


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    records = [
        {"group": b.group, "extra_info": b.extra_info, "stats": {"median": b.stats.median}}
        for b in session.benchmarks
    ]
    found = compare.ratios(records)
    if not found:
        return
    tr = terminalreporter
    tr.write_sep("-", "ratios: ours ÷ baseline median (lower is better)")
    for name, ratio in found.items():
        tr.write_line(f"{name:<40} {ratio:7.3f}")

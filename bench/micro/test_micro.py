"""Each pair of pairs.py timed by pytest-benchmark: Meltica, then its baseline, same session.

The benchmark group is the pair's name; ``extra_info["role"]`` says which side a timing is.
Run:  pytest bench/micro --benchmark-only
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from pairs import PAIRS, Inputs, Pair


# The garbage collector off while timing (as bench/harness.py), and the process's CPU time as
# the clock: on a shared machine another process taking the core between the two sides of a
# pair would stretch one side's wall time, not its CPU time.
@pytest.mark.benchmark(disable_gc=True, timer=time.process_time)
@pytest.mark.parametrize("role", ["ours", "baseline"])
@pytest.mark.parametrize("pair", PAIRS, ids=[p.name for p in PAIRS])
def test_pair(benchmark: Any, inputs: Inputs, need_source: Any, pair: Pair, role: str) -> None:
    need_source(pair.source)
    ours, base = inputs.pair(pair)
    benchmark.group = pair.name
    benchmark.extra_info["role"] = role
    benchmark(ours if role == "ours" else base)

"""Interleaved-rounds timing for a noisy 2-core machine.

Every round runs every candidate once, in a rotated order, with the garbage
collector off while timing, so drift hits all candidates alike.  Reports the
median ns per operation over rounds and the ratio to a named baseline.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable


def measure(
    candidates: dict[str, Callable[[], object]], ops: int, rounds: int = 7, warmup: int = 1
) -> dict[str, float]:
    """Median ns/op of each zero-argument callable that performs ``ops`` operations."""
    names = list(candidates)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(warmup):
        for n in names:
            candidates[n]()
    for r in range(rounds):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            gc.collect()
            gc.disable()
            t0 = time.perf_counter_ns()
            candidates[n]()
            elapsed = time.perf_counter_ns() - t0
            gc.enable()
            samples[n].append(elapsed / ops)
    return {n: statistics.median(v) for n, v in samples.items()}

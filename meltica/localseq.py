"""Sequence numbers for events Meltica makes itself (control events).

The wire format keys a control event by ``<kind>:<local seq>``; the key must
never repeat, also across restarts (a broker deduplicates by key).  A counter
seeded from the wall clock in ns, strictly increasing, gives that.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class LocalSeq:
    """Strictly increasing ints, never below the wall clock in ns."""

    __slots__ = ("_clock", "_last")

    def __init__(self, clock: Callable[[], int] = time.time_ns) -> None:
        self._clock = clock
        self._last = 0

    def next(self) -> int:
        value = max(self._last + 1, self._clock())
        self._last = value
        return value

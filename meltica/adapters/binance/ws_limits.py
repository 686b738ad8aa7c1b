"""Pure rate and retry arithmetic for the Binance connections (no I/O, no clock).

Every method takes ``now`` (seconds, any monotonic origin), so tests drive them
with a fake clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

__all__ = ["Backoff", "SlidingWindow"]


class SlidingWindow:
    """At most ``limit`` events in any window of ``window_s`` seconds.

    Binance counts incoming messages per connection in any 1 s window (and
    connects per IP in any 5 min window).  A token bucket with a burst of N
    lets N + rate messages into one such window; a log of send times does
    not.  Use a window slightly longer than the exchange's to absorb jitter.
    """

    __slots__ = ("_times", "limit", "window_s")

    def __init__(self, limit: int, window_s: float) -> None:
        if limit < 1 or window_s <= 0:
            raise ValueError("limit must be >= 1 and window_s > 0")
        self.limit = limit
        self.window_s = window_s
        self._times: deque[float] = deque()

    def _expire(self, now: float) -> None:
        times = self._times
        while times and times[0] <= now - self.window_s:
            times.popleft()

    def delay(self, now: float) -> float:
        """Seconds to wait before the next event may happen (0.0: now)."""
        self._expire(now)
        if len(self._times) < self.limit:
            return 0.0
        return self._times[0] + self.window_s - now

    def record(self, now: float) -> None:
        """Count one event at ``now``."""
        self._expire(now)
        self._times.append(now)

    def used(self, now: float) -> int:
        self._expire(now)
        return len(self._times)


class Backoff:
    """Capped exponential backoff with jitter: initial, 2x, 4x ... up to maximum.

    Each delay is drawn uniformly from [d/2, d] ("equal jitter"), so many
    connections dropped at once do not reconnect in lockstep.
    """

    __slots__ = ("_rng", "failures", "initial_s", "maximum_s")

    def __init__(self, initial_s: float, maximum_s: float, rng: Callable[[], float]) -> None:
        if not 0 < initial_s <= maximum_s:
            raise ValueError("need 0 < initial_s <= maximum_s")
        self.initial_s = initial_s
        self.maximum_s = maximum_s
        self._rng = rng
        self.failures = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; counts one failure."""
        base = min(self.maximum_s, self.initial_s * (2.0 ** min(self.failures, 60)))
        self.failures += 1
        return base * (0.5 + 0.5 * self._rng())

    def reset(self) -> None:
        self.failures = 0

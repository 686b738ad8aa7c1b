"""The gap manifest: every hole Meltica saw in what the exchange sent, with its outcome.

A gap is recorded where it is found (docs/gaps.md): the Conductor opens one
when a book's update ids stop following on (``book_delta``, cause
``continuity``) and closes it ``resynced`` when the book is live again; the
connection manager reports, per stream without ids of its own, the time a
connection was down (cause ``disconnect``, outcome ``lost``); the trade
backfill reports id holes ``filled`` or ``lost``.  Each entry names market,
symbol, stream (the event kind), cause, the first and last missing id where
the stream has ids (else the time range), and the outcome.

`GapManifest` keeps the open holes (per market, symbol and stream; a hole that
touches the last open one widens it) and the last ``max_entries`` closed ones in
memory, counts every entry by (stream, cause, outcome) for the metrics, and
appends each closed entry as one JSON line to ``path`` when one is given.
Entries still open at `close` are written with outcome ``open``.  Pure
bookkeeping: callers pass the times; nothing here reads a clock but the
default ``clock`` for ``detected_ns``/``closed_ns``.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any, Final

__all__ = ["OUTCOMES", "Gap", "GapManifest"]

log = logging.getLogger("meltica.gaps")

OPEN: Final = "open"
FILLED: Final = "filled"
RESYNCED: Final = "resynced"
LOST: Final = "lost"
OUTCOMES: Final = (OPEN, FILLED, RESYNCED, LOST)

_GapKey = tuple[str, str, str]


@dataclass(slots=True)
class Gap:
    """One hole.  Ids are inclusive; ``first_id``/``last_id`` are None for a stream
    without ids, whose hole is the local time range ``from_ns``..``to_ns``."""

    seq: int
    market: str
    symbol: str
    stream: str
    cause: str
    first_id: int | None
    last_id: int | None
    from_ns: int | None
    to_ns: int | None
    outcome: str
    detected_ns: int
    closed_ns: int | None = None
    reason: str = ""  # why a lost gap could not be filled ("" otherwise)

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "market": self.market,
            "symbol": self.symbol,
            "stream": self.stream,
            "cause": self.cause,
            "first_id": self.first_id,
            "last_id": self.last_id,
            "from_ns": self.from_ns,
            "to_ns": self.to_ns,
            "outcome": self.outcome,
            "detected_ns": self.detected_ns,
            "closed_ns": self.closed_ns,
            "reason": self.reason,
        }


class GapManifest:
    """The gaps of one gateway run (module docstring).  ``path``: the JSON-lines
    file closed entries are appended to (None: memory only)."""

    def __init__(
        self,
        max_entries: int = 10_000,
        path: str | None = None,
        *,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.path = path
        self._clock = clock
        self._open: dict[_GapKey, list[Gap]] = {}
        self._n_open = 0
        self._closed: deque[Gap] = deque(maxlen=max_entries)
        self._seq = 0
        self.counts: dict[tuple[str, str, str], int] = {}
        self.write_errors = 0
        self._file: IO[str] | None = None
        if path is not None:
            # opened at once: a path that cannot be written fails at start
            self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    # ------------------------------------------------------------ recording

    def open(
        self,
        market: str,
        symbol: str,
        stream: str,
        cause: str,
        *,
        first_id: int | None = None,
        last_id: int | None = None,
        from_ns: int | None = None,
        to_ns: int | None = None,
    ) -> Gap:
        """Open a hole of this market, symbol and stream; one that touches or overlaps
        the last hole still open there widens it instead (ids, or else times)."""
        key = (market, symbol, stream)
        holes = self._open.setdefault(key, [])
        last = holes[-1] if holes else None
        if last is not None and _touches(last, first_id, last_id, from_ns, to_ns):
            last.first_id = _lowest(last.first_id, first_id)
            last.last_id = _highest(last.last_id, last_id)
            last.from_ns = _lowest(last.from_ns, from_ns)
            last.to_ns = _highest(last.to_ns, to_ns)
            return last
        gap = self._new(market, symbol, stream, cause, first_id, last_id, from_ns, to_ns)
        holes.append(gap)
        self._n_open += 1
        return gap

    def resolve(self, market: str, symbol: str, stream: str, outcome: str) -> list[Gap]:
        """Close the open holes of this market, symbol and stream with ``outcome``."""
        _check_outcome(outcome)
        holes = self._open.pop((market, symbol, stream), [])
        self._n_open -= len(holes)
        for gap in holes:
            self._finish(gap, outcome)
        return holes

    def record(
        self,
        market: str,
        symbol: str,
        stream: str,
        cause: str,
        outcome: str,
        *,
        first_id: int | None = None,
        last_id: int | None = None,
        from_ns: int | None = None,
        to_ns: int | None = None,
        reason: str = "",
        detected_ns: int | None = None,
    ) -> Gap:
        """A gap whose outcome is already known (opened and closed at once);
        ``detected_ns``: when it was found (default: now)."""
        _check_outcome(outcome)
        gap = self._new(market, symbol, stream, cause, first_id, last_id, from_ns, to_ns)
        gap.reason = reason
        if detected_ns is not None:
            gap.detected_ns = detected_ns
        self._finish(gap, outcome)
        return gap

    def discard(self, market: str, symbol: str, stream: str) -> None:
        """Open holes of a stream that went away (unsubscribed): closed ``lost``."""
        self.resolve(market, symbol, stream, LOST)

    def close(self) -> None:
        """Write the gaps still open (outcome ``open``) and close the file."""
        for holes in self._open.values():
            for gap in holes:
                self._write(gap)
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                self.write_errors += 1
            self._file = None

    # ------------------------------------------------------------ reading

    def entries(
        self,
        *,
        market: str | None = None,
        symbol: str | None = None,
        outcome: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Closed entries (oldest first, at most ``max_entries`` kept) then the open ones."""
        out = [
            g.to_dict()
            for g in self._all()
            if (market is None or g.market == market)
            and (symbol is None or g.symbol == symbol)
            and (outcome is None or g.outcome == outcome)
        ]
        return out if limit is None else out[-limit:] if limit > 0 else []

    def summary(self) -> dict[str, Any]:
        """Counts of every entry recorded (not only those still kept), by outcome and stream."""
        by_outcome = {o: 0 for o in OUTCOMES}
        by_stream: dict[str, int] = {}
        for (stream, _cause, outcome), n in self.counts.items():
            by_outcome[outcome] += n
            by_stream[stream] = by_stream.get(stream, 0) + n
        by_outcome[OPEN] = self._n_open
        return {
            "total": sum(by_outcome.values()),
            "by_outcome": by_outcome,
            "by_stream": dict(sorted(by_stream.items())),
            "lost_ids": sum(
                g.last_id - g.first_id + 1
                for g in self._closed
                if g.outcome == LOST and g.first_id is not None and g.last_id is not None
            ),
        }

    def __len__(self) -> int:
        return len(self._closed) + self._n_open

    # ------------------------------------------------------------ internals

    def _new(
        self,
        market: str,
        symbol: str,
        stream: str,
        cause: str,
        first_id: int | None,
        last_id: int | None,
        from_ns: int | None,
        to_ns: int | None,
    ) -> Gap:
        self._seq += 1
        return Gap(
            self._seq,
            market,
            symbol,
            stream,
            cause,
            first_id,
            last_id,
            from_ns,
            to_ns,
            OPEN,
            self._clock(),
        )

    def _all(self) -> Iterator[Gap]:
        yield from self._closed
        for holes in self._open.values():
            yield from holes

    def _finish(self, gap: Gap, outcome: str) -> None:
        gap.outcome = outcome
        gap.closed_ns = self._clock()
        self._closed.append(gap)
        key = (gap.stream, gap.cause, outcome)
        self.counts[key] = self.counts.get(key, 0) + 1
        self._write(gap)

    def _write(self, gap: Gap) -> None:
        if self._file is None:
            return
        try:
            self._file.write(json.dumps(gap.to_dict(), separators=(",", ":")) + "\n")
            self._file.flush()
        except OSError as exc:
            self.write_errors += 1
            if self.write_errors == 1:
                log.warning("gap manifest %s: write failed: %s", self.path, exc)


def _check_outcome(outcome: str) -> None:
    if outcome not in OUTCOMES or outcome == OPEN:
        raise ValueError(f"outcome must be one of filled, resynced, lost; got {outcome!r}")


def _touches(
    gap: Gap, first_id: int | None, last_id: int | None, from_ns: int | None, to_ns: int | None
) -> bool:
    """Does a new hole touch or overlap ``gap`` (by ids when both have them)?"""
    if gap.first_id is not None and gap.last_id is not None:
        if first_id is None or last_id is None:
            return False
        return first_id <= gap.last_id + 1 and last_id >= gap.first_id - 1
    lo, hi = gap.from_ns, gap.to_ns
    if lo is None or hi is None or from_ns is None or to_ns is None:
        return False
    return from_ns <= hi and to_ns >= lo


def _lowest(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def _highest(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)

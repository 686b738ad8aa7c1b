"""SnapshotStore: the latest state per key, written with compare-and-set.

The Conductor writes a book's state under a key with ``version`` = the book's
update id.  A write succeeds only if the stored version is the one the writer
expected (None: absent or expired) and the new version is not older, so a
stale writer (a lagging process, a replay) can never overwrite newer state.
Entries expire ``ttl_s`` seconds after their last write.

Two protocols share the same method names and semantics: `SnapshotStore`
(synchronous; the in-memory store, cheap enough for the hot path) and
`AsyncSnapshotStore` (coroutines; what a network backend such as Redis, with
an atomic Lua script for CAS and ``PX`` for TTL, implements).  `as_async`
adapts a synchronous store, so code written against the async protocol runs
on either.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from meltica._core.snapshot import FULL, OK, SnapshotTable
from meltica.errors import MelticaError

__all__ = [
    "AsyncSnapshotStore",
    "MemorySnapshotStore",
    "SnapshotStore",
    "SnapshotStoreFull",
    "as_async",
]


def _ttl_ns(ttl_s: float) -> int:
    if not ttl_s > 0:
        raise ValueError(f"ttl_s must be > 0 or None, got {ttl_s}")
    return min(int(ttl_s * 1e9), (1 << 63) - 1)


class SnapshotStoreFull(MelticaError, BufferError):
    """A new key could not be stored: the store holds `max_entries` live entries."""

    reason = "snapshot_full"


@runtime_checkable
class SnapshotStore(Protocol):
    """Latest state per key with compare-and-set and TTL (synchronous)."""

    def get(self, key: str) -> tuple[int, object] | None:
        """``(version, value)`` of the live entry, or None (absent or expired)."""
        ...

    def compare_and_set(
        self,
        key: str,
        expected_version: int | None,
        version: int,
        value: object,
        ttl_s: float | None = None,
    ) -> bool:
        """Store `value` at `version` if the live version equals
        `expected_version` (None: absent or expired) and `version` is not
        older than it; False otherwise.  `ttl_s` None: the store's default."""
        ...

    def delete(self, key: str) -> bool:
        """Remove `key`; True if a live entry was removed."""
        ...


@runtime_checkable
class AsyncSnapshotStore(Protocol):
    """`SnapshotStore` for network backends (Redis): same semantics, awaited."""

    async def get(self, key: str) -> tuple[int, object] | None: ...

    async def compare_and_set(
        self,
        key: str,
        expected_version: int | None,
        version: int,
        value: object,
        ttl_s: float | None = None,
    ) -> bool: ...

    async def delete(self, key: str) -> bool: ...


class MemorySnapshotStore:
    """The in-process `SnapshotStore` on the C table in ``meltica._core.snapshot``.

    `max_entries` bounds its size: a new key in a full store first sweeps
    expired entries, then raises `SnapshotStoreFull` (counted in `refused`)
    rather than evict live state.  `default_ttl_s` applies when a write
    passes ``ttl_s=None`` (None: never expires).  `clock` is a monotonic ns
    clock, injectable for tests.
    """

    def __init__(
        self,
        max_entries: int = 100_000,
        *,
        default_ttl_s: float | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self._default_ttl_ns = 0 if default_ttl_s is None else _ttl_ns(default_ttl_s)
        self._table = SnapshotTable(max_entries)
        self.max_entries = max_entries
        self.default_ttl_s = default_ttl_s
        self.clock = clock

    def __len__(self) -> int:
        """Entries held, expired ones not yet swept included."""
        return len(self._table)

    @property
    def table(self) -> SnapshotTable:
        """The C table itself, for C callers that write in bulk (the Conductor's
        ``BookSet.store_fused``): same entries, same counters."""
        return self._table

    def ttl_ns(self, ttl_s: float | None) -> int:
        """`ttl_s` as the table's ``ttl_ns`` (None: the store's default)."""
        return self._default_ttl_ns if ttl_s is None else _ttl_ns(ttl_s)

    def get(self, key: str) -> tuple[int, object] | None:
        return self._table.get(key, self.clock())

    def compare_and_set(
        self,
        key: str,
        expected_version: int | None,
        version: int,
        value: object,
        ttl_s: float | None = None,
    ) -> bool:
        try:
            status = self._table.compare_and_set(
                key, expected_version, version, value, self.ttl_ns(ttl_s), self.clock()
            )
        except OverflowError:
            raise ValueError("versions must fit in int64") from None
        if status == FULL:
            raise self.full_error(key)
        return status == OK

    def full_error(self, key: str) -> SnapshotStoreFull:
        """The error of a refused new `key` (the table said FULL)."""
        return SnapshotStoreFull(
            f"snapshot store holds {self.max_entries} live entries; cannot add {key!r}"
        )

    def delete(self, key: str) -> bool:
        return self._table.delete(key, self.clock())

    def sweep(self) -> int:
        """Remove expired entries now; returns how many."""
        return self._table.sweep(self.clock())

    def stats(self) -> dict[str, int]:
        t = self._table
        return {
            "entries": len(t),
            "max_entries": t.max_entries,
            "sets": t.sets,
            "mismatches": t.mismatches,
            "refused": t.refused,
            "expired": t.expired,
        }


class _AsyncAdapter:
    def __init__(self, store: SnapshotStore) -> None:
        self.store = store

    async def get(self, key: str) -> tuple[int, object] | None:
        return self.store.get(key)

    async def compare_and_set(
        self,
        key: str,
        expected_version: int | None,
        version: int,
        value: object,
        ttl_s: float | None = None,
    ) -> bool:
        return self.store.compare_and_set(key, expected_version, version, value, ttl_s)

    async def delete(self, key: str) -> bool:
        return self.store.delete(key)


def as_async(store: SnapshotStore) -> AsyncSnapshotStore:
    """`store` behind the `AsyncSnapshotStore` protocol."""
    return _AsyncAdapter(store)

"""SnapshotStore: latest state per key with compare-and-set and TTL."""

from meltica.snapshot.store import (
    AsyncSnapshotStore,
    MemorySnapshotStore,
    SnapshotStore,
    SnapshotStoreFull,
    as_async,
)

__all__ = [
    "AsyncSnapshotStore",
    "MemorySnapshotStore",
    "SnapshotStore",
    "SnapshotStoreFull",
    "as_async",
]

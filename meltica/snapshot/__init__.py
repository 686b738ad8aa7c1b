"""SnapshotStore: latest state per key with compare-and-set and TTL."""

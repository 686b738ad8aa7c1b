# Type stubs for the compiled SnapshotStore core.
from collections.abc import Hashable
from typing import Final

OK: Final[int]
MISMATCH: Final[int]
FULL: Final[int]

class SnapshotTable:
    max_entries: int
    sets: int
    mismatches: int
    refused: int
    expired: int
    sweeps: int
    def __init__(self, max_entries: int) -> None: ...
    def __len__(self) -> int: ...
    def get(self, key: Hashable, now_ns: int) -> tuple[int, object] | None: ...
    def compare_and_set(
        self,
        key: Hashable,
        expected_version: int | None,
        version: int,
        value: object,
        ttl_ns: int,
        now_ns: int,
    ) -> int: ...
    def delete(self, key: Hashable, now_ns: int) -> bool: ...
    def sweep(self, now_ns: int) -> int: ...

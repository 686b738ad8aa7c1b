# Type stubs for the compiled Data Bus ring (see ring.pxd for the invariants).
from typing import Final

from meltica._core.events import Event

POLICIES: Final[tuple[str, str, str]]
ALL_KINDS: Final[int]

class Cursor:
    policy: int
    kind_mask: int
    markets: frozenset[str] | None
    symbols: frozenset[str] | None
    limit: int
    high_water: int
    low_water: int
    pos: int
    attached: bool
    delivered: int
    dropped: int
    conflated: int
    seen: int
    gaps: int
    read_stamp: int
    gap_from: int
    gap_to: int
    def __init__(
        self,
        policy: int,
        kind_mask: int = ...,
        markets: frozenset[str] | None = None,
        symbols: frozenset[str] | None = None,
        limit: int = 0,
        high_water: int = 0,
        low_water: int = 0,
    ) -> None: ...
    @property
    def pending(self) -> int: ...
    def take_gap(self) -> tuple[int, int] | None: ...

class Ring:
    capacity: int
    head: int
    published: int
    evicted: int
    last_kinds: int
    stamp: int
    cursors: list[Cursor]
    def __init__(self, capacity: int) -> None: ...
    def attach(self, c: Cursor) -> None: ...
    def detach(self, c: Cursor) -> None: ...
    def lag(self, c: Cursor) -> int: ...
    def skip(self, c: Cursor) -> None: ...
    def pressure(self) -> int: ...
    def full_block_cursors(self) -> list[Cursor]: ...
    @property
    def depth(self) -> int: ...
    def publish(self, batch: list[Event]) -> int: ...
    def read(self, c: Cursor, max_n: int) -> list[Event]: ...

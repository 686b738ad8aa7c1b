# Type stubs for the compiled dispatch table (see dispatch.pxd for the invariants).
from collections.abc import Callable, Iterable
from typing import Any, Final

from meltica._core.events import Event

KLINE_INTERVALS: Final[tuple[str, ...]]
ROUTE_KINDS: Final[tuple[str, ...]]
JUMP_BOUNDS: Final[dict[str, int]]

RouteKey = tuple[str, str, str, str | None]

class DispatchTable:
    accepted: int
    unrouted: int
    duplicates: int
    passed: int
    invalid: int
    implausible: int
    holes: int
    holes_dropped: int
    on_holes: Callable[[], object] | None
    def __init__(self) -> None: ...
    def accept(self, batch: list[Any]) -> int: ...
    def update(
        self,
        add: Iterable[tuple[str, str, str, str | None, int, str]] = (),
        remove: Iterable[tuple[str, str, str] | RouteKey] = (),
    ) -> tuple[int, int]: ...
    def get(
        self, market: str, symbol: str, kind: str, qualifier: str | None = None
    ) -> dict[str, Any] | None: ...
    def routes(self) -> list[RouteKey]: ...
    def entries(self) -> list[dict[str, Any]]: ...
    def __len__(self) -> int: ...
    def __contains__(self, key: object) -> bool: ...
    def stats(self) -> dict[str, int]: ...
    def drops(self) -> dict[str, int]: ...
    def take_holes(self) -> list[tuple[str, str, str, int, int]]: ...

def route_key_of(ev: Event) -> RouteKey | None: ...

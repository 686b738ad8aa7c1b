# Type stubs for the compiled Data Bus publish path (see _publish.pyx).
from collections.abc import Callable
from typing import Any

from meltica._core.events import Event
from meltica._core.ring import Cursor, Ring

class Publisher:
    clock: Callable[[], int] | None
    latency: Any
    paused: bool
    wakeups: int
    def __init__(self, bus: Any, ring: Ring, clock: Callable[[], int] | None = None) -> None: ...
    def publish(self, batch: list[Event]) -> None: ...
    def wait(self, consumer: Any, cursor: Cursor, fut: Any) -> None: ...
    def unwait(self, consumer: Any) -> None: ...
    def read(self, cursor: Cursor, max_n: int) -> list[Event]: ...

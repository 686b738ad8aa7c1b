# Type stubs for the compiled per-batch path of the Dispatcher (see _gate.pyx).
from collections.abc import Callable
from typing import Any

from meltica._core.dispatch import DispatchTable

class Gate:
    downstream: Callable[[list[Any]], object]
    event_latency: dict[str, Any] | None
    def __init__(self, table: DispatchTable, downstream: Callable[[list[Any]], object]) -> None: ...
    def on_events(self, batch: list[Any]) -> None: ...

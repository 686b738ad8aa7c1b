# Type stubs for the compiled per-batch path of the Conductor (see _flow.pyx).
from collections.abc import Callable
from typing import Any

from meltica._core.book import BookSet, OrderBook

class Flow:
    downstream: Callable[[list[Any]], None]
    clocks: dict[str, int]
    batches: int
    store_writes: int
    def __init__(
        self,
        conductor: Any,
        books: BookSet,
        downstream: Callable[[list[Any]], None],
        hooks: bool,
        trade_hooks: bool,
        mem: Any = None,
        mem_ttl_ns: int = 0,
        mirror: Callable[[list[Any]], None] | None = None,
        bucket_ns: int = 0,
    ) -> None: ...
    def on_events(self, batch: list[Any]) -> None: ...

def book_ts_event(book: OrderBook) -> int | None: ...

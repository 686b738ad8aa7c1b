# Type stubs for the compiled WebSocket listener (listener.pyx).
import asyncio
from collections.abc import Callable
from typing import Any

from picows import WSFrame, WSListener, WSTransport

from meltica._core.parser import FrameParser

class FrameListener(WSListener):
    parser: FrameParser
    owner: Any
    sink: Callable[[list[Any]], object]
    track_symbols: list[set[str] | None] | None
    max_batch: int
    transport: WSTransport | None
    frames: int
    bytes: int
    data_frames: int
    events: int
    replies: int
    parse_errors: int
    pings: int
    pongs: int
    batches: int
    fragmented: int
    fragmented_refused: int
    last_recv_ns: int
    sample_threshold: int
    tracer: Any
    def __init__(
        self,
        parser: FrameParser,
        owner: Any,
        sink: Callable[[list[Any]], object],
        loop: asyncio.AbstractEventLoop,
    ) -> None: ...
    def on_ws_connected(self, transport: WSTransport) -> None: ...
    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None: ...
    def on_ws_disconnected(self, transport: WSTransport) -> None: ...
    def flush_now(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...

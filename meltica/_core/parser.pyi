# Type stubs for the compiled frame parser.
from typing import Any

from meltica._core.events import BookDepth, Event

SIMD_KERNEL: str  # the simdjson kernel in use: "haswell" or "fallback" on x86-64
SIMD_REASON: str  # why: "auto: the CPU has AVX2", "MELTICA_SIMD=portable", ...

PARSE_REASONS: tuple[str, ...]

def classify_stream(name: str) -> tuple[int, str | None, str | None]: ...

class Route:
    stream: str
    kind: int
    symbol: str | None
    qualifier: str | None
    def __init__(self, stream: str) -> None: ...

class Reply:
    kind: str
    id: Any
    result: Any
    code: int | None
    msg: str | None
    ts_event: int | None
    ts_recv: int

class FrameParser:
    max_frame_bytes: int
    venue: str
    market: str
    time_unit: str
    frames: int
    events: int
    unknown: int
    errors: int
    replies: int
    fast_frames: int
    fast_path: bool
    def __init__(
        self,
        venue: str = "binance",
        market: str = "spot",
        stream: str | None = None,
        time_unit: str = "ms",
        max_frame_bytes: int = 1048576,
        fast_path: bool = True,
    ) -> None: ...
    @property
    def rejects(self) -> dict[str, int]: ...
    @property
    def implementation(self) -> str | None: ...
    def parse(
        self, data: bytes | bytearray | memoryview | str, ts_recv: int = 0
    ) -> list[Event | Reply]: ...
    def parse_into(
        self, data: bytes | bytearray | memoryview | str, ts_recv: int, out: list[Any]
    ) -> int: ...
    def parse_batch(self, frames: list[bytes], ts_recv: int, out: list[Any]) -> int: ...
    def parse_rest_depth(self, data: bytes | str, symbol: str, ts_recv: int = 0) -> BookDepth: ...

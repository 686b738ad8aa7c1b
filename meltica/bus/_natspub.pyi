# Type stubs for the compiled JetStream publish window (see _natspub.pyx).
from typing import Final

from meltica._core.events import Event

ACK_STORED: Final[int]
ACK_DUPLICATE: Final[int]
ACK_ERROR: Final[int]
ACK_UNKNOWN: Final[int]

class FrameWindow:
    capacity: int
    ack_prefix: bytes
    next_seq: int
    head: int
    unacked: int
    published: int
    acked: int
    duplicates: int
    errors: int
    late: int
    republished: int
    traced: int
    trace_first: str | None
    trace_first_seq: int
    trace_last_seq: int
    def __init__(self, capacity: int, ack_prefix: bytes) -> None: ...
    @property
    def room(self) -> int: ...
    @property
    def oldest_sent_ns(self) -> int: ...
    def append(self, events: list[Event], now_ns: int) -> tuple[bytes, int]: ...
    def ack(self, subject: bytes | str, data: bytes, headers: bytes | None = None) -> int: ...
    def frames(self, now_ns: int, limit: int = -1) -> tuple[bytes, int]: ...

class AckReader:
    window: FrameWindow
    sid: int
    fast_acks: int
    def __init__(self, window: FrameWindow, sid: int) -> None: ...
    def reset(self) -> None: ...
    def take_tail(self) -> bytes: ...
    def feed(self, data: bytes) -> bytes: ...

# Type stubs for the compiled latency observer (see _histogram.pyx).
from typing import Any

class Observer:
    @property
    def target(self) -> Any: ...
    def __init__(self, target: Any) -> None: ...

"""The Dispatcher: the authoritative dispatch table and the control plane."""

from meltica.dispatcher.dispatcher import (
    BookTracker,
    Dispatcher,
    InstrumentLookup,
    Subscriber,
    Vocabulary,
)

__all__ = ["BookTracker", "Dispatcher", "InstrumentLookup", "Subscriber", "Vocabulary"]

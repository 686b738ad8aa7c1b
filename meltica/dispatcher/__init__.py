"""The Dispatcher: the authoritative dispatch table and the control plane."""

from meltica.dispatcher.dispatcher import BookTracker, Dispatcher, InstrumentLookup, Subscriber

__all__ = ["BookTracker", "Dispatcher", "InstrumentLookup", "Subscriber"]

"""The Dispatcher: the authoritative dispatch table and the control plane."""

from meltica.dispatcher.dispatcher import BookTracker, Dispatcher, InstrumentLookup, Subscriber
from meltica.dispatcher.messages import ControlError, ControlReply, ControlRequest

__all__ = [
    "BookTracker",
    "ControlError",
    "ControlReply",
    "ControlRequest",
    "Dispatcher",
    "InstrumentLookup",
    "Subscriber",
]

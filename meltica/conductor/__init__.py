"""The Conductor: order books, fused outputs, throttling and analytics hooks."""

from meltica.conductor.analytics import Derived, Hook, load_hook
from meltica.conductor.conductor import Conductor, Instrument, State

__all__ = ["Conductor", "Derived", "Hook", "Instrument", "State", "load_hook"]

"""Buses: the Data Bus (canonical events to many consumers) and the Control Bus."""

from meltica.bus.data import (
    BusError,
    Consumer,
    ConsumerClosed,
    ConsumerOverflow,
    DataBus,
    InMemoryDataBus,
    RingConsumer,
)

__all__ = [
    "BusError",
    "Consumer",
    "ConsumerClosed",
    "ConsumerOverflow",
    "DataBus",
    "InMemoryDataBus",
    "RingConsumer",
]

"""The versioned wire format: events to and from JSON (docs/wire-format.md).

Used wherever events leave the process: JSONL files (``normalize``,
``replay``), broker messages and ``tail``.  Decimals stay strings, never
floats; the JSON Schema is ``meltica/schema/event-v1.schema.json``.  Encoding
and decoding are compiled (``meltica._core.wire``): one call per batch writes
every event straight from its fields into one buffer, and decoding builds the
typed events from simdjson's parse.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from importlib import resources
from typing import Any

from meltica._core import wire as _wire
from meltica._core.events import WIRE_VERSION, Event

__all__ = [
    "WIRE_VERSION",
    "decode",
    "decode_lines",
    "encode",
    "encode_each",
    "encode_lines",
    "schema",
]


def encode(event: Event) -> bytes:
    """One event as a compact JSON object (UTF-8, no trailing newline)."""
    return _wire.encode(event)


def encode_lines(events: Iterable[Event]) -> bytes:
    """Events as JSON lines (each ``encode(event)`` plus a newline), one buffer."""
    return _wire.encode_lines(events)


def encode_each(events: Iterable[Event]) -> tuple[bytes, list[int]]:
    """Events back to back in one buffer, and the offset where each one ends.

    Event ``i`` is ``data[start:ends[i]]`` with ``start`` the previous end (0
    for the first): the bytes ``encode`` gives, for one message per event.
    """
    return _wire.encode_each(events)


def decode(data: bytes | str) -> Event:
    """Rebuild an event from its wire JSON; WireError when it is not one."""
    return _wire.decode(data)


def decode_lines(data: bytes | str) -> list[Event]:
    """Events of JSON lines (blank lines skipped); WireError names the bad line."""
    return _wire.decode_lines(data)


def schema() -> dict[str, Any]:
    """The JSON Schema of wire version 1."""
    text = resources.files("meltica.schema").joinpath("event-v1.schema.json").read_text()
    loaded: dict[str, Any] = json.loads(text)
    return loaded

"""The versioned wire format: events to and from JSON (docs/wire-format.md).

Used wherever events leave the process: JSONL files (``normalize``,
``replay``), broker messages and ``tail``.  Decimals stay strings, never
floats; the JSON Schema is ``meltica/schema/event-v1.schema.json``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from importlib import resources
from typing import Any

from meltica._core.events import WIRE_VERSION, Event, event_from_wire
from meltica.errors import WireError

__all__ = ["WIRE_VERSION", "decode", "encode", "encode_lines", "schema"]

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def encode(event: Event) -> bytes:
    """One event as a compact JSON object (UTF-8, no trailing newline)."""
    return _dumps(event.to_wire()).encode()


def encode_lines(events: Iterable[Event]) -> bytes:
    """Events as JSON lines (each ``encode(event)`` plus a newline), one buffer."""
    return b"".join(_dumps(ev.to_wire()).encode() + b"\n" for ev in events)


def decode(data: bytes | str) -> Event:
    """Rebuild an event from its wire JSON; WireError when it is not one."""
    try:
        obj = json.loads(data)
    except ValueError as exc:
        raise WireError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise WireError("a wire event is a JSON object")
    event: Event = event_from_wire(obj)
    return event


def schema() -> dict[str, Any]:
    """The JSON Schema of wire version 1."""
    text = resources.files("meltica.schema").joinpath("event-v1.schema.json").read_text()
    loaded: dict[str, Any] = json.loads(text)
    return loaded

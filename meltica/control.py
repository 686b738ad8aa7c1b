"""Control-plane messages: ``ControlRequest`` in, ``ControlReply`` out.

Plain frozen dataclasses with a JSON form (``to_dict`` / ``from_dict``), so the
Dispatcher, the in-process Control Bus and the remote transports (NATS
request/reply, the gateway's ``POST /control``) carry the same thing.  A neutral
module: it imports nothing of the pipeline, and everything that speaks the
control plane imports it.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from typing import Any, Final, Literal, cast, get_args

from meltica.errors import MelticaError

__all__ = ["OPS", "ControlError", "ControlReply", "ControlRequest", "Op"]

Op = Literal["subscribe", "unsubscribe", "list", "resync", "status", "book"]
OPS: Final[tuple[str, ...]] = get_args(Op)

_ids = itertools.count(1)
_PREFIX: Final = f"{os.getpid():x}"


def _new_id() -> str:
    return f"{_PREFIX}-{next(_ids)}"


class ControlError(MelticaError, ValueError):
    """A control message that is not well formed (unknown op, wrong field types)."""

    reason = "control"


def _str_tuple(d: dict[str, Any], name: str) -> tuple[str, ...]:
    value = d.get(name, ())
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ControlError(f"control field {name!r} must be a list of strings, got {value!r}")
    if not all(isinstance(v, str) for v in value):
        raise ControlError(f"control field {name!r} must be a list of strings, got {value!r}")
    return tuple(value)


def _opt_str(d: dict[str, Any], name: str) -> str | None:
    value = d.get(name)
    if value is not None and not isinstance(value, str):
        raise ControlError(f"control field {name!r} must be a string, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class ControlRequest:
    """One control-plane command.

    ``market``, ``symbols`` and ``channels`` are what ``subscribe`` / ``unsubscribe``
    act on (every symbol x every channel); ``list``, ``status`` and ``resync`` use the
    ones they need; ``book`` reads the book of one symbol, cut to ``depth`` levels a
    side (None: all it keeps).  ``request_id`` ties the reply to the request.
    """

    op: Op
    market: str | None = None
    symbols: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()
    request_id: str = field(default_factory=_new_id)
    depth: int | None = None

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ControlError(f"unknown control op {self.op!r} (known: {', '.join(OPS)})")
        # lists from callers become tuples, so requests stay hashable and immutable
        object.__setattr__(self, "symbols", tuple(self.symbols))
        object.__setattr__(self, "channels", tuple(self.channels))
        if self.depth is not None and (type(self.depth) is not int or self.depth < 1):
            raise ControlError(f"control field 'depth' must be an integer >= 1, got {self.depth!r}")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "op": self.op,
            "market": self.market,
            "symbols": list(self.symbols),
            "channels": list(self.channels),
            "request_id": self.request_id,
        }
        if self.depth is not None:
            d["depth"] = self.depth
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ControlRequest:
        """Rebuild a request from its JSON form; ControlError if it is not one."""
        if not isinstance(d, dict):
            raise ControlError(f"control request must be an object, got {type(d).__name__}")
        unknown = set(d) - {"op", "market", "symbols", "channels", "request_id", "depth"}
        if unknown:
            raise ControlError(f"unknown control request field(s): {', '.join(sorted(unknown))}")
        op = d.get("op")
        if op not in OPS:
            raise ControlError(f"unknown control op {op!r} (known: {', '.join(OPS)})")
        request_id = _opt_str(d, "request_id")
        return cls(
            op=cast(Op, op),
            market=_opt_str(d, "market"),
            symbols=_str_tuple(d, "symbols"),
            channels=_str_tuple(d, "channels"),
            request_id=request_id if request_id is not None else _new_id(),
            depth=d.get("depth"),
        )


@dataclass(frozen=True, slots=True)
class ControlReply:
    """The answer to one request.

    ``propagation_ns``: request accepted -> exchange acked and table updated (None for
    requests that change nothing at the exchange).  ``result`` is JSON-safe.
    """

    request_id: str
    ok: bool
    error: str | None = None
    result: dict[str, Any] = field(default_factory=dict)
    propagation_ns: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "ok": self.ok,
            "error": self.error,
            "result": self.result,
            "propagation_ns": self.propagation_ns,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ControlReply:
        """Rebuild a reply from its JSON form; ControlError if it is not one."""
        if not isinstance(d, dict):
            raise ControlError(f"control reply must be an object, got {type(d).__name__}")
        request_id, ok = d.get("request_id"), d.get("ok")
        if not isinstance(request_id, str) or type(ok) is not bool:
            raise ControlError("control reply needs a string 'request_id' and a boolean 'ok'")
        result = d.get("result") or {}
        if not isinstance(result, dict):
            raise ControlError(f"control reply 'result' must be an object, got {result!r}")
        prop = d.get("propagation_ns")
        if prop is not None and type(prop) is not int:
            raise ControlError(f"control reply 'propagation_ns' must be an int, got {prop!r}")
        return cls(request_id, ok, _opt_str(d, "error"), result, prop)

    @classmethod
    def failure(cls, request: ControlRequest, error: str) -> ControlReply:
        return cls(request.request_id, False, error)

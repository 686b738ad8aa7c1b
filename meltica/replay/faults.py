"""Scripted faults for the fake exchange (docs/fake-exchange.md, "Faults").

A fault is data: what goes wrong, where (market, connection, symbol) and
when (after N frames, or after N seconds).  The WebSocket and REST servers
consult the plan; tests and the CLI build it from compact strings such as
``drop:symbol=BTCUSDT,at_frame=100,count=5``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

WS_KINDS = frozenset(
    {
        "close",
        "abort",
        "stall",
        "drop",
        "duplicate",
        "reorder",
        "shutdown",
        "malformed",
        "truncated",
        "oversized",
        "unknown_event",
        "phantom",
    }
)
REST_KINDS = frozenset({"rest_status", "rest_timeout", "rest_slow", "rest_stale"})
KINDS = WS_KINDS | REST_KINDS

_INT_FIELDS = ("connection", "at_frame", "count", "code", "retry_after")
_FLOAT_FIELDS = ("at_s", "delay_s")
_STR_FIELDS = ("market", "symbol", "stream")


@dataclass(frozen=True, slots=True)
class Fault:
    """One scripted misbehaviour.  Unset fields mean "any" / the default."""

    kind: str
    market: str | None = None
    connection: int | None = None  # 0-based, in order of connect; None = every connection
    symbol: str | None = None  # upper case
    at_frame: int | None = None  # after this many frames (on the connection / of the symbol)
    at_s: float | None = None  # after this many seconds (since connect / server start)
    count: int = 1
    code: int | None = None  # close code or HTTP status
    delay_s: float | None = None
    retry_after: int | None = None
    # drop: the stream kind whose frames are skipped ("trade", "aggTrade", ...: the
    # stream name's part after "@"); None = depth events
    stream: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r} (one of {sorted(KINDS)})")
        if self.count < 1:
            raise ValueError(f"fault {self.kind}: count must be >= 1")
        if self.symbol is not None and self.symbol != self.symbol.upper():
            object.__setattr__(self, "symbol", self.symbol.upper())

    @property
    def is_rest(self) -> bool:
        return self.kind in REST_KINDS

    @classmethod
    def parse(cls, text: str) -> Fault:
        """``kind[:key=value,...]`` -> Fault; ValueError naming the bad part."""
        kind, _, rest = text.strip().partition(":")
        values: dict[str, object] = {}
        for part in filter(None, (p.strip() for p in rest.split(","))):
            key, sep, raw = part.partition("=")
            if not sep:
                raise ValueError(f"fault {text!r}: expected key=value, got {part!r}")
            try:
                if key in _INT_FIELDS:
                    values[key] = int(raw)
                elif key in _FLOAT_FIELDS:
                    values[key] = float(raw)
                elif key in _STR_FIELDS:
                    values[key] = raw
                else:
                    raise ValueError(f"fault {text!r}: unknown key {key!r}")
            except ValueError as exc:
                if "unknown key" in str(exc):
                    raise
                raise ValueError(f"fault {text!r}: {key}={raw!r} is not a number") from None
        return cls(kind=kind, **values)  # type: ignore[arg-type]

    def __str__(self) -> str:
        parts = [
            f"{f.name}={getattr(self, f.name)}"
            for f in dataclasses.fields(self)
            if f.name != "kind" and getattr(self, f.name) != f.default
        ]
        return f"{self.kind}:{','.join(parts)}" if parts else self.kind


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """All scripted faults of one fake-exchange run."""

    faults: tuple[Fault, ...] = ()

    @classmethod
    def parse(cls, texts: Iterable[str]) -> FaultPlan:
        return cls(tuple(Fault.parse(t) for t in texts))

    def ws(self, market: str) -> tuple[Fault, ...]:
        """WebSocket faults for a market (those with no market apply everywhere)."""
        return tuple(f for f in self.faults if not f.is_rest and f.market in (None, market))

    def rest(self, market: str | None = None) -> tuple[Fault, ...]:
        return tuple(
            f for f in self.faults if f.is_rest and (market is None or f.market in (None, market))
        )

"""Analytics hooks: small plug-ins fed by the Conductor's fused outputs.

A hook sees the events it asks for (``kinds``: ``"book"`` = fused top-N
``book_snapshot``, ``"bbo"`` = fused best bid/offer, ``"trade"``,
``"agg_trade"``) and may return ``Derived`` events (canonical bus events of
kind ``derived``, best made with ``derive``), which the Conductor adds to the
batch it publishes.  Hooks are registered as objects or by import path
``"package.module:Name"`` (a class is instantiated with no arguments; a plain
function becomes a hook on ``book`` and ``bbo``).  A hook that raises or
returns anything but an iterable of ``Derived`` is counted per hook and
reason, its output of that call is dropped, and every other event is
published as usual.  See docs/conductor.md.
"""

from __future__ import annotations

import importlib
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal, localcontext
from typing import Any, Protocol, runtime_checkable

from meltica._core.events import BookDepth, Derived, Event, Fixed, Trade
from meltica.errors import AnalyticsError

__all__ = [
    "BUILTINS",
    "HOOK_KINDS",
    "Derived",
    "Hook",
    "Imbalance",
    "Microprice",
    "Mid",
    "Spread",
    "TradeVwap",
    "derive",
    "load_hook",
]

HOOK_KINDS = frozenset({"book", "bbo", "trade", "agg_trade"})
# significant digits for values that are not exact (ratios, microprice, VWAP)
PRECISION = 28


@runtime_checkable
class Hook(Protocol):
    """What the Conductor calls: ``on_event`` for each event of ``kinds``.

    ``on_event`` returns None or an iterable of ``Derived``; anything else, or
    an exception, drops that call's output and is counted against ``name``.
    """

    name: str
    kinds: frozenset[str]

    def on_event(self, event: Event) -> Iterable[Derived] | None: ...


class _FunctionHook:
    """A plain function ``fn(event) -> Iterable[Derived] | None`` as a hook."""

    def __init__(self, fn: Callable[[Event], Iterable[Derived] | None], name: str) -> None:
        self.fn = fn
        self.name = name
        self.kinds = frozenset({"book", "bbo"})

    def on_event(self, event: Event) -> Iterable[Derived] | None:
        return self.fn(event)


def load_hook(spec: str | object) -> Hook:
    """A hook from an object or a ``"package.module:Name"`` import path."""
    obj: Any = spec
    name = None
    if isinstance(spec, str):
        mod_name, sep, attr = spec.partition(":")
        if not sep or not mod_name or not attr:
            raise ValueError(f"analytics hook {spec!r} is not 'package.module:Name'")
        obj = getattr(importlib.import_module(mod_name), attr)
        name = spec
        if isinstance(obj, type):
            obj = obj()
    if not hasattr(obj, "on_event"):
        if not callable(obj):
            raise TypeError(f"analytics hook {spec!r} is neither a hook nor a callable")
        obj = _FunctionHook(obj, str(name or getattr(obj, "__name__", "hook")))
    kinds = getattr(obj, "kinds", None)
    if not isinstance(kinds, frozenset) or not kinds or not kinds <= HOOK_KINDS:
        raise ValueError(
            f"analytics hook {spec!r}: kinds must be a non-empty subset of {sorted(HOOK_KINDS)}"
        )
    if not isinstance(getattr(obj, "name", None), str):
        obj.name = name or type(obj).__name__
    hook: Hook = obj
    return hook


def derive(
    source: Event,
    name: str,
    values: Mapping[str, str | Decimal | int],
    seq: int | None = None,
) -> Derived:
    """A ``Derived`` event computed from `source`: same venue, market,
    symbol, exchange and receive times and trace context; `seq` defaults to
    the source's sequence (book update id, trade id).  AnalyticsError if a
    field is invalid."""
    if seq is None:
        seq = source.seq
        if seq is None:
            raise AnalyticsError(f"derive(): {source!r} has no sequence; pass seq")
    src = source
    d = Derived(src.venue, src.market, src.symbol, name, seq, src.ts_event, src.ts_recv, values)
    d.trace = source.trace  # a sampled source's trace continues in what it produced
    return d


def _top(ev: BookDepth) -> tuple[Fixed, Fixed, Fixed, Fixed] | None:
    bids, asks = ev.bids, ev.asks
    if not bids or not asks:
        return None
    return bids[0][0], bids[0][1], asks[0][0], asks[0][1]


def _dec(x: Decimal) -> str:
    # plain notation (no exponent), trailing zeros of exact results kept
    return format(x, "f")


class Mid:
    """Mid price ``(bid + ask) / 2`` (exact) on every fused BBO."""

    name = "mid"
    kinds = frozenset({"bbo"})

    def on_event(self, event: Event) -> Iterable[Derived] | None:
        assert isinstance(event, BookDepth)
        top = _top(event)
        if top is None:
            return None
        mid = (top[0].decimal + top[2].decimal) / 2
        return [derive(event, self.name, seq=event.update_id, values={"mid": _dec(mid)})]


class Spread:
    """Absolute spread ``ask - bid`` (exact) on every fused BBO."""

    name = "spread"
    kinds = frozenset({"bbo"})

    def on_event(self, event: Event) -> Iterable[Derived] | None:
        assert isinstance(event, BookDepth)
        top = _top(event)
        if top is None:
            return None
        spread = top[2].decimal - top[0].decimal
        return [derive(event, self.name, seq=event.update_id, values={"spread": _dec(spread)})]


class Microprice:
    """Size-weighted mid ``(bid*ask_qty + ask*bid_qty) / (bid_qty + ask_qty)``."""

    name = "microprice"
    kinds = frozenset({"bbo"})

    def on_event(self, event: Event) -> Iterable[Derived] | None:
        assert isinstance(event, BookDepth)
        top = _top(event)
        if top is None:
            return None
        bp, bq, ap, aq = (x.decimal for x in top)
        with localcontext() as ctx:
            ctx.prec = PRECISION
            micro = (bp * aq + ap * bq) / (bq + aq)
        return [derive(event, self.name, seq=event.update_id, values={"microprice": _dec(micro)})]


class Imbalance:
    """Order-book imbalance over the top ``depth`` levels: (B - A) / (B + A) of sizes."""

    name = "imbalance"
    kinds = frozenset({"book"})

    def __init__(self, depth: int = 5) -> None:
        if depth < 1:
            raise ValueError("depth must be >= 1")
        self.depth = depth

    def on_event(self, event: Event) -> Iterable[Derived] | None:
        assert isinstance(event, BookDepth)
        b = sum((q.decimal for _, q in event.bids[: self.depth]), Decimal(0))
        a = sum((q.decimal for _, q in event.asks[: self.depth]), Decimal(0))
        if not a + b:
            return None
        with localcontext() as ctx:
            ctx.prec = PRECISION
            ratio = (b - a) / (b + a)
        values = {"imbalance": _dec(ratio), "bid_qty": _dec(b), "ask_qty": _dec(a)}
        return [derive(event, self.name, seq=event.update_id, values=values)]


class TradeVwap:
    """Volume-weighted average trade price over a sliding window of exchange time."""

    name = "vwap"
    kinds = frozenset({"trade", "agg_trade"})

    def __init__(self, window_s: float = 60.0, max_trades: int = 100_000) -> None:
        if window_s <= 0 or max_trades < 1:
            raise ValueError("window_s must be > 0 and max_trades >= 1")
        self.window_ns = int(window_s * 1e9)
        self.max_trades = max_trades
        # per (market, symbol): trades in the window (bounded) and running sums
        self._win: dict[tuple[str, str], deque[tuple[int, Decimal, Decimal]]] = {}
        self._sums: dict[tuple[str, str], list[Decimal]] = {}

    def on_event(self, event: Event) -> Iterable[Derived] | None:
        assert isinstance(event, Trade)
        k = (event.market, event.symbol)
        win = self._win.setdefault(k, deque())
        sums = self._sums.setdefault(k, [Decimal(0), Decimal(0)])
        t = event.ts_event or event.ts_recv
        p, q = event.price.decimal, event.qty.decimal
        win.append((t, p * q, q))
        sums[0] += p * q
        sums[1] += q
        while win and (win[0][0] <= t - self.window_ns or len(win) > self.max_trades):
            _, pq, qq = win.popleft()
            sums[0] -= pq
            sums[1] -= qq
        if not sums[1]:
            return None
        with localcontext() as ctx:
            ctx.prec = PRECISION
            vwap = sums[0] / sums[1]
        values = {"vwap": _dec(vwap), "volume": _dec(sums[1]), "trades": str(len(win))}
        return [derive(event, self.name, values, seq=event.trade_id)]


# import paths of the built-ins, for config files
BUILTINS = {
    cls.name: f"{__name__}:{cls.__name__}"
    for cls in (Mid, Spread, Microprice, Imbalance, TradeVwap)
}

"""Make-before-break rotation: merge an old and a new connection without loss or duplicates.

During a rotation both connections carry the same streams.  Events are grouped
per stream (symbol, kind and, for klines and tickers, interval or window); each
group is delivered from exactly one connection at a time:

- the old connection keeps delivering a group until the switch; its keys are
  remembered (only during the overlap);
- the new connection's events of a group are buffered until one of them has a
  key the old connection also delivered (the sequences line up); then the group
  switches: the buffered events after the common one go out, the old
  connection's later events of that group are dropped;
- when the old connection goes away first, each group's buffer is delivered
  minus the keys the old one already delivered, and the new connection's events
  keep being checked against those keys until the first one the old connection
  never delivered (``Residual``).

Only the overlap pays the per-event Python cost; outside it the listener hands
batches straight to the sink.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["Overlap", "Residual", "group_of"]

Sink = Callable[[list[Any]], object]


def group_of(ev: Any) -> Hashable:
    """The stream an event belongs to, as far as its key can tell."""
    kind: str = ev.kind
    if kind == "kline":
        return (ev.symbol, kind, ev.interval)
    if kind == "ticker":
        return (ev.symbol, kind, ev.window)
    return (ev.symbol, kind)


class Residual:
    """Drops a group's events whose keys were already delivered, until the first new one.

    ``keys``: group -> keys delivered by the other connection.  A group leaves
    the filter at its first event not in its set; ``done`` once no group is left.
    """

    __slots__ = ("_keys", "_sink", "dropped")

    def __init__(self, keys: dict[Hashable, set[str]], sink: Sink) -> None:
        self._keys = {g: k for g, k in keys.items() if k}
        self._sink = sink
        self.dropped = 0

    @property
    def done(self) -> bool:
        return not self._keys

    def __call__(self, batch: list[Any]) -> None:
        keys = self._keys
        if not keys:
            self._sink(batch)
            return
        out = []
        for ev in batch:
            group = group_of(ev)
            seen = keys.get(group)
            if seen is not None:
                if ev.key in seen:
                    self.dropped += 1
                    continue
                del keys[group]
            out.append(ev)
        if out:
            self._sink(out)


class Overlap:
    """The two sinks of a rotation: ``on_old`` for the old connection, ``on_new`` for the new."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self._old_keys: dict[Hashable, set[str]] = {}  # delivered by old, per unswitched group
        self._new_keys: dict[Hashable, set[str]] = {}  # delivered by new, per switched group
        self._buffer: dict[Hashable, list[tuple[str, Any]]] = {}
        self._buffer_index: dict[Hashable, dict[str, int]] = {}
        self._switched: set[Hashable] = set()
        # switched groups whose new events may still be ones the old connection delivered
        self._residual: dict[Hashable, set[str]] = {}
        self.old_alive = True
        self.switches = 0
        self.dropped = 0  # duplicates not delivered

    # -- state

    def groups_pending(self) -> int:
        """Groups seen during the overlap that have not switched to the new connection."""
        return len((self._old_keys.keys() | self._buffer.keys()) - self._switched)

    def buffered(self) -> int:
        return sum(len(b) for b in self._buffer.values())

    def _switch(self, group: Hashable) -> None:
        self._switched.add(group)
        self._old_keys.pop(group, None)
        self._buffer.pop(group, None)
        self._buffer_index.pop(group, None)
        self.switches += 1

    # -- sinks

    def on_old(self, batch: list[Any]) -> None:
        out: list[Any] = []
        switched = self._switched
        for ev in batch:
            group = group_of(ev)
            if group in switched:
                self.dropped += 1
                continue
            key: str = ev.key
            out.append(ev)
            self._old_keys.setdefault(group, set()).add(key)
            index = self._buffer_index.get(group)
            if index is not None and key in index:
                # the new connection has it too: its later events take over
                later = self._buffer[group][index[key] + 1 :]
                self.dropped += index[key] + 1
                new_keys = self._new_keys.setdefault(group, set())
                for k, e in later:
                    out.append(e)
                    new_keys.add(k)
                self._switch(group)
        if out:
            self._sink(out)

    def on_new(self, batch: list[Any]) -> None:
        out: list[Any] = []
        switched = self._switched
        residual = self._residual
        for ev in batch:
            group = group_of(ev)
            key: str = ev.key
            if group in switched:
                res = residual.get(group)
                if res is not None:
                    if key in res:
                        self.dropped += 1
                        continue
                    del residual[group]
                out.append(ev)
                if self.old_alive:
                    self._new_keys.setdefault(group, set()).add(key)
                continue
            old = self._old_keys.get(group)
            if self.old_alive:
                if old is not None and key in old:
                    # the old connection delivered it, and so everything before it; it may
                    # be ahead: later events it delivered too are dropped (residual)
                    self.dropped += len(self._buffer.get(group, ())) + 1
                    residual[group] = old
                    self._switch(group)
                    continue
                buf = self._buffer.setdefault(group, [])
                self._buffer_index.setdefault(group, {})[key] = len(buf)
                buf.append((key, ev))
            elif old is not None and key in old:
                self.dropped += 1
            else:
                self._switch(group)
                out.append(ev)
        if out:
            self._sink(out)

    # -- endings

    def old_gone(self) -> Residual:
        """The old connection is closed: release the buffers; returns the new one's sink."""
        if not self.old_alive:
            return Residual({**self._old_keys, **self._residual}, self._sink)
        self.old_alive = False
        out: list[Any] = []
        for group, buf in list(self._buffer.items()):
            old = self._old_keys.get(group, set())
            for i, (key, _ev) in enumerate(buf):
                if key not in old:
                    out.extend(e for _, e in buf[i:])
                    self._switch(group)
                    break
                self.dropped += 1
            else:
                self._buffer.pop(group, None)
                self._buffer_index.pop(group, None)
        self._new_keys.clear()
        if out:
            self._sink(out)
        return Residual(
            {g: k for g, k in self._old_keys.items() if g not in self._switched}, self._sink
        )

    def new_gone(self) -> Residual:
        """The new connection failed: the old one keeps everything; returns its sink.

        Groups that had switched resume on the old connection minus the keys the
        new one delivered.
        """
        self._buffer.clear()
        self._buffer_index.clear()
        return Residual(dict(self._new_keys), self._sink)

"""The Data Bus: canonical events from the Conductor to many consumers.

`DataBus` is the interface (the in-memory bus here; meltica/bus/nats.py feeds
NATS JetStream from it);
`InMemoryDataBus` runs on the C ring in ``meltica._core.ring``: one pointer
store per published event, a cursor per consumer, filters applied by the
reading side, and consumers woken once per published batch (never per
event).  Each consumer picks a policy for when it falls behind:

- ``block``: nothing is lost.  At its high-water lag the bus calls
  ``on_pause()`` (the engine connects the WebSocket readers'
  ``pause_reading``), below its low-water lag ``on_resume()``.  Between high
  water and the consumer's capacity is a reserve for frames already read.
  If even that fills, the consumer is failed (`ConsumerOverflow`) rather than
  lose events silently or grow without bound; the others keep running.
- ``drop_oldest``: the oldest unread events are dropped, counted exactly, and
  a ``gap`` Control event precedes the next events delivered.
- ``conflate``: when behind, only the latest event per (market, symbol, kind,
  interval/window/source) is delivered; memory is bounded by the number of
  keys.

The bus does not deduplicate: the Dispatcher drops duplicates by key upstream,
and the bus delivers each published event at most once per consumer, in
publish order (see docs/bus.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Protocol, runtime_checkable

from meltica._core.events import KIND_IDS, Control, Event
from meltica._core.ring import ALL_KINDS, POLICIES, Cursor, Ring
from meltica.bus._publish import Publisher
from meltica.errors import MelticaError

__all__ = [
    "BusError",
    "Consumer",
    "ConsumerClosed",
    "ConsumerOverflow",
    "DataBus",
    "InMemoryDataBus",
    "RingConsumer",
]

log = logging.getLogger("meltica.bus")

GAP_REASON = "slow_consumer"


class LatencyObserver(Protocol):
    """Where the bus reports publish latency (``meltica.telemetry.metrics.Histogram``)."""

    def observe(self, seconds: float, count: int = 1) -> None: ...


_GROUP_COUNTERS = ("delivered", "dropped", "conflated", "gaps", "wakeups")


class BusError(MelticaError):
    """A Data Bus consumer cannot be served."""

    reason = "bus"


class ConsumerClosed(BusError):
    """The consumer was closed (by itself or by the bus)."""

    reason = "consumer_closed"


class ConsumerOverflow(BusError, BufferError):
    """A ``block`` consumer fell so far behind that even the reserve above its
    high-water mark filled; it was detached so the bus stays bounded."""

    reason = "consumer_overflow"


@runtime_checkable
class Consumer(Protocol):
    """One subscriber's view of the bus."""

    name: str

    async def next_batch(self, max_n: int | None = None) -> list[Event]:
        """Events in publish order; waits until there is at least one."""
        ...

    def poll(self, max_n: int | None = None) -> list[Event]:
        """Events available now, possibly none; never waits."""
        ...

    def close(self) -> None: ...

    def stats(self) -> dict[str, int]: ...

    def __aiter__(self) -> AsyncIterator[list[Event]]: ...


@runtime_checkable
class DataBus(Protocol):
    """Publish batches of canonical events; subscribe filtered consumers."""

    def publish_batch(self, batch: list[Event]) -> None: ...

    def subscribe(
        self,
        name: str,
        *,
        kinds: Iterable[str] | None = None,
        markets: Iterable[str] | None = None,
        symbols: Iterable[str] | None = None,
        policy: str | None = None,
        capacity: int | None = None,
        group: str | None = None,
    ) -> Consumer: ...

    def stats(self) -> dict[str, int]: ...

    def close(self) -> None: ...


def _kind_mask(kinds: Iterable[str] | None) -> int:
    if kinds is None:
        return ALL_KINDS
    mask = 0
    for k in kinds:
        kind_id = KIND_IDS.get(k)
        if kind_id is None:
            raise ValueError(f"unknown event kind {k!r}")
        mask |= 1 << kind_id
    if not mask:
        raise ValueError("kinds must name at least one kind (or be None for all)")
    return mask


class RingConsumer:
    """A consumer of `InMemoryDataBus` (made by `InMemoryDataBus.subscribe`)."""

    def __init__(
        self,
        bus: InMemoryDataBus,
        name: str,
        cursor: Cursor,
        batch_size: int,
        group: str | None = None,
        delivery: LatencyObserver | None = None,
    ) -> None:
        self.name = name
        # metrics aggregate consumers by group (every /tail stream is group "tail")
        self.group = name if group is None else group
        self.delivery = delivery
        self.policy = POLICIES[cursor.policy]
        self.batch_size = batch_size
        self.wakeups = 0
        self._bus = bus
        self._cursor = cursor
        self._waiter: asyncio.Future[None] | None = None
        self._error: BusError | None = None

    # reading

    def poll(self, max_n: int | None = None) -> list[Event]:
        """Up to `max_n` (default: the bus batch size) events available now.

        For ``drop_oldest``, a ``gap`` Control event comes first when events
        were dropped since the last read (it counts towards `max_n`); its
        ``from_seq``/``to_seq`` are the ordinals (1-based, counting every
        event this consumer matched) of the first and last event lost, so
        ``to_seq - from_seq + 1`` events are missing.
        """
        if self._error is not None:
            raise self._error
        n = self.batch_size if max_n is None else max_n
        cursor = self._cursor
        gap = cursor.take_gap() if cursor.gap_from else None
        if gap is None:
            out = self._bus._pub.read(cursor, n)
        else:
            marker = Control(
                "gap",
                venue="meltica",
                market="",
                symbol="",
                seq=cursor.gaps,
                ts_recv=self._bus.clock(),
                reason=GAP_REASON,
                from_seq=gap[0],
                to_seq=gap[1],
            )
            out = [marker, *self._bus._pub.read(cursor, n - 1)]
        if self.delivery is not None and cursor.read_stamp:
            self._observe(cursor.read_stamp)
        return out

    def _observe(self, stamp: int) -> None:
        """Publish -> delivery latency of a read: its first event's publish stamp."""
        d = self._bus._clock() - stamp
        self.delivery.observe(d / 1e9 if d > 0 else 0.0)  # type: ignore[union-attr]

    async def next_batch(self, max_n: int | None = None) -> list[Event]:
        """Events in publish order, waiting until at least one is there.

        Raises `ConsumerClosed` once closed, `ConsumerOverflow` if failed.
        """
        if max_n is not None and max_n < 1:
            raise ValueError(f"max_n must be >= 1, got {max_n}")
        n = self.batch_size if max_n is None else max_n
        cursor, pub = self._cursor, self._bus._pub
        while True:
            if self._error is None and not cursor.gap_from:
                out = pub.read(cursor, n)  # poll() when it has nothing rare to do
                if out and self.delivery is not None and cursor.read_stamp:
                    self._observe(cursor.read_stamp)
            else:
                out = self.poll(max_n)
            if out:
                return out
            fut = asyncio.get_running_loop().create_future()
            self._waiter = fut
            pub.wait(self, cursor, fut)
            try:
                await fut
            finally:
                self._waiter = None
                pub.unwait(self)

    def __aiter__(self) -> AsyncIterator[list[Event]]:
        return self._batches()

    async def _batches(self) -> AsyncIterator[list[Event]]:
        while True:
            try:
                batch = await self.next_batch()
            except ConsumerClosed:
                return
            yield batch

    def close(self) -> None:
        """Detach from the bus (idempotent); a waiting `next_batch` raises
        `ConsumerClosed`."""
        self._fail(ConsumerClosed(f"consumer {self.name!r} is closed"))

    def _fail(self, error: BusError) -> None:
        if self._error is not None:
            return
        self._error = error
        self._bus._detach(self)
        self._wake()

    def _wake(self) -> None:
        fut = self._waiter
        if fut is not None and not fut.done():
            fut.set_result(None)

    # counters

    @property
    def closed(self) -> bool:
        return self._error is not None

    @property
    def delivered(self) -> int:
        return self._cursor.delivered

    @property
    def dropped(self) -> int:
        """Matching events lost (``drop_oldest``)."""
        return self._cursor.dropped

    @property
    def conflated(self) -> int:
        """Matching events superseded by a later one of the same key (``conflate``)."""
        return self._cursor.conflated

    @property
    def lag(self) -> int:
        """Ring positions not read yet (all kinds), plus events held by conflation."""
        if not self._cursor.attached:
            return 0
        return self._bus._ring.lag(self._cursor)

    def stats(self) -> dict[str, int]:
        c = self._cursor
        return {
            "delivered": c.delivered,
            "dropped": c.dropped,
            "conflated": c.conflated,
            "gaps": c.gaps,
            "lag": self.lag,
            "capacity": c.limit,
            "wakeups": self.wakeups,
            "failed": int(isinstance(self._error, ConsumerOverflow)),
        }

    def __repr__(self) -> str:
        return f"<RingConsumer {self.name!r} {self.policy} lag={self.lag}>"


class InMemoryDataBus:
    """The in-process Data Bus on a C ring of `capacity` events.

    `capacity` (a power of two) bounds the bus's memory: the ring holds at
    most that many event references.  `policy` is the default consumer
    policy and `batch_size` the default `max_n` of a read.  `on_pause` /
    `on_resume` are called when ``block`` consumers need the readers paused /
    resumed (settable later, e.g. by the engine).  `clock` gives the
    ``ts_recv`` (ns, wall clock) of gap markers.  `latency`, when set (the
    engine sets it), observes per batch the seconds from the ``ts_recv`` of
    its first event to its publication.
    """

    def __init__(
        self,
        capacity: int = 1 << 16,
        *,
        policy: str = "block",
        batch_size: int = 256,
        on_pause: Callable[[], None] | None = None,
        on_resume: Callable[[], None] | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._ring = Ring(capacity)
        self._pub = Publisher(self, self._ring)
        # the compiled per-batch path: a bound C method, no Python frame per batch
        self.publish_batch: Callable[[list[Event]], None] = self._pub.publish
        self.capacity = capacity
        self.policy = policy
        self.batch_size = batch_size
        self.on_pause = on_pause
        self.on_resume = on_resume
        self.clock = clock
        self.pauses = 0
        self.resumes = 0
        self.overflows = 0
        self._consumers: dict[str, RingConsumer] = {}
        # `delivery_latency(group)`, when set (the engine sets it), gives the
        # observer of the publish -> delivery latency of that consumer group
        self.delivery_latency: Callable[[str], LatencyObserver] | None = None
        # counters of the consumers that left, per group (group counters stay monotonic)
        self._gone: dict[str, dict[str, int]] = {}

    @property
    def clock(self) -> Callable[[], int]:
        return self._clock

    @clock.setter
    def clock(self, clock: Callable[[], int]) -> None:
        self._clock = clock
        # the publisher reads CLOCK_REALTIME itself unless another clock is given
        self._pub.clock = None if clock is time.time_ns else clock

    @property
    def latency(self) -> LatencyObserver | None:
        """Where per-batch publish latency goes (None: not observed)."""
        return self._pub.latency  # type: ignore[no-any-return]

    @latency.setter
    def latency(self, observer: LatencyObserver | None) -> None:
        self._pub.latency = observer

    @property
    def paused(self) -> bool:
        """A ``block`` consumer has the readers paused."""
        return bool(self._pub.paused)

    @property
    def wakeups(self) -> int:
        """Waiting consumers woken by a publish."""
        return int(self._pub.wakeups)

    # publishing

    def _overflow(self) -> int:
        failed = 0
        for cursor in self._ring.full_block_cursors():
            for consumer in list(self._consumers.values()):
                if consumer._cursor is cursor:
                    self.overflows += 1
                    failed += 1
                    log.error(
                        "block consumer %r overflowed its reserve (lag %d); detached",
                        consumer.name,
                        cursor.limit,
                    )
                    consumer._fail(
                        ConsumerOverflow(
                            f"block consumer {consumer.name!r} lagged {cursor.limit} events "
                            "(its capacity) although the readers were paused"
                        )
                    )
        return failed

    def _set_paused(self, paused: bool) -> None:
        self._pub.paused = paused
        if paused:
            self.pauses += 1
            callback = self.on_pause
        else:
            self.resumes += 1
            callback = self.on_resume
        if callback is not None:
            try:
                callback()
            except Exception:
                log.exception("bus %s callback failed", "pause" if paused else "resume")

    # consumers

    def subscribe(
        self,
        name: str,
        *,
        kinds: Iterable[str] | None = None,
        markets: Iterable[str] | None = None,
        symbols: Iterable[str] | None = None,
        policy: str | None = None,
        capacity: int | None = None,
        group: str | None = None,
    ) -> RingConsumer:
        """A new consumer that sees events published from now on.

        `group` names the consumer in metrics (default: `name`); consumers of
        one group share their series, so many short-lived consumers (``/tail``
        streams) do not make a series each.

        `kinds`, `markets`, `symbols` filter (None: all; symbols are compared
        upper case).  `capacity` is how many ring positions it may lag
        (default and maximum: the ring's capacity); a ``block`` consumer
        pauses the readers at 3/4 of it and resumes them at 1/4.
        """
        if name in self._consumers:
            raise ValueError(f"a consumer named {name!r} is already subscribed")
        policy = self.policy if policy is None else policy
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        limit = self.capacity if capacity is None else capacity
        if not 1 <= limit <= self.capacity:
            raise ValueError(f"capacity must be in 1..{self.capacity}, got {limit}")
        # Pause the readers at half the capacity: the other half is the reserve for
        # what was already read when the pause took effect (picows parses a whole
        # socket read, which can hold thousands of frames); resume at an eighth.
        high = max(1, limit // 2)
        low = min(high - 1, limit // 8)
        cursor = Cursor(
            POLICIES.index(policy),
            _kind_mask(kinds),
            None if markets is None else frozenset(markets),
            None if symbols is None else frozenset(s.upper() for s in symbols),
            limit,
            high,
            low,
        )
        self._ring.attach(cursor)
        group = name if group is None else group
        delivery = None if self.delivery_latency is None else self.delivery_latency(group)
        consumer = RingConsumer(self, name, cursor, self.batch_size, group, delivery)
        self._consumers[name] = consumer
        return consumer

    def group_stats(self) -> dict[str, dict[str, int]]:
        """Per consumer group: members attached, counters (of members past and
        present: delivered, dropped, conflated, gaps, wakeups), and the largest
        lag and capacity of the members attached."""
        out: dict[str, dict[str, int]] = {
            g: {"members": 0, **gone, "lag": 0, "capacity": 0} for g, gone in self._gone.items()
        }
        for consumer in self._consumers.values():
            st = consumer.stats()
            g = out.setdefault(
                consumer.group,
                {"members": 0, **dict.fromkeys(_GROUP_COUNTERS, 0), "lag": 0, "capacity": 0},
            )
            g["members"] += 1
            for key in _GROUP_COUNTERS:
                g[key] += st[key]
            g["lag"] = max(g["lag"], st["lag"])
            g["capacity"] = max(g["capacity"], st["capacity"])
        return out

    def consumers(self) -> list[RingConsumer]:
        return list(self._consumers.values())

    def _detach(self, consumer: RingConsumer) -> None:
        st = consumer.stats()
        gone = self._gone.setdefault(consumer.group, dict.fromkeys(_GROUP_COUNTERS, 0))
        for key in _GROUP_COUNTERS:
            gone[key] += st[key]
        self._ring.detach(consumer._cursor)
        self._pub.unwait(consumer)
        if self._consumers.get(consumer.name) is consumer:
            del self._consumers[consumer.name]
        if self.paused and self._ring.pressure() == 0:
            self._set_paused(False)

    def close(self) -> None:
        """Close every consumer (idempotent)."""
        for consumer in list(self._consumers.values()):
            consumer.close()

    # counters

    @property
    def published(self) -> int:
        return self._ring.published

    @property
    def depth(self) -> int:
        """Unread positions of the slowest consumer."""
        return self._ring.depth

    def stats(self) -> dict[str, int]:
        ring = self._ring
        return {
            "capacity": self.capacity,
            "published": ring.published,
            "depth": ring.depth,
            "evicted": ring.evicted,
            "consumers": len(self._consumers),
            "paused": int(self.paused),
            "pauses": self.pauses,
            "resumes": self.resumes,
            "overflows": self.overflows,
            "wakeups": self.wakeups,
        }

"""The consumer client: Meltica's events from a NATS JetStream stream, typed.

A gateway with ``bus.backend: nats`` publishes one message per event on
``meltica.<venue>.<market>.<kind>.<SYMBOL>`` into the stream ``MELTICA``
(docs/nats.md, docs/client.md).  This module reads them back in another
process::

    async with connect("nats://127.0.0.1:4222") as c:
        async for ev in c.subscribe(kind="trade", symbol="BTCUSDT", start="all"):
            ...

Each subscription is a JetStream pull consumer; payloads are decoded by the
compiled wire decoder (``meltica.wire``) into the same event classes the
gateway publishes.  With a ``durable`` name the server remembers how far the
consumer got: an event is acknowledged when the iterator is asked for the
next one (or when the subscription closes cleanly), and a restarted consumer
resumes right after the last event the previous one handed out.

Tracing: a message with a ``traceparent`` header (an event of a batch the
gateway sampled) gets a consumer span, ``meltica.consume``, from the moment
it is handed out until the next event is asked for (or the subscription
closes).  The span is a child of the gateway's batch span and carries a
link to it, so one trace runs from the exchange's frame to this process.
Spans go to the global OpenTelemetry tracer provider, or the one given to
`connect`; with none configured they cost next to nothing and go nowhere.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections import deque
from collections.abc import Generator, Iterable, Mapping
from typing import Any, Final, Literal

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import api
from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind, TracerProvider

from meltica import log, wire
from meltica._core.events import KIND_NAMES, MARKETS, VENUES, Event
from meltica.broker import BrokerError, subject_filter
from meltica.broker import connect as broker_connect
from meltica.config import Config, NatsConfig, load_config
from meltica.errors import ConfigError, MessageDecodeError, WireError
from meltica.telemetry.spans import parse_traceparent

__all__ = ["Client", "Start", "Subscription", "connect"]

Start = Literal["new", "all"] | int | dt.datetime
OnError = Literal["skip", "raise"]

KINDS: Final = tuple(k for k in KIND_NAMES if k)
# how long one pull request waits on the server for messages before it is renewed
_PULL_WAIT_S: Final = 5.0
# an ephemeral consumer whose client vanished without deleting it is removed after this
_EPHEMERAL_IDLE_S: Final = 60.0


def connect(
    url_or_config: str | NatsConfig | Config | None = None,
    /,
    *,
    name: str = "meltica-client",
    tracer_provider: TracerProvider | None = None,
    **nats_options: Any,
) -> Client:
    """A `Client` for NATS: ``async with connect(...) as c`` (or ``c = await connect(...)``
    and ``await c.close()``).

    ``url_or_config`` is a URL (``nats://host:port``, ``tls://...``; default
    ``nats://127.0.0.1:4222``), a ``NatsConfig`` or a whole ``Config`` (its
    ``nats`` section).  ``nats_options`` are keys of the ``nats`` config
    section (``user``, ``password``, ``token``, ``creds_file``, ``servers``,
    ``tls_ca_file``, ``connect_timeout_s``, ``stream``, ...), checked here as
    the config file would be: a bad one is a ConfigError naming
    ``nats.<key>``.  The environment is not read.  Connecting (on ``await`` or
    ``async with``) to a server that cannot be reached or refuses the
    credentials is a BrokerError naming the key, as for the gateway.
    ``tracer_provider``: where consumer spans go (default: the global one).
    """
    return Client(
        _nats_config(url_or_config, nats_options), name=name, tracer_provider=tracer_provider
    )


def _nats_config(
    source: str | NatsConfig | Config | None, options: Mapping[str, Any]
) -> NatsConfig:
    if isinstance(source, Config):
        source = source.nats
    if isinstance(source, NatsConfig):
        if not options:
            return source
        from meltica.config import config_to_dict

        base = config_to_dict(Config(nats=source))["nats"]
        return load_config(env={}, nats={**base, **options}).nats
    section = dict(options)
    if source is not None:
        section["url"] = source
    return load_config(env={}, nats=section).nats


class Client:
    """One NATS connection and the subscriptions made through it.

    `close` (or leaving ``async with``) closes every subscription cleanly
    (acknowledging what durable ones handed out), then the connection.
    """

    def __init__(
        self,
        cfg: NatsConfig,
        *,
        name: str = "meltica-client",
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self.config = cfg
        self.name = name
        self.tracer = trace.get_tracer("meltica.client", tracer_provider=tracer_provider)
        self.nats: NatsClient | None = None
        self._js: Any = None
        self._subs: list[Subscription] = []

    async def open(self) -> Client:
        """Connect (idempotent); BrokerError naming the config key when that fails."""
        if self.nats is None:
            self.nats = await broker_connect(self.config, name=self.name)
            self._js = self.nats.jetstream()
        return self

    @property
    def js(self) -> Any:
        """The connection's JetStream context (after `open`)."""
        if self._js is None:
            raise BrokerError(
                "not connected: use `async with connect(...)` or `await connect(...)`"
            )
        return self._js

    def __await__(self) -> Generator[Any, None, Client]:
        return self.open().__await__()

    async def __aenter__(self) -> Client:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def subscribe(
        self,
        *,
        venue: str = "binance",
        market: str | Iterable[str] | None = None,
        kind: str | Iterable[str] | None = None,
        symbol: str | Iterable[str] | None = None,
        start: Start = "new",
        durable: str | None = None,
        stream: str | None = None,
        batch: int = 256,
        on_error: OnError = "skip",
    ) -> Subscription:
        """Events of ``stream`` (default: the config's ``nats.stream``, MELTICA).

        ``market``, ``kind``, ``symbol``: one value, several, or None for all.
        One value of each becomes the consumer's subject filter on the server;
        with several values the filter has ``*`` there and this client drops
        the others.  ``start``: ``"new"`` (events published from now on),
        ``"all"`` (everything the stream still holds), a stream sequence
        number (``int`` >= 1) or a timezone-aware ``datetime``.

        ``durable``: a consumer name the server remembers.  When it exists
        already, the subscription resumes where it stopped and ``start`` is
        ignored; its filters must be the same as when it was made.  Without
        it the consumer is ephemeral (deleted on close).

        ``on_error``: what a message that is not a valid wire event does;
        ``"skip"`` counts it (``stats()["decode_errors"]``) and logs a
        warning, ``"raise"`` also raises `MessageDecodeError` from the
        iterator, which stays usable (iterate again to go on).  Either way
        the message counts as consumed.

        The consumer is made on the server when iteration starts (or on
        ``async with``).
        """
        if venue not in VENUES:
            raise ConfigError(
                f"subscribe(venue=): expected one of {', '.join(VENUES)}, got {venue!r}"
            )
        if durable is not None and not _is_token(durable):
            raise ConfigError(f"subscribe(durable=): {durable!r} is not a consumer name")
        if not 1 <= batch <= 100_000:
            raise ConfigError(f"subscribe(batch=): must be in [1, 100000], got {batch}")
        if on_error not in ("skip", "raise"):
            raise ConfigError(f"subscribe(on_error=): expected 'skip' or 'raise', got {on_error!r}")
        sub = Subscription(
            self,
            venue=venue,
            markets=_values("market", market, MARKETS),
            kinds=_values("kind", kind, KINDS),
            symbols=_values("symbol", symbol, None),
            start=_check_start(start),
            durable=durable,
            stream=stream or self.config.stream,
            batch=batch,
            on_error=on_error,
        )
        self._subs.append(sub)
        return sub

    async def close(self) -> None:
        """Close the subscriptions, then the connection (idempotent)."""
        for sub in list(self._subs):
            await sub.close()
        if self.nats is not None and not self.nats.is_closed:
            await self.nats.close()


def _values(
    name: str, value: str | Iterable[str] | None, allowed: tuple[str, ...] | None
) -> tuple[str, ...]:
    if value is None:
        return ()
    values = (value,) if isinstance(value, str) else tuple(value)
    if name == "symbol":
        values = tuple(v.upper() for v in values)
    for v in values:
        if allowed is not None and v not in allowed:
            raise ConfigError(
                f"subscribe({name}=): expected one of {', '.join(allowed)}, got {v!r}"
            )
        if not _is_token(v):
            raise ConfigError(f"subscribe({name}=): {v!r} is not a subject token")
    return values


def _is_token(text: str) -> bool:
    return bool(text) and not any(c in text for c in ".*> \t\r\n")


def _check_start(start: Start) -> Start:
    if start in ("new", "all"):
        return start
    if isinstance(start, bool) or not isinstance(start, int | dt.datetime):
        raise ConfigError(
            "subscribe(start=): expected 'new', 'all', a stream sequence or a datetime, "
            f"got {start!r}"
        )
    if isinstance(start, int) and start < 1:
        raise ConfigError(f"subscribe(start=): a stream sequence is >= 1, got {start}")
    if isinstance(start, dt.datetime) and start.tzinfo is None:
        raise ConfigError("subscribe(start=): the datetime needs a timezone (e.g. datetime.UTC)")
    return start


class Subscription:
    """An async iterator of events from one JetStream pull consumer.

    Acknowledgement (durable consumers, ack policy *all*): the event last
    handed out is acknowledged when the next one is asked for, and on a clean
    `close`; events fetched but not handed out are never acknowledged.  So a
    consumer restarted under the same durable name after a clean close sees
    exactly the events after the last one it got: nothing lost, nothing
    repeated.  After a crash the events handed out since the last
    acknowledgement the server received come again (at least once, in order).
    """

    def __init__(
        self,
        client: Client,
        *,
        venue: str,
        markets: tuple[str, ...],
        kinds: tuple[str, ...],
        symbols: tuple[str, ...],
        start: Start,
        durable: str | None,
        stream: str,
        batch: int,
        on_error: OnError,
    ) -> None:
        self._client = client
        self.stream = stream
        self.durable = durable
        self.start = start
        self.batch = batch
        self.on_error = on_error
        self.subject = subject_filter(
            venue,
            markets[0] if len(markets) == 1 else None,
            kinds[0] if len(kinds) == 1 else None,
            symbols[0] if len(symbols) == 1 else None,
        )
        # several values of a field: the server filter has '*' there, we drop the rest
        self._markets = frozenset(markets) if len(markets) > 1 else None
        self._kinds = frozenset(kinds) if len(kinds) > 1 else None
        self._symbols = frozenset(symbols) if len(symbols) > 1 else None
        self._sub: Any = None
        self._consumer: str | None = None
        self._pending: deque[Msg] = deque()
        self._held: Msg | None = None  # the message of the event handed out last
        self._span: Any = None  # the consumer span of the event handed out last
        self._closed = False
        #: stream sequence of the last event handed out (0: none yet)
        self.last_seq = 0
        self.events = 0
        self.decode_errors = 0
        self.filtered = 0

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Subscription:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Make (or find) the consumer on the server; iteration calls this too."""
        if self._sub is not None:
            return
        if self._closed:
            raise StopAsyncIteration
        js = self._client.js
        try:
            await js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            raise BrokerError(f"nats.stream: no stream {self.stream!r} on the server") from None
        if self.durable is not None:
            name = await self._durable_consumer()
        else:
            info = await js.add_consumer(self.stream, self._consumer_config())
            name = info.name
        self._consumer = name
        self._sub = await js.pull_subscribe_bind(consumer=name, stream=self.stream)
        log.client.debug("subscribed %s on %s (consumer %s)", self.subject, self.stream, name)

    def _consumer_config(self, start_seq: int | None = None) -> api.ConsumerConfig:
        cfg = api.ConsumerConfig(
            durable_name=self.durable,
            filter_subject=self.subject,
            ack_policy=api.AckPolicy.ALL if self.durable else api.AckPolicy.NONE,
            max_ack_pending=max(1000, 4 * self.batch) if self.durable else None,
            inactive_threshold=None if self.durable else _EPHEMERAL_IDLE_S,
        )
        start: Start = self.start if start_seq is None else start_seq
        if start == "all":
            cfg.deliver_policy = api.DeliverPolicy.ALL
        elif start == "new":
            cfg.deliver_policy = api.DeliverPolicy.NEW
        elif isinstance(start, dt.datetime):
            cfg.deliver_policy = api.DeliverPolicy.BY_START_TIME
            cfg.opt_start_time = start.astimezone(dt.UTC)
        else:
            cfg.deliver_policy = api.DeliverPolicy.BY_START_SEQUENCE
            cfg.opt_start_seq = start
        return cfg

    async def _durable_consumer(self) -> str:
        assert self.durable is not None
        js = self._client.js
        try:
            info = await js.consumer_info(self.stream, self.durable)
        except nats.js.errors.NotFoundError:
            info = await js.add_consumer(self.stream, self._consumer_config())
            return str(info.name)
        if info.config.filter_subject != self.subject:
            raise ConfigError(
                f"subscribe(durable={self.durable!r}): the consumer filters "
                f"{info.config.filter_subject!r}, not {self.subject!r}; "
                "use another name or delete it"
            )
        if info.num_ack_pending:
            # Events the previous reader fetched but never handed out (or handed
            # out without the acknowledgement reaching us) would come back only
            # after ack_wait, behind newer ones.  Remake the consumer at the
            # acknowledgement floor instead, so it resumes in order, now.
            resume = info.ack_floor.stream_seq + 1
            log.client.info(
                "durable %s: %d events were not acknowledged; resuming at stream sequence %d",
                self.durable,
                info.num_ack_pending,
                resume,
            )
            await js.delete_consumer(self.stream, self.durable)
            await js.add_consumer(self.stream, self._consumer_config(resume))
        return self.durable

    async def close(self) -> None:
        """Acknowledge the event handed out last (durable), then stop (idempotent).

        An ephemeral consumer is deleted; a durable one stays on the server
        for the next reader.
        """
        if self._closed:
            return
        self._closed = True
        self._end_span()
        with contextlib.suppress(ValueError):
            self._client._subs.remove(self)
        nc = self._client.nats
        if self._sub is None or nc is None or nc.is_closed:
            return
        held, self._held = self._held, None
        self._pending.clear()
        try:
            if held is not None:
                # wait for the server's answer: the next reader must see this acknowledged
                await held.ack_sync(timeout=self._client.config.connect_timeout_s)
            await self._sub.unsubscribe()
            if self.durable is None and self._consumer is not None:
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await self._client.js.delete_consumer(self.stream, self._consumer)
        except (nats.errors.Error, TimeoutError) as exc:
            log.client.warning("closing the subscription to %s: %s", self.subject, exc)

    # ------------------------------------------------------------ iteration

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        if self._sub is None:
            await self.open()
        if self._span is not None:
            self._end_span()
        held, self._held = self._held, None
        if held is not None:
            # the caller asks for the next event: it is done with the previous one
            await held.ack()
        while True:
            if self._closed:
                raise StopAsyncIteration
            if not self._pending:
                await self._fetch()
                continue
            msg = self._pending.popleft()
            seq = msg.metadata.sequence.stream
            if seq <= self.last_seq:
                continue  # redelivered after ack_wait while the caller was slow: already handed out
            ev = self._decode(msg, seq)
            if ev is None or not self._wanted(ev):
                continue
            self.last_seq = seq
            self.events += 1
            if self.durable is not None:
                self._held = msg
            headers = msg.headers
            if headers:
                parent = parse_traceparent(headers.get("traceparent"))
                if parent is not None:
                    self._start_span(msg, ev, seq, parent)
            return ev

    def _start_span(self, msg: Msg, ev: Event, seq: int, parent: trace.SpanContext) -> None:
        self._span = self._client.tracer.start_span(
            "meltica.consume",
            context=trace.set_span_in_context(trace.NonRecordingSpan(parent)),
            kind=SpanKind.CONSUMER,
            links=[Link(parent, {"meltica.link": "gateway batch"})],
            attributes={
                "messaging.system": "nats",
                "messaging.operation.type": "process",
                "messaging.destination.name": msg.subject,
                "messaging.consumer.group.name": self.durable or "",
                "meltica.stream_seq": seq,
                "meltica.key": ev.key,
            },
        )

    def _end_span(self) -> None:
        span, self._span = self._span, None
        if span is not None:
            span.end()

    async def _fetch(self) -> None:
        try:
            msgs = await self._sub.fetch(self.batch, timeout=_PULL_WAIT_S)
        except nats.errors.TimeoutError:
            return
        except nats.errors.ConnectionClosedError:
            self._closed = True
            return
        self._pending.extend(msgs)

    def _decode(self, msg: Msg, seq: int) -> Event | None:
        try:
            return wire.decode(msg.data)
        except WireError as exc:
            self.decode_errors += 1
            self.last_seq = seq
            if self.durable is not None:
                self._held = msg  # consumed: acknowledged with the next one
            err = MessageDecodeError(
                f"{msg.subject} (stream sequence {seq}): {exc}", subject=msg.subject, stream_seq=seq
            )
            log.client.warning("%s", err)
            if self.on_error == "raise":
                raise err from exc
            return None

    def _wanted(self, ev: Event) -> bool:
        if (
            (self._markets is None or ev.market in self._markets)
            and (self._kinds is None or ev.kind in self._kinds)
            and (self._symbols is None or ev.symbol in self._symbols)
        ):
            return True
        self.filtered += 1
        return False

    def stats(self) -> dict[str, int]:
        """Counters: events handed out, decode errors, events dropped by a
        several-value filter, and the last stream sequence handed out."""
        return {
            "events": self.events,
            "decode_errors": self.decode_errors,
            "filtered": self.filtered,
            "last_seq": self.last_seq,
        }

"""OpenTelemetry export against real receivers (docs/tracing.md).

The whole gateway runs against the fake exchange over loopback and exports
over OTLP/HTTP to a receiver inside the test (``tests/otlp.py``), which
decodes the protobuf with opentelemetry-proto.  The assertions are on what
arrived: span names, attributes, parent links, and that the ``trace`` field
of an event names a span that was exported.  No wall-time assertions.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import nats
import pytest
from aio import run
from brokers import NatsServer
from bus_collector import Collector
from fakeproc import synthetic_engine
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from otlp import OtlpReceiver

from meltica import client as meltica_client
from meltica.control import ControlRequest
from meltica.engine import Engine
from meltica.replay.exchange import FakeExchange
from meltica.replay.faults import FaultPlan
from meltica.replay.synthetic import SyntheticMarket
from meltica.telemetry.otel import _EXPORT_LOGGERS, _OncePerInterval
from meltica.wire import encode

# the OTEL_* variables win over telemetry.*: none may leak in from the shell
_OTEL_VARS = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_SERVICE_NAME",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_SDK_DISABLED",
)


@pytest.fixture(autouse=True)
def _clean_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _OTEL_VARS:
        monkeypatch.delenv(name, raising=False)


def make_engine(fake: FakeExchange, source: SyntheticMarket, endpoint: str, *extra: str) -> Engine:
    """A gateway that traces every batch to the OTLP ``endpoint``."""
    return synthetic_engine(
        fake,
        source,
        "telemetry.metrics_enabled=false",
        f"telemetry.otlp_endpoint={endpoint}",
        "telemetry.trace_sample_ratio=1.0",
        *extra,
    )


async def wait_until(pred: Callable[[], bool], timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


def otel_counts(engine: Engine) -> dict[str, float]:
    out: dict[str, float] = {}
    for s in engine.samples():
        if s.name.startswith("otel_"):
            labels = ",".join(v for _, v in s.labels)
            out[f"{s.name}{'{' + labels + '}' if labels else ''}"] = s.value
    return out


def test_gateway_exports_edge_spans_and_events_name_their_batch_span() -> None:
    source = SyntheticMarket(markets=("spot",), symbols_per_market=2, seed=11)
    spot_a, spot_b = source.symbols("spot")
    faults = FaultPlan.parse(
        [
            f"drop:market=spot,symbol={spot_a},at_frame=300,count=3",  # a gap: a resync
            "close:market=spot,connection=0,at_frame=700,code=1011",  # a dropped connection
            "shutdown:market=spot,connection=1,at_frame=300",  # serverShutdown: a rotation
        ]
    )

    async def scenario() -> None:
        receiver = OtlpReceiver()
        await receiver.start()
        fake = FakeExchange(source, speed=4.0, faults=faults)
        await fake.start()
        engine = make_engine(
            fake,
            source,
            receiver.url,
            "telemetry.service_name=gw-under-test",
            "telemetry.otlp_metrics_interval_s=0.5",
        )
        events = Collector(engine, "all")
        try:
            await engine.start()
            await events.wait_for(lambda e: e.kind == "resync_done" and e.symbol == spot_a)
            await events.wait_for(
                lambda e: e.kind == "connection_state" and e.state == "disconnected"
            )
            n = len(events.events)
            await events.wait_for(lambda e: e.kind == "book_ticker" and events.events.index(e) >= n)
            reply = await engine.request(
                ControlRequest(
                    "subscribe", market="spot", symbols=(spot_b,), channels=("agg_trade",)
                )
            )
            assert reply.ok, reply
            await events.wait_for(lambda e: e.kind == "agg_trade" and e.symbol == spot_b)
            await events.wait_for(lambda e: e.kind == "connection_state" and e.state == "rotated")
            await wait_until(lambda: bool(receiver.metric_names), what="an OTLP metrics export")
        finally:
            await engine.stop()
            await events.close()
            await fake.stop()
        await receiver.stop()

        spans = receiver.spans
        assert spans, "nothing exported"
        assert {s.resource.get("service.name") for s in spans} == {"gw-under-test"}

        # every event of a sampled batch names its batch span (ratio 1: every batch);
        # the wire JSON carries the same traceparent
        # (connection states and books installed from a REST snapshot come from no
        # batch of frames: those carry no trace)
        # (nor do trades backfilled from REST: source "rest", docs/pipeline.md)
        framed = [
            e
            for e in events.events
            if e.kind in ("trade", "book_ticker", "agg_trade")
            and getattr(e, "source", "") != "rest"
        ]
        assert framed and all(e.trace is not None for e in framed), "ratio 1.0: every batch"
        traced = [e for e in events.events if e.trace is not None]
        batch_ids = {s.span_id: s for s in receiver.named("meltica.batch")}
        for ev in traced[:: max(1, len(traced) // 200)]:
            _, trace_id, span_id, flags = ev.trace.split("-")
            span = batch_ids.get(span_id)
            assert span is not None, f"{ev.kind} names span {span_id}, not exported"
            assert span.trace_id == trace_id and flags == "01"
            assert json.loads(encode(ev))["trace"] == ev.trace
        # ... including the events the pipeline added (fused books, control events)
        fused = next(e for e in traced if e.kind == "book_snapshot" and e.source == "book")
        assert fused.trace.split("-")[2] in batch_ids

        batch = max(batch_ids.values(), key=lambda s: s.attributes["meltica.events.parsed"])
        attrs = batch.attributes
        assert attrs["meltica.market"] == "spot"
        assert attrs["meltica.frames"] >= 1 and attrs["meltica.bytes"] > 0
        assert attrs["meltica.events.parsed"] >= 1
        assert attrs["meltica.events.published"] >= 1
        assert attrs["meltica.stage.read_to_handoff_ns"] >= 0
        assert attrs["meltica.stage.handoff_to_publish_ns"] >= 0
        assert [e[0] for e in batch.events] == ["parsed", "published"]
        assert batch.start_ns <= batch.events[0][1] <= batch.events[1][1] == batch.end_ns

        # control requests: request -> exchange ack -> first event
        subs = [
            s
            for s in receiver.named("control subscribe")
            if s.attributes.get("meltica.channels") == ["agg_trade"]
        ]
        assert subs, [s.name for s in spans]
        sub = subs[0]
        names = [e[0] for e in sub.events]
        assert names[:1] == ["exchange_ack"] and "first_event" in names, names
        assert sub.attributes["meltica.first_event"] is True
        assert sub.attributes["meltica.symbols"] == [spot_b]

        # REST calls, with weight and status
        infos = receiver.named("rest exchangeInfo")
        assert infos and infos[0].attributes["http.response.status_code"] == 200
        assert infos[0].attributes["meltica.rest.weight"] > 0
        depths = receiver.named("rest depth")
        assert depths and all(d.attributes["meltica.rest.weight"] > 0 for d in depths)

        # the resync episode, gap -> live, with its snapshot request as a child
        resyncs = [
            s for s in receiver.named("book.resync") if s.attributes["meltica.symbol"] == spot_a
        ]
        assert resyncs, [s.name for s in spans]
        resync = resyncs[0]
        assert resync.attributes["meltica.reason"] == "gap"
        assert resync.status_code != 2  # not an error: it went live again
        children = [d for d in depths if d.parent_span_id == resync.span_id]
        assert children and children[0].trace_id == resync.trace_id
        assert children[0].attributes["meltica.symbol"] == spot_a

        # connection lifecycle
        assert len(receiver.named("ws.connect")) >= 2  # the first, and the reconnect
        drops = receiver.named("ws.drop")
        assert drops and drops[0].attributes["meltica.market"] == "spot"
        assert drops[0].attributes["meltica.reason"]

        rotations = receiver.named("ws.rotate")
        assert rotations and rotations[0].attributes["meltica.reason"] == "server_shutdown"
        assert rotations[0].status_code != 2, rotations[0]  # the new connection took over

        # the counters arrived as OTel metrics too, read from the same samples
        assert "meltica.ws_frames" in receiver.metric_names, sorted(receiver.metric_names)
        assert "meltica.otel_spans" in receiver.metric_names
        frames = receiver.metric_points["meltica.ws_frames"]
        assert max(v for _, v in frames) > 0

        counts = otel_counts(engine)
        assert counts["otel_spans_total{exported}"] == len(spans)
        assert counts["otel_spans_total{dropped}"] == 0 and counts["otel_spans_total{failed}"] == 0
        assert counts["otel_metric_exports_total{ok}"] >= 1
        assert counts["otel_metric_exports_total{failed}"] == 0

    run(scenario)


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # closed: connecting is refused


def test_a_collector_that_is_down_costs_only_counted_drops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = SyntheticMarket(markets=("spot",), symbols_per_market=2, seed=3)
    # the exporter log limiter is per process: start this test with a fresh minute
    for name in _EXPORT_LOGGERS:
        for f in logging.getLogger(name).filters:
            if isinstance(f, _OncePerInterval):
                f._next = 0.0

    async def scenario() -> None:
        fake = FakeExchange(source, speed=4.0)
        await fake.start()
        engine = make_engine(
            fake,
            source,
            f"http://127.0.0.1:{_dead_port()}",
            "telemetry.trace_queue_size=16",
            "telemetry.otlp_metrics_interval_s=0.2",
        )
        events = Collector(engine, "all")
        try:
            await engine.start()
            await wait_until(
                lambda: otel_counts(engine)["otel_spans_total{dropped}"] > 0,
                what="spans dropped at the full queue",
            )
            counts = otel_counts(engine)
            assert counts["otel_spans_total{exported}"] == 0
            assert counts["otel_span_queue"] <= 16
            # the pipeline keeps running past the drops
            n = len(events.events)
            await events.wait_for(lambda e: events.events.index(e) >= n + 200)
            assert all(e.trace is not None for e in events.events[n:])
            assert engine.ready() or engine.not_ready()  # answers, does not hang
        finally:
            await engine.stop()  # bounded, with the collector still down
            await events.close()
            await fake.stop()
        final = otel_counts(engine)
        assert final["otel_spans_total{dropped}"] > 0
        assert final["otel_spans_total{exported}"] == 0
        assert final["otel_metric_exports_total{failed}"] >= 1
        # the failures are counted, not logged per attempt: a line per exporter per minute
        noisy = [r for r in caplog.records if r.name.startswith("opentelemetry")]
        per_logger = {r.name: sum(1 for x in noisy if x.name == r.name) for r in noisy}
        assert noisy and max(per_logger.values()) == 1, per_logger

    run(scenario)


def test_nats_messages_carry_traceparent_and_the_client_links_its_span(
    nats_server: NatsServer,
) -> None:
    source = SyntheticMarket(markets=("spot",), symbols_per_market=1, seed=5)
    (sym,) = source.symbols("spot")

    async def scenario() -> None:
        receiver = OtlpReceiver()
        await receiver.start()
        fake = FakeExchange(source, speed=4.0)
        await fake.start()
        engine = make_engine(
            fake,
            source,
            receiver.url,
            "bus.backend=nats",
            f"nats.url={nats_server.url}",
        )
        consumer_spans = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(consumer_spans))
        got: list[Any] = []
        headers: list[str | None] = []
        try:
            await engine.start()
            # the raw message: the header is there, equal to the event's trace field
            nc = await nats.connect(nats_server.url)
            try:
                js = nc.jetstream()
                psub = await js.pull_subscribe(f"meltica.binance.spot.trade.{sym}", durable=None)
                msgs = await psub.fetch(5, timeout=30)
                for m in msgs:
                    headers.append((m.headers or {}).get("traceparent"))
                    assert json.loads(m.data)["trace"] == headers[-1]
            finally:
                await nc.close()
            async with meltica_client.connect(nats_server.url, tracer_provider=provider) as c:
                async for ev in c.subscribe(kind="trade", symbol=sym, start="all"):
                    got.append(ev)
                    if len(got) == 3:
                        break
        finally:
            await engine.stop()
            await fake.stop()
        await receiver.stop()

        assert headers and all(h is not None and h.startswith("00-") for h in headers)
        finished = consumer_spans.get_finished_spans()
        assert len(finished) >= 2  # the span of an event ends when the next is asked for
        for span, ev in zip(finished, got, strict=False):
            assert span.name == "meltica.consume"
            _, trace_id, span_id, _ = ev.trace.split("-")
            # one trace: the consumer span is a child of the batch span, and links it
            assert f"{span.context.trace_id:032x}" == trace_id
            assert span.parent is not None and f"{span.parent.span_id:016x}" == span_id
            assert [
                (f"{ln.context.trace_id:032x}", f"{ln.context.span_id:016x}") for ln in span.links
            ] == [(trace_id, span_id)]
            batch = receiver.by_id(span_id)
            assert batch is not None and batch.name == "meltica.batch"
        # JetStream acknowledged the sampled events: publish spans under the batch spans
        pubs = receiver.named("nats.publish")
        assert pubs
        acked = [p for p in pubs if p.attributes.get("meltica.acked") is True]
        assert acked, [p.attributes for p in pubs]
        parent = receiver.by_id(acked[0].parent_span_id)
        assert parent is not None and parent.name == "meltica.batch"
        assert acked[0].trace_id == parent.trace_id

    run(scenario)

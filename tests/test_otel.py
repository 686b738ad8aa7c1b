"""OpenTelemetry settings (config vs OTEL_* variables), the listener's per-batch
sampling decision, and the W3C trace context helpers (docs/tracing.md)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import pytest
from picows import WSMsgType
from picows.picows import _make_test_ws_frame
from test_ws_listener import TRADE, Owner
from test_ws_manager import run

from meltica._core.parser import FrameParser
from meltica.adapters.binance.listener import FrameListener
from meltica.config import load_config
from meltica.engine import Engine
from meltica.errors import ConfigError
from meltica.telemetry.otel import Otel, resolve, sample_threshold
from meltica.telemetry.spans import parse_traceparent, traceparent_of


def settings(env: dict[str, str], *overrides: str) -> Any:
    return resolve(load_config(None, env={}, overrides=list(overrides)).telemetry, env)


def test_tracing_is_off_without_an_endpoint_anywhere() -> None:
    s = settings({})
    assert not s.enabled and s.endpoint is None and s.describe() == "off"
    assert s.ratio == 0.01 and s.service_name == "meltica-engine" and s.queue_size == 2048


def test_config_keys_apply_when_no_variable_is_set() -> None:
    s = settings(
        {},
        "telemetry.otlp_endpoint=http://collector:4318",
        "telemetry.service_name=gw-a",
        "telemetry.trace_sample_ratio=0.5",
        "telemetry.trace_queue_size=64",
    )
    assert s.enabled and s.endpoint == "http://collector:4318"
    assert (s.service_name, s.ratio, s.queue_size) == ("gw-a", 0.5, 64)
    assert s.sources == {
        "endpoint": "telemetry.otlp_endpoint",
        "service_name": "telemetry.service_name",
        "ratio": "telemetry.trace_sample_ratio",
    }


def test_otel_variables_win_over_the_config_keys() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "https://otel.example:4318",
        "OTEL_SERVICE_NAME": "from-env",
        "OTEL_TRACES_SAMPLER": "traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.25",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod, service.name=ignored",
    }
    s = settings(
        env,
        "telemetry.otlp_endpoint=http://collector:4318",
        "telemetry.service_name=gw-a",
        "telemetry.trace_sample_ratio=0.5",
    )
    assert s.endpoint == "https://otel.example:4318"
    assert s.service_name == "from-env" and s.ratio == 0.25
    assert s.sources["endpoint"] == "OTEL_EXPORTER_OTLP_ENDPOINT"
    assert s.sources["ratio"] == "OTEL_TRACES_SAMPLER"
    # the resource: OTEL_RESOURCE_ATTRIBUTES plus service.name from OTEL_SERVICE_NAME
    otel = Otel(s, instance="gw-7")
    try:
        attrs = dict(otel.resource.attributes)
        assert attrs["deployment.environment"] == "prod"
        assert attrs["service.name"] == "from-env"
        assert attrs["service.instance.id"] == "gw-7"
    finally:
        otel._shutdown()


def test_resource_service_name_never_beats_the_service_name_setting() -> None:
    s = settings(
        {"OTEL_RESOURCE_ATTRIBUTES": "service.name=x"}, "telemetry.otlp_endpoint=http://c:1"
    )
    otel = Otel(s)
    try:
        assert otel.resource.attributes["service.name"] == "meltica-engine"
    finally:
        otel._shutdown()


@pytest.mark.parametrize(
    ("env", "ratio"),
    [
        ({"OTEL_TRACES_SAMPLER": "always_on"}, 1.0),
        ({"OTEL_TRACES_SAMPLER": "parentbased_always_on"}, 1.0),
        ({"OTEL_TRACES_SAMPLER": "always_off"}, 0.0),
        ({"OTEL_TRACES_SAMPLER": "parentbased_always_off"}, 0.0),
        ({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio"}, 1.0),  # the spec's default arg
        ({"OTEL_TRACES_SAMPLER": "TraceIdRatio", "OTEL_TRACES_SAMPLER_ARG": "0"}, 0.0),
        ({"OTEL_TRACES_SAMPLER_ARG": "0.9"}, 0.3),  # an argument without a sampler: ignored
        ({"OTEL_TRACES_SAMPLER": "  "}, 0.3),  # set but empty: not set
    ],
)
def test_sampler_variables(env: dict[str, str], ratio: float) -> None:
    assert settings(env, "telemetry.trace_sample_ratio=0.3").ratio == ratio


def test_sdk_disabled_turns_export_off() -> None:
    s = settings({"OTEL_SDK_DISABLED": "true"}, "telemetry.otlp_endpoint=http://c:4318")
    assert not s.enabled and s.sources["endpoint"] == "OTEL_SDK_DISABLED"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OTEL_TRACES_SAMPLER": "jaeger_remote"}, "OTEL_TRACES_SAMPLER:"),
        (
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"},
            "OTEL_TRACES_SAMPLER_ARG:",
        ),
        (
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "half"},
            "OTEL_TRACES_SAMPLER_ARG:",
        ),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "grpc://c:4317"}, "OTEL_EXPORTER_OTLP_ENDPOINT:"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "a=1,oops"}, "OTEL_RESOURCE_ATTRIBUTES:"),
    ],
)
def test_bad_variables_fail_naming_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as err:
        settings(env)
    assert str(err.value).startswith(named), err.value


def test_bad_config_values_fail_naming_the_key() -> None:
    for override, key in (
        ("telemetry.trace_queue_size=0", "telemetry.trace_queue_size:"),
        ("telemetry.otlp_metrics_interval_s=0", "telemetry.otlp_metrics_interval_s:"),
        ("telemetry.trace_sample_ratio=1.5", "telemetry.trace_sample_ratio:"),
    ):
        with pytest.raises(ConfigError) as err:
            load_config(None, env={}, overrides=[override])
        assert str(err.value).startswith(key), err.value


def test_engine_reads_the_environment_and_wires_the_listeners(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_SAMPLER", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    cfg = load_config(None, env={}, overrides=["telemetry.metrics_enabled=false"])
    off = Engine(cfg)
    assert off.otel is None
    assert all(m.sample_threshold == 0 and m.batch_tracer is None for m in off.managers.values())
    assert off.rest.tracer is None and off.conductor.tracer is None

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
    on = Engine(cfg)
    try:
        assert on.otel is not None and on.otel.settings.ratio == 1.0
        for m in on.managers.values():
            assert m.sample_threshold == 2**64 - 1 and m.batch_tracer is not None
        assert on.rest.tracer is on.otel.tracer and on.control.tracer is on.otel.tracer
    finally:
        on.otel._shutdown()  # type: ignore[union-attr]

    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "bogus")
    with pytest.raises(ConfigError, match=r"^OTEL_TRACES_SAMPLER:"):
        Engine(cfg)


def test_sample_threshold() -> None:
    assert sample_threshold(0) == 0
    assert sample_threshold(1) == 2**64 - 1
    assert sample_threshold(0.5) == 2**63
    assert sample_threshold(1e-30) == 1  # tiny but not off


def test_traceparent_round_trip_and_malformed_input() -> None:
    sc = parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    assert sc is not None and sc.is_remote and sc.trace_flags.sampled
    assert traceparent_of(sc) == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    for bad in (
        None,
        "",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319x-b7ad6b7169203331-01",
    ):
        assert parse_traceparent(bad) is None, bad


class FakeTracer:
    """Records what a listener hands its tracer."""

    def __init__(self) -> None:
        self.begun: list[int] = []
        self.ended: list[tuple[Any, ...]] = []

    def begin(self, t_recv_ns: int) -> tuple[object, str]:
        self.begun.append(t_recv_ns)
        n = len(self.begun)
        return object(), f"00-{n:032x}-{n:016x}-01"

    def end(self, span: object, *args: int) -> None:
        self.ended.append(args)


def _listener(threshold: int, tracer: Any, sink: Any) -> FrameListener:
    listener = FrameListener(FrameParser(market="spot"), Owner(), sink, asyncio.get_running_loop())
    listener.sample_threshold = threshold
    listener.tracer = tracer
    return listener


def _feed(listener: FrameListener, n: int) -> None:
    """``n`` trade frames, each its own socket read (one hand-off each, unless paused)."""
    for i in range(1, n + 1):
        payload = TRADE.format(i=i).encode()
        listener.on_ws_frame(None, _make_test_ws_frame(WSMsgType.TEXT, payload, True, False))


def test_listener_samples_once_per_batch_at_the_ratio() -> None:
    async def main() -> None:
        batches: list[list[Any]] = []
        # ratio 0: the tracer is never called, no event carries a trace
        tracer = FakeTracer()
        listener = _listener(0, tracer, batches.append)
        _feed(listener, 2000)
        assert listener.batches == 2000 and tracer.begun == []
        assert all(ev.trace is None for b in batches for ev in b)

        # ratio 1, one frame per read: the span gets the read time, counts and stages
        batches.clear()
        tracer = FakeTracer()
        listener = _listener(sample_threshold(1.0), tracer, batches.append)
        _feed(listener, 2)
        assert len(tracer.begun) == len(tracer.ended) == 2
        assert tracer.begun[0] == batches[0][0].ts_recv
        handoff, published, n_in, n_out, n_frames, n_bytes = tracer.ended[1]
        assert tracer.begun[1] <= handoff <= published
        assert (n_in, n_out, n_frames, n_bytes) == (1, 1, 1, len(TRADE.format(i=2)))

        # ratio 1, batches of 3 (held while paused, then handed on one by one):
        # one decision and one span per batch; every event names its batch's span
        batches.clear()
        tracer = FakeTracer()
        listener = _listener(sample_threshold(1.0), tracer, batches.append)
        listener.max_batch = 3
        listener.pause_reading()
        _feed(listener, 300)
        assert batches == [] and tracer.begun == []
        listener.flush_now()
        assert listener.batches == 100 and len(tracer.begun) == len(tracer.ended) == 100
        for k, batch in enumerate(batches, 1):
            assert len(batch) == 3
            assert {ev.trace for ev in batch} == {f"00-{k:032x}-{k:016x}-01"}

        # ratio 0.25: about a quarter of 4000 batches (binomial sd ~27)
        tracer = FakeTracer()
        listener = _listener(sample_threshold(0.25), tracer, lambda b: None)
        _feed(listener, 4000)
        assert 850 <= len(tracer.begun) <= 1150, len(tracer.begun)

    run(main)


def test_a_traced_batch_stamps_what_the_pipeline_added() -> None:
    async def main() -> None:
        extra: list[Any] = []

        def sink(batch: list[Any]) -> None:
            # the pipeline adds an event with no trace to the batch, in place
            ev = batch.pop()
            extra.append(ev)
            ev.trace = None
            batch.append(ev)

        tracer = FakeTracer()
        listener = _listener(sample_threshold(1.0), tracer, sink)
        _feed(listener, 1)
        assert extra and extra[0].trace == "00-" + f"{1:032x}-{1:016x}-01"

    run(main)


def test_run_with_a_bad_otel_variable_fails_at_start_naming_it() -> None:
    # the caller's environment (PYTHONPATH included: the meltica under test, built
    # in place or installed) without any OTEL_/MELTICA_ setting of its own
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "MELTICA_"))}
    env["OTEL_TRACES_SAMPLER"] = "sometimes"
    proc = subprocess.run(
        [sys.executable, "-m", "meltica", "run", "--duration", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "OTEL_TRACES_SAMPLER: expected one of" in proc.stderr
    assert "Traceback" not in proc.stderr

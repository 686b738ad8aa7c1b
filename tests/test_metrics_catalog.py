"""The metric catalogue (meltica/telemetry/catalog.py): naming rules, the stats tables,
and what the Prometheus exposition makes of declared samples."""

from __future__ import annotations

import re
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from meltica.bus.data import InMemoryDataBus
from meltica.telemetry import catalog
from meltica.telemetry.catalog import FAMILIES, STATS, UnknownStat, stats_samples
from meltica.telemetry.metrics import StatsCollector

COMPONENT_NAMES = {
    "WebSocket connection manager",
    "Dispatcher and dispatch table",
    "Conductor",
    "In-memory Data Bus",
    "SnapshotStore",
    "Order book sync events",
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_names_follow_the_prometheus_rules(name: str) -> None:
    fam = FAMILIES[name]
    assert re.fullmatch(r"[a-z][a-z0-9_]*", name)
    assert fam.kind in ("counter", "gauge", "histogram")
    assert name.endswith("_total") == (fam.kind == "counter"), (
        "counters and only they end in _total"
    )
    assert "_ns" not in name.split("_total")[0].split("_") and not name.endswith("_ns")
    if fam.unit:
        assert name.removesuffix("_total").endswith("_" + fam.unit)
    for unit in ("seconds", "bytes"):
        if name.removesuffix("_total").endswith("_" + unit):
            assert fam.unit == unit
    assert len(fam.help) > 15 and fam.help not in COMPONENT_NAMES
    assert "le" not in fam.labels and len(set(fam.labels)) == len(fam.labels)


def test_every_stats_key_maps_to_a_declared_non_histogram_family() -> None:
    used = set()
    for source, table in STATS.items():
        for key, entry in table.items():
            if entry is None:
                continue
            name, scale = entry
            assert name in FAMILIES, (source, key, name)
            assert FAMILIES[name].kind != "histogram"
            assert scale in (1.0, 1e-9)
            assert (scale == 1e-9) == key.endswith("_ns"), "ns values, and only they, are scaled"
            used.add(name)
    assert "ws_frames_total" in used and "dispatch_last_propagation_seconds" in used


def test_unknown_stats_key_and_wrong_labels_raise() -> None:
    with pytest.raises(UnknownStat, match="'brand_new'"):
        list(stats_samples("bus", {"published": 1, "brand_new": 2}))
    with pytest.raises(ValueError, match="labels"):
        catalog.sample("ws_frames_total", 1)
    with pytest.raises(ValueError, match="histogram"):
        catalog.sample("pipeline_latency_seconds", 1)
    with pytest.raises(ValueError, match="not a histogram"):
        catalog.histogram("bus_depth")


def test_the_bus_stats_of_a_real_bus_are_all_declared() -> None:
    bus = InMemoryDataBus(16)
    c = bus.subscribe("x")
    samples = {s.name: s for s in stats_samples("bus", bus.stats())}
    assert samples["bus_published_total"].kind == "counter"
    assert samples["bus_depth"].kind == "gauge"
    groups = bus.group_stats()
    assert set(groups) == {"x"}
    kinds = {s.name: s.kind for s in stats_samples("bus_consumer", groups["x"], consumer="x")}
    assert (
        kinds["bus_consumer_lag"] == "gauge" and kinds["bus_consumer_delivered_total"] == "counter"
    )
    c.close()


def test_ns_values_are_exported_in_seconds_and_counters_once_suffixed() -> None:
    stats = {"last_propagation_ns": 2_500_000, "max_propagation_ns": None, "failed": 3}
    samples = list(stats_samples("dispatch", stats))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(lambda: samples))
    text = generate_latest(registry).decode()
    assert "meltica_dispatch_last_propagation_seconds 0.0025\n" in text
    assert "# TYPE meltica_dispatch_failures_total counter" in text
    assert "meltica_dispatch_failures_total 3.0\n" in text
    assert "_total_total" not in text and "max_propagation" not in text  # None: not measured
    s = samples[0]
    assert (s.unit, s.kind) == ("seconds", "gauge") and s.help == FAMILIES[s.name].help


def test_consumer_groups_keep_counting_after_members_leave() -> None:
    from meltica._core.events import Control

    bus = InMemoryDataBus(16)
    a = bus.subscribe("tail-1", group="tail", policy="drop_oldest")
    b = bus.subscribe("tail-2", group="tail", policy="drop_oldest")
    ev = Control("gap", venue="meltica", market="spot", symbol="X", seq=1, ts_recv=1)
    bus.publish_batch([ev, ev])
    assert len(a.poll()) == 2 and len(b.poll()) == 2
    assert bus.group_stats()["tail"]["delivered"] == 4
    a.close()
    g = bus.group_stats()["tail"]
    assert (g["members"], g["delivered"]) == (1, 4)
    b.close()
    assert bus.group_stats()["tail"]["members"] == 0
    assert bus.group_stats()["tail"]["delivered"] == 4


def _trade(market: str, ts_event: int | None, ts_recv: int, tid: int = 1) -> Any:
    from meltica._core.events import event_from_wire

    wire = {
        "v": 1,
        "venue": "binance",
        "market": market,
        "symbol": "AAA",
        "kind": "trade",
        "seq": tid,
        "ts_recv": ts_recv,
        "trade_id": tid,
        "price": "1",
        "qty": "1",
        "side": "buy",
    }
    if ts_event is not None:
        wire["ts_event"] = ts_event
    return event_from_wire(wire)


def test_gate_observes_exchange_latency_once_per_batch_per_market() -> None:
    from meltica._core.dispatch import DispatchTable
    from meltica.dispatcher._gate import Gate

    passed: list[Any] = []
    gate = Gate(DispatchTable(), passed.append)
    spot = catalog.histogram("exchange_latency_seconds", market="spot")
    gate.event_latency = {"spot": spot}
    # the first event with an exchange time: 3 ms late; the second is not observed
    gate.on_events([_trade("spot", None, 10_000_000), _trade("spot", 7_000_000, 10_000_000),
                    _trade("spot", 1_000_000, 10_000_000)])  # fmt: skip
    assert (spot.n, spot.total) == (1, pytest.approx(0.003))
    gate.on_events([_trade("spot", 12_000_000, 10_000_000)])  # exchange clock ahead: 0
    assert (spot.n, spot.counts[0]) == (2, 1)
    gate.on_events([_trade("usdm", 1, 10_000_000)])  # no histogram for that market
    gate.event_latency = None
    gate.on_events([_trade("spot", 1, 10_000_000)])
    assert spot.n == 2


def test_gate_updates_a_histogram_in_place_exactly_as_observe_would() -> None:
    from meltica._core.dispatch import DispatchTable
    from meltica.dispatcher._gate import Gate
    from meltica.telemetry.metrics import Histogram

    gate = Gate(DispatchTable(), lambda batch: None)
    spot = catalog.histogram("exchange_latency_seconds", market="spot")
    reference = catalog.histogram("exchange_latency_seconds", market="spot")
    gate.event_latency = {"spot": spot}
    recv = 1_700_000_000_000_000_000
    # delays (ns), one batch each: under, on and between bounds, beyond the last, negative
    on_bound = [round(b * 1e9) for b in spot.buckets[:3]]
    delays = [3_000_000, 1, *on_bound, 7_300_000_000, 11_000_000_000, -2_000_000, 0, 123_456]
    for tid, d in enumerate(delays, 1):
        gate.on_events([_trade("spot", recv - d, recv, tid), _trade("spot", recv, recv, tid + 99)])
        reference.observe(max(d, 0) / 1e9)
    gate.on_events([_trade("spot", None, recv, 500)])  # no exchange time: not observed
    gate.on_events([_trade("spot", recv, 0, 501)])  # no receive time: not observed either
    assert (spot.counts, spot.total, spot.n) == (reference.counts, reference.total, reference.n)
    assert spot.n == len(delays)

    # a new histogram for the market: its own bounds are read
    coarse = Histogram("exchange_latency_seconds", "h", buckets=(0.001, 0.01))
    gate.event_latency["spot"] = coarse
    gate.on_events([_trade("spot", recv - 5_000_000, recv, 600)])
    assert (coarse.counts, coarse.n) == ([0, 1, 0], 1)
    assert spot.n == len(delays)


def test_gate_calls_observe_on_any_other_observer() -> None:
    from meltica._core.dispatch import DispatchTable
    from meltica.dispatcher._gate import Gate
    from meltica.telemetry.metrics import Histogram

    seen: list[tuple[str, float]] = []

    class Recorder:
        def observe(self, seconds: float, count: int = 1) -> None:
            seen.append(("recorder", seconds))

    class Sub(Histogram):  # not exactly a Histogram: its observe() runs
        def observe(self, seconds: float, count: int = 1) -> None:
            seen.append(("sub", seconds))
            super().observe(seconds, count)

    gate = Gate(DispatchTable(), lambda batch: None)
    sub = Sub("exchange_latency_seconds", "h")
    gate.event_latency = {"spot": Recorder(), "usdm": sub}
    gate.on_events([_trade("spot", 7_000_000, 10_000_000)])
    gate.on_events([_trade("usdm", 12_000_000, 10_000_000)])
    gate.on_events([_trade("spot", None, 10_000_000)])
    assert seen == [("recorder", 0.003), ("sub", 0.0)]
    assert (sub.n, sub.counts[0]) == (1, 1)


@pytest.mark.parametrize("policy", ["block", "drop_oldest", "conflate"])
def test_delivery_latency_is_publish_stamp_to_read(policy: str) -> None:
    now = [1_000_000]
    bus = InMemoryDataBus(16, clock=lambda: now[0])
    bus.latency = catalog.histogram("pipeline_latency_seconds")
    hists: dict[str, Any] = {}
    bus.delivery_latency = lambda g: hists.setdefault(
        g, catalog.histogram("bus_delivery_latency_seconds", consumer=g)
    )
    c = bus.subscribe("c1", group="g", policy=policy)
    other = bus.subscribe("c2", group="g", policy=policy)
    bus.publish_batch([_trade("spot", None, 900_000)])  # published at 1.0 ms
    now[0] = 1_500_000
    bus.publish_batch([_trade("spot", None, 1_400_000, tid=2)])  # at 1.5 ms
    now[0] = 4_000_000
    assert len(c.poll(1)) == 1  # its first event was published 3 ms ago
    h = hists["g"]
    assert set(hists) == {"g"} and (h.n, h.total) == (1, pytest.approx(0.003))
    second = c.poll()
    if policy == "conflate":
        # the first read folded both (one key) and delivered the latest, timed from
        # the publish of the oldest it folded
        assert second == [] and h.n == 1
    else:
        assert len(second) == 1
        assert (h.n, h.total) == (2, pytest.approx(0.0055))  # the second: 2.5 ms
    before_n, before_total = h.n, h.total
    assert len(other.poll()) == 2  # the other member: from the first publish, 3 ms
    assert (h.n, h.total - before_total) == (before_n + 1, pytest.approx(0.003))
    assert c.poll() == [] and h.n == before_n + 1  # an empty read observes nothing
    assert bus.latency.n == 2 and bus.latency.total == pytest.approx(0.0002)

"""deploy/: the Prometheus alert rules (checked and unit-tested by promtool) and the
Grafana dashboard (valid JSON, querying only metrics docs/metrics.md lists)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import yaml
from promtools import DEPLOY, documented, promtool

DASHBOARD = DEPLOY / "grafana/meltica.json"
ALERTS = DEPLOY / "prometheus/alerts.yml"

_NAME = re.compile(r"\b((?:meltica|process|python)_[a-z0-9_]+)")


def _metrics_in(expr: str) -> set[str]:
    """Metric families an expression reads (histogram series mapped to their family)."""
    doc = documented()
    out = set()
    for name in _NAME.findall(expr):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        out.add(base if doc.get(base, ("",))[0] == "histogram" else name)
    return out


def _exprs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "query", "definition") and isinstance(value, str):
                yield value
            else:
                yield from _exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _exprs(item)


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout


def test_promtool_test_rules() -> None:
    result = promtool("test", "rules", str(DEPLOY / "prometheus/alerts_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_cover_the_required_cases_and_read_documented_metrics() -> None:
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    names = {r["alert"] for r in rules}
    assert names == {
        "MelticaBookNotLive",
        "MelticaGapRateRising",
        "MelticaBookStale",
        "MelticaReconnectStorm",
        "MelticaRestWeightHigh",
        "MelticaBusDrops",
        "MelticaConsumerLag",
    }
    not_live = next(r for r in rules if r["alert"] == "MelticaBookNotLive")
    assert not_live["for"] == "30s" and "meltica_book_live" in not_live["expr"]
    doc = documented()
    for rule in rules:
        used = _metrics_in(rule["expr"])
        assert used and used <= set(doc), (rule["alert"], used - set(doc))
    # every alert is unit-tested
    tests = yaml.safe_load((DEPLOY / "prometheus/alerts_test.yml").read_text())["tests"]
    tested = {t["alertname"] for case in tests for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert tested == names


def test_dashboard_is_valid_and_queries_only_documented_metrics() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["title"] and dash["uid"] and isinstance(dash["panels"], list)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        grid = p["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["targets"] and all(t["expr"] for t in p["targets"]), p["title"]
    used: set[str] = set()
    for expr in _exprs(dash):
        used |= _metrics_in(expr)
    doc = documented()
    assert sorted(used - set(doc)) == []
    # it covers the rates, every latency stage, books, connections, REST, bus, NATS, process
    assert {
        "meltica_ws_frames_total",
        "meltica_ws_events_total",
        "meltica_exchange_latency_seconds",
        "meltica_pipeline_latency_seconds",
        "meltica_bus_delivery_latency_seconds",
        "meltica_rest_request_duration_seconds",
        "meltica_control_propagation_seconds",
        "meltica_book_live",
        "meltica_book_age_seconds",
        "meltica_book_gaps_total",
        "meltica_book_resyncs_total",
        "meltica_ws_reconnects_total",
        "meltica_rest_weight_window",
        "meltica_rest_weight_budget",
        "meltica_bus_consumer_dropped_total",
        "meltica_dispatch_dropped_total",
        "meltica_bus_consumer_lag",
        "meltica_nats_published_total",
        "meltica_nats_window_depth",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    } <= used

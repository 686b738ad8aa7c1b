"""A real Prometheus scrapes a running gateway.

``meltica-engine fake-exchange`` (synthetic spot and USD-M) and ``meltica-engine run``
against it, as a user would start them; Debian's ``prometheus`` on a free loopback port
with a temporary store, scraping the gateway every second and loading
deploy/prometheus/alerts.yml.  PromQL through its HTTP API must return frames,
latency quantiles of every stage, live books and process memory; every alert rule must
evaluate without error on the real series.

Skips without the ``prometheus`` binary on a workstation, fails with ``CI=true``.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from brokers import _need, free_port
from fakeproc import fake_exchange
from promtools import DEPLOY

from meltica.commands.common import local_overrides
from meltica.replay.synthetic import SyntheticMarket

MARKETS = ("spot", "usdm")


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


@contextmanager
def gateway(tmp: Path) -> Iterator[str]:
    """``run`` on the fake exchange; yields its ``host:port`` once it logged its metrics URL."""
    with fake_exchange("--markets", ",".join(MARKETS), "--symbols", "2", "--duration", "900") as (
        ws,
        rest,
    ):
        source = SyntheticMarket(markets=MARKETS, symbols_per_market=2)
        overrides = [
            *local_overrides(ws, rest, symbols={m: source.symbols(m) for m in MARKETS}),
            "telemetry.metrics_port=0",
        ]
        cmd = [sys.executable, "-m", "meltica", "--log-level", "INFO", "run"]
        for o in overrides:
            cmd += ["--set", o]
        log = tmp / "gateway.log"
        with log.open("w") as out:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=out, text=True)
        try:
            deadline = time.monotonic() + 60
            while not (m := re.search(r"metrics http://(\S+)/metrics", log.read_text())):
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            yield m.group(1)
        finally:
            proc.terminate()
            proc.wait(30)


@contextmanager
def prometheus(tmp: Path, target: str) -> Iterator[str]:
    """Debian's prometheus scraping `target` every second; yields its base URL."""
    binary = _need("prometheus")
    port = free_port()
    config = tmp / "prometheus.yml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(DEPLOY / "prometheus/alerts.yml")],
                "scrape_configs": [
                    {"job_name": "meltica", "static_configs": [{"targets": [target]}]}
                ],
            }
        )
    )
    log = tmp / "prometheus.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(url + "/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def query(url: str, promql: str) -> list[tuple[dict[str, str], float]]:
    """An instant PromQL query: (labels, value) of every series of the vector."""
    body = _get(f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
    assert body["status"] == "success", body
    assert body["data"]["resultType"] == "vector", body
    return [(r["metric"], float(r["value"][1])) for r in body["data"]["result"]]


def wait_for(url: str, promql: str, ok: Any, timeout: float = 90.0) -> list[Any]:
    """Query until `ok(result)` holds; returns that result."""
    deadline = time.monotonic() + timeout
    result: list[Any] = []
    while time.monotonic() < deadline:
        result = query(url, promql)
        if ok(result):
            return result
        time.sleep(0.5)
    raise AssertionError(f"{promql}: {result}")


def test_prometheus_scrapes_the_gateway(tmp_path: Path) -> None:
    with gateway(tmp_path) as target, prometheus(tmp_path, target) as url:
        wait_for(url, 'up{job="meltica"}', lambda r: [v for _, v in r] == [1.0])

        frames = wait_for(
            url,
            "sum by (market) (rate(meltica_ws_frames_total[10s]))",
            lambda r: len(r) == len(MARKETS) and all(v > 0 for _, v in r),
        )
        assert {m["market"] for m, _ in frames} == set(MARKETS)

        def finite(r: list[Any]) -> bool:
            return bool(r) and all(math.isfinite(v) and v >= 0 for _, v in r)

        for promql in (
            "histogram_quantile(0.99, sum by (le, market) "
            "(rate(meltica_exchange_latency_seconds_bucket[10s])))",
            "histogram_quantile(0.5, sum by (le) "
            "(rate(meltica_pipeline_latency_seconds_bucket[10s])))",
            # REST calls and subscriptions happen at start-up, before the first
            # scrape: their quantiles since start (no rate over a window)
            "histogram_quantile(0.99, sum by (le, endpoint) "
            "(meltica_rest_request_duration_seconds_bucket))",
            "histogram_quantile(0.99, sum by (le, op) "
            "(meltica_control_propagation_seconds_bucket))",
        ):
            wait_for(url, promql, finite)

        live = wait_for(
            url,
            "meltica_book_live",
            lambda r: len(r) == 2 * len(MARKETS) and all(v == 1.0 for _, v in r),
        )
        assert {m["symbol"] for m, _ in live}
        wait_for(url, "meltica_book_age_seconds < 60", lambda r: len(r) == 2 * len(MARKETS))
        memory = wait_for(url, 'process_resident_memory_bytes{job="meltica"}', bool)
        assert memory[0][1] > 1e6

        # every alert rule evaluates on the real series without error
        def rules_ok() -> bool:
            groups = _get(url + "/api/v1/rules")["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            return len(rules) == 7 and all(
                r["health"] == "ok" and r["lastEvaluation"][:4] != "0001" for r in rules
            )

        deadline = time.monotonic() + 30
        while not rules_ok():
            assert time.monotonic() < deadline, _get(url + "/api/v1/rules")
            time.sleep(0.5)
        # a healthy gateway fires none of them
        firing = [
            a for a in _get(url + "/api/v1/alerts")["data"]["alerts"] if a["state"] == "firing"
        ]
        assert firing == []

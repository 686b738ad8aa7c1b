"""``/metrics`` of a running gateway against docs/metrics.md, the catalogue and promtool.

One scrape of a real Engine: fake exchange (spot and USD-M over loopback), the Data
Bus on a nats-server of our own (so the JetStream publisher and the NATS Control Bus
export theirs), OTLP export to a receiver inside the test (so the exporter's own
counters appear), an analytics hook, and two ``/tail`` streams open.  Every family on
the page must be in the doc with the same type and labels, every family of the doc
must be on the page, and ``promtool check metrics`` must find nothing to say.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aio import run
from brokers import NatsServer, RedisServer
from otlp import OtlpReceiver
from promtools import documented, exported, promtool

from meltica.commands.common import local_overrides
from meltica.config import load_config
from meltica.engine import Engine
from meltica.replay.exchange import FakeExchange
from meltica.replay.faults import FaultPlan
from meltica.replay.synthetic import SyntheticMarket
from meltica.telemetry.catalog import FAMILIES


async def _scrape(nats_url: str, redis_url: str) -> str:
    source = SyntheticMarket(markets=("spot", "usdm"), symbols_per_market=2, seed=11)
    # three depth frames of one book dropped: a gap manifest entry, settled resynced
    dropped = source.symbols("spot")[0]
    fake = FakeExchange(
        source,
        speed=4.0,
        faults=FaultPlan.parse([f"drop:market=spot,symbol={dropped},at_frame=120,count=3"]),
    )
    await fake.start()
    receiver = OtlpReceiver()
    await receiver.start()
    overrides = [
        *local_overrides(
            {m: fake.ws_url(m) for m in source.markets},
            fake.rest_url,
            symbols={m: source.symbols(m) for m in source.markets},
        ),
        "telemetry.metrics_port=0",
        "binance.spot.streams=[trade, book_ticker, depth]",
        "binance.usdm.streams=[agg_trade, book_ticker, depth]",
        'conductor.analytics=["meltica.conductor.analytics:Mid"]',
        "bus.backend=nats",
        f"nats.url={nats_url}",
        f"telemetry.otlp_endpoint={receiver.url}",
        "telemetry.otlp_metrics_interval_s=0.5",
        "snapshot.backend=redis",
        f"snapshot.redis_url={redis_url}",
    ]
    engine = Engine(load_config(None, env={}, overrides=overrides))
    tails: list[Any] = []
    try:
        await engine.start()
        assert engine.metrics is not None
        url = engine.metrics.url
        async with aiohttp.ClientSession() as http:
            for _ in range(2):
                resp = await http.get(url + "/tail?kind=trade")
                assert resp.status == 200
                tails.append(resp)
            for resp in tails:
                assert await resp.content.readline()  # events reach each stream
            deadline = time.monotonic() + 60
            while True:
                async with http.get(url + "/metrics") as r:
                    text = await r.text()
                if (
                    "meltica_book_age_seconds{" in text
                    and "meltica_gaps_total{" in text
                    and not engine.not_ready()
                ):
                    break
                assert time.monotonic() < deadline, engine.not_ready()
                await asyncio.sleep(0.2)
            for resp in tails:
                resp.close()
        return text
    finally:
        await engine.stop()
        await fake.stop()
        await receiver.stop()


@pytest.fixture(scope="module")
def scrape(tmp_path_factory: pytest.TempPathFactory) -> str:
    server = NatsServer(Path(tmp_path_factory.mktemp("nats")))
    redis = RedisServer(Path(tmp_path_factory.mktemp("redis")))
    server.start()
    try:
        redis.start()
        return run(lambda: _scrape(server.url, redis.url))
    finally:
        redis.stop()
        server.stop()


def test_every_exported_family_is_documented_and_every_documented_one_exported(
    scrape: str,
) -> None:
    page, doc = exported(scrape), documented()
    assert sorted(set(page) - set(doc)) == [], "exported but not in docs/metrics.md"
    assert sorted(set(doc) - set(page)) == [], "in docs/metrics.md but never exported"
    wrong = {n: (page[n], doc[n]) for n in page if page[n] != doc[n]}
    assert wrong == {}, "type or labels differ (scrape, doc)"


def test_the_doc_lists_the_catalogue_as_declared() -> None:
    doc = documented()
    for name, fam in FAMILIES.items():
        assert doc.get("meltica_" + name) == (fam.kind, frozenset(fam.labels)), name


def test_promtool_check_metrics_is_clean(scrape: str) -> None:
    result = promtool("check", "metrics", stdin=scrape)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_every_stage_and_process_metric_has_data(scrape: str) -> None:
    lines = scrape.splitlines()

    def count(prefix: str) -> float:
        return sum(float(s.rsplit(" ", 1)[1]) for s in lines if s.startswith(prefix))

    for h in (
        "meltica_exchange_latency_seconds_count{market=",
        "meltica_pipeline_latency_seconds_count",
        'meltica_bus_delivery_latency_seconds_count{consumer="nats"}',
        'meltica_bus_delivery_latency_seconds_count{consumer="tail"}',
        "meltica_rest_request_duration_seconds_count{",
        'meltica_control_propagation_seconds_count{op="subscribe"}',
    ):
        assert count(h) > 0, h
    assert count("process_resident_memory_bytes") > 0
    assert count("meltica_ws_frames_total{") > 0


def test_tail_streams_share_one_consumer_series(scrape: str) -> None:
    consumers = {
        line.split('consumer="', 1)[1].split('"', 1)[0]
        for line in scrape.splitlines()
        if line.startswith("meltica_bus_consumer_")
    }
    assert consumers == {"nats", "tail"}
    assert 'meltica_bus_consumer_members{consumer="tail"} 2.0' in scrape

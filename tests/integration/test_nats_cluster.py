"""The Data Bus on a 3-node NATS cluster (three ``nats-server -js`` on loopback, routes
between them) with the stream at ``nats.replicas: 3``: ``replay`` publishes a real
capture, and the node the gateway is connected to is ``kill -9``-ed mid-replay.

The reference is the replay's own output: every event the in-memory bus accepted
(its ``block`` consumer writes them all). The stream, read back from a surviving
node, must hold exactly those keys, each once; and every trade id of the capture.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import nats
import pytest
from brokers import nats_cluster
from test_failover import capture_trade_ids
from test_nats_bus import (
    CAPTURE,
    HANG_GUARD_S,
    check_messages,
    read_lines,
    replay_cmd,
    report_of,
    stream_messages,
    wait_for_messages,
)

T = TypeVar("T")


async def wait_for_jetstream(urls: list[str]) -> None:
    """Until every node answers JetStream requests (the meta leader is elected)."""
    deadline = time.monotonic() + 60
    for url in urls:
        nc = await nats.connect(url)
        try:
            while True:
                try:
                    await nc.jetstream().account_info()
                    break
                except nats.errors.Error:
                    assert time.monotonic() < deadline, f"JetStream never ready on {url}"
                    await asyncio.sleep(0.2)
        finally:
            await nc.close()


async def stream_replicas(url: str) -> tuple[int, int, str]:
    """(configured replicas, replicas besides the leader, the leader's server name)."""
    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().stream_info("MELTICA")
        assert info.cluster is not None
        replicas = info.config.num_replicas or 0
        return replicas, len(info.cluster.replicas or []), info.cluster.leader or ""
    finally:
        await nc.close()


def retried(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a JetStream API exchange; its requests may time out on a loaded 3-node cluster
    and while two nodes elect a new leader, so they are retried (a hang guard only)."""
    for _ in range(20):
        try:
            return asyncio.run(make())
        except nats.errors.TimeoutError:
            time.sleep(1)
    raise AssertionError("JetStream requests kept timing out")


@pytest.mark.parametrize("victim", ["gateway_node", "stream_leader"])
def test_cluster_of_three_loses_a_node_mid_replay_and_loses_or_duplicates_nothing(
    captures_dir: Path, tmp_path: Path, victim: str
) -> None:
    """``gateway_node``: the node the gateway is connected to (it reconnects to another
    and resends what was unacknowledged); ``stream_leader``: the stream's leader (the
    remaining two elect a new one; the gateway's connection may stay up)."""
    nodes = nats_cluster(tmp_path, 3)
    out = tmp_path / "events.jsonl"
    proc = None
    try:
        for node in nodes:
            node.start()
        asyncio.run(wait_for_jetstream([n.url for n in nodes]))
        first, *others = nodes
        servers = "[" + ",".join(n.url for n in others) + "]"
        proc = subprocess.Popen(
            replay_cmd(
                captures_dir / CAPTURE,
                out,
                first.url,
                "--speed",
                "40",
                "--set",
                "nats.replicas=3",
                "--set",
                f"nats.servers={servers}",
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        retried(lambda: wait_for_messages(first.url, 20_000))
        replicas, followers, leader = retried(lambda: stream_replicas(first.url))
        assert (replicas, followers) == (3, 2)
        if victim == "gateway_node":
            # nats-py picks one of the URLs at random; its connection is meltica-<gateway id>
            (node,) = [n for n in nodes if any(c.startswith("meltica-") for c in n.client_names())]
        else:
            (node,) = [n for n in nodes if n.server_name == leader]
        node.kill()
        alive = [n for n in nodes if n is not node]
        _, stderr = proc.communicate(timeout=HANG_GUARD_S)
        assert proc.returncode == 0, stderr[-3000:]
        report = report_of(out)
        if victim == "gateway_node":
            assert report["nats"]["disconnects"] >= 1, report["nats"]
        assert report["nats"]["lost"] == 0
        bus = [e["key"] for e in read_lines(out)]
        streamed = check_messages(retried(lambda: stream_messages(alive[0].url)))
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for node in nodes:
            node.stop()
    keys = Counter(e["key"] for e in streamed)
    repeated = [k for k, n in keys.items() if n > 1]
    assert not repeated, f"duplicated in the stream: {repeated[:5]}"
    assert set(keys) == set(bus) and len(bus) == len(set(bus)), (
        f"lost {len(set(bus) - set(keys))}, extra {len(set(keys) - set(bus))}"
    )
    trades = [e["trade_id"] for e in streamed if e["kind"] == "trade"]
    assert Counter(trades) == Counter(capture_trade_ids(captures_dir / CAPTURE))

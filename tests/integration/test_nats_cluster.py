"""The Data Bus on a 3-node NATS cluster (three ``nats-server -js`` on loopback,
routes between them) with the stream at ``nats.replicas: 3``: ``replay`` (fake
exchange -> gateway, one process) publishes a real capture with ``nats.url`` one
node and ``nats.servers`` the other two, and one node is ``kill -9``-ed mid-replay.

The reference is the replay's own output: every event the in-memory bus accepted
(its ``block`` consumer writes them all).  An independent nats-py consumer of the
stream, on a surviving node, must read exactly those keys, each once, and every
trade id of the capture once; the gateway's window must be empty at shutdown.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import nats
import pytest
from brokers import NatsCluster, stream_messages
from test_failover import capture_trade_ids
from test_nats_bus import (
    CAPTURE,
    HANG_GUARD_S,
    check_messages,
    read_lines,
    replay_cmd,
    report_of,
    wait_for_messages,
)

T = TypeVar("T")
PUBLISH_BUFFER = 65_536  # nats.publish_buffer's default: the most one resend sends
# The capture lasts 344 s: about 23 s at 15x.  The node goes early, so that what is left
# of the replay plus the gateway's 10 s wait for acks at shutdown outlasts an election
# of the two remaining nodes (up to 17 s seen on a loaded 2-core machine) and the resend.
SPEED = "15"
KILL_AT = 5_000  # stream messages


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """A started 3-node JetStream cluster (a meta leader elected)."""
    nodes = NatsCluster(tmp_path / "cluster", 3)
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()


async def stream_cluster(url: str) -> tuple[int, int, str]:
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
    """Run a JetStream API exchange; its requests may time out on a loaded 3-node
    cluster and while two nodes elect a new leader, so they are retried (a hang
    guard only)."""
    for _ in range(30):
        try:
            return asyncio.run(make())
        except (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError):
            time.sleep(1)
    raise AssertionError("JetStream requests kept timing out")


@pytest.mark.parametrize("victim", ["stream_leader", "gateway_node"])
def test_cluster_of_three_loses_a_node_mid_replay_and_loses_or_duplicates_nothing(
    captures_dir: Path, tmp_path: Path, victim: str, cluster: NatsCluster
) -> None:
    """``stream_leader``: the stream's leader (the other two elect a new one; the
    gateway's connection may stay up and gets error replies meanwhile);
    ``gateway_node``: the node the gateway is connected to (it reconnects to
    another, which may have been the leader too)."""
    nodes = cluster.nodes
    first, *others = nodes
    out = tmp_path / "events.jsonl"
    log = tmp_path / "replay.log"
    servers = "[" + ",".join(n.url for n in others) + "]"
    with log.open("w") as err:
        proc = subprocess.Popen(
            replay_cmd(
                captures_dir / CAPTURE,
                out,
                first.url,
                "--speed",
                SPEED,
                "--set",
                "nats.replicas=3",
                "--set",
                f"nats.servers={servers}",
            ),
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=os.environ.copy(),
        )
    try:
        retried(lambda: wait_for_messages(first.url, KILL_AT))
        replicas, followers, leader = retried(lambda: stream_cluster(first.url))
        assert (replicas, followers) == (3, 2)
        if victim == "stream_leader":
            node = cluster.node(leader)
        else:
            # nats-py picks one of the URLs at random; its connection is meltica-<gateway id>
            (node,) = [n for n in nodes if any(c.startswith("meltica-") for c in n.client_names())]
        node.kill()
        alive = [n for n in nodes if n is not node]
        proc.wait(HANG_GUARD_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, log.read_text()[-3000:]
    report = report_of(out)["nats"]
    assert report["lost"] == 0 and report["window_depth"] == 0, report
    if victim == "gateway_node":
        assert report["disconnects"] >= 1, report
    # the loss held the publishes at least once (a reconnect, error replies or an
    # ack timeout); each outage sent its window again at most once, plus its probes
    assert report["outages"] >= 1, report
    assert report["republished"] <= report["outages"] * (PUBLISH_BUFFER + 64), report
    bus = [e["key"] for e in read_lines(out)]
    streamed = check_messages(retried(lambda: stream_messages(alive[0].url)))
    keys = Counter(e["key"] for e in streamed)
    repeated = [k for k, n in keys.items() if n > 1]
    assert not repeated, f"duplicated in the stream: {repeated[:5]}"
    assert set(keys) == set(bus) and len(bus) == len(set(bus)), (
        f"lost {len(set(bus) - set(keys))}, extra {len(set(keys) - set(bus))}"
    )
    trades = [e["trade_id"] for e in streamed if e["kind"] == "trade"]
    expected, _last_u = capture_trade_ids(captures_dir / CAPTURE)
    assert Counter(trades) == Counter(expected)

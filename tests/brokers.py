"""Real brokers for the tests: a ``nats-server -js`` of our own on a free loopback
port, with its JetStream store in a temporary directory, that a test can
``kill -9`` and restart on the same port and store; a 3-node JetStream cluster
of them (`NatsCluster`); a ``redis-server``.  Beside them, the client side the
tests share: connections that close themselves, a started JetStream publisher.

``.ci/run`` installs Debian's ``nats-server`` when it is missing.  Without it
the tests that need it skip on a workstation and fail with ``CI=true``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from meltica.bus import InMemoryDataBus
from meltica.bus.nats import NatsPublisher
from meltica.config import NatsConfig


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        reason = f"{binary} not found on PATH (Debian package {binary})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI=true requires it")
        pytest.skip(reason)
    return path


class _ServerProcess:
    """A server binary run by a test: its process, its log, SIGKILL and stop."""

    name = "server"
    proc: subprocess.Popen[bytes] | None = None
    log: Path

    @property
    def url(self) -> str:
        raise NotImplementedError

    def _launch(self, args: list[str], up: Callable[[], bool], timeout_s: float) -> None:
        """Start `args` and wait until `up()` (a probe of the port) says it answers."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}): {self._tail()}")
            try:
                if up():
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not come up on {self.url}: {self._tail()}")

    def _tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL, and wait for the process to be gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class NatsServer(_ServerProcess):
    """One ``nats-server -js`` process on 127.0.0.1.

    ``user``/``password`` or ``token`` turn on authentication.  ``kill()`` sends
    SIGKILL (no clean shutdown); ``start()`` again reuses the port and the store
    directory, as a restarted server would.
    """

    def __init__(
        self,
        store: Path,
        *,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
    ) -> None:
        self.binary = _need("nats-server")
        self.store = store
        store.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.user, self.password, self.token = user, password, token
        self.log = store / "nats-server.log"
        self.name = "nats-server"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 20.0) -> None:
        args = [self.binary, "-js", "-a", "127.0.0.1", "-p", str(self.port)]
        args += ["-sd", str(self.store / "js"), "-l", str(self.log)]
        if self.token:
            args += ["--auth", self.token]
        elif self.user:
            args += ["--user", self.user, "--pass", self.password or ""]

        def up() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                return s.recv(4096).startswith(b"INFO ") and self._jetstream_ready()

        self._launch(args, up, timeout_s)

    def _jetstream_ready(self) -> bool:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return False
        return "Server is ready" in text.rsplit("Starting nats-server", 1)[-1]


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A fresh JetStream-enabled nats-server for one test."""
    server = NatsServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class NatsClusterNode(_ServerProcess):
    """One ``nats-server -js`` node of a cluster on 127.0.0.1: client port, route
    port and monitoring port of its own, routes to the other nodes' route ports.
    ``start()`` after ``kill()`` reuses the ports and the store, as a restarted
    node would."""

    def __init__(self, store: Path, cluster: str, server_name: str, routes: list[int]) -> None:
        self.binary = _need("nats-server")
        self.store = store
        store.mkdir(parents=True, exist_ok=True)
        self.cluster, self.server_name = cluster, server_name
        self.port, self.monitor_port = free_port(), free_port()
        self.route_port = routes[0]
        self.routes = routes[1:]
        self.log = store / "nats-server.log"
        self.name = f"nats-server {server_name}"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 20.0) -> None:
        args = [self.binary, "-js", "-a", "127.0.0.1", "-p", str(self.port)]
        args += ["-sd", str(self.store / "js"), "-l", str(self.log), "-m", str(self.monitor_port)]
        args += ["--cluster_name", self.cluster, "--server_name", self.server_name]
        args += ["--cluster", f"nats://127.0.0.1:{self.route_port}"]
        args += ["--routes", ",".join(f"nats://127.0.0.1:{p}" for p in self.routes)]

        def up() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                return s.recv(4096).startswith(b"INFO ")

        self._launch(args, up, timeout_s)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def monitor(self, path: str) -> Any:
        """A JSON page of the node's monitoring port (``/jsz``, ``/connz``, ...)."""
        url = f"http://127.0.0.1:{self.monitor_port}{path}"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.loads(resp.read())

    def meta_leader(self) -> str:
        """The JetStream meta leader this node knows of ('' while there is none)."""
        return str((self.monitor("/jsz").get("meta_cluster") or {}).get("leader") or "")

    def client_names(self) -> list[str]:
        """The names of the clients connected to this node now."""
        return [c.get("name", "") for c in self.monitor("/connz").get("connections") or []]


class NatsCluster:
    """`n` JetStream nodes of one NATS cluster on loopback (``n1``..``nN``), full mesh
    of routes.  ``start()`` returns once every running node names the same JetStream
    meta leader, so streams with replicas can be created."""

    def __init__(self, root: Path, n: int = 3, name: str = "meltica") -> None:
        routes = [free_port() for _ in range(n)]
        self.nodes = [
            NatsClusterNode(root / f"n{i + 1}", name, f"n{i + 1}", routes[i:] + routes[:i])
            for i in range(n)
        ]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def node(self, server_name: str) -> NatsClusterNode:
        (node,) = [n for n in self.nodes if n.server_name == server_name]
        return node

    def start(self, timeout_s: float = 60.0) -> None:
        for node in self.nodes:
            node.start()
        self.wait_for_meta_leader(timeout_s)

    def wait_for_meta_leader(self, timeout_s: float = 60.0) -> str:
        """Until the running nodes agree on a meta leader; its server name."""
        deadline = time.monotonic() + timeout_s
        seen: set[str] = set()
        while time.monotonic() < deadline:
            try:
                seen = {n.meta_leader() for n in self.nodes if n.running}
            except OSError:
                seen = set()
            if len(seen) == 1 and "" not in seen:
                return seen.pop()
            time.sleep(0.1)
        tails = "\n".join(f"{n.server_name}: {n._tail()[-600:]}" for n in self.nodes)
        raise RuntimeError(f"no JetStream meta leader within {timeout_s}s ({seen}):\n{tails}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class RedisServer(_ServerProcess):
    """One ``redis-server`` on 127.0.0.1 with no persistence, its files in `dir`.

    ``kill()`` sends SIGKILL; ``start()`` again reuses the port (the data is
    gone: nothing is saved, as after a crash of a cache-only Redis).
    """

    def __init__(self, dir: Path) -> None:
        self.binary = _need("redis-server")
        self.dir = dir
        self.port = free_port()
        self.log = dir / "redis-server.log"
        self.name = "redis-server"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 20.0) -> None:
        args = [self.binary, "--bind", "127.0.0.1", "--port", str(self.port)]
        args += ["--dir", str(self.dir), "--save", "", "--appendonly", "no"]
        args += ["--logfile", str(self.log), "--daemonize", "no"]

        def up() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")

        self._launch(args, up, timeout_s)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server for one test."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def read_stream(nc: Any, stream: str = "MELTICA", timeout_s: float = 60.0) -> list[Any]:
    """Every message of ``stream``, in stream order, read by a consumer of our own
    (no acks) on the connected client ``nc``; fails when it cannot read them all."""
    js = nc.jetstream()
    total = (await js.stream_info(stream)).state.messages
    sub = await js.pull_subscribe(
        "meltica.>",
        stream=stream,
        config=ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL),
    )
    msgs: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(msgs) < total and time.monotonic() < deadline:
        try:
            msgs.extend(await sub.fetch(min(5000, total - len(msgs)), timeout=5))
        except nats.errors.TimeoutError:
            continue
    assert len(msgs) == total, f"read {len(msgs)} of {total} stream messages"
    return msgs


async def stream_messages(url: str, stream: str = "MELTICA") -> list[Any]:
    """`read_stream` on a connection of its own to ``url``."""
    nc = await nats.connect(url)
    try:
        return await read_stream(nc, stream)
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def nats_clients(url: str, n: int, **options: Any) -> AsyncIterator[list[nats.NATS]]:
    """``n`` client connections to ``url`` (``options`` as for ``nats.connect``),
    closed on the way out in the order they were made."""
    clients: list[nats.NATS] = []
    try:
        for _ in range(n):
            clients.append(await nats.connect(url, **options))
        yield clients
    finally:
        for nc in clients:
            await nc.close()


async def start_publisher(
    nc: nats.NATS,
    cfg: NatsConfig,
    capacity: int = 1 << 14,
    batch_size: int = 256,
    **options: Any,
) -> tuple[InMemoryDataBus, NatsPublisher]:
    """A fresh in-memory Data Bus and a started `NatsPublisher` on the client ``nc``
    that reads it (``options`` as for `NatsPublisher`)."""
    bus = InMemoryDataBus(capacity, batch_size=batch_size)
    pub = NatsPublisher(nc, cfg, bus, **options)
    await pub.start()
    return bus, pub

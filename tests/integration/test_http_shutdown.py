"""The gateway's HTTP side as a user meets it: ``python -m meltica run`` as a process
against the fake exchange (also a process), with raw HTTP ``/tail`` clients.

- SIGTERM ends the gateway promptly with 50 ``/tail`` clients attached: some read, some
  never read (their handlers sit blocked in a socket write), some hung up.  The gateway
  ends the streams itself: readers see the chunked terminator.
- ``run --duration N`` ends on time with tail clients attached, ``meltica-engine tail``
  ones included.
- ``/tail?kind=bogus`` is a 400 that lists the valid kinds, never a 500 and a traceback.
- A snapshot that stays stale is refetched with a growing backoff, counted in /metrics and
  explained by /readyz.

The only wall-time assertions are the ones the gateway promises (exit within 2 s of
SIGTERM; ``--duration`` ends on time), as generous hang guards.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import aiohttp
from aio import run

from meltica.commands.common import local_overrides
from meltica.config import load_config
from meltica.engine import Engine
from meltica.replay.exchange import FakeExchange
from meltica.replay.faults import FaultPlan
from meltica.replay.synthetic import SyntheticMarket

SYMBOLS = ["btcusdt", "ethusdt"]


def wait_until(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll another process's state (no event crosses the process boundary)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


@contextlib.contextmanager
def fake_exchange(tmp: Path) -> Iterator[tuple[str, str]]:
    """A synthetic spot market on loopback: (ws url, rest url)."""
    with open(tmp / "fake.err", "wb") as err:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "meltica", "fake-exchange", "--synthetic"),
                *("--markets", "spot", "--symbols", "2", "--speed", "4", "--seed", "5"),
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=os.environ.copy(),
        )
    try:
        urls: dict[str, str] = {}
        assert proc.stdout is not None
        while "rest" not in urls:
            line = proc.stdout.readline()
            assert line, (tmp / "fake.err").read_text()
            name, _, url = line.strip().partition(": ")
            urls[name] = url
        yield urls["ws spot"], urls["rest"]
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


class Gateway:
    """``python -m meltica run`` on the fake exchange; its log is kept in memory."""

    def __init__(self, ws: str, rest: str, *extra: str) -> None:
        overrides = [
            *local_overrides({"spot": ws}, rest, symbols={"spot": SYMBOLS}),
            "binance.spot.streams=[trade, book_ticker, depth]",
            "telemetry.metrics_port=0",
            # small enough that a tail client that never reads falls behind quickly
            "bus.capacity=1024",
            "bus.batch_size=64",
        ]
        cmd = [sys.executable, "-m", "meltica", "--log-level", "INFO", "run"]
        for o in overrides:
            cmd += ["--set", o]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [*cmd, *extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=os.environ.copy(),
        )
        self.log: list[str] = []
        self._url: str | None = None
        self._have_url = threading.Event()
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()
        if not self._have_url.wait(60):
            self.kill()
            raise AssertionError("no metrics URL in the gateway's log:\n" + self.text)
        self.url_seen = time.monotonic()

    def _read_log(self) -> None:
        stream: IO[str] | None = self.proc.stderr
        assert stream is not None
        for line in stream:
            self.log.append(line)
            m = re.search(r"starting: .* metrics (http://\S+)/metrics", line)
            if m:
                self._url = m.group(1)
                self._have_url.set()
        self._have_url.set()

    @property
    def url(self) -> str:
        assert self._url is not None, self.text
        return self._url

    @property
    def host_port(self) -> tuple[str, int]:
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        return host, int(port)

    @property
    def text(self) -> str:
        return "".join(self.log)

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metric(self, name: str, **labels: str) -> list[float]:
        """Values of ``meltica_<name>`` whose labels include ``labels``."""
        _, body = self.get("/metrics")
        out = []
        for line in body.splitlines():
            m = re.match(rf"meltica_{name}(?:{{(.*)}})? (\S+)$", line)
            if m and all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
                out.append(float(m.group(2)))
        return out

    def wait_exit(self, timeout: float) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(10)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


class TailClients:
    """Raw HTTP/1.1 ``GET /tail`` clients: readers (drained by a thread, which records
    whether each stream ended with the chunked terminator), sockets that never read
    (tiny receive buffers, so the gateway's writes to them block) and clients that
    hang up once the response started."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.readers: dict[socket.socket, bytearray] = {}
        self.silent: list[socket.socket] = []
        self.ended: dict[socket.socket, bool] = {}
        self._sel = selectors.DefaultSelector()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def _connect(self, query: str, rcvbuf: int | None = None) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.connect((self.host, self.port))
        s.sendall(f"GET /tail{query} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
        return s

    def add_readers(self, n: int) -> None:
        for _ in range(n):
            s = self._connect("")
            s.setblocking(False)
            self.readers[s] = bytearray()
            self._sel.register(s, selectors.EVENT_READ)

    def add_silent(self, n: int) -> None:
        self.silent += [self._connect("", rcvbuf=1024) for _ in range(n)]

    def add_hangups(self, n: int, query: str = "?kind=liquidation") -> None:
        """Clients of a stream with no events (spot has no liquidations) that hang up
        once the headers came: their handlers must end with no event to write."""
        for _ in range(n):
            s = self._connect(query)
            s.settimeout(30)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = s.recv(4096)
                assert chunk, "closed before the response headers"
                head += chunk
            assert head.startswith(b"HTTP/1.1 200"), head[:100]
            s.close()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while self.readers.keys() - self.ended.keys() and not self._stop.is_set():
            for key, _ in self._sel.select(0.2):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                try:
                    data = s.recv(1 << 16)
                except (BlockingIOError, InterruptedError):
                    continue
                except ConnectionError:
                    data = b""
                buf = self.readers[s]
                if data:
                    buf += data
                    del buf[: max(0, len(buf) - 16)]  # only the tail matters
                    continue
                self.ended[s] = buf.endswith(b"0\r\n\r\n")
                self._sel.unregister(s)

    def join(self, timeout: float) -> None:
        assert self._thread is not None
        self._thread.join(timeout)
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
        for s in [*self.readers, *self.silent]:
            s.close()


def test_sigterm_with_50_tail_clients_exits_within_2s(tmp_path: Path) -> None:
    with fake_exchange(tmp_path) as (ws, rest):
        gw = Gateway(ws, rest)
        clients = TailClients(*gw.host_port)
        try:
            wait_until(lambda: gw.get("/readyz")[0] == 200, 60, "gateway ready")

            status, body = gw.get("/tail?kind=bogus")
            assert status == 400, (status, body)
            assert "'bogus'" in body and "book_ticker" in body and "trade" in body, body

            clients.add_readers(20)
            clients.add_silent(20)
            clients.start()
            clients.add_hangups(10)
            # the hung-up clients' handlers end although nothing is ever written to them
            wait_until(
                lambda: (
                    gw.metric("tail_opened_total") == [50.0] and gw.metric("tail_open") == [40.0]
                ),
                30,
                "40 /tail streams open after 10 hung up",
            )
            # the clients that never read have fallen behind: their handlers are stuck in
            # a write, and their consumers drop (drop_oldest), the gateway moves on
            wait_until(
                lambda: sum(gw.metric("bus_consumer_dropped_total")) > 0,
                60,
                "a /tail consumer dropping events",
            )

            t0 = time.monotonic()
            gw.proc.send_signal(signal.SIGTERM)
            try:
                rc = gw.wait_exit(30)
            except subprocess.TimeoutExpired:
                raise AssertionError("the gateway did not exit within 30 s of SIGTERM") from None
            elapsed = time.monotonic() - t0
            assert rc == 0, gw.text[-3000:]
            assert elapsed < 2.0, f"exit took {elapsed:.2f} s after SIGTERM"
            # the clients that never read did not hold it up: their connections were cut
            assert re.search(r"aborting \d+ /tail connection", gw.text), gw.text[-3000:]

            clients.join(10)
            assert len(clients.ended) == 20, "a reader's stream was not ended"
            assert all(clients.ended.values()), "a reader's stream ended without terminator"
            assert "Traceback" not in gw.text, gw.text[-3000:]
        finally:
            clients.close()
            gw.kill()


def test_duration_run_ends_on_time_with_tail_clients(tmp_path: Path) -> None:
    duration = 5.0
    with fake_exchange(tmp_path) as (ws, rest):
        gw = Gateway(ws, rest, "--duration", str(duration))
        clients = TailClients(*gw.host_port)
        tails: list[subprocess.Popen[str]] = []
        try:
            clients.add_readers(3)
            clients.add_silent(3)
            clients.start()
            clients.add_hangups(2)

            def tail_cli(*args: str) -> subprocess.Popen[str]:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "meltica", "tail", "--url", gw.url, *args],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=os.environ.copy(),
                )
                tails.append(proc)
                return proc

            bogus = tail_cli("--kind", "bogus")
            _, err = bogus.communicate(timeout=60)
            assert bogus.returncode == 2, err
            assert err.count("\n") == 1 and "valid kinds" in err, err
            # one tail that hangs up after 3 events, one that reads to the end
            quitter = tail_cli("--count", "3")
            stayer = tail_cli()
            _, err = quitter.communicate(timeout=60)
            assert quitter.returncode == 0, err

            try:
                rc = gw.wait_exit(duration + 30)
            except subprocess.TimeoutExpired:
                raise AssertionError("the gateway ignored --duration") from None
            took = time.monotonic() - gw.url_seen
            assert rc == 0, gw.text[-3000:]
            # the run started before its URL was logged, so this is an upper bound
            assert took < duration + 2.0, f"--duration {duration} took {took:.2f} s"
            # the gateway ended the stream itself: the tail command ends cleanly
            _, err = stayer.communicate(timeout=10)
            assert stayer.returncode == 0, err
            clients.join(10)
            assert len(clients.ended) == 3 and all(clients.ended.values())
            assert "Traceback" not in gw.text, gw.text[-3000:]
        finally:
            clients.close()
            for proc in tails:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            gw.kill()


def test_stale_snapshot_backs_off_and_readiness_says_why() -> None:
    """Every depth snapshot of one symbol is older than the stream: the Conductor keeps
    refetching it through the real REST client, with growing intervals, and /metrics and
    /readyz report the condition while the other book goes live."""
    source = SyntheticMarket(markets=("spot",), symbols_per_market=2, seed=7)
    stuck, fine = source.symbols("spot")
    faults = FaultPlan.parse([f"rest_stale:market=spot,symbol={stuck},count=100000"])

    async def scenario() -> None:
        fake = FakeExchange(source, speed=4.0, faults=faults)
        await fake.start()
        try:
            await stuck_book(fake)
        finally:
            await fake.stop()

    async def stuck_book(fake: FakeExchange) -> None:
        overrides = [
            *local_overrides(
                {"spot": fake.ws_url("spot")}, fake.rest_url, symbols={"spot": [stuck, fine]}
            ),
            "binance.spot.streams=[trade, depth]",
            "telemetry.metrics_port=0",
            "conductor.snapshot_retry_s=0.1",
            "conductor.snapshot_retry_max_s=1.6",
        ]
        engine = Engine(load_config(None, env={}, overrides=overrides))
        fetched: list[float] = []
        depth_snapshot = engine.rest.depth_snapshot

        async def recorded(market: str, symbol: str, *a: Any, **kw: Any) -> Any:
            if symbol == stuck:
                fetched.append(time.monotonic())
            return await depth_snapshot(market, symbol, *a, **kw)

        engine.rest.depth_snapshot = recorded  # type: ignore[method-assign]
        try:
            await engine.start()
            assert engine.metrics is not None
            async with aiohttp.ClientSession() as http:
                deadline = time.monotonic() + 60
                while len(fetched) < 8:
                    assert time.monotonic() < deadline, f"only {len(fetched)} fetches"
                    await asyncio.sleep(0.1)
                async with http.get(engine.metrics.url + "/readyz") as resp:
                    assert resp.status == 503
                    ready_body = await resp.text()
                async with http.get(engine.metrics.url + "/metrics") as resp:
                    metrics = await resp.text()
            gaps = [b - a for a, b in itertools.pairwise(fetched)]
            # 0, 0.1, 0.2, 0.4, 0.8, 1.6, 1.6 s (x 0.75..1 jitter) plus each request's own
            # time: the intervals keep growing (a fixed retry period would not)
            assert gaps[5] > 1.4 * gaps[3] and gaps[4] > 2 * gaps[1], gaps
            inst = engine.conductor.status()["instruments"]
            assert inst[f"spot:{fine}"]["state"] == "live"
            assert inst[f"spot:{stuck}"]["state"] == "syncing"
            assert inst[f"spot:{stuck}"]["snapshot_backoffs"] >= 5, inst[f"spot:{stuck}"]
            assert f"spot:{stuck}: syncing, stale_snapshot x" in ready_body, ready_body
            assert f"spot:{fine}" not in ready_body, ready_body
            streak = re.search(
                rf'meltica_book_snapshot_retry_streak{{market="spot",symbol="{stuck}"}} (\S+)',
                metrics,
            )
            assert streak is not None and float(streak.group(1)) >= 7, metrics
            backoffs = re.search(
                rf'meltica_book_snapshot_backoffs_total{{market="spot",symbol="{stuck}"}} (\S+)',
                metrics,
            )
            assert backoffs is not None and float(backoffs.group(1)) >= 5, metrics
        finally:
            await engine.stop()

    run(scenario)

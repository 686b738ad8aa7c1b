"""Interleaved-rounds timing for a noisy 2-core machine.

Every round runs every candidate once, in a rotated order, with the garbage
collector off while timing, so drift hits all candidates alike.  Reports the
median ns per operation over rounds and the ratio to a named baseline.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def measure(
    candidates: dict[str, Callable[[], object]], ops: int, rounds: int = 7, warmup: int = 1
) -> dict[str, float]:
    """Median ns/op of each zero-argument callable that performs ``ops`` operations."""
    names = list(candidates)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(warmup):
        for n in names:
            candidates[n]()
    for r in range(rounds):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            gc.collect()
            gc.disable()
            t0 = time.perf_counter_ns()
            candidates[n]()
            elapsed = time.perf_counter_ns() - t0
            gc.enable()
            samples[n].append(elapsed / ops)
    return {n: statistics.median(v) for n, v in samples.items()}


def free_port() -> int:
    """A free TCP port on loopback (free when asked: bind it soon)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_nats(store: str | Path) -> tuple[subprocess.Popen[bytes], str]:
    """``nats-server -js`` on a free loopback port with its store in ``store``;
    (process, URL) once it accepts connections and JetStream is up."""
    binary = shutil.which("nats-server")
    if binary is None:
        raise SystemExit("nats-server not found on PATH")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                time.sleep(0.5)  # JetStream comes up just after the port
                return proc, f"nats://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("nats-server did not start")


async def stop_process(proc: asyncio.subprocess.Process, timeout_s: float) -> None:
    """SIGTERM, then SIGKILL when it has not exited after ``timeout_s``."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (the platform's name without it)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()

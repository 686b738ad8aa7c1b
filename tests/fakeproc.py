"""A synthetic fake exchange in its own process (``meltica-engine fake-exchange``),
for tests that run the gateway as a user would: a real ``run`` subprocess
against loopback URLs."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def fake_exchange(*args: str) -> Iterator[tuple[dict[str, str], str]]:
    """Start ``fake-exchange --synthetic ARGS``; yields (ws urls by market, rest url)
    once it printed them, and stops the process on exit."""
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "meltica", "--log-level", "WARNING", "fake-exchange"),
            *("--synthetic", *args),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        ws: dict[str, str] = {}
        rest = ""
        assert proc.stdout is not None
        while not rest:
            line = proc.stdout.readline()
            assert line, "the fake exchange exited before printing its URLs"
            head, _, url = line.strip().partition(": ")
            if head.startswith("ws "):
                ws[head[3:]] = url
            elif head == "rest":
                rest = url
        yield ws, rest
    finally:
        proc.terminate()
        proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()

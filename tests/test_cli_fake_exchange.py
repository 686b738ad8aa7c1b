"""``meltica-engine fake-exchange`` as a separate process, reached over loopback."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect


class Count(WSListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.frames = 0
        self.closed = asyncio.get_running_loop().create_future()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            self.frames += 1

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


def start(args: list[str], cwd: Path) -> tuple[subprocess.Popen[str], dict[str, str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "meltica", "fake-exchange", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env=os.environ.copy(),
    )
    urls: dict[str, str] = {}
    assert proc.stdout is not None
    while "rest" not in urls:
        line = proc.stdout.readline()
        assert line, f"fake-exchange exited early: {proc.stderr.read() if proc.stderr else ''}"
        name, _, url = line.strip().partition(": ")
        urls[name] = url
    return proc, urls


def frames_until_closed(proc: subprocess.Popen[str], url: str) -> tuple[int, str]:
    """Count text frames on ``url`` until the server closes; then the process's stderr."""

    async def client() -> int:
        listener = Count()
        transport, _ = await ws_connect(lambda: listener, url)
        await asyncio.wait_for(listener.closed, 120)
        transport.disconnect()
        return listener.frames

    try:
        frames = uvloop.run(client())
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return frames, stderr


def test_serves_a_capture_until_done(captures_dir: Path, tmp_path: Path) -> None:
    capture = captures_dir / "hftbacktest/examples/spot/btcusdt_20240808.gz"
    proc, urls = start(
        [str(capture), "--speed", "max", "--exit-when-done", "--duration", "120"], tmp_path
    )
    streams = "btcusdt@depth@100ms/btcusdt@trade/btcusdt@bookTicker"
    frames, stderr = frames_until_closed(proc, f"{urls['ws spot']}/stream?streams={streams}")
    assert proc.returncode == 0, stderr
    assert frames == 41_248  # every ws frame of the capture (41,249 lines, 1 of them REST)
    assert "frames read: 41248" in stderr


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meltica", "fake-exchange", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=os.environ.copy(),
        timeout=60,
    )


def test_bad_fault_spec_is_a_clear_error(tmp_path: Path) -> None:
    result = run_cli(["--fault", "explode:count=1"], tmp_path)
    assert result.returncode == 2
    assert "unknown fault kind 'explode'" in result.stderr


def test_missing_capture_exits_2(tmp_path: Path) -> None:
    result = run_cli([str(tmp_path / "nope.gz")], tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error:")


def test_capture_and_synthetic_together_is_an_error(tmp_path: Path) -> None:
    result = run_cli(["some.gz", "--synthetic"], tmp_path)
    assert result.returncode == 2
    assert "not both" in result.stderr


def test_synthetic_market_is_served(tmp_path: Path) -> None:
    proc, urls = start(
        ["--synthetic", "--symbols", "2", "--speed", "5", "--duration", "3"], tmp_path
    )
    assert set(urls) == {"ws spot", "ws usdm", "rest"}
    url = f"{urls['ws spot']}/stream?streams=btcusdt@trade/btcusdt@depth@100ms"
    frames, stderr = frames_until_closed(proc, url)  # the server stops after --duration
    assert proc.returncode == 0, stderr
    assert frames > 0


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--symbols", "-3"], "--symbols: must be at least 1, got -3"),
        (["--symbols", "x"], "--symbols: expected a whole number"),
        (["--markets", "bogus"], "--markets: 'bogus': expected a comma-separated list"),
        (["--markets", "spot,nope"], "--markets: 'spot,nope'"),
    ],
)
def test_bad_synthetic_arguments_are_one_line(tmp_path: Path, args: list[str], says: str) -> None:
    result = run_cli(["--synthetic", *args, "--duration", "1"], tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert says in result.stderr

"""Logging as an operator meets it: ``log.level`` / ``MELTICA_LOG__LEVEL`` /
``--log-level`` (before or after the command), the start-up line and state
changes of ``run`` at the default level, and credentials masked in every line.

``run`` goes against a fake exchange in its own process over loopback.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fakeproc import fake_exchange

import meltica
from meltica.commands.common import local_overrides
from meltica.replay.synthetic import SyntheticMarket


def cli(
    args: list[str], env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.upper().startswith("MELTICA_LOG")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "meltica", *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def gateway_overrides() -> Iterator[list[str]]:
    """``--set`` overrides pointing ``run`` at a synthetic fake exchange (one spot symbol)."""
    with fake_exchange("--markets", "spot", "--symbols", "1", "--duration", "600") as (ws, rest):
        symbols = {"spot": SyntheticMarket(markets=("spot",), symbols_per_market=1).symbols("spot")}
        overrides = [*local_overrides(ws, rest, symbols=symbols), "telemetry.metrics_port=0"]
        yield [arg for o in overrides for arg in ("--set", o)]


def test_run_logs_start_up_line_and_state_changes_at_the_default_level(
    gateway_overrides: list[str],
) -> None:
    proc = cli(["run", "--duration", "2", *gateway_overrides])
    assert proc.returncode == 0, proc.stderr[-3000:]
    err = proc.stderr
    banner = re.search(
        rf"INFO meltica\.engine: meltica-engine {re.escape(meltica.__version__)} starting: "
        r"markets spot, 1 symbols, metrics (http://127\.0\.0\.1:\d+/metrics)",
        err,
    )
    assert banner, err[-3000:]
    assert not banner.group(1).endswith(":0/metrics")  # the port actually bound
    assert "INFO meltica.engine: running: " in err
    assert "INFO meltica.engine: stop after --duration 2.0s" in err
    assert "INFO meltica.engine: stopped" in err
    assert " DEBUG " not in err


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--set", "log.level=WARNING"], {}),
        ([], {"MELTICA_LOG__LEVEL": "WARNING"}),
        (["--log-level", "WARNING"], {"MELTICA_LOG__LEVEL": "DEBUG"}),  # the flag wins
    ],
    ids=["config-key", "env", "flag-after-command"],
)
def test_log_level_from_config_env_or_flag_is_applied(
    gateway_overrides: list[str], args: list[str], env: dict[str, str]
) -> None:
    proc = cli(["run", "--duration", "1", *gateway_overrides, *args], env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert " INFO " not in proc.stderr and " DEBUG " not in proc.stderr, proc.stderr[-3000:]


def test_debug_level_from_config_shows_debug_lines(gateway_overrides: list[str]) -> None:
    proc = cli(["run", "--duration", "2", *gateway_overrides, "--set", "log.level=DEBUG"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert " DEBUG meltica." in proc.stderr


def test_log_level_is_accepted_after_any_command(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("bus:\n  capacity: 1024\n")
    for args in (
        ["check-config", str(path), "--log-level", "DEBUG"],
        ["--log-level", "ERROR", "check-config", str(path)],
    ):
        proc = cli(args)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(f"ok: {path}")


def test_bad_log_levels_fail_with_one_line_naming_the_source(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("{}\n")
    proc = cli(["check-config", str(path), "--log-level", "LOUD"])
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: --log-level: unknown log level 'LOUD'")
    assert proc.stderr.count("\n") == 1
    proc = cli(["check-config", str(path)], env={"MELTICA_LOG__LEVEL": "LOUD"})
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ")
    assert "Traceback" not in proc.stderr


def test_bad_key_is_a_start_up_error_naming_it(gateway_overrides: list[str]) -> None:
    bad = ["--set", "snapshot.backend=redis", "--set", "snapshot.redis_url=redis://h:70000/0"]
    proc = cli(["run", "--duration", "1", *gateway_overrides, *bad])
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: snapshot.redis_url: "), proc.stderr
    assert "Traceback" not in proc.stderr


def test_log_lines_mask_url_credentials() -> None:
    code = (
        "from meltica import log; log.configure('INFO'); "
        "log.root.warning('cannot reach %s', 'redis://:hunter2@10.0.0.5:6379/0'); "
        "log.root.warning('nats at nats://ops:pa55@127.0.0.1:4222 and https://x.example/')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "hunter2" not in proc.stderr and "pa55" not in proc.stderr
    assert "redis://:***@10.0.0.5:6379/0" in proc.stderr
    assert "nats://ops:***@127.0.0.1:4222" in proc.stderr
    assert "https://x.example/" in proc.stderr


def _json_lines(stderr: str) -> list[dict[str, Any]]:
    """Every stderr line parsed as JSON (a line that is not JSON fails the test), but
    the CLI's own one-line ``error: ...`` exit message."""
    lines = []
    for line in stderr.splitlines():
        if line.startswith("error: "):
            continue
        try:
            lines.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON log line: {line!r}")
    return lines


def _check_shape(entry: dict[str, Any]) -> None:
    assert {"timestamp", "level", "logger", "message"} <= entry.keys(), entry
    stamp = datetime.fromisoformat(entry["timestamp"])
    assert entry["timestamp"].endswith("Z") and stamp.utcoffset() == timedelta(0)
    assert entry["level"] in ("TRACE", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--log-format", "json"], {}),
        (["--set", "log.format=json"], {}),
        ([], {"MELTICA_LOG__FORMAT": "json"}),
    ],
    ids=["flag", "config-key", "env"],
)
def test_run_logs_json_lines_with_market_symbol_and_connection(
    gateway_overrides: list[str], args: list[str], env: dict[str, str]
) -> None:
    proc = cli(["run", "--duration", "2", *gateway_overrides, *args], env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = _json_lines(proc.stderr)
    for entry in lines:
        _check_shape(entry)
    by_message = {e["message"]: e for e in lines}
    banner = next(e for e in lines if " starting: markets spot" in e["message"])
    assert banner["level"] == "INFO" and banner["logger"] == "meltica.engine"
    assert " simdjson kernel " in banner["message"]
    connected = next(e for e in lines if e["message"].endswith(": connected (open)"))
    assert connected["level"] == "INFO"
    assert connected["market"] == "spot" and connected["connection"].startswith("spot-")
    synced = next(e for e in lines if ": book synced at u=" in e["message"])
    assert synced["level"] == "INFO" and synced["logger"] == "meltica.conductor"
    assert synced["market"] == "spot"
    assert synced["symbol"] == synced["message"].split()[1].rstrip(":")
    assert by_message["stopped"]["level"] == "INFO"
    assert any(e["message"].startswith("stop after --duration") for e in lines)


def test_json_lines_mask_credentials_through_the_cli(gateway_overrides: list[str]) -> None:
    """A connection URL with a password, refused: its log line says so, password masked."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connecting is refused
    url = f"ws://ops:hunter2@127.0.0.1:{port}"
    proc = cli(
        [
            *("run", "--duration", "2", *gateway_overrides),
            *("--set", f"binance.spot.ws_url={url}", "--set", "binance.ack_timeout_s=1"),
        ],
        env={"MELTICA_LOG__FORMAT": "json"},
    )
    assert "hunter2" not in proc.stderr
    lines = _json_lines(proc.stderr)
    failed = [e for e in lines if " failed: " in e["message"] and "connect to" in e["message"]]
    assert failed, proc.stderr[-3000:]
    assert "ws://ops:***@127.0.0.1" in failed[0]["message"]
    assert failed[0]["market"] == "spot" and failed[0]["connection"].startswith("spot-")


def test_json_line_carries_the_exception_as_a_field() -> None:
    code = (
        "from meltica import log; log.configure('INFO', 'json')\n"
        "try:\n    raise ValueError('bad at redis://:hunter2@10.0.0.5/0')\n"
        "except ValueError:\n"
        "    log.root.exception('failed', extra=log.fields(market='usdm', symbol='BTCUSDT'))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    (entry,) = _json_lines(proc.stderr)
    _check_shape(entry)
    assert entry["level"] == "ERROR" and entry["message"] == "failed"
    assert (entry["market"], entry["symbol"]) == ("usdm", "BTCUSDT")
    assert "connection" not in entry
    assert entry["exception"].startswith("Traceback") and "ValueError" in entry["exception"]
    assert "hunter2" not in entry["exception"] and "redis://:***@" in entry["exception"]


def test_bad_log_format_fails_at_start_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("log:\n  format: xml\n")
    proc = cli(["check-config", str(path)])
    assert proc.returncode == 2
    assert "log.format" in proc.stderr and "'xml'" in proc.stderr
    proc = cli(["run", "--config", str(path), "--duration", "1"])
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.startswith("error: log.format: "), proc.stderr
    assert "Traceback" not in proc.stderr
    proc = cli(["check-config", str(path), "--log-format", "xml"])
    assert proc.returncode == 2
    assert proc.stderr == "error: --log-format: unknown log format 'xml' (one of text, json)\n"

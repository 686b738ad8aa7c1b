"""Logging as an operator meets it: ``log.level`` / ``MELTICA_LOG__LEVEL`` /
``--log-level`` (before or after the command), the start-up line and state
changes of ``run`` at the default level, and credentials masked in every line.

``run`` goes against a fake exchange in its own process over loopback.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

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


def test_reserved_key_is_a_start_up_error_naming_it(gateway_overrides: list[str]) -> None:
    proc = cli(["run", "--duration", "1", *gateway_overrides, "--set", "snapshot.backend=redis"])
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: snapshot.backend: "), proc.stderr
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

"""Who may call ``POST /control``: the decision `control_access` makes from the
address the gateway's HTTP server binds and ``telemetry.control_token``
(tests/integration/test_ctl_gateways.py calls a real server off loopback)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meltica.bus.control_http import control_access, is_loopback
from meltica.config import check_config


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.0.0.2", "127.255.255.254", "::1", "[::1]", "localhost", "LOCALHOST"]
)
def test_loopback_binds(host: str) -> None:
    assert is_loopback(host)
    assert control_access(host, None) == "open"
    assert control_access(host, "t") == "token"  # a configured token is always required


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "::", "192.0.2.2", "10.1.2.3", "::ffff:10.0.0.1", "gateway.example", ""]
)
def test_other_binds_need_a_token(host: str) -> None:
    assert not is_loopback(host)
    assert control_access(host, None) == "refused"
    assert control_access(host, "t") == "token"


def test_check_config_masks_the_control_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("telemetry:\n  control_token: hunter2-secret\n")
    assert check_config(str(path), env={}) == 0
    out = capsys.readouterr().out
    assert "hunter2-secret" not in out and "control_token: '***'" in out

"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from brokers import nats_server, redis_server  # noqa: F401 - fixtures for every test module


@pytest.fixture(scope="session")
def captures_dir() -> Path:
    """The real Binance captures: ``$MELTICA_CAPTURES`` or ``../shared/captures/binance``.

    Absent, tests that need them skip on a workstation but fail when ``CI=true``, so a wrong
    path in CI can never turn into silent skips.
    """
    env = os.environ.get("MELTICA_CAPTURES")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / "shared/captures/binance"
    if not root.is_dir():
        reason = f"real captures not found at {root} (set MELTICA_CAPTURES)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI=true requires them")
        pytest.skip(reason)
    return root

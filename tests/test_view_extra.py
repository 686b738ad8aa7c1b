"""The 'view' extra (rich, hdrhistogram): only demo, top and replay need it.

Each case runs the real CLI in a child interpreter in which importing ``rich`` or
``hdrh`` fails, as in an install without the extra: the commands that draw the view
are a one-line error naming the extra; the gateway's own commands still work.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CONFIG = Path(__file__).resolve().parents[1] / "config" / "default.yaml"

WITHOUT_VIEW = """
import sys

class NoViewExtra:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("rich", "hdrh"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoViewExtra())
from meltica.cli import main
sys.exit(main(sys.argv[1:]))
"""


def cli_without_view(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_VIEW, *args],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["demo", "--duration", "1", "--no-view"],
        ["top", "--once"],
        ["replay", "no-such-capture.gz"],
    ],
)
def test_view_commands_name_the_extra(argv: list[str]) -> None:
    proc = cli_without_view(*argv)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (
        f"error: meltica-engine {argv[0]} needs the 'view' extra (rich, hdrhistogram not "
        "installed): pip install 'meltica-engine[view]'\n"
    )


def test_gateway_commands_run_without_the_extra(tmp_path: Path) -> None:
    proc = cli_without_view("check-config", str(CONFIG))
    assert proc.returncode == 0, proc.stderr
    proc = cli_without_view("run", "--help")
    assert proc.returncode == 0, proc.stderr
    # the gateway itself imports without rich/hdrh (run builds an Engine from these)
    probe = (
        WITHOUT_VIEW.split("from meltica.cli")[0]
        + "import meltica.engine, meltica.commands.run, meltica.normalize, meltica.record\n"
        + "assert not [m for m in sys.modules if m.startswith(('rich', 'hdrh'))]\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr


def test_with_the_extra_installed_demo_gets_past_the_check() -> None:
    """The check passes when rich and hdrhistogram import (this environment has them)."""
    from meltica.cli import view_extra_missing

    assert view_extra_missing("demo") is None

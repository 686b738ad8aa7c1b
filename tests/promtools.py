"""Prometheus in the tests: the ``promtool`` / ``prometheus`` binaries (Debian package
``prometheus``; ``.ci/run`` installs it), a parser for the exposition text, and the
metric tables of docs/metrics.md.

Without the binaries the tests that need them skip on a workstation and fail with
``CI=true`` (`brokers._need`).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from brokers import _need
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs/metrics.md"
DEPLOY = ROOT / "deploy"


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``promtool ARGS`` (from the repository root)."""
    return subprocess.run(
        [_need("promtool"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def exported(text: str) -> dict[str, tuple[str, frozenset[str]]]:
    """Family name as on its ``# TYPE`` line -> (type, label names) of a scrape."""
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    out: dict[str, tuple[str, frozenset[str]]] = {}
    for fam in text_string_to_metric_families(text):
        name = fam.name + "_total" if fam.type == "counter" else fam.name
        labels = {k for s in fam.samples for k in s.labels} - {"le"}
        assert name in types, f"{name} has no TYPE line"
        out[name] = (types[name], frozenset(labels))
    assert set(out) == set(types), set(types) ^ set(out)
    return out


_ROW = re.compile(
    r"^\| `([a-z_:][a-z0-9_:]*)` \| (counter|gauge|histogram) \| ([^|]*) \| ([^|]*) \|"
)


def documented() -> dict[str, tuple[str, frozenset[str]]]:
    """Name -> (type, label names) of every metric row of docs/metrics.md."""
    out: dict[str, tuple[str, frozenset[str]]] = {}
    for line in DOC.read_text().splitlines():
        m = _ROW.match(line)
        if m:
            name, kind, _unit, labels = m.groups()
            assert name not in out, f"{name} is listed twice in docs/metrics.md"
            out[name] = (kind, frozenset(re.findall(r"`([a-z_]+)`", labels)))
    return out

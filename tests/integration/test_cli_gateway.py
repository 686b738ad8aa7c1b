"""The gateway's commands as a user runs them: ``demo`` and ``replay`` (subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from meltica.wire import schema

VALIDATOR = jsonschema.Draft202012Validator(schema())


def run_cli(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meltica", *args],
        cwd=cwd,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_demo_runs_offline_and_every_symbol_flows(tmp_path: Path) -> None:
    """As the README runs it: the console script, from the repository root (where the
    source tree, not the installed package, sits in the working directory)."""
    out = tmp_path / "summary.json"
    script = Path(sys.executable).with_name("meltica-engine")
    assert script.exists(), f"console script missing beside {sys.executable}"
    proc = subprocess.run(
        [str(script), "demo", "--duration", "6", "--no-view", "--json", str(out)],
        cwd=Path(__file__).resolve().parents[2],
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert summary["symbols_without_events"] == []
    demo_symbols = {k: v for k, v in summary["symbols"].items() if not k.endswith(":*")}
    assert len(demo_symbols) == 6  # 3 spot + 3 usdm by default
    assert all(v["events"] > 0 for v in demo_symbols.values())
    assert summary["gap"] == 0 and summary["bus_drops"] == 0
    assert "Meltica demo: summary" in proc.stdout


HFT = "hftbacktest/examples/"
CF = "cryptofeed/sample_data/"
# Every session in the corpus (a day pair is one session split at 00:00 UTC).
SESSIONS = {
    "spot-20240808+09": [HFT + "spot/btcusdt_20240808.gz", HFT + "spot/btcusdt_20240809.gz"],
    "usdm-20230404+05": [
        HFT + "usdm/btcusdt_20230404.dat.gz",
        HFT + "usdm/btcusdt_20230405.dat.gz",
    ],
    "usdm-20240718+19": [HFT + "usdm/btcusdt_20240718.gz", HFT + "usdm/btcusdt_20240719.gz"],
    "usdm-20240808": [HFT + "usdm/btcusdt_20240808.gz"],
    **{
        name: [f"{CF}{name}.ws.1.0"]
        for name in ("BINANCE", "BINANCE_FUTURES", "BINANCE_DELIVERY", "BINANCE_US")
    },
}


@pytest.mark.parametrize("files", list(SESSIONS.values()), ids=list(SESSIONS))
def test_replay_writes_every_bus_event_and_checks_books(
    captures_dir: Path, tmp_path: Path, files: list[str]
) -> None:
    out = tmp_path / "events.jsonl"
    paths = [str(captures_dir / f) for f in files]
    rj = tmp_path / "report.json"
    proc = run_cli(
        ["replay", *paths, "--speed", "max", "-o", str(out), "--report-json", str(rj)], tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(rj.read_text())
    assert report["gaps"] == 0 and report["drops"] == 0
    dispatch = report["dispatch_dropped"]
    assert dispatch["unrouted"] == dispatch["invalid"] == dispatch["implausible"] == 0
    assert report["frames"]["sent"] == report["frames"]["in_capture"]
    assert report["book_check"]["mismatches"] == 0
    assert all(state == "live" for state in report["books"].values())
    assert report["parse_rejects"] == {}  # real sessions hold no impossible value
    lines = out.read_bytes().splitlines()
    assert len(lines) == report["events"]
    for line in lines[:: max(1, len(lines) // 500)]:
        VALIDATOR.validate(json.loads(line))
    kinds = {json.loads(line)["kind"] for line in lines}
    assert {"book_delta", "book_snapshot"} <= kinds
    if "book_ticker" in kinds and report["frames"]["in_capture"] > 10_000:
        assert report["book_check"]["points"] > 100
    print(report["capture"], "book check points:", report["book_check"]["points"])


def test_replay_of_a_session_without_a_snapshot_says_so(captures_dir: Path, tmp_path: Path) -> None:
    """spot/btcusdt_20230405 holds no REST snapshot (its day before is not in the corpus):
    the stream replays whole, and the report says the book could not be checked."""
    path = captures_dir / HFT / "spot/btcusdt_20230405.dat.gz"
    rj = tmp_path / "report.json"
    proc = run_cli(
        ["replay", str(path), "-o", str(tmp_path / "o.jsonl"), "--report-json", str(rj)], tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "holds no depth snapshot" in proc.stderr
    report = json.loads(rj.read_text())
    assert report["books_without_snapshot_in_capture"] == ["spot:BTCUSDT"]
    assert report["frames"]["sent"] == report["frames"]["in_capture"] == 15088
    assert report["gaps"] == 0 and report["drops"] == 0


def test_replay_of_a_missing_capture_is_a_clear_error(tmp_path: Path) -> None:
    proc = run_cli(["replay", str(tmp_path / "nope.gz")], tmp_path)
    assert proc.returncode == 2
    assert "nope.gz" in proc.stderr


# Hooks a user could write wrongly: one raises, one returns junk (a dict, not Derived).
BAD_HOOKS = """
class Boom:
    name = "boom"
    kinds = frozenset({"bbo"})

    def on_event(self, event):
        raise RuntimeError("hook bug")


class Junk:
    name = "junk"
    kinds = frozenset({"book"})

    def on_event(self, event):
        return {"mid": 1.5}
"""
HOOKS = '["meltica.conductor.analytics:Mid","badhooks:Boom","badhooks:Junk"]'


def _replay(paths: list[str], out: Path, cwd: Path, *extra: str) -> dict[str, Any]:
    rj = out.with_name(out.name + ".report.json")
    args = ["replay", *paths, "--speed", "max", "-o", str(out), "--report-json", str(rj)]
    proc = run_cli([*args, "--no-progress", *extra], cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report: dict[str, Any] = json.loads(rj.read_text())
    return report


@pytest.mark.parametrize("files", list(SESSIONS.values()), ids=list(SESSIONS))
def test_replay_with_analytics_hooks_publishes_the_same_events_plus_derived(
    captures_dir: Path, tmp_path: Path, files: list[str]
) -> None:
    """Hooks add `derived` events and nothing else changes: every exchange event, fused
    book and control event of the run without hooks is there, even with a hook that
    raises and one that returns junk beside the good one."""
    (tmp_path / "badhooks.py").write_text(BAD_HOOKS)
    paths = [str(captures_dir / f) for f in files]
    plain = _replay(paths, tmp_path / "plain.jsonl", tmp_path)
    hooked = _replay(
        paths, tmp_path / "hooked.jsonl", tmp_path, "--set", f"conductor.analytics={HOOKS}"
    )

    two_sided: set[str] = set()  # fused BBOs with a bid and an ask: the ones with a mid

    def events(name: str) -> tuple[Counter[str], dict[str, int], list[dict[str, Any]]]:
        keys: Counter[str] = Counter()
        control: Counter[str] = Counter()
        derived = []
        for line in (tmp_path / name).read_bytes().splitlines():
            d = json.loads(line)
            if d["kind"] == "book_snapshot" and d["source"] == "bbo" and d["bids"] and d["asks"]:
                two_sided.add(d["key"])
            if d["kind"] == "derived":
                derived.append(d)
            elif "reason" in d:  # control: keys hold a local (clock-seeded) sequence
                control[f"{d['kind']}:{d['reason']}:{d['to_seq']}"] += 1
            else:
                keys[d["key"]] += 1
        return keys, dict(control), derived

    keys0, control0, derived0 = events("plain.jsonl")
    keys1, control1, derived1 = events("hooked.jsonl")
    assert derived0 == []
    assert keys1 == keys0
    assert control1 == control0
    by_kind = {k: v for k, v in hooked["by_kind"].items() if k != "derived"}
    assert by_kind == plain["by_kind"]
    assert {"book_delta", "book_snapshot", "resync_done"} <= plain["by_kind"].keys()
    # one mid per fused BBO with both sides (a side beyond the book's verified depth is
    # published empty, docs/conductor.md), valid against the schema, keyed by its update id
    bbo = [k for k in keys0 if ":book_snapshot:bbo:" in k]
    assert len(derived1) == hooked["by_kind"]["derived"] == hooked["analytics"]["derived"]
    assert len(derived1) == len([k for k in bbo if k in two_sided]) > 0
    for d in derived1[:: max(1, len(derived1) // 200)]:
        VALIDATOR.validate(d)
        assert d["name"] == "mid" and set(d["values"]) == {"mid"}
        assert d["key"].replace(":derived:mid:", ":book_snapshot:bbo:") in keys0
    errors = hooked["analytics"]["hook_errors"]
    assert errors["mid"] == {"raised": 0, "bad_output": 0}
    assert errors["boom"] == {"raised": len(bbo), "bad_output": 0}
    fused = sum(1 for k in keys0 if ":book_snapshot:book:" in k)
    assert errors["junk"] == {"raised": 0, "bad_output": fused}


def test_replay_to_an_unwritable_output_is_one_line(captures_dir: Path, tmp_path: Path) -> None:
    """Checked before anything starts: one line, exit 2, no traceback after the replay."""
    path = captures_dir / HFT / "spot/btcusdt_20240808.gz"
    out = tmp_path / "missing-dir" / "x.jsonl"
    proc = run_cli(["replay", str(path), "-o", str(out), "--no-progress"], tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr == f"error: cannot write {out}: No such file or directory\n"

"""``meltica-engine replay`` as an operator meets it: progress on stderr, the summary
table, the JSON report behind ``--report-json`` and the PNG behind ``--plot``.

Two captures: a real USD-M session (MELTICA_CAPTURES) and one the project makes itself:
``record`` of the synthetic market served by ``fake-exchange``, with three depth frames
of one symbol dropped on the way, so the replay meets a gap and a resync.
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakeproc import fake_exchange

USDM = "hftbacktest/examples/usdm/btcusdt_20240808.gz"
# the report's keys before the table, the timeline and --report-json: still all there
LEGACY_KEYS = {
    "capture",
    "market",
    "frames",
    "events",
    "by_kind",
    "parse_rejects",
    "gaps",
    "resyncs",
    "drops",
    "dispatch_dropped",
    "analytics",
    "books",
    "throughput_frames_per_s",
    "elapsed_s",
    "consumer_span_s",
    "latency_us",
    "book_check",
    "books_without_snapshot_in_capture",
}
NOTE = "latency includes queueing behind the output writer"
PROGRESS = re.compile(
    r"^replay: (scan|replay) +(\d+\.\d)%  ([\d.,]+)/([\d.,]+) MB  ([\d,]+) frames  "
    r"([\d,]+) frames/s  (?:[\d,]+ events  )?elapsed \S+  (ETA \S+|done)$"
)


def cli(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meltica", "--log-level", "WARNING", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def synthetic_capture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Eight seconds of a synthetic USD-M market (two symbols, 10x speed) recorded by
    ``record`` from ``fake-exchange``, which drops three BTCUSDT depth frames at 5 s."""
    tmp = tmp_path_factory.mktemp("synthetic")
    path = tmp / "synthetic-usdm.gz"
    with fake_exchange(
        *("--markets", "usdm", "--symbols", "2", "--speed", "10", "--duration", "120"),
        *("--fault", "drop:symbol=BTCUSDT,at_s=5,count=3"),
    ) as (ws, rest):
        proc = cli(
            [
                *("record", "BTCUSDT", "ETHUSDT", "--market", "usdm"),
                *("--streams", "depth,trade,book_ticker", "--duration", "8"),
                *("--ws-url", ws["usdm"], "--rest-url", rest, "--out", str(path)),
            ],
            tmp,
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    yield path


def progress_lines(stderr: str) -> list[re.Match[str]]:
    return [m for line in stderr.splitlines() if (m := PROGRESS.match(line))]


def table_text(text: str) -> str:
    """The table with its box drawing and wrapping removed: words separated by one space."""
    return " ".join(re.sub(r"[│┃┌┐└┘├┤┬┴┼─━]", " ", text).split())


def check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1100, 650)
    assert 20_000 < len(data) < 3_000_000  # a drawn figure, not an empty canvas
    assert data.rstrip(b"\0").endswith(b"IEND\xaeB`\x82")


def check_timeline(report: dict[str, Any]) -> dict[str, Any]:
    tl: dict[str, Any] = report["timeline"]
    assert len(tl["t_s"]) == len(tl["events_per_s"]) == len(tl["latency_us"]["p99"])
    assert tl["t_s"] == sorted(tl["t_s"])
    # every event is in one bucket
    assert round(sum(tl["events_per_s"]) * tl["bucket_s"]) == report["events"]
    for p50, p99, top in zip(*(tl["latency_us"][k] for k in ("p50", "p99", "max")), strict=True):
        if p50 is not None:
            assert 1 <= p50 <= p99 <= top
    return tl


def test_replay_of_a_synthetic_capture_with_a_gap_at_max_speed(
    synthetic_capture: Path, tmp_path: Path
) -> None:
    """JSON report on stdout (the events in a file), the table on stderr with the
    max-speed note, progress lines, the gap and the resync in the timeline and plot."""
    png = tmp_path / "replay.png"
    proc = cli(
        [
            *("replay", str(synthetic_capture), "--speed", "max", "-o", str(tmp_path / "ev.jsonl")),
            *("--report-json", "-", "--progress", "--plot", str(png)),
        ],
        tmp_path,
    )
    # the dropped frames left BTCUSDT resyncing against the capture's one, older snapshot
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    report = json.loads(proc.stdout)
    assert report.keys() >= LEGACY_KEYS
    assert report["gaps"] >= 1 and report["resyncs"] >= 1
    assert report["speed"] == "max" and NOTE in report["latency_note"]
    tl = check_timeline(report)
    assert len(tl["gaps_at_s"]) == report["gaps"] and tl["resyncs_at_s"]
    # the gap is inside the capture's span of exchange time, not at its edges
    assert 0 < tl["gaps_at_s"][0] < tl["t_s"][-1]
    lines = (tmp_path / "ev.jsonl").read_bytes().splitlines()
    assert len(lines) == report["events"]

    table = table_text(proc.stderr)
    assert "meltica replay: summary" in table
    assert f"gaps / resyncs {report['gaps']} / {report['resyncs']}" in table
    assert f"{report['frames']['in_capture']:,} in capture" in table
    assert NOTE in table
    phases = [m[1] for m in progress_lines(proc.stderr)]
    assert phases[0] == "scan" and phases[-1] == "replay", proc.stderr[-3000:]
    last = progress_lines(proc.stderr)[-1]
    assert last[2] == "100.0" and last[7] == "done"
    assert int(last[5].replace(",", "")) == report["frames"]["sent"]
    check_png(png)


def test_replay_progress_has_rate_and_eta_from_the_first_second(
    synthetic_capture: Path, tmp_path: Path
) -> None:
    """At 2x the capture takes seconds: a progress line about every second, each with a
    rate and an ETA, the share read growing; the table on stdout (events in a file)."""
    report_path = tmp_path / "report.json"
    proc = cli(
        [
            *("replay", str(synthetic_capture), "--speed", "2", "-o", str(tmp_path / "ev.jsonl")),
            *("--progress", "--report-json", str(report_path)),
        ],
        tmp_path,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]  # the gap, as above
    running = [m for m in progress_lines(proc.stderr) if m[1] == "replay" and m[7] != "done"]
    assert len(running) >= 2, proc.stderr[-3000:]
    shares = [float(m[2]) for m in running]
    assert shares == sorted(shares) and 0 < shares[0] < 100
    assert all(m[7].startswith("ETA ") and int(m[6].replace(",", "")) > 0 for m in running)
    report = json.loads(report_path.read_text())
    assert report["speed"] == 2.0 and "latency_note" not in report
    table = table_text(proc.stdout)
    assert table.startswith("meltica replay: summary")
    assert "usdm / 2x" in table and NOTE not in table
    assert not progress_lines(proc.stdout)  # progress only on stderr


def test_replay_of_a_real_usdm_session(captures_dir: Path, tmp_path: Path) -> None:
    png = tmp_path / "usdm.png"
    report_path = tmp_path / "report.json"
    proc = cli(
        [
            *("replay", str(captures_dir / USDM), "--speed", "max"),
            *("-o", str(tmp_path / "ev.jsonl"), "--report-json", str(report_path)),
            *("--progress", "--plot", str(png)),
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report.keys() >= LEGACY_KEYS
    assert report["gaps"] == 0 and report["book_check"]["mismatches"] == 0
    tl = check_timeline(report)
    # the session spans 344 s of exchange time: 1 s buckets over all of it
    assert tl["bucket_s"] == 1 and 300 <= tl["t_s"][-1] <= 400
    assert tl["gaps_at_s"] == [] and tl["resyncs_at_s"] == []
    table = table_text(proc.stdout)
    assert f"{report['events']:,}" in table and NOTE in table
    assert "books live 1 of 1" in table
    assert [m[1] for m in progress_lines(proc.stderr)][-1] == "replay"
    check_png(png)


def test_plot_without_matplotlib_is_one_line(tmp_path: Path) -> None:
    shadow = tmp_path / "shadow" / "matplotlib"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('not installed')\n")
    path = os.pathsep.join(p for p in (str(shadow.parent), os.environ.get("PYTHONPATH")) if p)
    proc = cli(
        ["replay", str(tmp_path / "any.gz"), "-o", str(tmp_path / "o"), "--plot", "x.png"],
        tmp_path,
        env={"PYTHONPATH": path},
    )
    assert proc.returncode == 2
    assert proc.stderr == "error: --plot needs matplotlib: pip install 'meltica-engine[plot]'\n"


def test_report_json_on_stdout_needs_the_events_elsewhere(tmp_path: Path) -> None:
    proc = cli(["replay", str(tmp_path / "any.gz"), "--report-json", "-"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: --report-json -: stdout carries the events")
    assert proc.stderr.count("\n") == 1

"""The ``meltica-engine`` CLI, run as a real subprocess (``python -m meltica``).

Every run uses ``cwd=tmp_path`` so that nothing is read from or written to the repository,
and the caller's environment unchanged (PYTHONPATH included) so the subprocess imports the
same build as the tests.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import meltica

MS = 1_000_000

# A tiny hftbacktest capture: "<recv ns> <frame>" lines, the REST snapshot inline.
DEPTH = (
    '{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1723161255208,'
    '"s":"BTCUSDT","U":50093239189,"u":50093239202,"b":[["61737.63000000","0.00000000"]],'
    '"a":[["61837.64000000","1.54698000"]]}}'
)
BOOK_TICKER = (
    '{"stream":"btcusdt@bookTicker","data":{"u":50093239212,"s":"BTCUSDT",'
    '"b":"61837.63000000","B":"3.78826000","a":"61837.64000000","A":"1.54698000"}}'
)
TRADE = (
    '{"stream":"btcusdt@trade","data":{"e":"trade","E":1723161255343,"s":"BTCUSDT",'
    '"t":3735683259,"p":"61837.63000000","q":"0.02000000","T":1723161255342,"m":true,'
    '"M":true}}'
)
SNAPSHOT = (
    '{"lastUpdateId":50093239218,"bids":[["61837.63000000","3.78826000"]],'
    '"asks":[["61837.64000000","1.54698000"],["61837.65000000","0.10000000"]]}'
)
MALFORMED = '{"stream":"btcusdt@trade","data":{"e":"trade","E":1723161255'
RECORDS = [
    (1723161253937085768, DEPTH),
    (1723161254087891268, BOOK_TICKER),
    (1723161254087896568, TRADE),
    (1723161254206652067, SNAPSHOT),
]


def common(kind: str, key: str, seq: int, ts_event: int | None, ts_recv: int) -> dict[str, Any]:
    return {
        "v": 1,
        "venue": "binance",
        "market": "spot",
        "symbol": "BTCUSDT",
        "kind": kind,
        "key": key,
        "seq": seq,
        "ts_event": ts_event,
        "ts_transaction": 1723161255342 * MS if kind == "trade" else None,
        "ts_recv": ts_recv,
        "trace": None,
    }


EXPECTED = [
    {
        **common(
            "book_delta",
            "binance:spot:BTCUSDT:book_delta:50093239202",
            50093239202,
            1723161255208 * MS,
            1723161253937085768,
        ),
        "update_id": 50093239202,
        "first_update_id": 50093239189,
        "prev_update_id": None,
        "bids": [["61737.63000000", "0.00000000"]],
        "asks": [["61837.64000000", "1.54698000"]],
    },
    {
        **common(
            "book_ticker",
            "binance:spot:BTCUSDT:book_ticker:50093239212",
            50093239212,
            None,
            1723161254087891268,
        ),
        "update_id": 50093239212,
        "bid_price": "61837.63000000",
        "bid_qty": "3.78826000",
        "ask_price": "61837.64000000",
        "ask_qty": "1.54698000",
    },
    {
        **common(
            "trade",
            "binance:spot:BTCUSDT:trade:3735683259",
            3735683259,
            1723161255343 * MS,
            1723161254087896568,
        ),
        "trade_id": 3735683259,
        "price": "61837.63000000",
        "qty": "0.02000000",
        "side": "sell",
    },
    {
        **common(
            "book_snapshot",
            "binance:spot:BTCUSDT:book_snapshot:rest:50093239218",
            50093239218,
            None,
            1723161254206652067,
        ),
        "update_id": 50093239218,
        "first_update_id": None,
        "prev_update_id": None,
        "bids": [["61837.63000000", "3.78826000"]],
        "asks": [["61837.64000000", "1.54698000"], ["61837.65000000", "0.10000000"]],
        "source": "rest",
        "verified_bids": None,
        "verified_asks": None,
    },
]
EVENTS_LINE = "events: 4 (book_delta: 1, book_snapshot: 1, book_ticker: 1, trade: 1)"


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meltica", *args],
        cwd=tmp_path,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def write_capture(tmp_path: Path, records: list[tuple[int, str]]) -> Path:
    # named like the hftbacktest captures: the symbol comes from the file name
    path = tmp_path / "spot" / "btcusdt_20240808.gz"
    path.parent.mkdir()
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for ns, frame in records:
            f.write(f"{ns} {frame}\n")
    return path


def normalize(tmp_path: Path, capture: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run(
        tmp_path, "normalize", str(capture), "--format", "hftbacktest", "--market", "spot", *extra
    )


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_version(tmp_path: Path) -> None:
    result = run(tmp_path, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"meltica-engine {meltica.__version__} (simdjson kernel ")


def test_no_command_is_bad_input(tmp_path: Path) -> None:
    result = run(tmp_path)
    assert result.returncode == 2
    assert "usage: meltica-engine" in result.stderr


def test_normalize_capture_to_file(tmp_path: Path) -> None:
    capture = write_capture(tmp_path, RECORDS)
    out = tmp_path / "events.jsonl"
    result = normalize(tmp_path, capture, "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert read_jsonl(out) == EXPECTED
    summary = result.stderr.splitlines()
    assert "venue: binance  market: spot" in summary
    assert "frames read: 3 ws, 1 rest, 0 conn (0 rest bodies not depth)" in summary
    assert EVENTS_LINE in summary
    assert "replies: 0  unknown event types: 0" in summary
    assert "rejects: 0" in summary


def test_normalize_capture_to_stdout_detecting_format_and_market(tmp_path: Path) -> None:
    capture = write_capture(tmp_path, RECORDS)
    result = run(tmp_path, "normalize", str(capture))
    assert result.returncode == 0, result.stderr
    assert [json.loads(line) for line in result.stdout.splitlines()] == EXPECTED
    assert "rejects: 0" in result.stderr.splitlines()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["btcusdt_20240808.gz", "spot"]


def test_malformed_frame_is_counted_and_skipped(tmp_path: Path) -> None:
    records = [*RECORDS[:2], (1723161254087891300, MALFORMED), *RECORDS[2:]]
    capture = write_capture(tmp_path, records)
    out = tmp_path / "events.jsonl"
    result = normalize(tmp_path, capture, "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert read_jsonl(out) == EXPECTED
    summary = result.stderr.splitlines()
    assert "rejects: 1 (malformed: 1)" in summary
    assert "frames read: 4 ws, 1 rest, 0 conn (0 rest bodies not depth)" in summary
    assert EVENTS_LINE in summary


def test_strict_exits_1_on_rejects(tmp_path: Path) -> None:
    records = [*RECORDS[:2], (1723161254087891300, MALFORMED), *RECORDS[2:]]
    capture = write_capture(tmp_path, records)
    out = tmp_path / "events.jsonl"
    result = normalize(tmp_path, capture, "-o", str(out), "--strict")
    assert result.returncode == 1, result.stderr
    assert "rejects: 1 (malformed: 1)" in result.stderr.splitlines()
    assert read_jsonl(out) == EXPECTED


def test_strict_exits_0_without_rejects(tmp_path: Path) -> None:
    capture = write_capture(tmp_path, RECORDS)
    result = normalize(tmp_path, capture, "-o", str(tmp_path / "out.jsonl"), "--strict")
    assert result.returncode == 0, result.stderr
    assert "rejects: 0" in result.stderr.splitlines()


def test_missing_capture_exits_2(tmp_path: Path) -> None:
    result = normalize(tmp_path, tmp_path / "nope.gz", "-o", str(tmp_path / "out.jsonl"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ")
    assert "nope.gz" in result.stderr
    assert "Traceback" not in result.stderr


def test_unwritable_output_exits_2(tmp_path: Path) -> None:
    capture = write_capture(tmp_path, RECORDS)
    result = normalize(tmp_path, capture, "-o", str(tmp_path / "no-such-dir" / "out.jsonl"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: cannot write ")


def test_check_config_good(tmp_path: Path) -> None:
    path = tmp_path / "good.yaml"
    path.write_text("binance:\n  markets: [spot]\n  spot:\n    symbols: [BTCUSDT]\n")
    result = run(tmp_path, "check-config", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"ok: {path}\n")
    assert "symbols:\n    - btcusdt\n" in result.stdout


def test_check_config_bad(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("binance:\n  spto:\n    symbols: [btcusdt]\n")
    result = run(tmp_path, "check-config", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ")
    assert "binance.spto" in result.stderr
    assert result.stdout == ""

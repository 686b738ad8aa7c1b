"""The product against the reference decoder, on every real Binance capture.

For each capture (hftbacktest ``*.gz`` sessions, cryptofeed ``*.ws.1.0`` sessions with their
``*.http.0.0`` REST snapshots) the real CLI (``python -m meltica normalize``) writes JSONL;
this module reads the same capture with its own small reader, decodes every record with
``tests/reference.py`` and compares the two event by event.  Both sides are streamed: the
biggest sessions are ~100k frames.
"""

from __future__ import annotations

import gzip
import heapq
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator
from decimal import Decimal
from itertools import zip_longest
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from reference import reference_events, reference_rest_depth

import meltica

NS_PER_S = 1_000_000_000
# hftbacktest local times: ns in the 2024 files, µs in the 2023 *.dat.gz files
MICROSECOND_TS_BELOW = 10**17
MAX_REPORTED = 20
MISSING = "<no captures>"

# cryptofeed file prefix -> (venue, market)
CRYPTOFEED_FEEDS = {
    "BINANCE": ("binance", "spot"),
    "BINANCE_FUTURES": ("binance", "usdm"),
    "BINANCE_DELIVERY": ("binance", "coinm"),
    "BINANCE_US": ("binance_us", "spot"),
}
# hftbacktest example directory -> market
HFTBACKTEST_MARKETS = {"spot": "spot", "usdm": "usdm"}

DECIMAL_FIELDS = frozenset(
    {
        "price",
        "qty",
        "bid_price",
        "bid_qty",
        "ask_price",
        "ask_qty",
        "open",
        "high",
        "low",
        "close",
        "volume",
        "quote_volume",
        "taker_buy_volume",
        "taker_buy_quote_volume",
        "last_price",
        "price_change",
        "price_change_pct",
        "weighted_avg_price",
        "prev_close",
        "last_qty",
        "mark_price",
        "index_price",
        "settle_price",
        "funding_rate",
        "avg_price",
        "last_filled_qty",
        "filled_qty",
    }
)
LEVEL_FIELDS = frozenset({"bids", "asks"})


# ------------------------------------------------------------------------------------------
# Where the captures are


def captures_root() -> Path:
    """Where the ``captures_dir`` fixture (tests/conftest.py) looks; needed at collection
    time to make one test per capture."""
    env = os.environ.get("MELTICA_CAPTURES")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "captures" / "binance"


def capture_names(root: Path) -> list[str]:
    """Every real capture under ``root`` (relative paths), or ``[MISSING]``."""
    paths = sorted(root.glob("hftbacktest/examples/*/*.gz"))
    paths += sorted(root.glob("cryptofeed/sample_data/*.ws.1.0"))
    return [p.relative_to(root).as_posix() for p in paths] or [MISSING]


def skip_or_fail(reason: str) -> None:
    """Captures missing: a skip on a workstation, a failure in CI (as ``captures_dir``)."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the captures are required)")
    pytest.skip(reason)


# ------------------------------------------------------------------------------------------
# Our own capture reader


class Record(NamedTuple):
    """One recorded message: a WebSocket frame, or a REST depth body for ``rest_symbol``."""

    ts_recv: int  # local receive time, ns
    payload: bytes
    rest_symbol: str | None = None


def seconds_to_ns(text: str) -> int:
    """Epoch seconds as written by cryptofeed (``1633998512.0633569``), exactly, in ns."""
    return int(Decimal(text) * NS_PER_S)


def depth_stream_symbol(path: Path) -> str | None:
    """Symbol of the first depth stream in an hftbacktest file (its snapshots' symbol)."""
    pattern = re.compile(rb'"stream":"([^"@]+)@depth')
    with gzip.open(path, "rb") as f:
        for line in f:
            m = pattern.search(line)
            if m:
                return m.group(1).decode().upper()
    return None


def hftbacktest_records(path: Path) -> Iterator[Record]:
    """gzip lines ``<local ts> <json>``; REST snapshots appear inline."""
    symbol = None
    with gzip.open(path, "rb") as f:
        for raw in f:
            line = raw.strip()
            if not line:
                continue
            ts_text, payload = line.split(b" ", 1)
            ts = int(ts_text)
            if ts < MICROSECOND_TS_BELOW:
                ts *= 1_000
            if payload.startswith(b'{"lastUpdateId"'):
                symbol = symbol or depth_stream_symbol(path)
                assert symbol, f"{path}: a REST snapshot but no depth stream names its symbol"
                yield Record(ts, payload, symbol)
            else:
                yield Record(ts, payload)


def cryptofeed_ws_records(path: Path) -> Iterator[Record]:
    """``<url> <-> <connect ts>`` header, then ``<epoch s>: <frame>`` lines."""
    with open(path, "rb") as f:
        for raw in f:
            line = raw.strip()
            if not line or b" <-> " in line.split(b": ", 1)[0]:
                continue
            ts_text, frame = line.split(b": ", 1)
            yield Record(seconds_to_ns(ts_text.decode()), frame)


def cryptofeed_http_records(path: Path) -> Iterator[Record]:
    """``<url> -> <epoch s>: <body>`` lines; the symbol is the URL's ``symbol=``."""
    if not path.exists():
        return
    with open(path, "rb") as f:
        for raw in f:
            line = raw.strip()
            if not line:
                continue
            url, rest = line.split(b" -> ", 1)
            ts_text, body = rest.split(b": ", 1)
            m = re.search(rb"[?&]symbol=([^&]+)", url)
            assert m, f"{path}: no symbol= in {url!r}"
            yield Record(seconds_to_ns(ts_text.decode()), body, m.group(1).decode().upper())


def cryptofeed_records(ws_path: Path) -> Iterator[Record]:
    http_path = ws_path.with_name(ws_path.name.removesuffix(".ws.1.0") + ".http.0.0")
    return heapq.merge(
        cryptofeed_ws_records(ws_path),
        cryptofeed_http_records(http_path),
        key=lambda r: r.ts_recv,
    )


def capture_source(root: Path, name: str) -> tuple[Iterator[Record], str, str]:
    """(records, venue, market) of one capture."""
    path = root / name
    parts = Path(name).parts
    if parts[0] == "hftbacktest":
        return hftbacktest_records(path), "binance", HFTBACKTEST_MARKETS[parts[-2]]
    venue, market = CRYPTOFEED_FEEDS[path.name.removesuffix(".ws.1.0")]
    return cryptofeed_records(path), venue, market


def expected_events(records: Iterable[Record], venue: str, market: str) -> Iterator[dict[str, Any]]:
    for rec in records:
        if rec.rest_symbol is not None:
            yield reference_rest_depth(
                rec.payload,
                venue=venue,
                market=market,
                symbol=rec.rest_symbol,
                ts_recv=rec.ts_recv,
            )
        else:
            yield from reference_events(
                rec.payload, venue=venue, market=market, ts_recv=rec.ts_recv
            )


# ------------------------------------------------------------------------------------------
# Comparison


def same_decimal(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return isinstance(a, str) and isinstance(b, str) and Decimal(a) == Decimal(b)


def same_levels(a: Any, b: Any) -> bool:
    if not isinstance(a, list) or not isinstance(b, list) or len(a) != len(b):
        return False
    return all(
        isinstance(x, list)
        and isinstance(y, list)
        and len(x) == len(y) == 2
        and same_decimal(x[0], y[0])
        and same_decimal(x[1], y[1])
        for x, y in zip(a, b, strict=True)
    )


def field_differences(expected: dict[str, Any], got: dict[str, Any]) -> list[str]:
    """``field: expected .. got ..`` for every field that differs."""
    out = []
    for name in sorted(expected.keys() | got.keys()):
        if name not in got:
            out.append(f"{name}: missing (expected {expected[name]!r})")
            continue
        if name not in expected:
            out.append(f"{name}: unexpected field (got {got[name]!r})")
            continue
        a, b = expected[name], got[name]
        if name in DECIMAL_FIELDS:
            same = same_decimal(a, b)
        elif name in LEVEL_FIELDS:
            same = same_levels(a, b)
        else:
            same = type(a) is type(b) and a == b  # bool is not int, "1" is not 1
        if not same:
            out.append(f"{name}: expected {a!r}, got {b!r}")
    return out


def compare(
    expected: Iterable[dict[str, Any]], produced: Iterable[dict[str, Any]]
) -> tuple[int, int, int, list[str]]:
    """(expected count, produced count, differing fields, first reports)."""
    n_expected = n_produced = total = 0
    reports: list[str] = []
    for i, (exp, got) in enumerate(zip_longest(expected, produced)):
        if exp is not None:
            n_expected += 1
        if got is not None:
            n_produced += 1
        if exp is None or got is None:
            total += 1
            if len(reports) < MAX_REPORTED:
                which = "extra event" if exp is None else "missing event"
                shown = got if exp is None else exp
                reports.append(f"#{i} {which}: {shown.get('key')}")
            continue
        if exp == got and all(type(v) is type(got[k]) for k, v in exp.items()):
            continue  # the common case, without a Decimal per field
        for diff in field_differences(exp, got):
            total += 1
            if len(reports) < MAX_REPORTED:
                reports.append(f"#{i} {exp.get('key')}: {diff}")
    return n_expected, n_produced, total, reports


def produced_events(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, "rb") as f:
        for line in f:
            yield json.loads(line)


def run_normalize(capture: Path, out: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess importing the same meltica build as this test."""
    env = dict(os.environ)
    package_parent = str(Path(meltica.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "meltica", "normalize", str(capture), "-o", str(out)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


# ------------------------------------------------------------------------------------------
# The test


@pytest.mark.parametrize("name", capture_names(captures_root()))
def test_normalize_matches_reference(name: str, captures_dir: Path, tmp_path: Path) -> None:
    if name == MISSING:
        skip_or_fail(f"no hftbacktest or cryptofeed captures under {captures_dir}")
    capture = captures_dir / name
    out = tmp_path / "out.jsonl"

    proc = run_normalize(capture, out, tmp_path)
    assert proc.returncode == 0, f"normalize exited {proc.returncode}:\n{proc.stderr}"
    rejects = re.search(r"^rejects: (\d+)", proc.stderr, re.MULTILINE)
    assert rejects, f"no 'rejects:' line in the normalize summary:\n{proc.stderr}"
    assert int(rejects.group(1)) == 0, f"normalize rejected frames:\n{proc.stderr}"

    records, venue, market = capture_source(captures_dir, name)
    n_expected, n_produced, total, reports = compare(
        expected_events(records, venue, market), produced_events(out)
    )
    assert n_expected > 0, f"{name}: the reference found no events"
    assert (n_expected, total) == (n_produced, 0), (
        f"{name}: expected {n_expected} events, normalize wrote {n_produced}; "
        f"{total} differences, first {len(reports)}:\n"
        + "\n".join(reports)
        + f"\nnormalize summary:\n{proc.stderr}"
    )

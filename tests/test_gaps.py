"""The gap manifest's bookkeeping (meltica/gaps.py): open, widen, resolve, bound, file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meltica.config import ConfigError, load_config
from meltica.gaps import GapManifest


def clock() -> int:
    clock.now += 10  # type: ignore[attr-defined]
    return clock.now  # type: ignore[attr-defined, no-any-return]


clock.now = 0  # type: ignore[attr-defined]


def test_a_second_hole_while_one_is_open_widens_it_then_resolve_closes_it() -> None:
    m = GapManifest(10, clock=clock)
    first = m.open("spot", "BTCUSDT", "depth", "continuity", first_id=101, last_id=120)
    again = m.open("spot", "BTCUSDT", "depth", "continuity", first_id=121, last_id=150)
    assert again is first and (first.first_id, first.last_id) == (101, 150)
    apart = m.open("spot", "BTCUSDT", "depth", "continuity", first_id=160, last_id=170)
    assert apart is not first and len(m) == 2
    other = m.open("spot", "ETHUSDT", "depth", "continuity", first_id=5, last_id=5)
    assert other is not first and len(m) == 3
    assert m.summary()["by_outcome"]["open"] == 3
    closed = m.resolve("spot", "BTCUSDT", "depth", "resynced")
    assert closed == [first, apart] and first.outcome == "resynced" and first.closed_ns is not None
    assert m.resolve("spot", "BTCUSDT", "depth", "resynced") == []  # nothing open any more
    assert m.counts == {("depth", "continuity", "resynced"): 2}
    # closed first, then the open ones
    assert [e["symbol"] for e in m.entries()] == ["BTCUSDT", "BTCUSDT", "ETHUSDT"]
    assert [e["outcome"] for e in m.entries()] == ["resynced", "resynced", "open"]
    assert m.entries(outcome="open") == [other.to_dict()]
    assert m.entries(symbol="BTCUSDT")[1]["first_id"] == 160
    assert m.summary()["by_outcome"]["open"] == 1


def test_record_counts_lost_ids_and_rejects_unknown_outcomes() -> None:
    m = GapManifest(10)
    m.record("usdm", "BTCUSDT", "trade", "budget", "lost", first_id=10, last_id=19)
    m.record("usdm", "BTCUSDT", "book_ticker", "disconnect", "lost", from_ns=1, to_ns=9)
    m.record("usdm", "BTCUSDT", "trade", "disconnect", "filled", first_id=30, last_id=31)
    s = m.summary()
    assert s["total"] == 3 and s["lost_ids"] == 10
    assert s["by_outcome"] == {"open": 0, "filled": 1, "resynced": 0, "lost": 2}
    assert s["by_stream"] == {"book_ticker": 1, "trade": 2}
    for bad in ("open", "gone", ""):
        with pytest.raises(ValueError, match="outcome must be one of"):
            m.record("usdm", "X", "trade", "c", bad)
        with pytest.raises(ValueError, match="outcome must be one of"):
            m.resolve("usdm", "X", "trade", bad)


def test_memory_keeps_the_last_entries_but_counts_everything() -> None:
    m = GapManifest(3)
    for i in range(10):
        m.record("spot", "BTCUSDT", "trade", "c", "lost", first_id=i, last_id=i)
    assert [e["first_id"] for e in m.entries()] == [7, 8, 9]
    assert m.entries(limit=1)[0]["first_id"] == 9 and m.entries(limit=0) == []
    assert m.summary()["total"] == 10
    with pytest.raises(ValueError, match="max_entries"):
        GapManifest(0)


def test_file_gets_one_line_per_closed_gap_and_the_open_ones_at_close(tmp_path: Path) -> None:
    path = tmp_path / "gaps.jsonl"
    m = GapManifest(10, str(path))
    m.open("spot", "BTCUSDT", "depth", "continuity", first_id=1, last_id=2)
    m.record("spot", "BTCUSDT", "trade", "disconnect", "lost", from_ns=5, to_ns=6)
    m.discard("spot", "ETHUSDT", "depth")  # nothing open there: nothing written
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [(x["stream"], x["outcome"]) for x in lines] == [("trade", "lost")]
    m.close()
    m.close()  # idempotent
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [(x["stream"], x["outcome"]) for x in lines] == [("trade", "lost"), ("depth", "open")]
    assert lines[1]["first_id"] == 1 and lines[1]["last_id"] == 2 and lines[1]["closed_ns"] is None
    assert set(lines[0]) == {
        "seq",
        "market",
        "symbol",
        "stream",
        "cause",
        "first_id",
        "last_id",
        "from_ns",
        "to_ns",
        "outcome",
        "detected_ns",
        "closed_ns",
        "reason",
    }


def test_discard_closes_an_open_gap_lost() -> None:
    m = GapManifest(10)
    m.open("spot", "BTCUSDT", "depth", "continuity", first_id=1, last_id=2)
    m.discard("spot", "BTCUSDT", "depth")
    assert [e["outcome"] for e in m.entries()] == ["lost"]


def test_gaps_path_in_a_missing_directory_fails_at_start_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"gaps\.path: directory .* does not exist"):
        load_config(None, env={}, overrides=[f"gaps.path={tmp_path}/nope/gaps.jsonl"])
    with pytest.raises(ConfigError, match=r"gaps\.path: .* is a directory"):
        load_config(None, env={}, overrides=[f"gaps.path={tmp_path}"])
    with pytest.raises(ConfigError, match=r"gaps\.max_entries"):
        load_config(None, env={}, overrides=["gaps.max_entries=0"])
    cfg = load_config(None, env={}, overrides=[f"gaps.path={tmp_path}/gaps.jsonl"])
    assert cfg.gaps.path == f"{tmp_path}/gaps.jsonl"

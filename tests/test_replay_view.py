"""The pieces ``replay`` shows with: progress lines, the bounded timeline, the byte meter."""

from __future__ import annotations

import io
import random
from pathlib import Path
from types import SimpleNamespace

from meltica.capture import CaptureWriter, ReadMeter, read_capture
from meltica.commands.replay_view import ProgressLine, Timeline, _bin, _bin_upper

S = 1_000_000_000


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def ev(ts_event: int | None, latency_us: int, kind: str = "trade") -> SimpleNamespace:
    now = 5_000 * S
    return SimpleNamespace(ts_event=ts_event, kind=kind, ts_recv=now - latency_us * 1000)


def test_progress_prints_about_every_interval_with_rate_and_eta() -> None:
    out, clock = io.StringIO(), Clock()
    p = ProgressLine(out, enabled=True, interval_s=1.0, clock=clock)
    p.start("replay", 1000, "frames")
    clock.t += 0.5
    p.update(100, 50)
    assert out.getvalue() == ""  # not a second yet
    clock.t += 0.5
    p.update(250, 200)  # a quarter read in 1 s: 3 s to go
    clock.t += 1.0
    p.update(500, 1200, "9 events")  # half in 2 s: 2 s to go; 1000 frames in the last second
    clock.t += 0.2
    p.finish(1000, 1300)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and p.lines == 3
    assert " 25.0%" in lines[0] and "200 frames/s" in lines[0] and lines[0].endswith("ETA 3s")
    assert " 50.0%" in lines[1] and "1,000 frames/s" in lines[1] and "9 events" in lines[1]
    assert lines[1].endswith("ETA 2s")
    assert "100.0%" in lines[2] and lines[2].endswith("done")


def test_progress_share_done_can_lag_the_share_read() -> None:
    out, clock = io.StringIO(), Clock()
    p = ProgressLine(out, enabled=True, clock=clock)
    p.start("replay", 1000, "frames")
    clock.t += 2.0
    p.update(1000, 10, done=0.2)  # all sent, a fifth written: 8 s to go
    assert " 20.0%" in out.getvalue() and out.getvalue().strip().endswith("ETA 8s")


def test_progress_disabled_prints_nothing() -> None:
    out, clock = io.StringIO(), Clock()
    p = ProgressLine(out, enabled=False, clock=clock)
    p.start("scan", 10, "frames")
    clock.t += 5
    p.update(5, 5)
    p.finish(10, 10)
    assert out.getvalue() == ""


def test_latency_bins_are_within_a_quarter() -> None:
    rng = random.Random(7)
    for value in [
        1,
        2,
        3,
        4,
        5,
        7,
        8,
        1000,
        60_000_000,
        *(rng.randrange(1, 10**8) for _ in range(2000)),
    ]:
        upper = _bin_upper(_bin(value))
        assert value <= upper <= max(value * 1.25, value + 1), value


def test_timeline_counts_by_exchange_time_and_marks_gaps_and_resyncs() -> None:
    tl = Timeline()
    t0 = 1_700_000_000 * S
    batch = [ev(t0 + i * S // 10, 100 + i) for i in range(30)]  # 3 s, 10 events/s
    tl.observe(batch, 5_000 * S)
    tl.observe([ev(None, 0, "gap"), ev(None, 0, "resync_started")], 5_000 * S)
    tl.observe([ev(t0 + 3 * S, 50)], 5_000 * S)
    d = tl.to_dict()
    assert d["t_s"] == [0, 1, 2, 3] and d["events_per_s"] == [10, 10, 12, 1]
    assert d["gaps_at_s"] == [2.9] and d["resyncs_at_s"] == [2.9]
    assert d["latency_us"]["p50"][3] == d["latency_us"]["max"][3] == _bin_upper(_bin(50))
    assert d["latency_us"]["max"][0] == _bin_upper(_bin(109))


def test_timeline_stays_bounded_by_merging_buckets() -> None:
    tl = Timeline(max_buckets=64)
    t0 = 1_700_000_000 * S
    for second in range(1000):
        tl.observe([ev(t0 + second * S, 10), ev(t0 + second * S + S // 2, 10)], 5_000 * S)
    d = tl.to_dict()
    assert len(d["t_s"]) <= 64 and d["bucket_s"] == 16
    assert sum(d["events_per_s"]) * d["bucket_s"] == 2000  # nothing lost in merging
    assert d["t_s"][-1] == 992


def test_read_meter_counts_stored_bytes_up_to_the_file_size(tmp_path: Path) -> None:
    path = tmp_path / "c.gz"
    with CaptureWriter(path, venue="binance", market="spot") as w:
        for i in range(20_000):
            w.write_ws(i, "c", b'{"stream":"btcusdt@trade","data":{"t":%d}}' % i)
    size = path.stat().st_size
    meter = ReadMeter()
    seen = []
    for i, _ in enumerate(read_capture(path, meter=meter)):
        if i % 2000 == 0:
            seen.append(meter.bytes_read)
    assert seen == sorted(seen) and 0 < seen[1] < size
    assert meter.bytes_read == size

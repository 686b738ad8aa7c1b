"""What ``meltica-engine replay`` shows a person: progress, the summary table, the plot.

- :class:`ProgressLine`: one line about every second on stderr (rewritten in place on a
  terminal): the phase, the share of the capture read (bytes as stored, so no pass over
  the file is needed to know the total), counts, the current rate and an ETA.
- :class:`Timeline`: events per second and receive -> consumer latency by *exchange*
  time (the capture's clock, whatever the replay speed), with the exchange times of
  gaps and resync starts.  Its size is bounded: past ``max_buckets`` buckets, neighbours
  merge and the bucket width doubles.  Latency is kept per bucket in log-scale bins
  (four per octave), so its percentiles are within 25 % of the exact value; the report's
  overall percentiles are exact (HdrHistogram).
- :func:`summary_table` and :func:`plot`: the report as a table and as a PNG
  (matplotlib, the ``plot`` extra).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

from rich.table import Table

from meltica.monitor import TROUBLE_KINDS

__all__ = [
    "MAX_SPEED_LATENCY_NOTE",
    "PlotError",
    "ProgressLine",
    "Timeline",
    "check_plot_available",
    "plot",
    "summary_table",
]

MAX_SPEED_LATENCY_NOTE = (
    "at --speed max the fake exchange sends as fast as the gateway reads, so latency "
    "includes queueing behind the output writer (this replay's own consumer), not only "
    "the gateway's processing"
)
_BINS = 128  # 4 bins per octave of µs: 32 octaves (> 60 s)
_MAX_MARKERS = 10_000


class PlotError(RuntimeError):
    """``--plot`` cannot be made (matplotlib missing)."""


def _fmt_duration(seconds: float) -> str:
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class ProgressLine:
    """Progress of one phase at a time on ``stream``, at most one line per ``interval_s``.

    ``update`` is cheap when it is not time to print; ``finish`` prints the last line of
    the phase whatever the time.  On a terminal the line is rewritten in place.
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        enabled: bool,
        interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.enabled = enabled
        self.interval_s = interval_s
        self.clock = clock
        self.tty = enabled and stream.isatty()
        self.lines = 0
        self._phase = ""
        self._unit = ""
        self._total = 0
        self._t0 = self._last_t = 0.0
        self._last_n = 0
        self._open = False

    def start(self, phase: str, total_bytes: int, unit: str) -> None:
        self._phase, self._total, self._unit = phase, max(1, total_bytes), unit
        self._t0 = self._last_t = self.clock()
        self._last_n = 0

    def update(
        self, bytes_read: int, count: int, extra: str = "", done: float | None = None
    ) -> None:
        """``done``: the share of the work done when it is less than the share read."""
        if not self.enabled:
            return
        now = self.clock()
        if now - self._last_t >= self.interval_s:
            self._print(now, bytes_read, count, extra, final=False, done=done)

    def finish(self, bytes_read: int, count: int, extra: str = "") -> None:
        if self.enabled:
            self._print(self.clock(), bytes_read, count, extra, final=True)
            if self.tty and self._open:
                self.stream.write("\n")
                self.stream.flush()
                self._open = False

    def abort(self) -> None:
        """End a line left open on a terminal (an error follows)."""
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False

    def _print(
        self,
        now: float,
        bytes_read: int,
        count: int,
        extra: str,
        final: bool,
        done: float | None = None,
    ) -> None:
        elapsed = now - self._t0
        span = now - self._last_t
        # the current rate (since the last line), not an average since the start
        rate = (count - self._last_n) / span if span > 0 else 0.0
        self._last_t, self._last_n = now, count
        share = min(1.0, bytes_read / self._total)
        done = share if done is None else max(0.0, min(done, share))
        if final:
            eta = "done"
        elif done > 0:
            eta = f"ETA {_fmt_duration(elapsed * (1 - done) / done)}"
        else:
            eta = "ETA ?"
        mb = 1024 * 1024
        parts = [
            f"replay: {self._phase}",
            f"{(1.0 if final else done) * 100:5.1f}%",
            f"{bytes_read / mb:,.1f}/{self._total / mb:,.1f} MB",
            f"{count:,} {self._unit}",
            f"{rate:,.0f} {self._unit}/s",
        ]
        if extra:
            parts.append(extra)
        parts += [f"elapsed {_fmt_duration(elapsed)}", eta]
        line = "  ".join(parts)
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
            self._open = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self.lines += 1


def _bin(us: int) -> int:
    """The log-scale bin of a latency in µs (>= 1): four bins per octave."""
    bl = us.bit_length()
    sub = ((us << 2) >> (bl - 1)) & 3 if bl > 1 else 0
    return min(_BINS - 1, (bl - 1) * 4 + sub)


def _bin_upper(index: int) -> int:
    """The upper edge (µs) of a bin: the value a percentile in it is reported as."""
    octave, sub = divmod(index, 4)
    return int((1 << octave) * (1 + (sub + 1) / 4))


class Timeline:
    """Events per second and latency percentiles by exchange time, and gap/resync markers."""

    def __init__(self, max_buckets: int = 2048) -> None:
        self.max_buckets = max_buckets
        self.width_s = 1
        self.origin_ns: int | None = None
        self._counts: dict[int, int] = {}
        self._lat: dict[int, list[int]] = {}
        self.gaps: list[float] = []
        self.resyncs: list[float] = []
        self.markers_dropped = 0
        self._last_s = 0.0

    @property
    def position_s(self) -> float:
        """Exchange time of the latest event seen, in seconds since the first one."""
        return self._last_s

    def observe(self, batch: Iterable[Any], now_ns: int) -> None:
        counts, lat, width = self._counts, self._lat, self.width_s
        for ev in batch:
            ts = ev.ts_event
            if ts:
                if self.origin_ns is None:
                    self.origin_ns = ts
                at = max(0.0, (ts - self.origin_ns) / 1e9)
                self._last_s = at
            else:  # control events carry no exchange time: the latest one seen
                at = self._last_s
            key = int(at // width)
            counts[key] = counts.get(key, 0) + 1
            kind = ev.kind
            if kind in TROUBLE_KINDS:
                if kind == "gap":
                    self._marker(self.gaps, at)
                elif kind == "resync_started":
                    self._marker(self.resyncs, at)
                continue
            recv = ev.ts_recv
            if recv > 0 and kind != "connection_state":
                bins = lat.get(key)
                if bins is None:
                    bins = lat[key] = [0] * _BINS
                bins[_bin(max(1, (now_ns - recv) // 1000))] += 1
        if len(counts) > self.max_buckets:
            self._coarsen()

    def _marker(self, into: list[float], at: float) -> None:
        if len(into) < _MAX_MARKERS:
            into.append(round(at, 3))
        else:
            self.markers_dropped += 1

    def _coarsen(self) -> None:
        while len(self._counts) > self.max_buckets:
            self.width_s *= 2
            counts: dict[int, int] = {}
            for k, n in self._counts.items():
                counts[k // 2] = counts.get(k // 2, 0) + n
            lat: dict[int, list[int]] = {}
            for k, bins in self._lat.items():
                into = lat.get(k // 2)
                if into is None:
                    lat[k // 2] = bins
                else:
                    lat[k // 2] = [a + b for a, b in zip(into, bins, strict=True)]
            self._counts, self._lat = counts, lat

    @staticmethod
    def _percentile(bins: list[int], q: float) -> int | None:
        total = sum(bins)
        if not total:
            return None
        rank = q / 100 * total
        seen = 0
        for i, n in enumerate(bins):
            seen += n
            if seen >= rank and n:
                return _bin_upper(i)
        return None  # pragma: no cover - the loop reaches total

    def to_dict(self) -> dict[str, Any]:
        keys = sorted(self._counts)
        width = self.width_s
        series: dict[str, list[int | None]] = {"p50": [], "p99": [], "max": []}
        for k in keys:
            bins = self._lat.get(k)
            for name, q in (("p50", 50.0), ("p99", 99.0), ("max", 100.0)):
                series[name].append(self._percentile(bins, q) if bins else None)
        return {
            "clock": "exchange event time, seconds since the first event",
            "start_ns": self.origin_ns,
            "bucket_s": width,
            "t_s": [k * width for k in keys],
            "events_per_s": [round(self._counts[k] / width, 3) for k in keys],
            "latency_us": series,
            "latency_binning": "log-scale bins, 4 per octave: within 25 %",
            "gaps_at_s": self.gaps,
            "resyncs_at_s": self.resyncs,
            "markers_dropped": self.markers_dropped,
        }


def _fmt_speed(speed: float | str | None) -> str:
    return "max" if speed in (None, "max") else f"{speed:g}x"


def _manifest(summary: dict[str, Any] | None) -> str:
    if not summary or not summary["total"]:
        return "empty"
    outcomes = ", ".join(f"{n:,} {o}" for o, n in summary["by_outcome"].items() if n)
    lost = summary.get("lost_ids", 0)
    return f"{summary['total']:,} gaps: {outcomes}" + (f" ({lost:,} ids lost)" if lost else "")


def summary_table(report: dict[str, Any]) -> Table:
    """The report as a two-column table (the JSON report has everything)."""
    table = Table(title="meltica replay: summary", show_header=False, title_justify="left")
    table.add_column("", style="bold", no_wrap=True)
    table.add_column("", overflow="fold")
    frames = report["frames"]
    lat = report["latency_us"]
    books = report["books"]
    live = sum(1 for state in books.values() if state == "live")
    dispatch = report["dispatch_dropped"]
    rows: list[tuple[str, str]] = [
        ("capture", "\n".join(Path(p).name for p in report["capture"])),
        ("market / speed", f"{report['market']} / {_fmt_speed(report.get('speed'))}"),
        (
            "frames",
            f"{frames['in_capture']:,} in capture, {frames['sent']:,} sent, "
            f"{frames['received']:,} received",
        ),
        ("events", f"{report['events']:,}"),
    ]
    rows += [(f"  {kind}", f"{n:,}") for kind, n in report["by_kind"].items()]
    rows += [
        ("parse rejects", _counts(report["parse_rejects"])),
        ("gaps / resyncs", f"{report['gaps']:,} / {report['resyncs']:,}"),
        ("gap manifest", _manifest(report.get("gap_manifest"))),
        ("bus drops", f"{report['drops']:,}"),
        ("dispatch drops", _counts(dispatch)),
        ("books live", f"{live} of {len(books)}"),
        (
            "book check",
            f"{report['book_check']['points']:,} points, "
            f"{report['book_check']['mismatches']:,} mismatches",
        ),
        (
            "throughput",
            f"{report['throughput_frames_per_s']:,.0f} frames/s over {report['elapsed_s']:.1f} s",
        ),
        (
            "latency recv->consumer",
            f"p50 {_fmt_us(lat['p50'])}, p99 {_fmt_us(lat['p99'])}, "
            f"p99.9 {_fmt_us(lat['p99.9'])}, max {_fmt_us(lat['max'])}",
        ),
    ]
    if "latency_note" in report:
        rows.append(("", f"note: {report['latency_note']}"))
    if "nats" in report:
        nats = report["nats"]
        rows.append(
            ("nats", f"{nats.get('published', 0):,} published, {nats.get('lost', 0):,} lost")
        )
    analytics = report["analytics"]
    if analytics["derived"] or analytics["hook_errors"]:
        errors = sum(sum(v.values()) for v in analytics["hook_errors"].values())
        rows.append(("analytics", f"{analytics['derived']:,} derived, {errors:,} hook errors"))
    for name, value in rows:
        table.add_row(name, value)
    return table


def _fmt_us(us: int) -> str:
    if us < 1000:
        return f"{us} µs"
    if us < 1_000_000:
        return f"{us / 1000:.3g} ms"
    return f"{us / 1e6:.3g} s"


def _counts(values: dict[str, int]) -> str:
    shown = [f"{k} {v:,}" for k, v in values.items() if v]
    return ", ".join(shown) if shown else "0"


def check_plot_available() -> None:
    """PlotError with the install hint when matplotlib is not installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotError("--plot needs matplotlib: pip install 'meltica-engine[plot]'") from None


def plot(report: dict[str, Any], path: str | Path) -> None:
    """The timeline as a PNG: events/s, latency percentiles, gap and resync markers."""
    check_plot_available()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tl = report["timeline"]
    t = tl["t_s"]
    width = tl["bucket_s"]
    fig, (ax_rate, ax_lat) = plt.subplots(
        2, 1, figsize=(11, 6.5), sharex=True, gridspec_kw={"height_ratios": [1, 1.2]}
    )
    ax_rate.step(t, tl["events_per_s"], where="post", color="tab:blue", linewidth=1)
    ax_rate.set_ylabel("events/s")
    ax_rate.grid(alpha=0.3)
    for name, color in (("max", "tab:red"), ("p99", "tab:orange"), ("p50", "tab:green")):
        points = [(x, v) for x, v in zip(t, tl["latency_us"][name], strict=True) if v]
        if points:
            xs, ys = zip(*points, strict=True)
            ax_lat.step(xs, ys, where="post", color=color, linewidth=1, label=name)
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("latency recv->consumer (µs)")
    ax_lat.set_xlabel(f"exchange time since the first event (s), {width:g} s buckets")
    ax_lat.grid(alpha=0.3, which="both")
    for ax in (ax_rate, ax_lat):
        for i, x in enumerate(tl["gaps_at_s"]):
            ax.axvline(x, color="red", linestyle="--", linewidth=1, label="gap" if i == 0 else None)
        for i, x in enumerate(tl["resyncs_at_s"]):
            ax.axvline(
                x, color="purple", linestyle=":", linewidth=1.2, label="resync" if i == 0 else None
            )
    ax_lat.legend(loc="upper right", fontsize="small")
    if tl["gaps_at_s"] or tl["resyncs_at_s"]:
        ax_rate.legend(loc="upper right", fontsize="small")
    names = ", ".join(Path(p).name for p in report["capture"])
    title = (
        f"meltica replay {names} ({report['market']}, speed {_fmt_speed(report.get('speed'))}): "
        f"{report['gaps']} gaps, {report['resyncs']} resyncs"
    )
    fig.suptitle(title, fontsize="medium")
    if "latency_note" in report:
        fig.text(
            0.01,
            0.005,
            "latency includes queueing behind the output writer (--speed max)",
            fontsize="small",
            style="italic",
        )
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)

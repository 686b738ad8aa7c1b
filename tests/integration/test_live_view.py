"""``meltica-engine top`` as a user runs it: a subprocess of the real CLI reading a
running gateway (Engine + fake exchange over loopback) through its /metrics and /tail.
No wall-time assertions: waits are bounded by generous deadlines."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

from aio import run
from test_gateway import make_engine

from meltica.engine import Engine
from meltica.replay.exchange import FakeExchange
from meltica.replay.faults import FaultPlan
from meltica.replay.synthetic import SyntheticMarket


async def _top(*args: str, timeout: float = 90.0) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "meltica", "--log-level", "WARNING", "top", *args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _until(pred: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def _sections(out: str) -> dict[str, dict[str, list[str]]]:
    """The frame's rows by market section, split into cells."""
    sections: dict[str, dict[str, list[str]]] = {}
    market = None
    for line in out.splitlines():
        cells = line.split()
        if cells and cells[0] in ("spot", "usdm") and cells[1] == "ws":
            market = cells[0]
            sections[market] = {}
        elif market is not None and cells and cells[0] != "rates:":
            sections[market][cells[0]] = cells
    return sections


def _digits(text: str) -> int:
    return len(text.partition(".")[2])


def test_top_shows_every_symbol_with_prices_at_tick_decimals_and_live_books() -> None:
    source = SyntheticMarket(markets=("spot", "usdm"), symbols_per_market=3, seed=3)

    async def scenario() -> None:
        async with FakeExchange(source, speed=1.0) as fake:
            engine = make_engine(fake, source)
            try:
                await engine.start()
                await _until(engine.ready)
                assert engine.metrics is not None
                code, out, err = await _top(
                    engine.metrics.url, "--once", "--no-color", "--rest-url", fake.rest_url
                )
                assert code == 0, (out, err)
                _check_live_frame(engine, source, out)
            finally:
                await engine.stop()

    run(scenario)


def _check_live_frame(engine: Engine, source: SyntheticMarket, out: str) -> None:
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["Meltica", "top", engine.metrics.url.split("//")[1], "LIVE"]  # type: ignore[union-attr]
    assert max(len(line) for line in lines) <= 80
    assert "…" not in out
    sections = _sections(out)
    assert set(sections) == {"spot", "usdm"}
    for market in ("spot", "usdm"):
        header = next(line for line in lines if line.startswith(f"{market} "))
        assert " ws up " in header and "books 3 live" in header, header
        assert "frames/s" in header and "- frames/s" not in header
        assert set(sections[market]) == set(source.symbols(market))
        for symbol, cells in sections[market].items():
            inst = engine.instruments.get(market, symbol)
            assert inst is not None
            bid, ask, mid = cells[1], cells[2], cells[3]
            # at the tick's decimals exactly, on the tick grid, and a sane book
            assert _digits(bid) == _digits(ask) == -inst.price_exp, cells
            assert _digits(mid) == -inst.price_exp + 1, cells
            assert Decimal(bid) % inst.tick_size == 0 and Decimal(ask) % inst.tick_size == 0
            assert Decimal(bid) < Decimal(ask)
            assert Decimal(bid) < Decimal(mid) < Decimal(ask)
            side, qty = cells[5], cells[6]
            assert side in ("B", "S") and _digits(qty) == -inst.qty_exp, cells
            assert cells[-1].endswith("s"), cells  # a live book shows its age
    assert "tail: streaming" in lines[-1]
    assert "ticks: exchangeInfo spot,usdm" in lines[-1]


def test_top_shows_start_up_sync_apart_from_a_resync() -> None:
    source = SyntheticMarket(markets=("spot",), symbols_per_market=3, seed=5)
    slow, gapped, calm = source.symbols("spot")
    faults = FaultPlan.parse(
        [
            # one book never gets its first snapshot: start-up, not trouble
            f"rest_timeout:market=spot,symbol={slow},delay_s=600,count=1000",
            # another loses frames once it is live: a resync, counted
            f"drop:market=spot,symbol={gapped},at_frame=300,count=3",
        ]
    )

    async def scenario() -> None:
        async with FakeExchange(source, speed=2.0, faults=faults) as fake:
            engine = make_engine(fake, source, "binance.rest_request_timeout_s=1")
            try:
                await engine.start()

                def resynced() -> bool:
                    st = engine.conductor.status()["instruments"]
                    g = st[f"spot:{gapped}"]
                    return bool(g["resyncs"]) and g["state"] == "live"

                await _until(resynced, 120)
                assert engine.metrics is not None
                code, out, err = await _top(engine.metrics.url, "--once", "--no-color")
                assert code == 0, (out, err)
                lines = out.splitlines()
                assert lines[0].split()[3] == "STARTING", lines[0]
                assert "RESYNC" not in out and "DEGRADED" not in out
                market = next(line for line in lines if line.startswith("spot "))
                assert "books 2 live 1 sync" in market, market
                assert "resyncs 1" in lines[1], lines[1]
                rows = _sections(out)["spot"]
                assert rows[slow][-1] == "sync"
                assert rows[gapped][-1].endswith("s") and rows[calm][-1].endswith("s")
                assert "ticks: learnt" not in out  # no --rest-url: no note
            finally:
                await engine.stop()

    run(scenario)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_top_bad_url_is_one_line_and_exit_2() -> None:
    port = _free_port()  # nothing listens there now
    for url, says in (
        (f"http://127.0.0.1:{port}", f"cannot reach http://127.0.0.1:{port}/metrics"),
        ("127.0.0.1:9464", "is not an http:// or https:// URL"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "meltica", "top", url, "--once"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2
        assert proc.stdout == ""
        assert len(proc.stderr.splitlines()) == 1, proc.stderr
        assert proc.stderr.startswith("error: ") and says in proc.stderr, proc.stderr


def test_top_help_has_defaults_and_an_example() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "meltica", "top", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "(default http://127.0.0.1:9464)" in text
    assert "(default 1)" in text and "(default 5)" in text and "(default 15)" in text
    assert "examples: meltica-engine top" in text


def test_demo_snapshot_is_the_live_view_at_80x24(tmp_path: Path) -> None:
    frame = tmp_path / "frame.txt"
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "meltica", "--log-level", "WARNING", "demo"),
            *("--duration", "6", "--no-view", "--snapshot", str(frame)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = frame.read_text().splitlines()
    assert len(lines) <= 24 and max(len(line) for line in lines) <= 80
    assert lines[0].startswith("Meltica demo ")
    assert "…" not in "".join(lines)
    sections = _sections("\n".join(lines))
    assert set(sections) == {"spot", "usdm"}
    assert all(len(rows) == 3 for rows in sections.values())  # 3 symbols per market
    for rows in sections.values():
        for cells in rows.values():
            assert Decimal(cells[1]) < Decimal(cells[2]), cells  # bid < ask, both shown


def test_top_keeps_running_when_the_gateway_goes_away() -> None:
    source = SyntheticMarket(markets=("spot",), symbols_per_market=2, seed=9)

    async def scenario() -> None:
        async with FakeExchange(source, speed=1.0) as fake:
            engine = make_engine(fake, source)
            await engine.start()
            try:
                await _until(engine.ready)
                assert engine.metrics is not None
                top = asyncio.ensure_future(
                    _top(engine.metrics.url, "--duration", "12", "--interval", "0.5", "--no-color")
                )
                await _until(lambda: engine.tail.stats()["open"] >= 1 or top.done())
                assert not top.done(), top.result()
                await asyncio.sleep(1.0)  # a few prices and scrapes before the gateway goes
            finally:
                await engine.stop()
            code, out, err = await top
        assert code == 0, (out, err)
        lines = out.splitlines()
        assert "metrics: failing (unreachable)" in lines[-1], lines[-1]
        assert "tail: reconnecting (unreachable)" in lines[-1], lines[-1]
        assert "…" not in out
        rows = _sections(out)["spot"]
        assert set(rows) == set(source.symbols("spot"))
        for cells in rows.values():  # the last prices seen stay on screen
            assert Decimal(cells[1]) < Decimal(cells[2]), cells

    run(scenario)

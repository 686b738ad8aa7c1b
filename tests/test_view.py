"""The live view's model (meltica.view) from synthetic inputs: wire events decoded by
``meltica.wire`` and Prometheus text parsed by prometheus-client, on a test clock."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from rich.cells import cell_len
from rich.console import Console

from meltica.view import COLUMNS, TABLE_WIDTH, LiveView, Rate, snapshot_text, write_snapshot
from meltica.wire import decode_lines

_SEQ = iter(range(1, 1 << 30))


def _base(market: str, symbol: str, kind: str, seq: int) -> dict[str, Any]:
    return {
        "v": 1,
        "venue": "binance",
        "market": market,
        "symbol": symbol,
        "kind": kind,
        "key": f"binance:{market}:{symbol}:{kind}:{seq}",
        "seq": seq,
        "ts_event": None,
        "ts_transaction": None,
        "ts_recv": 1_700_000_000_000_000_000 + seq,
        "trace": None,
    }


def ticker(market: str, symbol: str, bid: str, ask: str, qty: str = "1") -> dict[str, Any]:
    seq = next(_SEQ)
    return {
        **_base(market, symbol, "book_ticker", seq),
        "update_id": seq,
        "bid_price": bid,
        "bid_qty": qty,
        "ask_price": ask,
        "ask_qty": qty,
    }


def trade(market: str, symbol: str, price: str, qty: str, side: str) -> dict[str, Any]:
    seq = next(_SEQ)
    return {
        **_base(market, symbol, "trade", seq),
        "trade_id": seq,
        "first_trade_id": None,
        "last_trade_id": None,
        "price": price,
        "qty": qty,
        "side": side,
    }


def book(market: str, symbol: str, bid: str, ask: str, source: str = "book") -> dict[str, Any]:
    seq = next(_SEQ)
    d = _base(market, symbol, "book_snapshot", seq)
    d["key"] = f"binance:{market}:{symbol}:book_snapshot:{source}:{seq}"
    return {
        **d,
        "update_id": seq,
        "first_update_id": None,
        "prev_update_id": None,
        "bids": [[bid, "1.5"]],
        "asks": [[ask, "2.5"]],
        "source": source,
    }


def events(*dicts: dict[str, Any]) -> list[Any]:
    return decode_lines("".join(json.dumps(d) + "\n" for d in dicts))


def scrape(text: str) -> list[Any]:
    return list(text_string_to_metric_families(text))


def metrics(
    *,
    frames: dict[str, float] | None = None,
    books: dict[tuple[str, str], tuple[int, int]] | None = None,
    published: float = 0,
    buckets: dict[float, float] | None = None,
) -> list[Any]:
    """A scrape as the gateway writes it; books: (market, symbol) -> (live, resyncs)."""
    lines = ["# TYPE meltica_ws_frames_total counter"]
    for m, v in (frames or {}).items():
        lines.append(f'meltica_ws_frames_total{{market="{m}"}} {v}')
    lines.append("# TYPE meltica_ws_connections gauge")
    lines.append("# TYPE meltica_ws_slots gauge")
    for m in frames or {}:
        lines.append(f'meltica_ws_connections{{market="{m}"}} 1')
        lines.append(f'meltica_ws_slots{{market="{m}"}} 1')
    lines.append("# TYPE meltica_book_live gauge")
    for (m, s), (live, _) in (books or {}).items():
        lines.append(f'meltica_book_live{{market="{m}",symbol="{s}"}} {live}')
    lines.append("# TYPE meltica_book_resyncs_total counter")
    for (m, s), (_, resyncs) in (books or {}).items():
        lines.append(f'meltica_book_resyncs_total{{market="{m}",symbol="{s}"}} {resyncs}')
    lines.append("# TYPE meltica_bus_published_total counter")
    lines.append(f"meltica_bus_published_total {published}")
    if buckets:
        lines.append("# TYPE meltica_pipeline_latency_seconds histogram")
        for le, count in buckets.items():
            bound = "+Inf" if le == float("inf") else repr(le)
            lines.append(f'meltica_pipeline_latency_seconds_bucket{{le="{bound}"}} {count}')
        lines.append(f"meltica_pipeline_latency_seconds_count {max(buckets.values())}")
        lines.append("meltica_pipeline_latency_seconds_sum 0.0")
    return scrape("\n".join(lines) + "\n")


def record(view: LiveView, now: float, *, width: int = 80, height: int = 24) -> list[str]:
    console = Console(width=width, height=height, record=True, file=io.StringIO())
    console.print(view.render(now, height=height))
    return console.export_text(styles=False).splitlines()


# -- rates


def test_rate_is_over_the_last_seconds_not_since_start() -> None:
    rate = Rate(window_s=5.0)
    total = 0
    for t in range(21):  # 100/s for 20 s
        rate.sample(float(t), total)
        total += 100
    total -= 100
    for t in range(21, 31):  # then 400/s for 10 s
        total += 400
        rate.sample(float(t), total)
    assert rate.per_s() == pytest.approx(400.0)  # the average since start would be 200
    for t in range(31, 40):  # then nothing
        rate.sample(float(t), total)
    assert rate.per_s() == 0.0


def test_rate_needs_two_samples_and_restarts_on_a_counter_reset() -> None:
    rate = Rate(window_s=5.0)
    assert rate.per_s() is None
    rate.sample(0.0, 1000)
    assert rate.per_s() is None
    rate.sample(1.0, 1010)
    assert rate.per_s() == pytest.approx(10.0)
    rate.sample(2.0, 5)  # the gateway restarted: no negative rate
    assert rate.per_s() is None
    rate.sample(3.0, 25)
    assert rate.per_s() == pytest.approx(20.0)


def test_rate_memory_is_bounded_by_the_window() -> None:
    rate = Rate(window_s=2.0)
    for i in range(1000):
        rate.sample(i * 0.1, i)
    assert len(rate._points) <= 22


def test_trades_per_second_slide_with_the_ticks() -> None:
    view = LiveView("t", now=0.0)
    for t in range(10):  # 2 trades a second, then 10
        view.observe(events(*(trade("spot", "BTCUSDT", "1.00", "1", "buy"),) * 2), float(t))
        view.tick(float(t))
    for t in range(10, 20):
        view.observe(events(*(trade("spot", "BTCUSDT", "1.00", "1", "buy"),) * 10), float(t))
        view.tick(float(t))
    assert view.rows[("spot", "BTCUSDT")].trades_per_s() == pytest.approx(10.0)


def test_event_and_frame_rates_come_from_the_counters_over_the_window() -> None:
    view = LiveView("t", now=0.0)
    for t in range(20):
        view.update_metrics(
            metrics(
                frames={"spot": 50.0 * t}, published=(30.0 * t if t < 10 else 270 + 90.0 * (t - 9))
            ),
            float(t),
        )
    assert view.markets["spot"].frames.per_s() == pytest.approx(50.0)
    assert view.events.per_s() == pytest.approx(90.0)


# -- prices at tick and step decimals


def test_prices_at_tick_and_quantities_at_step_decimals_from_exchange_info() -> None:
    view = LiveView("t", now=0.0)
    view.set_instrument("spot", "BTCUSDT", "0.01000000", "0.00001000")
    # Binance spot pads every decimal to 8 places
    view.observe(
        events(
            ticker("spot", "BTCUSDT", "67234.50000000", "67234.51000000"),
            trade("spot", "BTCUSDT", "67234.51000000", "0.10000000", "sell"),
        ),
        1.0,
    )
    row = next(line for line in record(view, 1.0) if line.startswith("BTCUSDT"))
    cells = row.split()
    assert cells[:5] == ["BTCUSDT", "67234.50", "67234.51", "67234.505", "0.001"]
    assert cells[5:7] == ["S", "0.10000"]


def test_tick_decimals_learnt_from_the_strings_only_grow() -> None:
    view = LiveView("t", now=0.0)
    view.observe(events(ticker("usdm", "DOGEUSDT", "0.16530", "0.16540")), 1.0)
    row = view.rows[("usdm", "DOGEUSDT")]
    assert row.price_digits == 4  # a trailing zero says nothing yet
    view.observe(events(ticker("usdm", "DOGEUSDT", "0.16535", "0.16540")), 2.0)
    assert row.price_digits == 5
    view.observe(events(ticker("usdm", "DOGEUSDT", "0.16500", "0.16600")), 3.0)
    assert row.price_digits == 5
    line = next(line for line in record(view, 3.0) if line.startswith("DOGEUSDT"))
    assert line.split()[1:4] == ["0.16500", "0.16600", "0.165500"]


def test_exact_decimals_apply_to_rows_that_appear_later() -> None:
    view = LiveView("t", now=0.0)
    view.set_instrument("usdm", "BTCUSDT", "0.10", "0.001")
    view.observe(events(ticker("usdm", "BTCUSDT", "67234.50", "67234.60")), 1.0)
    row = view.rows[("usdm", "BTCUSDT")]
    assert (row.price_digits, row.qty_digits, row.exact) == (1, 3, True)


def test_fused_and_partial_depth_snapshots_give_the_top_of_book_rest_ones_do_not() -> None:
    view = LiveView("t", now=0.0)
    view.observe(events(book("spot", "ETHUSDT", "3456.70", "3456.72", source="rest")), 1.0)
    assert ("spot", "ETHUSDT") not in view.rows
    view.observe(events(book("spot", "ETHUSDT", "3456.70", "3456.72")), 2.0)
    row = view.rows[("spot", "ETHUSDT")]
    assert (str(row.bid), str(row.ask), row.book_at) == ("3456.70", "3456.72", 2.0)
    view.observe(events(book("spot", "ETHUSDT", "3456.71", "3456.73", source="stream")), 3.0)
    assert (str(row.bid), str(row.ask), row.book_at) == ("3456.71", "3456.73", 3.0)


# -- book states: start-up is not trouble


def test_initial_sync_is_start_up_and_a_resync_is_trouble() -> None:
    view = LiveView("t", now=0.0)
    key = ("spot", "BTCUSDT")
    view.update_metrics(metrics(frames={"spot": 0}, books={key: (0, 0)}), 0.0)
    assert view.rows[key].state == "syncing"
    assert view.status() == "STARTING"
    lines = record(view, 0.0)
    assert lines[0].split()[1] == "STARTING"
    assert any(line.startswith("BTCUSDT") and line.endswith("sync") for line in lines)
    assert not any("RESYNC" in line or "DEGRADED" in line for line in lines)

    view.update_metrics(metrics(frames={"spot": 10}, books={key: (1, 0)}), 1.0)
    assert (view.rows[key].state, view.status()) == ("live", "LIVE")

    view.update_metrics(metrics(frames={"spot": 20}, books={key: (0, 1)}), 2.0)
    assert (view.rows[key].state, view.status()) == ("resyncing", "DEGRADED")
    lines = record(view, 2.0)
    assert lines[0].split()[1] == "DEGRADED"
    assert any(line.startswith("BTCUSDT") and line.endswith("RESYNC") for line in lines)

    view.update_metrics(metrics(frames={"spot": 30}, books={key: (1, 1)}), 3.0)
    assert (view.rows[key].state, view.status()) == ("live", "LIVE")
    assert "resyncs 1" in record(view, 3.0)[1]


def test_connections_not_yet_opened_are_start_up_and_a_lost_one_is_trouble() -> None:
    def ws(connections: int, slots: int, connects: int) -> list[Any]:
        return scrape(
            "# TYPE meltica_ws_connections gauge\n"
            f'meltica_ws_connections{{market="usdm"}} {connections}\n'
            "# TYPE meltica_ws_slots gauge\n"
            f'meltica_ws_slots{{market="usdm"}} {slots}\n'
            "# TYPE meltica_ws_connects_total counter\n"
            f'meltica_ws_connects_total{{market="usdm"}} {connects}\n'
        )

    view = LiveView("t", now=0.0)
    for conns, connects, state, status, shown in (
        (0, 0, "connecting", "STARTING", "ws connecting 0/2"),
        (1, 1, "connecting", "STARTING", "ws connecting 1/2"),
        (2, 2, "up", "LIVE", "ws up 2/2"),
        (1, 2, "down", "DEGRADED", "ws down 1/2"),  # one dropped
        (2, 3, "up", "LIVE", "ws up 2/2"),  # and reconnected
    ):
        view.update_metrics(ws(conns, 2, connects), 0.0)
        assert view.markets["usdm"].ws_state() == state
        assert view.status() == status
        lines = record(view, 0.0)
        assert lines[0].split()[1] == status
        assert next(x for x in lines if x.startswith("usdm")).split("  ")[1].strip() == shown


def test_the_styles_tell_start_up_from_trouble() -> None:
    view = LiveView("t", now=0.0)
    view.update_metrics(metrics(books={("spot", "A"): (0, 0), ("spot", "B"): (0, 2)}), 0.0)
    cells = {r.symbol: view._book_cell(r, 0.0) for r in view.instruments()}
    assert (cells["A"].plain, str(cells["A"].style)) == ("sync", "yellow")
    assert (cells["B"].plain, str(cells["B"].style)) == ("RESYNC", "bold red")


def test_book_age_is_time_since_the_last_top_update() -> None:
    view = LiveView("t", now=0.0)
    view.update_metrics(metrics(books={("spot", "X"): (1, 0)}), 0.0)
    view.observe(events(ticker("spot", "X", "1.0", "1.1")), 10.0)
    row = view.rows[("spot", "X")]
    assert view._book_cell(row, 10.25).plain == "0.2s"
    assert view._book_cell(row, 22.0).plain == "12s"
    assert str(view._book_cell(row, 50.0).style) == "bold red"


# -- missing metrics are "-", not a crash


def test_missing_families_show_a_dash() -> None:
    view = LiveView("t", now=0.0)
    view.update_metrics(scrape("# TYPE other_metric gauge\nother_metric 1\n"), 0.0)
    view.update_metrics([], 1.0)
    view.observe(events(ticker("spot", "X", "1.0", "1.1")), 1.0)
    lines = record(view, 1.0)
    assert "- events/s" in lines[0]
    assert lines[1].startswith("bus   lag -  drops -")
    assert "p50 - p99 -" in lines[1]


def test_a_counter_exported_without_total_is_still_read() -> None:
    view = LiveView("t", now=0.0)
    for t in range(3):
        text = f"# TYPE meltica_bus_published gauge\nmeltica_bus_published {100 * t}\n"
        view.update_metrics(scrape(text), float(t))
    assert view.events.per_s() == pytest.approx(100.0)


def test_latency_quantiles_over_the_window_from_histogram_buckets() -> None:
    view = LiveView("t", now=0.0)
    inf = float("inf")
    # 1000 slow observations long ago, then 100 fast ones within the window
    view.update_metrics(metrics(buckets={1e-5: 0, 1e-3: 0, 1.0: 1000, inf: 1000}), 0.0)
    view.update_metrics(metrics(buckets={1e-5: 0, 1e-3: 0, 1.0: 1000, inf: 1000}), 10.0)
    view.update_metrics(metrics(buckets={1e-5: 90, 1e-3: 100, 1.0: 1100, inf: 1100}), 12.0)
    assert view.latency_quantile(0.5) == 1e-5
    assert view.latency_quantile(0.99) == 1e-3
    assert "p50 ≤10µs p99 ≤1.0ms" in record(view, 12.0)[1]


# -- the screen: 80 columns, fixed columns, 24 rows

SIX = [
    ("spot", "BTCUSDT", "0.01", "0.00001", "104234.56", "104234.57", "0.00012"),
    ("spot", "PEPEUSDT", "0.00000001", "1", "0.00001234", "0.00001235", "5000000"),
    ("spot", "ETHBTC", "0.00001", "0.001", "0.05123", "0.05124", "3.100"),
    ("usdm", "1000PEPEUSDT", "0.0000001", "1", "0.0123456", "0.0123457", "800000"),
    ("usdm", "BTCUSDT", "0.1", "0.001", "67234.5", "67234.6", "2.500"),
    ("usdm", "DOGEUSDT", "0.00001", "1", "0.16543", "0.16544", "60000"),
]


def six_symbols(now: float = 5.0) -> LiveView:
    view = LiveView("Meltica demo", now=0.0)
    books = {(m, s): (1, 0) for m, s, *_ in SIX}
    for t in range(6):
        view.update_metrics(
            metrics(frames={"spot": 900.0 * t, "usdm": 1200.0 * t}, books=books, published=5e3 * t),
            float(t),
        )
    for m, s, tick, step, bid, ask, qty in SIX:
        view.set_instrument(m, s, tick, step)
        view.observe(events(ticker(m, s, bid, ask), trade(m, s, ask, qty, "buy")), now)
    view.tick(now)
    return view


def test_six_symbols_fit_80_columns_and_24_rows_without_truncation_or_wrap() -> None:
    view = six_symbols()
    lines = record(view, 5.0)
    assert len(lines) == 2 + 1 + 2 + 6 + 1  # title, bus, headers, 2 markets, 6 rows, feeds
    for line in lines:
        assert cell_len(line) <= 80, line
        assert "…" not in line, line
    text = "\n".join(lines)
    for _m, s, _, _, bid, ask, qty in SIX:
        row = next(line for line in lines if line.split()[0] == s and bid in line)
        assert row.split()[1:3] == [bid, ask]
        assert qty in row
    assert "BTCUSDT" in text and "1000PEPEUSDT" in text
    assert TABLE_WIDTH <= 80


def test_columns_stay_put_when_values_change() -> None:
    view = six_symbols()
    first = record(view, 5.0)
    view.observe(events(ticker("spot", "ETHBTC", "1.5", "1.50001")), 6.0)
    view.observe(events(trade("usdm", "DOGEUSDT", "0.2", "7", "sell")), 6.0)
    second = record(view, 6.0)
    header = next(line for line in first if line.startswith("symbol"))
    assert header == next(line for line in second if line.startswith("symbol"))
    # every right-aligned cell ends where its column ends, in the header and in every row
    ends, pos = [], 0
    for _, width, justify in COLUMNS:
        pos += width
        if justify == "right":
            ends.append(pos)
        pos += 1
    assert header.startswith("symbol ")
    for lines in (first, second):
        for line in [header, *(x for x in lines if x.split()[0] in {s for _, s, *_ in SIX})]:
            for end in ends:
                assert line[end - 1] != " ", (line, end)
                assert end == len(line) or line[end] == " ", (line, end)


def test_rows_beyond_the_height_are_summed_up_in_one_line() -> None:
    view = LiveView("t", now=0.0)
    for i in range(40):
        view.observe(events(ticker("spot", f"SYM{i:02d}USDT", "1.00", "1.01")), 1.0)
    lines = record(view, 1.0, height=24)
    assert len(lines) <= 24
    more = [line for line in lines if line.startswith("...")]
    assert more and more[0].split()[1] == str(40 - sum(line.startswith("SYM") for line in lines))


def test_snapshot_files(tmp_path: Any) -> None:
    view = six_symbols()
    text = snapshot_text(view, 5.0)
    assert max(cell_len(line) for line in text.splitlines()) <= 80
    write_snapshot(view, 5.0, tmp_path / "frame.svg")
    write_snapshot(view, 5.0, tmp_path / "frame.txt")
    svg = (tmp_path / "frame.svg").read_text()
    assert svg.startswith("<svg") and "1000PEPEUSDT" in svg
    assert (tmp_path / "frame.txt").read_text() == text

"""Capture readers and writer: synthetic files for every format and edge case, then the real
captures (counts, spans and markets as the files hold them)."""

from __future__ import annotations

import gzip
import json
import shutil
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path

import pytest

from meltica import capture
from meltica.capture import (
    FORMATS,
    CaptureInfo,
    CaptureRecord,
    CaptureWriter,
    capture_info,
    detect_format,
    read_capture,
)
from meltica.errors import CaptureError, MelticaError

NS = 1_000_000_000

SPOT_DEPTH = (
    '{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1723161255208,'
    '"s":"BTCUSDT","U":50093239189,"u":50093239202,"b":[["61737.63000000","0.00000000"]],'
    '"a":[["61837.64000000","1.54698000"]]}}'
)
SPOT_BOOK_TICKER = (
    '{"stream":"btcusdt@bookTicker","data":{"u":50093239212,"s":"BTCUSDT",'
    '"b":"61837.63000000","B":"3.78826000","a":"61837.64000000","A":"1.54698000"}}'
)
SPOT_TRADE = (
    '{"stream":"btcusdt@trade","data":{"e":"trade","E":1723161255343,"s":"BTCUSDT",'
    '"t":3735683259,"p":"61837.63000000","q":"0.02000000","T":1723161255342,"m":true,"M":true}}'
)
SPOT_SNAPSHOT = (
    '{"lastUpdateId":50093239218,"bids":[["61837.63000000","3.78826000"]],'
    '"asks":[["61837.64000000","1.54698000"]]}'
)
# written by json.dumps with its default separators, as in the 2023 hftbacktest futures file
SPACED_SNAPSHOT = '{"lastUpdateId": 2710246765483, "E": 1680652700590, "bids": [], "asks": []}'
USDM_DEPTH = (
    '{"stream":"btcusdt@depth@0ms","data":{"e":"depthUpdate","E":1721347201585,'
    '"T":1721347201533,"s":"BTCUSDT","U":4984034747463,"u":4984034747463,'
    '"pu":4984033952967,"b":[],"a":[["64020.40","0.000"]]}}'
)
USDM_BOOK_TICKER = (
    '{"stream":"btcusdt@bookTicker","data":{"e":"bookTicker","u":4984028370881,"s":"BTCUSDT",'
    '"b":"63943.90","B":"46.371","a":"63944.00","A":"0.095","T":1721347022507,"E":1721347022507}}'
)
COINM_BOOK_TICKER = (
    '{"stream":"bchusd_perp@bookTicker","data":{"u":167006084895,"e":"bookTicker",'
    '"s":"BCHUSD_PERP","ps":"BCHUSD","b":"427.84","B":"24","a":"427.90","A":"669",'
    '"T":1626916403864,"E":1626916403871}}'
)


def depth(symbol: str) -> str:
    return SPOT_DEPTH.replace("btcusdt", symbol.lower()).replace("BTCUSDT", symbol)


def write_hft(path: Path, lines: list[tuple[int, str]], *, gz: bool = True) -> Path:
    text = "".join(f"{ts} {frame}\n" for ts, frame in lines).encode()
    path.write_bytes(gzip.compress(text) if gz else text)
    return path


def records(path: Path, fmt: str = "auto") -> list[CaptureRecord]:
    return list(read_capture(path, fmt))


def read_until_error(path: Path) -> tuple[list[CaptureRecord], CaptureError]:
    """The records yielded before the reader raised, and the error."""
    out: list[CaptureRecord] = []
    with pytest.raises(CaptureError) as info:
        for r in read_capture(path):
            out.append(r)
    return out, info.value


# hftbacktest


def test_hftbacktest_records_keep_payload_bytes(tmp_path: Path) -> None:
    path = write_hft(
        tmp_path / "btcusdt_20240808.gz",
        [
            (1723161253937085768, SPOT_DEPTH),
            (1723161254087891268, SPOT_BOOK_TICKER),
            (1723161254206652067, SPOT_SNAPSHOT),
            (1723161254206652067, SPACED_SNAPSHOT),
        ],
    )
    assert detect_format(path) == "hftbacktest"
    assert records(path) == [
        CaptureRecord(1723161253937085768, "ws", SPOT_DEPTH.encode()),
        CaptureRecord(1723161254087891268, "ws", SPOT_BOOK_TICKER.encode()),
        CaptureRecord(
            1723161254206652067, "rest", SPOT_SNAPSHOT.encode(), "", "/depth?symbol=BTCUSDT"
        ),
        CaptureRecord(
            1723161254206652067, "rest", SPACED_SNAPSHOT.encode(), "", "/depth?symbol=BTCUSDT"
        ),
    ]


@pytest.mark.parametrize(
    ("written", "ns"),
    [
        (1680652800004107, 1680652800004107000),  # µs, the 2023 *.dat.gz files
        (10**17 - 1, (10**17 - 1) * 1000),
        (10**17, 10**17),
        (1723161253937085768, 1723161253937085768),  # ns, the 2024 files
    ],
)
def test_hftbacktest_microseconds_become_ns(tmp_path: Path, written: int, ns: int) -> None:
    path = write_hft(tmp_path / "btcusdt_20230405.dat.gz", [(written, SPOT_TRADE)])
    assert [r.ts_recv for r in read_capture(path)] == [ns]


def test_hftbacktest_snapshot_symbol_is_the_latest_depth_stream(tmp_path: Path) -> None:
    path = write_hft(
        tmp_path / "mixed.gz",
        [(1, depth("ETHUSDT")), (2, SPOT_SNAPSHOT), (3, depth("BTCUSDT")), (4, SPOT_SNAPSHOT)],
    )
    assert [r.url for r in read_capture(path) if r.kind == "rest"] == [
        "/depth?symbol=ETHUSDT",
        "/depth?symbol=BTCUSDT",
    ]


def test_hftbacktest_snapshot_before_any_depth_waits_for_the_next(tmp_path: Path) -> None:
    # the 2023 futures files fetch the snapshot before the first depth frame arrives
    lines = [
        (1, USDM_BOOK_TICKER),
        (2, SPACED_SNAPSHOT),
        (3, USDM_BOOK_TICKER),
        (4, USDM_DEPTH),
        (5, USDM_BOOK_TICKER),
    ]
    got = records(write_hft(tmp_path / "btcusdt_20230404.dat.gz", lines))
    assert [(r.ts_recv // 1000, r.kind) for r in got] == [
        (1, "ws"),
        (2, "rest"),
        (3, "ws"),
        (4, "ws"),
        (5, "ws"),
    ]
    assert got[1].url == "/depth?symbol=BTCUSDT"


def test_hftbacktest_snapshot_without_depth_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(capture, "_SNAPSHOT_LOOKAHEAD", 3)
    lines = [(1, SPOT_SNAPSHOT), *((ts, SPOT_TRADE) for ts in range(2, 6)), (6, SPOT_DEPTH)]
    got = records(write_hft(tmp_path / "x.gz", lines))
    # not named within the look-ahead: no symbol, and every record still comes, in order
    assert [r.ts_recv // 1000 for r in got] == [1, 2, 3, 4, 5, 6]
    assert got[0].url == "/depth"
    only = records(write_hft(tmp_path / "y.gz", [(1, SPOT_TRADE), (2, SPOT_SNAPSHOT)]))
    assert only[1].url == "/depth"


def test_hftbacktest_blank_lines_crlf_and_plain_text(tmp_path: Path) -> None:
    path = tmp_path / "plain.txt"
    path.write_bytes(f"\n1 {SPOT_TRADE}\r\n\n2 {SPOT_DEPTH}".encode())  # no final newline
    assert detect_format(path) == "hftbacktest"
    assert [r.payload for r in read_capture(path)] == [SPOT_TRADE.encode(), SPOT_DEPTH.encode()]


def test_hftbacktest_malformed_json_is_the_parsers_business(tmp_path: Path) -> None:
    # a cut frame still fits `<ts> <json object>`: it is a ws record; normalize rejects it
    cut = SPOT_TRADE[:40]
    assert records(write_hft(tmp_path / "x.gz", [(1, cut)]))[0].payload == cut.encode()


@pytest.mark.parametrize(
    "bad", ["not-a-ts " + SPOT_TRADE, SPOT_TRADE, "12345", "12345 ", "12345 hello", "-5 {}"]
)
def test_hftbacktest_line_out_of_format(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "bad.gz"
    path.write_bytes(
        gzip.compress(f"1 {SPOT_TRADE}\n2 {SPOT_DEPTH}\n{bad}\n3 {SPOT_TRADE}\n".encode())
    )
    good, err = read_until_error(path)
    assert [r.ts_recv for r in good] == [1000, 2000]
    assert f"{path}:3:" in str(err)


def test_hftbacktest_error_after_held_records_still_yields_them(tmp_path: Path) -> None:
    path = tmp_path / "bad.gz"
    path.write_bytes(gzip.compress(f"1 {SPOT_SNAPSHOT}\n2 {SPOT_TRADE}\noops\n".encode()))
    good, err = read_until_error(path)
    assert [(r.kind, r.url) for r in good] == [("rest", "/depth"), ("ws", None)]
    assert f"{path}:3:" in str(err)


def test_hftbacktest_truncated_gzip(tmp_path: Path) -> None:
    lines = [
        (1723161253937085768 + i, SPOT_TRADE.replace("3735683259", str(i))) for i in range(5000)
    ]
    whole = gzip.compress("".join(f"{ts} {f}\n" for ts, f in lines).encode())
    path = tmp_path / "crashed.gz"
    path.write_bytes(whole[: len(whole) // 2])
    good, err = read_until_error(path)
    assert 0 < len(good) < len(lines)
    assert [r.payload for r in good] == [f.encode() for _, f in lines[: len(good)]]
    assert f"{path}:{len(good) + 1}: file is truncated" in str(err)


@pytest.mark.parametrize(
    ("frames", "market"),
    [
        ([SPOT_DEPTH, SPOT_BOOK_TICKER, SPOT_TRADE], "spot"),
        ([SPOT_BOOK_TICKER], "spot"),
        ([USDM_DEPTH], "usdm"),
        ([USDM_BOOK_TICKER], "usdm"),
        ([SPOT_TRADE.replace('"M":true', '"X":"MARKET"')], "usdm"),
        ([COINM_BOOK_TICKER], "coinm"),
        ([USDM_DEPTH.replace("BTCUSDT", "ETHUSD_PERP")], "coinm"),
        ([USDM_DEPTH.replace("BTCUSDT", "BTCUSDT_240927")], "usdm"),  # a USD-M quarterly
        ([SPOT_DEPTH, USDM_DEPTH], None),  # contradictory
        (['{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","s":"BTCUSDT"}}'], None),
        (['{"result":null,"id":1}', "{not json"], None),
    ],
)
def test_hftbacktest_market_is_sniffed(
    tmp_path: Path, frames: list[str], market: str | None
) -> None:
    path = write_hft(tmp_path / "x.gz", [(i + 1, f) for i, f in enumerate(frames)])
    assert capture_info(path) == CaptureInfo(path, "hftbacktest", "binance", market)


def test_market_sniffing_reads_only_the_start(tmp_path: Path) -> None:
    lines = [(i, SPOT_TRADE) for i in range(1, 251)] + [(300, USDM_DEPTH)]
    assert capture_info(write_hft(tmp_path / "x.gz", lines)).market == "spot"


def test_market_sniffing_tolerates_a_damaged_tail(tmp_path: Path) -> None:
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(f"1 {USDM_DEPTH}\n2 {USDM_BOOK_TICKER}\n".encode())[:-4])
    assert capture_info(path).market == "usdm"  # reading it still reports the damage:
    with pytest.raises(CaptureError, match="truncated"):
        records(path)


# cryptofeed

CF_WS_URL = "wss://fstream.binance.com/stream?streams=sushiusdt@depth@100ms/akrousdt@bookTicker"
CF_FRAME_A = (
    '{"stream":"sushiusdt@depth@100ms","data":{"e":"depthUpdate","E":1626992741037,'
    '"s":"SUSHIUSDT","U":1,"u":2,"pu":0,"b":[],"a":[]}}'
)
CF_FRAME_B = '{"stream":"akrousdt@bookTicker","data":{"e":"bookTicker","u":5,"s":"AKROUSDT"}}'
CF_BODY = '{"lastUpdateId":600859605926,"E":1626992741264,"T":1626992741261,"bids":[],"asks":[]}'


def http_line(symbol: str, ts: str, body: str = CF_BODY, host: str = "fapi.binance.com") -> str:
    return f"https://{host}/fapi/v1/depth?symbol={symbol}&limit=1000 -> {ts}: {body}\n"


def write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def cf_session(tmp_path: Path, http: str | None) -> Path:
    ws = write_text(
        tmp_path / "BINANCE_FUTURES.ws.1.0",
        f"{CF_WS_URL} <-> 1626992740.179554\n"
        f"1626992741.06217: {CF_FRAME_B}\n"
        f"1626992741.301402: {CF_FRAME_A}\n"
        f"1626992742.5: {CF_FRAME_B}\n"
        "\n",
    )
    if http is not None:
        write_text(tmp_path / "BINANCE_FUTURES.http.0.0", http)
    return ws


def test_cryptofeed_ws_alone(tmp_path: Path) -> None:
    ws = cf_session(tmp_path, http=None)
    assert detect_format(ws) == "cryptofeed"
    conn = json.dumps({"event": "connect", "url": CF_WS_URL}, separators=(",", ":")).encode()
    assert records(ws) == [
        CaptureRecord(1626992740179554000, "conn", conn, "BINANCE_FUTURES.ws.1", CF_WS_URL),
        CaptureRecord(1626992741062170000, "ws", CF_FRAME_B.encode(), "BINANCE_FUTURES.ws.1"),
        CaptureRecord(1626992741301402000, "ws", CF_FRAME_A.encode(), "BINANCE_FUTURES.ws.1"),
        CaptureRecord(1626992742500000000, "ws", CF_FRAME_B.encode(), "BINANCE_FUTURES.ws.1"),
    ]
    assert capture_info(ws) == CaptureInfo(ws, "cryptofeed", "binance", "usdm")


def test_cryptofeed_merges_sibling_http_in_time_order(tmp_path: Path) -> None:
    ws = cf_session(
        tmp_path,
        http=http_line("SUSHIUSDT", "1626992741.301402")  # same ts as a frame: frame first
        + http_line("AKROUSDT", "1626992741.475372")
        + "\n",
    )
    write_text(tmp_path / "BINANCE.http.0.0", http_line("BTCUSDT", "1626992741.1"))  # other feed
    got = [(r.kind, r.ts_recv, r.conn, r.url) for r in read_capture(ws)]
    rest_url = "https://fapi.binance.com/fapi/v1/depth?symbol={}&limit=1000"
    assert got == [
        ("conn", 1626992740179554000, "BINANCE_FUTURES.ws.1", CF_WS_URL),
        ("ws", 1626992741062170000, "BINANCE_FUTURES.ws.1", None),
        ("ws", 1626992741301402000, "BINANCE_FUTURES.ws.1", None),
        ("rest", 1626992741301402000, "BINANCE_FUTURES.http.0", rest_url.format("SUSHIUSDT")),
        ("rest", 1626992741475372000, "BINANCE_FUTURES.http.0", rest_url.format("AKROUSDT")),
        ("ws", 1626992742500000000, "BINANCE_FUTURES.ws.1", None),
    ]
    assert [r.payload for r in read_capture(ws) if r.kind == "rest"] == [CF_BODY.encode()] * 2


def test_cryptofeed_merge_keeps_only_this_connections_snapshots(tmp_path: Path) -> None:
    # another connection's symbol, and a snapshot from before this connection opened
    ws = cf_session(
        tmp_path,
        http=http_line("ETHUSDT", "1626992741.2")
        + http_line("SUSHIUSDT", "1626992739.0")
        + http_line("SUSHIUSDT", "1626992741.4"),
    )
    assert [r.ts_recv for r in read_capture(ws) if r.kind == "rest"] == [1626992741400000000]


def test_cryptofeed_rotated_files(tmp_path: Path) -> None:
    # cryptofeed rotates a connection's file: rotation 1 has no connect line
    cf_session(
        tmp_path,
        http=http_line("SUSHIUSDT", "1626992741.4") + http_line("SUSHIUSDT", "1626992743.5"),
    )
    second = write_text(
        tmp_path / "BINANCE_FUTURES.ws.1.1",
        f"1626992743.0: {CF_FRAME_A}\n1626992744.0: {CF_FRAME_A}\n",
    )
    assert detect_format(second) == "cryptofeed"
    assert capture_info(second) == CaptureInfo(second, "cryptofeed", "binance", "usdm")
    rest = [
        r.ts_recv for r in read_capture(tmp_path / "BINANCE_FUTURES.ws.1.0") if r.kind == "rest"
    ]
    assert rest == [1626992741400000000]  # the later one belongs to rotation 1
    assert [r.kind for r in read_capture(second)] == ["ws", "rest", "ws"]


def test_cryptofeed_http_alone(tmp_path: Path) -> None:
    cf_session(tmp_path, http=http_line("SUSHIUSDT", "1626992741.4") + "\n")
    http = tmp_path / "BINANCE_FUTURES.http.0.0"
    assert detect_format(http) == "cryptofeed"
    assert [(r.kind, r.conn) for r in read_capture(http)] == [("rest", "BINANCE_FUTURES.http.0")]
    assert capture_info(http) == CaptureInfo(http, "cryptofeed", "binance", "usdm")


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        (b"1633998512.0633569", 1633998512063356900),
        (b"1633998512.320639", 1633998512320639000),
        (b"1633998512", 1633998512000000000),
        (b"1633998512.1", 1633998512100000000),
        (b"1633998512.123456789987", 1633998512123456789),  # beyond ns: truncated
    ],
)
def test_cryptofeed_seconds_are_converted_exactly(text: bytes, ns: int) -> None:
    assert capture._seconds_to_ns(text) == ns


def test_cryptofeed_send_lines_are_skipped(tmp_path: Path) -> None:
    path = write_text(
        tmp_path / "X.ws.2.0",
        "wss://stream.binance.com:9443/ws <-> 1.5\n"
        "wss://stream.binance.com:9443/ws <- 1.6: "
        '{"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":1}\n'
        '1.7: {"result":null,"id":1}\n',
    )
    assert [r.kind for r in read_capture(path)] == ["conn", "ws"]
    assert capture_info(path).market == "spot"


def test_cryptofeed_line_out_of_format(tmp_path: Path) -> None:
    path = write_text(
        tmp_path / "BINANCE.ws.1.0",
        f"{CF_WS_URL} <-> 1.0\n2.0: {CF_FRAME_A}\n2.5 {CF_FRAME_A}\n3.0: {CF_FRAME_A}\n",
    )
    good, err = read_until_error(path)
    assert [r.kind for r in good] == ["conn", "ws"]
    assert f"{path}:3:" in str(err)


@pytest.mark.parametrize(
    ("url", "venue", "market"),
    [
        ("wss://stream.binance.com:9443/stream?streams=a@trade", "binance", "spot"),
        ("wss://data-stream.binance.vision/ws/btcusdt@trade", "binance", "spot"),
        ("wss://fstream.binance.com/stream?streams=a@trade", "binance", "usdm"),
        ("wss://dstream.binance.com/stream?streams=a@trade", "binance", "coinm"),
        ("wss://stream.binance.us:9443/stream?streams=a@trade", "binance_us", "spot"),
        ("https://api.binance.com/api/v3/depth?symbol=A", "binance", "spot"),
        ("https://api3.binance.com/api/v3/depth?symbol=A", "binance", "spot"),
        ("https://fapi.binance.com/fapi/v1/depth?symbol=A", "binance", "usdm"),
        ("https://dapi.binance.com/dapi/v1/depth?symbol=A", "binance", "coinm"),
        ("https://api.binance.us/api/v3/depth?symbol=A", "binance_us", "spot"),
        ("wss://ws.example.com/stream", None, None),
    ],
)
def test_venue_and_market_from_url(url: str, venue: str | None, market: str | None) -> None:
    assert capture._venue_market(url) == (venue, market)


def test_cryptofeed_unknown_host_falls_back_to_frames(tmp_path: Path) -> None:
    path = write_text(
        tmp_path / "MIRROR.ws.1.0",
        f"wss://mirror.example/stream <-> 1.0\n2.0: {COINM_BOOK_TICKER}\n",
    )
    assert capture_info(path) == CaptureInfo(path, "cryptofeed", None, "coinm")


def test_cryptofeed_exchange_info_is_not_a_capture(tmp_path: Path) -> None:
    info = write_text(
        tmp_path / "BINANCE.0",
        'https://api.binance.com/api/v3/exchangeInfo -> 1633998511.132921: {"timezone":"UTC"}\n'
        'configuration: {"trades":["BTC-USDT"]}\n',
    )
    config = write_text(tmp_path / "OTHER.0", 'configuration: {"trades":["BTC-USDT"]}\n')
    for path in (info, config):
        with pytest.raises(CaptureError, match="not a capture"):
            detect_format(path)
        with pytest.raises(CaptureError, match="not a capture"):
            read_capture(path)


# Meltica's own format


PAYLOADS = [
    SPOT_TRADE.encode(),
    b'{"k":"caf\xc3\xa9 \\u00e9 \\"q\\" \\\\ \xe2\x82\xac","tab":"\t"}',  # UTF-8, escapes
    b"not json at all\x00\x7f",  # captures keep whatever came, even if the parser will reject it
    b"",
    b"line\nbreak\r\n",
]


def test_writer_reader_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "session.jsonl.gz"
    event = {"event": "connect", "url": "wss://stream.binance.com:9443/stream?streams=x@trade"}
    with CaptureWriter(path, venue="binance", market="spot") as w:
        w.write_conn(1, "c1", event)
        for i, payload in enumerate(PAYLOADS):
            w.write_ws(10 + i, "c1", payload)
        w.write_rest(
            99, "r", "https://api.binance.com/api/v3/depth?symbol=BTCUSDT", SPOT_SNAPSHOT.encode()
        )
        w.write_conn(100, "c1", {"event": "disconnect", "code": 1006})
    assert detect_format(path) == "meltica"
    assert capture_info(path) == CaptureInfo(path, "meltica", "binance", "spot")
    got = records(path)
    assert got[0] == CaptureRecord(1, "conn", got[0].payload, "c1", event["url"])
    assert json.loads(got[0].payload) == event
    assert [r.payload for r in got[1:-2]] == PAYLOADS
    assert [(r.ts_recv, r.kind, r.conn, r.url) for r in got[1:-2]] == [
        (10 + i, "ws", "c1", None) for i in range(len(PAYLOADS))
    ]
    assert got[-2] == CaptureRecord(
        99,
        "rest",
        SPOT_SNAPSHOT.encode(),
        "r",
        "https://api.binance.com/api/v3/depth?symbol=BTCUSDT",
    )
    assert (got[-1].kind, got[-1].url, json.loads(got[-1].payload)) == (
        "conn",
        None,
        {"event": "disconnect", "code": 1006},
    )
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    assert json.loads(lines[0]) == {"meltica_capture": 1, "venue": "binance", "market": "spot"}
    assert json.loads(lines[2]) == {
        "ts": 10,
        "conn": "c1",
        "type": "ws",
        "url": None,
        "data": SPOT_TRADE,
    }


def test_meltica_header_without_market_sniffs_frames(tmp_path: Path) -> None:
    path = tmp_path / "x.gz"
    with CaptureWriter(path) as w:
        w.write_ws(1, "c", USDM_DEPTH.encode())
    assert capture_info(path) == CaptureInfo(path, "meltica", None, "usdm")


def test_meltica_crash_mid_write_reads_up_to_the_last_complete_line(tmp_path: Path) -> None:
    path = tmp_path / "live.gz"
    w = CaptureWriter(path, "binance", "usdm")
    for i in range(3):
        w.write_ws(i, "c", USDM_DEPTH.encode())
    w.flush()  # what survives a crash: everything up to the last sync point, no gzip trailer
    crashed = tmp_path / "crashed.gz"
    shutil.copyfile(path, crashed)
    w.close()
    assert capture_info(crashed).market == "usdm"
    good, err = read_until_error(crashed)
    assert [r.ts_recv for r in good] == [0, 1, 2]
    assert f"{crashed}:5: file is truncated" in str(err)
    assert len(records(path)) == 3  # the properly closed file reads cleanly


def test_meltica_truncated_mid_line(tmp_path: Path) -> None:
    path = tmp_path / "x.gz"
    with CaptureWriter(path, "binance", "spot") as w:
        for i in range(2000):
            w.write_ws(i, "c", SPOT_TRADE.replace("3735683259", str(i)).encode())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    good, err = read_until_error(path)
    assert [r.ts_recv for r in good] == list(range(len(good)))
    assert f"{path}:{len(good) + 2}: file is truncated" in str(err)  # + 2: the header line


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "JSON object"),
        ('{"ts": "1", "type": "ws", "data": ""}', "'ts'"),
        ('{"ts": true, "type": "ws", "data": ""}', "'ts'"),
        ('{"ts": 1, "type": "frame", "data": ""}', "'type'"),
        ('{"ts": 1, "type": "ws", "data": 5}', "'data'"),
        ('{"ts": 1, "type": "ws"}', "'data'"),
        ('{"ts": 1, "type": "ws", "conn": 1, "data": ""}', "'conn'"),
        ('{"ts": 1, "type": "rest", "url": 1, "data": ""}', "'url'"),
        ('{"ts": 1, "type": "ws", "data": "\\ud800"}', "Unicode"),
    ],
)
def test_meltica_corrupt_line(tmp_path: Path, line: str, message: str) -> None:
    header = '{"meltica_capture": 1, "venue": "binance", "market": "spot"}'
    good_line = '{"ts": 1, "conn": "c", "type": "ws", "url": null, "data": "{}"}'
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(f"{header}\n{good_line}\n{line}\n{good_line}\n".encode()))
    good, err = read_until_error(path)
    assert [r.payload for r in good] == [b"{}"]
    assert f"{path}:3:" in str(err)
    assert message in str(err)


@pytest.mark.parametrize(
    "header",
    [
        '{"meltica_capture": 2, "venue": "binance", "market": "spot"}',
        '{"meltica_capture": 1, "venue": "binance", "market": "options"}',
    ],
)
def test_meltica_bad_header(tmp_path: Path, header: str) -> None:
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(f"{header}\n".encode()))
    with pytest.raises(CaptureError, match=f"{path}:1:"):
        capture_info(path)
    with pytest.raises(CaptureError, match=f"{path}:1:"):
        records(path)


def test_meltica_format_forced_on_another_format(tmp_path: Path) -> None:
    path = write_hft(tmp_path / "x.gz", [(1, SPOT_TRADE)])
    with pytest.raises(CaptureError, match="missing the Meltica capture header"):
        records(path, "meltica")


def test_writer_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="venue"):
        CaptureWriter(tmp_path / "a.gz", venue="kraken")
    with pytest.raises(ValueError, match="market"):
        CaptureWriter(tmp_path / "a.gz", market="options")
    with pytest.raises(CaptureError, match="cannot create"):
        CaptureWriter(tmp_path / "missing-dir" / "a.gz")
    with CaptureWriter(tmp_path / "b.gz") as w:
        with pytest.raises(ValueError, match="UTF-8"):
            w.write_ws(1, "c", b"\xff")
        with pytest.raises(TypeError, match="ts_recv"):
            w.write_ws(1.5, "c", b"{}")  # type: ignore[arg-type]
    w.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        w.write_ws(1, "c", b"{}")
    assert records(tmp_path / "b.gz") == []


# Errors common to every format


def test_missing_file_and_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gz"
    for call in (detect_format, capture_info, read_capture):
        with pytest.raises(CaptureError, match=f"{missing}: no such file"):
            call(missing)
        with pytest.raises(CaptureError, match="is a directory"):
            call(tmp_path)
    with pytest.raises(CaptureError, match="no such file"):
        read_capture(missing, "hftbacktest")  # raised on the call, not on first iteration


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\n\n",
        gzip.compress(b""),
        b"hello world\n",
        gzip.compress(b'{"some": "json"}\n'),
        b"\x00\x01\x02binary",
        b"\x1f\x8bnot really gzip",
    ],
)
def test_unknown_format(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "mystery.gz"
    path.write_bytes(content)
    with pytest.raises(CaptureError, match=str(path)) as info:
        read_capture(path)
    assert isinstance(info.value, MelticaError)
    assert isinstance(info.value, OSError)


def test_bad_fmt_argument(tmp_path: Path) -> None:
    path = write_hft(tmp_path / "x.gz", [(1, SPOT_TRADE)])
    with pytest.raises(ValueError, match="fmt"):
        read_capture(path, "tardis")
    assert all(records(path, fmt) for fmt in ("auto", "hftbacktest"))
    assert FORMATS == ("meltica", "hftbacktest", "cryptofeed")


def test_corrupt_gzip_data(tmp_path: Path) -> None:
    data = bytearray(gzip.compress("".join(f"{i} {SPOT_TRADE}\n" for i in range(3000)).encode()))
    data[len(data) // 2] ^= 0xFF
    path = tmp_path / "x.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(CaptureError, match=rf"{path}:\d+: "):
        records(path)


def test_record_is_frozen() -> None:
    r = CaptureRecord(1, "ws", b"{}")
    with pytest.raises(AttributeError):
        r.ts_recv = 2  # type: ignore[misc]
    assert (r.conn, r.url) == ("", None)


# The real captures (../shared/captures/binance, or MELTICA_CAPTURES)

# file: (lines = records, REST snapshots, market, span start, span end (UTC, inclusive))
HFTBACKTEST = {
    "spot/btcusdt_20240808.gz": (41_249, 1, "spot", "2024-08-08T23:54:13", "2024-08-09T00:00:00"),
    "spot/btcusdt_20240809.gz": (58_325, 0, "spot", "2024-08-09T00:00:00", "2024-08-09T00:05:05"),
    "spot/btcusdt_20230405.dat.gz": (
        15_088,
        0,
        "spot",
        "2023-04-05T00:00:00",
        "2023-04-05T00:06:55",
    ),
    "usdm/btcusdt_20240808.gz": (93_954, 1, "usdm", "2024-08-08T23:54:15", "2024-08-09T00:00:00"),
    "usdm/btcusdt_20240718.gz": (11_414, 1, "usdm", "2024-07-18T23:57:00", "2024-07-19T00:00:00"),
    "usdm/btcusdt_20240719.gz": (60_570, 0, "usdm", "2024-07-19T00:00:00", "2024-07-19T00:06:00"),
    "usdm/btcusdt_20230404.dat.gz": (
        13_384,
        1,
        "usdm",
        "2023-04-04T23:58:20",
        "2023-04-05T00:00:00",
    ),
    "usdm/btcusdt_20230405.dat.gz": (
        60_381,
        0,
        "usdm",
        "2023-04-05T00:00:00",
        "2023-04-05T00:06:55",
    ),
}
# session: (ws frames, REST snapshots, venue, market, UTC date)
CRYPTOFEED = {
    "BINANCE": (265, 4, "binance", "spot", "2021-10-12"),
    "BINANCE_FUTURES": (1_535, 4, "binance", "usdm", "2021-07-22"),
    "BINANCE_DELIVERY": (4_371, 10, "binance", "coinm", "2021-07-22"),
    "BINANCE_US": (480, 4, "binance_us", "spot", "2021-10-12"),
}


def utc_ns(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()) * NS


def existing(path: Path) -> Path:
    if not path.is_file():
        pytest.fail(f"{path} is missing from the captures directory")
    return path


@pytest.mark.parametrize("name", sorted(HFTBACKTEST))
def test_real_hftbacktest(captures_dir: Path, name: str) -> None:
    n_lines, n_rest, market, start, end = HFTBACKTEST[name]
    path = existing(captures_dir / "hftbacktest" / "examples" / name)
    assert capture_info(path) == CaptureInfo(path, "hftbacktest", "binance", market)
    kinds: Counter[str] = Counter()
    prev = utc_ns(start)
    with gzip.open(path, "rb") as f:
        for line, r in zip(f, read_capture(path), strict=True):
            kinds[r.kind] += 1
            ts_text, _, payload = line.rstrip(b"\n").partition(b" ")
            assert r.payload == payload  # byte for byte
            assert r.ts_recv in (int(ts_text), int(ts_text) * 1000)
            assert r.ts_recv >= prev  # this recorder's clock never steps back
            prev = r.ts_recv
            if r.kind == "rest":
                assert r.url == "/depth?symbol=BTCUSDT"
    assert prev <= utc_ns(end)
    assert kinds == Counter({"ws": n_lines - n_rest, "rest": n_rest})


@pytest.mark.parametrize("feed", sorted(CRYPTOFEED))
def test_real_cryptofeed(captures_dir: Path, feed: str) -> None:
    n_frames, n_rest, venue, market, day = CRYPTOFEED[feed]
    folder = captures_dir / "cryptofeed" / "sample_data"
    ws, http = existing(folder / f"{feed}.ws.1.0"), existing(folder / f"{feed}.http.0.0")
    for path in (ws, http):
        assert capture_info(path) == CaptureInfo(path, "cryptofeed", venue, market)
    got = records(ws)
    assert Counter(r.kind for r in got) == Counter({"conn": 1, "ws": n_frames, "rest": n_rest})
    assert got[0].kind == "conn"
    assert got[0].url is not None and got[0].url.startswith("wss://")
    ts = [r.ts_recv for r in got]
    assert ts == sorted(ts)
    assert utc_ns(f"{day}T00:00:00") <= ts[0] and ts[-1] < utc_ns(f"{day}T00:00:00") + 86_400 * NS
    assert ts[-1] - ts[0] < 60 * NS
    assert [r for r in got if r.kind == "rest"] == records(http)
    for r in got[1:]:
        assert r.payload.startswith(b"{") and r.payload.endswith(b"}")
    with pytest.raises(CaptureError, match="not a capture"):
        detect_format(existing(folder / f"{feed}.0"))


def real_captures(root: Path) -> Iterator[tuple[Path, str]]:
    for name, (*_, market, _start, _end) in HFTBACKTEST.items():
        yield root / "hftbacktest" / "examples" / name, market
    for feed, (*_, market, _day) in CRYPTOFEED.items():
        yield root / "cryptofeed" / "sample_data" / f"{feed}.ws.1.0", market


def test_real_frames_alone_tell_the_market(captures_dir: Path, tmp_path: Path) -> None:
    # re-recorded without a market in the header, the frames must give it away
    for path, market in real_captures(captures_dir):
        copy = tmp_path / f"{path.name}.meltica.gz"
        with CaptureWriter(copy) as w:
            for r in islice(read_capture(path), 400):
                if r.kind == "ws":
                    w.write_ws(r.ts_recv, r.conn, r.payload)
        assert capture_info(copy).market == market, path

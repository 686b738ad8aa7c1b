"""Capture files: recorded Binance traffic, read back record by record in file order.

A capture is the raw material of every offline path: ``meltica-engine normalize`` turns one
into wire events, the fake exchange replays one over loopback sockets, and
``meltica-engine record`` writes one with :class:`CaptureWriter`.  Three formats are read --
Meltica's own gzip JSON lines, hftbacktest's gzip ``<ts> <json>`` lines and cryptofeed's raw
data files -- into one shape, :class:`CaptureRecord`, carrying the payload bytes exactly as
recorded (nothing is re-serialised) and the local receive time in ns.  Readers stream with
constant memory; anything unreadable raises :class:`~meltica.errors.CaptureError` naming the
file and line, after every good record before it has been yielded.
"""

from __future__ import annotations

import gzip
import heapq
import io
import json
import os
import re
import urllib.parse
import zlib
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from meltica._core.events import MARKETS, VENUES
from meltica.errors import CaptureError

__all__ = [
    "FORMATS",
    "KINDS",
    "MARKETS",
    "MELTICA_VERSION",
    "VENUES",
    "CaptureInfo",
    "CaptureRecord",
    "CaptureWriter",
    "ReadMeter",
    "capture_info",
    "detect_format",
    "raw_stream",
    "read_capture",
    "rest_depth_symbol",
]

StrPath = str | os.PathLike[str]

FORMATS: Final = ("meltica", "hftbacktest", "cryptofeed")
KINDS: Final = ("ws", "rest", "conn")
MELTICA_VERSION: Final = 1

_GZIP_MAGIC = b"\x1f\x8b"
_NS_PER_S = 1_000_000_000
# hftbacktest writes ns (2024) or µs (2023 *.dat.gz); an epoch in ns has been > 1e18 since 2001.
_MICROSECONDS_BELOW = 10**17
# Format sniffing looks at a prefix only: some first lines (exchangeInfo) are megabytes long.
_SNIFF_BYTES = 64 * 1024
# Market sniffing judges by this many WebSocket records from the start of the file.
_SNIFF_RECORDS = 200
# hftbacktest snapshots that arrive before any depth stream wait at most this many lines for
# the next depth stream to name their symbol; this bounds the reader's memory.
_SNAPSHOT_LOOKAHEAD = 10_000

# hftbacktest: `<ts> <json>`; the REST snapshot body and diff-depth envelopes are told apart by
# their first key (the 2023 futures snapshot is written with spaces after separators).
_HFT_SNAPSHOT = re.compile(rb'\{\s*"lastUpdateId"\s*:')
_HFT_DEPTH = re.compile(rb'\{\s*"stream"\s*:\s*"([A-Za-z0-9_]+)@depth(?:@\d+ms)?"')
# cryptofeed (raw_data_collection.AsyncFileCallback): one line per event, epoch seconds as
# Python prints a float.
_CF_TS = rb"(\d+(?:\.\d+)?)"
_CF_FRAME = re.compile(_CF_TS + rb": ")
_CF_HTTP = re.compile(rb"(\S+) -> " + _CF_TS + rb": ")
_CF_CONNECT = re.compile(rb"(\S+) <-> " + _CF_TS)
_CF_SEND = re.compile(rb"(\S+) <- " + _CF_TS + rb": ")
# cryptofeed names files `<connection id>.<rotation>`, e.g. BINANCE.ws.1.0, BINANCE.http.0.0.
_CF_NAME = re.compile(r"(?P<feed>.+)\.(?P<type>ws|http)\.(?P<n>\d+)\.(?P<rotation>\d+)")
_URL_SYMBOL = re.compile(r"[?&]symbol=([^&]+)")
# COIN-M contracts: BTCUSD_PERP, ETHUSD_240927.  USD-M quarterlies (BTCUSDT_240927) do not match.
_COINM_SYMBOL = re.compile(r"[A-Z0-9]+USD_(?:PERP|\d{6})")


@dataclass(frozen=True, slots=True)
class CaptureRecord:
    """One recorded message.

    ``payload`` is a WebSocket frame (``kind="ws"``) or a REST response body (``"rest"``)
    byte-for-byte as recorded, or for ``"conn"`` a JSON object describing the connection event
    (``{"event": "connect", "url": ...}``); a ``"conn"`` record starts a new connection, so a
    consumer resets any per-connection state.
    """

    ts_recv: int  # local receive time, ns since epoch
    kind: str  # "ws" | "rest" | "conn"
    payload: bytes
    conn: str = ""  # connection id ("" if the format has none)
    url: str | None = None  # ws URL for "conn" records, request URL for "rest" records


@dataclass(frozen=True, slots=True)
class CaptureInfo:
    """What a capture says about itself; ``None`` where the file cannot tell."""

    path: Path
    format: str  # "meltica" | "hftbacktest" | "cryptofeed"
    venue: str | None  # "binance" | "binance_us"
    market: str | None  # "spot" | "usdm" | "coinm"


def detect_format(path: StrPath) -> str:
    """The format of ``path``, judged by its content (gzip magic, shape of the first line).

    Raises CaptureError for a missing file, a directory, an empty file, a cryptofeed
    exchangeInfo/configuration file (``BINANCE.0``: not a capture) or anything unrecognised.
    """
    p = _existing_file(path)
    line = _first_line(p)
    if line.startswith(b"{"):
        try:
            header = json.loads(line)
        except ValueError:
            header = None
        if isinstance(header, dict) and "meltica_capture" in header:
            return "meltica"
    elif line[:1].isdigit():
        sp = line.find(b" ")
        if sp > 0 and line[:sp].isdigit() and line[sp + 1 : sp + 2] == b"{":
            return "hftbacktest"
        if _CF_FRAME.match(line):  # a rotated cryptofeed ws file has no connect header
            return "cryptofeed"
    elif _CF_CONNECT.fullmatch(line) or _CF_SEND.match(line):
        return "cryptofeed"
    elif m := _CF_HTTP.match(line):
        if urllib.parse.urlsplit(m[1].decode("ascii", "replace")).path.endswith("/exchangeInfo"):
            raise CaptureError(f"{p}: a cryptofeed exchangeInfo file, not a capture")
        return "cryptofeed"
    elif line.startswith(b"configuration: "):
        raise CaptureError(f"{p}: a cryptofeed configuration file, not a capture")
    raise CaptureError(f"{p}:1: unknown capture format (line starts {line[:60]!r})")


def capture_info(path: StrPath, fmt: str = "auto") -> CaptureInfo:
    """Format, venue and market of a capture.

    Meltica captures name venue and market in their header; cryptofeed files in the URL of
    the connection or request (host ``fstream`` is USD-M, ``dstream`` COIN-M, ``binance.us``
    Binance.US, ...).  hftbacktest files name neither: the venue is Binance and the market is
    guessed from the first WebSocket frames (futures frames carry ``pu`` in depth updates,
    ``X`` in trades, ``e`` in bookTicker; COIN-M symbols look like ``BTCUSD_PERP``), ``None``
    when the frames do not tell.
    """
    p, fmt = _resolve(path, fmt)
    venue: str | None
    market: str | None
    if fmt == "meltica":
        lines = _lines(p)
        try:
            header = _meltica_header(p, next(lines, (1, b"")))
        finally:
            lines.close()
        venue, market = header.get("venue"), header.get("market")
    elif fmt == "hftbacktest":
        venue, market = "binance", None
    else:
        url = _cryptofeed_url(p)
        venue, market = _venue_market(url) if url else (None, None)
    if market is None:
        market = _guess_market(_READERS[fmt](p))
    return CaptureInfo(p, fmt, venue, market)


def read_capture(
    path: StrPath, fmt: str = "auto", *, meter: ReadMeter | None = None
) -> Iterator[CaptureRecord]:
    """Every record of a capture, in file order, streamed with constant memory.

    A missing, unrecognised or unreadable file raises CaptureError here, before iteration.
    A line that does not fit the format, or a gzip stream cut short (a recorder that crashed
    mid-write), raises CaptureError naming the file and line once every complete record before
    it has been yielded.

    Per format:

    - **hftbacktest**: kind ``"ws"`` per envelope, ``"rest"`` per inline REST depth snapshot.
      The file has no request URL, so a snapshot gets ``/depth?symbol=<SYMBOL>`` naming the
      symbol of the most recent diff-depth stream before it or, when none came yet (the 2023
      futures files fetch the snapshot first), of the next one within 10,000 lines; ``/depth``
      alone if no depth stream names one.  The collector writes one file per symbol, so in
      practice this is the file's symbol.  µs timestamps (< 1e17) are
      converted to ns.  ``conn`` is ``""``.
    - **cryptofeed**: ``conn`` is the cryptofeed connection id (``BINANCE.ws.1``).  A ws file
      yields a ``"conn"`` record per connect line and its frames, merged in timestamp order
      with the REST records of the sibling ``<feed>.http.*`` files (frames first on equal
      timestamps).  Only REST records inside this file's time span are merged (from its first
      line to the first line of the next rotation, if one exists) and, when the connect URL
      lists its streams, only snapshots of those symbols: several connections or rotated files
      of one session then never share a snapshot.  An http file alone yields its REST records.
      Sent messages (``<url> <- ts: ...``, our own subscriptions) are skipped.
    - **meltica**: records as written by :class:`CaptureWriter`.

    ``meter``, when given, counts the bytes of ``path`` read so far (as stored: compressed
    for gzip), for progress and ETA without a pass over the file first.
    """
    p, fmt = _resolve(path, fmt)
    return _READERS[fmt](p, meter)


class ReadMeter:
    """Bytes of capture files read so far, counted as they are stored on disk (a gzip
    file's compressed bytes), so that ``bytes_read / total size`` is the fraction done.
    One meter can follow several files read one after the other."""

    def __init__(self) -> None:
        self.done = 0  # bytes of the files read to their end
        self._tell: Callable[[], int] | None = None

    @property
    def bytes_read(self) -> int:
        tell = self._tell
        try:
            return self.done + (tell() if tell is not None else 0)
        except ValueError:  # the file closed between the check and the call
            return self.done

    def _open(self, tell: Callable[[], int]) -> None:
        self._tell = tell

    def _close(self, read: int) -> None:
        self._tell = None
        self.done += read


def raw_stream(url: str | None) -> str | None:
    """The stream of a raw ``/ws/<stream>`` connection URL (a conn record's), else None."""
    if not url:
        return None
    path = urllib.parse.urlsplit(url).path
    if "/ws/" not in path:
        return None
    tail = path.split("/ws/", 1)[1]
    return tail if tail and "/" not in tail else None


def rest_depth_symbol(url: str | None) -> str | None:
    """The symbol of a REST depth request URL (a rest record's), or None for other endpoints."""
    if not url:
        return None
    parts = urllib.parse.urlsplit(url)
    if not parts.path.endswith("/depth"):
        return None
    symbols = urllib.parse.parse_qs(parts.query).get("symbol")
    return symbols[0].upper() if symbols else None


class CaptureWriter:
    """Writes a Meltica capture: gzip JSON lines, a header line, then one record per line.

    Each record is ``{"ts": ns, "conn": id, "type": "ws"|"rest"|"conn", "url": str|null,
    "data": payload-as-text}``.  Payloads must be UTF-8 (Binance frames are JSON text); they
    read back byte-identical.  ``flush`` makes everything written so far readable even if the
    process dies afterwards; ``close`` (or leaving the ``with`` block) finishes the file.
    """

    def __init__(self, path: StrPath, venue: str | None = None, market: str | None = None) -> None:
        if venue is not None and venue not in VENUES:
            raise ValueError(f"venue must be one of {VENUES} or None, not {venue!r}")
        if market is not None and market not in MARKETS:
            raise ValueError(f"market must be one of {MARKETS} or None, not {market!r}")
        self.path = Path(path)
        try:
            # level 6 (zlib's default) instead of gzip's 9: a recorder must keep up with the feed
            self._file: gzip.GzipFile | None = gzip.GzipFile(self.path, "wb", compresslevel=6)
        except OSError as exc:
            raise CaptureError(f"{self.path}: cannot create: {exc.strerror or exc}") from exc
        self._write({"meltica_capture": MELTICA_VERSION, "venue": venue, "market": market})

    def write_ws(self, ts_recv: int, conn: str, payload: bytes) -> None:
        """One WebSocket frame as received."""
        self._write(_record_obj(ts_recv, conn, "ws", None, _text(payload)))

    def write_rest(self, ts_recv: int, conn: str, url: str, body: bytes) -> None:
        """One REST response body and the URL it answered."""
        self._write(_record_obj(ts_recv, conn, "rest", url, _text(body)))

    def write_conn(self, ts_recv: int, conn: str, event: dict[str, Any]) -> None:
        """A connection event, e.g. ``{"event": "connect", "url": "wss://..."}``.

        Readers see a ``"conn"`` record as the start of a new connection on ``conn``.
        """
        url = event.get("url")
        data = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
        self._write(_record_obj(ts_recv, conn, "conn", url if isinstance(url, str) else None, data))

    def flush(self) -> None:
        """Push buffered records to the file (a gzip sync point)."""
        if self._file is not None:
            try:
                self._file.flush()
            except OSError as exc:
                raise CaptureError(f"{self.path}: cannot write: {exc.strerror or exc}") from exc

    def close(self) -> None:
        """Finish the gzip stream and close the file; later calls do nothing."""
        f, self._file = self._file, None
        if f is not None:
            try:
                f.close()
            except OSError as exc:
                raise CaptureError(f"{self.path}: cannot write: {exc.strerror or exc}") from exc

    def __enter__(self) -> CaptureWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _write(self, obj: dict[str, Any]) -> None:
        if self._file is None:
            raise ValueError(f"{self.path}: capture writer is closed")
        line = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        try:
            self._file.write(line)
        except OSError as exc:
            raise CaptureError(f"{self.path}: cannot write: {exc.strerror or exc}") from exc


def _record_obj(ts_recv: int, conn: str, kind: str, url: str | None, data: str) -> dict[str, Any]:
    if type(ts_recv) is not int:
        raise TypeError(f"ts_recv must be an int (ns), not {type(ts_recv).__name__}")
    if not isinstance(conn, str):
        raise TypeError(f"conn must be a str, not {type(conn).__name__}")
    return {"ts": ts_recv, "conn": conn, "type": kind, "url": url, "data": data}


def _text(payload: bytes) -> str:
    try:
        return str(payload, "utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"payload is not UTF-8 text ({exc}); captures store text frames") from None


# Files and lines


def _existing_file(path: StrPath) -> Path:
    p = Path(path)
    if p.is_dir():
        raise CaptureError(f"{p}: is a directory, not a capture file")
    if not p.exists():
        raise CaptureError(f"{p}: no such file")
    return p


def _resolve(path: StrPath, fmt: str) -> tuple[Path, str]:
    if fmt == "auto":
        p = _existing_file(path)
        return p, detect_format(p)
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be 'auto' or one of {FORMATS}, not {fmt!r}")
    return _existing_file(path), fmt


def _open(path: Path) -> io.BufferedIOBase:
    """The file's bytes, gunzipped when it starts with the gzip magic."""
    try:
        with path.open("rb") as f:
            gzipped = f.read(2) == _GZIP_MAGIC
        return gzip.open(path, "rb") if gzipped else path.open("rb")
    except OSError as exc:
        raise CaptureError(f"{path}: cannot open: {exc.strerror or exc}") from exc


def _lines(path: Path, meter: ReadMeter | None = None) -> Generator[tuple[int, bytes], None, None]:
    """(line number, line without its terminator) for every non-blank line.

    A gzip stream cut short raises CaptureError at the first line it could not complete; a
    partial last line is never yielded.  A last line without a newline is fine in a file that
    ends properly.
    """
    with _open(path) as f:
        stored = getattr(f, "fileobj", f)  # a gzip file's compressed bytes
        if meter is not None:
            meter._open(stored.tell)
        try:
            lineno = 0
            while True:
                lineno += 1
                raw = _readline(f, path, lineno)
                if not raw:
                    return
                if raw.endswith(b"\n"):
                    raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
                else:
                    # no newline: the last line, complete only if the stream ends cleanly here
                    _readline(f, path, lineno)
                if raw and not raw.isspace():
                    yield lineno, raw
        finally:
            if meter is not None:
                meter._close(stored.tell())


def _readline(f: io.BufferedIOBase, path: Path, lineno: int, limit: int = -1) -> bytes:
    try:
        return f.readline(limit)
    except EOFError as exc:  # what gzip raises when the stream stops before its trailer
        raise CaptureError(f"{path}:{lineno}: file is truncated (gzip stream ends early)") from exc
    except (OSError, zlib.error) as exc:  # bad CRC, corrupt deflate data, I/O errors
        raise CaptureError(f"{path}:{lineno}: unreadable: {exc}") from exc


def _first_line(path: Path) -> bytes:
    """The first non-blank line, cut at _SNIFF_BYTES."""
    with _open(path) as f:
        lineno = 0
        while True:
            lineno += 1
            line = _readline(f, path, lineno, _SNIFF_BYTES)
            if not line:
                raise CaptureError(f"{path}: empty file, not a capture")
            if not line.isspace():
                return line.rstrip(b"\r\n")
            if not line.endswith(b"\n"):  # a blank prefix longer than the limit: skip it whole
                f.readline()


# hftbacktest


def _read_hftbacktest(
    path: Path, meter: ReadMeter | None = None
) -> Generator[CaptureRecord, None, None]:
    symbol: str | None = None  # of the most recent diff-depth stream
    # Records from a snapshot that came before any depth stream on, until one names its symbol.
    held: list[tuple[int, bytes, bool]] = []
    try:
        for lineno, line in _lines(path, meter):
            sp = line.find(b" ")
            if sp <= 0 or not line[:sp].isdigit() or line[sp + 1 : sp + 2] != b"{":
                raise CaptureError(
                    f"{path}:{lineno}: not an hftbacktest line '<ts> <json>': {line[:60]!r}"
                )
            ts = int(line[:sp])
            if ts < _MICROSECONDS_BELOW:
                ts *= 1000
            is_rest = _HFT_SNAPSHOT.match(line, sp + 1) is not None
            if not is_rest and (m := _HFT_DEPTH.match(line, sp + 1)):
                symbol = m[1].decode().upper()
            if held or (is_rest and symbol is None):
                held.append((ts, line[sp + 1 :], is_rest))
                if symbol is None and len(held) < _SNAPSHOT_LOOKAHEAD:
                    continue
                yield from _hft_release(held, symbol)
                continue
            yield _hft_record(ts, line[sp + 1 :], is_rest, symbol)
    except CaptureError:
        yield from _hft_release(held, symbol)
        raise
    yield from _hft_release(held, symbol)


def _hft_release(
    held: list[tuple[int, bytes, bool]], symbol: str | None
) -> Iterator[CaptureRecord]:
    """The held records, now that their snapshots' symbol is known (or never will be)."""
    for ts, payload, is_rest in held:
        yield _hft_record(ts, payload, is_rest, symbol)
    held.clear()


def _hft_record(ts: int, payload: bytes, is_rest: bool, symbol: str | None) -> CaptureRecord:
    if not is_rest:
        return CaptureRecord(ts, "ws", payload)
    return CaptureRecord(ts, "rest", payload, url=f"/depth?symbol={symbol}" if symbol else "/depth")


# cryptofeed


def _read_cryptofeed(
    path: Path, meter: ReadMeter | None = None
) -> Generator[CaptureRecord, None, None]:
    records = _cryptofeed_records(path, meter)
    name = _CF_NAME.fullmatch(path.name)
    if name is None or name["type"] != "ws":
        yield from records
        return
    http_files = sorted(
        (p for p in path.parent.glob(f"{name['feed']}.http.*") if _CF_NAME.fullmatch(p.name)),
        key=lambda p: [int(part) for part in p.name.split(".")[-2:]],
    )
    if not http_files:
        yield from records
        return
    start = _first_ts(path)
    next_rotation = path.with_name(f"{name['feed']}.ws.{name['n']}.{int(name['rotation']) + 1}")
    end = _first_ts(next_rotation) if next_rotation.is_file() else None
    url = _cryptofeed_url(path)
    symbols = _stream_symbols(url) if url else None

    def belongs(r: CaptureRecord) -> bool:
        if (start is not None and r.ts_recv < start) or (end is not None and r.ts_recv >= end):
            return False
        m = _URL_SYMBOL.search(r.url or "")
        return symbols is None or m is None or urllib.parse.unquote(m[1]).upper() in symbols

    rest = [filter(belongs, _cryptofeed_records(p)) for p in http_files]
    # heapq.merge is stable across its inputs: on equal timestamps the frame comes first
    yield from heapq.merge(records, *rest, key=_ts_recv)


def _ts_recv(r: CaptureRecord) -> int:
    return r.ts_recv


def _cryptofeed_records(path: Path, meter: ReadMeter | None = None) -> Iterator[CaptureRecord]:
    name = _CF_NAME.fullmatch(path.name)
    conn = path.name.rsplit(".", 1)[0] if name else path.name
    for lineno, line in _lines(path, meter):
        if m := _CF_FRAME.match(line):
            yield CaptureRecord(_seconds_to_ns(m[1]), "ws", line[m.end() :], conn)
        elif m := _CF_HTTP.match(line):
            url = m[1].decode("utf-8", "replace")
            yield CaptureRecord(_seconds_to_ns(m[2]), "rest", line[m.end() :], conn, url)
        elif m := _CF_CONNECT.fullmatch(line):
            url = m[1].decode("utf-8", "replace")
            event = json.dumps({"event": "connect", "url": url}, separators=(",", ":")).encode()
            yield CaptureRecord(_seconds_to_ns(m[2]), "conn", event, conn, url)
        elif not _CF_SEND.match(line):  # sends are our own subscribe messages: not data
            raise CaptureError(f"{path}:{lineno}: not a cryptofeed capture line: {line[:60]!r}")


def _seconds_to_ns(text: bytes) -> int:
    """Decimal epoch seconds to ns without going through a float ("1.0633569" -> 1063356900)."""
    whole, _, frac = text.partition(b".")
    # more than 9 decimals cannot occur for a float epoch; truncate rather than round
    return int(whole) * _NS_PER_S + int(frac[:9].ljust(9, b"0"))


def _first_ts(path: Path) -> int | None:
    """Timestamp of the first line of a cryptofeed file, None if it has none."""
    line = _first_line(path)
    m = _CF_FRAME.match(line) or _CF_HTTP.match(line) or _CF_CONNECT.match(line)
    return _seconds_to_ns(m[m.lastindex or 1]) if m else None


def _cryptofeed_url(path: Path) -> str | None:
    """The connect or request URL that starts a cryptofeed file.

    A rotated ws file (``.ws.1.1``) has no connect line: its URL is that of rotation 0.
    """
    line = _first_line(path)
    if m := _CF_CONNECT.fullmatch(line) or _CF_HTTP.match(line):
        return m[1].decode("utf-8", "replace")
    name = _CF_NAME.fullmatch(path.name)
    if name and name["rotation"] != "0":
        first = path.with_name(f"{name['feed']}.{name['type']}.{name['n']}.0")
        if first.is_file():
            return _cryptofeed_url(first)
    return None


def _stream_symbols(url: str) -> frozenset[str] | None:
    """Upper-cased symbols of a combined-stream URL (``?streams=btcusdt@trade/...``)."""
    streams = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query).get("streams")
    if not streams:
        return None
    return frozenset(s.split("@", 1)[0].upper() for s in streams[0].split("/") if s)


def _venue_market(url: str) -> tuple[str | None, str | None]:
    """Venue and market from a Binance host: stream/api → spot, fstream/fapi → USD-M, ..."""
    host = (urllib.parse.urlsplit(url).hostname or "").lower()
    if host.endswith("binance.us"):
        return "binance_us", "spot"
    if not host.endswith(("binance.com", "binance.vision")):
        return None, None
    label = host.split(".", 1)[0]
    if label.startswith(("fstream", "fapi")):
        return "binance", "usdm"
    if label.startswith(("dstream", "dapi")):
        return "binance", "coinm"
    if re.fullmatch(r"(data-)?(stream|api\d*)", label):
        return "binance", "spot"
    return "binance", None


# Meltica


def _read_meltica(
    path: Path, meter: ReadMeter | None = None
) -> Generator[CaptureRecord, None, None]:
    lines = _lines(path, meter)
    _meltica_header(path, next(lines, (1, b"")))
    for lineno, line in lines:
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise CaptureError(f"{path}:{lineno}: not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise CaptureError(f"{path}:{lineno}: a record is a JSON object")
        ts, kind, data = obj.get("ts"), obj.get("type"), obj.get("data")
        conn, url = obj.get("conn", ""), obj.get("url")
        if type(ts) is not int:
            raise CaptureError(f"{path}:{lineno}: 'ts' must be an integer (ns), got {ts!r}")
        if kind not in KINDS:
            raise CaptureError(f"{path}:{lineno}: 'type' must be one of {KINDS}, got {kind!r}")
        if not isinstance(data, str) or not isinstance(conn, str):
            raise CaptureError(f"{path}:{lineno}: 'data' and 'conn' must be strings")
        if url is not None and not isinstance(url, str):
            raise CaptureError(f"{path}:{lineno}: 'url' must be a string or null")
        try:
            payload = data.encode()
        except UnicodeEncodeError:  # a lone surrogate escape (\ud800) in the JSON
            raise CaptureError(f"{path}:{lineno}: 'data' is not valid Unicode text") from None
        yield CaptureRecord(ts, kind, payload, conn, url)


def _meltica_header(path: Path, first: tuple[int, bytes]) -> dict[str, Any]:
    lineno, line = first
    try:
        header = json.loads(line) if line else None
    except ValueError:
        header = None
    if not isinstance(header, dict) or "meltica_capture" not in header:
        raise CaptureError(f"{path}:{lineno}: missing the Meltica capture header")
    if header["meltica_capture"] != MELTICA_VERSION:
        raise CaptureError(
            f"{path}:{lineno}: Meltica capture version {header['meltica_capture']!r}"
            f" is not supported (this reader knows {MELTICA_VERSION})"
        )
    if header.get("venue") not in (*VENUES, None) or header.get("market") not in (*MARKETS, None):
        raise CaptureError(f"{path}:{lineno}: unknown venue or market in the header: {header!r}")
    return header


_READERS = {
    "meltica": _read_meltica,
    "hftbacktest": _read_hftbacktest,
    "cryptofeed": _read_cryptofeed,
}


# Market sniffing


def _guess_market(records: Generator[CaptureRecord, None, None]) -> str | None:
    """The market the first WebSocket frames point to, None if they do not tell or disagree."""
    frames: list[bytes] = []
    try:
        for r in records:
            if r.kind == "ws":
                frames.append(r.payload)
                if len(frames) == _SNIFF_RECORDS:
                    break
    except CaptureError:
        pass  # judge by the readable start; reading the capture reports the damage
    finally:
        records.close()
    return _market_of(frames)


def _market_of(frames: Iterable[bytes]) -> str | None:
    spot = futures = coinm = False
    for frame in frames:
        try:
            obj = json.loads(frame)
        except ValueError:
            continue
        data = obj.get("data") if isinstance(obj, dict) and "stream" in obj else obj
        if not isinstance(data, dict):
            continue
        event, symbol = data.get("e"), data.get("s")
        if "ps" in data or (isinstance(symbol, str) and _COINM_SYMBOL.fullmatch(symbol)):
            coinm = True
        if event == "depthUpdate":
            if "pu" in data:
                futures = True
            else:
                spot = True
        elif event == "trade":
            if "X" in data:
                futures = True
            elif "M" in data:
                spot = True
        elif event in ("bookTicker", "markPriceUpdate", "forceOrder", "continuous_kline"):
            futures = True  # spot bookTicker frames have no "e"; the others are futures-only
        elif event is None and {"u", "s", "b", "B", "a", "A"} <= data.keys():
            spot = True  # a spot bookTicker
    if futures or coinm:
        return None if spot else "coinm" if coinm else "usdm"
    return "spot" if spot else None

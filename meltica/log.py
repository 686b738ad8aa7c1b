"""Every logger Meltica uses, in one place.

The library never adds handlers; the CLI configures logging.  TRACE (below
DEBUG) is for wire dumps and is checked with ``isEnabledFor`` before any
formatting on hot paths.  Every line the CLI's handler writes has the
credentials of URLs in it masked (`redact`).

Two line formats (``log.format``): ``text`` (``time LEVEL logger: message``) and
``json``, one object per line with ``timestamp`` (ISO 8601, UTC), ``level``,
``logger`` and ``message``, plus ``market``, ``symbol`` and ``connection`` when the
call site passes them (``extra={"market": ...}``, see `fields`) and ``exception``
(the formatted traceback) when there is one.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

TRACE = 5
logging.addLevelName(TRACE, "TRACE")
LEVELS = ("TRACE", "DEBUG", "INFO", "WARNING", "ERROR")
FORMATS = ("text", "json")
# the record attributes a JSON line carries when a call site set them (``extra=``)
FIELDS = ("market", "symbol", "connection")

root = logging.getLogger("meltica")
cli = logging.getLogger("meltica.cli")
capture = logging.getLogger("meltica.capture")
normalize = logging.getLogger("meltica.normalize")
config = logging.getLogger("meltica.config")
engine = logging.getLogger("meltica.engine")
client = logging.getLogger("meltica.client")

# scheme://user:password@host -> scheme://user:***@host (the user, often empty
# for Redis, stays: it says which account without saying how to log in as it)
_URL_SECRET = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*:)[^@/\s]+@")


def redact(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` URL masked."""
    return _URL_SECRET.sub(r"\1***@", text)


def fields(
    market: str | None = None, symbol: str | None = None, connection: str | None = None
) -> dict[str, str]:
    """``extra=`` for a log call: the market, symbol and connection it is about (None left out)."""
    given = {"market": market, "symbol": symbol, "connection": connection}
    return {k: v for k, v in given.items() if v is not None}


class _RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class _JsonFormatter(logging.Formatter):
    """One JSON object per line (see the module docstring); every string redacted."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC)
        out: dict[str, Any] = {
            "timestamp": stamp.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = redact(str(value))
        if record.exc_info:
            out["exception"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            out["exception"] = redact(record.exc_text)
        if record.stack_info:
            out["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(out, ensure_ascii=False)


_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of each record, so a live
    terminal view that redirects stderr (rich's ``Live``) keeps log lines above it."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def level_number(level: str) -> int:
    """The numeric level of a name in `LEVELS` (case-insensitive); ValueError otherwise."""
    name = level.upper()
    if name not in LEVELS:
        raise ValueError(f"unknown log level {level!r} (one of {', '.join(LEVELS)})")
    return TRACE if name == "TRACE" else int(logging.getLevelName(name))


def check_format(fmt: str) -> str:
    """``fmt`` lower-cased if it is one of `FORMATS` (any case); ValueError otherwise."""
    name = fmt.lower()
    if name not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r} (one of {', '.join(FORMATS)})")
    return name


def configure(level: str = "INFO", fmt: str | None = None) -> None:
    """Console logging for the CLI (never called by library code).

    Idempotent: a second call only changes the level and, when ``fmt`` is given,
    the line format (the CLI sets them once from ``--log-level`` / ``--log-format``
    or the environment, then again from the loaded config's ``log`` section).
    """
    numeric = level_number(level)
    name = check_format(fmt) if fmt is not None else None
    top = logging.getLogger()
    handler = next((h for h in top.handlers if isinstance(h, _StderrHandler)), None)
    if handler is None:
        handler = _StderrHandler()
        top.addHandler(handler)
        name = name or "text"
    if name == "json":
        handler.setFormatter(_JsonFormatter())
    elif name == "text":
        handler.setFormatter(_RedactingFormatter(_TEXT_FORMAT))
    top.setLevel(numeric)

"""Every logger Meltica uses, in one place.

The library never adds handlers; the CLI configures logging.  TRACE (below
DEBUG) is for wire dumps and is checked with ``isEnabledFor`` before any
formatting on hot paths.  Every line the CLI's handler writes has the
credentials of URLs in it masked (`redact`).
"""

from __future__ import annotations

import logging
import re
import sys
from typing import TextIO

TRACE = 5
logging.addLevelName(TRACE, "TRACE")
LEVELS = ("TRACE", "DEBUG", "INFO", "WARNING", "ERROR")

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


class _RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


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


def configure(level: str = "INFO") -> None:
    """Console logging for the CLI (never called by library code).

    Idempotent: a second call only changes the level (the CLI sets it once
    from ``--log-level`` or the environment, then again from the loaded
    config's ``log.level``).
    """
    numeric = level_number(level)
    top = logging.getLogger()
    if not any(isinstance(h, _StderrHandler) for h in top.handlers):
        handler = _StderrHandler()
        handler.setFormatter(_RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        top.addHandler(handler)
    top.setLevel(numeric)

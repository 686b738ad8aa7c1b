"""Every logger Meltica uses, in one place.

The library never adds handlers; the CLI configures logging.  TRACE (below
DEBUG) is for wire dumps and is checked with ``isEnabledFor`` before any
formatting on hot paths.
"""

from __future__ import annotations

import logging

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

root = logging.getLogger("meltica")
cli = logging.getLogger("meltica.cli")
capture = logging.getLogger("meltica.capture")
normalize = logging.getLogger("meltica.normalize")
config = logging.getLogger("meltica.config")


def configure(level: str = "INFO") -> None:
    """Console logging for the CLI (never called by library code)."""
    numeric = TRACE if level.upper() == "TRACE" else logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    logging.basicConfig(
        level=numeric,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

"""Shards: which gateway owns which (market, symbol).

``gateway.shard: "i/n"`` makes a gateway shard ``i`` of ``n``.  Every symbol
belongs to exactly one shard, by a hash anyone can compute (docs/deployment.md)::

    shard_of(market, SYMBOL, n) =
        int.from_bytes(sha256(f"{market}:{SYMBOL}".encode("ascii")).digest()[:8], "big") % n

``market`` is the config's market name (``spot``, ``usdm``, ``coinm``) and
``SYMBOL`` the exchange symbol in upper case.  n gateways with the same config
and shards ``0/n`` ... ``n-1/n`` subscribe disjoint sets of symbols whose union
is the configured set.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

__all__ = ["Shard", "parse_shard", "shard_of"]

_SHARD = re.compile(r"(\d{1,6})/(\d{1,6})")


def shard_of(market: str, symbol: str, count: int) -> int:
    """The shard (0 .. count-1) that owns ``symbol`` of ``market``."""
    if count < 1:
        raise ValueError(f"shard count must be >= 1, got {count}")
    digest = hashlib.sha256(f"{market}:{symbol.upper()}".encode("ascii")).digest()
    return int.from_bytes(digest[:8], "big") % count


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard ``index`` of ``count`` (``0/1``: everything)."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard must be i/n with 0 <= i < n, got {self.index}/{self.count}")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owner(self, market: str, symbol: str) -> Shard:
        """The shard (of the same count) that owns ``symbol``."""
        return Shard(shard_of(market, symbol, self.count), self.count)

    def owns(self, market: str, symbol: str) -> bool:
        return self.count == 1 or shard_of(market, symbol, self.count) == self.index


def parse_shard(text: str) -> Shard:
    """``"i/n"`` as a `Shard`; ValueError saying what is wrong."""
    m = _SHARD.fullmatch(text.strip()) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f'must be "i/n" (shard i of n, 0 <= i < n), got {text!r}')
    return Shard(int(m.group(1)), int(m.group(2)))

"""Instrument metadata from Binance's exchangeInfo: status, tick and step sizes, exponents.

The Dispatcher validates subscriptions against the ``InstrumentRegistry`` and the Conductor
reads tick sizes from it (docs/pipeline.md).  The registry is refreshed from
``BinanceRest.exchange_info`` on a per-market schedule; a failed refresh is logged and
counted and the previous data stays in use.  Each refresh reports the symbols whose status
changed (listed, delisted, halted, back to trading).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

from meltica.errors import MelticaError
from meltica.log import fields

__all__ = [
    "ExchangeInfoSource",
    "Instrument",
    "InstrumentError",
    "InstrumentRegistry",
    "StatusChange",
    "parse_exchange_info",
]

log = logging.getLogger("meltica.instruments")

DEFAULT_RETRY_S = 60.0


class InstrumentError(MelticaError, ValueError):
    """An exchangeInfo body is not the shape Binance sends."""

    reason = "instruments"


@dataclass(frozen=True, slots=True)
class Instrument:
    """One symbol of one market, as exchangeInfo describes it.

    ``price_exp`` / ``qty_exp`` are the decimal exponents of ``tick_size`` / ``step_size``
    (tick 0.01 -> -2; ticks of 1 or more -> 0), the scale at which every valid price or
    quantity is an integer.
    """

    market: str
    symbol: str  # upper case
    status: str  # TRADING, BREAK, HALT, SETTLING, ...
    base: str | None
    quote: str | None
    tick_size: Decimal
    step_size: Decimal
    price_exp: int
    qty_exp: int
    trading: bool


@dataclass(frozen=True, slots=True)
class StatusChange:
    """A symbol whose status changed; None: not listed before / not listed any more."""

    market: str
    symbol: str
    old: str | None
    new: str | None


class ExchangeInfoSource(Protocol):
    """What the registry needs from the REST client."""

    async def exchange_info(self, market: str) -> dict[str, Any]: ...


def _exponent(size: Decimal) -> int:
    exp = size.normalize().as_tuple().exponent
    assert isinstance(exp, int)  # finite, checked by the caller
    return min(0, exp)


def _size(filters: Mapping[str, Mapping[str, Any]], kind: str, key: str) -> Decimal | None:
    raw = filters.get(kind, {}).get(key)
    if not isinstance(raw, str):
        return None
    try:
        value = Decimal(raw)
    except InvalidOperation:
        return None
    return value if value.is_finite() and value > 0 else None


def _precision(entry: Mapping[str, Any], *keys: str) -> Decimal | None:
    # Binance disables a filter by sending a zero size; the symbol's precision then bounds
    # the decimals instead.
    for key in keys:
        value = entry.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 18:
            return Decimal(1).scaleb(-value)
    return None


def _instrument(market: str, entry: Mapping[str, Any]) -> Instrument:
    symbol = entry.get("symbol")
    status = entry.get("status")
    if not isinstance(symbol, str) or not symbol:
        raise InstrumentError(f"{market} exchangeInfo: symbol entry without a symbol")
    if not isinstance(status, str):
        raise InstrumentError(f"{market} exchangeInfo {symbol}: no status")
    filters: dict[str, Mapping[str, Any]] = {}
    raw_filters = entry.get("filters", [])
    if not isinstance(raw_filters, list):
        raise InstrumentError(f"{market} exchangeInfo {symbol}: filters is not a list")
    for f in raw_filters:
        if isinstance(f, dict) and isinstance(f.get("filterType"), str):
            filters[f["filterType"]] = f
    tick = _size(filters, "PRICE_FILTER", "tickSize") or _precision(
        entry, "pricePrecision", "quoteAssetPrecision", "quotePrecision"
    )
    step = _size(filters, "LOT_SIZE", "stepSize") or _precision(
        entry, "quantityPrecision", "baseAssetPrecision"
    )
    if tick is None or step is None:
        missing = "tickSize" if tick is None else "stepSize"
        raise InstrumentError(f"{market} exchangeInfo {symbol}: no usable {missing}")
    base, quote = entry.get("baseAsset"), entry.get("quoteAsset")
    return Instrument(
        market=market,
        symbol=symbol.upper(),
        status=status,
        base=base if isinstance(base, str) else None,
        quote=quote if isinstance(quote, str) else None,
        tick_size=tick,
        step_size=step,
        price_exp=_exponent(tick),
        qty_exp=_exponent(step),
        trading=status == "TRADING",
    )


def parse_exchange_info(
    market: str, body: Mapping[str, Any]
) -> tuple[dict[str, Instrument], list[InstrumentError]]:
    """Instruments by upper-case symbol, and the errors of entries that were skipped.

    A body without a ``symbols`` list raises ``InstrumentError``; one bad entry is skipped.
    """
    entries = body.get("symbols")
    if not isinstance(entries, list):
        raise InstrumentError(f"{market} exchangeInfo: no 'symbols' list")
    out: dict[str, Instrument] = {}
    errors: list[InstrumentError] = []
    for entry in entries:
        if not isinstance(entry, dict):
            errors.append(InstrumentError(f"{market} exchangeInfo: symbol entry is not an object"))
            continue
        try:
            inst = _instrument(market, entry)
        except InstrumentError as exc:
            errors.append(exc)
            continue
        out[inst.symbol] = inst
    return out, errors


class InstrumentRegistry:
    """Instruments per market, refreshed from exchangeInfo.

    ``clock`` / ``sleep`` drive ``run``'s schedule (tests inject both).  ``on_change`` is
    called with each refresh's status changes (not for a market's first load).
    ``retry_s`` is how soon ``run`` tries again after a failed refresh (at most the
    market's interval).
    """

    def __init__(
        self,
        rest: ExchangeInfoSource,
        *,
        on_change: Callable[[list[StatusChange]], None] | None = None,
        retry_s: float = DEFAULT_RETRY_S,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if retry_s <= 0:
            raise ValueError("retry_s must be positive")
        self._rest = rest
        self._on_change = on_change
        self._retry_s = retry_s
        self._clock = clock
        self._sleep = sleep
        self._by_market: dict[str, dict[str, Instrument]] = {}
        self._loaded_at: dict[str, float] = {}
        self.refreshes = 0
        self.failures = 0
        self.invalid = 0  # skipped symbol entries
        self.changes = 0

    def get(self, market: str, symbol: str) -> Instrument | None:
        """The instrument, or None if unknown (symbol is case-insensitive)."""
        return self._by_market.get(market, {}).get(symbol.upper())

    def symbols(self, market: str) -> list[str]:
        """The market's symbols, upper case, sorted (every status)."""
        return sorted(self._by_market.get(market, ()))

    def loaded_at(self, market: str) -> float | None:
        """``clock`` time of the market's last successful refresh."""
        return self._loaded_at.get(market)

    def load(self, market: str, body: Mapping[str, Any]) -> list[StatusChange]:
        """Replace the market's instruments with those of an exchangeInfo body."""
        fresh, errors = parse_exchange_info(market, body)
        for exc in errors:
            log.warning("%s", exc)
        self.invalid += len(errors)
        old = self._by_market.get(market)
        changes: list[StatusChange] = []
        if old is not None:
            for symbol in sorted(old.keys() | fresh.keys()):
                before, after = old.get(symbol), fresh.get(symbol)
                was = before.status if before else None
                now = after.status if after else None
                if was != now:
                    changes.append(StatusChange(market, symbol, was, now))
        self._by_market[market] = fresh
        self._loaded_at[market] = self._clock()
        self.refreshes += 1
        self.changes += len(changes)
        for c in changes:
            log.info(
                "%s %s status %s -> %s",
                c.market,
                c.symbol,
                c.old,
                c.new,
                extra=fields(market=c.market, symbol=c.symbol),
            )
        if changes and self._on_change is not None:
            self._on_change(changes)
        return changes

    async def refresh(self, market: str) -> list[StatusChange]:
        """Fetch and load the market's exchangeInfo; on error count it, keep the old data
        and raise."""
        try:
            body = await self._rest.exchange_info(market)
            return self.load(market, body)
        except Exception:
            self.failures += 1
            raise

    async def run(self, refresh_s_by_market: Mapping[str, float], *, loaded: bool = False) -> None:
        """Refresh each market now and then every ``refresh_s_by_market[market]`` seconds,
        until cancelled; ``loaded``: the markets were just refreshed, so the first
        refresh is one interval away.  Failures are logged; the previous data stays."""
        for market, interval in refresh_s_by_market.items():
            if interval <= 0:
                raise ValueError(f"{market}: refresh interval must be positive, got {interval}")
        now = self._clock()
        due = {m: now + (i if loaded else 0.0) for m, i in refresh_s_by_market.items()}
        while due:
            market = min(due, key=due.__getitem__)
            wait = due[market] - self._clock()
            if wait > 0:
                await self._sleep(wait)
                continue
            interval = refresh_s_by_market[market]
            try:
                await self.refresh(market)
            except Exception as exc:  # any failure: keep serving the previous data
                log.warning(
                    "%s exchangeInfo refresh failed, keeping previous data: %r", market, exc
                )
                due[market] = self._clock() + min(interval, self._retry_s)
            else:
                due[market] = max(due[market] + interval, self._clock())

    def stats(self) -> dict[str, int]:
        """Counters for metrics, plus the number of instruments per market."""
        out = {
            "refreshes": self.refreshes,
            "failures": self.failures,
            "invalid": self.invalid,
            "changes": self.changes,
        }
        for market, instruments in self._by_market.items():
            out[f"instruments_{market}"] = len(instruments)
        return out

# Type stubs for the compiled events module (see events.pxd for the layout).
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Final

WIRE_VERSION: Final[int]
KIND_NAMES: tuple[str | None, ...]
KIND_IDS: dict[str, int]
SOURCE_NAMES: tuple[str, ...]
VENUES: tuple[str, ...]
MARKETS: tuple[str, ...]
TICKER_WINDOWS: tuple[str, ...]
SIDES: tuple[str, ...]
KLINE_DECIMALS: tuple[str, ...]
TICKER_DECIMALS: tuple[str, ...]
TICKER_INTS: tuple[str, ...]
MARK_DECIMALS: tuple[str, ...]
LIQ_DECIMALS: tuple[str, ...]

class Fixed:
    mantissa: int
    exponent: int
    def __init__(self, value: object) -> None: ...
    @property
    def decimal(self) -> Decimal: ...
    def __float__(self) -> float: ...
    def __eq__(self, other: object) -> bool: ...
    def __hash__(self) -> int: ...

def parse_fixed_text(text: str) -> tuple[int, int]: ...

class Event:
    venue: str
    market: str
    symbol: str
    ts_recv: int
    trace: str | None
    @property
    def kind(self) -> str: ...
    @property
    def seq(self) -> int | None: ...
    @property
    def ts_event(self) -> int | None: ...
    @property
    def ts_transaction(self) -> int | None: ...
    @property
    def key(self) -> str: ...
    def to_wire(self) -> dict[str, Any]: ...

class Trade(Event):
    @property
    def trade_id(self) -> int: ...
    @property
    def first_trade_id(self) -> int | None: ...
    @property
    def last_trade_id(self) -> int | None: ...
    @property
    def price(self) -> Fixed: ...
    @property
    def qty(self) -> Fixed: ...
    @property
    def side(self) -> str: ...
    @property
    def source(self) -> str: ...

class BookTicker(Event):
    @property
    def update_id(self) -> int: ...
    @property
    def bid_price(self) -> Fixed: ...
    @property
    def bid_qty(self) -> Fixed: ...
    @property
    def ask_price(self) -> Fixed: ...
    @property
    def ask_qty(self) -> Fixed: ...

class BookDepth(Event):
    n_bids: int
    n_asks: int
    @property
    def update_id(self) -> int: ...
    @property
    def first_update_id(self) -> int | None: ...
    @property
    def prev_update_id(self) -> int | None: ...
    @property
    def source(self) -> str: ...
    @property
    def verified_bids(self) -> int | None: ...
    @property
    def verified_asks(self) -> int | None: ...
    @property
    def bids(self) -> list[tuple[Fixed, Fixed]]: ...
    @property
    def asks(self) -> list[tuple[Fixed, Fixed]]: ...

class Kline(Event):
    interval: str
    open_time: int
    close_time: int
    first_trade_id: int
    last_trade_id: int
    trades: int
    closed: bool
    open: Fixed | None
    high: Fixed | None
    low: Fixed | None
    close: Fixed | None
    volume: Fixed | None
    quote_volume: Fixed | None
    taker_buy_volume: Fixed | None
    taker_buy_quote_volume: Fixed | None

class Ticker(Event):
    window: str
    def __getattr__(self, name: str) -> Fixed | int | None: ...

class MarkPrice(Event):
    mark_price: Fixed | None
    index_price: Fixed | None
    settle_price: Fixed | None
    funding_rate: Fixed | None
    next_funding_time: int | None

class Liquidation(Event):
    side: str
    order_type: str | None
    time_in_force: str | None
    status: str | None
    qty: Fixed | None
    price: Fixed | None
    avg_price: Fixed | None
    last_filled_qty: Fixed | None
    filled_qty: Fixed | None

class Control(Event):
    reason: str
    state: str | None
    connection: str | None
    def __init__(
        self,
        kind: str,
        *,
        venue: str,
        market: str,
        symbol: str,
        seq: int,
        ts_recv: int,
        reason: str = "",
        from_seq: int | None = None,
        to_seq: int | None = None,
        stale: bool | None = None,
        state: str | None = None,
        connection: str | None = None,
    ) -> None: ...
    @property
    def from_seq(self) -> int | None: ...
    @property
    def to_seq(self) -> int | None: ...
    @property
    def stale(self) -> bool | None: ...

class Derived(Event):
    name: str
    def __init__(
        self,
        venue: str,
        market: str,
        symbol: str,
        name: str,
        seq: int,
        ts_event: int | None,
        ts_recv: int,
        values: Mapping[str, str | Decimal | int] | None = None,
    ) -> None: ...
    @property
    def seq(self) -> int: ...
    @property
    def values(self) -> Mapping[str, str]: ...

def event_from_wire(d: dict[str, Any]) -> Event: ...
def as_backfilled(ev: Trade) -> Trade: ...

"""Configuration: the one door through which settings enter the gateway.

It runs once at startup, before any adapter, bus or store exists: built-in
defaults, then a YAML file, then ``MELTICA_*`` environment variables, then CLI
``section.key=value`` overrides are merged into one tree and converted into
frozen, typed dataclasses.  Unknown keys, wrong types and out-of-range values
fail here with a ``ConfigError`` naming the full key path, instead of becoming a
silent default or a crash deep inside a connection an hour later.  Each
component is then handed only its own section (``cfg.bus``,
``cfg.binance.spot``, ...), so none of them reaches into another's settings.
``config/default.yaml`` documents every key and equals ``default_config()``.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import sys
import types
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar, Union, cast, get_args, get_origin
from typing import get_type_hints as _get_type_hints
from urllib.parse import urlsplit

import yaml

from meltica import log
from meltica.adapters.binance import streams as vocabulary
from meltica.errors import ConfigError
from meltica.shard import parse_shard

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = [
    "BinanceConfig",
    "BusConfig",
    "ConductorConfig",
    "Config",
    "GatewayConfig",
    "LogConfig",
    "NatsConfig",
    "ParserConfig",
    "SnapshotConfig",
    "SpotConfig",
    "TelemetryConfig",
    "UsdmConfig",
    "check_config",
    "config_to_dict",
    "default_config",
    "load_config",
]

Market = Literal["spot", "usdm", "coinm"]
TimeUnit = Literal["ms", "us"]
Venue = Literal["binance", "binance_us"]
Policy = Literal["block", "drop_oldest", "conflate"]
Backend = Literal["memory", "redis"]
BusBackend = Literal["memory", "nats"]
NatsStorage = Literal["file", "memory"]
OutagePolicy = Literal["block", "drop"]
LogLevel = Literal["TRACE", "DEBUG", "INFO", "WARNING", "ERROR"]
LogFormat = Literal["text", "json"]

# Keys documented for backends this version does not have, per section class:
# they accept only their default, so a value that would do nothing is an error.
RESERVED: Final[Mapping[str, tuple[str, ...]]] = {}

# Environment variables with the MELTICA_ prefix that belong to other tools.
_NOT_CONFIG: Final = frozenset(("MELTICA_DEBUG", "MELTICA_CONFIG", "MELTICA_CAPTURES"))

_T = TypeVar("_T")
_S = TypeVar("_S", bound="_Section")
_Check = Callable[[Any], "str | None"]


# Value checks, attached to fields as metadata and run by _Section.__post_init__.
# Each returns None when the value is fine, else the reason it is not.


def _between(low: float, high: float) -> _Check:
    def check(value: float) -> str | None:
        return None if low <= value <= high else f"must be in [{low}, {high}], got {value}"

    return check


def _at_least(low: float) -> _Check:
    return lambda value: None if value >= low else f"must be >= {low}, got {value}"


def _positive(value: float) -> str | None:
    return None if value > 0 else f"must be > 0, got {value}"


def _power_of_two(value: int) -> str | None:
    if 2 <= value <= 1 << 24 and value & (value - 1) == 0:
        return None
    return f"must be a power of two in [2, {1 << 24}], got {value}"


def _non_empty(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


def _url(*schemes: str) -> _Check:
    def check(value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        value = log.redact(value)  # quoted below: never show a password
        if parts.scheme not in schemes:
            return f"scheme must be {' or '.join(schemes)}, got {value!r}"
        try:
            parts.port  # noqa: B018 - property access validates the port
        except ValueError:
            return f"invalid port in {value!r}"
        if parts.scheme == "unix":
            return None if parts.path else f"missing socket path in {value!r}"
        return None if parts.hostname else f"missing host in {value!r}"

    return check


def _route_path(value: str) -> str | None:
    if re.fullmatch(r"(/[A-Za-z0-9_.-]+)+", value):
        return None
    return f"must be a path like '/public' (leading '/', no trailing '/'), got {value!r}"


def _unique(values: tuple[str, ...]) -> str | None:
    dupes = sorted({v for v in values if values.count(v) > 1})
    return f"duplicate entries: {', '.join(dupes)}" if dupes else None


def _markets(values: tuple[str, ...]) -> str | None:
    return "must enable at least one market" if not values else _unique(values)


def _symbols(values: tuple[str, ...]) -> str | None:
    # Binance's one symbol rule lives with its stream names (adapters/binance/streams.py).
    bad = [s for s in values if not vocabulary.is_symbol(s)]
    if bad:
        return f"invalid symbol {bad[0]!r} ({vocabulary.SYMBOL_RULE})"
    return _unique(values)


def _streams(market: Market) -> _Check:
    # Channel names (snake_case, the same as ``ctl``'s); the adapter maps them to
    # Binance's stream names (``agg_trade`` -> ``<s>@aggTrade``).
    def check(values: tuple[str, ...]) -> str | None:
        for name in values:
            if not vocabulary.is_channel(market, name):
                choices = vocabulary.channel_list(market)
                return f"unknown {market} stream {name!r} (known: {choices})"
        return _unique(values)

    return check


_IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*)?")


def _import_paths(values: tuple[str, ...]) -> str | None:
    # Only the shape is checked: importing user code is the Conductor's job at
    # start-up, not something reading a config file should trigger.
    for value in values:
        if not _IMPORT_PATH.fullmatch(value):
            return f"invalid import path {value!r} (expected 'package.module:Name')"
    return _unique(values)


def _lowercase(values: tuple[str, ...]) -> tuple[str, ...]:
    # a bad symbol is kept as written, for _symbols to name it
    return tuple(vocabulary.stream_symbol(v) if vocabulary.is_symbol(v) else v for v in values)


def _f(
    default: _T,
    check: _Check | None = None,
    *,
    normalize: Callable[[Any], Any] | None = None,
) -> _T:
    """A field with a default, an optional range check and an optional normalizer."""
    meta: dict[str, object] = {}
    if check is not None:
        meta["check"] = check
    if normalize is not None:
        meta["normalize"] = normalize
    return field(default=default, metadata=meta)


class _FieldError(ConfigError):
    """A section rejected one of its own fields; the loader adds the full path."""

    def __init__(self, owner: str, name: str, detail: str) -> None:
        super().__init__(f"{owner}.{name}: {detail}")
        self.name = name
        self.detail = detail


class _Section:
    """Base of every config dataclass: normalizes, then checks, on construction.

    Checks run in ``__post_init__`` so a section built directly in code (tests,
    embedding) is held to the same rules as one loaded from a file.
    """

    __slots__ = ()

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for f in fields(self._as_dataclass()):
            normalize = f.metadata.get("normalize")
            if normalize is not None:
                # Frozen: normalizing at construction is the one sanctioned write.
                object.__setattr__(self, f.name, normalize(getattr(self, f.name)))
            check = f.metadata.get("check")
            if check is not None:
                problem = check(getattr(self, f.name))
                if problem is not None:
                    raise _FieldError(owner, f.name, problem)
        self._check_together()

    def _as_dataclass(self) -> DataclassInstance:
        return self  # type: ignore[return-value]

    def _check_together(self) -> None:
        """Checks that involve more than one field; raise _FieldError."""

    def _reject(self, name: str, detail: str) -> None:
        raise _FieldError(type(self).__name__, name, detail)

    def _reserved(self, why: str) -> None:
        """Reject a non-default value of a key in ``RESERVED`` (that nothing reads
        yet): such a key fails at start, naming itself, instead of being ignored."""
        names = RESERVED.get(type(self).__name__, ())
        for f in fields(self._as_dataclass()):
            if f.name in names and getattr(self, f.name) != f.default:
                self._reject(
                    f.name,
                    f"{why}; only the default ({f.default!r}) is accepted, "
                    f"got {_show(getattr(self, f.name))}",
                )


# Sections.  Every field is documented in config/default.yaml.


@dataclass(frozen=True, slots=True)
class SpotConfig(_Section):
    """Binance spot: endpoints, subscriptions and the exchange's limits.

    ``ws_base_url`` / ``rest_base_url`` are the hosts to use once
    ``market_data_only`` has been taken into account.
    """

    # "binance", or "binance_us" for Binance.US (same protocol, its own hosts and
    # symbols; events carry venue binance_us).
    venue: Venue = "binance"
    ws_url: str = _f("wss://stream.binance.com:9443", _url("wss", "ws"))
    market_data_only: bool = False
    market_data_only_ws_url: str = _f("wss://data-stream.binance.vision", _url("wss", "ws"))
    rest_url: str = _f("https://api.binance.com", _url("https", "http"))
    market_data_only_rest_url: str = _f("https://data-api.binance.vision", _url("https", "http"))
    symbols: tuple[str, ...] = _f(("btcusdt", "ethusdt"), _symbols, normalize=_lowercase)
    streams: tuple[str, ...] = _f(("trade", "book_ticker", "depth"), _streams("spot"))
    time_unit: TimeUnit = "ms"
    max_streams_per_connection: int = _f(1024, _between(1, 1024))
    control_msgs_per_second: int = _f(5, _between(1, 5))
    depth_speed_ms: Literal[100, 1000] = 100
    depth_snapshot_limit: int = _f(1000, _between(1, 5000))
    silence_timeout_s: float = _f(60.0, _at_least(1))
    ping_interval_s: float = _f(4.0, _between(1, 600))
    pong_timeout_s: float = _f(4.0, _between(2, 600))
    exchange_info_refresh_s: float = _f(3600.0, _at_least(60))
    rest_weight_limit_per_minute: int = _f(6000, _positive)
    rest_weight_budget_fraction: float = _f(0.5, _between(0.01, 1))

    @property
    def ws_base_url(self) -> str:
        return self.market_data_only_ws_url if self.market_data_only else self.ws_url

    @property
    def rest_base_url(self) -> str:
        return self.market_data_only_rest_url if self.market_data_only else self.rest_url


@dataclass(frozen=True, slots=True)
class _FuturesConfig(_Section):
    """What USD-M and COIN-M futures share: limits, speeds and the REST budget."""

    time_unit: Literal["ms"] = "ms"  # timeUnit=MICROSECOND exists on spot only
    # 1024 on the current docs page, 200 on older ones: 200 is the bound known to hold.
    max_streams_per_connection: int = _f(200, _between(1, 1024))
    control_msgs_per_second: int = _f(10, _between(1, 10))
    # 0: the real-time stream (``@depth@0ms``) some older sessions recorded.
    depth_speed_ms: Literal[0, 100, 250, 500] = 100
    depth_snapshot_limit: Literal[5, 10, 20, 50, 100, 500, 1000] = 1000
    silence_timeout_s: float = _f(240.0, _at_least(1))
    ping_interval_s: float = _f(4.0, _between(1, 600))
    pong_timeout_s: float = _f(4.0, _between(2, 600))
    exchange_info_refresh_s: float = _f(3600.0, _at_least(60))
    rest_weight_limit_per_minute: int = _f(2400, _positive)
    rest_weight_budget_fraction: float = _f(0.5, _between(0.01, 1))

    @property
    def ws_base_url(self) -> str:
        return self.ws_url

    @property
    def rest_base_url(self) -> str:
        return self.rest_url

    # the subclasses define them
    ws_url: str = ""
    rest_url: str = ""


@dataclass(frozen=True, slots=True)
class UsdmConfig(_FuturesConfig):
    """Binance USD-M futures: endpoints, subscriptions and the exchange's limits.

    Since the 2026 routing change each stream kind lives under one path of
    ``ws_url``: book data under ``public_path``, everything else under
    ``market_path`` (``public_ws_url`` / ``market_ws_url`` join them).
    """

    ws_url: str = _f("wss://fstream.binance.com", _url("wss", "ws"))
    public_path: str = _f("/public", _route_path)
    market_path: str = _f("/market", _route_path)
    rest_url: str = _f("https://fapi.binance.com", _url("https", "http"))
    symbols: tuple[str, ...] = _f(("btcusdt", "ethusdt"), _symbols, normalize=_lowercase)
    streams: tuple[str, ...] = _f(
        ("agg_trade", "book_ticker", "depth", "mark_price"), _streams("usdm")
    )

    @property
    def public_ws_url(self) -> str:
        return self.ws_url.rstrip("/") + self.public_path

    @property
    def market_ws_url(self) -> str:
        return self.ws_url.rstrip("/") + self.market_path


@dataclass(frozen=True, slots=True)
class CoinmConfig(_FuturesConfig):
    """Binance COIN-M futures (``dapi``): the same payloads and limits as USD-M, its own
    hosts, and one path for every stream kind."""

    ws_url: str = _f("wss://dstream.binance.com", _url("wss", "ws"))
    rest_url: str = _f("https://dapi.binance.com", _url("https", "http"))
    symbols: tuple[str, ...] = _f(("btcusd_perp",), _symbols, normalize=_lowercase)
    streams: tuple[str, ...] = _f(
        ("agg_trade", "book_ticker", "depth", "mark_price"), _streams("coinm")
    )


@dataclass(frozen=True, slots=True)
class BackfillConfig(_Section):
    """Trade backfill by id after a hole in trade / agg trade ids (docs/rest.md)."""

    enabled: bool = True
    # A hole of more ids than this is reported lost at once.
    max_ids: int = _f(100_000, _between(1, 1 << 30))
    # A hole not filled this long after it was found is lost from where it stands.
    max_age_s: float = _f(300.0, _between(1, 86400))
    # Holes waiting per market; past it a new hole is reported lost.
    max_holes: int = _f(1024, _between(1, 1 << 20))
    # Sent with historicalTrades (the `trade` kind): the futures markets require
    # one; without it their trade holes are reported lost.
    api_key: str = ""


@dataclass(frozen=True, slots=True)
class BinanceConfig(_Section):
    """The Binance venue: which markets run, each market's section, reconnect policy."""

    markets: tuple[Market, ...] = _f(("spot", "usdm"), _markets)
    spot: SpotConfig = field(default_factory=SpotConfig)
    usdm: UsdmConfig = field(default_factory=UsdmConfig)
    coinm: CoinmConfig = field(default_factory=CoinmConfig)
    reconnect_initial_s: float = _f(0.5, _between(0.01, 60))
    reconnect_max_s: float = _f(30.0, _between(0.01, 600))
    # Binance cuts every connection at 24 h; rotating earlier makes it ours to time.
    rotate_after_s: float = _f(82800.0, _between(60, 86399))
    # How long a SUBSCRIBE/UNSUBSCRIBE waits for its ack before it is resent.
    ack_timeout_s: float = _f(5.0, _between(0.05, 120))
    # Longest make-before-break overlap of a rotation before the old connection closes.
    overlap_max_s: float = _f(5.0, _between(0.1, 600))
    # REST: one request's timeout, and how long a request is retried (5xx,
    # timeouts, 429/418 back-off) before it fails.
    rest_request_timeout_s: float = _f(10.0, _between(0.1, 300))
    rest_retry_deadline_s: float = _f(30.0, _between(0.1, 3600))
    backfill: BackfillConfig = field(default_factory=BackfillConfig)

    def _check_together(self) -> None:
        if self.reconnect_initial_s > self.reconnect_max_s:
            self._reject(
                "reconnect_initial_s",
                f"must not exceed reconnect_max_s ({self.reconnect_max_s}), "
                f"got {self.reconnect_initial_s}",
            )

    def market(self, name: Market) -> SpotConfig | UsdmConfig | CoinmConfig:
        """The section of one market (enabled or not)."""
        if name == "spot":
            return self.spot
        return self.usdm if name == "usdm" else self.coinm


@dataclass(frozen=True, slots=True)
class ParserConfig(_Section):
    """Frame parser limits (``FrameParser`` requires at least 64 bytes)."""

    max_frame_bytes: int = _f(1 << 20, _between(64, 64 << 20))


@dataclass(frozen=True, slots=True)
class BusConfig(_Section):
    """Data Bus: where events go (``backend``), and the in-memory ring (size,
    default consumer policy, wake-up batch) that every backend feeds."""

    backend: BusBackend = "memory"
    capacity: int = _f(1 << 16, _power_of_two)
    policy: Policy = "block"
    batch_size: int = _f(256, _at_least(1))

    def _check_together(self) -> None:
        if self.batch_size > self.capacity:
            self._reject(
                "batch_size",
                f"must not exceed capacity ({self.capacity}), got {self.batch_size}",
            )


def _optional_file(value: str | None) -> str | None:
    return None if value is None or value.strip() else "must not be empty (null for none)"


def _nats_token(value: str | None) -> str | None:
    # one NATS subject token: no dots, wildcards or whitespace
    if value is None:
        return None
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", value):
        return f"must be 1-64 of A-Z a-z 0-9 _ - (a NATS subject token), got {value!r}"
    return None


def _shard(value: str) -> str | None:
    try:
        parse_shard(value)
    except ValueError as exc:
        return str(exc)
    return None


def _nats_urls(values: tuple[str, ...]) -> str | None:
    for value in values:
        problem = _url("nats", "tls")(value)
        if problem is not None:
            return problem
    return None


@dataclass(frozen=True, slots=True)
class NatsConfig(_Section):
    """NATS with JetStream: the Data Bus's stream and the Control Bus's subjects
    when ``bus.backend`` is ``nats`` (docs/nats.md)."""

    url: str = _f("nats://127.0.0.1:4222", _url("nats", "tls"))
    servers: tuple[str, ...] = _f((), _nats_urls)
    user: str | None = _f(None, _optional_file)
    password: str | None = None
    token: str | None = _f(None, _optional_file)
    nkey_seed_file: str | None = _f(None, _optional_file)
    creds_file: str | None = _f(None, _optional_file)
    tls_ca_file: str | None = _f(None, _optional_file)
    tls_cert_file: str | None = _f(None, _optional_file)
    tls_key_file: str | None = _f(None, _optional_file)
    connect_timeout_s: float = _f(5.0, _between(0.1, 600))
    stream: str = _f("MELTICA", _nats_token)
    max_age_s: float = _f(86_400.0, _between(1, 365 * 86_400))
    max_bytes: int = _f(1 << 30, _between(1 << 20, 1 << 50))
    storage: NatsStorage = "file"
    replicas: int = _f(1, _between(1, 5))
    duplicate_window_s: float = _f(120.0, _between(1, 86_400))
    publish_buffer: int = _f(1 << 16, _between(16, 1 << 24))
    outage_policy: OutagePolicy = "block"

    def _check_together(self) -> None:
        if (self.user is None) != (self.password is None):
            self._reject(
                "password" if self.password is None else "user", "user and password go together"
            )
        if self.token is not None and self.user is not None:
            self._reject("token", "give a token or user/password, not both")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            self._reject("tls_key_file", "tls_cert_file and tls_key_file go together")
        if self.duplicate_window_s > self.max_age_s:
            self._reject("duplicate_window_s", f"must not exceed max_age_s ({self.max_age_s})")


@dataclass(frozen=True, slots=True)
class GatewayConfig(_Section):
    """This gateway's identity among several (control subjects, status)."""

    # None: the host name, made a valid subject token, at start-up
    id: str | None = _f(None, _nats_token)
    # "i/n": shard i of n (meltica/shard.py, docs/deployment.md)
    shard: str = _f("0/1", _shard)


@dataclass(frozen=True, slots=True)
class SnapshotConfig(_Section):
    """SnapshotStore backend and entry lifetime (docs/snapshot.md)."""

    backend: Backend = "memory"
    ttl_s: float = _f(60.0, _positive)
    redis_url: str = _f("redis://127.0.0.1:6379/0", _url("redis", "rediss", "unix"))
    key_prefix: str = _f("meltica", _non_empty)
    max_entries: int = _f(100_000, _between(1, 100_000_000))
    redis_queue_max: int = _f(10_000, _between(1, 10_000_000))
    redis_timeout_s: float = _f(1.0, _between(0.01, 60))

    def _check_together(self) -> None:
        if self.backend == "redis":
            from redis.asyncio.connection import parse_url

            try:
                parse_url(self.redis_url)
            except ValueError as exc:
                self._reject("redis_url", f"{exc}: {log.redact(self.redis_url)!r}")


@dataclass(frozen=True, slots=True)
class ConductorConfig(_Section):
    """Books, fused outputs, throttling and analytics hooks."""

    book_depth: int = _f(20, _between(1, 5000))
    publish_interval_ms: int = _f(0, _at_least(0))
    snapshot_buffer_max: int = _f(10_000, _between(1, 10_000_000))
    # Diffs kept per instrument while its snapshot request still waits for the
    # REST weight budget (not sent yet): the newest ones only; 0 keeps every one.
    snapshot_wait_tail: int = _f(10, _between(0, 10_000_000))
    # A snapshot that did not sync its book (stale, failed) is refetched after a
    # backoff doubling from the first to the second, with jitter.
    snapshot_retry_s: float = _f(0.5, _between(0.01, 60))
    snapshot_retry_max_s: float = _f(30.0, _between(0.01, 3600))
    analytics: tuple[str, ...] = _f((), _import_paths)
    # Fused snapshots hold only the verified levels of each side unless true.
    publish_unverified: bool = False
    # One live book audited against a fresh low-priority REST snapshot every
    # this many seconds, in turn (0: no audits); docs/conductor.md.
    audit_interval_s: float = _f(30.0, _between(0, 86400))

    def _check_together(self) -> None:
        if self.snapshot_wait_tail > self.snapshot_buffer_max:
            self._reject(
                "snapshot_wait_tail",
                f"must not exceed snapshot_buffer_max ({self.snapshot_buffer_max}), "
                f"got {self.snapshot_wait_tail}",
            )
        if self.snapshot_retry_s > self.snapshot_retry_max_s:
            self._reject(
                "snapshot_retry_s",
                f"must not exceed snapshot_retry_max_s ({self.snapshot_retry_max_s}), "
                f"got {self.snapshot_retry_s}",
            )


@dataclass(frozen=True, slots=True)
class TelemetryConfig(_Section):
    """Prometheus endpoint and OpenTelemetry export."""

    metrics_enabled: bool = True
    metrics_host: str = _f("127.0.0.1", _non_empty)
    metrics_port: int = _f(9464, _between(0, 65535))
    # bearer token of POST /control; required whenever set (docs/control-plane.md)
    control_token: str | None = _f(None, _optional_file)
    # OpenTelemetry over OTLP/HTTP (docs/tracing.md); the OTEL_* variables win
    otlp_endpoint: str | None = _f(None, _url("https", "http"))
    service_name: str = _f("meltica-engine", _non_empty)
    trace_sample_ratio: float = _f(0.01, _between(0, 1))
    trace_queue_size: int = _f(2048, _between(1, 1 << 20))
    otlp_metrics_interval_s: float = _f(15.0, _between(0.1, 3600))


def _new_file(value: str | None) -> str | None:
    """A file to append to: its directory must exist (the file need not)."""
    if value is None:
        return None
    if not value.strip():
        return "must not be empty"
    parent = os.path.dirname(os.path.abspath(value))
    if not os.path.isdir(parent):
        return f"directory {parent!r} does not exist"
    if os.path.isdir(value):
        return f"{value!r} is a directory"
    return None


@dataclass(frozen=True, slots=True)
class GapsConfig(_Section):
    """The gap manifest (docs/gaps.md): what ``GET /gaps`` keeps and where lines go."""

    path: str | None = _f(None, _new_file)
    max_entries: int = _f(10_000, _between(1, 10_000_000))


@dataclass(frozen=True, slots=True)
class LogConfig(_Section):
    """Log level and line format the CLI configures (the library itself never adds handlers)."""

    level: LogLevel = "INFO"
    format: LogFormat = "text"


@dataclass(frozen=True, slots=True)
class Config(_Section):
    """The whole effective configuration; hand each component its own section."""

    binance: BinanceConfig = field(default_factory=BinanceConfig)
    parser: ParserConfig = field(default_factory=ParserConfig)
    bus: BusConfig = field(default_factory=BusConfig)
    nats: NatsConfig = field(default_factory=NatsConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    snapshot: SnapshotConfig = field(default_factory=SnapshotConfig)
    conductor: ConductorConfig = field(default_factory=ConductorConfig)
    gaps: GapsConfig = field(default_factory=GapsConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    log: LogConfig = field(default_factory=LogConfig)


# Loading.


@dataclass(frozen=True, slots=True)
class _Text:
    """A value still in text form (env variable or CLI override) and where it came from."""

    text: str
    source: str


def _hints(cls: type[_Section]) -> dict[str, Any]:
    return _get_type_hints(cls)


def _field_names(cls: type[_Section]) -> frozenset[str]:
    return frozenset(f.name for f in fields(cast("type[DataclassInstance]", cls)))


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _show(value: object) -> str:
    text = log.redact(repr(value.text if isinstance(value, _Text) else value))
    return text if len(text) <= 80 else text[:77] + "..."


def _suggest(key: object, names: frozenset[str]) -> str:
    close = difflib.get_close_matches(str(key), sorted(names), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _optional_of(hint: Any) -> Any | None:
    """``X`` for ``X | None``, else None."""
    if get_origin(hint) in (types.UnionType, Union):
        args = [a for a in get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return None


def _wants_str(hint: Any) -> bool:
    if get_origin(hint) is Literal:
        return all(isinstance(a, str) for a in get_args(hint))
    return hint is str


def _from_text(hint: Any, raw: _Text) -> object:
    """Turn env/override text into the plain value a YAML file would have given.

    The text is read as a YAML scalar (so ``1024``, ``true``, ``null`` and
    ``[a, b]`` mean what they mean in the file), except that a string field
    keeps the text as written (``service_name=123`` is the string "123") and a
    list field also accepts comma-separated items.
    """
    text = raw.text.strip()
    inner = _optional_of(hint)
    if inner is not None:
        if text.lower() in ("", "null", "none", "~"):
            return None
        hint = inner
    try:
        parsed: object = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        parsed = text
    if _wants_str(hint):
        return parsed if isinstance(parsed, str) else text
    if get_origin(hint) is tuple:
        if isinstance(parsed, list):
            return parsed
        element = get_args(hint)[0]
        items = [item for item in text.split(",") if item.strip()]
        return [_from_text(element, _Text(item, raw.source)) for item in items]
    if hint is bool and type(parsed) is int and parsed in (0, 1):
        return bool(parsed)  # MELTICA_X=1 is the usual shell spelling of true
    return parsed


def _convert(hint: Any, value: object, path: str) -> object:
    """Check ``value`` against the field type ``hint``; lists become tuples."""
    if isinstance(value, _Text):
        try:
            return _convert(hint, _from_text(hint, value), path)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (from {value.source})") from None
    if isinstance(hint, type) and issubclass(hint, _Section):
        if value is None:  # a section whose keys are all commented out
            value = {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {_show(value)}")
        return _build(hint, value, path)
    inner = _optional_of(hint)
    if inner is not None:
        return None if value is None else _convert(inner, value, path)
    origin = get_origin(hint)
    if origin is Literal:
        choices = get_args(hint)
        if any(type(value) is type(c) and value == c for c in choices):
            return value
        listed = ", ".join(repr(c) for c in choices)
        raise ConfigError(f"{path}: expected one of {listed}, got {_show(value)}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path}: expected a list, got {_show(value)}")
        element = get_args(hint)[0]
        return tuple(_convert(element, v, f"{path}[{i}]") for i, v in enumerate(value))
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if math.isfinite(value):
                return float(value)
            raise ConfigError(f"{path}: expected a finite number, got {_show(value)}")
    elif hint in (int, bool, str):
        # bool is an int subclass: `capacity: true` must not read as 1.
        if isinstance(value, hint) and (hint is bool or not isinstance(value, bool)):
            return value
    else:
        raise TypeError(f"config field {path} has unsupported type {hint!r}")
    raise ConfigError(f"{path}: expected {hint.__name__}, got {_show(value)}")


def _build(cls: type[_S], data: Mapping[Any, object], path: str) -> _S:
    names = _field_names(cls)
    for key in data:
        if key not in names:
            raise ConfigError(f"unknown key '{_join(path, str(key))}'{_suggest(key, names)}")
    hints = _hints(cls)
    kwargs = {key: _convert(hints[key], value, _join(path, key)) for key, value in data.items()}
    try:
        return cls(**kwargs)
    except _FieldError as exc:
        raw = data.get(exc.name)
        origin = f" (from {raw.source})" if isinstance(raw, _Text) else ""
        raise ConfigError(f"{_join(path, exc.name)}: {exc.detail}{origin}") from None


def _resolve(parts: Sequence[str], source: str) -> None:
    """Fail unless ``parts`` names a key of Config (checked before merging, so
    the error can name the variable or override that introduced it)."""
    owner: Any = Config
    for i, part in enumerate(parts):
        dotted = ".".join(parts[: i + 1])
        if not (isinstance(owner, type) and issubclass(owner, _Section)):
            raise ConfigError(
                f"{source}: unknown key '{dotted}' ('{parts[i - 1]}' is not a section)"
            )
        names = _field_names(owner)
        if part not in names:
            raise ConfigError(f"{source}: unknown key '{dotted}'{_suggest(part, names)}")
        owner = _hints(owner)[part]


def _put(tree: dict[Any, Any], parts: Sequence[str], value: _Text) -> None:
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            dotted = ".".join(parts[: i + 1])
            raise ConfigError(f"{dotted}: expected a mapping, got {_show(child)}")
        node = child
    node[parts[-1]] = value


def _env_layer(env: Mapping[str, str]) -> Iterator[tuple[tuple[str, ...], _Text]]:
    prefix = "MELTICA_"
    for name in sorted(env):  # sorted: the same environment always fails the same way
        upper = name.upper()
        # Variables without "__" cannot be config paths: leave them to whoever owns them.
        if not upper.startswith(prefix) or upper in _NOT_CONFIG or "__" not in name:
            continue
        parts = tuple(name[len(prefix) :].lower().split("__"))
        _resolve(parts, name)
        yield parts, _Text(env[name], name)


def _override_layer(overrides: Sequence[str]) -> Iterator[tuple[tuple[str, ...], _Text]]:
    for item in overrides:
        key, sep, text = item.partition("=")
        source = f"override '{item}'"
        if not sep or not key.strip():
            raise ConfigError(f"{source}: expected section.key=value")
        parts = tuple(key.strip().split("."))
        _resolve(parts, source)
        yield parts, _Text(text, source)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (PyYAML silently keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[Hashable] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable):
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found duplicate key {key!r}",
                        key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: str | os.PathLike[str]) -> dict[Any, Any]:
    name = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as stream:
            data = yaml.load(stream, Loader=_StrictLoader)  # a SafeLoader subclass
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {name}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {name}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{name}: not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name}: invalid YAML: {' '.join(str(exc).split())}") from None
    if data is None:  # empty file, or only comments
        return {}
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise ConfigError(f"{name}: top level must be a mapping of sections, got {kind}")
    return data


def load_config(
    path: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Sequence[str] = (),
    **sections: Mapping[str, Any],
) -> Config:
    """Read the configuration once: defaults, YAML file, environment, overrides.

    ``path`` is a YAML file, or a mapping of sections shaped like one
    (``{"bus": {"capacity": 1024}}``) for code that embeds the gateway.
    ``sections`` are sections given as keywords (``bus={"capacity": 1024}``),
    merged key by key over the file or mapping.  ``env`` defaults to
    ``os.environ``; only ``MELTICA_<SECTION>__<KEY>[__<SUBKEY>]`` variables
    are read (case-insensitive; lists comma-separated), and ``MELTICA_CONFIG``
    names the YAML file when ``path`` is None (pass ``env={}`` to ignore the
    environment).  ``overrides`` are ``section.key=value`` strings with YAML
    scalar values.  Every layer is checked for unknown keys before anything
    is built.

    Raises ConfigError naming the key path (and the variable or override it
    came from) on the first problem found.
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    if path is None:
        path = environ.get("MELTICA_CONFIG") or None
    if isinstance(path, Mapping):
        tree = _copy_tree(path)
        source = "a mapping"
    elif not isinstance(path, str | os.PathLike | None):
        kind = type(path).__name__
        raise ConfigError(f"config: expected a file path or a mapping of sections, got {kind}")
    else:
        tree = _read_yaml(path) if path is not None else {}
        source = os.fspath(path) if path is not None else "defaults"
    for name, section in sections.items():
        _merge(tree, name, _copy_tree(section) if isinstance(section, Mapping) else section)
    env_items = list(_env_layer(environ))
    override_items = list(_override_layer(overrides))
    for parts, value in (*env_items, *override_items):
        _put(tree, parts, value)
    cfg = _build(Config, tree, "")
    log.config.debug(
        "config loaded from %s with %d keyword sections, %d env and %d CLI overrides",
        source,
        len(sections),
        len(env_items),
        len(override_items),
    )
    return cfg


def _copy_tree(data: Mapping[Any, Any]) -> dict[Any, Any]:
    """A copy of nested mappings as dicts (the caller's own stay untouched)."""
    return {k: _copy_tree(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def _merge(tree: dict[Any, Any], key: Any, value: object) -> None:
    """``tree[key] = value``, merging mappings into mappings key by key."""
    current = tree.get(key)
    if isinstance(current, dict) and isinstance(value, dict):
        for k, v in value.items():
            _merge(current, k, v)
    else:
        tree[key] = value


def default_config() -> Config:
    """The built-in defaults (what ``config/default.yaml`` spells out)."""
    return Config()


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """``cfg`` as plain nested dicts and lists, ready for YAML or JSON."""
    plain = _plain(cfg)
    assert isinstance(plain, dict)
    return plain


def _plain(value: object) -> object:
    if isinstance(value, _Section):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value._as_dataclass())}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


# printed as *** by check-config (URL passwords are masked wherever they are)
_SECRET_KEYS: Final = (("nats", "password"), ("nats", "token"), ("telemetry", "control_token"))


def check_config(path: str, *, env: Mapping[str, str] | None = None) -> int:
    """Validate ``path`` (with the ``MELTICA_*`` environment applied, as a run
    would see it) and print the effective config as YAML.

    Returns 0 after printing ``ok: <path>`` and the YAML to stdout, or 2 after
    printing ``error: <message>`` to stderr.
    """
    try:
        cfg = load_config(path, env=env)
    except ConfigError as exc:
        print(f"error: {log.redact(str(exc))}", file=sys.stderr)
        return 2
    print(f"ok: {path}")
    plain = config_to_dict(cfg)
    for section, key in _SECRET_KEYS:
        if plain[section][key] is not None:
            plain[section][key] = "***"
    if plain["binance"]["backfill"]["api_key"]:
        plain["binance"]["backfill"]["api_key"] = "***"
    text = yaml.safe_dump(plain, sort_keys=False, allow_unicode=True, width=100)
    sys.stdout.write(log.redact(text))
    return 0

"""Config loading: layers, strictness, range checks and check-config output."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from meltica.config import (
    BusConfig,
    Config,
    SpotConfig,
    UsdmConfig,
    check_config,
    config_to_dict,
    default_config,
    load_config,
)
from meltica.errors import ConfigError

DEFAULT_YAML = Path(__file__).resolve().parent.parent / "config" / "default.yaml"


def write(tmp_path: Path, text: str, name: str = "meltica.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(*args: object, **kwargs: object) -> str:
    kwargs.setdefault("env", {})
    with pytest.raises(ConfigError) as info:
        load_config(*args, **kwargs)  # type: ignore[arg-type]
    return str(info.value)


# Defaults and the commented default file


def test_defaults_load_without_file() -> None:
    cfg = load_config(env={})
    assert cfg == default_config()
    assert cfg.binance.markets == ("spot", "usdm")
    assert cfg.binance.spot.ws_url == "wss://stream.binance.com:9443"
    assert cfg.binance.usdm.ws_url == "wss://fstream.binance.com"
    assert cfg.binance.spot.rest_url == "https://api.binance.com"
    assert cfg.binance.usdm.rest_url == "https://fapi.binance.com"
    assert cfg.binance.spot.max_streams_per_connection == 1024
    assert cfg.binance.usdm.max_streams_per_connection == 200
    assert cfg.binance.spot.control_msgs_per_second == 5
    assert cfg.binance.usdm.control_msgs_per_second == 10
    assert cfg.binance.spot.rest_weight_limit_per_minute == 6000
    assert cfg.binance.usdm.rest_weight_limit_per_minute == 2400
    assert cfg.parser.max_frame_bytes == 1 << 20
    assert cfg.telemetry.metrics_host == "127.0.0.1"
    assert cfg.telemetry.otlp_endpoint is None


def test_default_yaml_equals_builtin_defaults() -> None:
    assert load_config(DEFAULT_YAML, env={}) == default_config()


def test_default_yaml_spells_out_every_key() -> None:
    # Stronger than equality after loading: a key missing from the file would
    # still load equal (it falls back to the default) but be undocumented.
    raw = yaml.safe_load(DEFAULT_YAML.read_text(encoding="utf-8"))
    assert raw == config_to_dict(default_config())


def test_market_urls() -> None:
    spot = SpotConfig()
    assert spot.ws_base_url == "wss://stream.binance.com:9443"
    assert spot.rest_base_url == "https://api.binance.com"
    data_only = SpotConfig(market_data_only=True)
    assert data_only.ws_base_url == "wss://data-stream.binance.vision"
    assert data_only.rest_base_url == "https://data-api.binance.vision"
    usdm = UsdmConfig()
    assert usdm.public_ws_url == "wss://fstream.binance.com/public"
    assert usdm.market_ws_url == "wss://fstream.binance.com/market"
    binance = default_config().binance
    assert binance.market("spot") is binance.spot
    assert binance.market("usdm") is binance.usdm


# Layers: defaults -> YAML -> env -> overrides


def test_yaml_overrides_defaults_and_keeps_the_rest(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "bus:\n  capacity: 1024\nbinance:\n  spot:\n    symbols: [solusdt]\n",
    )
    cfg = load_config(path, env={})
    assert cfg.bus.capacity == 1024
    assert cfg.bus.policy == "block"
    assert cfg.binance.spot.symbols == ("solusdt",)
    assert cfg.binance.usdm == default_config().binance.usdm


def test_env_overrides_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "bus:\n  capacity: 1024\n  batch_size: 16\n")
    cfg = load_config(path, env={"MELTICA_BUS__CAPACITY": "4096"})
    assert cfg.bus.capacity == 4096
    assert cfg.bus.batch_size == 16


def test_override_beats_env(tmp_path: Path) -> None:
    path = write(tmp_path, "bus:\n  capacity: 1024\n")
    cfg = load_config(path, env={"MELTICA_BUS__CAPACITY": "4096"}, overrides=["bus.capacity=8192"])
    assert cfg.bus.capacity == 8192


def test_meltica_config_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "log:\n  level: DEBUG\n")
    assert load_config(env={"MELTICA_CONFIG": str(path)}).log.level == "DEBUG"
    other = write(tmp_path, "log:\n  level: ERROR\n", "other.yaml")
    # An explicit path wins over MELTICA_CONFIG.
    assert load_config(other, env={"MELTICA_CONFIG": str(path)}).log.level == "ERROR"


def test_env_values_are_coerced_by_field_type() -> None:
    cfg = load_config(
        env={
            "MELTICA_BINANCE__SPOT__SYMBOLS": "btcusdt, ETHUSDT,",
            "MELTICA_BINANCE__MARKETS": "usdm",
            "MELTICA_BINANCE__SPOT__MARKET_DATA_ONLY": "true",
            "MELTICA_TELEMETRY__METRICS_ENABLED": "0",
            "MELTICA_BINANCE__SPOT__REST_WEIGHT_BUDGET_FRACTION": "0.25",
            "MELTICA_TELEMETRY__METRICS_HOST": "123",
            "MELTICA_BINANCE__USDM__DEPTH_SPEED_MS": "250",
            # case-insensitive names
            "meltica_snapshot__ttl_s": "5",
        }
    )
    assert cfg.binance.spot.symbols == ("btcusdt", "ethusdt")
    assert cfg.binance.markets == ("usdm",)
    assert cfg.binance.spot.market_data_only is True
    assert cfg.telemetry.metrics_enabled is False
    assert cfg.binance.spot.rest_weight_budget_fraction == 0.25
    assert cfg.telemetry.metrics_host == "123"
    assert cfg.binance.usdm.depth_speed_ms == 250
    assert cfg.snapshot.ttl_s == 5.0
    assert isinstance(cfg.snapshot.ttl_s, float)


def test_env_null_clears_optional(tmp_path: Path) -> None:
    path = write(tmp_path, "telemetry:\n  otlp_endpoint: http://collector:4318\n")
    cfg = load_config(path, env={"MELTICA_TELEMETRY__OTLP_ENDPOINT": "null"})
    assert cfg.telemetry.otlp_endpoint is None


def test_unrelated_env_is_ignored() -> None:
    env = {
        "MELTICA_DEBUG": "1",
        "MELTICA_CAPTURES": "/data/captures",
        "MELTICA_SOMETHING": "x",
        "OTHER__BUS__CAPACITY": "x",
        "PATH": "/usr/bin",
    }
    assert load_config(env=env) == default_config()


def test_overrides_are_yaml_values() -> None:
    cfg = load_config(
        env={},
        overrides=[
            "binance.spot.symbols=[btcusdt, ethusdt, solusdt]",
            "binance.usdm.streams=depth,liquidation",
            "bus.policy=conflate",
            "telemetry.metrics_host='::1'",
            "conductor.analytics=[pkg.mod:Spread]",
            "bus={capacity: 1024, batch_size: 8}",
        ],
    )
    assert cfg.binance.spot.symbols == ("btcusdt", "ethusdt", "solusdt")
    assert cfg.binance.usdm.streams == ("depth", "liquidation")
    assert cfg.bus == BusConfig(capacity=1024, policy="block", batch_size=8)
    assert cfg.telemetry.metrics_host == "::1"
    assert cfg.conductor.analytics == ("pkg.mod:Spread",)


def test_lists_become_tuples(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "binance:\n  markets: [spot]\n"), env={})
    assert cfg.binance.markets == ("spot",)
    assert isinstance(cfg.binance.spot.streams, tuple)


# Files


def test_empty_and_comment_only_files_are_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, ""), env={}) == default_config()
    assert load_config(write(tmp_path, "# nothing\n", "c.yaml"), env={}) == default_config()


def test_section_with_all_keys_commented_out(tmp_path: Path) -> None:
    path = write(tmp_path, "bus:\n  # capacity: 1024\nbinance:\n  spot:\n")
    assert load_config(path, env={}) == default_config()


def test_top_level_must_be_mapping(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, "- bus\n- log\n"))
    assert "top level must be a mapping" in message


def test_missing_file_names_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert str(missing) in error_of(missing)


def test_missing_file_from_meltica_config(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert str(missing) in error_of(env={"MELTICA_CONFIG": str(missing)})


def test_invalid_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "bus: [unclosed\n")
    message = error_of(path)
    assert message.startswith(f"{path}: invalid YAML")
    assert "\n" not in message


def test_duplicate_yaml_key_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "bus:\n  capacity: 1024\n  capacity: 2048\n")
    assert "duplicate key 'capacity'" in error_of(path)


# Unknown keys


def test_unknown_yaml_key_names_full_path(tmp_path: Path) -> None:
    path = write(tmp_path, "binance:\n  spot:\n    wss_urll: wss://x\n")
    assert error_of(path).startswith("unknown key 'binance.spot.wss_urll'")


def test_unknown_yaml_section(tmp_path: Path) -> None:
    assert error_of(write(tmp_path, "buss:\n  capacity: 8\n")).startswith("unknown key 'buss'")


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("MELTICA_BUS__CAPACITYY", "bus.capacityy"),
        ("MELTICA_BUSS__CAPACITY", "buss"),
        ("MELTICA_BINANCE__SPOT__WSS_URLL", "binance.spot.wss_urll"),
        ("MELTICA_BUS__CAPACITY__X", "bus.capacity.x"),
    ],
)
def test_unknown_env_key_names_variable(name: str, path: str) -> None:
    message = error_of(env={name: "1"})
    assert message.startswith(f"{name}: unknown key '{path}'")


def test_unknown_override_key() -> None:
    message = error_of(overrides=["binance.spot.wss_urll=wss://x"])
    assert "unknown key 'binance.spot.wss_urll'" in message
    assert "did you mean 'ws_url'" in message


@pytest.mark.parametrize("item", ["bus.capacity", "=3", ""])
def test_malformed_override(item: str) -> None:
    assert "expected section.key=value" in error_of(overrides=[item])


# Wrong types


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        (
            "binance:\n  spot:\n    depth_snapshot_limit: abc\n",
            "binance.spot.depth_snapshot_limit: expected int, got 'abc'",
        ),
        ("bus:\n  capacity: true\n", "bus.capacity: expected int, got True"),
        ("bus:\n  capacity: 1024.0\n", "bus.capacity: expected int, got 1024.0"),
        ("binance:\n  spot:\n    symbols: btcusdt\n", "binance.spot.symbols: expected a list"),
        ("binance:\n  spot:\n    symbols: [1]\n", "binance.spot.symbols[0]: expected str, got 1"),
        ("bus: 5\n", "bus: expected a mapping, got 5"),
        ("telemetry:\n  metrics_enabled: 1\n", "telemetry.metrics_enabled: expected bool"),
        ("telemetry:\n  service_name: 42\n", "telemetry.service_name: expected str, got 42"),
        ("snapshot:\n  ttl_s: .inf\n", "snapshot.ttl_s: expected a finite number"),
        ("log:\n  level: debug\n", "log.level: expected one of 'TRACE', 'DEBUG'"),
    ],
)
def test_wrong_types_in_yaml(tmp_path: Path, yaml_text: str, expected: str) -> None:
    assert error_of(write(tmp_path, yaml_text)).startswith(expected)


def test_wrong_type_in_env_names_key_and_variable() -> None:
    message = error_of(env={"MELTICA_BUS__CAPACITY": "abc"})
    assert message == "bus.capacity: expected int, got 'abc' (from MELTICA_BUS__CAPACITY)"


def test_wrong_type_in_override() -> None:
    message = error_of(overrides=["telemetry.metrics_port=http"])
    assert message.startswith("telemetry.metrics_port: expected int, got 'http'")


# Range checks


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("bus.capacity=-1024", "bus.capacity: must be a power of two"),
        ("bus.capacity=1000", "bus.capacity: must be a power of two"),
        ("bus.batch_size=0", "bus.batch_size: must be >= 1"),
        ("bus.batch_size=131072", "bus.batch_size: must not exceed capacity"),
        ("bus.policy=drop_newest", "bus.policy: expected one of 'block', 'drop_oldest'"),
        (
            "binance.markets=[spot, dapi]",
            "binance.markets[1]: expected one of 'spot', 'usdm', 'coinm'",
        ),
        ("binance.markets=[]", "binance.markets: must enable at least one market"),
        ("binance.markets=[spot, spot]", "binance.markets: duplicate entries: spot"),
        ("binance.spot.ws_url=https://stream.binance.com", "binance.spot.ws_url: scheme must be"),
        ("binance.spot.ws_url=wss://", "binance.spot.ws_url: missing host"),
        ("binance.spot.ws_url=wss://h:99999", "binance.spot.ws_url: invalid port"),
        ("binance.usdm.rest_url=ftp://fapi.binance.com", "binance.usdm.rest_url: scheme must be"),
        ("binance.usdm.public_path=public", "binance.usdm.public_path: must be a path"),
        ("binance.spot.symbols=[btc-usdt]", "binance.spot.symbols: invalid symbol 'btc-usdt'"),
        ("binance.spot.symbols=[btcusdt, BTCUSDT]", "binance.spot.symbols: duplicate entries"),
        ("binance.spot.streams=[mark_price]", "binance.spot.streams: unknown spot stream"),
        ("binance.usdm.streams=[kline_1s]", "binance.usdm.streams: unknown usdm stream"),
        ("binance.spot.max_streams_per_connection=1025", "must be in [1, 1024]"),
        ("binance.spot.control_msgs_per_second=6", "control_msgs_per_second: must be in [1, 5]"),
        ("binance.spot.depth_speed_ms=250", "binance.spot.depth_speed_ms: expected one of"),
        ("binance.spot.depth_snapshot_limit=5001", "depth_snapshot_limit: must be in [1, 5000]"),
        ("binance.usdm.depth_snapshot_limit=5000", "depth_snapshot_limit: expected one of"),
        ("binance.usdm.time_unit=us", "binance.usdm.time_unit: expected one of 'ms'"),
        ("binance.spot.rest_weight_budget_fraction=1.5", "rest_weight_budget_fraction: must be"),
        ("binance.spot.rest_weight_limit_per_minute=0", "must be > 0"),
        ("binance.spot.exchange_info_refresh_s=1", "exchange_info_refresh_s: must be >= 60"),
        ("binance.reconnect_initial_s=60", "binance.reconnect_initial_s: must not exceed"),
        ("binance.rotate_after_s=86400", "binance.rotate_after_s: must be in"),
        ("parser.max_frame_bytes=63", "parser.max_frame_bytes: must be in [64"),
        ("snapshot.backend=memcached", "snapshot.backend: expected one of 'memory', 'redis'"),
        ("snapshot.ttl_s=0", "snapshot.ttl_s: must be > 0"),
        ("snapshot.redis_url=http://localhost", "snapshot.redis_url: scheme must be"),
        ("snapshot.key_prefix=''", "snapshot.key_prefix: must not be empty"),
        ("snapshot.redis_queue_max=0", "snapshot.redis_queue_max: must be in [1, 10000000]"),
        ("snapshot.redis_timeout_s=0", "snapshot.redis_timeout_s: must be in [0.01, 60]"),
        ("conductor.book_depth=0", "conductor.book_depth: must be in [1, 5000]"),
        ("conductor.publish_interval_ms=-1", "conductor.publish_interval_ms: must be >= 0"),
        ("conductor.snapshot_buffer_max=-5", "conductor.snapshot_buffer_max: must be in"),
        ("conductor.snapshot_wait_tail=-1", "conductor.snapshot_wait_tail: must be in"),
        ("conductor.snapshot_wait_tail=10001", "conductor.snapshot_wait_tail: must not exceed"),
        ("conductor.snapshot_retry_s=0", "conductor.snapshot_retry_s: must be in"),
        ("conductor.snapshot_retry_s=40", "conductor.snapshot_retry_s: must not exceed"),
        ("conductor.analytics=[not a path]", "conductor.analytics: invalid import path"),
        ("telemetry.metrics_port=70000", "telemetry.metrics_port: must be in [0, 65535]"),
        ("telemetry.metrics_host=''", "telemetry.metrics_host: must not be empty"),
        ("telemetry.otlp_endpoint=grpc://c:4317", "telemetry.otlp_endpoint: scheme must be"),
        ("telemetry.trace_sample_ratio=1.01", "telemetry.trace_sample_ratio: must be in [0, 1]"),
    ],
)
def test_out_of_range_values_are_rejected(override: str, expected: str) -> None:
    message = error_of(overrides=[override])
    assert message.startswith(override.partition("=")[0]), message  # the full key path
    assert expected in message
    assert message.endswith(f"(from override '{override}')")


def test_range_error_from_yaml_names_path(tmp_path: Path) -> None:
    path = write(tmp_path, "bus:\n  capacity: -8\n")
    assert error_of(path) == "bus.capacity: must be a power of two in [2, 16777216], got -8"


def test_accepted_edge_values() -> None:
    cfg = load_config(
        env={},
        overrides=[
            "binance.spot.ws_url=ws://127.0.0.1:8765",
            "binance.spot.time_unit=us",
            "binance.spot.streams=[kline_1s, kline_1M, depth20, ticker_4h]",
            "binance.spot.symbols=[]",
            "telemetry.metrics_port=0",
            "binance.spot.rest_weight_budget_fraction=1",
            "bus.capacity=2",
            "bus.batch_size=2",
        ],
    )
    assert cfg.binance.spot.ws_url == "ws://127.0.0.1:8765"
    assert cfg.binance.spot.symbols == ()
    assert cfg.binance.spot.rest_weight_budget_fraction == 1.0


def test_sections_built_in_code_are_checked_too() -> None:
    with pytest.raises(ConfigError, match=r"BusConfig\.capacity: must be a power of two"):
        BusConfig(capacity=3)
    assert SpotConfig(symbols=("BTCUSDT",)).symbols == ("btcusdt",)


# Frozen objects


def test_config_is_frozen() -> None:
    cfg = default_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.bus = BusConfig()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.bus.capacity = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.binance.spot.symbols = ("x",)  # type: ignore[misc]
    assert not hasattr(cfg.bus, "__dict__")  # slots: no stray attributes either


def test_config_is_hashable_and_comparable() -> None:
    assert hash(default_config()) == hash(Config())


# Round trip and check-config


def test_config_to_dict_round_trips_through_yaml(tmp_path: Path) -> None:
    cfg = load_config(
        env={},
        overrides=["bus.capacity=1024", "bus.policy=conflate"],
    )
    plain = config_to_dict(cfg)
    assert plain["bus"]["capacity"] == 1024
    assert isinstance(plain["binance"]["markets"], list)
    path = write(tmp_path, yaml.safe_dump(plain))
    assert load_config(path, env={}) == cfg


def test_check_config_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "bus:\n  capacity: 1024\n")
    assert check_config(str(path), env={"MELTICA_LOG__LEVEL": "DEBUG"}) == 0
    out, err = capsys.readouterr()
    first, _, rest = out.partition("\n")
    assert first == f"ok: {path}"
    effective = yaml.safe_load(rest)
    assert effective["bus"]["capacity"] == 1024
    assert effective["log"]["level"] == "DEBUG"
    assert effective == config_to_dict(load_config(path, env={"MELTICA_LOG__LEVEL": "DEBUG"}))
    assert err == ""


def test_check_config_default_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert check_config(str(DEFAULT_YAML), env={}) == 0
    out, _ = capsys.readouterr()
    assert yaml.safe_load(out.partition("\n")[2]) == config_to_dict(default_config())


def test_check_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "binance:\n  spot:\n    wss_urll: x\n")
    assert check_config(str(path), env={}) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("error: unknown key 'binance.spot.wss_urll'")


def test_check_config_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.yaml"
    assert check_config(str(missing), env={}) == 2
    _, err = capsys.readouterr()
    assert err == f"error: config file not found: {missing}\n"


# Defaults spelled out (in the environment and as overrides) change nothing


def test_defaults_spelled_out_change_nothing() -> None:
    cfg = load_config(
        env={"MELTICA_SNAPSHOT__BACKEND": "memory"},
        overrides=["snapshot.key_prefix=meltica"],
    )
    assert cfg == default_config()


def test_check_config_redacts_url_credentials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "snapshot:\n  redis_url: redis://:s3cret@10.1.2.3:99999/0\n")
    assert check_config(str(path), env={}) == 2
    out, err = capsys.readouterr()
    assert "s3cret" not in out + err
    assert "snapshot.redis_url: " in err
    assert "redis://:***@10.1.2.3:99999/0" in err


def test_check_config_masks_nats_secrets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        "nats:\n  url: nats://ops:urlpw@127.0.0.1:4222\n  user: u\n  password: pw123\n",
    )
    assert check_config(str(path), env={}) == 0
    out, _ = capsys.readouterr()
    effective = yaml.safe_load(out.partition("\n")[2])
    assert effective["nats"]["password"] == "***"
    assert effective["nats"]["url"] == "nats://ops:***@127.0.0.1:4222"
    assert "pw123" not in out and "urlpw" not in out


# A mapping or keyword sections, for code that embeds the gateway


def test_a_mapping_is_read_like_the_file(tmp_path: Path) -> None:
    text = "bus:\n  capacity: 1024\nbinance:\n  markets: [spot]\n"
    from_file = load_config(write(tmp_path, text), env={})
    given = {"bus": {"capacity": 1024}, "binance": {"markets": ["spot"]}}
    assert load_config(given, env={}) == from_file
    assert given == {"bus": {"capacity": 1024}, "binance": {"markets": ["spot"]}}  # untouched


def test_keyword_sections_merge_over_the_file_or_mapping(tmp_path: Path) -> None:
    assert load_config(bus={"capacity": 1024}, env={}).bus.capacity == 1024
    path = write(tmp_path, "bus:\n  capacity: 4096\n  policy: drop_oldest\n")
    cfg = load_config(path, env={}, bus={"capacity": 1024})
    assert (cfg.bus.capacity, cfg.bus.policy) == (1024, "drop_oldest")
    cfg = load_config(
        {"binance": {"spot": {"symbols": ["ETHUSDT"]}}},
        env={},
        binance={"spot": {"streams": ["trade"]}},
    )
    assert cfg.binance.spot.streams == ("trade",)
    assert [s.upper() for s in cfg.binance.spot.symbols] == ["ETHUSDT"]
    # the environment and overrides still come on top
    cfg = load_config(
        bus={"capacity": 1024},
        env={"MELTICA_BUS__CAPACITY": "2048"},
        overrides=["bus.batch_size=64"],
    )
    assert (cfg.bus.capacity, cfg.bus.batch_size) == (2048, 64)


def test_mapping_and_keyword_errors_name_the_key() -> None:
    assert (
        error_of({"bus": {"capacty": 1}}) == "unknown key 'bus.capacty' (did you mean 'capacity'?)"
    )
    assert error_of(buss={}) == "unknown key 'buss' (did you mean 'bus'?)"
    assert error_of(bus={"capacity": 3}).startswith("bus.capacity: must be a power of two")
    assert error_of(bus=1024) == "bus: expected a mapping, got 1024"
    assert error_of({"bus": {"capacity": "big"}}) == "bus.capacity: expected int, got 'big'"
    assert "expected a file path or a mapping of sections, got list" in error_of(["bus"])


def test_engine_and_load_config_are_exported_lazily() -> None:
    code = (
        "import sys, meltica\n"
        "assert 'meltica.engine' not in sys.modules\n"
        "from meltica import Engine, load_config\n"
        "from meltica.engine import Engine as E\n"
        "from meltica.config import load_config as L\n"
        "assert Engine is E and load_config is L\n"
        "assert 'Engine' in meltica.__all__ and 'load_config' in meltica.__all__\n"
        "cfg = load_config(env={}, bus={'capacity': 1024}, telemetry={'metrics_enabled': False})\n"
        "assert Engine(cfg).bus.capacity == 1024\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, check=False)
    assert done.returncode == 0, done.stderr.decode()


def test_the_readme_in_process_example_runs() -> None:
    """The example under "Consume the events" in README.md, as a user would paste it."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Consume the events", 1)[1]
    example = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert "Engine(" in example and "load_config(" in example
    done = subprocess.run(
        [sys.executable, "-c", example], capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr.decode()
    lines = done.stdout.decode().splitlines()
    assert len(lines) == 5
    assert all(
        line.split()[0] == "BTCUSDT" and line.split()[1] in ("buy", "sell") for line in lines
    )

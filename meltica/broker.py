"""The NATS connection the Data Bus, the Control Bus and the consumer client share.

What is public about Meltica on NATS lives here: the subjects
(``meltica.<venue>.<market>.<kind>.<SYMBOL>`` for events,
``meltica.control[.<gateway id>]`` for control requests; docs/nats.md) and how
the ``nats`` config section turns into a nats-py connection.  A connection that
cannot be made at start-up is a `BrokerError` naming the config key at fault
(``nats.url``, ``nats.user``/``nats.password``, ``nats.token``, ...), never a
traceback.  Reconnects after that are nats-py's, forever, with the callbacks
the caller passes.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import nats
import nats.errors
from nats.aio.client import Client

from meltica.config import GatewayConfig, NatsConfig
from meltica.errors import MelticaError
from meltica.log import redact

__all__ = [
    "CONTROL_SUBJECT",
    "SUBJECT_ROOT",
    "BrokerError",
    "connect",
    "control_subject",
    "data_subjects",
    "gateway_id",
    "subject_filter",
    "subject_of",
]

SUBJECT_ROOT: Final = "meltica"
CONTROL_SUBJECT: Final = f"{SUBJECT_ROOT}.control"
# the symbol token of events that concern no symbol (a connection's state)
NO_SYMBOL: Final = "_"


class BrokerError(MelticaError, ConnectionError):
    """The NATS server could not be reached or refused us (names the config key)."""

    reason = "broker"


# bytes a subject token cannot hold (separator, wildcards, white space) become "_"
_TOKEN_UNSAFE = str.maketrans(dict.fromkeys(".*> \t\r\n", "_"))


def subject_of(venue: str, market: str, kind: str, symbol: str) -> str:
    """``meltica.<venue>.<market>.<kind>.<SYMBOL>`` (``_`` when there is no symbol).

    A token that is empty becomes ``_``, and so does each character NATS
    reserves (``.``, ``*``, ``>``, white space): a connection's events, whose
    symbol is ``*``, go to ``meltica.<venue>.<market>.connection_state._``.
    The compiled publisher (meltica/bus/_natspub.pyx) spells subjects the same way.
    """
    return ".".join((SUBJECT_ROOT, *map(_token, (venue, market, kind, symbol))))


def subject_filter(venue: str, market: str | None, kind: str | None, symbol: str | None) -> str:
    """The subscription filter for events of ``subject_of``'s scheme: ``*`` where a
    part is None (any), each given part spelled exactly as ``subject_of`` does."""
    parts = (venue, market, kind, symbol)
    return ".".join((SUBJECT_ROOT, *("*" if t is None else _token(t) for t in parts)))


def _token(text: str) -> str:
    """One subject token as ``subject_of`` spells it."""
    return (text or NO_SYMBOL).translate(_TOKEN_UNSAFE)


def data_subjects(venues: Sequence[str]) -> list[str]:
    """What a stream captures for ``venues``: their events, never the control subjects."""
    return [f"{SUBJECT_ROOT}.{v}.>" for v in sorted(set(venues))]


def control_subject(gateway: str | None = None) -> str:
    """``meltica.control`` (every gateway: list, status) or ``meltica.control.<id>``."""
    return CONTROL_SUBJECT if gateway is None else f"{CONTROL_SUBJECT}.{gateway}"


def gateway_id(cfg: GatewayConfig) -> str:
    """``gateway.id``, or the host name made a subject token when it is null."""
    if cfg.id is not None:
        return cfg.id
    host = socket.gethostname().split(".")[0]
    token = "".join(c if c.isascii() and (c.isalnum() or c in "_-") else "-" for c in host)
    return token[:64] or "gateway"


def _tls(cfg: NatsConfig) -> ssl.SSLContext | None:
    urls = (cfg.url, *cfg.servers)
    if not (cfg.tls_ca_file or cfg.tls_cert_file or any(u.startswith("tls://") for u in urls)):
        return None
    try:
        ctx = ssl.create_default_context(cafile=cfg.tls_ca_file)
        if cfg.tls_cert_file is not None:
            ctx.load_cert_chain(cfg.tls_cert_file, cfg.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        key = "nats.tls_ca_file" if cfg.tls_ca_file else "nats.tls_cert_file"
        raise BrokerError(f"{key}: cannot load TLS files: {exc}") from None
    return ctx


def _auth_key(cfg: NatsConfig) -> str:
    if cfg.token is not None:
        return "nats.token"
    if cfg.user is not None:
        return "nats.user/nats.password"
    if cfg.creds_file is not None:
        return "nats.creds_file"
    if cfg.nkey_seed_file is not None:
        return "nats.nkey_seed_file"
    return "nats.url"  # credentials inside the URL, or none where the server wants some


async def connect(
    cfg: NatsConfig,
    *,
    name: str,
    disconnected_cb: Callable[[], Awaitable[None]] | None = None,
    reconnected_cb: Callable[[], Awaitable[None]] | None = None,
    error_cb: Callable[[Exception], Awaitable[None]] | None = None,
    pending_size: int | None = None,
) -> Client:
    """A connected nats-py client for ``cfg`` (BrokerError when that fails).

    The first connect tries each server once within ``connect_timeout_s``;
    after that the client reconnects forever on its own.
    """
    options: dict[str, Any] = {
        "servers": [cfg.url, *cfg.servers],
        "name": name,
        "connect_timeout": cfg.connect_timeout_s,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "tls": _tls(cfg),
    }
    if cfg.user is not None:
        options["user"], options["password"] = cfg.user, cfg.password
    if cfg.token is not None:
        options["token"] = cfg.token
    if cfg.creds_file is not None:
        options["user_credentials"] = cfg.creds_file
    if cfg.nkey_seed_file is not None:
        options["nkeys_seed"] = cfg.nkey_seed_file
    if pending_size is not None:
        options["pending_size"] = pending_size
    for key, cb in (
        ("disconnected_cb", disconnected_cb),
        ("reconnected_cb", reconnected_cb),
        ("error_cb", error_cb),
    ):
        if cb is not None:
            options[key] = cb
    failures: list[Exception] = []

    async def first_errors(exc: Exception) -> None:
        # during the first connect nats-py reports each failure here, then
        # raises something vaguer (NoServersError): keep the real cause
        failures.append(exc)

    client = Client()
    try:
        await client.connect(**{**options, "error_cb": first_errors, "max_reconnect_attempts": 1})
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        await _close_quietly(client)
        raise _connect_error(cfg, failures or [exc]) from None
    # the first connect succeeded: from now on reconnect forever, reporting to the caller
    client.options["max_reconnect_attempts"] = -1
    client.options["error_cb"] = options.get("error_cb") or _ignore
    client._error_cb = client.options["error_cb"]  # nats-py reads this copy
    return client


async def _ignore(exc: Exception) -> None:
    return None


async def _close_quietly(client: Client) -> None:
    # already failing: the first error is the one to report
    with contextlib.suppress(Exception):
        await client.close()


def _connect_error(cfg: NatsConfig, failures: list[Exception]) -> BrokerError:
    servers = ", ".join(redact(u) for u in (cfg.url, *cfg.servers))
    for exc in failures:
        text = str(exc).lower()
        if isinstance(exc, nats.errors.AuthorizationError) or "authorization" in text:
            return BrokerError(
                f"{_auth_key(cfg)}: the NATS server at {servers} refused the credentials"
            )
        if isinstance(exc, ssl.SSLError | nats.errors.SecureConnFailedError):
            return BrokerError(f"nats.tls_ca_file: TLS to {servers} failed: {exc}")
    last = failures[-1]
    detail = str(last) or type(last).__name__
    return BrokerError(f"nats.url: cannot connect to {servers}: {redact(detail)}")

"""The Control Bus on the gateway's HTTP server: ``POST /control``.

The same ``ControlRequest`` JSON in and ``ControlReply`` JSON out as on NATS,
served beside ``/metrics`` (`meltica.telemetry.metrics.MetricsServer`, through
``Engine.add_routes``).  Who may call it (`control_access`): with
``telemetry.control_token`` set, only a caller presenting
``Authorization: Bearer <token>``, on any address; without one, anyone who can
reach a loopback ``telemetry.metrics_host``, and nobody when the server binds
to any other address (an exposed /metrics must not hand out control of the
gateway).  Bodies are at most `CONTROL_MAX_BYTES`.

Statuses: 200 for every request the Control Bus served (``ok`` says whether it
succeeded), 400 for a body that is not a request (malformed JSON, unknown op),
401 without a bearer token, 403 for a wrong token or a refused address, 413
for a body over the limit.  Every non-200 answer is a ``ControlReply`` too.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
from typing import Final, Literal

from aiohttp import web

from meltica.bus.control import InProcessControlBus
from meltica.control import ControlReply

__all__ = ["CONTROL_MAX_BYTES", "Access", "ControlEndpoint", "control_access", "is_loopback"]

log = logging.getLogger("meltica.bus.control_http")

# A request names at most 1024 streams; its JSON is a few tens of KiB at most.
CONTROL_MAX_BYTES: Final = 64 * 1024

Access = Literal["open", "token", "refused"]


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps a server on this machine.

    ``localhost`` and loopback addresses (``ipaddress``'s ``is_loopback``: all of
    127.0.0.0/8 and ``::1``) are; every other name or address is not, wildcards
    (``0.0.0.0``, ``::``) included: a name could resolve anywhere.
    """
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def control_access(host: str, token: str | None) -> Access:
    """How ``POST /control`` is guarded on a server bound to ``host``.

    ``token``: a bearer token is required (a configured token always is);
    ``open``: no token, loopback bind; ``refused``: no token, any other bind.
    """
    if token is not None:
        return "token"
    return "open" if is_loopback(host) else "refused"


def _error(status: int, message: str, gateway: str | None, **headers: str) -> web.Response:
    result = {"gateway": gateway} if gateway is not None else {}
    body = json.dumps(ControlReply("", False, message, result).to_dict())
    return web.Response(
        status=status, text=body, content_type="application/json", headers=headers or None
    )


class ControlEndpoint:
    """``POST /control`` in front of ``control`` (add it with `add_routes`)."""

    def __init__(
        self,
        control: InProcessControlBus,
        *,
        host: str,
        token: str | None,
        max_bytes: int = CONTROL_MAX_BYTES,
    ) -> None:
        self._control = control
        self._token = token.encode() if token is not None else None
        self.host = host
        self.access: Access = control_access(host, token)
        self.max_bytes = max_bytes
        self.counters: dict[str, int] = dict.fromkeys(
            ("requests", "unauthorized", "forbidden", "oversized", "malformed"), 0
        )

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/control", self.handle)
        if self.access == "refused":
            log.warning(
                "POST /control is refused: telemetry.metrics_host %s is not loopback and "
                "telemetry.control_token is not set",
                self.host,
            )

    async def handle(self, request: web.Request) -> web.Response:
        self.counters["requests"] += 1
        denied = self._check_auth(request)
        if denied is not None:
            return denied
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        parsed = self._control.parse_json(body)
        if isinstance(parsed, ControlReply):
            self.counters["malformed"] += 1
            return web.Response(
                status=400, text=json.dumps(parsed.to_dict()), content_type="application/json"
            )
        reply = await self._control.request(parsed)
        return web.Response(text=json.dumps(reply.to_dict()), content_type="application/json")

    def _check_auth(self, request: web.Request) -> web.Response | None:
        if self.access == "open":
            return None
        if self.access == "refused":
            self.counters["forbidden"] += 1
            return _error(
                403,
                f"POST /control is refused on {self.host}: it is not a loopback address "
                "and telemetry.control_token is not set",
                self._control.gateway,
            )
        assert self._token is not None
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            self.counters["unauthorized"] += 1
            return _error(
                401,
                "POST /control needs 'Authorization: Bearer <token>'",
                self._control.gateway,
                **_CHALLENGE,
            )
        if not hmac.compare_digest(given.strip().encode(), self._token):
            self.counters["forbidden"] += 1
            return _error(403, "wrong bearer token for POST /control", self._control.gateway)
        return None

    async def _body(self, request: web.Request) -> bytes | web.Response:
        too_large = f"control request over {self.max_bytes} bytes"
        length = request.content_length
        if length is not None and length > self.max_bytes:
            self.counters["oversized"] += 1
            return _error(413, too_large, self._control.gateway)
        data = bytearray()
        # chunked bodies announce no length: read no more than one byte past the limit
        while chunk := await request.content.read(self.max_bytes + 1 - len(data)):
            data += chunk
            if len(data) > self.max_bytes:
                self.counters["oversized"] += 1
                return _error(413, too_large, self._control.gateway)
        return bytes(data)

    def stats(self) -> dict[str, int]:
        return dict(self.counters)


_CHALLENGE: Final = {"WWW-Authenticate": 'Bearer realm="meltica"'}

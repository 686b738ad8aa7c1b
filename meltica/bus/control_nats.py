"""The Control Bus on NATS request/reply.

`NatsControlResponder` serves an `InProcessControlBus` on the shared NATS
connection: every op on ``meltica.control.<gateway id>``, and ``list`` and
``status`` on ``meltica.control``, which every gateway answers (a requester
gathers the replies for a short window; each names its gateway in
``result["gateway"]``).  Payloads are ``ControlRequest`` JSON in and
``ControlReply`` JSON out, as on ``POST /control``.

Bad input never reaches the handler and never crashes the responder: a payload
over `CONTROL_MAX_BYTES`, one that is not a request, or an op other than
``list``/``status`` on ``meltica.control`` is answered with an error reply and
counted.  Requests run concurrently, at most the Control Bus's ``max_pending``
at a time in their own tasks; a message arriving beyond that is answered in
the subscription's own callback (the Control Bus refuses it as full), which
also holds further messages in nats-py's bounded pending queue.  A message
nats-py drops because that queue is full (a slow consumer) is counted as
``dropped`` and still answered, with an error reply saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any, Final

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import SlowConsumerError

from meltica.broker import control_subject
from meltica.bus.control import InProcessControlBus
from meltica.bus.control_http import CONTROL_MAX_BYTES
from meltica.control import ControlReply, ControlRequest

__all__ = ["BROADCAST_OPS", "NatsControlResponder"]

log = logging.getLogger("meltica.bus.control_nats")

# what every gateway answers on meltica.control (the rest change one gateway)
BROADCAST_OPS: Final = frozenset(("list", "status"))
# messages (and bytes) nats-py holds per subscription while requests are served
_PENDING_MSGS: Final = 1024
_PENDING_BYTES: Final = 8 * 1024 * 1024


class NatsControlResponder:
    """Answers control requests for ``control`` on ``client`` as gateway ``gateway``."""

    def __init__(
        self,
        client: Client,
        control: InProcessControlBus,
        gateway: str,
        *,
        max_bytes: int = CONTROL_MAX_BYTES,
    ) -> None:
        self._client = client
        self._control = control
        self.gateway = gateway
        self.max_bytes = max_bytes
        self.subjects = (control_subject(gateway), control_subject(None))
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "requests",
                "replies",
                "no_reply",
                "oversized",
                "not_broadcast",
                "reply_failed",
                "dropped",
            ),
            0,
        )

    async def start(self) -> None:
        """Subscribe both subjects (idempotent)."""
        if self._subs:
            return
        for subject in self.subjects:
            self._subs.append(
                await self._client.subscribe(
                    subject,
                    cb=self._on_message,
                    pending_msgs_limit=_PENDING_MSGS,
                    pending_bytes_limit=_PENDING_BYTES,
                )
            )
        self._chain_error_callback()
        # the server has the interest once this returns: a request sent next is answered
        await self._client.flush()
        log.info("control requests on NATS %s and %s", *self.subjects)

    async def stop(self) -> None:
        """Unsubscribe, then let the requests in flight finish and reply (idempotent)."""
        subs, self._subs = self._subs, []
        for sub in subs:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _chain_error_callback(self) -> None:
        """Route nats-py's slow-consumer reports for our subscriptions to `_on_dropped`
        (nats-py reports a message it drops only through the connection's error
        callback, which it reads from ``_error_cb``); anything else goes on as before."""
        client: Any = self._client
        previous = client._error_cb

        async def on_error(exc: Exception) -> None:
            if isinstance(exc, SlowConsumerError) and exc.sub in self._subs:
                await self._on_dropped(exc)
            elif previous is not None:
                await previous(exc)

        client._error_cb = on_error

    async def _on_dropped(self, exc: SlowConsumerError) -> None:
        """A request nats-py dropped because the pending queue was full: counted, and
        answered with an error (its payload is gone, so no request id)."""
        self.counters["dropped"] += 1
        if not exc.reply:
            return
        reply = _failure(
            f"control requests pending over {_PENDING_MSGS} messages: this one was dropped, "
            "retry later",
            self.gateway,
        )
        try:
            await self._client.publish(exc.reply, json.dumps(reply).encode())
        except (nats.errors.Error, OSError):
            self.counters["reply_failed"] += 1

    async def _on_message(self, msg: Msg) -> None:
        self.counters["requests"] += 1
        if not msg.reply:
            self.counters["no_reply"] += 1  # a publish, not a request: nobody to answer
            return
        if len(self._tasks) >= self._control.max_pending:
            await self._serve(msg)
            return
        task = asyncio.get_running_loop().create_task(self._serve(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, msg: Msg) -> None:
        reply = await self._reply_to(msg)
        try:
            await self._client.publish(msg.reply, json.dumps(reply).encode())
        except (nats.errors.Error, OSError) as exc:
            # the requester's inbox is gone with the connection; the request itself ran
            self.counters["reply_failed"] += 1
            log.debug("control reply to %s failed: %s", msg.reply, exc)
            return
        self.counters["replies"] += 1

    async def _reply_to(self, msg: Msg) -> dict[str, Any]:
        control = self._control
        if len(msg.data) > self.max_bytes:
            self.counters["oversized"] += 1
            return _failure(f"control request over {self.max_bytes} bytes", self.gateway)
        parsed = control.parse_json(msg.data)
        if isinstance(parsed, ControlReply):
            return parsed.to_dict()
        if msg.subject != self.subjects[0] and parsed.op not in BROADCAST_OPS:
            self.counters["not_broadcast"] += 1
            return _failure(
                f"{self.subjects[1]} answers list and status only; send {parsed.op} to "
                f"{self.subjects[1]}.<gateway id>",
                self.gateway,
                parsed,
            )
        return (await control.request(parsed)).to_dict()

    def stats(self) -> dict[str, int]:
        return {**self.counters, "in_flight": len(self._tasks)}


def _failure(message: str, gateway: str, req: ControlRequest | None = None) -> dict[str, Any]:
    rid = req.request_id if req is not None else ""
    return ControlReply(rid, False, message, {"gateway": gateway}).to_dict()

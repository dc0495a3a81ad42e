"""Publish one message until the stream acks it: through a reconnect or a stream leader election.

The message id (``Nats-Msg-Id``) stays the same on every try, so a try whose ack was lost but
which reached the stream is dropped by JetStream's dedupe when repeated: stored once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import PubAck

T = TypeVar("T")

__all__ = ["DUPLICATE_IN_PROCESS", "TRANSIENT_PUBLISH_ERRORS", "publish_until_acked", "until_answered"]

DUPLICATE_IN_PROCESS = 10158
"""JetStream's err_code for "duplicate message id is in process": a message with this id is being
stored right now (a cluster proposing it). Not a refusal: sent again, the dedupe answers."""

TRANSIENT_PUBLISH_ERRORS: tuple[type[BaseException], ...] = (
    nats.errors.TimeoutError,  # no ack in time: the leader died, or an election is under way
    nats.errors.NoRespondersError,
    nats.errors.OutboundBufferLimitError,  # disconnected: tether gives nats-py no reconnect buffer
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,  # 503: JetStream has no leader for the stream yet
)

_RETRIED: tuple[type[BaseException], ...] = (
    *TRANSIENT_PUBLISH_ERRORS, nats.js.errors.APIError)


async def publish_until_acked(js: JetStreamContext, subject: str, payload: bytes, *, msg_id: str,
                              deadline: float, try_timeout: float = 2.0,
                              headers: dict[str, str] | None = None) -> PubAck:
    """``js.publish`` again (same ``msg_id``) after each transient failure until acked, up to
    ``deadline`` (a ``time.time()``); then the last error is raised. Refusals for good (a
    permission, a wrong subject, a bad request) are raised at once."""
    delay = 0.05
    while True:
        try:
            return await js.publish(subject, payload, timeout=try_timeout,
                                    headers={**(headers or {}), "Nats-Msg-Id": msg_id})
        except _RETRIED as exc:
            if not isinstance(exc, TRANSIENT_PUBLISH_ERRORS) and getattr(exc, "err_code", None) != DUPLICATE_IN_PROCESS:
                raise
            if time.time() + delay >= deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)


async def until_answered(ask: Callable[[], Awaitable[T]], *, for_s: float = 30.0) -> T:
    """``ask()`` again after each transient failure (no answer: a stream or bucket electing its leader
    while a cluster node restarts), for up to ``for_s`` seconds; then the last error is raised. For
    requests that are safe to repeat (reads); a write needs its own check of whether it landed."""
    give_up, delay = time.monotonic() + for_s, 0.05
    while True:
        try:
            return await ask()
        except TRANSIENT_PUBLISH_ERRORS:
            if time.monotonic() + delay > give_up:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)

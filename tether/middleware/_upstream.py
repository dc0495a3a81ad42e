"""The upstream seam: one attempt in (:class:`Send`), an answer or a stream out (:class:`Sent`).

Every driver of the call loop gets its answers through an :class:`Upstream`: workers and
inline calls through :class:`ProviderUpstream` (tether's provider client, or a worker's
streaming relay), the adapters through their transport, tests through :class:`MemoryUpstream`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from nats.aio.client import Client as NATS

from ._engine import CallEngine, Outcome
from ._failures import Failure
from ._policy import Policy, Target
from ._relay import relay_attempt
from ._work import CallRecord, WorkItem

__all__ = ["MemoryUpstream", "ProviderUpstream", "Send", "Sent", "Upstream"]

Headers = list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class Send:
    """Make one attempt at ``target``. Adapters fill in the bytes they send (``headers``, ``body``)."""

    target: Target | None
    attempt: int
    timeout_s: float
    headers: Headers = field(default_factory=list)
    body: bytes = b""


@dataclass
class Sent:
    """What one attempt got back: an upstream answer or stream.

    An answer read already (a worker's or an inline call's provider client, a tool) has
    ``outcome``. A raw HTTP answer has ``status``, ``headers`` and ``body`` (complete), or
    ``stream`` (the open upstream, driver-specific) with its ``first`` chunks; a failure to
    connect or to read has ``failure``. A stream a worker relayed to its caller says
    ``relayed`` (its first byte went out: never retried) and, when the caller stopped it,
    ``cancelled`` (``(code, message)``).
    """

    latency_ms: float
    status: int = 0
    headers: Headers = field(default_factory=list)
    body: bytes | None = None
    stream: Any = None
    first: list[bytes] = field(default_factory=list)
    failure: Failure | None = None
    extensions: dict[str, Any] = field(default_factory=dict)
    outcome: Outcome | None = None
    relayed: bool = False
    cancelled: tuple[str, str] | None = None
    usage_seen: bool = False


class Upstream(Protocol):
    """Where a call's attempts go: the provider client of workers and inline calls, an SDK's
    transport or the gateway's client (adapters), or :class:`MemoryUpstream` in tests."""

    async def attempt(self, send: Send) -> Sent: ...


class MemoryUpstream:
    """An upstream that answers from a script, for tests: each attempt takes the next
    :class:`Sent` (an :class:`Outcome` is wrapped in one; an exception is raised)."""

    def __init__(self, *answers: Sent | Outcome | BaseException) -> None:
        self.answers = list(answers)
        self.sends: list[Send] = []

    async def attempt(self, send: Send) -> Sent:
        self.sends.append(send)
        if not self.answers:
            raise AssertionError(f"MemoryUpstream has no answer left for attempt {send.attempt}")
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return Sent(answer.latency_ms, outcome=answer) if isinstance(answer, Outcome) else answer


class ProviderUpstream:
    """Attempts of one call through tether's provider client (workers, inline calls); a call
    that carries a ``relay`` (a worker's streamed durable call) is relayed to its caller as it
    comes, over ``nc``, ``on_relayed`` once its first chunk is on the way."""

    def __init__(self, engine: CallEngine, item: WorkItem, rec: CallRecord, policy: Policy, *,
                 nc: NATS | None = None, on_relayed: Callable[[], Awaitable[None]] | None = None) -> None:
        self.engine = engine
        self.item = item
        self.rec = rec
        self.policy = policy
        self.nc = nc
        self.on_relayed = on_relayed

    async def attempt(self, send: Send) -> Sent:
        engine, item = self.engine, self.item
        if item.relay is not None:
            assert self.nc is not None and self.on_relayed is not None, "a relayed call needs nc and on_relayed"
            streamed = await relay_attempt(engine, self.nc, item, self.rec, self.policy, send.attempt,
                                           on_relayed=self.on_relayed)
            return Sent(streamed.outcome.latency_ms, outcome=streamed.outcome, relayed=streamed.relayed,
                        cancelled=streamed.cancelled, usage_seen=streamed.usage_seen)
        out = await engine.attempt(item, self.rec, self.policy)
        return Sent(out.latency_ms, outcome=out)

"""The interception core: one raw upstream request in, one response (maybe a stream) out.

:class:`Interceptor` is what every adapter shares: the SDK transports hand it the request
they were given and the transport they wrap; the HTTP gateway hands it the agent's request
and an upstream client. It decides whether the request is an LLM call (by path), runs the
policy loop of :mod:`._flow` (inline) or submits the call to the workers (durable), and
returns a :class:`ProxyResponse`: a complete body, or a stream that is a tee over the
upstream's bytes (chunk by chunk; usage, time to first token and, when capturing, the
answer are read on the way through), whose end publishes the call's final event. Those
streams and the send of one attempt live in :mod:`._relay`.

Two shells drive the same flow: :meth:`Interceptor.handle` (async) and
:meth:`Interceptor.handle_sync` (sync clients; see ``_hub`` for how they publish without
waiting on an event loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal, Protocol, TypeVar

from tether.bus import Bus
from tether.middleware import (
    CallEngine,
    Policy,
    PolicySet,
    Target,
    WorkItem,
    request_digests,
    request_hash,
)
from tether.schemas import uuid7

from ._flow import (
    Effect,
    Emit,
    LlmCall,
    Run,
    Send,
    Sleep,
    Spawn,
    awaits_ack,
    cancelled_event,
    durable_flow,
    durable_stream_flow,
    llm_flow,
)
from ._hub import Hub, LoopThreadError, background_hub, background_hub_nowait, default_policies
from ._redact import Hook, Redactor, redactor_of
from ._relay import (
    AsyncPassThrough,
    AsyncRelayStream,
    AsyncTee,
    SyncPassThrough,
    SyncRelayStream,
    SyncTee,
    send_async,
    send_sync,
)
from ._runs import current_run, new_traceparent, trace_of
from ._wire import Kind, LlmRequest, Operation, StreamAccumulator, error_body, operation_of, parse_request

__all__ = [
    "AsyncUpstream",
    "AsyncUpstreamResponse",
    "Interceptor",
    "ProxyResponse",
    "RoutedUpstream",
    "SyncProxyResponse",
    "SyncUpstream",
    "SyncUpstreamResponse",
]

log = logging.getLogger("tether.adapters")
T = TypeVar("T")
Headers = list[tuple[str, str]]
Mode = Literal["inline", "durable"]

# Sent upstream differently from what the caller set: recomputed, or tether's to choose.
_HOP = frozenset({"content-length", "accept-encoding", "traceparent", "connection", "transfer-encoding"})


# -- the upstream, as the shells see it ------------------------------------------------------


class AsyncUpstreamResponse(Protocol):
    status: int
    headers: Headers
    extensions: dict[str, Any]

    async def next_chunk(self) -> bytes | None:
        """The next chunk of the body, ``None`` at its end."""

    async def aclose(self) -> None: ...


class AsyncUpstream(Protocol):
    """Sends one attempt of a request: the headers and body tether chose for it."""

    async def send(self, headers: Headers, body: bytes, timeout_s: float | None) -> AsyncUpstreamResponse: ...


class RoutedUpstream(AsyncUpstream, Protocol):
    """An upstream that can also send to another provider: a fallback target's (the gateway)."""

    async def send_to(self, target: Target, headers: Headers, body: bytes,
                      timeout_s: float | None) -> AsyncUpstreamResponse: ...


class SyncUpstreamResponse(Protocol):
    status: int
    headers: Headers
    extensions: dict[str, Any]

    def next_chunk(self) -> bytes | None: ...

    def close(self) -> None: ...


class SyncUpstream(Protocol):
    def send(self, headers: Headers, body: bytes, timeout_s: float | None) -> SyncUpstreamResponse: ...


@dataclass
class ProxyResponse:
    """What the caller gets: ``content`` (complete) or ``stream`` (async bytes, ``aclose()`` it)."""

    status: int
    headers: Headers
    content: bytes | None = None
    stream: AsyncTee | AsyncRelayStream | AsyncPassThrough | None = None
    extensions: dict[str, Any] = field(default_factory=dict)
    call_id: str | None = None


@dataclass
class SyncProxyResponse:
    status: int
    headers: Headers
    content: bytes | None = None
    stream: SyncTee | SyncRelayStream | SyncPassThrough | None = None
    extensions: dict[str, Any] = field(default_factory=dict)
    call_id: str | None = None


# -- the interceptor -----------------------------------------------------------------------------


class Interceptor:
    """Policy, events and redaction for LLM calls made over HTTP (one per client or route).

    ``bus``: where events go (else the current run's bus, else tether's background bus);
    ``policies``: the :class:`PolicySet` (else ``tether.toml``); ``mode``: ``"inline"``
    (the policy loop runs here) or ``"durable"`` (calls go through the WORK stream; the
    worker must know ``provider``; streams are relayed back by the worker, see
    ``stream_idle_timeout_s``); ``capture``: record request and response
    bodies; ``agent``: the agent id outside a run; ``provider``: the provider name in
    routes (``openai:gpt-4o``), by default the wire format's; ``redact``: a
    :class:`Redactor`, a hook, or extra field names; ``stream_usage``: ask a streamed chat
    completion for usage when the caller did not (the extra chunk is removed);
    ``fallback_providers``: other providers the upstream can reach (a :class:`RoutedUpstream`,
    the gateway's), whose fallback targets are kept; ``stream_idle_timeout_s``: how long a
    durable stream may stay silent (no chunk, no heartbeat from its worker) before the
    caller ends it with an error.
    """

    def __init__(self, *, bus: Bus | None = None, policies: PolicySet | None = None, mode: Mode = "inline",
                 capture: bool = True, agent: str | None = None, provider: str | None = None,
                 kind: Kind | None = None, redact: Redactor | Hook | Iterable[str] | None = None,
                 stream_usage: bool = True, fallback_providers: Iterable[str] = (),
                 stream_idle_timeout_s: float = 15.0) -> None:
        if mode not in ("inline", "durable"):
            raise ValueError(f"mode must be 'inline' or 'durable', not {mode!r}")
        if provider is not None and (not provider or ":" in provider):
            raise ValueError(f"provider must be a name without ':', not {provider!r}")
        self.bus = bus
        self.policies = policies
        self.mode: Mode = mode
        self.capture = capture
        self.agent = agent
        self.provider = provider
        self.kind = kind
        self.redactor = redactor_of(redact)
        self.stream_usage = stream_usage
        self.fallback_providers = frozenset(fallback_providers)
        if stream_idle_timeout_s <= 0:
            raise ValueError(f"stream_idle_timeout_s must be > 0, not {stream_idle_timeout_s!r}")
        self.stream_idle_timeout_s = stream_idle_timeout_s
        self._routes: dict[tuple[int, str], Policy] = {}
        self._warned = False

    def __repr__(self) -> str:
        return (f"<tether.Interceptor mode={self.mode} provider={self.provider or self.kind or 'by path'} "
                f"capture={self.capture}>")

    # -- what a request is -----------------------------------------------------------------------

    def operation(self, method: str, path: str) -> tuple[Kind, Operation] | None:
        found = operation_of(method.upper(), path)
        if found is None:
            return None
        kind, operation = found
        if self.kind == "openai" and kind == "anthropic":
            return None  # an OpenAI client's /messages is not Anthropic's
        return kind, operation

    def policy_for(self, policies: PolicySet, route: str, provider: str) -> Policy:
        """The route's policy, its fallbacks restricted to this provider (and to
        ``fallback_providers``): a client can only send to its own provider, with another model."""
        key = (id(policies), route)
        policy = self._routes.get(key)
        if policy is None:
            policy = policies.policy_for(route)
            reachable = self.fallback_providers
            same = tuple(t for t in policy.fallback.targets if t.provider == provider or t.provider in reachable)
            if same != policy.fallback.targets:
                policy = dataclasses.replace(policy, fallback=dataclasses.replace(policy.fallback, targets=same))
            self._routes[key] = policy
        return policy

    def _hub_nowait(self) -> Hub | None:
        if self.bus is not None:
            return Hub.of(self.bus)
        ctx = current_run()
        if ctx is not None and ctx.hub is not None:
            return ctx.hub
        return background_hub_nowait()

    def _fail_open(self, exc: BaseException) -> None:
        if not self._warned:
            self._warned = True
            log.error("tether cannot reach its bus (%s): LLM calls pass through without policy or events", exc)

    def prepare(self, hub: Hub, engine: CallEngine, kind: Kind, operation: Operation, headers: Headers,
                raw: bytes, path: str | None = None) -> LlmCall:
        """The state of one call: ids, run and trace context, redacted record, policy."""
        request = parse_request(kind, operation, raw, path)
        digest, fingerprint = call_digests(request, raw)
        ctx = current_run()
        incoming: str | None = None  # the caller's traceparent (the first)
        keyed = False  # the caller sent an idempotency key
        out: Headers = []  # what goes upstream: the caller's headers, but those tether writes itself
        for k, v in headers:
            low = k.lower()
            if low in _HOP:
                if incoming is None and low == "traceparent":
                    incoming = v
                continue
            keyed = keyed or low == "idempotency-key"
            out.append((k, v))
        trace_id = trace_of(incoming) or (ctx.trace_id if ctx is not None else None)
        traceparent = new_traceparent(trace_id)
        provider = self.provider or kind
        model = request.model or "unknown"
        body: dict[str, Any] = request.body or {}  # redacted when recorded (LlmCall.recorded), not before
        item = WorkItem.made(  # every field is ours and valid: skip validating the body twice
            call_id=uuid7(), kind="llm", runid=ctx.run_id if ctx is not None else None,
            agentid=(ctx.agent if ctx is not None and ctx.agent else None) or self.agent,
            traceparent=traceparent, submitted_at=time.time(), provider=provider, model=model,
            operation=operation, body=body)
        policies = engine.policies
        policy = self.policy_for(policies, item.route, provider)
        if kind == "gemini" and policy.fallback.targets:  # the model is in the URL, which tether does not change
            policy = dataclasses.replace(policy, fallback=dataclasses.replace(policy.fallback, targets=()))
        ask_usage = (self.stream_usage and operation == "chat" and request.stream and request.body is not None
                     and not _include_usage(request.body))
        if ask_usage:
            assert request.body is not None
            options = request.body.get("stream_options")
            raw = json.dumps({**request.body, "stream_options": {**(options if isinstance(options, dict) else {}),
                                                                  "include_usage": True}},
                             separators=(",", ":")).encode()
        out.append(("accept-encoding", "identity"))  # tether reads what it records
        out.append(("traceparent", traceparent))
        if not keyed:
            out.append(("idempotency-key", item.call_id))
        return LlmCall(hub=hub, engine=engine, policy=policy, item=item, request=request, headers=out, raw=raw,
                       capture=self.capture, redactor=self.redactor, mode=self.mode, ask_usage=ask_usage,
                       request_hash=digest, journal=ctx.journal if ctx is not None else None,
                       fingerprint_digest=fingerprint)

    def _accumulator(self, call: LlmCall) -> StreamAccumulator:
        return StreamAccumulator(call.kind, call.request.operation, capture=call.capture,
                                 drop_usage_chunk=call.ask_usage)

    # -- the async shell -----------------------------------------------------------------------------

    async def handle(self, method: str, path: str, headers: Headers, body: bytes,
                     upstream: AsyncUpstream) -> ProxyResponse:
        """Forward one request: an LLM call under the policy, anything else untouched."""
        found = self.operation(method, path)
        if found is None:
            return await self._pass_async(upstream, headers, body)
        kind, operation = found
        if kind == "gemini" and self.mode == "durable":
            return ProxyResponse(*_durable_gemini())
        try:
            hub = self._hub_nowait()
            if hub is None:
                hub = await asyncio.to_thread(background_hub)
            policies = self.policies or default_policies()
            engine = hub.engine_nowait(policies)
            if engine is None:
                engine = await hub.call(partial(hub.engine, policies))
        except Exception as exc:  # no bus: never block the agent
            self._fail_open(exc)
            return await self._pass_async(upstream, headers, body)
        call = self.prepare(hub, engine, kind, operation, headers, body, path)
        if self.mode == "durable":
            if call.request.stream:
                final = await drive_async(hub, durable_stream_flow(call, self.stream_idle_timeout_s), _no_io)
                if final.chunks is not None:
                    return ProxyResponse(final.status, final.headers, stream=AsyncPassThrough(
                        AsyncRecorded(final.chunks)), call_id=call.item.call_id)
                if final.relay is not None:
                    return ProxyResponse(final.status, final.headers, stream=AsyncRelayStream(call, final.relay),
                                         call_id=call.item.call_id)
                return ProxyResponse(final.status, final.headers, final.body, call_id=call.item.call_id)
            final = await drive_async(hub, durable_flow(call), _no_io)
            return ProxyResponse(final.status, final.headers, final.body, call_id=call.item.call_id)
        attempt = 0

        async def io(effect: Effect) -> Any:
            nonlocal attempt
            assert isinstance(effect, Send)
            attempt = effect.attempt
            return await send_async(upstream, call.wire(effect))

        try:
            final = await drive_async(hub, llm_flow(call), io)
        except asyncio.CancelledError:
            hub.emit(cancelled_event(call, attempt))
            raise
        if final.chunks is not None:
            return ProxyResponse(final.status, final.headers, stream=AsyncPassThrough(AsyncRecorded(final.chunks)),
                                 call_id=call.item.call_id)
        sent = final.sent
        if sent is None:
            return ProxyResponse(final.status, final.headers, final.body, call_id=call.item.call_id)
        tee = AsyncTee(call, final, self._accumulator(call), partial(drive_async, hub, io=_no_io))
        return ProxyResponse(final.status, final.headers, stream=tee, extensions=sent.extensions,
                             call_id=call.item.call_id)

    async def _pass_async(self, upstream: AsyncUpstream, headers: Headers, body: bytes) -> ProxyResponse:
        resp = await upstream.send(headers, body, None)
        return ProxyResponse(resp.status, resp.headers, stream=AsyncPassThrough(resp), extensions=resp.extensions)

    # -- the sync shell ------------------------------------------------------------------------------

    def handle_sync(self, method: str, path: str, headers: Headers, body: bytes,
                    upstream: SyncUpstream) -> SyncProxyResponse:
        found = self.operation(method, path)
        if found is None:
            return self._pass_sync(upstream, headers, body)
        kind, operation = found
        if kind == "gemini" and self.mode == "durable":
            return SyncProxyResponse(*_durable_gemini())
        try:
            hub = self._hub_nowait() or background_hub()
        except Exception as exc:
            self._fail_open(exc)
            return self._pass_sync(upstream, headers, body)
        if hub.on_loop_thread():
            raise LoopThreadError(
                "tether: a synchronous client is being used on the thread that runs its bus's event loop, which "
                "it would block. Use the async client there, or let tether use its background bus (bus=None, "
                "outside a run given a bus).")
        try:
            policies = self.policies or default_policies()
            engine = hub.engine_nowait(policies) or hub.call_sync(partial(hub.engine, policies))
        except Exception as exc:
            self._fail_open(exc)
            return self._pass_sync(upstream, headers, body)
        call = self.prepare(hub, engine, kind, operation, headers, body, path)
        if self.mode == "durable":
            if call.request.stream:
                final = drive_sync(hub, durable_stream_flow(call, self.stream_idle_timeout_s), _no_io_sync)
                if final.chunks is not None:
                    return SyncProxyResponse(final.status, final.headers,
                                             stream=SyncPassThrough(Recorded(final.chunks)), call_id=call.item.call_id)
                if final.relay is not None:
                    return SyncProxyResponse(final.status, final.headers, stream=SyncRelayStream(call, final.relay),
                                             call_id=call.item.call_id)
                return SyncProxyResponse(final.status, final.headers, final.body, call_id=call.item.call_id)
            final = drive_sync(hub, durable_flow(call), _no_io_sync)
            return SyncProxyResponse(final.status, final.headers, final.body, call_id=call.item.call_id)

        def io(effect: Effect) -> Any:
            assert isinstance(effect, Send)
            return send_sync(upstream, call.wire(effect))

        final = drive_sync(hub, llm_flow(call), io)
        if final.chunks is not None:
            return SyncProxyResponse(final.status, final.headers, stream=SyncPassThrough(Recorded(final.chunks)),
                                     call_id=call.item.call_id)
        sent = final.sent
        if sent is None:
            return SyncProxyResponse(final.status, final.headers, final.body, call_id=call.item.call_id)
        tee = SyncTee(call, final, self._accumulator(call), partial(drive_sync, hub, io=_no_io_sync))
        return SyncProxyResponse(final.status, final.headers, stream=tee, extensions=sent.extensions,
                                 call_id=call.item.call_id)

    def _pass_sync(self, upstream: SyncUpstream, headers: Headers, body: bytes) -> SyncProxyResponse:
        resp = upstream.send(headers, body, None)
        return SyncProxyResponse(resp.status, resp.headers, stream=SyncPassThrough(resp),
                                 extensions=resp.extensions)


class Recorded:
    """A replayed stream's body for sync callers: its recorded events, one chunk each."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = iter(chunks)

    def next_chunk(self) -> bytes | None:
        return next(self._chunks, None)

    def close(self) -> None:
        self._chunks = iter(())


class AsyncRecorded:
    """:class:`Recorded` for async callers."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = iter(chunks)

    async def next_chunk(self) -> bytes | None:
        return next(self._chunks, None)

    async def aclose(self) -> None:
        self._chunks = iter(())


def call_digest(request: LlmRequest, raw: bytes) -> str:
    """The request hash a call is recorded (and replayed) by."""
    hashed: Any = request.body if request.body is not None else raw
    if request.kind == "gemini" and request.body is not None:
        hashed = {**request.body, "model": request.model}  # Gemini's model is in the path
    return request_hash(hashed, operation=request.operation)


def call_digests(request: LlmRequest, raw: bytes) -> tuple[str, str | None]:
    """:func:`call_digest` and, for a JSON request hashed as it is (not Gemini's), the runaway
    guard's fingerprint of it, each top-level value written as canonical JSON once for both."""
    if request.body and request.kind != "gemini":  # an empty body's fingerprint is of its raw text
        return request_digests(request.body, operation=request.operation)
    return call_digest(request, raw), None


def _durable_gemini() -> tuple[int, Headers, bytes]:
    """The answer to a Gemini call in durable mode, which tether's workers cannot send."""
    message = ("tether's durable mode does not send Gemini calls (its workers speak the OpenAI and Anthropic APIs): "
               "give this client mode='inline'")
    return 501, [("content-type", "application/json"), ("x-should-retry", "false")], \
        error_body("gemini", 501, message, code="durable_unsupported")


def _include_usage(body: Mapping[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is not None


async def _no_io(effect: Effect) -> Any:
    raise AssertionError(f"unexpected effect {effect!r}")


def _no_io_sync(effect: Effect) -> Any:
    raise AssertionError(f"unexpected effect {effect!r}")


# -- driving a flow ------------------------------------------------------------------------------


async def drive_async(hub: Hub, flow: Generator[Effect, Any, T], io: Callable[[Effect], Awaitable[Any]]) -> T:
    """Run ``flow`` to its end, doing its effects with ``await``; ``io`` does Send and Invoke.

    :func:`tether.middleware.drive` with the effects done in its loop: no handler coroutine and
    no step tuple per effect (three to five effects a call, on every call's path)."""
    with contextlib.closing(flow):
        send = flow.send
        result: Any = None
        while True:
            try:
                effect = send(result)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            result = None
            if isinstance(effect, Emit):
                if awaits_ack(effect):
                    await hub.apublish(effect.event)
                else:
                    await hub.aemit(effect.event)
            elif isinstance(effect, Run):
                try:
                    result = await hub.call(effect.make, drain=effect.drain)
                except Exception:  # the log is unreachable: the call goes on without that step
                    log.warning("tether: an engine step failed; going on without it", exc_info=True)
            elif isinstance(effect, Spawn):
                hub.spawn(effect.make)
            elif isinstance(effect, Sleep):
                if effect.seconds > 0:
                    await asyncio.sleep(effect.seconds)
            else:
                result = await io(effect)


def drive_sync(hub: Hub, flow: Generator[Effect, Any, T], io: Callable[[Effect], Any]) -> T:
    """Run ``flow`` from a plain thread: events queued, engine steps run on the bus's loop."""
    with contextlib.closing(flow):
        send = flow.send
        result: Any = None
        while True:
            try:
                effect = send(result)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            result = None
            if isinstance(effect, Emit):
                if awaits_ack(effect):
                    hub.publish_sync(effect.event)
                else:
                    hub.emit(effect.event)
            elif isinstance(effect, Run):
                if effect.drain and hub.on_loop_thread():
                    hub.spawn(effect.make, drain=True)  # a sync tool on the loop: record, do not wait
                    continue
                try:
                    result = hub.call_sync(effect.make, drain=effect.drain, timeout=effect.timeout_s)
                except LoopThreadError:
                    raise
                except Exception:
                    log.warning("tether: an engine step failed; going on without it", exc_info=True)
            elif isinstance(effect, Spawn):
                hub.spawn(effect.make)
            elif isinstance(effect, Sleep):
                if effect.seconds > 0:
                    time.sleep(effect.seconds)
            else:
                result = io(effect)

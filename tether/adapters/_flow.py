"""The policy loop of one intercepted call, without I/O.

A call is a generator that yields *effects* and gets their results back, the way
``httpx.Auth.auth_flow`` works: the async shell (``await``) and the sync shell (blocking,
for sync clients) drive the same generator, so inline policy, events and dead letters
behave the same in both. The generator never touches a socket or a clock-driven wait:

* :class:`Emit` an event (queued, never blocking);
* :class:`Run` an engine step on the bus's loop and get its result (budgets, a breaker
  that is not closed, dead letters);
* :class:`Spawn` an engine step without waiting (breaker bookkeeping, spend);
* :class:`Sleep` (a retry's backoff);
* :class:`Send` the request to the upstream once (the shell does the HTTP and hands back
  a :class:`Sent`); :class:`Invoke` a tool once.

Retries happen only inside the loop, that is before the caller has seen a byte of the
answer: a stream is handed to the caller after its first chunk arrived.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import time
import zlib
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

from tether.middleware import (
    AttemptRecord,
    BudgetRefusal,
    CallEngine,
    CallFailed,
    CallRecord,
    CallResult,
    DeadLetterReason,
    Decision,
    Failure,
    Fallback,
    GiveUp,
    Outcome,
    Policy,
    PolicySet,
    RelayBroken,
    RelayListener,
    RelaySpec,
    Retry,
    Target,
    WorkItem,
    classify_http,
    decide,
    relay_subject,
    request_fingerprint,
    terminal_id,
    usage_of,
)
from tether.schemas import (
    ErrorInfo,
    Event,
    LlmCallFailed,
    LlmCallRequested,
    Payload,
    ToolCallAttemptFailed,
    ToolCallCompleted,
    ToolCallRequested,
)

from ._hub import Hub
from ._redact import Redactor
from ._wire import LlmRequest, StreamAccumulator, error_body, error_status

__all__ = [
    "Effect",
    "Emit",
    "Final",
    "Invoke",
    "Invoked",
    "LlmCall",
    "Run",
    "RunawayError",
    "Send",
    "Sent",
    "Sleep",
    "Spawn",
    "ToolCall",
    "cancelled_event",
    "durable_flow",
    "durable_stream_flow",
    "llm_flow",
    "stream_end_flow",
    "tool_flow",
]

Headers = list[tuple[str, str]]
_DROP_ON_RELAY = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})


# -- effects --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Emit:
    event: Event


@dataclass(frozen=True, slots=True)
class Run:
    make: Callable[[], Awaitable[Any]]
    drain: bool = False
    """Publish every queued event first (what ``make`` publishes must come after them)."""
    timeout_s: float | None = 30.0
    """How long a sync caller waits for it (an engine step is quick; a durable call is not)."""


@dataclass(frozen=True, slots=True)
class Spawn:
    make: Callable[[], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class Send:
    target: Target
    attempt: int
    headers: Headers
    body: bytes
    timeout_s: float


@dataclass(frozen=True, slots=True)
class Invoke:
    attempt: int


Effect = Emit | Run | Spawn | Sleep | Send | Invoke


@dataclass
class Sent:
    """What one attempt got back, as the shell read it.

    A complete answer has ``body``; a stream that delivered its first chunk has
    ``stream`` (the open upstream, shell-specific) and ``first``; a failure to connect or
    to read has ``failure``.
    """

    latency_ms: float
    status: int = 0
    headers: Headers = field(default_factory=list)
    body: bytes | None = None
    stream: Any = None
    first: list[bytes] = field(default_factory=list)
    failure: Failure | None = None
    extensions: dict[str, Any] = field(default_factory=dict)


@dataclass
class Final:
    """The answer the caller gets: complete (``body``), or the stream in ``sent``."""

    status: int
    headers: Headers
    body: bytes | None = None
    sent: Sent | None = None
    attempt: int = 0
    relay: RelayListener | None = None
    """A durable stream: the worker relays the answer to this listener (its first chunk came)."""


# -- one LLM call ------------------------------------------------------------------------------


@dataclass
class LlmCall:
    """Everything the loop needs about one intercepted LLM call."""

    hub: Hub
    engine: CallEngine
    policy: Policy
    item: WorkItem
    request: LlmRequest
    headers: Headers
    raw: bytes
    """The body to send: the caller's bytes, or with ``stream_options.include_usage`` added."""
    capture: bool
    redactor: Redactor
    mode: Literal["inline", "durable"] = "inline"
    ask_usage: bool = False
    """tether added ``stream_options.include_usage``; the tee removes the extra chunk."""
    rec: CallRecord = field(init=False)
    recorded: WorkItem = field(init=False)
    _bodies: dict[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rec = CallRecord.new(self.item, time.time())
        # What the dead-letter record keeps: the redacted body, or none when not capturing.
        self.recorded = self.item if self.capture else self.item.model_copy(update={"body": {}})

    @property
    def kind(self) -> Literal["openai", "anthropic"]:
        return self.request.kind

    def event(self, payload: Payload, *, id: str | None = None) -> Event:
        item = self.item
        return Event.of(payload, id=id, runid=item.runid, agentid=item.agentid, traceparent=item.traceparent,
                        source=self.engine.source, extensions={"tenant": item.tenant} if item.tenant else None)

    def requested_event(self) -> Event:
        request = self.request
        item = self.item
        recorded: Any = None
        if self.capture:
            recorded = item.body if request.body is not None else self.redactor.text(
                self.raw.decode("utf-8", errors="replace"))
        payload = LlmCallRequested(
            call_id=item.call_id, provider=item.provider or "?", model=item.model or "?",
            operation=request.operation, mode=self.mode, stream=request.stream, route=item.route,
            parameters=self.redactor(request.parameters), request=recorded)
        return self.event(payload, id=terminal_id(item.call_id, "requested"))

    def body_for(self, target: Target) -> bytes:
        """The request body for ``target``: the bytes to send (the caller's, unless tether asked
        for usage), with the model replaced for a fallback."""
        body = self._bodies.get(target.model)
        if body is None:
            if target.model == self.item.model or self.request.body is None:
                body = self.raw
            else:
                body = json.dumps({**json.loads(self.raw), "model": target.model}, separators=(",", ":")).encode()
            self._bodies[target.model] = body
        return body

    def scrub(self, failure: Failure) -> Failure:
        text = self.redactor.text(failure.message)
        return failure if text == failure.message else dataclasses.replace(failure, message=text)

    def reply_headers(self, headers: Headers, *, final_error: bool = False) -> Headers:
        out = [(k, v) for k, v in headers if k.lower() not in _DROP_ON_RELAY and k.lower() != "x-should-retry"]
        out.append(("x-tether-call-id", self.item.call_id))
        if final_error:
            out.append(("x-should-retry", "false"))
        return out

    def error_reply(self, status: int, message: str, *, code: str, retry_after_s: float | None = None) -> Final:
        headers: Headers = [("content-type", "application/json")]
        if retry_after_s is not None:
            headers.append(("retry-after", str(max(0, round(retry_after_s + 0.499)))))
        return Final(status, self.reply_headers(headers, final_error=True),
                     error_body(self.kind, status, message, code=code))

    def gave_up(self, reason: str, failure: Failure | None, error: ErrorInfo, sent: Sent | None) -> Final:
        """The answer after giving up: the upstream's own error response if there was one,
        else one written in the provider's format; always with ``x-should-retry: false``."""
        if sent is not None and sent.body is not None and sent.status >= 400:
            return Final(sent.status, self.reply_headers(sent.headers, final_error=True), sent.body)
        status = error_status(failure, reason)
        # an open circuit is why, also when its cooldown outlasts the deadline
        code = "circuit_open" if failure is not None and failure.kind == "breaker_open" else give_up_code(reason)
        return self.error_reply(status, f"tether gave up ({reason}): {error.type}: {error.message}", code=code,
                                retry_after_s=error.retry_after_s)

    def durable_failed(self, failed: CallFailed) -> Final:
        """The answer after a worker gave up: the status, code and reason :meth:`gave_up` gives
        the same outcome inline (a provider's error status as it came)."""
        error = failed.error
        if failed.reason in ("budget", "runaway"):
            status = 429
        elif error.status_code and error.status_code >= 400:
            status = error.status_code
        else:
            status = 504 if failed.reason == "deadline" else 502
        code = "circuit_open" if error.type == "CircuitOpenError" else give_up_code(failed.reason)
        return self.error_reply(status, f"tether gave up ({failed.reason}): {error.type}: {error.message}",
                                code=code, retry_after_s=error.retry_after_s)

    def parse_answer(self, sent: Sent) -> tuple[Any, Failure | None]:
        """The JSON of a complete 2xx answer, or why it is not one."""
        body = sent.body or b""
        encoding = next((v.lower() for k, v in sent.headers if k.lower() == "content-encoding"), "identity")
        if encoding in ("gzip", "deflate"):
            try:
                body = zlib.decompress(body, 47)  # 32 + 15: gzip or zlib header, detected
            except zlib.error:
                return None, None
        elif encoding not in ("identity", ""):
            return None, None  # an encoding tether does not read: pass it on, unrecorded
        try:
            return json.loads(body), None
        except ValueError as exc:
            return None, Failure(kind="malformed", status_code=sent.status, error_type="MalformedResponseError",
                                 message=f"response is not JSON: {exc}")


def give_up_code(reason: str) -> str:
    """The error ``code`` of a gateway answer after tether gave up for ``reason``."""
    return {"budget": "budget_exceeded", "runaway": "runaway_guard", "deadline": "deadline_exceeded"}.get(
        reason, "tether_gave_up")


def _admission(call: LlmCall) -> Generator[Effect, Any, Final | None]:
    """The runaway guard (per process) and budgets, once per call, before any attempt."""
    engine, item, rec = call.engine, call.item, call.rec
    refusal: BudgetRefusal | str | None = None
    guard = engine.policies.runaway
    if item.runid and (guard.max_calls_per_run or guard.max_identical_calls):
        fingerprint = request_fingerprint(call.request.body or {"raw": call.raw.decode("utf-8", "replace")})
        with call.hub.runaway_lock:
            refusal = call.hub.runaway.check(item.runid, fingerprint, guard)
            if refusal is None:
                call.hub.runaway.record(item.runid, fingerprint)
    if refusal is None and engine.policies.budgets_for(run_id=item.runid, agent_id=item.agentid,
                                                       tenant=item.tenant):
        refusal = yield Run(lambda: engine.admit(item, rec))
    if refusal is None:
        return None
    if isinstance(refusal, BudgetRefusal):
        yield Emit(call.event(refusal.to_event(call_id=item.call_id)))
        error = ErrorInfo(type="BudgetExceeded", message=refusal.message, retryable=False)
        reason: Literal["budget", "runaway"] = "budget"
    else:
        error = ErrorInfo(type="RunawayGuard", message=refusal, retryable=False)
        reason = "runaway"
    yield Run(lambda: engine.give_up(call.recorded, rec, reason, error), drain=True)
    return call.gave_up(reason, None, error, None)


def llm_flow(call: LlmCall) -> Generator[Effect, Any, Final]:
    """Admission, then attempts under the policy until an answer, a stream's first chunk, or giving up."""
    engine, item, rec, policy = call.engine, call.item, call.rec, call.policy
    yield Emit(call.requested_event())
    refused = yield from _admission(call)
    if refused is not None:
        return refused
    rate_limited = policy.rate_limit.limited
    while True:
        if policy.deadline_s is not None and time.time() >= rec.started_at + policy.deadline_s:
            error = ErrorInfo(type="DeadlineExceeded", message="the call's deadline passed", retryable=False)
            yield Run(partial(engine.give_up, call.recorded, rec, "deadline", error), drain=True)
            return call.gave_up("deadline", None, error, None)
        target = rec.target
        assert target is not None
        route = target.route
        failure: Failure | None = None
        if (engine.breakers.state(route).state != "closed" or rate_limited
                or engine.policies.rate_limit_for(target.provider).limited):
            gated = yield Run(lambda: engine.gate(item, rec, policy))
            failure, wait = gated if gated is not None else (None, 0.0)
            if wait > 0:
                yield Sleep(wait)
                continue
        attempt = len(rec.attempts) + 1
        started_at = time.time()
        latency = 0.0
        sent: Sent | None = None
        if failure is None:
            sent = yield Send(target, attempt, call.headers, call.body_for(target), policy.timeout_s)
            assert isinstance(sent, Sent)
            failure, latency = sent.failure, sent.latency_ms
            data: Any = None
            if failure is None and sent.status >= 300:
                failure = classify_http(sent.status, dict(sent.headers), sent.body, now=time.time())
            elif failure is None and sent.stream is None:
                data, failure = call.parse_answer(sent)
            ok = failure is None
            counts = ok or (failure is not None and failure.counts_for_breaker)
            yield Spawn(partial(engine.breakers.record, route, policy.breaker, ok=ok, counts=counts,
                                call_id=item.call_id))
            if ok:
                engine.record_outcome(rec, attempt, None, started_at)
                if sent.stream is not None:
                    return Final(sent.status, call.reply_headers(sent.headers), sent=sent, attempt=attempt)
                usage, finish = usage_of(call.kind, call.request.operation, data)
                out = Outcome(True, latency, call.redactor(data) if call.capture else None, usage, finish)
                yield Emit(engine.completed_event(item, rec, attempt, out, capture=call.capture, scrubbed=True))
                yield from _account(call, out)
                return Final(sent.status, call.reply_headers(sent.headers), sent.body, attempt=attempt)
        assert failure is not None
        failure = call.scrub(failure)
        engine.record_outcome(rec, attempt, failure, started_at)
        decision: Decision = engine.decide(item, rec, policy, failure)
        yield Emit(engine.attempt_failed_event(item, rec, attempt, failure, latency, decision, scrubbed=True))
        if isinstance(decision, GiveUp):
            error = failure.to_error_info(retryable=False)
            yield Run(partial(engine.give_up, call.recorded, rec, decision.reason, error), drain=True)
            return call.gave_up(decision.reason, failure, error, sent)
        if isinstance(decision, Fallback):
            rec.provider, rec.model = decision.target.provider, decision.target.model
            rec.fallbacks += 1
        if isinstance(decision, Retry | Fallback) and decision.delay_s > 0:
            yield Sleep(decision.delay_s)


def _account(call: LlmCall, out: Outcome) -> Generator[Effect, Any, None]:
    """Add the spend to the run, agent and tenant, off the caller's path (budgets only)."""
    engine = call.engine
    if engine.policies.budgets:
        item, target = call.item, call.rec.target
        yield Spawn(lambda: engine.account(item, out.usage, target))


def stream_end_flow(call: LlmCall, final: Final, acc: StreamAccumulator, how: Literal["end", "error", "closed"],
                    failure: Failure | None = None) -> Generator[Effect, Any, None]:
    """After a stream the caller was reading ended: completed, failed, or closed early."""
    engine, item, rec = call.engine, call.item, call.rec
    sent = final.sent
    assert sent is not None
    attempt = final.attempt
    latency = sent.latency_ms + ((acc.clock() - acc.started_at) * 1000 if acc.started_at else 0.0)
    ttft = (acc.first_token_at - acc.started_at) * 1000 + sent.latency_ms \
        if acc.first_token_at is not None and acc.started_at else None
    if how == "end" and acc.error is None and acc.malformed is None:
        out = Outcome(True, latency, call.redactor(acc.response()) if call.capture else None, acc.usage,
                      acc.finish_reason, ttft_ms=ttft)
        yield Emit(engine.completed_event(item, rec, attempt, out, capture=call.capture, scrubbed=True))
        yield from _account(call, out)
        return
    if how == "closed":
        message = (f"the caller closed the stream after {acc.bytes} bytes ({acc.events} events), "
                   "before it ended")
        error = ErrorInfo(type="Cancelled", message=message, code="client_closed", retryable=False)
        target = rec.target or Target(item.provider or "?", item.model or "?")
        yield Emit(call.event(LlmCallFailed(call_id=item.call_id, provider=target.provider, model=target.model,
                                            attempts=attempt, error=error), id=terminal_id(item.call_id, "failed")))
        if acc.usage_seen:
            yield from _account(call, Outcome(False, latency, usage=acc.usage))
        elif engine.policies.budgets:
            yield Spawn(lambda: engine.release(item))
        return
    if failure is None:
        if acc.error is not None:
            message = str(acc.error.get("message") or acc.error)
            failure = Failure(kind="http", status_code=None, error_type=str(acc.error.get("type") or "StreamError"),
                              message=message)
        else:
            failure = Failure(kind="malformed", error_type="MalformedResponseError",
                              message=acc.malformed or "the stream broke")
    failure = call.scrub(dataclasses.replace(
        failure, message=f"{failure.message} (after the first byte reached the caller: not retried)"))
    # The attempt's record says it succeeded (the first chunk came); it failed after all.
    if rec.attempts:
        rec.attempts.pop()
    engine.record_outcome(rec, attempt, failure, time.time() - latency / 1000)
    decision = GiveUp("not_retryable")
    yield Emit(engine.attempt_failed_event(item, rec, attempt, failure, latency, decision, scrubbed=True))
    error = failure.to_error_info(retryable=False)
    yield Run(lambda: engine.give_up(call.recorded, rec, "not_retryable", error), drain=True)


def durable_flow(call: LlmCall) -> Generator[Effect, Any, Final]:
    """Through the WORK stream and a worker (non-streaming calls): the worker applies the policy.

    The work item carries the caller's request body (the worker must send it); only the
    ``requested`` event is redacted."""
    hub = call.hub
    requested = call.requested_event()
    deadline = time.time() + (call.policy.deadline_s or 300.0)  # never wait forever for a worker
    item = call.item.model_copy(update={"body": call.request.body or {}, "deadline_at": deadline})

    async def submit() -> CallResult | CallFailed:
        durable = await hub.durable()
        try:
            return await durable.run(item, requested=requested)
        except CallFailed as exc:
            return exc

    result = yield Run(submit, drain=True, timeout_s=deadline - time.time() + 60.0)
    if isinstance(result, CallResult):
        body = json.dumps(result.response, separators=(",", ":")).encode()
        return Final(200, call.reply_headers([("content-type", "application/json")]), body, attempt=1)
    if isinstance(result, CallFailed):
        return call.durable_failed(result)
    return call.error_reply(503, "tether could not submit the durable call (is NATS reachable?)",
                            code="tether_unavailable")


def durable_stream_flow(call: LlmCall, idle_timeout_s: float) -> Generator[Effect, Any, Final]:
    """A streamed call through the WORK stream: the worker streams from the provider and
    relays the answer to a subject this caller listens on (``tether.middleware._relay``).

    The caller subscribes before it submits, then waits (up to the call's deadline) for the
    first chunk, or for the call's end if it ended without one: attempts before the first
    chunk are the worker's, under the policy. ``idle_timeout_s``: once the stream runs, how
    long it may stay silent (no chunk, no heartbeat) before the caller gives up on it."""
    hub = call.hub
    requested = call.requested_event()
    deadline = time.time() + (call.policy.deadline_s or 300.0)
    spec = RelaySpec(subject=relay_subject(call.item.call_id), heartbeat_s=min(5.0, max(0.05, idle_timeout_s / 5)),
                     drop_usage_chunk=call.ask_usage)
    body = json.loads(call.raw) if call.ask_usage else call.request.body or {}  # with include_usage if tether asked
    item = call.item.model_copy(update={"body": body, "deadline_at": deadline, "relay": spec,
                                        "reply_to": spec.subject})

    async def start() -> RelayListener | dict[str, Any]:
        durable = await hub.durable()
        listener = await RelayListener.open(hub.bus.nc, spec, idle_timeout_s=idle_timeout_s)
        try:
            await durable.submit(item, requested=requested)
            ended = await listener.started(max(1.0, deadline - time.time() + 30.0))
        except TimeoutError:
            await listener.cancel("deadline", "the caller stopped waiting for the stream at the call's deadline")
            return {"state": "timeout"}
        except RelayBroken as exc:
            await listener.cancel(exc.code, exc.message)
            return {"state": "failed", "error": {"type": "RelayError", "message": exc.message, "code": exc.code}}
        except BaseException:
            with contextlib.suppress(Exception):
                await listener.cancel("client_cancelled", "the caller was cancelled")
            raise
        if ended is not None:
            await listener.close()
            return ended
        return listener

    result = yield Run(start, drain=True, timeout_s=deadline - time.time() + 60.0)
    if isinstance(result, RelayListener):
        headers = call.reply_headers([("content-type", result.content_type)])
        return Final(result.status, headers, relay=result, attempt=int(result.attempt or 1))
    if isinstance(result, dict):
        state = result.get("state")
        if state == "timeout":
            return call.error_reply(504, "tether gave up (deadline): no worker started the stream before the "
                                         "call's deadline", code="deadline_exceeded")
        if state != "completed":
            return call.durable_failed(CallFailed(call.item.call_id, result.get("error"),
                                                  str(result.get("reason") or state)))
        return call.error_reply(502, "tether: the call completed, but its stream was not relayed to this caller",
                                code="tether_relay_lost")
    return call.error_reply(503, "tether could not submit the durable call (is NATS reachable?)",
                            code="tether_unavailable")


def cancelled_event(call: LlmCall, attempt: int) -> Event:
    """The final event of a call whose caller was cancelled while tether was still trying; its
    budget reservation is given back (on the hub's loop: the caller's task is being cancelled)."""
    item, rec = call.item, call.rec
    engine = call.engine
    if engine.policies.budgets:
        call.hub.spawn(lambda: engine.release(item))
    target = rec.target or Target(item.provider or "?", item.model or "?")
    error = ErrorInfo(type="Cancelled", message="the caller was cancelled before the call finished",
                      code="client_cancelled", retryable=False)
    return call.event(LlmCallFailed(call_id=item.call_id, provider=target.provider, model=target.model,
                                    attempts=attempt, error=error), id=terminal_id(item.call_id, "failed"))


# -- one tool call ----------------------------------------------------------------------------

SOURCE = "urn:tether:adapter"


@dataclass
class ToolCall:
    hub: Hub
    policies: PolicySet
    policy: Policy
    item: WorkItem
    idempotent: bool
    retry_on: tuple[type[BaseException], ...] = ()
    rec: CallRecord = field(init=False)
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self.rec = CallRecord.new(self.item, time.time())

    def event(self, payload: Payload, *, id: str | None = None) -> Event:
        item = self.item
        return Event.of(payload, id=id, runid=item.runid, agentid=item.agentid, traceparent=item.traceparent,
                        source=SOURCE)

    async def give_up(self, reason: DeadLetterReason, error: ErrorInfo) -> None:
        engine = await self.hub.engine(self.policies)
        await engine.give_up(self.item, self.rec, reason, error)


@dataclass
class Invoked:
    """One run of the tool: its result (and what is recorded of it), or the exception it raised."""

    duration_ms: float
    result: Any = None
    recorded: Any = None
    error: BaseException | None = None
    failure: Failure | None = None


def tool_flow(call: ToolCall) -> Generator[Effect, Any, Invoked]:
    """Requested, attempts (retried only when the tool is idempotent), completed or failed."""
    item, rec, policy = call.item, call.rec, call.policy
    yield Emit(call.event(ToolCallRequested(call_id=item.call_id, tool=item.tool or "?", arguments=item.arguments,
                                            idempotent=call.idempotent, idempotency_key=item.idempotency_key,
                                            mode="inline"), id=terminal_id(item.call_id, "requested")))
    guard = call.policies.runaway
    if item.runid and (guard.max_calls_per_run or guard.max_identical_calls):
        fingerprint = request_fingerprint({"tool": item.tool, "arguments": item.arguments})
        with call.hub.runaway_lock:
            refusal = call.hub.runaway.check(item.runid, fingerprint, guard)
            if refusal is None:
                call.hub.runaway.record(item.runid, fingerprint)
        if refusal is not None:
            error = ErrorInfo(type="RunawayGuard", message=refusal, retryable=False)
            yield Run(lambda: call.give_up("runaway", error), drain=True)
            return Invoked(0.0, error=RunawayError(refusal))
    while True:
        attempt = len(rec.attempts) + 1
        started_at = time.time()
        done = yield Invoke(attempt)
        assert isinstance(done, Invoked)
        if done.error is None:
            rec.record_attempt(AttemptRecord(attempt, None, None, started_at, time.time() - started_at))
            yield Emit(call.event(ToolCallCompleted(call_id=item.call_id, tool=item.tool or "?", attempt=attempt,
                                                    result=done.recorded, duration_ms=done.duration_ms),
                                  id=terminal_id(item.call_id, "completed")))
            return done
        failure = done.failure
        assert failure is not None
        rec.record_attempt(AttemptRecord(attempt, None, failure, started_at, time.time() - started_at))
        decision: Decision
        if not call.idempotent or failure.kind == "cancelled":
            decision = GiveUp("not_retryable")  # a side effect is never repeated by tether
        else:
            judged = failure
            if call.retry_on and isinstance(done.error, call.retry_on):
                judged = dataclasses.replace(failure, kind="connection")  # named transient by the tool
            decision = decide(policy, rec.history(), judged, now=time.time(), started_at=rec.started_at,
                              current=None, rng=call.rng)
        delay = decision.delay_s if isinstance(decision, Retry) else None
        yield Emit(call.event(ToolCallAttemptFailed(
            call_id=item.call_id, tool=item.tool or "?", attempt=attempt,
            error=failure.to_error_info(retryable=not isinstance(decision, GiveUp)),
            duration_ms=done.duration_ms, decision=decision.decision, retry_in_s=delay)))
        if isinstance(decision, GiveUp):
            error = failure.to_error_info(retryable=False)
            reason = decision.reason
            yield Run(partial(call.give_up, reason, error), drain=True)
            return done
        if isinstance(decision, Retry) and decision.delay_s > 0:
            yield Sleep(decision.delay_s)


class RunawayError(RuntimeError):
    """The runaway guard refused a tool call: the run repeats itself or made too many calls."""

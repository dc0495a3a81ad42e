"""One intercepted LLM call, as the adapters see it: the loop of ``tether.middleware`` plus HTTP.

:class:`LlmCall` is what the interceptor knows about a call (the caller's bytes, its
redaction, the reply headers); :func:`llm_flow` runs :func:`tether.middleware.call_flow`
for it and turns how the loop ended into the caller's answer (:class:`Final`). The
durable flows submit the call to the workers instead; :func:`stream_end_flow` records a
stream's end once the caller read it. No I/O here: the shells in ``_core`` drive them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from tether.middleware import (
    Call,
    CallEngine,
    CallFailed,
    CallRecord,
    CallResult,
    Completed,
    Cursor,
    Effect,
    Emit,
    Failure,
    GaveUp,
    GiveUp,
    Outcome,
    Policy,
    RelayBroken,
    RelayListener,
    RelaySpec,
    Replayed,
    Run,
    Send,
    Sent,
    Sleep,
    Spawn,
    Streaming,
    Target,
    WorkItem,
    cache_answer,
    call_flow,
    relay_subject,
    replay_of,
    terminal_id,
)
from tether.schemas import (
    ErrorInfo,
    Event,
    LlmCallCompleted,
    LlmCallFailed,
    LlmCallRequested,
    Payload,
    ToolCallCompleted,
    ToolCallRequested,
    ids_fit,
    plain_json,
)

from ._hub import Hub
from ._redact import Redactor
from ._wire import Kind, LlmRequest, StreamAccumulator, error_body, error_status

__all__ = [  # the effects are tether.middleware's, named here for the shells
    "Effect",
    "Emit",
    "Final",
    "LlmCall",
    "Run",
    "Send",
    "Sent",
    "Sleep",
    "Spawn",
    "awaits_ack",
    "cancelled_event",
    "durable_flow",
    "durable_stream_flow",
    "llm_flow",
    "stream_end_flow",
]

Headers = list[tuple[str, str]]
_DROP_ON_RELAY = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})
_OPERATIONS = frozenset(get_args(LlmCallRequested.model_fields["operation"].annotation))
_MODES = frozenset(get_args(LlmCallRequested.model_fields["mode"].annotation))


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
    chunks: list[bytes] | None = None
    """A replayed stream: its recorded events, as the chunks the caller gets."""


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
    request_hash: str | None = None
    journal: Cursor | None = None
    """The run's journal, when it resumed: a call it recorded is answered from it."""
    fingerprint_digest: str | None = None
    """The runaway guard's fingerprint of the request, made with its hash (``request_digests``)."""
    rec: CallRecord = field(init=False)
    flow: Call = field(init=False)
    """The call as :func:`~tether.middleware.call_flow` sees it."""
    _bodies: dict[str, bytes] = field(default_factory=dict)
    _recorded: WorkItem | None = None
    _recorded_body: Any = None
    _body_redacted: bool = False

    def __post_init__(self) -> None:
        self.rec = CallRecord.new(self.item, time.time())
        request = self.request
        self.flow = Call(self.engine, self.item, self.rec, self.policy, runaway=self.hub.runaway,
                         fingerprint=request.body or {"raw": self.raw.decode("utf-8", "replace")},
                         kind=request.kind, redactor=self.redactor, capture=self.capture,
                         recorded=lambda: self.recorded, account_always=False, journal=self.journal,
                         request_hash=self.request_hash, opening=self.requested_event,
                         fingerprint_digest=self.fingerprint_digest)

    @property
    def recorded(self) -> WorkItem:
        """The item as it may be recorded (a dead letter): the body redacted, or none when not
        capturing. Made when first needed: a call that does not give up never needs it."""
        if self._recorded is None:
            self._recorded = self.item.model_copy(update={"body": self.recorded_body})
        return self._recorded

    @property
    def recorded_body(self) -> Any:
        """The body as it is recorded (``requested``, a dead letter): redacted (what the redactor's hook
        made of it), or none when not capturing. Made once, when first needed: a replayed call never needs it."""
        if not self._body_redacted:
            self._recorded_body = (self.redactor(self.item.body) if self.capture and self.request.body is not None
                                   else {})
            self._body_redacted = True
        return self._recorded_body

    @property
    def kind(self) -> Kind:
        return self.request.kind

    def event(self, payload: Payload, *, id: str | None = None) -> Event:
        item = self.item
        return Event.of(payload, id=id, runid=item.runid, agentid=item.agentid, traceparent=item.traceparent,
                        source=self.engine.source, extensions={"tenant": item.tenant} if item.tenant else None)

    def requested_event(self, replayed: bool = False) -> Event:
        """``llm.call.requested``; a replayed call's leaves out the request (its original's has it)."""
        request = self.request
        item = self.item
        recorded: Any = None
        if self.capture and not replayed:
            recorded = self.recorded_body if request.body is not None else self.redactor.text(
                self.raw.decode("utf-8", errors="replace"))
        fields: dict[str, Any] = dict(
            call_id=item.call_id, provider=item.provider or "?", model=item.model or "?",
            operation=request.operation, mode=self.mode, stream=request.stream, route=item.route,
            parameters=self.redactor(request.parameters), request=recorded, request_hash=self.request_hash)
        # Every field is tether's own or JSON it parsed: checked here, not validated again (else as before)
        plain = (ids_fit(fields["call_id"], fields["provider"], fields["model"]) and type(fields["stream"]) is bool
                 and fields["operation"] in _OPERATIONS and fields["mode"] in _MODES
                 and type(fields["route"]) is str and type(fields["request_hash"]) is str
                 and type(fields["parameters"]) is dict and plain_json(fields["parameters"]) and plain_json(recorded))
        payload = (LlmCallRequested.trusted if plain else LlmCallRequested)(**fields)
        return self.event(payload, id=terminal_id(item.call_id, "requested"))

    def replayed(self, replayed: Replayed) -> Final:
        """The answer of a call replayed from the record: its body, or its stream's events."""
        entry = replayed.entry
        headers = self.reply_headers([("content-type", "text/event-stream" if entry.stream else "application/json")])
        headers.append(("x-tether-replayed", entry.call_id))
        headers.append(("x-tether-replayed-via", getattr(replayed.event.data, "via", "journal")))
        if entry.stream:
            return Final(200, headers, chunks=[sse_event(c) for c in entry.chunks or ()])
        return Final(200, headers, json.dumps(entry.response, separators=(",", ":")).encode())

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

    def wire(self, send: Send) -> Send:
        """``send`` with the bytes of this call: its headers, and the body for the target."""
        assert send.target is not None
        return Send(send.target, send.attempt, send.timeout_s, self.headers, self.body_for(send.target))

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


def awaits_ack(effect: Emit) -> bool:
    """Whether the caller waits for the log's ack of ``effect``: in a run (the run's journal), an LLM
    call's completion, and a tool call's start (``requested`` with its position in the run's tool
    journal: before the tool runs) and completion (before the caller gets the result). A process
    killed right after the caller got the answer then finds the call recorded when the run resumes,
    and does not ask (and pay) the provider again; one killed inside a tool finds its start. Other
    events, and a replay's (its original is in the log), are acked in the background."""
    event = effect.event
    if event.runid is None:
        return False
    data = event.data
    if isinstance(data, LlmCallCompleted | ToolCallCompleted):
        return effect.final
    return isinstance(data, ToolCallRequested) and data.position is not None


def give_up_code(reason: str) -> str:
    """The error ``code`` of a gateway answer after tether gave up for ``reason``."""
    return {"budget": "budget_exceeded", "runaway": "runaway_guard", "deadline": "deadline_exceeded"}.get(
        reason, "tether_gave_up")


def llm_flow(call: LlmCall) -> Generator[Effect, Any, Final]:
    """The one call loop (whose first event is ``requested``), then the caller's answer: the
    recorded one (replayed), the upstream's (complete, or its stream once the first chunk
    came), or the one tether writes when it gave up."""
    try:
        ending = yield from call_flow(call.flow)
    finally:  # the loop's callbacks into the call, no longer needed: no cycle left for the collector to find
        call.flow.recorded = call.flow.opening = None
    if isinstance(ending, Replayed):
        return call.replayed(ending)
    if isinstance(ending, GaveUp):
        return call.gave_up(ending.reason, ending.failure, ending.error, ending.sent)
    assert isinstance(ending, Completed | Streaming)
    sent = ending.sent
    if isinstance(ending, Streaming):
        return Final(sent.status, call.reply_headers(sent.headers), sent=sent, attempt=ending.attempt)
    return Final(sent.status, call.reply_headers(sent.headers), sent.body, attempt=ending.attempt)


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
        redactor = call.redactor
        response = chunks = None
        if call.capture:
            answer = acc.response()
            response = redactor(answer)
            chunks = acc.recorded_chunks(redactor, answer, response)  # None: a secret split across events
        out = Outcome(True, latency, response, acc.usage, acc.finish_reason, ttft_ms=ttft, chunks=chunks,
                      chunks_plain=acc.plain and type(redactor) is Redactor and redactor.hook is None)
        event = engine.completed_event(item, rec, attempt, out, capture=call.capture, scrubbed=True)
        yield Emit(event, final=True)  # in a run, acked before the caller's stream ends
        yield from _account(call, out)
        keep = cache_answer(call.flow, event) if chunks is not None else None  # a stream is cached with its events
        if keep is not None:
            yield keep
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


def _replay(call: LlmCall) -> Generator[Effect, Any, Final | None]:
    """A durable call of a resumed run answered from its journal (before it is submitted)."""
    if call.journal is None:
        return None
    replayed = replay_of(call.flow, call.journal)
    if replayed is None:
        return None
    yield Emit(call.requested_event(replayed=True))
    yield Emit(replayed.event, final=True)
    return call.replayed(replayed)


def sse_event(chunk: dict[str, Any]) -> bytes:
    """A recorded stream event (``{"event", "data"}``) as the bytes of one server-sent event."""
    name, data = chunk.get("event"), chunk.get("data")
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return (f"event: {name}\n" if name else "").encode() + f"data: {text}\n\n".encode()


def durable_flow(call: LlmCall) -> Generator[Effect, Any, Final]:
    """Through the WORK stream and a worker (non-streaming calls): the worker applies the policy.

    The work item carries the caller's request body (the worker must send it); only the
    ``requested`` event is redacted."""
    hub = call.hub
    replayed = yield from _replay(call)
    if replayed is not None:
        return replayed
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
    replayed = yield from _replay(call)
    if replayed is not None:
        return replayed
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

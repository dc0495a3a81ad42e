"""The one call loop: admit, attempt, retry, fall back or give up, as values without I/O.

A call is a generator that yields *effects* and gets their results back (the shape of
``httpx.Auth.auth_flow``); a driver does the I/O. Inline calls, the adapters' sync and
async shells (SDK clients, the gateway) and the executor drive the same :func:`call_flow`;
the executor resumes it from the call's record at each delivery (see ``_executor``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import time
import zlib
from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal, Protocol, TypeVar

from tether.schemas import (
    CallReplayed,
    ErrorInfo,
    Event,
    LlmCallCompleted,
    Payload,
    ToolCallAttemptFailed,
    ToolCallCompleted,
    ToolCallRequested,
    ids_fit,
    plain_json,
)

from ._budget import BudgetRefusal, RunawayTracker, request_fingerprint
from ._cache import cacheable
from ._decide import AttemptRecord, Decision, Fallback, GiveUp, Retry, decide, tool_decision
from ._engine import CallEngine, DeadLetterReason, Outcome, terminal_id
from ._failures import Failure, classify_http
from ._journal import Cursor, Entry
from ._policy import Policy, PolicySet
from ._providers import usage_of
from ._relay import NOT_RETRIED, record_cancelled
from ._shared import Snapshot
from ._upstream import Send, Sent
from ._work import CallRecord, WorkItem

__all__ = [
    "Call",
    "Completed",
    "Effect",
    "Emit",
    "Ending",
    "GaveUp",
    "Invoke",
    "Invoked",
    "Replayed",
    "Run",
    "RunawayError",
    "Sleep",
    "Spawn",
    "Stopped",
    "Streaming",
    "ToolCall",
    "cache_answer",
    "call_flow",
    "drive",
    "drive_sync",
    "read_answer",
    "replay_of",
    "tool_flow",
]

T = TypeVar("T")
Headers = list[tuple[str, str]]


# -- effects: what the loop asks its driver to do ---------------------------------------------


@dataclass(frozen=True, slots=True)
class Emit:
    """Publish an event (queued). ``final``: the call's terminal event (the executor awaits its ack)."""

    event: Event
    final: bool = False


@dataclass(frozen=True, slots=True)
class Run:
    """Await an engine step (budgets, the breaker gate, dead letters) and hand back its result."""

    make: Callable[[], Awaitable[Any]]
    drain: bool = False
    """Publish every queued event first (what ``make`` publishes must come after them)."""
    timeout_s: float | None = 30.0
    """How long a sync caller waits for it (an engine step is quick; a durable call is not)."""


@dataclass(frozen=True, slots=True)
class Spawn:
    """An engine step nobody waits for (breaker bookkeeping, spend). ``after``: once the
    caller has its answer (the executor runs it after the ack)."""

    make: Callable[[], Awaitable[Any]]
    after: bool = False


@dataclass(frozen=True, slots=True)
class Sleep:
    """Wait before the next attempt: a retry's backoff, a fallback's, or a rate limit's pacing.

    An in-process driver sleeps (a zero delay is no wait); the executor sends the call back
    through JetStream with this delay instead, so any worker takes the next attempt."""

    seconds: float
    why: Literal["retry", "fallback", "paced"] = "retry"


@dataclass(frozen=True, slots=True)
class Invoke:
    """Run an in-process tool once (``tether.tool``)."""

    attempt: int


Effect = Emit | Run | Spawn | Sleep | Send | Invoke


# -- how the loop ends ------------------------------------------------------------------------


@dataclass(frozen=True)
class Completed:
    """An answer: ``outcome`` as read (not redacted), ``sent`` as it came."""

    attempt: int
    outcome: Outcome
    sent: Sent
    event: Event


@dataclass(frozen=True)
class Streaming:
    """A stream whose first chunk came: the driver hands it to the caller and records its end."""

    attempt: int
    sent: Sent


@dataclass(frozen=True)
class GaveUp:
    """Dead-lettered for ``reason``; ``sent`` is the last answer (an upstream's error response)."""

    reason: DeadLetterReason
    error: ErrorInfo
    failure: Failure | None = None
    sent: Sent | None = None


@dataclass(frozen=True)
class Stopped:
    """A relayed stream its caller stopped (``failed``, not dead-lettered)."""

    attempt: int


@dataclass(frozen=True)
class Replayed:
    """Answered from the record (the run's journal, or the response cache): ``entry`` is the
    call that paid, ``event`` the ``call.replayed`` that says so. No attempt was made."""

    entry: Entry
    event: Event


Ending = Completed | Streaming | GaveUp | Stopped | Replayed


# -- one call ---------------------------------------------------------------------------------


class Scrubber(Protocol):
    def __call__(self, value: Any) -> Any: ...

    def text(self, value: str) -> str: ...


@dataclass
class Call:
    """One call as the loop sees it. ``rec`` carries its progress (a worker stores it in KV
    between deliveries; everyone else keeps it in memory)."""

    engine: CallEngine
    item: WorkItem
    rec: CallRecord
    policy: Policy
    runaway: RunawayTracker | None = None
    """This process's runaway guard (inline calls, adapters); workers count in the run's KV record only."""
    fingerprint: Mapping[str, Any] | None = None
    """What the runaway guard compares (default: the request body, or the tool and its arguments)."""
    kind: str | None = None
    """The wire format of raw HTTP answers (``"openai"``, ``"anthropic"``), to read them."""
    redactor: Scrubber | None = None
    """The caller's redaction (adapters); else the engine redacts what is recorded."""
    capture: bool = True
    recorded: WorkItem | Callable[[], WorkItem] | None = None
    """The item a dead letter keeps (default ``item``), or what makes it when needed."""
    account_always: bool = True
    """Record the spend of every call (workers, inline calls), not only under budgets (adapters)."""
    run_snapshot: Snapshot | None = None
    """The run's record, read ahead by the executor with the call's."""
    journal: Cursor | None = None
    """A resumed run's journal: a call that matches a recorded one is answered from it."""
    request_hash: str | None = None
    """What the journal matches (``tether.journal.request_hash`` of the request)."""
    fingerprint_digest: str | None = None
    """The runaway guard's fingerprint of ``fingerprint``, when the caller made it already."""
    opening: Callable[[bool], Event] | None = None
    """The call's first event (an adapter's ``requested``), emitted by the loop once it knows
    whether the call is replayed (``True``: the request need not be recorded again)."""


def call_flow(call: Call) -> Generator[Effect, Any, Ending]:
    """Replay from the journal, or admission once, then attempts under the policy until an
    answer, a stream's first chunk, or giving up. Starts where ``call.rec`` says (a worker
    resumes a call with it)."""
    engine, item, rec, policy = call.engine, call.item, call.rec, call.policy
    if not rec.admitted and rec.in_flight is None:
        replayed = replay_of(call, call.journal) if call.journal is not None else None
        if replayed is None and caching(call):
            assert call.request_hash is not None
            hit = yield Run(partial(engine.cache.get, call.request_hash))
            if isinstance(hit, Entry):
                replayed = Replayed(hit, replayed_event(call, hit, "cache"))
        if call.opening is not None:
            yield Emit(call.opening(replayed is not None))
        if replayed is not None:
            yield Emit(replayed.event, final=True)
            return replayed
    if rec.in_flight is not None:  # a worker died during this attempt
        ended = yield from _lost(call)
        if ended is not None:
            return ended
    if not rec.admitted:
        ended = yield from _admission(call)
        if ended is not None:
            return ended
        rec.admitted = True
    deadlines = [t for t in (item.deadline_at, policy.deadline_s and rec.started_at + policy.deadline_s) if t]
    while True:
        if deadlines and time.time() >= min(deadlines):
            error = ErrorInfo(type="DeadlineExceeded", message="the call's deadline passed before it could complete",
                              retryable=False)
            return (yield from _give_up(call, "deadline", error))
        target = rec.target
        route = target.route if target else item.route
        failure: Failure | None = None
        if engine.breakers.state(route).state != "closed" or (target is not None and (
                policy.rate_limit.limited or engine.policies.rate_limit_for(target.provider).limited)):
            gated = yield Run(partial(engine.gate, item, rec, policy))
            failure, wait = gated if gated is not None else (None, 0.0)
            if wait > 0:
                yield Sleep(wait, "paced")
                continue
        attempt = len(rec.attempts) + 1
        started_at = time.time()
        latency = 0.0
        sent: Sent | None = None
        if failure is None:
            sent = yield Send(target, attempt, policy.timeout_s)
            assert isinstance(sent, Sent)
            out = sent.outcome if sent.outcome is not None else read_answer(sent, call.kind, item.operation)
            started = out.ok or sent.relayed  # a relayed stream's provider answered: the stream is ours
            counts = out.counts_for_breaker or started
            if not engine.breakers.record_closed(route, policy.breaker, ok=started, counts=counts,
                                                 call_id=item.call_id):  # else it has KV work: on the bus's loop
                yield Spawn(partial(engine.breakers.record, route, policy.breaker, ok=started, counts=counts,
                                    call_id=item.call_id))
            if out.ok:
                return (yield from _completed(call, attempt, started_at, out, sent))
            if sent.cancelled is not None:
                yield Run(partial(record_cancelled, engine, item, rec, attempt, started_at, sent.cancelled, out,
                                  sent.usage_seen), drain=True)
                return Stopped(attempt)
            failure, latency = out.failure, out.latency_ms
        assert failure is not None
        if call.redactor is not None:
            failure = dataclasses.replace(failure, message=call.redactor.text(failure.message))
        engine.record_outcome(rec, attempt, failure, started_at)
        relayed = sent is not None and sent.relayed
        decision = GiveUp("not_retryable") if relayed else engine.decide(item, rec, policy, failure)
        ended = yield from _failed(call, attempt, failure, latency, decision, sent)
        if ended is not None:
            return ended


def replay_of(call: Call, journal: Cursor) -> Replayed | None:
    """The call's recorded answer, if the journal has one for it (its place is taken either way)."""
    kind: Literal["llm", "tool"] = "tool" if call.item.kind == "tool" else "llm"
    look = journal.match(kind, call.request_hash)
    entry = look.entry
    if entry is None or not look.replay:
        return None
    return Replayed(entry, replayed_event(call, entry, "journal", look.position))


def replayed_event(call: Call, entry: Entry, via: Literal["journal", "cache"], position: int | None = None) -> Event:
    """The ``call.replayed`` of a call answered from ``entry``. Not validated again: every field is
    the call's or the recorded call's, read from validated events (a stream's recorded chunks took
    milliseconds to validate again, on every replayed stream)."""
    item = call.item
    payload = CallReplayed.model_construct(
        call_id=item.call_id, call_kind="tool" if item.kind == "tool" else "llm", via=via,
        original_call_id=entry.call_id, original_event_id=entry.event_id,
        original_run_id=entry.run_id if entry.run_id != item.runid else None, position=position,
        request_hash=entry.request_hash, provider=entry.provider or item.provider, model=entry.model or item.model,
        tool=entry.tool, stream=entry.stream, usage=entry.usage, response=entry.response,
        chunks=entry.chunks)  # type: ignore[arg-type]  # its dicts are JSON values
    return call.engine.event(item, payload, id=terminal_id(item.call_id, "replayed"), scrubbed=True)


def caching(call: Call) -> bool:
    """Whether the response cache answers (and keeps) this call: its route enables the cache,
    the call does not sample (unless the route allows it), and tether recorded its request
    hash (``instrument``, the gateway; calls through the workers are not cached)."""
    item = call.item
    return (call.request_hash is not None and item.kind == "llm" and item.relay is None and call.capture
            and cacheable(item.body, call.policy.cache))


def cache_answer(call: Call, event: Event) -> Spawn | None:
    """Keep a completed call's recorded answer in the response cache, if its route caches it."""
    data = event.data
    if not isinstance(data, LlmCallCompleted) or data.response is None or not caching(call):
        return None
    assert call.request_hash is not None
    entry = Entry("llm", data.call_id, call.request_hash, state="completed", stream=data.chunks is not None,
                  provider=data.provider, model=data.model, response=data.response,
                  chunks=data.chunks if isinstance(data.chunks, list) else None,  # type: ignore[arg-type]
                  usage=data.usage, event_id=event.id, run_id=event.runid)
    return Spawn(call.engine.cache.keep(call.request_hash, entry, call.policy.cache.ttl_s), after=True)


def _lost(call: Call) -> Generator[Effect, Any, Ending | None]:
    """The attempt a worker died in counts as failed (never retried once its stream reached the caller)."""
    engine, item, rec = call.engine, call.item, call.rec
    lost = rec.in_flight
    assert lost is not None
    relayed = bool(lost.get("relayed"))
    attempt = int(lost["attempt"])
    failure = Failure(kind="connection", error_type="WorkerLost",
                      message=f"worker {lost.get('worker')} stopped before the attempt finished"
                              + (", in the middle of a relayed stream" + NOT_RETRIED if relayed else ""))
    engine.record_outcome(rec, attempt, failure, float(lost["started_at"]))
    decision = GiveUp("not_retryable") if relayed else engine.decide(item, rec, call.policy, failure)
    return (yield from _failed(call, attempt, failure, 0.0, decision, None))



def _failed(call: Call, attempt: int, failure: Failure, latency_ms: float, decision: Decision,
            sent: Sent | None) -> Generator[Effect, Any, Ending | None]:
    """Record a failed attempt and act on the decision: give up, or wait for the next attempt."""
    rec = call.rec
    yield Emit(call.engine.attempt_failed_event(call.item, rec, attempt, failure, latency_ms, decision,
                                                scrubbed=call.redactor is not None))
    if isinstance(decision, GiveUp):
        return (yield from _give_up(call, decision.reason, failure.to_error_info(retryable=False), failure, sent))
    if isinstance(decision, Fallback):
        rec.provider, rec.model = decision.target.provider, decision.target.model
        rec.fallbacks += 1
    delay = decision.delay_s if isinstance(decision, Retry | Fallback) else 0.0
    yield Sleep(delay, "fallback" if isinstance(decision, Fallback) else "retry")
    return None


def _give_up(call: Call, reason: DeadLetterReason, error: ErrorInfo, failure: Failure | None = None,
             sent: Sent | None = None) -> Generator[Effect, Any, GaveUp]:
    recorded = call.recorded() if callable(call.recorded) else call.recorded
    yield Run(partial(call.engine.give_up, recorded or call.item, call.rec, reason, error), drain=True)
    return GaveUp(reason, error, failure, sent)


def _admission(call: Call) -> Generator[Effect, Any, GaveUp | None]:
    """The runaway guard and budgets, once per call, before any attempt."""
    engine, item = call.engine, call.item
    refusal: BudgetRefusal | str | None = None
    guard = engine.policies.runaway
    if call.runaway is not None and item.runid and (guard.max_calls_per_run or guard.max_identical_calls):
        body = call.fingerprint if call.fingerprint is not None else (
            item.body if item.kind == "llm" else {"tool": item.tool, "arguments": item.arguments})
        digest = call.fingerprint_digest if call.fingerprint_digest is not None else request_fingerprint(body)
        refusal = call.runaway.admit(item.runid, digest, guard)
    budgeted = engine.policies.budgets_for(run_id=item.runid, agent_id=item.agentid, tenant=item.tenant)
    if refusal is None and (budgeted or (call.runaway is None and engine.runaway_guarded(item))):
        refusal = yield Run(partial(engine.admit, item, call.rec, run_snapshot=call.run_snapshot))
    if refusal is None:
        return None
    if isinstance(refusal, BudgetRefusal):
        yield Emit(engine.event(item, refusal.to_event(call_id=item.call_id)))
        return (yield from _give_up(call, "budget", ErrorInfo(type="BudgetExceeded", message=refusal.message,
                                                              retryable=False)))
    return (yield from _give_up(call, "runaway", ErrorInfo(type="RunawayGuard", message=refusal, retryable=False)))


def _completed(call: Call, attempt: int, started_at: float, out: Outcome,
               sent: Sent) -> Generator[Effect, Any, Completed | Streaming]:
    engine, item, rec = call.engine, call.item, call.rec
    engine.record_outcome(rec, attempt, None, started_at)
    if sent.stream is not None:
        return Streaming(attempt, sent)
    rec.state = "completed"
    recorded = out
    if call.redactor is not None:
        recorded = dataclasses.replace(out, response=call.redactor(out.response) if call.capture else None)
    event = engine.completed_event(item, rec, attempt, recorded, capture=call.capture,
                                   scrubbed=call.redactor is not None)
    yield Emit(event, final=True)
    if call.account_always or engine.policies.budgets:
        yield Spawn(partial(engine.account, item, out.usage, rec.target), after=True)
    keep = cache_answer(call, event)
    if keep is not None:
        yield keep
    return Completed(attempt, out, sent, event)


def read_answer(sent: Sent, kind: str | None, operation: str) -> Outcome:
    """What a raw HTTP answer is: an error response's failure, a stream's start, or the JSON
    of a complete answer with its usage (a body in an encoding tether does not read passes
    on unrecorded)."""
    if sent.failure is not None:
        return Outcome(False, sent.latency_ms, failure=sent.failure)
    if sent.status >= 300:
        return Outcome(False, sent.latency_ms, failure=classify_http(sent.status, dict(sent.headers), sent.body,
                                                                     now=time.time()))
    if sent.stream is not None:
        return Outcome(True, sent.latency_ms)
    body = sent.body or b""
    encoding = next((v.lower() for k, v in sent.headers if k.lower() == "content-encoding"), "identity")
    if encoding in ("gzip", "deflate"):
        try:
            body = zlib.decompress(body, 47)  # 32 + 15: gzip or zlib header, detected
        except zlib.error:
            return Outcome(True, sent.latency_ms)
    elif encoding not in ("identity", ""):
        return Outcome(True, sent.latency_ms)
    try:
        data = json.loads(body)
    except ValueError as exc:
        return Outcome(False, sent.latency_ms, failure=Failure(
            kind="malformed", status_code=sent.status, error_type="MalformedResponseError",
            message=f"response is not JSON: {exc}"))
    usage, finish = usage_of(kind or "openai", operation, data)
    return Outcome(True, sent.latency_ms, data, usage, finish)


# -- one in-process tool call (``tether.tool``) -----------------------------------------------


_JITTER = random.Random()


class RunawayError(RuntimeError):
    """The runaway guard refused a tool call: the run repeats itself or made too many calls."""


@dataclass
class ToolCall:
    """A decorated function's call: retried only when it is idempotent, recorded as events."""

    policies: PolicySet
    policy: Policy
    item: WorkItem
    idempotent: bool
    engine: Callable[[], Awaitable[CallEngine]]
    """The engine, made only when a dead letter needs it."""
    runaway: RunawayTracker
    source: str
    retry_on: tuple[type[BaseException], ...] = ()
    position: int | None = None
    """The call's place among its run's tool calls (what a resumed run matches it by)."""
    fingerprint: str | None = None
    """The runaway guard's fingerprint of the tool and its arguments, when the caller made it already
    (it is the run's journal's tool hash without its ``sha256:``: one canonical writing for both)."""
    rec: CallRecord = field(init=False)
    rng: random.Random = field(default=_JITTER)
    """Where a retry's backoff jitter is drawn (one generator for the process: seeding one per call
    read the system's entropy on every tool call)."""

    def __post_init__(self) -> None:
        self.rec = CallRecord.new(self.item, time.time())

    def event(self, payload: Payload, *, id: str | None = None) -> Event:
        item = self.item
        return Event.of(payload, id=id, runid=item.runid, agentid=item.agentid, traceparent=item.traceparent,
                        source=self.source)

    def requested_event(self) -> Event:
        item = self.item
        fields: dict[str, Any] = dict(
            call_id=item.call_id, tool=item.tool or "?", arguments=item.arguments, idempotent=self.idempotent,
            idempotency_key=item.idempotency_key, mode="inline", position=self.position)
        # tether's own values and the arguments as JSON it made: checked here, not validated again (else as before)
        key, position = fields["idempotency_key"], fields["position"]
        plain = (ids_fit(fields["call_id"], fields["tool"]) and type(fields["idempotent"]) is bool
                 and (key is None or type(key) is str)
                 and (position is None or (type(position) is int and position >= 0))
                 and plain_json(fields["arguments"]))
        payload = (ToolCallRequested.trusted if plain else ToolCallRequested)(**fields)
        return self.event(payload, id=terminal_id(item.call_id, "requested"))

    def completed_event(self, attempt: int, done: Invoked) -> Event:
        item = self.item
        fields: dict[str, Any] = dict(call_id=item.call_id, tool=item.tool or "?", attempt=attempt,
                                      result=done.recorded, duration_ms=done.duration_ms)
        duration = fields["duration_ms"]
        plain = (ids_fit(fields["call_id"], fields["tool"]) and type(attempt) is int and attempt >= 1
                 and (duration is None or (type(duration) is float and 0.0 <= duration < math.inf))
                 and plain_json(fields["result"]))
        payload = (ToolCallCompleted.trusted if plain else ToolCallCompleted)(**fields)
        return self.event(payload, id=terminal_id(item.call_id, "completed"))

    async def give_up(self, reason: DeadLetterReason, error: ErrorInfo) -> None:
        engine = await self.engine()
        await engine.give_up(self.item, self.rec, reason, error, source=self.source)


@dataclass
class Invoked:
    """One run of the tool: its result (and what is recorded of it), or the exception it raised."""

    duration_ms: float
    result: Any = None
    recorded: Any = None
    error: BaseException | None = None
    failure: Failure | None = None


def tool_flow(call: ToolCall) -> Generator[Effect, Any, Invoked]:
    """Requested, attempts, completed or failed: a function runs in its caller, so there is no
    breaker, budget or queue; the runaway guard and the retry decision are the loop's own."""
    item, rec, policy = call.item, call.rec, call.policy
    yield Emit(call.requested_event())
    guard = call.policies.runaway
    if item.runid and (guard.max_calls_per_run or guard.max_identical_calls):
        fingerprint = call.fingerprint
        if fingerprint is None:
            fingerprint = request_fingerprint({"tool": item.tool, "arguments": item.arguments})
        refusal = call.runaway.admit(item.runid, fingerprint, guard)
        if refusal is not None:
            error = ErrorInfo(type="RunawayGuard", message=refusal, retryable=False)
            yield Run(partial(call.give_up, "runaway", error), drain=True)
            return Invoked(0.0, error=RunawayError(refusal))
    while True:
        attempt = len(rec.attempts) + 1
        started_at = time.time()
        done = yield Invoke(attempt)
        assert isinstance(done, Invoked)
        rec.record_attempt(AttemptRecord(attempt, None, done.failure, started_at, time.time() - started_at))
        if done.error is None:
            yield Emit(call.completed_event(attempt, done), final=True)
            return done
        failure = done.failure
        assert failure is not None
        judged = failure
        if call.retry_on and isinstance(done.error, call.retry_on):
            judged = dataclasses.replace(failure, kind="connection")  # named transient by the tool
        decision = tool_decision(call.idempotent, failure) or decide(
            policy, rec.history(), judged, now=time.time(), started_at=rec.started_at, current=None, rng=call.rng)
        delay = decision.delay_s if isinstance(decision, Retry) else None
        yield Emit(call.event(ToolCallAttemptFailed(
            call_id=item.call_id, tool=item.tool or "?", attempt=attempt,
            error=failure.to_error_info(retryable=not isinstance(decision, GiveUp)),
            duration_ms=done.duration_ms, decision=decision.decision, retry_in_s=delay)))
        if isinstance(decision, GiveUp):
            yield Run(partial(call.give_up, decision.reason, failure.to_error_info(retryable=False)), drain=True)
            return done
        yield Sleep(delay or 0.0)


# -- stepping a flow --------------------------------------------------------------------------


async def drive(flow: Generator[Effect, Any, T], handle: Callable[[Effect], Awaitable[Any]]) -> T:
    """Run ``flow`` to its end: ``handle`` does each effect and returns its result."""
    with contextlib.closing(flow):
        done, value = _advance(flow, None)
        while not done:
            done, value = _advance(flow, await handle(value))
        return value  # type: ignore[no-any-return]


def drive_sync(flow: Generator[Effect, Any, T], handle: Callable[[Effect], Any]) -> T:
    """:func:`drive` for a plain thread."""
    with contextlib.closing(flow):
        done, value = _advance(flow, None)
        while not done:
            done, value = _advance(flow, handle(value))
        return value  # type: ignore[no-any-return]


def _advance(flow: Generator[Effect, Any, Any], result: Any) -> tuple[bool, Any]:
    """The flow's next effect (``False, effect``), or how it ended (``True, value``)."""
    try:
        return False, flow.send(result)
    except StopIteration as stop:
        return True, stop.value

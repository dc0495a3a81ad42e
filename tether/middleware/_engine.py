"""The call engine: one attempt, its outcome, and what happens next, as events.

Both modes use it: the durable executor (the next attempt goes back through
JetStream with the decided delay) and inline calls (the caller's process sleeps).
Either way the same events are published, with deterministic ids for the terminal
ones (``completed``, ``failed``, ``dead_lettered``), so a call redelivered after a
worker died is recorded once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from tether._redact import DEFAULT as REDACT
from tether.bus import Bus, encode_token
from tether.pricing import estimate, estimate_tokens, price
from tether.schemas import (
    CallDeadLettered,
    ErrorInfo,
    Event,
    LlmCallAttemptFailed,
    LlmCallCompleted,
    LlmCallFailed,
    LlmCallRequested,
    Payload,
    ToolCallAttemptFailed,
    ToolCallCompleted,
    ToolCallFailed,
    ToolCallRequested,
    Usage,
    ids_fit,
    plain_json,
)

from ._breaker import breaker_retry_in
from ._budget import BudgetRefusal, Spend, check_budget, request_fingerprint, runaway_count
from ._cache import ResponseCache
from ._decide import AttemptRecord, Decision, Fallback, GiveUp, Retry, decide, tool_decision
from ._failures import Failure, classify_exception
from ._holds import Hold, hold_until, release, reserve, settle
from ._http import ProviderHttp
from ._policy import BudgetLimits, BudgetScope, Policy, PolicySet, Target
from ._providers import LlmOutcome, ProviderConfig, run_llm_attempt
from ._shared import Breakers, RateLimiter, Snapshot, SpendBook
from ._tools import ToolRegistry, UnknownTool
from ._work import CallRecord, WorkItem

__all__ = ["DLQ_PREFIX", "CallEngine", "Outcome", "redacted", "terminal_id"]

log = logging.getLogger("tether.middleware")

DLQ_PREFIX = "tether.dlq"
DeadLetterReason = Literal["exhausted", "not_retryable", "malformed", "max_deliveries", "deadline", "budget",
                           "runaway"]


def _ms(value: Any) -> bool:
    """A duration field's value as validation leaves it (a float: an int would become one)."""
    return value is None or (type(value) is float and 0 <= value < math.inf)


def _completed_is_plain(f: dict[str, Any], chunks_plain: bool = False) -> bool:
    """Whether an ``llm.call.completed``'s fields are what validating them would give back (every
    call's case: ids, the loop's own counts and timings, a JSON answer): then it is built without
    validating its answer again. Anything else is validated, as before, and refused the same way."""
    return (ids_fit(f["call_id"], f["provider"], f["model"]) and type(f["attempt"]) is int and f["attempt"] >= 1
            and type(f["usage"]) is Usage and _ms(f["latency_ms"]) and _ms(f["ttft_ms"])
            and (f["finish_reason"] is None or type(f["finish_reason"]) is str)
            and plain_json(f["response"]) and (chunks_plain or plain_json(f["chunks"])))


_NS = uuid.UUID("5b0f5f1e-6c1d-4d0a-9f56-3c1e7e1f7a11")
_NS_BYTES = _NS.bytes
SOURCE = "urn:tether:worker"


def terminal_id(call_id: str, what: str) -> str:
    """The event id of a call's ``requested`` / ``completed`` / ``failed`` / ``dead_lettered``
    event: derived from the call id, so a repeat is dropped by JetStream's dedupe. What
    ``str(uuid.uuid5(_NS, f"{call_id}/{what}"))`` gives, without building a ``UUID`` (a third of
    the time, on every call)."""
    digest = bytearray(hashlib.sha1(_NS_BYTES + f"{call_id}/{what}".encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"



_RECORDED = ("request", "parameters", "response", "arguments", "result", "chunks")


def redacted(payload: Payload) -> Payload:
    """``payload`` as it may enter the log: what callers, tools and providers sent (requests,
    arguments, responses, results, error messages) redacted by tether's one rule set."""
    update: dict[str, Any] = {}
    for name in _RECORDED:
        value = getattr(payload, name, None)
        if value is not None:
            update[name] = REDACT(value)
    error = getattr(payload, "error", None)
    if isinstance(error, ErrorInfo) and error.message:
        update["error"] = error.model_copy(update={"message": REDACT.text(error.message)})
    return payload.model_copy(update=update) if update else payload

@dataclass(frozen=True)
class Outcome:
    ok: bool
    latency_ms: float
    response: Any = None
    usage: Usage = field(default_factory=Usage)
    finish_reason: str | None = None
    failure: Failure | None = None
    ttft_ms: float | None = None
    """Time to the first token of a streamed answer (adapters' streaming attempts)."""
    chunks: list[dict[str, Any]] | None = None
    """A streamed answer's events (``StreamAccumulator.chunks``), recorded for replay."""
    chunks_plain: bool = False
    """:attr:`chunks` are known to be plain JSON (``StreamAccumulator.plain``, redacted without a
    hook): not walked again to say so."""

    @property
    def counts_for_breaker(self) -> bool:
        """Whether the route's breaker learns from this outcome: a success always does (it
        closes a half-open breaker, resets the streak); a failure only if it is the route's."""
        return self.ok or (self.failure is not None and self.failure.counts_for_breaker)


class CallEngine:
    """Everything an attempt needs: policies, providers, tools and the shared state."""

    def __init__(self, bus: Bus, *, policies: PolicySet, providers: dict[str, ProviderConfig],
                 tools: ToolRegistry, breakers: Breakers, rates: RateLimiter, spend: SpendBook,
                 http: ProviderHttp | None = None, source: str = SOURCE,
                 seed: int | None = None) -> None:
        self.bus = bus
        self.policies = policies
        self.providers = providers
        self.tools = tools
        self.breakers = breakers
        self.rates = rates
        self.spend = spend
        self.http = http
        self.source = source
        self.rng = random.Random(seed)
        self.cache = ResponseCache(bus)
        """The response cache (its KV bucket is opened when a route that enables it is first called)."""

    # -- events ----------------------------------------------------------------------------

    def event(self, item: WorkItem, payload: Payload, *, id: str | None = None, scrubbed: bool = False,
              source: str | None = None) -> Event:
        """``scrubbed``: the caller redacted the payload already, by its own rules (an adapter's
        ``Redactor``), so it is not redacted a second time here. ``source``: the call's own, when
        it is not the engine's (a framework adapter's tool calls)."""
        return Event.of(payload if scrubbed else redacted(payload), id=id, runid=item.runid, agentid=item.agentid,
                        traceparent=item.traceparent, source=source or self.source,
                        extensions={"tenant": item.tenant} if item.tenant else None)

    def requested_event(self, item: WorkItem, *, mode: Literal["inline", "durable"],
                        capture: bool = True) -> Event:
        if item.kind == "llm":
            params = {k: v for k, v in item.body.items() if k not in ("messages", "input", "model", "system")}
            payload: Payload = LlmCallRequested(
                call_id=item.call_id, provider=item.provider or "?", model=item.model or "?",
                operation=item.operation, mode=mode, parameters=params,
                request=item.body if capture else None)
        else:
            known = item.tool is not None and item.tool in self.tools
            payload = ToolCallRequested(call_id=item.call_id, tool=item.tool or "?", arguments=item.arguments,
                                        idempotency_key=item.idempotency_key, mode=mode,
                                        idempotent=known and self.tools.get(item.tool or "").idempotent)
        return self.event(item, payload, id=terminal_id(item.call_id, "requested"))

    # -- admission: budgets and the runaway guard, once per call, before dispatch --------------

    def runaway_guarded(self, item: WorkItem) -> bool:
        """Whether :meth:`admit` counts this call on its run's record."""
        guard = self.policies.runaway
        return bool(item.runid and (guard.max_calls_per_run or guard.max_identical_calls))

    async def admit(self, item: WorkItem, rec: CallRecord, *,
                    run_snapshot: Snapshot | None = None) -> BudgetRefusal | str | None:
        """Budgets and the runaway guard; ``run_snapshot`` is the run's record if read ahead."""
        guard = self.policies.runaway
        if item.runid and self.runaway_guarded(item):
            body = item.body if item.kind == "llm" else {"tool": item.tool, "arguments": item.arguments}
            fp = request_fingerprint(body)

            def count(doc: dict[str, Any]) -> str | None:
                assert item.runid is not None
                return runaway_count(doc, item.runid, fp, guard, call_id=item.call_id)

            reason = await self.spend.update("run", item.runid, count, snapshot=run_snapshot)
            if reason:
                return reason
        budgets = self.policies.budgets_for(run_id=item.runid, agent_id=item.agentid, tenant=item.tenant)
        if not budgets:
            return None
        if item.kind == "llm" and item.provider and item.model:
            tokens_in, tokens_out = estimate_tokens(item.body)
            est = estimate(item.provider, item.model, input_tokens=tokens_in, max_output_tokens=tokens_out)
            est_usd, est_tokens = est.usd, tokens_in + tokens_out
        else:
            est_usd, est_tokens = 0.0, 0
        policy = self.policy_of(item)
        hold = Hold(est_usd or 0.0, est_tokens, hold_until(
            started_at=rec.started_at, deadline_at=item.deadline_at, deadline_s=policy.deadline_s,
            timeout_s=policy.timeout_s))
        guarded = self.runaway_guarded(item)

        def reserve_in(scope: BudgetScope, scope_id: str, limits: BudgetLimits) -> Callable[[dict[str, Any]], Any]:
            def fn(doc: dict[str, Any]) -> BudgetRefusal | None:
                calls = int(doc.get("calls", 0))
                if scope == "run" and guarded:
                    calls -= 1  # the guard counted this call (and every other one admitted) already

                def check(held: Spend) -> BudgetRefusal | None:
                    if scope == "run" and guarded:
                        held = Spend(held.usd, held.tokens, 0)
                    spent = Spend(usd=float(doc.get("usd", 0.0)), tokens=int(doc.get("tokens", 0)),
                                  calls=max(0, calls))
                    return check_budget(scope, scope_id, limits, spent, est_usd=est_usd, est_tokens=est_tokens,
                                        reserved=held)

                return reserve(doc, item.call_id, hold, now=time.time(), check=check)
            return fn

        # Every scope at once (their round trips overlap); a refusal by one gives back the others.
        results = await asyncio.gather(*(self.spend.update(scope, scope_id, reserve_in(scope, scope_id, limits))
                                         for scope, scope_id, limits in budgets), return_exceptions=True)
        refusal = next((r for r in results if isinstance(r, BudgetRefusal)), None)
        error = next((r for r in results if isinstance(r, BaseException)), None)
        if refusal is not None or error is not None:
            await self.release(item)
        if error is not None:
            raise error
        return refusal

    async def release(self, item: WorkItem) -> None:
        """Give back the reservations of a call that ended with nothing to charge."""
        budgets = self.policies.budgets_for(run_id=item.runid, agent_id=item.agentid, tenant=item.tenant)
        if not budgets:
            return

        def drop(doc: dict[str, Any]) -> None:
            release(doc, item.call_id, now=time.time())

        for result in await asyncio.gather(*(self.spend.update(scope, scope_id, drop)
                                             for scope, scope_id, _ in budgets), return_exceptions=True):
            if isinstance(result, BaseException):
                log.warning("could not release the budget reservation of call %s (it lapses at the "
                            "call's deadline): %r", item.call_id, result)

    async def account(self, item: WorkItem, usage: Usage, target: Target | None) -> None:
        """Add a completed call's spend to its run, agent and tenant, in place of its reservation."""
        usd = 0.0
        if target is not None:
            p = price(target.provider, target.model, usage)
            usd = p.usd or 0.0
        tokens = usage.input_tokens + usage.output_tokens
        guarded = self.runaway_guarded(item)

        def add(counts_call: bool) -> Any:
            def fn(doc: dict[str, Any]) -> None:
                settle(doc, item.call_id, usd=usd, tokens=tokens, calls=1 if counts_call else 0, now=time.time())
            return fn

        # Independent records: their round trips overlap instead of queueing one after another.
        # A run's calls are counted by the runaway guard at admission when it is on.
        updates = [self.spend.update(scope, scope_id, add(scope != "run" or not guarded))
                   for scope, scope_id in (("run", item.runid), ("agent", item.agentid), ("tenant", item.tenant))
                   if scope_id]
        for result in await asyncio.gather(*updates, return_exceptions=True):
            if isinstance(result, BaseException):
                raise result

    # -- one attempt --------------------------------------------------------------------

    def policy_of(self, item: WorkItem) -> Policy:
        return self.policies.policy_for(item.route)

    async def gate(self, item: WorkItem, rec: CallRecord, policy: Policy) -> tuple[Failure | None, float]:
        """Breaker and rate limit before an attempt: (failure if refused, seconds to wait)."""
        target = rec.target
        route = target.route if target else item.route
        if not await self.breakers.admit(route, policy.breaker, call_id=item.call_id):
            wait = breaker_retry_in(policy.breaker, self.breakers.state(route), now=time.time())
            return Failure.breaker_open(route, retry_after_s=wait), 0.0
        if target is not None:
            tokens_in, tokens_out = estimate_tokens(item.body)
            # Per provider (shared by every model of it), then per route (this model).
            for key, limit in ((target.provider, self.policies.rate_limit_for(target.provider)),
                               (f"route/{target.route}", policy.rate_limit)):
                wait = await self.rates.acquire(key, limit, tokens=tokens_in + tokens_out)
                if wait > 0:
                    return None, wait
        return None, 0.0

    async def attempt(self, item: WorkItem, rec: CallRecord, policy: Policy) -> Outcome:
        if item.kind == "llm":
            target = rec.target
            assert target is not None
            provider = self.providers.get(target.provider)
            if provider is None:
                return Outcome(False, 0.0, failure=Failure(
                    kind="http", status_code=404, error_type="UnknownProvider",
                    message=f"no provider {target.provider!r} configured in this worker "
                            f"(configured: {', '.join(sorted(self.providers)) or 'none'})"))
            if self.http is None:  # an engine built for adapters, which send requests themselves
                raise RuntimeError("this CallEngine has no HTTP client to make LLM attempts with")
            out: LlmOutcome = await run_llm_attempt(self.http, provider, operation=item.operation,
                                                    model=target.model, body=item.body,
                                                    timeout_s=policy.timeout_s, call_id=item.call_id)
            return Outcome(out.ok, out.latency_ms, out.response, out.usage, out.finish_reason, out.failure)
        started = time.perf_counter()
        try:
            spec = self.tools.get(item.tool or "")
        except UnknownTool as exc:
            return Outcome(False, 0.0, failure=Failure(kind="tool_error", error_type="UnknownTool",
                                                       message=str(exc)))
        try:
            result = await asyncio.wait_for(spec(item.arguments, idempotency_key=item.idempotency_key
                                                 or item.call_id), policy.timeout_s)
        except Exception as exc:
            failure = classify_exception(exc)
            return Outcome(False, (time.perf_counter() - started) * 1000, failure=failure)
        try:
            json.dumps(result)
        except (TypeError, ValueError) as exc:
            return Outcome(False, (time.perf_counter() - started) * 1000, failure=Failure(
                kind="tool_error", error_type="NotJSON", message=f"tool result is not JSON: {exc}"))
        return Outcome(True, (time.perf_counter() - started) * 1000, response=result)

    def decide(self, item: WorkItem, rec: CallRecord, policy: Policy, failure: Failure) -> Decision:
        if item.kind == "tool":
            spec = self.tools.get(item.tool or "") if item.tool in self.tools else None
            if spec is None or failure.error_type == "UnknownTool":
                return GiveUp("not_retryable")
            refused = tool_decision(spec.idempotent, failure)
            if refused is not None:
                return refused
        return decide(policy, rec.history(), failure, now=time.time(), started_at=rec.started_at,
                      current=rec.target, rng=self.rng)

    def attempt_failed_event(self, item: WorkItem, rec: CallRecord, attempt: int, failure: Failure,
                             latency_ms: float, decision: Decision, *, scrubbed: bool = False) -> Event:
        kind = "retry" if isinstance(decision, Retry) else "fallback" if isinstance(decision, Fallback) else "give_up"
        delay = decision.delay_s if isinstance(decision, (Retry, Fallback)) else None
        error = failure.to_error_info(retryable=not isinstance(decision, GiveUp))
        if item.kind == "llm":
            target = rec.target or Target(item.provider or "?", item.model or "?")
            nxt = decision.target if isinstance(decision, Fallback) else None
            payload: Payload = LlmCallAttemptFailed(
                call_id=item.call_id, provider=target.provider, model=target.model, attempt=attempt,
                error=error, latency_ms=latency_ms, decision=kind, retry_in_s=delay,
                next_provider=nxt.provider if nxt else None, next_model=nxt.model if nxt else None)
        else:
            payload = ToolCallAttemptFailed(call_id=item.call_id, tool=item.tool or "?", attempt=attempt,
                                            error=error, duration_ms=latency_ms, decision=kind, retry_in_s=delay)
        return self.event(item, payload, scrubbed=scrubbed)

    def completed_event(self, item: WorkItem, rec: CallRecord, attempt: int, out: Outcome,
                        capture: bool = True, *, scrubbed: bool = False) -> Event:
        if item.kind == "llm":
            target = rec.target or Target(item.provider or "?", item.model or "?")
            fields: dict[str, Any] = dict(
                call_id=item.call_id, provider=target.provider, model=target.model, attempt=attempt,
                usage=out.usage, latency_ms=out.latency_ms, ttft_ms=out.ttft_ms, finish_reason=out.finish_reason,
                response=out.response if capture else None, chunks=out.chunks if capture else None)
            plain = _completed_is_plain(fields, out.chunks_plain)
            payload: Payload = (LlmCallCompleted.trusted if plain else LlmCallCompleted)(**fields)
        else:
            payload = ToolCallCompleted(call_id=item.call_id, tool=item.tool or "?", attempt=attempt,
                                        result=out.response, duration_ms=out.latency_ms)
        return self.event(item, payload, id=terminal_id(item.call_id, "completed"), scrubbed=scrubbed)

    async def give_up(self, item: WorkItem, rec: CallRecord, reason: DeadLetterReason, error: ErrorInfo,
                      raw_body: bytes | None = None, *, source: str | None = None) -> tuple[Event, int | None]:
        """Record the final failure: the DLQ message, then ``failed`` and ``dead_lettered`` events;
        then give back the call's budget reservations."""
        route_key = item.provider if item.kind == "llm" else item.tool
        doc = {
            "call_id": item.call_id,
            "reason": reason,
            "kind": item.kind,
            "route": (rec.target.route if rec.target else item.route),
            "error": error.model_dump(mode="json"),
            "attempts": rec.attempts,
            "item": item.model_dump(mode="json"),
            "dead_lettered_at": time.time(),
        }
        ack = await self.bus.js.publish(f"{DLQ_PREFIX}.{item.kind}.{encode_token(route_key)}",
                                        json.dumps(doc, separators=(",", ":")).encode(),
                                        headers={"Nats-Msg-Id": f"dlq-{item.call_id}"})
        target = rec.target or Target(item.provider or "?", item.model or "?")
        failed: Payload
        if item.kind == "llm":
            failed = LlmCallFailed(call_id=item.call_id, provider=target.provider, model=target.model,
                                   attempts=len(rec.attempts), error=error)
        else:
            failed = ToolCallFailed(call_id=item.call_id, tool=item.tool or "?", attempts=len(rec.attempts),
                                    error=error)
        failed_event = self.event(item, failed, id=terminal_id(item.call_id, "failed"), source=source)
        receipt = await self.bus.publish(failed_event)
        await self.bus.publish(self.event(item, CallDeadLettered(
            call_id=item.call_id, call_kind=item.kind, reason=reason,
            attempts=len(rec.attempts), error=error, dlq_seq=ack.seq),
            id=terminal_id(item.call_id, "dead_lettered"), source=source))
        rec.state = "failed"
        rec.error = error.model_dump(mode="json")
        rec.terminal_seq = receipt.stream_seq
        rec.terminal_event_id = failed_event.id
        rec.reason = reason
        log.info("call %s dead-lettered (%s): %s", item.call_id, reason, error.message)
        await self.release(item)
        return failed_event, ack.seq

    def record_outcome(self, rec: CallRecord, attempt: int, failure: Failure | None, started_at: float) -> None:
        rec.record_attempt(AttemptRecord(attempt=attempt, target=rec.target, failure=failure,
                                         started_at=started_at, duration_s=time.time() - started_at))

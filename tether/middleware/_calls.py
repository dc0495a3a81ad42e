"""The caller's side: run an LLM or tool call durably (through WORK) or inline.

``DurableCalls`` submits a work item and returns as soon as the worker's reply says the
completion event exists (no polling); a caller that restarted re-attaches with
``attach(call_id)`` and reads the outcome from the log. ``InlineCalls`` applies the same
policy engine in this process, for the lowest latency; both publish the same events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from pydantic import JsonValue

from tether.bus import EVENTS_STREAM, Bus, encode_token, event_filter, find_event, publish_until_acked, until_answered
from tether.schemas import ErrorInfo, Event, LlmCallCompleted, ToolCallCompleted, Usage, uuid7

from ._budget import RunawayTracker
from ._engine import CallEngine
from ._flow import Call, Completed, Effect, Emit, GaveUp, Run, Sleep, Spawn, call_flow, drive
from ._http import ProviderHttp
from ._policy import PolicySet
from ._providers import ProviderConfig
from ._shared import Breakers, RateLimiter, SpendBook, open_bucket
from ._tools import ToolRegistry
from ._upstream import ProviderUpstream, Send
from ._work import CALLS_BUCKET, CallRecord, Operation, WorkItem, work_subject

__all__ = ["CallFailed", "CallResult", "DurableCalls", "InlineCalls"]

log = logging.getLogger("tether.middleware")


@dataclass(frozen=True)
class CallResult:
    """A completed call: the provider's (or tool's) answer and its usage."""

    call_id: str
    response: Any
    usage: Usage | None = None
    event_seq: int | None = None


class CallFailed(Exception):
    """The call ended without an answer (dead-lettered, refused, or past its deadline).

    ``reason`` is the same for a call made inline, durably or through an adapter: the
    dead-letter reason (``exhausted``, ``not_retryable``, ``deadline``, ``budget``,
    ``runaway``, ``max_deliveries``), or ``cancelled`` for a relayed stream its caller
    stopped (not dead-lettered). ``failed`` is left only for a record written by an
    older worker, which did not say why.
    """

    def __init__(self, call_id: str, error: ErrorInfo | dict[str, Any] | None, reason: str = "failed") -> None:
        info = error if isinstance(error, ErrorInfo) else ErrorInfo(**error) if error else ErrorInfo(type="Unknown")
        super().__init__(f"call {call_id} failed: {info.type}: {info.message}")
        self.call_id = call_id
        self.error = info
        self.reason = reason


def _llm_item(provider: str, model: str, body: Mapping[str, Any], *, operation: Operation, call_id: str | None,
              runid: str | None, agentid: str | None, tenant: str | None, traceparent: str | None,
              deadline_s: float | None, reply_to: str | None = None) -> WorkItem:
    cid = call_id or uuid7()
    return WorkItem(call_id=cid, kind="llm", provider=provider, model=model, operation=operation,
                    body=dict(body), runid=runid, agentid=agentid, tenant=tenant, traceparent=traceparent,
                    deadline_at=time.time() + deadline_s if deadline_s else None, reply_to=reply_to)


RECHECK_S = 5.0
"""A caller waiting for a durable call reads its KV record this often, in case the reply was lost."""

UNPLACED_RECHECK_S = 0.25
"""How often a caller whose reply said "completed" without the completion's place looks it up."""

CLOCK_SKEW_S = 60.0
"""How far before a call's start (the worker's clock) its completion is looked for in the log."""


class DurableCalls:
    """Submit calls to the workers and wait for their outcome, or re-attach later."""

    def __init__(self, bus: Bus, *, deadline_s: float = 300.0) -> None:
        self.bus = bus
        self.deadline_s = deadline_s
        self._inbox = ""
        self._sub: Any = None
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._calls: KeyValue | None = None

    async def start(self) -> DurableCalls:
        self._inbox = self.bus.nc.new_inbox()
        self._sub = await self.bus.nc.subscribe(self._inbox + ".*", cb=self._on_reply)
        self._calls = await open_bucket(self.bus.js, CALLS_BUCKET, replicas=self.bus.config.replicas,
                                        ttl=7 * 24 * 3600.0)
        return self

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def __aenter__(self) -> DurableCalls:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _on_reply(self, msg: Any) -> None:
        token = msg.subject[len(self._inbox) + 1:]
        fut = self._waiting.pop(token, None)
        if fut is not None and not fut.done():
            with contextlib.suppress(ValueError):
                fut.set_result(json.loads(msg.data))

    async def llm(self, provider: str, model: str, body: Mapping[str, Any], *, operation: Operation = "chat",
                  call_id: str | None = None, runid: str | None = None, agentid: str | None = None,
                  tenant: str | None = None, traceparent: str | None = None,
                  deadline_s: float | None = None) -> CallResult:
        """Run an LLM call on a worker; its result, or ``CallFailed``."""
        item = _llm_item(provider, model, body, operation=operation, call_id=call_id, runid=runid,
                         agentid=agentid, tenant=tenant, traceparent=traceparent,
                         deadline_s=deadline_s or self.deadline_s)
        return await self.run(item)

    async def tool(self, name: str, arguments: JsonValue = None, *, call_id: str | None = None,
                   runid: str | None = None, agentid: str | None = None, tenant: str | None = None,
                   traceparent: str | None = None, deadline_s: float | None = None) -> CallResult:
        """Run a tool registered in the workers; its result, or ``CallFailed``."""
        cid = call_id or uuid7()
        item = WorkItem(call_id=cid, kind="tool", tool=name, arguments=arguments, runid=runid, agentid=agentid,
                        tenant=tenant, traceparent=traceparent,
                        deadline_at=time.time() + (deadline_s or self.deadline_s))
        return await self.run(item)

    async def run(self, item: WorkItem, *, requested: Event | None = None) -> CallResult:
        """Submit ``item`` and wait for its outcome. ``requested`` replaces the ``requested``
        event :meth:`submit` would build (adapters pass one with a redacted request)."""
        token = encode_token(item.call_id)
        item = item.model_copy(update={"reply_to": f"{self._inbox}.{token}"})
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[token] = fut
        try:
            await self.submit(item, requested=requested)
            give_up = item.deadline_at + 30.0 if item.deadline_at else None
            while True:
                left = None if give_up is None else give_up - time.time()
                if left is not None and left <= 0:
                    return await self.attach(item.call_id, timeout=5.0)
                try:
                    doc: dict[str, Any] | None = await asyncio.wait_for(asyncio.shield(fut),
                                                                        min(left or RECHECK_S, RECHECK_S))
                except TimeoutError:
                    # The worker's reply is a plain NATS message: lost if our connection dropped
                    # (a cluster node going away) as it came. The call's record says it anyway.
                    doc = None
                if doc is None or _unplaced(doc):
                    # Lost, or a reply naming a completion that went through the worker's outbox
                    # (its place in the log unknown yet): the record and the log say it in time.
                    found = await self._terminal(item)
                    if found is None:
                        if doc is not None:  # the reply is in hand: look again shortly, not at once
                            await asyncio.sleep(min(left or UNPLACED_RECHECK_S, UNPLACED_RECHECK_S))
                        continue
                    doc = found
                return await self._result(doc)
        finally:
            self._waiting.pop(token, None)

    async def submit(self, item: WorkItem, *, requested: Event | None = None) -> str:
        """Put a call on WORK (once: the call id is the message id). Returns the call id."""
        from tether.schemas import LlmCallRequested, ToolCallRequested

        from ._engine import redacted, terminal_id

        if requested is None:
            if item.kind == "llm":
                params = {k: v for k, v in item.body.items() if k not in ("messages", "input", "model", "system")}
                payload: Any = LlmCallRequested(call_id=item.call_id, provider=item.provider or "?",
                                                model=item.model or "?", operation=item.operation,
                                                mode="durable", parameters=params, request=item.body)
            else:
                payload = ToolCallRequested(call_id=item.call_id, tool=item.tool or "?", arguments=item.arguments,
                                            mode="durable", idempotency_key=item.idempotency_key)
            requested = Event.of(redacted(payload), id=terminal_id(item.call_id, "requested"), runid=item.runid,
                                 agentid=item.agentid, traceparent=item.traceparent,
                                 extensions={"tenant": item.tenant} if item.tenant else None)
        await self.bus.emit(requested)
        # Through a reconnect or a stream leader election (a cluster losing a node): tried again
        # with the same message id until acked, up to the call's deadline (dedupe: stored once).
        await publish_until_acked(self.bus.js, work_subject(item), item.model_dump_json().encode(),
                                  msg_id=item.call_id, deadline=item.deadline_at or time.time() + 60.0)
        return item.call_id

    async def _terminal(self, item: WorkItem) -> dict[str, Any] | None:
        """The outcome in the call's KV record, if it has ended (None if not, or unreadable now)."""
        assert self._calls is not None
        try:
            entry = await self._calls.get(item.call_id)
        except Exception:  # not there yet, or the bucket is electing a leader: look again later
            return None
        rec = CallRecord.from_json(entry.value) if entry.value else None
        if rec is None:
            return None
        return await self._outcome(rec, agent=item.agentid, run=item.runid)

    async def _outcome(self, rec: CallRecord, *, agent: str | None = None,
                       run: str | None = None) -> dict[str, Any] | None:
        """What the record says of an ended call, as a reply would say it; None if it has not
        ended, or if its completion is not in the log yet."""
        if not rec.terminal:
            return None
        seq = rec.terminal_seq
        if rec.state == "completed" and seq is None:
            seq = await self._completion_seq(rec, agent=agent, run=run)
            if seq is None:
                return None
        return {"call_id": rec.call_id, "state": rec.state, "seq": seq, "error": rec.error, "reason": rec.reason}

    async def _completion_seq(self, rec: CallRecord, *, agent: str | None, run: str | None) -> int | None:
        """Where a completion the worker published through its outbox (the stream had no leader,
        so it did not learn the position) is in the log: found by its event id on the call's
        subject (its agent and run when known), from a little before the call started."""
        if rec.terminal_event_id is None:
            return None
        subject = event_filter(agent=agent, run=run, kind=rec.kind, action="completed")
        try:
            found = await find_event(self.bus, subject, rec.terminal_event_id, since=rec.started_at - CLOCK_SKEW_S)
        except Exception as exc:  # the stream is electing a leader, or the connection is away: look again later
            log.info("call %s: looking for its completion in the log failed (%r); looking again", rec.call_id, exc)
            return None
        log.info("call %s: its reply was lost; its completion (sent through the worker's outbox) is %s",
                 rec.call_id, f"at seq {found}" if found else "not in the log yet")
        return found

    async def attach(self, call_id: str, *, timeout: float | None = None) -> CallResult:
        """The outcome of a call submitted earlier (perhaps by another process), from the log."""
        assert self._calls is not None
        deadline = time.monotonic() + timeout if timeout is not None else None
        watcher = None
        try:
            while True:
                try:
                    entry = await self._calls.get(call_id)
                    rec = CallRecord.from_json(entry.value or b"{}") if entry.value else None
                except KeyNotFoundError:
                    rec = None
                doc = None if rec is None else await self._outcome(rec)
                if doc is not None:
                    return await self._result(doc)
                if watcher is None:
                    watcher = await self._calls.watch(call_id)
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    if rec is not None and rec.terminal:
                        raise CallFailed(call_id, ErrorInfo(
                            type="Unavailable", message="the call completed, but its completion event is not "
                            "in the log yet (it waits in a worker's outbox for NATS); attach again later"))
                    raise TimeoutError(f"call {call_id} has not finished")
                with contextlib.suppress(Exception):
                    await watcher.updates(timeout=min(left or 5.0, 5.0))  # type: ignore[no-untyped-call]
        finally:
            if watcher is not None:
                with contextlib.suppress(Exception):
                    await watcher.stop()  # type: ignore[no-untyped-call]

    async def _result(self, doc: Mapping[str, Any]) -> CallResult:
        call_id = str(doc.get("call_id"))
        if doc.get("state") != "completed":
            raise CallFailed(call_id, doc.get("error"), str(doc.get("reason") or doc.get("state")))
        if "response" in doc:
            usage = Usage(**doc["usage"]) if doc.get("usage") else None
            return CallResult(call_id, doc["response"], usage, doc.get("seq"))
        seq = doc.get("seq")
        if seq is None:
            raise CallFailed(call_id, ErrorInfo(type="Unavailable", message="completion not in the log yet"))
        # read again while EVENTS elects a leader (a cluster node restarting): the completion is stored
        stored = await until_answered(lambda: self.bus.js.get_msg(EVENTS_STREAM, int(seq)))
        event = await self.bus.reader.read(stored.headers, stored.data or b"")
        data = event.data
        if isinstance(data, LlmCallCompleted):
            return CallResult(call_id, data.response, data.usage, int(seq))
        if isinstance(data, ToolCallCompleted):
            return CallResult(call_id, data.result, None, int(seq))
        raise CallFailed(call_id, ErrorInfo(type="Unexpected", message=f"event {event.type} at seq {seq}"))


def _unplaced(doc: Mapping[str, Any]) -> bool:
    """A completed call's reply that carries neither the answer nor the completion's place in the
    log (the worker published it through its outbox while the stream had no leader)."""
    return doc.get("state") == "completed" and "response" not in doc and doc.get("seq") is None


class InlineCalls:
    """The policy engine in this process: no queue hop, same events, same shared breakers.

    It drives the one call loop (:func:`~tether.middleware.call_flow`) here. The runaway
    guard counts per process (a run's inline calls are usually made by one process);
    budgets, breakers and rate limits are shared through KV as for workers.
    """

    def __init__(self, bus: Bus, *, policies: PolicySet | None = None,
                 providers: Mapping[str, ProviderConfig] | None = None, tools: ToolRegistry | None = None,
                 seed: int | None = None) -> None:
        self.bus = bus
        self.policies = policies or PolicySet.default()
        self.providers = dict(providers or {})
        self.tools = tools or ToolRegistry()
        self.seed = seed
        self.engine: CallEngine | None = None
        self._http: ProviderHttp | None = None
        self.runaway = RunawayTracker()
        self._background: set[asyncio.Task[None]] = set()

    async def start(self) -> InlineCalls:
        breakers = await Breakers.open(self.bus)
        rates, spend = await RateLimiter.open(self.bus), await SpendBook.open(self.bus)
        self._http = ProviderHttp(max_connections=200)
        self.engine = CallEngine(self.bus, policies=self.policies, providers=self.providers, tools=self.tools,
                                 breakers=breakers, rates=rates, spend=spend, http=self._http,
                                 source="urn:tether:inline", seed=self.seed)
        return self

    async def close(self) -> None:
        for task in list(self._background):
            with contextlib.suppress(Exception):
                await task
        if self.engine is not None:
            await self.engine.breakers.close()
        if self._http is not None:
            await self._http.aclose()

    async def __aenter__(self) -> InlineCalls:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def llm(self, provider: str, model: str, body: Mapping[str, Any], *, operation: Operation = "chat",
                  call_id: str | None = None, runid: str | None = None, agentid: str | None = None,
                  tenant: str | None = None, traceparent: str | None = None,
                  deadline_s: float | None = None) -> CallResult:
        item = _llm_item(provider, model, body, operation=operation, call_id=call_id, runid=runid,
                         agentid=agentid, tenant=tenant, traceparent=traceparent, deadline_s=deadline_s)
        return await self.run(item)

    async def tool(self, name: str, arguments: JsonValue = None, *, call_id: str | None = None,
                   runid: str | None = None, agentid: str | None = None, tenant: str | None = None,
                   deadline_s: float | None = None) -> CallResult:
        item = WorkItem(call_id=call_id or uuid7(), kind="tool", tool=name, arguments=arguments, runid=runid,
                        agentid=agentid, tenant=tenant,
                        deadline_at=time.time() + deadline_s if deadline_s else None)
        return await self.run(item)

    async def run(self, item: WorkItem) -> CallResult:
        engine = self.engine
        assert engine is not None, "call start() first"
        rec = CallRecord.new(item, time.time())
        await self.bus.emit(engine.requested_event(item, mode="inline"))
        call = Call(engine, item, rec, engine.policy_of(item), runaway=self.runaway)
        try:
            ending = await drive(call_flow(call), partial(self._handle, call))
        except BaseException:
            if self.policies.budgets and not rec.terminal:
                # Cancelled or broken before an outcome: give the reservation back now, not at
                # its lapse (a task of its own, so the caller's cancellation does not stop it).
                self._spawn(engine.release(item))
            raise
        if isinstance(ending, GaveUp):
            raise CallFailed(item.call_id, ending.error, ending.reason)
        assert isinstance(ending, Completed)
        out = ending.outcome
        return CallResult(item.call_id, out.response, out.usage if item.kind == "llm" else None)

    async def _handle(self, call: Call, effect: Effect) -> Any:
        """Drive :func:`call_flow` in this process: engine steps awaited, the spend in the background."""
        if isinstance(effect, Emit):
            await self.bus.emit(effect.event)
        elif isinstance(effect, Run):
            return await effect.make()
        elif isinstance(effect, Spawn):
            if effect.after:
                self._spawn(effect.make())
            else:
                await effect.make()
        elif isinstance(effect, Sleep):
            if effect.seconds > 0:
                await asyncio.sleep(effect.seconds)
        else:
            assert isinstance(effect, Send)
            return await ProviderUpstream(call.engine, call.item, call.rec, call.policy).attempt(effect)
        return None

    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

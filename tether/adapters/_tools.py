"""``@tether.tool``: a function's calls as events, retried only when it is idempotent.

Sync and async functions alike: each call records its arguments, then its result and
duration, or its error (``tool.call.requested`` / ``attempt_failed`` / ``completed`` /
``failed``, the failure also dead-lettered). A tool marked ``idempotent=True`` is retried
under the route ``tool:<name>``'s policy when it fails transiently (timeouts, connection
errors, an HTTP 429/5xx it raised, or any exception in ``retry_on``); any other tool runs
once, because repeating a side effect is the caller's decision. A tool with an
``idempotency_key`` parameter receives a key there (unless the caller passed one): in a run,
``<run id>:<position>``, the same when a resumed run makes the call again; else the call id.
Inside a run the journal decides first (``_tooljournal``): a resumed run's call that
completed before the crash is answered from the log.

Arguments and results are recorded as JSON (pydantic's encoder, ``repr`` for the rest),
redacted; large ones go to the object store by the publisher's claim check.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import dataclasses
import functools
import inspect
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from functools import partial
from typing import Any, ParamSpec, TypeVar, overload

from pydantic_core import to_jsonable_python

from tether.bus import Bus
from tether.middleware import (
    Effect,
    Invoke,
    Invoked,
    Policy,
    PolicySet,
    RunawayError,
    ToolCall,
    WorkItem,
    classify_exception,
    terminal_id,
    tool_flow,
    tool_hash,
)
from tether.schemas import CallReplayed, ErrorInfo, Event, RunNeedsAttention, ToolCallFailed, uuid7

from ._core import drive_async, drive_sync
from ._hub import SOURCE, Hub, LoopThreadError, background_hub, background_hub_nowait, default_policies
from ._recorded import current_recorded
from ._redact import Hook, Redactor, redactor_of
from ._runs import NeedsAttention, current_run, new_traceparent
from ._tooljournal import Attention, Live, Replay, decide

__all__ = ["FrameworkTools", "NeedsAttention", "RunawayError", "tool"]

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])
_SKIPPED = frozenset({"self", "cls", "idempotency_key"})
_BOUND: Any = object()  # prepare(): record the arguments bound to the function's parameters


def _jsonable(value: Any) -> Any:
    return to_jsonable_python(value, fallback=repr, serialize_unknown=True)


@dataclasses.dataclass
class ToolSpec:
    """How one decorated function is recorded and retried."""

    fn: Callable[..., Any]
    name: str
    idempotent: bool
    retries: int | None
    retry_on: tuple[type[BaseException], ...]
    bus: Bus | None
    policies: PolicySet | None
    capture: bool
    redactor: Redactor
    timeout_s: float | None = None
    source: str = SOURCE

    def __post_init__(self) -> None:
        self.signature = inspect.signature(self.fn)
        self.takes_key = "idempotency_key" in self.signature.parameters

    def policy(self, policies: PolicySet) -> Policy:
        policy = policies.policy_for(f"tool:{self.name}")
        if self.retries is not None:
            policy = dataclasses.replace(policy, retry=dataclasses.replace(policy.retry, max_attempts=self.retries + 1),
                                         max_total_attempts=self.retries + 1)
        return policy

    def hub_nowait(self) -> Hub | None:
        if self.bus is not None:
            return Hub.of(self.bus)
        ctx = current_run()
        if ctx is not None and ctx.hub is not None:
            return ctx.hub
        return background_hub_nowait()

    def prepare(self, hub: Hub, args: tuple[Any, ...], kwargs: dict[str, Any], arguments: Any = _BOUND) -> Prepared:
        """The call about to be made; ``arguments`` are what is recorded (default: ``args`` and
        ``kwargs`` bound to the function's parameters)."""
        call_id = uuid7()
        ctx = current_run()
        tools = ctx.tools if ctx is not None else None
        policies = self.policies or default_policies()
        policy = self.policy(policies)
        idempotent = self.idempotent if policy.idempotent is None else policy.idempotent
        if arguments is _BOUND:
            try:
                bound = self.signature.bind_partial(*args, **kwargs)
                arguments = {k: v for k, v in bound.arguments.items() if k not in _SKIPPED}
            except TypeError:  # the call will fail the same way: record what was passed
                arguments = {"args": list(args), "kwargs": {k: v for k, v in kwargs.items() if k not in _SKIPPED}}
        recorded = self.redactor(_jsonable(arguments)) if self.capture else None
        decision: Replay | Live | Attention = Live()
        position: int | None = None
        default_key = call_id
        fingerprint: str | None = None
        if tools is not None:
            digest = tool_hash(self.name, recorded)
            fingerprint = digest.removeprefix("sha256:")  # the runaway guard's, of the same writing
            place = tools.place(digest)
            position = place.position
            decision = decide(place, idempotent=idempotent, captured=self.capture)
            default_key = tools.key(place, digest)
        key = kwargs.get("idempotency_key")
        if self.takes_key and key is None:
            try:
                key = self.signature.bind_partial(*args, **kwargs).arguments.get("idempotency_key")
            except TypeError:
                key = None
            if key is None:
                key = default_key
                kwargs = {**kwargs, "idempotency_key": key}
        item = WorkItem.made(
            call_id=call_id, kind="tool", tool=self.name, arguments=recorded,
            idempotency_key=str(key) if key is not None else (default_key if position is not None else None),
            runid=ctx.run_id if ctx is not None else None, agentid=ctx.agent if ctx is not None else None,
            traceparent=new_traceparent(ctx.trace_id if ctx is not None else None), submitted_at=time.time())
        call = ToolCall(policies, policy, item, idempotent, engine=partial(hub.engine, policies),
                        runaway=hub.runaway, source=self.source, retry_on=self.retry_on, position=position,
                        fingerprint=fingerprint)
        timeout = self.timeout_s if self.timeout_s is not None else policy.tool_timeout_s
        return Prepared(call, kwargs, decision, timeout)

    def invoked(self, started: float, result: Any = None, error: BaseException | None = None) -> Invoked:
        duration = (time.perf_counter() - started) * 1000
        if error is None:
            return Invoked(duration, result, self.redactor(_jsonable(result)) if self.capture else None)
        failure = classify_exception(error)
        failure = dataclasses.replace(failure, message=self.redactor.text(failure.message))
        return Invoked(duration, error=error, failure=failure)

    def cancelled(self, call: ToolCall, attempt: int) -> Event:
        error = ErrorInfo(type="Cancelled", message="the caller was cancelled while the tool ran",
                          code="client_cancelled", retryable=False)
        return call.event(ToolCallFailed(call_id=call.item.call_id, tool=self.name, attempts=attempt, error=error))

    def timed_out(self, timeout: float) -> TimeoutError:
        return TimeoutError(f"tool {self.name!r} did not finish within its timeout of {timeout:g} s")


@dataclasses.dataclass
class Prepared:
    """One call about to be made: the loop's view of it, the arguments to pass, and what the run's
    journal says to do (run it, return the recorded result, or stop for attention)."""

    call: ToolCall
    kwargs: dict[str, Any]
    decision: Replay | Live | Attention
    timeout_s: float | None

    @property
    def journaled(self) -> bool:
        """In a run: the start is acked before the tool runs, the end before the caller gets it."""
        return self.call.position is not None

    def replayed_events(self, replay: Replay) -> list[Event]:
        """``requested``, then ``call.replayed`` with the recorded result (the journal's record of the call)."""
        item, entry = self.call.item, replay.entry
        return [self.call.requested_event(), self.call.event(CallReplayed(
            call_id=item.call_id, call_kind="tool", via="journal", original_call_id=entry.call_id,
            original_event_id=entry.event_id, position=replay.position, request_hash=entry.request_hash,
            tool=entry.tool, response=entry.response), id=terminal_id(item.call_id, "replayed"))]

    def attention(self, attention: Attention) -> tuple[Event, NeedsAttention]:
        entry, item = attention.entry, self.call.item
        tool = entry.tool or item.tool or "?"
        event = self.call.event(RunNeedsAttention(
            call_id=entry.call_id, tool=tool, position=attention.position, arguments=entry.arguments,
            idempotency_key=item.idempotency_key, reason=attention.reason))
        return event, NeedsAttention(item.runid or "?", entry.call_id, tool, attention.position, entry.arguments,
                                     attention.reason)


def _flush_sync(hub: Hub) -> None:
    """Wait for the acks of what was emitted; a sync tool on the bus's own loop thread cannot wait."""
    with contextlib.suppress(LoopThreadError):
        hub.flush_sync()


def _in_thread(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float) -> Any:
    """A sync tool under a timeout: it runs in a thread of its own, which is left behind if it overruns."""
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tether-tool")
    try:
        future = pool.submit(contextvars.copy_context().run, fn, *args, **kwargs)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError from None
    finally:
        pool.shutdown(wait=False)


async def _run_async(spec: ToolSpec, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...],
                     kwargs: dict[str, Any], arguments: Any = _BOUND) -> Any:
    """``await fn(*args, **kwargs)`` as one call of the tool ``spec``: journal, policy, events."""
    try:
        hub = spec.hub_nowait()
        if hub is None:
            hub = await asyncio.to_thread(background_hub)
    except Exception:  # no bus: the tool still runs
        return await fn(*args, **kwargs)
    prepared = spec.prepare(hub, args, kwargs, arguments)
    call, kwargs, decision, timeout = prepared.call, prepared.kwargs, prepared.decision, prepared.timeout_s
    if isinstance(decision, Replay):
        for event in prepared.replayed_events(decision):
            await hub.aemit(event)
        return decision.entry.response
    if isinstance(decision, Attention):
        event, error = prepared.attention(decision)
        await hub.aemit(event)
        await hub.flush()
        raise error
    attempt = 0

    async def io(effect: Effect) -> Invoked:
        nonlocal attempt
        assert isinstance(effect, Invoke)
        attempt = effect.attempt  # in a run, the driver waited for the start's ack (``awaits_ack``)
        started = time.perf_counter()
        try:
            if (recorded := current_recorded()) is not None:  # a replay: the result is in the log
                return spec.invoked(started, recorded.take(spec.name))
            if timeout is None:
                return spec.invoked(started, await fn(*args, **kwargs))
            try:
                return spec.invoked(started, await asyncio.wait_for(fn(*args, **kwargs), timeout))
            except TimeoutError:
                return spec.invoked(started, error=spec.timed_out(timeout))
        except Exception as exc:
            return spec.invoked(started, error=exc)

    try:
        done = await drive_async(hub, tool_flow(call), io)
    except asyncio.CancelledError:
        hub.emit(spec.cancelled(call, attempt))
        raise
    if done.error is not None:
        if prepared.journaled:  # the failure and its dead letter are in the log before the caller acts on it
            await hub.flush()
        raise done.error
    return done.result  # its completion was acked by the driver (``awaits_ack``)


def _run_sync(spec: ToolSpec, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
              arguments: Any = _BOUND) -> Any:
    """``fn(*args, **kwargs)`` as one call of the tool ``spec``: journal, policy, events."""
    try:
        hub = spec.hub_nowait() or background_hub()
    except Exception:
        return fn(*args, **kwargs)
    prepared = spec.prepare(hub, args, kwargs, arguments)
    call, kwargs, decision, timeout = prepared.call, prepared.kwargs, prepared.decision, prepared.timeout_s
    if isinstance(decision, Replay):
        for event in prepared.replayed_events(decision):
            hub.emit(event)
        return decision.entry.response
    if isinstance(decision, Attention):
        event, error = prepared.attention(decision)
        hub.emit(event)
        _flush_sync(hub)
        raise error

    def io(effect: Effect) -> Invoked:
        assert isinstance(effect, Invoke)
        started = time.perf_counter()
        try:
            if (recorded := current_recorded()) is not None:  # a replay: the result is in the log
                return spec.invoked(started, recorded.take(spec.name))
            if timeout is None:
                return spec.invoked(started, fn(*args, **kwargs))
            try:
                return spec.invoked(started, _in_thread(fn, args, kwargs, timeout))
            except TimeoutError:
                return spec.invoked(started, error=spec.timed_out(timeout))
        except Exception as exc:
            return spec.invoked(started, error=exc)

    done = drive_sync(hub, tool_flow(call), io)
    if done.error is not None:
        if prepared.journaled:
            _flush_sync(hub)
        raise done.error
    return done.result


def _wrap(spec: ToolSpec) -> Callable[..., Any]:
    fn = spec.fn
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            return await _run_async(spec, fn, args, kwargs)

        run_async.__tether_tool__ = spec  # type: ignore[attr-defined]
        return run_async

    @functools.wraps(fn)
    def run_sync(*args: Any, **kwargs: Any) -> Any:
        return _run_sync(spec, fn, args, kwargs)

    run_sync.__tether_tool__ = spec  # type: ignore[attr-defined]
    return run_sync


@overload
def tool(fn: F, /) -> F: ...


@overload
def tool(*, name: str | None = None, idempotent: bool = False, retries: int | None = None,
         retry_on: Iterable[type[BaseException]] = (), timeout_s: float | None = None, bus: Bus | None = None,
         policies: PolicySet | None = None, capture: bool = True,
         redact: Redactor | Hook | Iterable[str] | None = None) -> Callable[[F], F]: ...


def tool(fn: Callable[..., Any] | None = None, /, *, name: str | None = None, idempotent: bool = False,
         retries: int | None = None, retry_on: Iterable[type[BaseException]] = (), timeout_s: float | None = None,
         bus: Bus | None = None, policies: PolicySet | None = None, capture: bool = True,
         redact: Redactor | Hook | Iterable[str] | None = None) -> Any:
    """Record a tool's calls: ``@tether.tool`` or ``@tether.tool(name=..., idempotent=True, retries=2)``.

    ``retries`` (extra attempts, so ``retries=2`` is up to 3 calls) overrides the route
    ``tool:<name>``'s ``retry.max_attempts`` and needs ``idempotent=True``. ``retry_on``
    names exceptions to treat as transient. ``timeout_s`` bounds each attempt (else the
    route's ``tool_timeout_s``); a sync tool under a timeout runs in a thread of its own.
    The route's ``idempotent`` (``tether.toml``) overrides ``idempotent``. Events go to ``bus``,
    else the current run's bus, else tether's background bus; ``capture=False`` records no
    arguments or results (so a resumed run cannot replay the call's result).

    Inside a run, each call has a position (the n-th tool call of the run) and the idempotency
    key ``<run id>:<position>``, and its start and end are acked by the log around it; a run
    opened with ``resume=True`` returns the recorded result of a call that completed before the
    crash, re-runs an idempotent call the process died in, and raises :class:`NeedsAttention`
    for a call it died in that is not idempotent (docs/resume.md).
    """
    if retries is not None and retries < 0:
        raise ValueError(f"retries must be 0 or more, got {retries}")
    if timeout_s is not None and not timeout_s > 0:
        raise ValueError(f"timeout_s must be a number of seconds above 0, got {timeout_s}")
    if retries and not idempotent:
        raise ValueError("tether retries only idempotent tools: pass idempotent=True with retries=")

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(f):
            raise TypeError(f"@tether.tool decorates a function, not {type(f).__name__}")
        tool_name = name or getattr(f, "__name__", None) or repr(f)
        spec = ToolSpec(f, tool_name, idempotent, retries, tuple(retry_on), bus, policies, capture,
                        redactor_of(redact), timeout_s)
        return _wrap(spec)

    if fn is not None:
        return decorate(fn)
    return decorate


class FrameworkTools:
    """Tools a framework runs itself, called under tether's tool policy and the run's journal, as
    ``@tether.tool`` calls are: an adapter's wrap point hands each call here with the tool's name,
    its arguments (what is recorded and hashed for the journal) and a function that runs it.

    ``idempotent`` names the tools that may be retried and re-run after a crash (the route
    ``tool:<name>``'s ``idempotent`` in ``tether.toml`` overrides it either way); ``timeout_s``
    bounds each attempt (else the route's ``tool_timeout_s``). A completed call of a resumed run
    returns its recorded result without running; an error the tool raises reaches the framework
    as the tool's own error, after the policy's retries.
    """

    def __init__(self, source: str = SOURCE, *, idempotent: Iterable[str] = (), timeout_s: float | None = None,
                 bus: Bus | None = None, policies: PolicySet | None = None, capture: bool = True,
                 redact: Redactor | Hook | Iterable[str] | None = None) -> None:
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"timeout_s must be a number of seconds above 0, got {timeout_s}")
        self.source = source
        self.idempotent = frozenset(idempotent)
        self._options = (timeout_s, bus, policies, capture, redactor_of(redact))
        self._specs: dict[str, ToolSpec] = {}

    def spec(self, name: str) -> ToolSpec:
        """The tool ``name``'s spec, made once."""
        spec = self._specs.get(name)
        if spec is None:
            timeout_s, bus, policies, capture, redactor = self._options
            spec = ToolSpec(_framework_tool, name or "tool", name in self.idempotent, None, (), bus, policies,
                            capture, redactor, timeout_s, self.source)
            self._specs[name] = spec
        return spec

    def timeout(self, name: str) -> float | None:
        """How long each attempt of the tool ``name`` may take (``timeout_s``, else the route's
        ``tool_timeout_s``): what an adapter tells the framework when a call timed out."""
        spec = self.spec(name)
        if spec.timeout_s is not None:
            return spec.timeout_s
        return spec.policy(spec.policies or default_policies()).tool_timeout_s

    async def acall(self, name: str, arguments: Mapping[str, Any] | Any, run: Callable[[], Awaitable[R]]) -> R:
        """``await run()`` as one call of the tool ``name`` with ``arguments``."""
        result: R = await _run_async(self.spec(name), run, (), {}, arguments)
        return result

    def call(self, name: str, arguments: Mapping[str, Any] | Any, run: Callable[[], R]) -> R:
        """``run()`` as one call of the tool ``name`` with ``arguments`` (a sync tool)."""
        result: R = _run_sync(self.spec(name), run, (), {}, arguments)
        return result


def _framework_tool() -> None:
    """The placeholder a framework tool's spec is made with: its calls pass their own function."""

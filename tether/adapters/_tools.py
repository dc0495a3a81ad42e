"""``@tether.tool``: a function's calls as events, retried only when it is idempotent.

Sync and async functions alike: each call records its arguments, then its result and
duration, or its error (``tool.call.requested`` / ``attempt_failed`` / ``completed`` /
``failed``, the failure also dead-lettered). A tool marked ``idempotent=True`` is retried
under the route ``tool:<name>``'s policy when it fails transiently (timeouts, connection
errors, an HTTP 429/5xx it raised, or any exception in ``retry_on``); any other tool runs
once, because repeating a side effect is the caller's decision. A tool with an
``idempotency_key`` parameter receives the call id there (unless the caller passed one),
so a retried or redriven call can be recognised downstream.

Arguments and results are recorded as JSON (pydantic's encoder, ``repr`` for the rest),
redacted; large ones go to the object store by the publisher's claim check.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import time
from collections.abc import Callable, Iterable
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
    tool_flow,
)
from tether.schemas import ErrorInfo, Event, ToolCallFailed, uuid7

from ._core import drive_async, drive_sync
from ._hub import SOURCE, Hub, background_hub, background_hub_nowait, default_policies
from ._recorded import current_recorded
from ._redact import Hook, Redactor, redactor_of
from ._runs import current_run, new_traceparent

__all__ = ["RunawayError", "tool"]

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])
_SKIPPED = frozenset({"self", "cls", "idempotency_key"})


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

    def prepare(self, hub: Hub, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[ToolCall, dict[str, Any]]:
        call_id = uuid7()
        key = kwargs.get("idempotency_key")
        if self.takes_key and key is None:
            try:
                bound = self.signature.bind_partial(*args, **kwargs)
                key = bound.arguments.get("idempotency_key")
            except TypeError:
                key = None
            if key is None:
                key = call_id
                kwargs = {**kwargs, "idempotency_key": key}
        try:
            bound = self.signature.bind_partial(*args, **kwargs)
            arguments: Any = {k: v for k, v in bound.arguments.items() if k not in _SKIPPED}
        except TypeError:  # the call will fail the same way: record what was passed
            arguments = {"args": list(args), "kwargs": {k: v for k, v in kwargs.items() if k not in _SKIPPED}}
        recorded = self.redactor(_jsonable(arguments)) if self.capture else None
        ctx = current_run()
        policies = self.policies or default_policies()
        item = WorkItem.model_construct(
            call_id=call_id, kind="tool", tool=self.name, arguments=recorded,
            idempotency_key=str(key) if key is not None else None,
            runid=ctx.run_id if ctx is not None else None, agentid=ctx.agent if ctx is not None else None,
            traceparent=new_traceparent(ctx.trace_id if ctx is not None else None), submitted_at=time.time())
        return ToolCall(policies, self.policy(policies), item, self.idempotent, engine=partial(hub.engine, policies),
                        runaway=hub.runaway, source=SOURCE, retry_on=self.retry_on), kwargs

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


def _wrap(spec: ToolSpec) -> Callable[..., Any]:
    fn = spec.fn
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            try:
                hub = spec.hub_nowait()
                if hub is None:
                    hub = await asyncio.to_thread(background_hub)
            except Exception:  # no bus: the tool still runs
                return await fn(*args, **kwargs)
            call, kwargs = spec.prepare(hub, args, kwargs)
            attempt = 0

            async def io(effect: Effect) -> Invoked:
                nonlocal attempt
                assert isinstance(effect, Invoke)
                attempt = effect.attempt
                started = time.perf_counter()
                try:
                    if (recorded := current_recorded()) is not None:  # a replay: the result is in the log
                        return spec.invoked(started, recorded.take(spec.name))
                    return spec.invoked(started, await fn(*args, **kwargs))
                except Exception as exc:
                    return spec.invoked(started, error=exc)

            try:
                done = await drive_async(hub, tool_flow(call), io)
            except asyncio.CancelledError:
                hub.emit(spec.cancelled(call, attempt))
                raise
            if done.error is not None:
                raise done.error
            return done.result

        run_async.__tether_tool__ = spec  # type: ignore[attr-defined]
        return run_async

    @functools.wraps(fn)
    def run_sync(*args: Any, **kwargs: Any) -> Any:
        try:
            hub = spec.hub_nowait() or background_hub()
        except Exception:
            return fn(*args, **kwargs)
        call, kwargs = spec.prepare(hub, args, kwargs)

        def io(effect: Effect) -> Invoked:
            assert isinstance(effect, Invoke)
            started = time.perf_counter()
            try:
                if (recorded := current_recorded()) is not None:  # a replay: the result is in the log
                    return spec.invoked(started, recorded.take(spec.name))
                return spec.invoked(started, fn(*args, **kwargs))
            except Exception as exc:
                return spec.invoked(started, error=exc)

        done = drive_sync(hub, tool_flow(call), io)
        if done.error is not None:
            raise done.error
        return done.result

    run_sync.__tether_tool__ = spec  # type: ignore[attr-defined]
    return run_sync


@overload
def tool(fn: F, /) -> F: ...


@overload
def tool(*, name: str | None = None, idempotent: bool = False, retries: int | None = None,
         retry_on: Iterable[type[BaseException]] = (), bus: Bus | None = None, policies: PolicySet | None = None,
         capture: bool = True, redact: Redactor | Hook | Iterable[str] | None = None) -> Callable[[F], F]: ...


def tool(fn: Callable[..., Any] | None = None, /, *, name: str | None = None, idempotent: bool = False,
         retries: int | None = None, retry_on: Iterable[type[BaseException]] = (), bus: Bus | None = None,
         policies: PolicySet | None = None, capture: bool = True,
         redact: Redactor | Hook | Iterable[str] | None = None) -> Any:
    """Record a tool's calls: ``@tether.tool`` or ``@tether.tool(name=..., idempotent=True, retries=2)``.

    ``retries`` (extra attempts, so ``retries=2`` is up to 3 calls) overrides the route
    ``tool:<name>``'s ``retry.max_attempts`` and needs ``idempotent=True``. ``retry_on``
    names exceptions to treat as transient. Events go to ``bus``, else the current run's
    bus, else tether's background bus; ``capture=False`` records no arguments or results.
    """
    if retries is not None and retries < 0:
        raise ValueError(f"retries must be 0 or more, got {retries}")
    if retries and not idempotent:
        raise ValueError("tether retries only idempotent tools: pass idempotent=True with retries=")

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(f):
            raise TypeError(f"@tether.tool decorates a function, not {type(f).__name__}")
        tool_name = name or getattr(f, "__name__", None) or repr(f)
        spec = ToolSpec(f, tool_name, idempotent, retries, tuple(retry_on), bus, policies, capture,
                        redactor_of(redact))
        return _wrap(spec)

    if fn is not None:
        return decorate(fn)
    return decorate

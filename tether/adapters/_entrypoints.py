"""``@tether.entrypoint``: the function that runs an agent, so a run it started can be resumed.

An entry point takes the run's input and runs the agent inside ``tether.run``, holding the run's
lease (``_lease``): called, it starts a run; :meth:`Entrypoint.resume` (``tether resume RUN``) runs
it again under the same run id with the input recorded in ``run.started`` and ``resume=True``.
Entry points are found by agent name: registered by the decorator, or named in ``tether.toml``.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any, overload

from pydantic import BaseModel, ConfigDict, JsonValue

from tether.bus import Bus
from tether.schemas import uuid7

from ._hub import Hub, background_hub, background_hub_nowait
from ._lease import RunLease
from ._runs import read_run, run

__all__ = ["Entrypoint", "FinishedMeanwhile", "ResumeSection", "entrypoint", "entrypoint_for"]

_registry: dict[str, Entrypoint] = {}


class ResumeSection(BaseModel):
    """``[resume]`` of ``tether.toml``: resuming runs whose process died."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    entrypoints: dict[str, str] = {}
    """Agent name to ``"module:function"``: the entry point ``tether resume`` calls for that agent's runs
    (an ``@tether.entrypoint`` function, or a plain one taking the run's input)."""


class FinishedMeanwhile(RuntimeError):
    """A run to resume finished before its lease was taken (another resumer finished it): nothing to do."""

    def __init__(self, run_id: str, status: str) -> None:
        self.run_id = run_id
        self.status = status
        super().__init__(f"run {run_id} finished ({status}) before this resume took its lease: nothing to resume")


async def _check_open(bus: Bus, run_id: str) -> None:
    """Under the lease: a run someone finished since the caller looked is not run again."""
    from tether.schemas import RunFinished

    for event in reversed(await read_run(bus, run_id)):
        if isinstance(event.data, RunFinished):
            raise FinishedMeanwhile(run_id, event.data.status)


class Entrypoint:
    """An agent's entry point: ``fn(input)`` (sync or async) inside a run of ``agent`` under its lease."""

    def __init__(self, fn: Callable[[Any], Any], agent: str, *, bus: Bus | None = None) -> None:
        self.fn = fn
        self.agent = agent
        self.bus = bus
        self.is_async = inspect.iscoroutinefunction(fn)
        self.__name__ = getattr(fn, "__name__", agent)
        self.__doc__ = getattr(fn, "__doc__", None)

    def __call__(self, input: JsonValue = None, *, run_id: str | None = None) -> Any:
        """Start a run (``run_id``, else a new one); a coroutine when ``fn`` is async."""
        if self.is_async:
            return self.arun(input, run_id=run_id or uuid7())
        return self.run(input, run_id=run_id or uuid7())

    def resume(self, run_id: str, input: JsonValue = None, *, bus: Bus | None = None, if_open: bool = False) -> Any:
        """Run ``run_id`` again from its log (``tether.run(resume=True)``); a coroutine when ``fn`` is async.
        ``if_open``: once the lease is held, a run that finished raises :class:`FinishedMeanwhile` (two resumers
        that both saw it open run it once: the second finds the first's ``run.finished``)."""
        if self.is_async:
            return self.arun(input, run_id=run_id, resume=True, bus=bus, if_open=if_open)
        return self.run(input, run_id=run_id, resume=True, bus=bus, if_open=if_open)

    def run(self, input: JsonValue, *, run_id: str, resume: bool = False, bus: Bus | None = None,
            if_open: bool = False) -> Any:
        bus = bus or self.bus
        hub = Hub.of(bus) if bus is not None else background_hub()
        lease = hub.call_sync(lambda: RunLease.take(hub.bus, run_id))
        try:
            if if_open:
                hub.call_sync(lambda: _check_open(hub.bus, run_id))
            with run(agent=self.agent, run_id=run_id, input=input, resume=resume, bus=hub.bus) as opened:
                opened.output = self.fn(input)
                return opened.output
        finally:
            hub.call_sync(lease.release, drain=True)  # its events (run.finished) are out before the next holder looks

    async def arun(self, input: JsonValue, *, run_id: str, resume: bool = False, bus: Bus | None = None,
                   if_open: bool = False) -> Any:
        bus = bus or self.bus
        hub = Hub.of(bus) if bus is not None else background_hub_nowait()
        if hub is None:
            hub = await asyncio.to_thread(background_hub)
        lease = await hub.call(lambda: RunLease.take(hub.bus, run_id))
        try:
            if if_open:
                await hub.call(lambda: _check_open(hub.bus, run_id))
            async with run(agent=self.agent, run_id=run_id, input=input, resume=resume, bus=hub.bus) as opened:
                opened.output = await self.fn(input)
                return opened.output
        finally:
            await hub.call(lease.release, drain=True)

    def __repr__(self) -> str:
        return f"<tether.entrypoint {self.agent}: {self.__name__}>"


@overload
def entrypoint(fn: Callable[[Any], Any], /) -> Entrypoint: ...


@overload
def entrypoint(*, agent: str | None = None, bus: Bus | None = None) -> Callable[[Callable[[Any], Any]], Entrypoint]: ...


def entrypoint(fn: Callable[[Any], Any] | None = None, /, *, agent: str | None = None,
               bus: Bus | None = None) -> Any:
    """Register ``fn(input)`` as the entry point of ``agent`` (default: its name): ``@tether.entrypoint``
    or ``@tether.entrypoint(agent="bot")``. Calling it starts a run; ``tether resume RUN`` resumes one."""

    def decorate(f: Callable[[Any], Any]) -> Entrypoint:
        if not callable(f):
            raise TypeError(f"@tether.entrypoint decorates a function, not {type(f).__name__}")
        entry = Entrypoint(f, agent or str(getattr(f, "__name__", "agent")), bus=bus)
        _registry[entry.agent] = entry
        return entry

    return decorate(fn) if fn is not None else decorate


def entrypoint_for(agent: str | None, *, named: str | None = None,
                   entrypoints: Mapping[str, str] | None = None) -> Entrypoint:
    """The entry point of ``agent``'s runs: ``named`` (``"module:function"``), else one registered for it,
    else ``[resume.entrypoints]``. ``LookupError`` saying how to name one when there is none."""
    path = named or (entrypoints or {}).get(agent or "")
    if path is None:
        found = _registry.get(agent or "")
        if found is not None:
            return found
        raise LookupError(f"no entry point for agent {agent!r}: decorate the function that runs it with "
                          f"@tether.entrypoint(agent={agent!r}) in a module tether.toml names "
                          f"([resume.entrypoints] {agent or 'agent'} = \"module:function\"), or pass "
                          "--entrypoint module:function")
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise LookupError(f"entry point {path!r}: write it as \"module:function\" (e.g. \"myagent.main:handle\")")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` would: the project's modules are importable
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise LookupError(f"entry point {path!r} cannot be loaded: {exc}") from None
    if isinstance(target, Entrypoint):
        return target
    if not callable(target):
        raise LookupError(f"entry point {path!r} is a {type(target).__name__}, not a function")
    return Entrypoint(target, agent or str(getattr(target, "__name__", "agent")))

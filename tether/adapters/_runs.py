"""Runs: ``with tether.run(agent="bot"):`` puts every call inside it under one run.

The current run lives in a :mod:`contextvars` variable, so it follows ``await``, tasks
(which copy the context) and ``contextvars.copy_context().run`` into threads. A run opened
inside another is a sub-agent's: its ``run.started`` names the outer run as
``parent_run_id`` and it continues the outer run's trace.

A run started again with ``resume=True`` (and the same ``run_id``) reads what its calls
recorded into a journal (``tether.journal``): each call that asks what was asked before is
answered from the record, until the first that asks something else (see docs/resume.md).

Trace context is W3C ``traceparent``: a run continues an incoming one (``traceparent=``)
or its parent run's trace, else starts a trace; every LLM and tool call inside it gets a
new span id in that trace, on its events and (for LLM calls) on the upstream request.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import math
import re
import secrets
import time
import uuid
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

from pydantic import JsonValue

from tether.bus import Bus, event_filter, read_subject
from tether.middleware import Cursor, load_journal
from tether.schemas import ErrorInfo, Event, RunFinished, RunStarted, plain_json, uuid7

from ._hub import Hub, background_hub, background_hub_nowait
from ._redact import Redactor, redactor_of
from ._tooljournal import ToolJournal

__all__ = ["NeedsAttention", "Run", "RunContext", "bound", "current_run", "read_run", "run"]

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
SOURCE = "urn:tether:adapter"
_DERIVED = uuid.UUID("0f6c5a8e-3d1b-4c7e-9a52-6b0e2f1d8c34")


def trace_of(traceparent: str | None) -> str | None:
    """The trace id of a valid W3C ``traceparent``, else ``None``."""
    if not traceparent:
        return None
    match = _TRACEPARENT.match(traceparent.strip().lower())
    if match is None or match[1] == "0" * 32 or match[2] == "0" * 16:
        return None
    return match[1]


def new_traceparent(trace_id: str | None = None) -> str:
    """``00-<trace id>-<new span id>-01``: a new span in ``trace_id`` (or in a new trace)."""
    return f"00-{trace_id or secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


@dataclass(frozen=True)
class RunContext:
    """What calls inside a run inherit."""

    run_id: str
    agent: str | None
    trace_id: str
    traceparent: str
    parent_run_id: str | None = None
    hub: Hub | None = field(default=None, repr=False, compare=False)
    journal: Cursor | None = field(default=None, repr=False, compare=False)
    """A resumed run's journal: its calls are matched against what the run recorded."""
    tools: ToolJournal | None = field(default=None, repr=False, compare=False)
    """The run's tool calls: their positions and idempotency keys, and what a resumed run does with them."""
    derived: Iterator[int] = field(default_factory=itertools.count, repr=False, compare=False)
    """Numbers the runs adapters open inside this one (``Run(derive=...)``)."""
    parent: RunContext | None = field(default=None, repr=False, compare=False)
    """The run this one was opened in (where the caller is again once it ends)."""


class NeedsAttention(RuntimeError):
    """A resumed run stopped at a tool call whose start was recorded and whose end was not (the process
    died inside it), and which is not idempotent: resolve it (``tether runs resolve``), then resume."""

    def __init__(self, run_id: str, call_id: str, tool: str, position: int, arguments: Any, reason: str) -> None:
        self.run_id = run_id
        self.call_id = call_id
        self.tool = tool
        self.position = position
        self.arguments = arguments
        self.reason = reason
        super().__init__(
            f"run {run_id} needs attention: tool call {position} ({tool}, call {call_id}): {reason}. Say whether it "
            f"happened: `tether runs resolve {run_id} --happened --result JSON` or `--not-happened`, then resume "
            "the run")


async def read_run(bus: Bus, run_id: str, *, timeout: float = 10.0) -> list[Event]:
    """Every event of ``run_id`` now in the log, in log order (an event that does not decode is skipped)."""
    return [r.event for r in await read_subject(bus, event_filter(run=run_id), timeout=timeout)
            if r.event is not None]


_current: contextvars.ContextVar[RunContext | None] = contextvars.ContextVar("tether_run", default=None)


# runs that ended in another context than the one they were opened in (a framework reporting a
# run's end from a task of its own): the context they were opened in still names them
_exited_elsewhere: weakref.WeakSet[RunContext] = weakref.WeakSet()


def current_run() -> RunContext | None:
    """The run the calling code is in, if any."""
    ctx = _current.get()
    while ctx is not None and _exited_elsewhere and ctx in _exited_elsewhere:
        ctx = ctx.parent
    return ctx


@contextlib.contextmanager
def bound(ctx: RunContext) -> Iterator[RunContext]:
    """Calls inside are made under ``ctx`` without opening a run (no ``run.*`` events): for a
    run someone else frames, such as an agent calling through the gateway."""
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)


class Run:
    """A run, as a sync or async context manager. Set ``output`` before it ends to record it."""

    def __init__(self, *, agent: str | None = None, run_id: str | None = None, name: str | None = None,
                 traceparent: str | None = None, metadata: Mapping[str, JsonValue] | None = None,
                 input: JsonValue = None, tags: tuple[str, ...] = (), bus: Bus | None = None,
                 redact: Redactor | None = None, resume: bool = False, derive: str | None = None) -> None:
        if resume and not run_id:
            raise ValueError("resume=True needs the id of the run to resume: tether.run(run_id=..., resume=True) "
                             "(give each run an id you can find again, such as a job or request id)")
        self.resume = resume
        self.derive = None if run_id else derive
        self.journal: Cursor | None = None
        self.agent = agent
        self.run_id = run_id or uuid7()
        self.name = name
        self.incoming = traceparent
        self.metadata = dict(metadata or {})
        self.input = input
        self.tags = tuple(tags)
        self.output: JsonValue = None
        self.status: Literal["ok", "error", "cancelled", "needs_attention"] | None = None
        self._bus = bus
        self._redact = redactor_of(redact)
        self._token: contextvars.Token[RunContext | None] | None = None
        self._started = 0.0
        self.context: RunContext | None = None

    # -- the two shells ------------------------------------------------------------------------

    def __enter__(self) -> Run:
        hub = self._hub_nowait() or background_hub()
        self._derive_id()
        if self.resume:
            self.journal = hub.call_sync(lambda: _cursor(hub, self.run_id), timeout=60.0)
        hub.emit(self._open(hub))
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        hub, event = self._close(exc)
        if event is not None:
            hub.emit(event)

    async def __aenter__(self) -> Run:
        hub = self._hub_nowait() or background_hub_nowait()
        if hub is None:  # the background hub is started (and may connect) in a thread, once
            hub = await asyncio.to_thread(background_hub)
        self._derive_id()
        if self.resume:
            self.journal = await hub.call(lambda: _cursor(hub, self.run_id))
        await hub.aemit(self._open(hub))
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        hub, event = self._close(exc)
        if event is not None:
            await hub.aemit(event)

    # -- the logic -----------------------------------------------------------------------------

    def _derive_id(self) -> None:
        """A run an adapter opens inside another (``derive``, a LangGraph graph's, an Agents SDK
        agent's) takes an id derived from the enclosing run's and its place among such runs,
        the same when the enclosing run starts again; inside a resumed run it resumes too."""
        parent = current_run()
        if self.derive is None or parent is None:
            return
        self.run_id = str(uuid.uuid5(_DERIVED, f"{parent.run_id}/{self.derive}/{next(parent.derived)}"))
        self.resume = self.resume or parent.journal is not None

    def _hub_nowait(self) -> Hub | None:
        if self._bus is not None:
            return Hub.of(self._bus)
        parent = current_run()
        return parent.hub if parent is not None else None

    def _open(self, hub: Hub) -> Event:
        parent = current_run()
        trace_id = trace_of(self.incoming) or (parent.trace_id if parent else None) or secrets.token_hex(16)
        agent = self.agent or (parent.agent if parent else None)
        ctx = RunContext(self.run_id, agent, trace_id, new_traceparent(trace_id),
                         parent.run_id if parent else None, hub, self.journal,
                         ToolJournal(self.run_id, self.journal), parent=parent)
        self.context = ctx
        self._token = _current.set(ctx)
        self._started = time.perf_counter()
        fields: dict[str, Any] = dict(name=self.name, parent_run_id=ctx.parent_run_id, input=self._redact(self.input),
                                      tags=self.tags, metadata=self._redact(self.metadata), resumed=self.resume)
        # the run's own values and JSON: checked here, not validated again (else as before)
        name, tags, metadata = fields["name"], fields["tags"], fields["metadata"]
        plain = ((name is None or type(name) is str) and (ctx.parent_run_id is None or type(ctx.parent_run_id) is str)
                 and type(tags) is tuple and all(type(tag) is str for tag in tags) and type(metadata) is dict
                 and type(fields["resumed"]) is bool and plain_json(metadata) and plain_json(fields["input"]))
        return Event.of((RunStarted.trusted if plain else RunStarted)(**fields),
                        runid=ctx.run_id, agentid=agent, traceparent=ctx.traceparent, source=SOURCE)

    def _close(self, exc: BaseException | None) -> tuple[Hub, Event | None]:
        ctx = self.context
        assert ctx is not None and ctx.hub is not None
        if self._token is not None:
            try:
                _current.reset(self._token)
            except ValueError:  # exited in another context than it was entered in: that one still names it
                _exited_elsewhere.add(ctx)
                _current.set(ctx.parent)
            self._token = None
        error = None
        if isinstance(exc, NeedsAttention):  # not finished: ``run.needs_attention`` says where it stopped
            self.status = "needs_attention"
            return ctx.hub, None
        if exc is None:
            self.status = "ok"
        elif isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | GeneratorExit):
            self.status = "cancelled"
        else:
            self.status = "error"
            error = ErrorInfo(type=type(exc).__name__, message=self._redact.text(str(exc))[:2000])
        duration = (time.perf_counter() - self._started) * 1000
        fields: dict[str, Any] = dict(status=self.status, duration_ms=duration, output=self._redact(self.output),
                                      error=error)
        plain = error is None and 0.0 <= duration < math.inf and plain_json(fields["output"])
        return ctx.hub, Event.of((RunFinished.trusted if plain else RunFinished)(**fields),
                                 runid=ctx.run_id, agentid=ctx.agent, traceparent=ctx.traceparent, source=SOURCE)

    def __repr__(self) -> str:
        return f"<tether.run {self.run_id} agent={self.agent!r} status={self.status}>"


async def _cursor(hub: Hub, run_id: str) -> Cursor:
    """The run's journal, once what this process recorded is in the log (an earlier attempt
    of the run may have been made here, its last events still queued)."""
    await hub.flush()
    return (await load_journal(hub.bus, run_id)).cursor()


def run(*, agent: str | None = None, run_id: str | None = None, name: str | None = None,
        traceparent: str | None = None, metadata: Mapping[str, Any] | None = None, input: JsonValue = None,
        tags: tuple[str, ...] = (), bus: Bus | None = None, redact: Redactor | None = None,
        resume: bool = False) -> Run:
    """A run of ``agent``: ``with tether.run(agent="bot"):`` or ``async with tether.run(...)``.

    ``run_id`` defaults to a new UUIDv7; ``traceparent`` continues an incoming W3C trace;
    a run opened inside another is its sub-run (``parent_run_id``). Events go to ``bus``,
    else the enclosing run's bus, else tether's background bus. ``run.started`` and
    ``run.finished`` (status ok, error or cancelled, duration, ``output``) frame the calls.

    ``resume=True`` starts the run ``run_id`` again after it was interrupted: what its calls
    recorded is read back, and each call that asks what the run asked before, in the same
    order, gets the recorded answer (a ``call.replayed`` event, no provider or tool call); from
    the first call that asks something else, every call runs live. A run with nothing recorded
    just runs, so ``resume=True`` with an id you can find again is safe on every start. A tool
    call the process died in runs again only if the tool is idempotent; otherwise the run stops
    with :class:`NeedsAttention` (no ``run.finished``) until ``tether runs resolve`` says what
    became of it (docs/resume.md).
    """
    return Run(agent=agent, run_id=run_id, name=name, traceparent=traceparent, metadata=metadata, input=input,
               tags=tags, bus=bus, redact=redact, resume=resume)

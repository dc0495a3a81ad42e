"""The OpenAI Agents SDK under tether: runs, handoffs and tool calls from its tracing (a processor
:func:`install` adds beside the others), function tools under tether's tool policy
(:func:`wrap_tools`), model calls through tether (:func:`use_default_client`), sessions in tether
(:class:`TetherSession`), memory put into the model's input (:func:`memory_filter`). The only
module of tether that imports ``agents``.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable, Collection, Iterable
from datetime import datetime
from typing import Any, TypeVar

from agents import Agent, AgentsException, FunctionTool, ToolTimeoutError, set_default_openai_client
from agents.run_config import CallModelData, ModelInputData
from agents.tracing import Span, Trace, TracingProcessor, add_trace_processor, get_current_span
from agents.tracing.span_data import AgentSpanData, FunctionSpanData, HandoffSpanData

from tether.adapters import Hub, NeedsAttention, Run, instrument
from tether.bus import Bus
from tether.middleware import PolicySet
from tether.schemas import uuid7

from ._frameworks import KvState, ObservedTool, inject_memory, key_token
from ._tools import FrameworkTools

__all__ = ["AgentRunError", "TetherSession", "TetherTracingProcessor", "ToolError", "ToolNeedsAttention", "install",
           "memory_filter", "use_default_client", "wrap_tools"]

SOURCE = "urn:tether:adapter:openai-agents"


class AgentRunError(Exception):
    """What the SDK reported on a span that ended in error, as ``run.finished``'s error."""


def _duration_ms(span: Span[Any]) -> float | None:
    try:
        started, ended = span.started_at, span.ended_at
        if started is None or ended is None:
            return None
        return max((datetime.fromisoformat(ended) - datetime.fromisoformat(started)).total_seconds() * 1000, 0.0)
    except ValueError:
        return None


def _arguments(raw: Any) -> Any:
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return raw


class _TraceRuns:
    """The runs of one SDK trace: the first agent's (the root) and one per handoff (children)."""

    def __init__(self, name: str | None) -> None:
        self.name = name
        self.root: Run | None = None
        self.children: dict[str, Run] = {}
        self.error: AgentRunError | None = None


class TetherTracingProcessor(TracingProcessor):
    """A trace (``Runner.run``) is a tether run named for its first agent; each agent handed off
    to is a child run; each function tool call is recorded. Called in the runner's own context,
    so the run it opens is the current run of the model calls and tools that follow."""

    def __init__(self) -> None:
        self._traces: dict[str, _TraceRuns] = {}
        self._wrapped: set[str] = set()  # function spans whose call a wrapped tool recorded itself

    def claim(self, span: Span[Any] | None) -> None:
        """The function span ``span``'s call is recorded by :func:`wrap_tools`'s wrapper: not observed again."""
        if span is not None and span.trace_id in self._traces:
            self._wrapped.add(span.span_id)

    def on_trace_start(self, trace: Trace) -> None:
        self._traces[trace.trace_id] = _TraceRuns(trace.name)

    def on_trace_end(self, trace: Trace) -> None:
        runs = self._traces.pop(trace.trace_id, None)
        if runs is None:
            return
        for child in runs.children.values():
            child.__exit__(None, None, None)
        if runs.root is not None:
            error = runs.error
            runs.root.__exit__(type(error) if error else None, error, None)

    def on_span_start(self, span: Span[Any]) -> None:
        runs = self._traces.get(span.trace_id)
        data = span.span_data
        if runs is None or not isinstance(data, AgentSpanData):
            return
        run = Run(agent=data.name, name=runs.name if runs.root is None else data.name,
                  metadata={"framework": "openai-agents", "trace_id": span.trace_id}, derive="openai-agents")
        try:
            run.__enter__()
        except Exception:  # no bus: the agent runs unrecorded
            return
        if runs.root is None:
            runs.root = run
        else:  # a handoff: the agent handed to runs as a child of the first
            runs.children[span.span_id] = run

    def on_span_end(self, span: Span[Any]) -> None:
        runs = self._traces.get(span.trace_id)
        data = span.span_data
        error = span.error
        if isinstance(data, FunctionSpanData):
            if span.span_id in self._wrapped:
                self._wrapped.discard(span.span_id)
                return
            observed = ObservedTool.start(data.name, _arguments(data.input), source=SOURCE)
            if observed is not None:
                if error is not None:
                    observed.failed(AgentRunError(error.get("message", "tool failed")), _duration_ms(span))
                else:
                    observed.completed(data.output, _duration_ms(span))
            return
        if runs is None:
            return
        if isinstance(data, AgentSpanData):
            failure = AgentRunError(error.get("message", "agent failed")) if error is not None else None
            child = runs.children.pop(span.span_id, None)
            if child is not None:
                child.__exit__(type(failure) if failure else None, failure, None)
            elif failure is not None:
                runs.error = failure
        elif isinstance(data, HandoffSpanData) and error is not None:
            runs.error = AgentRunError(error.get("message", "handoff failed"))

    def shutdown(self) -> None:
        pass

    def force_flush(self) -> None:
        pass


_PROCESSOR = TetherTracingProcessor()
_installed = False


def install() -> None:
    """Add :class:`TetherTracingProcessor` to the SDK's trace processors (once). The SDK's own
    exporter stays; tracing must be on (``OPENAI_AGENTS_DISABLE_TRACING`` unset)."""
    global _installed
    if _installed:
        return
    add_trace_processor(_PROCESSOR)
    _installed = True


def use_default_client(client: Any = None, **options: Any) -> Any:
    """``client`` (default: a new ``AsyncOpenAI()`` from the environment) instrumented with
    ``tether.instrument`` options, its retries off, and set as the SDK's default client."""
    if client is None:
        from openai import AsyncOpenAI

        client = AsyncOpenAI()
    instrument(client, **options)
    set_default_openai_client(client)
    return client


class ToolNeedsAttention(NeedsAttention, AgentsException):
    """:class:`tether.NeedsAttention` as an SDK exception, so ``Runner.run`` raises it as it is (the SDK
    wraps any other exception a tool raises in its ``UserError``): catch ``tether.NeedsAttention``."""

    def __init__(self, cause: NeedsAttention) -> None:
        NeedsAttention.__init__(self, cause.run_id, cause.call_id, cause.tool, cause.position, cause.arguments,
                                cause.reason)
        self.run_data = None


class ToolError(Exception):
    """A tool call that failed inside the SDK's own failure handling (the tool's ``failure_error_function``,
    by default, turns its exception into the text the model gets, and marks the call's span with the
    error): recorded as a failed call whose message is that text, which the model still gets."""

    def __init__(self, answer: Any) -> None:
        super().__init__(str(answer)[:2000])
        self.answer = answer


A = TypeVar("A", bound=Agent[Any])
_ORIGINAL = "__tether_original__"


def wrap_tools(agent: A, *, idempotent: Iterable[str] = (), timeout_s: float | None = None,
               bus: Bus | None = None, policies: PolicySet | None = None) -> A:
    """Put the function tools of ``agent`` and of the agents it hands off to (``handoffs=[agent]``)
    under tether's tool policy: each call recorded under the run (in place of the trace's function
    span), retried only when its name is in ``idempotent`` (or the route ``tool:<name>`` says
    ``idempotent = true``), each attempt bounded by ``timeout_s`` (else the route's
    ``tool_timeout_s``), and a resumed run's completed call answered from the log without running.

    Each ``FunctionTool``'s ``on_invoke_tool`` is wrapped in place (again: the new options replace
    the old), and so are the tools of the agent's MCP servers (``mcp_servers=``), which the SDK makes
    anew for each turn: the agent's ``get_mcp_tools`` is wrapped to wrap them as they are made. A
    timeout comes back as the SDK's own (the tool's ``timeout_behavior``); a crash inside a
    non-idempotent call raises :class:`ToolNeedsAttention` from ``Runner.run``. Returns ``agent``."""
    tools = FrameworkTools(SOURCE, idempotent=idempotent, timeout_s=timeout_s, bus=bus, policies=policies)
    seen: set[int] = set()
    pending: list[Any] = [agent]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        for tool in current.tools:
            if isinstance(tool, FunctionTool):
                _wrap_tool(tool, tools)
        _wrap_mcp_tools(current, tools)
        pending.extend(h for h in current.handoffs if isinstance(h, Agent))
    return agent


def _wrap_mcp_tools(agent: Agent[Any], tools: FrameworkTools) -> None:
    """The agent's MCP tools (``FunctionTool``s the SDK makes from its servers' lists at each turn)
    wrapped as they are made."""
    original: Callable[[Any], Awaitable[list[Any]]] = getattr(agent.get_mcp_tools, _ORIGINAL, agent.get_mcp_tools)

    async def get_mcp_tools(run_context: Any) -> list[Any]:
        found = await original(run_context)
        for tool in found:
            if isinstance(tool, FunctionTool):
                _wrap_tool(tool, tools)
        return found

    setattr(get_mcp_tools, _ORIGINAL, original)
    agent.get_mcp_tools = get_mcp_tools


def _wrap_tool(tool: FunctionTool, tools: FrameworkTools) -> None:
    original: Callable[[Any, str], Awaitable[Any]] = getattr(tool.on_invoke_tool, _ORIGINAL, tool.on_invoke_tool)

    async def invoke(ctx: Any, input: str) -> Any:
        span = get_current_span()
        _PROCESSOR.claim(span)

        async def attempt() -> Any:
            before = span.error if span is not None else None
            answer = await original(ctx, input)
            if span is not None and span.error is not None and span.error is not before:
                raise ToolError(answer)  # the SDK made the tool's exception this answer: a failed call
            return answer

        try:
            return await tools.acall(tool.name, _arguments(input), attempt)
        except ToolError as failed:
            return failed.answer
        except NeedsAttention as attention:
            raise ToolNeedsAttention(attention) from attention
        except TimeoutError as error:  # tether's timeout, after the policy's retries: the SDK's own
            seconds = tools.timeout(tool.name)
            if seconds is None:  # the tool's own TimeoutError, raised past the SDK's failure handling
                raise
            timed_out = ToolTimeoutError(tool.name, seconds)
            if tool.timeout_behavior == "raise_exception":
                raise timed_out from error
            if tool.timeout_error_function is None:
                return str(timed_out)
            answer = tool.timeout_error_function(ctx, timed_out)
            return await answer if inspect.isawaitable(answer) else answer

    setattr(invoke, _ORIGINAL, original)
    tool.on_invoke_tool = invoke


def memory_filter(memory: Any, *, agents: Collection[str] | None = None, namespaces: Any = None,
                  token_budget: int = 500) -> Callable[[CallModelData[Any]], Any]:
    """A ``RunConfig(call_model_input_filter=...)``: for the agents named (default: every agent),
    what ``memory`` holds on the last user message is added to the instructions of each model
    call, and the retrieval is recorded as the tool call ``tether.memory.context``."""
    wanted = None if agents is None else frozenset(agents)

    async def filter_input(data: CallModelData[Any]) -> ModelInputData:
        model_data = data.model_data
        if wanted is not None and data.agent.name not in wanted:
            return model_data
        query = next((_text(item) for item in reversed(model_data.input)
                      if isinstance(item, dict) and item.get("role") == "user"), "")
        text = await inject_memory(memory, query, namespaces=namespaces, token_budget=token_budget)
        if not text:
            return model_data
        instructions = f"{model_data.instructions}\n\n" if model_data.instructions else ""
        return ModelInputData(input=model_data.input, instructions=f"{instructions}What you remember:\n{text}")

    return filter_input


def _text(item: dict[str, Any]) -> str:
    content = item.get("content", "")
    if isinstance(content, str):
        return content
    return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))


class TetherSession:
    """An SDK ``Session`` on tether: each item a key of the JetStream KV bucket ``bucket`` (file
    storage), in the order written, so a conversation survives a restart of the process and of NATS.
    Its calls run on the bus's event loop, so ``Runner.run_sync`` (which runs the agent on a loop of
    its own) may use a session made on the bus's."""

    session_settings: Any = None

    def __init__(self, session_id: str, bus: Bus, *, bucket: str = "tether-agents-sessions") -> None:
        self.session_id = session_id
        self.state = KvState(bus, bucket)
        self._hub = Hub.of(bus)
        self._prefix = f"s.{key_token(session_id)}"

    async def _entries(self) -> list[Any]:
        """The session's KV entries, in the order they were written (by stream sequence)."""
        found = [await self.state.entry(key) for key in await self.state.keys(self._prefix)]
        return sorted((e for e in found if e is not None and e.value), key=lambda e: e.revision)

    async def get_items(self, limit: int | None = None) -> list[Any]:
        entries = await self._hub.call(self._entries)
        items = [json.loads(e.value) for e in entries]
        return items if limit is None else items[-limit:] if limit > 0 else []

    async def add_items(self, items: list[Any]) -> None:
        async def add() -> None:
            for item in items:
                await self.state.put(f"{self._prefix}.{uuid7()}", item)

        await self._hub.call(add)

    async def pop_item(self) -> Any:
        async def pop() -> Any:
            entries = await self._entries()
            if not entries:
                return None
            await self.state.remove(entries[-1].key)
            return json.loads(entries[-1].value)

        return await self._hub.call(pop)

    async def clear_session(self) -> None:
        await self._hub.call(lambda: self.state.remove(f"{self._prefix}.>"))

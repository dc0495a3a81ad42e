"""AutoGen AgentChat under tether: runs from the OpenTelemetry spans AutoGen opens for each agent
invocation and tool execution, tool arguments and results from its event logger
(``autogen_core.EVENT_LOGGER_NAME``), teams as runs (:func:`team`), tools under tether's tool policy
(:func:`tools`), model calls through tether (:func:`model_client`), memory put into the model's
context (:class:`TetherMemory`).
The only module of tether that imports ``autogen_core``, ``autogen_agentchat`` or ``autogen_ext``.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib.metadata
import json
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from autogen_agentchat.base import TaskResult, Team
from autogen_core import EVENT_LOGGER_NAME, CancellationToken, ComponentModel
from autogen_core.logging import LLMCallEvent, LLMStreamEndEvent, ToolCallEvent
from autogen_core.memory import Memory, MemoryContent, MemoryMimeType, MemoryQueryResult, UpdateContextResult
from autogen_core.model_context import ChatCompletionContext
from autogen_core.models import SystemMessage, UserMessage
from autogen_core.tools import (
    BaseStreamTool,
    BaseTool,
    FunctionTool,
    StreamTool,
    TextResultContent,
    ToolResult,
    ToolSchema,
    Workbench,
)
from opentelemetry import trace
from opentelemetry.util.types import Attributes
from pydantic import BaseModel

from tether.adapters import Run, async_http_client
from tether.bus import Bus
from tether.middleware import PolicySet

from ._frameworks import ObservedTool, inject_memory
from ._tools import FrameworkTools

__all__ = ["AgentRunError", "PolicyStreamTool", "PolicyTool", "PolicyWorkbench", "TeamRun", "TetherMemory",
           "TetherSpanProcessor", "TracerProvider", "install", "model_client", "team", "tools", "workbench"]

SOURCE = "urn:tether:adapter:autogen"
SCOPE = "autogen-core"  # the tracer AutoGen's agent and tool spans come from
_AGENT = "gen_ai.agent.name"
_TOOL = "gen_ai.tool.name"
_CALL = "gen_ai.tool.call.id"
_OPERATION = "gen_ai.operation.name"


class AgentRunError(Exception):
    """An error AutoGen recorded on a span (seen through an OpenTelemetry SDK span: no exception object)."""


@dataclass
class _OpenTool:
    """A tool execution under way: recorded from its start when the model's arguments are known."""

    name: str
    started: float
    observed: ObservedTool | None
    governed: bool = False
    """Run by :class:`PolicyTool`, which records it: not observed here."""

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000


_open_tool: contextvars.ContextVar[_OpenTool | None] = contextvars.ContextVar("tether_autogen_tool", default=None)


def _attributes(span: Any) -> Mapping[str, Any]:
    return getattr(span, "attributes", None) or {}


def _key(span: Any) -> int:
    """The same for a span as it starts and as it ends (the SDK ends a copy: its span id is the key)."""
    context = span.get_span_context()
    return int(context.span_id) if context is not None and context.span_id else id(span)


def _error_of(span: Any) -> BaseException | None:
    """The exception a span ended with: ours keep it, an SDK span has its ``exception`` event."""
    error = getattr(span, "tether_error", None)
    if isinstance(error, BaseException):
        return error
    status = getattr(span, "status", None)
    if status is None or status.status_code != trace.StatusCode.ERROR:
        return None
    for event in getattr(span, "events", ()) or ():
        if event.name == "exception":
            kind = str(event.attributes.get("exception.type", "AgentRunError")).rpartition(".")[2]
            named: type[AgentRunError] = type(kind, (AgentRunError,), {})  # run.finished names the real type
            return named(str(event.attributes.get("exception.message", "")))
    return AgentRunError(status.description or "failed")


class TetherSpanProcessor:
    """An agent invocation (``invoke_agent`` span) is a tether run named for the agent, one opened
    inside another a child run; a tool execution (``execute_tool`` span) is a tool call of the run
    it is in. Called in the agent's own context as the span starts, so the run it opens is the
    current run of the model calls and tools that follow. Duck-typed to OpenTelemetry's
    ``SpanProcessor`` (``on_start``, ``on_end``, ``shutdown``, ``force_flush``)."""

    def __init__(self) -> None:
        self._runs: dict[int, Run] = {}
        self._arguments: OrderedDict[str, Any] = OrderedDict()  # tool call id -> arguments the model gave

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        attributes = _attributes(span)
        operation = attributes.get(_OPERATION)
        if operation == "invoke_agent":
            name = str(attributes.get(_AGENT) or "autogen")
            run = Run(agent=name, name=name, metadata={"framework": "autogen"}, derive="autogen")
            try:
                run.__enter__()
            except Exception:  # no bus: the agent runs unrecorded
                return
            self._runs[_key(span)] = run
        elif operation == "execute_tool":
            name, call_id = str(attributes.get(_TOOL) or "tool"), str(attributes.get(_CALL) or "")
            if _governed.get() == call_id:  # a PolicyTool's call: recorded under the tool policy
                self._arguments.pop(call_id, None)
                _open_tool.set(_OpenTool(name, 0.0, None, governed=True))
                return
            observed = None
            if call_id in self._arguments:  # the model asked for it: recorded now, with its arguments
                observed = ObservedTool.start(name, self._arguments.pop(call_id), source=SOURCE)
            _open_tool.set(_OpenTool(name, time.perf_counter(), observed))

    def on_end(self, span: Any) -> None:
        run = self._runs.pop(_key(span), None)
        error = _error_of(span)
        if run is not None:
            run.__exit__(type(error) if error else None, error, None)
            return
        tool = _open_tool.get()
        if tool is not None and tool.governed:
            return  # its ToolCallEvent, logged after the span, clears it
        if tool is not None and error is not None and _attributes(span).get(_OPERATION) == "execute_tool":
            _open_tool.set(None)
            observed = tool.observed or ObservedTool.start(tool.name, None, source=SOURCE)
            if observed is not None:
                observed.failed(error, tool.elapsed_ms())

    # what the event logger says: the tool calls a model asked for, a tool's arguments and result
    def model_answered(self, response: Mapping[str, Any]) -> None:
        calls = [call for choice in response.get("choices") or () if isinstance(choice, Mapping)
                 for call in (choice.get("message") or {}).get("tool_calls") or ()]  # a ChatCompletion
        calls += [{"id": c.get("id"), "function": c} for c in response.get("content") or ()
                  if isinstance(c, Mapping)]  # a streamed call's CreateResult: FunctionCall items
        for call in calls:
            if call.get("id"):
                self._arguments[str(call["id"])] = _parsed((call.get("function") or {}).get("arguments"))
        while len(self._arguments) > 1024:  # asked for and never run (a run cancelled): the oldest go
            self._arguments.popitem(last=False)

    def tool_done(self, event: ToolCallEvent) -> None:
        tool = _open_tool.get()
        _open_tool.set(None)
        if tool is not None and tool.governed:
            return
        observed = tool.observed if tool is not None else None
        if observed is None:  # not asked for by a model we saw: recorded now, with what the tool was given
            name = str(event.kwargs.get("tool_name") or (tool.name if tool else "tool"))
            observed = ObservedTool.start(name, event.kwargs.get("arguments"), source=SOURCE)
        if observed is not None:
            observed.completed(event.kwargs.get("result"), tool.elapsed_ms() if tool is not None else None)

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _parsed(raw: Any) -> Any:
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return raw


class _EventHandler(logging.Handler):
    """AutoGen's event logger: ``LLMCallEvent`` / ``LLMStreamEndEvent`` say which tools a model asked
    for with which arguments, ``ToolCallEvent`` completes the tool call its span opened."""

    def __init__(self, processor: TetherSpanProcessor) -> None:
        super().__init__(logging.INFO)
        self.processor = processor

    def emit(self, record: logging.LogRecord) -> None:
        event = record.msg
        try:
            if isinstance(event, ToolCallEvent):
                self.processor.tool_done(event)
            elif isinstance(event, LLMCallEvent | LLMStreamEndEvent):
                self.processor.model_answered(event.kwargs.get("response") or {})
        except Exception:  # tether never breaks the agent
            self.handleError(record)


# -- OpenTelemetry without an SDK: AutoGen's own spans reach the processor, nothing else is traced ------


class _Span(trace.Span):
    """A span of AutoGen's tracer: its name and attributes, the exception it ended with. Not a
    ``NonRecordingSpan``: OpenTelemetry's no-op tracer hands the current one of those out again as
    its own span (and ends it), which would end the agent's run at the runtime's first message."""

    def __init__(self, name: str, attributes: Attributes, processor: TetherSpanProcessor) -> None:
        self.name = name
        self.attributes = dict(attributes or {})
        self.tether_error: BaseException | None = None
        self.processor = processor
        self.ended = False
        processor.on_start(self)

    def get_span_context(self) -> trace.SpanContext:
        return trace.INVALID_SPAN_CONTEXT

    def is_recording(self) -> bool:
        return True  # so that use_span records the exception the agent or tool raised

    def set_attribute(self, key: str, value: Any) -> None:
        self.attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        self.attributes.update(attributes)

    def add_event(self, name: str, attributes: Attributes = None, timestamp: int | None = None) -> None:
        pass

    def update_name(self, name: str) -> None:
        self.name = name

    def set_status(self, status: Any, description: str | None = None) -> None:
        pass

    def record_exception(self, exception: BaseException, attributes: Attributes = None, timestamp: int | None = None,
                         escaped: bool = False) -> None:
        self.tether_error = exception

    def end(self, end_time: int | None = None) -> None:
        if not self.ended:
            self.ended = True
            self.processor.on_end(self)


class _Tracer(trace.Tracer):
    def __init__(self, processor: TetherSpanProcessor) -> None:
        self.processor = processor

    def start_span(self, name: str, context: Any = None, kind: trace.SpanKind = trace.SpanKind.INTERNAL,
                   attributes: Attributes = None, links: Any = None, start_time: int | None = None,
                   record_exception: bool = True, set_status_on_exception: bool = True) -> trace.Span:
        return _Span(name, attributes, self.processor)

    @contextmanager
    def start_as_current_span(  # type: ignore[override]  # a plain context manager, as its users use it
            self, name: str, context: Any = None, kind: trace.SpanKind = trace.SpanKind.INTERNAL,
                              attributes: Attributes = None, links: Any = None, start_time: int | None = None,
                              record_exception: bool = True, set_status_on_exception: bool = True,
                              end_on_exit: bool = True) -> Iterator[trace.Span]:
        span = self.start_span(name, context, kind, attributes)
        with trace.use_span(span, end_on_exit=end_on_exit, record_exception=record_exception,
                            set_status_on_exception=set_status_on_exception) as current:
            yield current


class TracerProvider(trace.TracerProvider):
    """The process's OpenTelemetry tracer provider when none was set: AutoGen's tracer (``autogen-core``)
    reports to tether, every other tracer does nothing (as with no provider at all)."""

    def __init__(self, processor: TetherSpanProcessor) -> None:
        self.tracer = _Tracer(processor)

    def get_tracer(self, instrumenting_module_name: str, *args: Any, **kwargs: Any) -> trace.Tracer:
        return self.tracer if instrumenting_module_name == SCOPE else trace.NoOpTracer()


# -- install --------------------------------------------------------------------------------------------

_PROCESSOR = TetherSpanProcessor()
_installed = False
log = logging.getLogger(__name__)


def _sdk_processor(processor: TetherSpanProcessor) -> Any:
    """``processor`` as an OpenTelemetry SDK ``SpanProcessor`` seeing only AutoGen's spans."""
    from opentelemetry.sdk.trace import SpanProcessor

    class Processor(SpanProcessor):
        def on_start(self, span: Any, parent_context: Any = None) -> None:
            scope = getattr(span, "instrumentation_scope", None)
            if scope is not None and scope.name == SCOPE:
                processor.on_start(span, parent_context)

        def on_end(self, span: Any) -> None:
            scope = getattr(span, "instrumentation_scope", None)
            if scope is not None and scope.name == SCOPE:
                processor.on_end(span)

    return Processor()


def install() -> None:
    """Runs and tool calls of every AutoGen agent in this process (once): AutoGen's OpenTelemetry
    spans reach :class:`TetherSpanProcessor` (added to the tracer provider set before, when it is
    the OpenTelemetry SDK's; else tether's :class:`TracerProvider` becomes the provider, tracing
    AutoGen's spans only), and a handler on AutoGen's event logger (at INFO) reads tool results."""
    global _installed
    if _installed:
        return
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider):
        trace.set_tracer_provider(TracerProvider(_PROCESSOR))
    elif hasattr(provider, "add_span_processor"):
        provider.add_span_processor(_sdk_processor(_PROCESSOR))
    else:
        log.warning("tether.init: the OpenTelemetry tracer provider %s takes no span processor: AutoGen runs "
                    "are not recorded (set an opentelemetry-sdk TracerProvider before tether.init())",
                    type(provider).__name__)
    events = logging.getLogger(EVENT_LOGGER_NAME)
    events.addHandler(_EventHandler(_PROCESSOR))
    if not events.isEnabledFor(logging.INFO):
        events.setLevel(logging.INFO)
    _installed = True


# -- the model --------------------------------------------------------------------------------------------


def _http_package() -> str:
    """openai 3.x builds on httpx2, 2.x on httpx."""
    major = importlib.metadata.version("openai").partition(".")[0]
    return "httpx2" if major.isdigit() and int(major) >= 3 else "httpx"


def model_client(model: str, *, tether: Mapping[str, Any] | None = None, **config: Any) -> Any:
    """An ``OpenAIChatCompletionClient(model=model, **config)`` whose calls go through tether: its
    OpenAI client is given tether's HTTP client (``http_client=``, ``tether`` holding
    ``tether.async_http_client`` options such as ``policies``, ``bus``, ``agent``) and its retries
    are off (``max_retries=0``), so tether's policy alone decides them."""
    from autogen_ext.models.openai import OpenAIChatCompletionClient

    if "http_client" in config:
        raise TypeError("tether.adapters.autogen.model_client gives the client tether's own HTTP client: leave "
                        "http_client out (pass its options in tether={...}, e.g. tether={'transport': ...})")
    if config.get("max_retries"):
        raise ValueError("tether owns the retries of model calls: leave max_retries out (the route's retry "
                         "policy in tether.toml decides them)")
    http = async_http_client(package=_http_package(), **dict(tether or {}))  # type: ignore[arg-type]
    return OpenAIChatCompletionClient(model=model, http_client=http, max_retries=0, **config)


# -- tools under tether's tool policy ----------------------------------------------------------------------

_governed: contextvars.ContextVar[str | None] = contextvars.ContextVar("tether_autogen_governed", default=None)
"""The call id of the tool call :class:`PolicyTool` is running: its span and event are not observed again."""


class PolicyTool(BaseTool[BaseModel, BaseModel]):
    """An AutoGen tool whose calls run under tether's tool policy and the run's journal
    (:class:`~tether.adapters._tools.FrameworkTools`): recorded once (arguments, result, duration,
    error), retried only when idempotent, each attempt bounded by the timeout, and a resumed run's
    completed call answered from the log without running. AutoGen sees the tool itself: its name,
    schema and description, its result as its own type, its error as the tool's error."""

    def __init__(self, tool: BaseTool[Any, Any], runner: FrameworkTools) -> None:
        super().__init__(tool.args_type(), tool.return_type(), tool.name, tool.description)
        self.tool = tool
        self.runner = runner

    @property
    def schema(self) -> ToolSchema:
        return self.tool.schema

    async def run(self, args: BaseModel, cancellation_token: CancellationToken) -> Any:
        return await self.tool.run(args, cancellation_token)

    def return_value_as_string(self, value: Any) -> str:
        return str(self.tool.return_value_as_string(value))

    async def run_json(self, args: Mapping[str, Any], cancellation_token: CancellationToken,
                       call_id: str | None = None) -> Any:
        async def call() -> Any:
            token = _governed.set(call_id or "")
            try:
                return await self.tool.run_json(args, cancellation_token, call_id=call_id)
            finally:
                _governed.reset(token)
                _open_tool.set(None)  # the tool raised: no ToolCallEvent came to clear it

        return self._restored(await self.runner.acall(self.name, dict(args), call))

    def _restored(self, result: Any) -> Any:
        """A replayed result (recorded as JSON) as the tool's own return type."""
        kind = self.tool.return_type()
        if isinstance(kind, type) and issubclass(kind, BaseModel) and isinstance(result, dict):
            return kind.model_validate(result)
        return result

    async def save_state_json(self) -> Mapping[str, Any]:
        return dict(await self.tool.save_state_json())

    async def load_state_json(self, state: Mapping[str, Any]) -> None:
        await self.tool.load_state_json(state)

    def dump_component(self) -> ComponentModel:
        """The tool's own configuration (loading it gives the tool without tether's policy)."""
        return self.tool.dump_component()


class PolicyStreamTool(BaseStreamTool[BaseModel, Any, Any]):
    """A stream tool (an ``AgentTool``, a ``TeamTool``: an agent or team run as a tool, its agents child
    runs) whose calls run under tether's tool policy and the run's journal, as :class:`PolicyTool`'s
    do. What is recorded (and what a resumed run's completed call answers, without running the agent)
    is the text the model gets (the tool's ``return_value_as_string`` of its ``TaskResult``); the
    agent's messages and events stream through while it runs, and a replayed call has none."""

    def __init__(self, tool: BaseStreamTool[Any, Any, Any], runner: FrameworkTools) -> None:
        super().__init__(tool.args_type(), str, tool.name, tool.description)
        self.tool = tool
        self.runner = runner

    @property
    def schema(self) -> ToolSchema:
        return self.tool.schema

    async def run(self, args: BaseModel, cancellation_token: CancellationToken) -> Any:
        return await self.tool.run(args, cancellation_token)

    async def run_stream(self, args: BaseModel, cancellation_token: CancellationToken) -> AsyncGenerator[Any, None]:
        async for item in self.tool.run_stream(args, cancellation_token):
            yield item

    def return_value_as_string(self, value: Any) -> str:
        return value if isinstance(value, str) else str(self.tool.return_value_as_string(value))

    async def run_json(self, args: Mapping[str, Any], cancellation_token: CancellationToken,
                       call_id: str | None = None) -> Any:
        async def call() -> str:
            token = _governed.set(call_id or "")
            try:
                result = await self.tool.run_json(args, cancellation_token, call_id=call_id)
            finally:
                _governed.reset(token)
                _open_tool.set(None)
            return str(self.tool.return_value_as_string(result))

        return await self.runner.acall(self.name, dict(args), call)

    async def run_json_stream(self, args: Mapping[str, Any], cancellation_token: CancellationToken,
                              call_id: str | None = None) -> AsyncGenerator[Any, None]:
        """The tool's stream as one call: its events passed on as they come, then the text of its result."""
        passed: asyncio.Queue[Any] = asyncio.Queue()

        async def call() -> str:
            token = _governed.set(call_id or "")
            last: Any = None
            try:
                async for item in self.tool.run_json_stream(args, cancellation_token, call_id=call_id):
                    if last is not None:
                        passed.put_nowait(last)
                    last = item
            finally:
                _governed.reset(token)
                _open_tool.set(None)
            return str(self.tool.return_value_as_string(last))

        done = asyncio.ensure_future(self.runner.acall(self.name, dict(args), call))
        try:
            while not done.done():
                item = asyncio.ensure_future(passed.get())
                await asyncio.wait({item, done}, return_when=asyncio.FIRST_COMPLETED)
                if not item.done():
                    item.cancel()
                    break
                yield item.result()
            while not passed.empty():
                yield passed.get_nowait()
            yield await done
        finally:
            if not done.done():  # the reader went away (cancelled): so does the call
                done.cancel()

    async def save_state_json(self) -> Mapping[str, Any]:
        return dict(await self.tool.save_state_json())

    async def load_state_json(self, state: Mapping[str, Any]) -> None:
        await self.tool.load_state_json(state)

    def dump_component(self) -> ComponentModel:
        """The tool's own configuration (loading it gives the tool without tether's policy)."""
        return self.tool.dump_component()


def tools(tools: Iterable[BaseTool[Any, Any] | Callable[..., Any]], *, idempotent: Iterable[str] = (),
          timeout_s: float | None = None, policies: PolicySet | None = None,
          bus: Bus | None = None) -> list[BaseTool[Any, Any]]:
    """An agent's tools (``AssistantAgent(tools=tools([...]))``), each call under tether's tool policy:
    functions become ``FunctionTool`` as AutoGen makes them, each tool a :class:`PolicyTool`, each
    stream tool (an ``AgentTool``, a ``TeamTool``: runs of their own) a :class:`PolicyStreamTool`.
    ``idempotent`` names the tools that may be retried and re-run after a crash (the route
    ``tool:<name>`` in tether.toml overrides it); ``timeout_s`` bounds each attempt (else the route's
    ``tool_timeout_s``)."""
    runner = FrameworkTools(SOURCE, idempotent=idempotent, timeout_s=timeout_s, policies=policies, bus=bus)
    out: list[BaseTool[Any, Any]] = []
    for tool in tools:
        if not isinstance(tool, BaseTool):
            if not callable(tool):
                raise TypeError(f"tether.adapters.autogen.tools takes AutoGen tools and functions, not "
                                f"{type(tool).__name__}")
            tool = FunctionTool(tool, description=tool.__doc__ or "")
        if isinstance(tool, PolicyTool | PolicyStreamTool):
            out.append(tool)
        elif isinstance(tool, BaseStreamTool):
            out.append(PolicyStreamTool(tool, runner))
        elif isinstance(tool, StreamTool):  # a stream tool of another kind: left as it is, observed
            out.append(tool)
        else:
            out.append(PolicyTool(tool, runner))
    return out


class _ErrorResult(Exception):
    """A workbench's tool answered with an error (``ToolResult(is_error=True)``): a failed call for the policy."""

    def __init__(self, result: ToolResult) -> None:
        super().__init__(result.to_text()[:2000])
        self.result = result


class PolicyWorkbench(Workbench):
    """A workbench (``McpWorkbench``, any ``Workbench``) whose tool calls run under tether's tool policy
    and the run's journal: ``call_tool`` is one tether call of the tool named, its ``ToolResult``
    recorded (and answered from the log for a resumed run's completed call, without calling the
    workbench). A result the workbench marks ``is_error`` (what it makes of the tool's exception) is
    a failed call for the policy, given to AutoGen as it came; a timeout or a :class:`NeedsAttention`
    is a ``ToolResult`` with ``is_error`` too, its message the text, as AutoGen's own workbenches make
    of any exception (``call_tool`` never raises: an ``AssistantAgent`` whose workbench raises waits
    forever for the end of its tool calls). Everything else is the workbench's."""

    component_type = "workbench"

    def __init__(self, workbench: Workbench, runner: FrameworkTools) -> None:
        self.workbench = workbench
        self.runner = runner

    async def list_tools(self) -> list[ToolSchema]:
        return list(await self.workbench.list_tools())

    async def call_tool(self, name: str, arguments: Mapping[str, Any] | None = None,
                        cancellation_token: CancellationToken | None = None, call_id: str | None = None) -> ToolResult:
        async def call() -> ToolResult:
            token = _governed.set(call_id or "")  # the workbench's execute_tool span: not observed again
            try:
                result = await self.workbench.call_tool(name, arguments, cancellation_token, call_id)
            finally:
                _governed.reset(token)
                _open_tool.set(None)
            if result.is_error:
                raise _ErrorResult(result)
            return result

        try:
            answer = await self.runner.acall(name, dict(arguments or {}), call)
        except _ErrorResult as failed:
            return failed.result
        except Exception as error:  # a timeout, NeedsAttention: never raised, AssistantAgent would wait forever
            return ToolResult(name=name, result=[TextResultContent(content=str(error))], is_error=True)
        return answer if isinstance(answer, ToolResult) else ToolResult.model_validate(answer)

    async def start(self) -> None:
        await self.workbench.start()

    async def stop(self) -> None:
        await self.workbench.stop()

    async def reset(self) -> None:
        await self.workbench.reset()

    async def save_state(self) -> Mapping[str, Any]:
        return dict(await self.workbench.save_state())

    async def load_state(self, state: Mapping[str, Any]) -> None:
        await self.workbench.load_state(state)

    def dump_component(self) -> ComponentModel:
        """The workbench's own configuration (loading it gives the workbench without tether's policy)."""
        return self.workbench.dump_component()


def workbench(workbench: Workbench, *, idempotent: Iterable[str] = (), timeout_s: float | None = None,
              policies: PolicySet | None = None, bus: Bus | None = None) -> PolicyWorkbench:
    """A workbench (``AssistantAgent(workbench=workbench(McpWorkbench(...)))``) whose tool calls run under
    tether's tool policy (:class:`PolicyWorkbench`); the options are :func:`tools`'. For a
    ``StaticStreamWorkbench`` of your own tools, give it ``tools([...])`` instead: AutoGen streams only
    through that class."""
    if isinstance(workbench, PolicyWorkbench):
        return workbench
    if not isinstance(workbench, Workbench):
        raise TypeError(f"tether.adapters.autogen.workbench takes an AutoGen Workbench (McpWorkbench, "
                        f"StaticWorkbench...), not {type(workbench).__name__}")
    runner = FrameworkTools(SOURCE, idempotent=idempotent, timeout_s=timeout_s, policies=policies, bus=bus)
    return PolicyWorkbench(workbench, runner)


# -- teams -------------------------------------------------------------------------------------------------


class TeamRun(Team):
    """A team (``RoundRobinGroupChat``, ``SelectorGroupChat``, ``Swarm``...) whose ``run()`` /
    ``run_stream()`` is a tether run named for the team: each agent's turn in it is a child run, and
    what the team's manager asks a model (``SelectorGroupChat`` choosing the next speaker) is charged
    to the team's run. AutoGen opens no span for a team's run, so the team is wrapped (:func:`team`);
    the turns are children because the team's own runtime starts inside the run (the default: with a
    ``runtime=`` started elsewhere, turns are runs of their own). Everything else is the team's."""

    component_type = "team"

    def __init__(self, team: Team) -> None:
        self.team = team

    @property
    def name(self) -> str:
        return str(self.team.name)

    @property
    def description(self) -> str:
        return str(self.team.description)

    def _run(self) -> Run:
        return Run(agent=self.name, name=self.name, derive="autogen",
                   metadata={"framework": "autogen", "team": type(self.team).__name__})

    async def run(self, *, task: Any = None, cancellation_token: CancellationToken | None = None,
                  output_task_messages: bool = True) -> TaskResult:
        run = self._run()
        try:
            await run.__aenter__()
        except Exception:  # no bus: the team runs unrecorded
            return await self.team.run(task=task, cancellation_token=cancellation_token,
                                       output_task_messages=output_task_messages)
        try:
            result = await self.team.run(task=task, cancellation_token=cancellation_token,
                                         output_task_messages=output_task_messages)
        except BaseException as exc:
            await run.__aexit__(type(exc), exc, None)
            raise
        await run.__aexit__(None, None, None)
        return result

    async def run_stream(self, *, task: Any = None, cancellation_token: CancellationToken | None = None,
                         output_task_messages: bool = True) -> AsyncGenerator[Any, None]:
        """The team's stream, inside the run (current in the caller's context while it is read)."""
        run: Run | None = self._run()
        try:
            await run.__aenter__()  # type: ignore[union-attr]
        except Exception:
            run = None
        stream = self.team.run_stream(task=task, cancellation_token=cancellation_token,
                                      output_task_messages=output_task_messages)
        try:
            async for item in stream:
                yield item
        except BaseException as exc:
            if run is not None:
                await run.__aexit__(type(exc), exc, None)
            raise
        if run is not None:
            await run.__aexit__(None, None, None)

    async def reset(self) -> None:
        await self.team.reset()

    async def pause(self) -> None:
        await self.team.pause()

    async def resume(self) -> None:
        await self.team.resume()

    async def save_state(self) -> Mapping[str, Any]:
        return dict(await self.team.save_state())

    async def load_state(self, state: Mapping[str, Any]) -> None:
        await self.team.load_state(state)

    def dump_component(self) -> ComponentModel:
        """The team's own configuration (loading it gives the team without its tether run)."""
        return self.team.dump_component()


def team(team: Team) -> TeamRun:
    """``team`` as a tether run per ``run()`` / ``run_stream()``, each agent's turn a child run:
    ``team = tether.adapters.autogen.team(RoundRobinGroupChat([...]))``."""
    if isinstance(team, TeamRun):
        return team
    if not isinstance(team, Team):
        raise TypeError(f"tether.adapters.autogen.team takes an AutoGen team (RoundRobinGroupChat, "
                        f"SelectorGroupChat...), not {type(team).__name__}")
    return TeamRun(team)


# -- memory -----------------------------------------------------------------------------------------------


def _text(message: Any) -> str:
    content = getattr(message, "content", "")
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return " ".join(part for part in content if isinstance(part, str))
    return ""


class TetherMemory(Memory):
    """AutoGen's ``Memory`` on tether memory (``tether.memory.AsyncMemory``): before each model call
    (``update_context``) what ``memory`` holds on the last user message goes into the model's context
    as a system message, the retrieval recorded as the tool call ``tether.memory.context``; ``add``
    writes to ``namespace``, ``query`` searches it, ``clear`` forgets it."""

    def __init__(self, memory: Any, *, namespace: str, token_budget: int = 500) -> None:
        self.memory = memory
        self.namespace = namespace
        self.token_budget = token_budget

    async def update_context(self, model_context: ChatCompletionContext) -> UpdateContextResult:
        messages = await model_context.get_messages()
        query = next((_text(m) for m in reversed(messages) if isinstance(m, UserMessage)), "")
        text = await inject_memory(self.memory, query, namespaces=self.namespace, token_budget=self.token_budget)
        if not text:
            return UpdateContextResult(memories=MemoryQueryResult(results=[]))
        await model_context.add_message(SystemMessage(content=f"What you remember:\n{text}"))
        return UpdateContextResult(memories=MemoryQueryResult(results=[
            MemoryContent(content=text, mime_type=MemoryMimeType.TEXT)]))

    async def query(self, query: str | MemoryContent, cancellation_token: CancellationToken | None = None,
                    **kwargs: Any) -> MemoryQueryResult:
        text = query if isinstance(query, str) else str(query.content)
        hits = await self.memory.search(text, self.namespace, k=int(kwargs.get("k", 5)))
        return MemoryQueryResult(results=[
            MemoryContent(content=h.entry.text, mime_type=MemoryMimeType.TEXT,
                          metadata={"key": h.entry.key, "version": h.entry.version, "score": h.score})
            for h in hits])

    async def add(self, content: MemoryContent, cancellation_token: CancellationToken | None = None) -> None:
        metadata = dict(content.metadata or {})
        key = metadata.pop("key", None)
        await self.memory.write(self.namespace, str(content.content), key=key, metadata=metadata or None)

    async def clear(self) -> None:
        await self.memory.forget(self.namespace)

    async def close(self) -> None:
        pass

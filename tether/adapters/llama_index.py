"""LlamaIndex under tether: workflow (agent) runs, handoffs as child runs and unwrapped tool calls from
a span handler on its instrumentation dispatcher (:func:`install`); tools under tether's tool policy
(:func:`wrap_tools`); the OpenAI LLM through tether, its retries off (:func:`llm`); chat history and
workflow Contexts in tether (:class:`TetherChatStore`, :class:`TetherContextStore`); memory put into
the model's input (:class:`TetherMemoryBlock`). The only module of tether that imports ``llama_index``.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import logging
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from llama_index.core.agent.workflow import AgentWorkflow, BaseWorkflowAgent, ToolCall, ToolCallResult
from llama_index.core.base.llms.types import ChatMessage, TextBlock
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.span_handlers import BaseSpanHandler
from llama_index.core.objects import ObjectRetriever
from llama_index.core.storage.chat_store.base_db import AsyncDBChatStore, MessageStatus
from llama_index.core.tools import BaseTool, FunctionTool, ToolMetadata, ToolOutput, adapt_to_async_tool
from llama_index.core.workflow import Context, JsonSerializer, Workflow
from pydantic import PrivateAttr

from tether.adapters import (
    Hub,
    LoopThreadError,
    NeedsAttention,
    Run,
    RunContext,
    async_http_client,
    bound,
    current_run,
    http_client,
)
from tether.bus import Bus
from tether.middleware import PolicySet

from ._frameworks import KvState, ObservedTool, inject_memory, key_token, policy_set, untoken
from ._llamaindexpriv import MemoryBlock, hand_off
from ._tools import FrameworkTools

__all__ = ["PolicyRetriever", "PolicyTool", "TetherChatStore", "TetherContextStore", "TetherMemoryBlock",
           "TetherSpanHandler", "ToolNeedsAttention", "install", "llm", "wrap_tools"]

SOURCE = "urn:tether:adapter:llama-index"
log = logging.getLogger(__name__)

# -- runs: a span handler on the root dispatcher ---------------------------------------------------


@dataclass
class _WorkflowRun:
    """One run of a workflow: its tether run, and for an ``AgentWorkflow`` the agent now acting and
    the child run of each agent handed off to whose turn has not ended."""

    run: Run
    workflow: Workflow
    root_agent: str | None
    current: str | None
    children: dict[str, Run] = field(default_factory=dict)

    def wrapped(self, tool: str) -> bool:
        """Whether the agent acting runs the tool ``tool`` through :func:`wrap_tools` (which records it)."""
        if tool == "handoff" and isinstance(vars(self.workflow).get("get_tools"), _WorkflowTools):
            return True
        agent = self.workflow.agents.get(self.current) if isinstance(self.workflow, AgentWorkflow) else self.workflow
        retriever = getattr(agent, "tool_retriever", None)
        return (any(isinstance(t, PolicyTool) and t.metadata.name == tool for t in getattr(agent, "tools", None) or ())
                or (isinstance(retriever, PolicyRetriever) and tool in retriever.wrapped))


def _names(workflow: Any) -> tuple[str, str | None]:
    """The run's name and the agent it is of: an agent's ``name``, an ``AgentWorkflow``'s root agent,
    else the workflow's class."""
    if isinstance(workflow, BaseWorkflowAgent):
        return workflow.name, workflow.name
    if isinstance(workflow, AgentWorkflow):
        return workflow.root_agent, workflow.root_agent
    name = type(workflow).__name__
    return name, name


class TetherSpanHandler(BaseSpanHandler[Any]):
    """Each run of a LlamaIndex workflow (a ``FunctionAgent``'s, an ``AgentWorkflow``'s, any
    ``Workflow``'s) is a tether run named for its agent; in an ``AgentWorkflow``, the steps of an
    agent handed off to run under a child run of that agent's. The run is opened in the task the
    workflow runs in, so its steps, model calls and tools are inside it; a workflow run from inside
    another run (from a tool: a sub-agent) is that run's child."""

    _runs: dict[str, _WorkflowRun] = PrivateAttr(default_factory=dict)
    _bound: dict[str, AbstractContextManager[RunContext]] = PrivateAttr(default_factory=dict)
    _observed: dict[str, ObservedTool] = PrivateAttr(default_factory=dict)

    @classmethod
    def class_name(cls) -> str:
        return "TetherSpanHandler"

    @property
    def _private(self) -> dict[str, Any]:
        """The private attributes above, read from pydantic's dict of them: ``self._runs`` costs
        about 3 µs a read (the normal lookup fails, then pydantic's ``__getattr__`` finds it), and
        LlamaIndex calls the handler at the start and the end of every span in the process."""
        private: dict[str, Any] | None = self.__pydantic_private__
        assert private is not None
        return private

    def span_enter(self, id_: str, bound_args: inspect.BoundArguments, instance: Any = None,
                   parent_id: str | None = None, tags: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if parent_id is not None and (state := self._private["_runs"].get(parent_id)) is not None:
            self._step(id_, bound_args, state)  # a step of a run (its span names no instance)
        elif isinstance(instance, Workflow) and id_.startswith(f"{type(instance).__name__}.run-"):
            self._open(id_, instance)

    def _open(self, id_: str, workflow: Workflow) -> None:
        name, agent = _names(workflow)
        run = Run(agent=agent, name=name, derive="llama-index",
                  metadata={"framework": "llama-index", "workflow": type(workflow).__name__})
        try:
            run.__enter__()
        except LoopThreadError as error:  # resumed, on a bus of this loop: its journal cannot be read from here
            enclosing = current_run()
            log.warning("tether: LlamaIndex workflow %r gets no run of its own (its calls are recorded in the "
                        "enclosing run %s, not resumed): %s", name, enclosing.run_id if enclosing else None, error)
            return
        except Exception:  # no bus: the workflow runs unrecorded
            return
        root = agent if isinstance(workflow, AgentWorkflow) else None
        self._private["_runs"][id_] = _WorkflowRun(run, workflow, root, agent)

    def _step(self, id_: str, bound_args: inspect.BoundArguments, state: _WorkflowRun) -> None:
        """A step of a run. In an ``AgentWorkflow``: under the child run of the agent acting, if not the
        root. A tool call step whose tool is not wrapped (the handoff tool, a retriever's, any tool of an
        agent :func:`wrap_tools` was not given): the call observed (recorded, not under the policy)."""
        self._handoff(id_, bound_args, state)
        call = next((v for v in bound_args.arguments.values() if isinstance(v, ToolCall)), None)
        if call is not None and not state.wrapped(call.tool_name):
            observed = ObservedTool.start(call.tool_name, call.tool_kwargs, source=SOURCE)
            if observed is not None:
                self._private["_observed"][id_] = observed

    def _handoff(self, id_: str, bound_args: inspect.BoundArguments, state: _WorkflowRun) -> None:
        """A step of an ``AgentWorkflow`` run: the agent acting now is the one its event names. An agent
        handed to (not the root) acts under a child run of its own, opened at its first step and
        finished (``ok``) at the first step of the agent acting after it: one child run per turn."""
        if state.root_agent is None:
            return
        for value in bound_args.arguments.values():
            name = getattr(value, "current_agent_name", None)
            if isinstance(name, str) and name != state.current:
                ended = state.children.pop(state.current, None) if state.current is not None else None
                if ended is not None:  # its turn is over: it handed off
                    _exit(ended, None)
                state.current = name
        agent = state.current
        if agent is None or agent == state.root_agent or state.run.context is None:
            return
        child = state.children.get(agent)
        if child is None:
            child = Run(agent=agent, name=agent, derive="llama-index",
                        metadata={"framework": "llama-index", "handoff": True})
            with bound(state.run.context):
                try:
                    child.__enter__()  # finished when its turn ends, or with the workflow run
                except Exception:  # no bus: its steps run under the workflow's run
                    return
            state.children[agent] = child
        if child.context is not None:
            scope = bound(child.context)
            scope.__enter__()
            self._private["_bound"][id_] = scope

    def span_exit(self, id_: str, bound_args: inspect.BoundArguments, instance: Any = None, result: Any = None,
                  **kwargs: Any) -> None:
        self._close(id_, None, result)

    def span_drop(self, id_: str, bound_args: inspect.BoundArguments, instance: Any = None,
                  err: BaseException | None = None, **kwargs: Any) -> None:
        self._close(id_, err)

    def _close(self, id_: str, error: BaseException | None, result: Any = None) -> None:
        private = self._private
        observed = private["_observed"].pop(id_, None)
        if observed is not None:
            output = result.tool_output if isinstance(result, ToolCallResult) else None
            if error is not None:
                observed.failed(error)
            elif output is None or output.is_error:
                observed.failed(str(output.content) if output is not None else "the tool call step gave no result")
            else:
                observed.completed(str(output.content))
        scope = private["_bound"].pop(id_, None)
        if scope is not None:
            scope.__exit__(None, None, None)
            return
        state = private["_runs"].pop(id_, None)
        if state is None:
            return
        if isinstance(error, ToolNeedsAttention):  # not finished: ``run.needs_attention`` says where it stopped
            error = error.attention
        for agent, child in state.children.items():  # the agent acting when it ended shares its end
            _exit(child, error if agent == state.current else None)
        state.children.clear()
        _exit(state.run, error)

    def new_span(self, id_: str, bound_args: inspect.BoundArguments, instance: Any = None,
                 parent_span_id: str | None = None, tags: dict[str, Any] | None = None, **kwargs: Any) -> None:
        return None

    def prepare_to_exit_span(self, id_: str, bound_args: inspect.BoundArguments, instance: Any = None,
                             result: Any = None, **kwargs: Any) -> None:
        return None

    def prepare_to_drop_span(self, id_: str, bound_args: inspect.BoundArguments, instance: Any = None,
                             err: BaseException | None = None, **kwargs: Any) -> None:
        return None


def _exit(run: Run, error: BaseException | None) -> None:
    run.__exit__(type(error) if error is not None else None, error, error.__traceback__ if error else None)


_HANDLER = TetherSpanHandler()
_installed = False


def install() -> None:
    """Add :class:`TetherSpanHandler` to LlamaIndex's root instrumentation dispatcher (once): every
    workflow run in the process becomes a tether run. Other span handlers stay."""
    global _installed
    if _installed:
        return
    get_dispatcher().add_span_handler(_HANDLER)
    _installed = True


# -- the model ---------------------------------------------------------------------------------------


def _http_package() -> str:
    """openai 3.x builds on httpx2, 2.x on httpx."""
    major = importlib.metadata.version("openai").partition(".")[0]
    return "httpx2" if major.isdigit() and int(major) >= 3 else "httpx"


_CLIENT_OPTIONS = frozenset(inspect.signature(async_http_client).parameters) - {"package", "client_options"}


def llm(model: str = "gpt-4o-mini", *, tether: Mapping[str, Any] | None = None, **options: Any) -> Any:
    """LlamaIndex's ``OpenAI`` LLM (``llama-index-llms-openai``) whose requests run under tether's
    policy: its OpenAI clients are built on tether's HTTP clients (``http_client=``,
    ``async_http_client=``; ``tether`` holds their options: ``policies``, ``bus``, ``agent``...) and
    its own retries are off (``max_retries=0``: LlamaIndex's retry decorator and the SDK's), so a
    429 or 500 is retried by tether's policy alone. ``options`` are the LLM's (``api_key``,
    ``api_base``, ``temperature``...)."""
    from llama_index.llms.openai import OpenAI

    for given in ("http_client", "async_http_client", "openai_client", "async_openai_client"):
        if given in options:
            raise TypeError(f"tether.adapters.llama_index.llm builds the LLM on tether's own HTTP clients: leave "
                            f"{given} out (pass their options in tether={{...}}, e.g. tether={{'transport': ...}})")
    if options.get("max_retries"):
        raise ValueError("tether.adapters.llama_index.llm: tether owns the retries (its policy's retry.max_attempts "
                         f"in tether.toml); leave max_retries out (was {options['max_retries']!r})")
    options.pop("max_retries", None)
    settings = dict(tether or {})
    unknown = sorted(set(settings) - _CLIENT_OPTIONS)
    if unknown:
        raise ValueError(f"tether.adapters.llama_index.llm: tether= takes the options of tether.async_http_client "
                         f"({', '.join(sorted(_CLIENT_OPTIONS))}), not {', '.join(map(repr, unknown))}")
    if "policies" in settings:
        settings["policies"] = policy_set(settings["policies"],
                                          "tether.adapters.llama_index.llm(tether={'policies': ...})")
    package = _http_package()
    return OpenAI(model=model, max_retries=0, http_client=http_client(package=package, **settings),  # type: ignore[arg-type]
                  async_http_client=async_http_client(package=package, **settings),  # type: ignore[arg-type]
                  **options)


# -- tools under tether's tool policy -------------------------------------------------------------


class _Live:
    """What the tool gave LlamaIndex on its last attempt (None: answered from the log)."""

    def __init__(self) -> None:
        self.output: ToolOutput | None = None


class _ToolFailed(Exception):
    """The tool returned an error ``ToolOutput`` instead of raising: a failed call, whose output
    LlamaIndex still gets."""

    def __init__(self, output: ToolOutput) -> None:
        super().__init__(str(output.content)[:2000])
        self.output = output


class ToolNeedsAttention(BaseException):
    """A resumed run stopped at a tool call the process died inside, which is not idempotent: raised
    from ``await agent.run(...)``, its ``attention`` the :class:`tether.NeedsAttention` (``run_id``,
    ``tool``, ``position``, ``arguments``). A ``BaseException``, as ``KeyboardInterrupt`` is, because
    LlamaIndex gives the model every ``Exception`` a tool raises as text and carries on: only this
    stops the agent. Inside ``tether.run(..., resume=True)``, raise ``attention`` from it so that run
    stops as needing attention too."""

    def __init__(self, attention: NeedsAttention) -> None:
        super().__init__(str(attention))
        self.attention = attention


class PolicyTool(FunctionTool):
    """A LlamaIndex tool whose calls run under tether's tool policy and the run's journal: the
    tool it wraps is called as LlamaIndex would (a ``FunctionTool`` taking the workflow ``Context``
    still gets it); what is recorded is the call's arguments and the text of its output, and a
    resumed run's completed call comes back as a ``ToolOutput`` of that text, without running."""

    def __init__(self, tool: BaseTool, tools: FrameworkTools) -> None:  # no FunctionTool.__init__: none of it is used
        self.tool = tool
        self.tools = tools
        self.requires_context = bool(getattr(tool, "requires_context", False))
        self.ctx_param_name = getattr(tool, "ctx_param_name", None)
        self.partial_params: dict[str, Any] = {}

    @property
    def metadata(self) -> ToolMetadata:
        return self.tool.metadata

    @property
    def fn(self) -> Any:
        return getattr(self.tool, "fn", self.tool.__call__)

    @property
    def async_fn(self) -> Any:
        return getattr(self.tool, "async_fn", adapt_to_async_tool(self.tool).acall)

    @property
    def real_fn(self) -> Any:
        return getattr(self.tool, "real_fn", self.fn)

    def _recorded(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        arguments = {k: v for k, v in kwargs.items() if k != self.ctx_param_name}
        return {"args": list(args), **arguments} if args else arguments

    def _answer(self, live: _Live, result: Any) -> ToolOutput:
        if live.output is not None:
            return live.output
        return ToolOutput(content=str(result), tool_name=self.metadata.get_name(), raw_input={}, raw_output=result)

    async def acall(self, *args: Any, **kwargs: Any) -> ToolOutput:
        live = _Live()
        target = adapt_to_async_tool(self.tool)

        async def attempt() -> str:
            live.output = await target.acall(*args, **kwargs)
            if live.output.is_error:
                raise _ToolFailed(live.output)
            return str(live.output.content)

        try:
            result = await self.tools.acall(self.metadata.get_name(), self._recorded(args, kwargs), attempt)
        except _ToolFailed as failed:
            return failed.output
        except NeedsAttention as attention:
            raise ToolNeedsAttention(attention) from attention
        if live.output is None:
            await self.replayed(kwargs, str(result))
        return self._answer(live, result)

    async def replayed(self, kwargs: dict[str, Any], said: str) -> None:
        """A call answered from the log, ``said`` its recorded text: what the tool did besides
        answering is done here (nothing, for a tool whose answer is all it does)."""

    def call(self, *args: Any, **kwargs: Any) -> ToolOutput:
        live = _Live()

        def attempt() -> str:
            live.output = self.tool(*args, **kwargs)
            if live.output.is_error:
                raise _ToolFailed(live.output)
            return str(live.output.content)

        try:
            result = self.tools.call(self.metadata.get_name(), self._recorded(args, kwargs), attempt)
        except _ToolFailed as failed:
            return failed.output
        except NeedsAttention as attention:
            raise ToolNeedsAttention(attention) from attention
        return self._answer(live, result)

    def __call__(self, *args: Any, **kwargs: Any) -> ToolOutput:
        return self.call(*args, **kwargs)


class _HandoffTool(PolicyTool):
    """An ``AgentWorkflow``'s ``handoff`` tool under the policy: its call recorded, and a replayed
    call that handed off hands off again (the workflow's next agent set, as the tool sets it)."""

    async def replayed(self, kwargs: dict[str, Any], said: str) -> None:
        ctx = kwargs.get(self.ctx_param_name) if self.ctx_param_name else None
        if ctx is not None:
            await hand_off(ctx, kwargs.get("to_agent"), kwargs.get("reason"), said)


class _WorkflowTools:
    """An ``AgentWorkflow``'s ``get_tools`` (what its tool-call step looks each call's tool up in, the
    ``handoff`` tool made anew each time) whose ``handoff`` tool runs under the policy."""

    def __init__(self, workflow: AgentWorkflow, tools: FrameworkTools) -> None:
        self.get_tools = type(workflow).get_tools.__get__(workflow)
        self.tools = tools

    async def __call__(self, agent_name: str, input_str: str | None = None) -> Any:
        found = await self.get_tools(agent_name, input_str)
        return [_HandoffTool(t, self.tools) if t.metadata.name == "handoff" and not isinstance(t, PolicyTool) else t
                for t in found]


class PolicyRetriever(ObjectRetriever[Any]):
    """An agent's ``tool_retriever`` whose tools come back as :class:`PolicyTool` wrappers: the
    tools it retrieves run under tether's tool policy, as the agent's own do."""

    def __init__(self, retriever: ObjectRetriever[Any], tools: FrameworkTools) -> None:
        super().__init__(retriever.retriever, retriever.object_node_mapping, retriever.node_postprocessors)
        self.inner = retriever
        self.tools = tools
        self.wrapped: set[str] = set()  # the names of the tools it gave out wrapped

    def _wrap(self, found: list[Any]) -> list[Any]:
        wrapped = [PolicyTool(t, self.tools) if isinstance(t, BaseTool) and not isinstance(t, PolicyTool) else t
                   for t in found]
        self.wrapped.update(t.metadata.name for t in wrapped if isinstance(t, PolicyTool))
        return wrapped

    def retrieve(self, str_or_query_bundle: Any) -> list[Any]:
        return self._wrap(self.inner.retrieve(str_or_query_bundle))

    async def aretrieve(self, str_or_query_bundle: Any) -> list[Any]:
        return self._wrap(await self.inner.aretrieve(str_or_query_bundle))


W = TypeVar("W", bound=Workflow)


def wrap_tools(workflow: W, *, idempotent: Iterable[str] = (), timeout_s: float | None = None,
               bus: Bus | None = None, policies: PolicySet | None = None) -> W:
    """Put the tools of an agent (``FunctionAgent``, ``ReActAgent``, ``CodeActAgent``: its code
    execution is one call of the tool ``execute``) or of every agent of an ``AgentWorkflow``, and
    that workflow's ``handoff`` tool, under tether's tool policy: each call recorded under the run,
    retried only when its name is in ``idempotent`` (or the route ``tool:<name>`` says
    ``idempotent = true``; ``handoff``, which only sets the workflow's next agent, is), each attempt
    bounded by ``timeout_s`` (else the route's ``tool_timeout_s``), and a resumed run's completed
    call answered from the log without running (a replayed handoff hands off again). The agent's
    ``tools`` are replaced by :class:`PolicyTool` wrappers, its ``tool_retriever`` by a
    :class:`PolicyRetriever` and an ``AgentWorkflow``'s ``get_tools`` by one whose ``handoff`` tool is
    wrapped (again: the new options replace the old). A timeout or an error reaches LlamaIndex as
    the tool's own error, which it tells the model. Returns ``workflow``."""
    tools = FrameworkTools(SOURCE, idempotent=idempotent, timeout_s=timeout_s, bus=bus, policies=policies)
    if isinstance(workflow, AgentWorkflow):
        agents: list[Any] = list(workflow.agents.values())
        # its tool-call step looks each tool up there; the handoff only sets the workflow's next agent
        handoff = FrameworkTools(SOURCE, idempotent={"handoff"}, timeout_s=timeout_s, bus=bus, policies=policies)
        workflow.get_tools = _WorkflowTools(workflow, handoff)
    elif isinstance(workflow, BaseWorkflowAgent):
        agents = [workflow]
    else:
        raise TypeError(f"tether.adapters.llama_index.wrap_tools takes an agent (FunctionAgent, ReActAgent...) or an "
                        f"AgentWorkflow, not {type(workflow).__name__}: a plain Workflow's steps call their tools "
                        "themselves (decorate them with @tether.tool)")
    for agent in agents:
        if agent.tools:
            agent.tools = [PolicyTool(t.tool if isinstance(t, PolicyTool) else t, tools) for t in agent.tools]
        retriever = agent.tool_retriever
        if retriever is not None:
            agent.tool_retriever = PolicyRetriever(retriever.inner if isinstance(retriever, PolicyRetriever)
                                                   else retriever, tools)
    return workflow


# -- state: chat history in a KV bucket ------------------------------------------------------------


class TetherChatStore(AsyncDBChatStore):
    """LlamaIndex's ``AsyncDBChatStore`` (what ``Memory`` keeps its chat history in) on tether: each
    session's messages (as LlamaIndex's ``SQLAlchemyChatStore`` writes them: ``model_dump(mode="json")``),
    with their status (active, archived), as one key of the JetStream KV bucket
    ``bucket`` (file storage), so a conversation survives a restart of the process and of NATS.
    Its calls run on the bus's event loop, whichever loop awaits them::

        memory = Memory.from_defaults(session_id="user-42", chat_store=TetherChatStore(bus))
        await agent.run("...", memory=memory)
    """

    bucket: str = "tether-llama-index-chats"
    _state: KvState = PrivateAttr()
    _hub: Hub = PrivateAttr()

    def __init__(self, bus: Bus, *, bucket: str = "tether-llama-index-chats") -> None:
        super().__init__(bucket=bucket)
        self._state = KvState(bus, bucket)
        self._hub = Hub.of(bus)

    @classmethod
    def class_name(cls) -> str:
        return "TetherChatStore"

    async def _read(self, key: str) -> list[tuple[str, ChatMessage]]:
        found = await self._state.get(f"c.{key_token(key)}")
        if not found:
            return []
        return [(row["status"], ChatMessage.model_validate(row["message"])) for row in found]

    async def _write(self, key: str, rows: list[tuple[str, ChatMessage]]) -> None:
        if not rows:
            await self._state.remove(f"c.{key_token(key)}")
            return
        await self._state.put(f"c.{key_token(key)}", [{"status": status, "message": message.model_dump(mode="json")}
                                                       for status, message in rows])

    async def _on_bus(self, fn: Any) -> Any:
        return await self._hub.call(fn)

    async def get_messages(self, key: str, status: MessageStatus | None = MessageStatus.ACTIVE,
                           limit: int | None = None, offset: int | None = None) -> list[ChatMessage]:
        rows = await self._on_bus(lambda: self._read(key))
        messages = [m for s, m in rows if status is None or s == status.value]
        start = offset or 0
        return messages[start:start + limit] if limit is not None else messages[start:]

    async def count_messages(self, key: str, status: MessageStatus | None = MessageStatus.ACTIVE) -> int:
        return len(await self.get_messages(key, status))

    async def add_message(self, key: str, message: ChatMessage, status: MessageStatus = MessageStatus.ACTIVE) -> None:
        await self.add_messages(key, [message], status)

    async def add_messages(self, key: str, messages: list[ChatMessage],
                           status: MessageStatus = MessageStatus.ACTIVE) -> None:
        async def add() -> None:
            await self._write(key, [*await self._read(key), *((status.value, m) for m in messages)])

        await self._on_bus(add)

    async def set_messages(self, key: str, messages: list[ChatMessage],
                           status: MessageStatus = MessageStatus.ACTIVE) -> None:
        await self._on_bus(lambda: self._write(key, [(status.value, m) for m in messages]))

    async def delete_message(self, key: str, idx: int) -> ChatMessage | None:
        async def delete() -> ChatMessage | None:
            rows = await self._read(key)
            if not 0 <= idx < len(rows):
                return None
            _, message = rows.pop(idx)
            await self._write(key, rows)
            return message

        found: ChatMessage | None = await self._on_bus(delete)
        return found

    async def delete_messages(self, key: str, status: MessageStatus | None = None) -> None:
        async def delete() -> None:
            await self._write(key, [] if status is None else [(s, m) for s, m in await self._read(key)
                                                              if s != status.value])

        await self._on_bus(delete)

    async def _take_oldest(self, key: str, n: int, archive: bool) -> list[ChatMessage]:
        async def take() -> list[ChatMessage]:
            rows = await self._read(key)
            active = [i for i, (s, _) in enumerate(rows) if s == MessageStatus.ACTIVE.value][:max(n, 0)]
            taken = [rows[i][1] for i in active]
            if archive:
                for i in active:
                    rows[i] = (MessageStatus.ARCHIVED.value, rows[i][1])
            else:
                rows = [row for i, row in enumerate(rows) if i not in set(active)]
            await self._write(key, rows)
            return taken

        taken: list[ChatMessage] = await self._on_bus(take)
        return taken

    async def delete_oldest_messages(self, key: str, n: int) -> list[ChatMessage]:
        return await self._take_oldest(key, n, archive=False)

    async def archive_oldest_messages(self, key: str, n: int) -> list[ChatMessage]:
        return await self._take_oldest(key, n, archive=True)

    async def get_keys(self) -> list[str]:
        async def keys() -> list[str]:
            return sorted(untoken(k.removeprefix("c.")) for k in await self._state.keys("c"))

        found: list[str] = await self._on_bus(keys)
        return found


class TetherContextStore:
    """Workflow ``Context``s kept in tether: ``save`` writes ``ctx.to_dict(serializer=JsonSerializer())``
    (the workflow's store: an agent's memory and state, its queues) as one key of the JetStream KV
    bucket ``bucket`` (file storage), ``load`` makes a ``Context`` of it again with ``Context.from_dict``
    for the same workflow, in this process or after a restart::

        contexts = TetherContextStore(bus)
        ctx = await contexts.load("user-42", agent) or Context(agent)
        await agent.run(user_msg="...", ctx=ctx)
        await contexts.save("user-42", ctx)
    """

    def __init__(self, bus: Bus, *, bucket: str = "tether-llama-index-contexts") -> None:
        self.state = KvState(bus, bucket)
        self._hub = Hub.of(bus)

    async def save(self, key: str, ctx: Any) -> None:
        """``ctx`` (its state now) kept under ``key``, replacing what was kept."""
        data = ctx.to_dict(serializer=JsonSerializer())
        await self._hub.call(lambda: self.state.put(f"x.{key_token(key)}", data))

    async def load(self, key: str, workflow: Workflow) -> Any:
        """The ``Context`` kept under ``key``, for ``workflow``; ``None`` if none is kept."""
        data = await self._hub.call(lambda: self.state.get(f"x.{key_token(key)}"))
        return None if data is None else Context.from_dict(workflow, data, serializer=JsonSerializer())

    async def delete(self, key: str) -> None:
        await self._hub.call(lambda: self.state.remove(f"x.{key_token(key)}"))


# -- memory: what tether remembers, in the model's input ------------------------------------------


def _text(message: ChatMessage) -> str:
    return " ".join(block.text for block in message.blocks if isinstance(block, TextBlock))


class TetherMemoryBlock(MemoryBlock):
    """A ``Memory`` block (``Memory.from_defaults(memory_blocks=[...])``) that puts what a
    ``tether.memory.AsyncMemory`` holds on the last user message into the model's input, each time
    the agent reads its memory (before each model call); the retrieval is recorded as the tool call
    ``tether.memory.context``, its result naming the memories injected. Messages the memory flushes
    are not written to tether (``accept_short_term_memory=False``)."""

    name: str = "what_you_remember"
    accept_short_term_memory: bool = False
    token_budget: int = 500
    namespaces: Any = None
    _memory: Any = PrivateAttr()

    def __init__(self, memory: Any, *, namespaces: Any = None, token_budget: int = 500,
                 name: str = "what_you_remember", priority: int = 0) -> None:
        super().__init__(name=name, namespaces=namespaces, token_budget=token_budget, priority=priority)
        self._memory = memory

    async def pull(self, messages: list[ChatMessage]) -> str:
        query = next((_text(m) for m in reversed(messages) if m.role == "user"), "")
        return await inject_memory(self._memory, query, namespaces=self.namespaces, token_budget=self.token_budget)

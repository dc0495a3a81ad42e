"""LangGraph and LangChain under tether: runs and tool calls from LangChain's callbacks (installed
for every run by :func:`install`), a ``ToolNode``'s calls under tether's tool policy (:func:`tool_node`,
:class:`ToolPolicy`; :func:`tool_middleware` for LangChain's ``create_agent``), model calls through
tether (:func:`chat_model`), graph state in a tether-backed checkpointer (:class:`TetherCheckpointer`),
long-term memory in a store on tether memory (:class:`TetherStore`), memory put into the model's input
(:func:`memory_hook`). The only module of tether that imports ``langchain``, ``langchain_core`` or ``langgraph``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import inspect
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tracers.context import register_configure_hook
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
    get_checkpoint_metadata,
    writes_sort_key,
)
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.prebuilt import ToolNode
from langgraph.store.base import BaseStore, GetOp, Item, ListNamespacesOp, PutOp, SearchItem, SearchOp, TTLConfig
from langgraph.types import Command

from tether.adapters import Hub, LoopThreadError, Run, background_hub, instrument
from tether.adapters._hub import background_hub_nowait
from tether.bus import Bus
from tether.memory import AsyncMemory, MemoryNotFound
from tether.middleware import PolicySet

from ._frameworks import KvState, ObservedTool, inject_memory, key_token, pack, unpack, untoken
from ._redact import Hook, Redactor
from ._tools import FrameworkTools

__all__ = ["TetherCallbackHandler", "TetherCheckpointer", "TetherStore", "ToolPolicy", "chat_model", "install",
           "memory_hook", "tool_middleware", "tool_node"]

SOURCE = "urn:tether:adapter:langgraph"
T = TypeVar("T")


class TetherCallbackHandler(BaseCallbackHandler):
    """A graph run (a root chain) is a tether run named for the graph; each tool call is recorded.

    Run inline (``run_inline``), in the caller's own context: the run it opens is the current
    run of everything the graph does next (its model calls, its tools, its nodes' tasks)."""

    run_inline = True
    raise_error = False
    # Only chains (runs) and tools (LangChain's "agent" events) are read. Without these, every chat model
    # call went through LangChain's fallback for a handler without ``on_chat_model_start`` (LangChain's own
    # "not implemented" exception thrown and caught, every message list written out as text for ``on_llm_start``),
    # and each token, retry, retriever and custom event reached a method that does nothing.
    ignore_llm = True
    ignore_chat_model = True
    ignore_retry = True
    ignore_retriever = True
    ignore_custom_event = True

    def __init__(self) -> None:
        self._runs: dict[UUID, Run] = {}
        self._tools: dict[UUID, ObservedTool] = {}

    # runs
    def on_chain_start(self, serialized: dict[str, Any] | None, inputs: Any, *, run_id: UUID,
                       parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        if parent_run_id is not None and not _started_by_a_graph():
            return  # a node, or a chain inside one: part of its graph's run
        name = kwargs.get("name") or (serialized or {}).get("name") or "LangGraph"
        metadata: dict[str, Any] = {"framework": "langgraph", "langchain_run_id": str(run_id)}
        if parent_run_id is not None:  # a subgraph: a child run of the run it is called in
            metadata["subgraph"] = True
        run = Run(agent=str(name), name=str(name), metadata=metadata, derive="langgraph")
        try:
            run.__enter__()
        except Exception:  # no bus: the graph runs unrecorded
            return
        self._runs[run_id] = run

    def on_chain_end(self, outputs: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        run = self._runs.pop(run_id, None)
        if run is not None:
            run.__exit__(None, None, None)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, parent_run_id: UUID | None = None,
                       **kwargs: Any) -> None:
        run = self._runs.pop(run_id, None)
        if run is not None:
            run.__exit__(type(error), error, error.__traceback__)

    # tools
    def on_tool_start(self, serialized: dict[str, Any] | None, input_str: str, *, run_id: UUID,
                      inputs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if kwargs.get("tool_call_id") is not None and kwargs.get("tool_call_id") == _governed.get():
            return  # a call ToolPolicy runs: recorded there, under the tool policy
        name = kwargs.get("name") or (serialized or {}).get("name") or "tool"
        observed = ObservedTool.start(str(name), inputs if inputs is not None else input_str, source=SOURCE)
        if observed is not None:
            self._tools[run_id] = observed

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        observed = self._tools.pop(run_id, None)
        if observed is not None:
            content = getattr(output, "content", output)
            if getattr(output, "status", None) == "error":
                observed.failed(str(content))
            else:
                observed.completed(content)

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        observed = self._tools.pop(run_id, None)
        if observed is not None:
            observed.failed(error)


_CALLBACKS = "langchain_core.callbacks"


def _started_by_a_graph() -> bool:
    """Whether the chain starting is a LangGraph graph (a subgraph, when it has a parent): the
    code that reported the start, below LangChain's callback machinery, is ``Pregel.stream`` or
    ``astream``. LangChain's callbacks carry no other mark that tells a graph from a node."""
    frame = inspect.currentframe()
    for _ in range(12):
        frame = frame.f_back if frame is not None else None
        if frame is None:
            return False
        module = frame.f_globals.get("__name__", "")
        if module == __name__ or module.startswith(_CALLBACKS):
            continue
        return module == "langgraph.pregel.main" and frame.f_code.co_name in ("stream", "astream")
    return False


_HANDLER = TetherCallbackHandler()
# LangChain adds the handler of a registered variable to every run where it is set: here, everywhere
_hook: contextvars.ContextVar[TetherCallbackHandler | None] = contextvars.ContextVar("tether_langchain",
                                                                                     default=_HANDLER)
_installed = False


def install() -> None:
    """Add :class:`TetherCallbackHandler` to every LangChain run in this process (once)."""
    global _installed
    if _installed:
        return
    register_configure_hook(_hook, True)
    _installed = True


def handler() -> TetherCallbackHandler:
    """The handler :func:`install` adds, for ``config={"callbacks": [...]}`` in contexts it does not reach."""
    return _HANDLER


def chat_model(model: Any, **options: Any) -> Any:
    """``ChatOpenAI`` (or any model holding ``root_client`` / ``root_async_client``) with its
    clients instrumented (``tether.instrument`` options) and its own retries off; the same model."""
    clients = [getattr(model, name, None) for name in ("root_client", "root_async_client")]
    clients = [c for c in clients if c is not None]
    if not clients:
        raise TypeError(f"tether.adapters.langgraph.chat_model takes a model built on the openai SDK such as "
                        f"ChatOpenAI (one with root_client / root_async_client), not {type(model).__name__}: "
                        "pass http_async_client=tether.async_http_client() to other models")
    for client in clients:
        instrument(client, **options)
    if hasattr(model, "max_retries"):
        model.max_retries = 0
    return model


# -- tools: a ToolNode's calls under tether's tool policy ---------------------------------------

# the id of the tool call ToolPolicy is running in this context: the callback handler leaves it alone
_governed: contextvars.ContextVar[str | None] = contextvars.ContextVar("tether_langgraph_tool", default=None)
_SERDE = JsonPlusSerializer()


class _ErrorMessage(Exception):
    """The tool failed and ``ToolNode`` (``handle_tool_errors``) made its error a message: recorded
    as the call's failure, and that message is what the graph gets, as without tether."""

    def __init__(self, message: ToolMessage) -> None:
        super().__init__(str(message.content))
        self.message = message


class _Outcome:
    """What the tool returned to ``ToolNode`` on its last attempt, and the form it is recorded in."""

    def __init__(self) -> None:
        self.live: Any = None

    def record(self, result: Any) -> Any:
        if isinstance(result, ToolMessage) and result.status == "error":
            raise _ErrorMessage(result)
        self.live = result
        if isinstance(result, ToolMessage):
            if result.artifact is None:
                return result.content
            return {"content": result.content, "artifact": result.artifact}
        if isinstance(result, Command):
            kind, blob = _SERDE.dumps_typed(result)
            return {"command": {"update": result.update, "goto": result.goto},
                    "serialized": [kind, base64.b64encode(blob).decode()]}
        return result


def _replayed(recorded: Any, call: Any) -> Any:
    """A recorded result in the form ``ToolNode`` expects from a tool call (its id the current call's)."""
    if isinstance(recorded, dict) and "serialized" in recorded:
        kind, blob = recorded["serialized"]
        return _SERDE.loads_typed((kind, base64.b64decode(blob)))
    if isinstance(recorded, dict) and "artifact" in recorded:
        return ToolMessage(content=recorded["content"], artifact=recorded["artifact"], name=call["name"],
                           tool_call_id=call["id"])
    return ToolMessage(content=recorded if isinstance(recorded, str | list) else json.dumps(recorded),
                       name=call["name"], tool_call_id=call["id"])


class ToolPolicy:
    """Each tool call of a ``ToolNode`` under tether's tool policy and its run's journal (through
    ``ToolNode(wrap_tool_call=..., awrap_tool_call=...)``, as :func:`tool_node` builds it): recorded
    (arguments, result, duration, error), each attempt bounded by ``timeout_s`` (else the route
    ``tool:<name>``'s ``tool_timeout_s``), retried only for the tools named in ``idempotent_tools``
    (or marked ``idempotent`` on their route in ``tether.toml``), and in a resumed run a call that
    completed before the crash returns its recorded result as a ``ToolMessage`` without running.
    The callback handler does not record these calls again."""

    def __init__(self, *, idempotent_tools: Iterable[str] = (), timeout_s: float | None = None,
                 bus: Bus | None = None, policies: PolicySet | None = None, capture: bool = True,
                 redact: Redactor | Hook | Iterable[str] | None = None) -> None:
        if isinstance(idempotent_tools, str):
            raise TypeError("idempotent_tools is a collection of tool names, not one string "
                            f"({idempotent_tools!r}): write idempotent_tools={{{idempotent_tools!r}}}")
        self.tools = FrameworkTools(SOURCE, idempotent=idempotent_tools, timeout_s=timeout_s, bus=bus,
                                    policies=policies, capture=capture, redact=redact)

    def wrap_tool_call(self, request: Any, execute: Callable[[Any], Any]) -> Any:
        call, outcome = request.tool_call, _Outcome()

        def run() -> Any:
            token = _governed.set(call.get("id"))
            try:
                return outcome.record(execute(request))
            finally:
                _governed.reset(token)

        try:
            recorded = self.tools.call(call["name"], dict(call.get("args") or {}), run)
        except _ErrorMessage as failed:
            return failed.message
        return outcome.live if outcome.live is not None else _replayed(recorded, call)

    async def awrap_tool_call(self, request: Any, execute: Callable[[Any], Awaitable[Any]]) -> Any:
        call, outcome = request.tool_call, _Outcome()

        async def run() -> Any:
            token = _governed.set(call.get("id"))
            try:
                return outcome.record(await execute(request))
            finally:
                _governed.reset(token)

        try:
            recorded = await self.tools.acall(call["name"], dict(call.get("args") or {}), run)
        except _ErrorMessage as failed:
            return failed.message
        return outcome.live if outcome.live is not None else _replayed(recorded, call)


def tool_node(tools: Sequence[Any], *, idempotent_tools: Iterable[str] = (), timeout_s: float | None = None,
              bus: Bus | None = None, policies: PolicySet | None = None, capture: bool = True,
              redact: Redactor | Hook | Iterable[str] | None = None, **options: Any) -> ToolNode:
    """A ``ToolNode`` of ``tools`` whose calls run under tether's tool policy (:class:`ToolPolicy`);
    ``options`` are ``ToolNode``'s own (``name``, ``handle_tool_errors``...). Give it to
    ``create_react_agent(model, tool_node(tools))`` or add it to a graph as a node."""
    if "wrap_tool_call" in options or "awrap_tool_call" in options:
        raise TypeError("tool_node sets wrap_tool_call and awrap_tool_call itself: to add your own wrapper, call "
                        "ToolPolicy(...).wrap_tool_call / awrap_tool_call from inside it and build the ToolNode "
                        "yourself")
    policy = ToolPolicy(idempotent_tools=idempotent_tools, timeout_s=timeout_s, bus=bus, policies=policies,
                        capture=capture, redact=redact)
    return ToolNode(list(tools), wrap_tool_call=policy.wrap_tool_call, awrap_tool_call=policy.awrap_tool_call,
                    **options)


_MIDDLEWARE: type | None = None  # the AgentMiddleware class tool_middleware makes, once


def tool_middleware(*, idempotent_tools: Iterable[str] = (), timeout_s: float | None = None, bus: Bus | None = None,
                    policies: PolicySet | None = None, capture: bool = True,
                    redact: Redactor | Hook | Iterable[str] | None = None) -> Any:
    """A LangChain agent middleware (``langchain.agents.create_agent(model, tools,
    middleware=[tool_middleware(...)])``, langchain 1.x) whose ``wrap_tool_call`` and
    ``awrap_tool_call`` run each of the agent's tool calls under tether's tool policy
    (:class:`ToolPolicy`, the same options as :func:`tool_node`)."""
    global _MIDDLEWARE
    try:
        from langchain.agents.middleware import AgentMiddleware
    except ImportError as missing:
        raise ImportError("tether.adapters.langgraph.tool_middleware is a middleware for LangChain's create_agent, "
                          "in the `langchain` package (1.x), which is not installed: install it, or give "
                          "langgraph's create_react_agent a tool_node(tools) instead") from missing
    if _MIDDLEWARE is None:

        class TetherToolPolicy(AgentMiddleware):
            """Each tool call of the agent under tether's tool policy (``tether.adapters.langgraph.ToolPolicy``)."""

            def __init__(self, policy: ToolPolicy) -> None:
                super().__init__()
                self.policy = policy

            def wrap_tool_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
                return self.policy.wrap_tool_call(request, handler)

            async def awrap_tool_call(self, request: Any, handler: Callable[[Any], Awaitable[Any]]) -> Any:
                return await self.policy.awrap_tool_call(request, handler)

        _MIDDLEWARE = TetherToolPolicy
    return _MIDDLEWARE(ToolPolicy(idempotent_tools=idempotent_tools, timeout_s=timeout_s, bus=bus,
                                  policies=policies, capture=capture, redact=redact))


def memory_hook(memory: Any, *, namespaces: Any = None, token_budget: int = 500) -> Callable[..., Any]:
    """A ``pre_model_hook`` for ``create_react_agent``: what ``memory`` holds on the last human
    message goes before the conversation as a system message (not kept in the state), and the
    retrieval is recorded as the tool call ``tether.memory.context``."""
    from langchain_core.messages import SystemMessage

    async def hook(state: Any) -> dict[str, Any]:
        messages = list(state["messages"] if isinstance(state, dict) else state.messages)
        query = next((_text(m) for m in reversed(messages) if getattr(m, "type", None) == "human"), "")
        text = await inject_memory(memory, query, namespaces=namespaces, token_budget=token_budget)
        injected = [SystemMessage(content=f"What you remember:\n{text}")] if text else []
        return {"llm_input_messages": [*injected, *messages]}

    return hook


def _text(message: Any) -> str:
    content = getattr(message, "content", "")
    if isinstance(content, str):
        return content
    return " ".join(part.get("text", "") for part in content if isinstance(part, dict))


# -- the store: LangGraph's long-term memory on tether memory ----------------------------------

_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-@+=")


def _label(part: str) -> str:
    return "".join(c if c in _SAFE else "".join(f"~{b:02x}" for b in c.encode()) for c in part)


def _unlabel(text: str) -> str:
    raw, i = bytearray(), 0
    while i < len(text):
        if text[i] == "~":
            raw.append(int(text[i + 1:i + 3], 16))
            i += 3
        else:
            raw += text[i].encode()
            i += 1
    return raw.decode()


def store_namespace(namespace: tuple[str, ...]) -> str:
    """A LangGraph namespace (a tuple of labels) as a tether memory namespace, ``lg:<label>.<label>``."""
    return "lg:" + ".".join(_label(part) for part in namespace)


def graph_namespace(namespace: str) -> tuple[str, ...] | None:
    """The inverse of :func:`store_namespace`; None for a namespace the store did not write."""
    if not namespace.startswith("lg:"):
        return None
    return tuple(_unlabel(part) for part in namespace[3:].split("."))


def _matches(namespace: tuple[str, ...], condition: Any) -> bool:
    path = tuple(condition.path)
    if len(path) > len(namespace):
        return False
    window = namespace[:len(path)] if condition.match_type == "prefix" else namespace[len(namespace) - len(path):]
    return all(p == "*" or p == n for p, n in zip(path, window, strict=True))


class TetherStore(BaseStore):
    """LangGraph's ``BaseStore`` (long-term memory across threads) on tether memory (``AsyncMemory``):
    each item an entry of the namespace ``lg:<labels>`` whose text is the item's JSON, so it is
    versioned, in the log (it survives restarts, shows in the views) and found by tether's search
    (keywords and embeddings: ``search(..., query=)``). A put returns once the memory view has it.

    Sync (``get``, ``put``: a graph's ``invoke``) and async alike: every operation runs on the
    event loop of the memory's bus; without ``memory``, an ``AsyncMemory`` of ``agent`` on tether's
    background bus (a thread of its own, usable from any thread and any loop). A sync call on the
    thread of the memory's own loop would wait for itself: it raises ``LoopThreadError``.

    TTL (``supports_ttl``): a put's ``ttl`` (minutes; else ``ttl={"default_ttl": ...}``) is the
    entry's TTL in tether memory, whose reads hide it once expired; a read with ``refresh_ttl``
    (else ``ttl={"refresh_on_read": ...}``, default on) writes the item again with a fresh TTL."""

    supports_ttl = True

    def __init__(self, memory: Any = None, *, agent: str | None = None, ttl: TTLConfig | None = None) -> None:
        self.memory = memory
        self.agent = agent
        self.ttl_config = ttl
        self._hub: Hub | None = None
        self._starting: asyncio.Task[Any] | None = None

    # -- where the work runs: the memory's loop ---------------------------------------------------

    async def _start(self, hub: Hub) -> Any:
        if self.memory is None:  # made once, on the bus's loop, however many batches ask at once
            if self._starting is None:
                self._starting = hub.loop.create_task(AsyncMemory(hub.bus, agent=self.agent).start())
            self.memory = await asyncio.shield(self._starting)
        return self.memory

    def _hub_of(self, make_background: Callable[[], Hub]) -> Hub:
        if self._hub is None:
            self._hub = Hub.of(self.memory.bus) if self.memory is not None else make_background()
        return self._hub

    def batch(self, ops: Iterable[Any]) -> list[Any]:
        ops = list(ops)
        hub = self._hub_of(background_hub)
        try:
            return hub.call_sync(lambda: self._batch(hub, ops))
        except LoopThreadError:
            raise LoopThreadError(
                "TetherStore: a sync call (get, put, search, a graph's invoke) on the thread of its memory's own "
                "event loop would wait for itself: use aget / aput / asearch and ainvoke() there, or give the "
                "graph TetherStore() without a memory (tether's background bus, on a thread of its own)") from None

    async def abatch(self, ops: Iterable[Any]) -> list[Any]:
        ops = list(ops)
        if self._hub is None and self.memory is None:
            self._hub = background_hub_nowait() or await asyncio.to_thread(background_hub)
        hub = self._hub_of(background_hub)
        return await hub.call(lambda: self._batch(hub, ops))

    async def _batch(self, hub: Hub, ops: list[Any]) -> list[Any]:
        await self._start(hub)
        return [await self._one(op) for op in ops]

    async def _one(self, op: Any) -> Any:
        if isinstance(op, GetOp):
            return await self._get(op.namespace, op.key, refresh=op.refresh_ttl)
        if isinstance(op, PutOp):
            namespace = store_namespace(op.namespace)
            if op.value is None:
                try:
                    done = await self.memory.delete(namespace, op.key)
                except MemoryNotFound:
                    return None
            else:
                ttl = getattr(op, "ttl", None)
                done = await self.memory.write(namespace, json.dumps(op.value, separators=(",", ":")), key=op.key,
                                               metadata={"ttl_minutes": ttl} if ttl is not None else None,
                                               ttl=ttl * 60 if ttl is not None else None)
            await self.memory.wait_for(done.seq)
            return None
        if isinstance(op, SearchOp):
            return await self._search(op)
        if isinstance(op, ListNamespacesOp):
            found = sorted({ns for ns in await self._namespaces() if not op.match_conditions
                            or all(_matches(ns, c) for c in op.match_conditions)})
            if op.max_depth is not None:
                found = sorted({ns[:op.max_depth] for ns in found})
            return found[op.offset:op.offset + op.limit]
        raise TypeError(f"TetherStore: unknown operation {type(op).__name__}")

    async def _refresh(self, entry: Any) -> None:
        """Write an item with a TTL again, its TTL counted from now (LangGraph's ``refresh_ttl``)."""
        minutes = (entry.metadata or {}).get("ttl_minutes")
        if minutes is None:
            return
        done = await self.memory.write(entry.namespace, entry.text, key=entry.key, metadata=entry.metadata,
                                       ttl=float(minutes) * 60)
        await self.memory.wait_for(done.seq)

    async def _namespaces(self) -> list[tuple[str, ...]]:
        named = [graph_namespace(name) for name, live in await self.memory.namespaces() if live]
        return [ns for ns in named if ns is not None]

    @staticmethod
    def _item(entry: Any, namespace: tuple[str, ...], score: float | None = None) -> Any:
        value = json.loads(entry.text)
        created = entry.created_at or datetime.now(UTC)
        updated = entry.updated_at or created
        if score is None:
            return Item(value=value, key=entry.key, namespace=namespace, created_at=created, updated_at=updated)
        return SearchItem(namespace=namespace, key=entry.key, value=value, created_at=created, updated_at=updated,
                          score=score)

    async def _get(self, namespace: tuple[str, ...], key: str, *, refresh: bool = False) -> Any:
        try:
            entry = await self.memory.get(store_namespace(namespace), key)
        except MemoryNotFound:
            return None
        if refresh:
            await self._refresh(entry)
        return self._item(entry, namespace)

    async def _search(self, op: Any) -> list[Any]:
        prefix = tuple(op.namespace_prefix)
        spaces = [ns for ns in await self._namespaces() if ns[:len(prefix)] == prefix]
        if not spaces:
            return []
        wanted = op.filter or {}
        if op.query:
            hits = await self.memory.search(op.query, [store_namespace(ns) for ns in spaces],
                                            k=(op.offset + op.limit) * 2 if wanted else op.offset + op.limit)
            items = [self._item(h.entry, graph_namespace(h.entry.namespace) or (), h.score) for h in hits]
        else:
            items = []
            for ns in spaces:
                after = None
                while True:  # a page of entries at a time, by key
                    page = await self.memory.entries(store_namespace(ns), limit=1000, after_key=after)
                    items += [self._item(e, ns, 0.0) for e in page]
                    if len(page) < 1000:
                        break
                    after = page[-1].key
            items.sort(key=lambda item: item.updated_at, reverse=True)
        items = [item for item in items if all(item.value.get(k) == v for k, v in wanted.items())]
        found = items[op.offset:op.offset + op.limit]
        if op.refresh_ttl:
            for item in found:
                with contextlib.suppress(MemoryNotFound):
                    await self._refresh(await self.memory.get(store_namespace(item.namespace), item.key))
        return found


# -- state --------------------------------------------------------------------------------------


def _config(thread: str, ns: str, checkpoint_id: str) -> RunnableConfig:
    return {"configurable": {"thread_id": thread, "checkpoint_ns": ns, "checkpoint_id": checkpoint_id}}


class TetherCheckpointer(BaseCheckpointSaver[str]):
    """LangGraph's checkpointer on tether: checkpoints, channel values and pending writes in the
    JetStream KV bucket ``bucket`` (file storage), so a graph's state survives a restart of the
    process and of NATS. Sync (``invoke``, ``stream``) and async (``ainvoke``, ``astream``) alike:
    every read and write runs on the bus's event loop, ``bus`` (default: tether's background bus,
    on a thread of its own, usable from any thread and any loop). A sync call on the thread of
    ``bus``'s own loop would wait for itself: it raises :class:`tether.adapters.LoopThreadError`."""

    def __init__(self, bus: Bus | None = None, *, bucket: str = "tether-langgraph", serde: Any = None) -> None:
        super().__init__(serde=serde)
        self.bus = bus
        self.bucket = bucket
        self.hub: Hub | None = None
        self.state = KvState(bus, bucket) if bus is not None else None

    # -- where the work runs: the bus's loop ------------------------------------------------------

    def _kv(self, hub: Hub) -> Hub:
        self.hub = hub
        if self.state is None:
            self.state = KvState(hub.bus, self.bucket)
        return hub

    def _hub_sync(self) -> Hub:
        if self.hub is not None:
            return self.hub
        return self._kv(Hub.of(self.bus) if self.bus is not None else background_hub())

    async def _hub_async(self) -> Hub:
        if self.hub is not None:
            return self.hub
        hub = Hub.of(self.bus) if self.bus is not None else background_hub_nowait()
        return self._kv(hub if hub is not None else await asyncio.to_thread(background_hub))

    async def _on_bus(self, make: Callable[[], Awaitable[T]]) -> T:
        return await (await self._hub_async()).call(make)

    def _on_bus_sync(self, make: Callable[[], Awaitable[T]]) -> T:
        try:
            return self._hub_sync().call_sync(make)
        except LoopThreadError:
            raise LoopThreadError(
                "TetherCheckpointer: a sync call (invoke, stream, get_state) on the thread of its bus's own event "
                "loop would wait for itself: use ainvoke() / astream() / aget_state() there, or give the graph "
                "TetherCheckpointer() without a bus (tether's background bus, on a thread of its own)") from None

    @property
    def kv(self) -> KvState:
        assert self.state is not None  # set by _kv before any work runs
        return self.state

    # -- LangGraph's interface, async and sync --------------------------------------------------

    async def aput(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
                   new_versions: ChannelVersions) -> RunnableConfig:
        return await self._on_bus(lambda: self._put(config, checkpoint, metadata, new_versions))

    def put(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
            new_versions: ChannelVersions) -> RunnableConfig:
        return self._on_bus_sync(lambda: self._put(config, checkpoint, metadata, new_versions))

    async def aput_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                          task_path: str = "") -> None:
        await self._on_bus(lambda: self._put_writes(config, writes, task_id, task_path))

    def put_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                   task_path: str = "") -> None:
        self._on_bus_sync(lambda: self._put_writes(config, writes, task_id, task_path))

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await self._on_bus(lambda: self._get_tuple(config))

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self._on_bus_sync(lambda: self._get_tuple(config))

    async def alist(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,
                    before: RunnableConfig | None = None, limit: int | None = None) -> AsyncIterator[CheckpointTuple]:
        for found in await self._on_bus(lambda: self._list(config, filter, before, limit)):
            yield found

    async def adelete_thread(self, thread_id: str) -> None:
        await self._on_bus(lambda: self._delete_thread(thread_id))

    def delete_thread(self, thread_id: str) -> None:
        self._on_bus_sync(lambda: self._delete_thread(thread_id))

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await self._on_bus(lambda: self._delete_for_runs(run_ids))

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        self._on_bus_sync(lambda: self._delete_for_runs(run_ids))

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await self._on_bus(lambda: self._copy_thread(source_thread_id, target_thread_id))

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        self._on_bus_sync(lambda: self._copy_thread(source_thread_id, target_thread_id))

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await self._on_bus(lambda: self._prune(thread_ids, strategy))

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        self._on_bus_sync(lambda: self._prune(thread_ids, strategy))

    def get_next_version(self, current: str | None, channel: None) -> str:
        number = 0 if current is None else current if isinstance(current, int) else int(str(current).split(".")[0])
        return f"{number + 1:032}.{random.random():016}"

    # -- the work, on the bus's loop --------------------------------------------------------------

    async def _put(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
                   new_versions: ChannelVersions) -> RunnableConfig:
        thread, ns = str(config["configurable"]["thread_id"]), config["configurable"].get("checkpoint_ns", "")
        saved = dict(checkpoint)
        values: dict[str, Any] = saved.pop("channel_values")
        t, n = key_token(thread), key_token(ns)
        for channel, version in new_versions.items():
            blob = self.serde.dumps_typed(values[channel]) if channel in values else ("empty", b"")
            await self.kv.put(f"b.{t}.{n}.{key_token(channel)}.{key_token(str(version))}", pack(*blob))
        await self.kv.put(f"c.{t}.{n}.{key_token(checkpoint['id'])}", {
            "checkpoint": pack(*self.serde.dumps_typed(saved)),
            "metadata": pack(*self.serde.dumps_typed(get_checkpoint_metadata(config, metadata))),
            "parent": config["configurable"].get("checkpoint_id")})
        return _config(thread, ns, checkpoint["id"])

    async def _put_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                          task_path: str) -> None:
        thread, ns = str(config["configurable"]["thread_id"]), config["configurable"].get("checkpoint_ns", "")
        checkpoint_id = str(config["configurable"]["checkpoint_id"])
        prefix = f"w.{key_token(thread)}.{key_token(ns)}.{key_token(checkpoint_id)}.{key_token(task_id)}"
        for index, (channel, value) in enumerate(writes):
            idx = WRITES_IDX_MAP.get(channel, index)
            key = f"{prefix}.{key_token(str(idx))}"
            if idx >= 0 and await self.kv.get(key) is not None:
                continue  # a regular write is kept once; special ones (errors, interrupts) are replaced
            await self.kv.put(key, {"task": task_id, "channel": channel, "idx": idx, "path": task_path,
                                    "value": pack(*self.serde.dumps_typed(value))})

    async def _get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        thread, ns = str(config["configurable"]["thread_id"]), config["configurable"].get("checkpoint_ns", "")
        checkpoint_id = get_checkpoint_id(config)
        if checkpoint_id is None:
            ids = await self._ids(thread, ns)
            if not ids:
                return None
            checkpoint_id = ids[-1]
        return await self._tuple(thread, ns, checkpoint_id)

    async def _list(self, config: RunnableConfig | None, filter: dict[str, Any] | None,
                    before: RunnableConfig | None, limit: int | None) -> list[CheckpointTuple]:
        wanted_ns = config["configurable"].get("checkpoint_ns") if config else None
        wanted_id = get_checkpoint_id(config) if config else None
        before_id = get_checkpoint_id(before) if before else None
        if config:
            found = [(str(config["configurable"]["thread_id"]), ns, cid) for ns, cid in
                     await self._checkpoints(key_token(str(config["configurable"]["thread_id"])))]
        else:
            found = await self._all()
        out: list[CheckpointTuple] = []
        for thread, ns, cid in sorted(found, key=lambda f: (f[2], f[0], f[1]), reverse=True):
            if limit is not None and len(out) >= limit:
                break
            if (wanted_ns is not None and ns != wanted_ns) or (wanted_id and cid != wanted_id):
                continue
            if before_id and cid >= before_id:
                continue
            found_tuple = await self._tuple(thread, ns, cid)
            if found_tuple is None:
                continue
            if filter and not all(found_tuple.metadata.get(k) == v for k, v in filter.items()):
                continue
            out.append(found_tuple)
        return out

    async def _delete_thread(self, thread_id: str) -> None:
        t = key_token(str(thread_id))
        for kind in ("c", "b", "w"):
            await self.kv.remove(f"{kind}.{t}.>")

    async def _remove_checkpoint(self, t: str, n: str, c: str) -> None:
        """One checkpoint and its pending writes (channel values may be shared with others: kept)."""
        await self.kv.remove(f"c.{t}.{n}.{c}")
        await self.kv.remove(f"w.{t}.{n}.{c}.>")

    async def _delete_for_runs(self, run_ids: Sequence[str]) -> None:
        wanted = {str(r) for r in run_ids}
        for key in await self.kv.keys("c"):
            saved = await self.kv.get(key)
            if saved is not None and self.serde.loads_typed(unpack(saved["metadata"])).get("run_id") in wanted:
                _, t, n, c = key.split(".")
                await self._remove_checkpoint(t, n, c)

    async def _copy_thread(self, source: str, target: str) -> None:
        s, t = key_token(str(source)), key_token(str(target))
        for kind in ("c", "b", "w"):
            for key in await self.kv.keys(f"{kind}.{s}"):
                value = await self.kv.get(key)
                if value is not None:
                    await self.kv.put(f"{kind}.{t}.{key.split('.', 2)[2]}", value)

    async def _prune(self, thread_ids: Sequence[str], strategy: str) -> None:
        if strategy not in ("keep_latest", "delete"):
            raise ValueError(f"TetherCheckpointer.prune: unknown strategy {strategy!r}; use 'keep_latest' or 'delete'")
        for thread in thread_ids:
            t = key_token(str(thread))
            if strategy == "delete":
                await self._delete_thread(str(thread))
                continue
            by_ns: dict[str, list[str]] = {}
            for ns, cid in await self._checkpoints(t):
                by_ns.setdefault(ns, []).append(cid)
            for ns, ids in by_ns.items():
                for cid in sorted(ids)[:-1]:  # every checkpoint but the latest of its namespace
                    await self._remove_checkpoint(t, key_token(ns), key_token(cid))

    # -- reading ------------------------------------------------------------------------------

    async def _checkpoints(self, t: str) -> list[tuple[str, str]]:
        return [(untoken(k.split(".")[2]), untoken(k.split(".")[3])) for k in await self.kv.keys(f"c.{t}")]

    async def _all(self) -> list[tuple[str, str, str]]:
        out = []
        for key in await self.kv.keys("c"):
            _, t, n, c = key.split(".")
            out.append((untoken(t), untoken(n), untoken(c)))
        return out

    async def _ids(self, thread: str, ns: str) -> list[str]:
        return sorted(cid for n, cid in await self._checkpoints(key_token(thread)) if n == ns)

    async def _tuple(self, thread: str, ns: str, checkpoint_id: str) -> CheckpointTuple | None:
        t, n = key_token(thread), key_token(ns)
        saved = await self.kv.get(f"c.{t}.{n}.{key_token(checkpoint_id)}")
        if saved is None:
            return None
        checkpoint: Checkpoint = self.serde.loads_typed(unpack(saved["checkpoint"]))
        values: dict[str, Any] = {}
        for channel, version in checkpoint["channel_versions"].items():
            blob = await self.kv.get(f"b.{t}.{n}.{key_token(channel)}.{key_token(str(version))}")
            if blob is not None and blob[0] != "empty":
                values[channel] = self.serde.loads_typed(unpack(blob))
        writes = [w for w in [await self.kv.get(k) for k in
                              await self.kv.keys(f"w.{t}.{n}.{key_token(checkpoint_id)}")] if w is not None]
        writes.sort(key=lambda w: writes_sort_key(w["path"], w["task"], w["idx"]))
        parent = saved["parent"]
        return CheckpointTuple(
            config=_config(thread, ns, checkpoint_id),
            checkpoint={**checkpoint, "channel_values": values},
            metadata=self.serde.loads_typed(unpack(saved["metadata"])),
            parent_config=_config(thread, ns, parent) if parent else None,
            pending_writes=[(w["task"], w["channel"], self.serde.loads_typed(unpack(w["value"]))) for w in writes])

    def list(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,  # last: shadows list
             before: RunnableConfig | None = None, limit: int | None = None) -> Iterator[CheckpointTuple]:
        yield from self._on_bus_sync(lambda: self._list(config, filter, before, limit))

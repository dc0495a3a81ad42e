"""LangGraph and LangChain under tether: runs and tool calls from LangChain's callbacks (installed
for every run by :func:`install`), model calls through tether (:func:`chat_model`), graph state in
a tether-backed checkpointer (:class:`TetherCheckpointer`), memory put into the model's input
(:func:`memory_hook`). The only module of tether that imports ``langchain_core`` or ``langgraph``.
"""

from __future__ import annotations

import contextvars
import random
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
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

from tether.adapters import Run, instrument
from tether.bus import Bus

from ._frameworks import KvState, ObservedTool, inject_memory, key_token, pack, unpack, untoken

__all__ = ["TetherCallbackHandler", "TetherCheckpointer", "chat_model", "install", "memory_hook"]

SOURCE = "urn:tether:adapter:langgraph"


class TetherCallbackHandler(BaseCallbackHandler):
    """A graph run (a root chain) is a tether run named for the graph; each tool call is recorded.

    Run inline (``run_inline``), in the caller's own context: the run it opens is the current
    run of everything the graph does next (its model calls, its tools, its nodes' tasks)."""

    run_inline = True
    raise_error = False

    def __init__(self) -> None:
        self._runs: dict[UUID, Run] = {}
        self._tools: dict[UUID, ObservedTool] = {}

    # runs
    def on_chain_start(self, serialized: dict[str, Any] | None, inputs: Any, *, run_id: UUID,
                       parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        if parent_run_id is not None:
            return
        name = kwargs.get("name") or (serialized or {}).get("name") or "LangGraph"
        run = Run(agent=str(name), name=str(name), metadata={"framework": "langgraph", "langchain_run_id": str(run_id)},
                  derive="langgraph")
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


# -- state --------------------------------------------------------------------------------------


def _config(thread: str, ns: str, checkpoint_id: str) -> RunnableConfig:
    return {"configurable": {"thread_id": thread, "checkpoint_ns": ns, "checkpoint_id": checkpoint_id}}


class TetherCheckpointer(BaseCheckpointSaver[str]):
    """LangGraph's checkpointer on tether: checkpoints, channel values and pending writes in the
    JetStream KV bucket ``bucket`` (file storage), so a graph's state survives a restart of the
    process and of NATS. Async only (``ainvoke``, ``astream``)."""

    def __init__(self, bus: Bus, *, bucket: str = "tether-langgraph", serde: Any = None) -> None:
        super().__init__(serde=serde)
        self.state = KvState(bus, bucket)

    async def aput(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
                   new_versions: ChannelVersions) -> RunnableConfig:
        thread, ns = str(config["configurable"]["thread_id"]), config["configurable"].get("checkpoint_ns", "")
        saved = dict(checkpoint)
        values: dict[str, Any] = saved.pop("channel_values")
        t, n = key_token(thread), key_token(ns)
        for channel, version in new_versions.items():
            blob = self.serde.dumps_typed(values[channel]) if channel in values else ("empty", b"")
            await self.state.put(f"b.{t}.{n}.{key_token(channel)}.{key_token(str(version))}", pack(*blob))
        await self.state.put(f"c.{t}.{n}.{key_token(checkpoint['id'])}", {
            "checkpoint": pack(*self.serde.dumps_typed(saved)),
            "metadata": pack(*self.serde.dumps_typed(get_checkpoint_metadata(config, metadata))),
            "parent": config["configurable"].get("checkpoint_id")})
        return _config(thread, ns, checkpoint["id"])

    async def aput_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                          task_path: str = "") -> None:
        thread, ns = str(config["configurable"]["thread_id"]), config["configurable"].get("checkpoint_ns", "")
        checkpoint_id = str(config["configurable"]["checkpoint_id"])
        prefix = f"w.{key_token(thread)}.{key_token(ns)}.{key_token(checkpoint_id)}.{key_token(task_id)}"
        for index, (channel, value) in enumerate(writes):
            idx = WRITES_IDX_MAP.get(channel, index)
            key = f"{prefix}.{key_token(str(idx))}"
            if idx >= 0 and await self.state.get(key) is not None:
                continue  # a regular write is kept once; special ones (errors, interrupts) are replaced
            await self.state.put(key, {"task": task_id, "channel": channel, "idx": idx, "path": task_path,
                                       "value": pack(*self.serde.dumps_typed(value))})

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        thread, ns = str(config["configurable"]["thread_id"]), config["configurable"].get("checkpoint_ns", "")
        checkpoint_id = get_checkpoint_id(config)
        if checkpoint_id is None:
            ids = await self._ids(thread, ns)
            if not ids:
                return None
            checkpoint_id = ids[-1]
        return await self._tuple(thread, ns, checkpoint_id)

    async def alist(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,
                    before: RunnableConfig | None = None, limit: int | None = None) -> AsyncIterator[CheckpointTuple]:
        wanted_ns = config["configurable"].get("checkpoint_ns") if config else None
        wanted_id = get_checkpoint_id(config) if config else None
        before_id = get_checkpoint_id(before) if before else None
        if config:
            found = [(str(config["configurable"]["thread_id"]), ns, cid) for ns, cid in
                     await self._checkpoints(key_token(str(config["configurable"]["thread_id"])))]
        else:
            found = await self._all()
        found.sort(key=lambda f: (f[0], f[1], f[2]))
        for thread, ns, cid in sorted(found, key=lambda f: f[2], reverse=True):
            if (wanted_ns is not None and ns != wanted_ns) or (wanted_id and cid != wanted_id):
                continue
            if before_id and cid >= before_id:
                continue
            found_tuple = await self._tuple(thread, ns, cid)
            if found_tuple is None:
                continue
            if filter and not all(found_tuple.metadata.get(k) == v for k, v in filter.items()):
                continue
            if limit is not None and limit <= 0:
                break
            if limit is not None:
                limit -= 1
            yield found_tuple

    async def adelete_thread(self, thread_id: str) -> None:
        t = key_token(str(thread_id))
        for kind in ("c", "b", "w"):
            await self.state.remove(f"{kind}.{t}.>")

    def _sync(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("TetherCheckpointer is async only: run the graph with ainvoke() or astream() "
                                  "(its bus lives on an event loop), or use LangGraph's own saver for sync code")

    get_tuple = put = put_writes = delete_thread = _sync

    def get_next_version(self, current: str | None, channel: None) -> str:
        number = 0 if current is None else current if isinstance(current, int) else int(str(current).split(".")[0])
        return f"{number + 1:032}.{random.random():016}"

    # -- reading ------------------------------------------------------------------------------

    async def _checkpoints(self, t: str) -> list[tuple[str, str]]:
        return [(untoken(k.split(".")[2]), untoken(k.split(".")[3])) for k in await self.state.keys(f"c.{t}")]

    async def _all(self) -> list[tuple[str, str, str]]:
        out = []
        for key in await self.state.keys("c"):
            _, t, n, c = key.split(".")
            out.append((untoken(t), untoken(n), untoken(c)))
        return out

    async def _ids(self, thread: str, ns: str) -> list[str]:
        return sorted(cid for n, cid in await self._checkpoints(key_token(thread)) if n == ns)

    async def _tuple(self, thread: str, ns: str, checkpoint_id: str) -> CheckpointTuple | None:
        t, n = key_token(thread), key_token(ns)
        saved = await self.state.get(f"c.{t}.{n}.{key_token(checkpoint_id)}")
        if saved is None:
            return None
        checkpoint: Checkpoint = self.serde.loads_typed(unpack(saved["checkpoint"]))
        values: dict[str, Any] = {}
        for channel, version in checkpoint["channel_versions"].items():
            blob = await self.state.get(f"b.{t}.{n}.{key_token(channel)}.{key_token(str(version))}")
            if blob is not None and blob[0] != "empty":
                values[channel] = self.serde.loads_typed(unpack(blob))
        writes = [w for w in [await self.state.get(k) for k in
                              await self.state.keys(f"w.{t}.{n}.{key_token(checkpoint_id)}")] if w is not None]
        writes.sort(key=lambda w: writes_sort_key(w["path"], w["task"], w["idx"]))
        parent = saved["parent"]
        return CheckpointTuple(
            config=_config(thread, ns, checkpoint_id),
            checkpoint={**checkpoint, "channel_values": values},
            metadata=self.serde.loads_typed(unpack(saved["metadata"])),
            parent_config=_config(thread, ns, parent) if parent else None,
            pending_writes=[(w["task"], w["channel"], self.serde.loads_typed(unpack(w["value"]))) for w in writes])

    def list(self, *args: Any, **kwargs: Any) -> Any:  # last: the name would shadow the builtin above
        return self._sync()

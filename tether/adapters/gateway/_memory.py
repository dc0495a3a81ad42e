"""Memory over HTTP: ``POST /v1/memory/{write,get,history,search,context}`` for agents in any language.

The caller's gateway key decides whose memory it is: each request acts as the key's agent
(or the sub-agent its ``x-tether-agent`` names), under ``[memory.grants]`` when tether.toml
has that table, else under the gateway's default: an agent (and its sub-agents) reads and
writes its own namespace ``agent:<id>`` and those named after it (``agent:<id>.<more>``),
nothing else. A trusted key
acts as the agent ``x-tether-agent`` names, or with no agent as an operator (every
namespace). One memory view serves every agent (started at the first request).
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

from tether.bus import Bus
from tether.memory import (
    AsyncMemory,
    Grants,
    GrantTable,
    InvalidMemory,
    MemoryAccessDenied,
    MemoryNotFound,
    MemorySettings,
    VersionConflict,
)

from ._identity import Caller

__all__ = ["OPERATIONS", "MemoryApi", "gateway_grants", "plain"]

def gateway_grants(agent: str | None) -> Grants:
    """An agent's namespaces when tether.toml has no ``[memory.grants]``: its own (a sub-agent
    ``<agent>/<name>``: its agent's), nothing else."""
    if agent is None:
        return Grants.of({})
    owner = agent.split("/", 1)[0]
    mine = [f"agent:{owner}", f"agent:{owner}.*"]
    return Grants.of({agent: GrantTable(read=mine, write=mine)})
_Text = Annotated[StrictStr, Field(min_length=1)]
_Namespaces = _Text | list[_Text] | None


class _Op(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Write(_Op):
    namespace: _Text
    text: _Text
    key: _Text | None = None
    metadata: dict[str, Any] | None = None
    ttl_s: Annotated[float, Field(gt=0)] | None = None
    expected_version: Annotated[int, Field(ge=0)] | None = None


class _Key(_Op):
    namespace: _Text
    key: _Text


class _Search(_Op):
    query: _Text
    namespaces: _Namespaces = None
    k: Annotated[int, Field(ge=1, le=100)] = 5
    mode: Literal["auto", "keyword", "semantic", "hybrid"] = "auto"


class _Context(_Op):
    query: _Text
    namespaces: _Namespaces = None
    token_budget: Annotated[int, Field(ge=1, le=100_000)] = 1000


OPERATIONS: dict[str, type[_Op]] = {"write": _Write, "get": _Key, "history": _Key, "search": _Search,
                                    "context": _Context}


class MemoryApi:
    """The memory endpoints' state: one :class:`AsyncMemory` on the gateway's bus, started lazily."""

    def __init__(self, bus: Bus, settings: MemorySettings | None = None) -> None:
        self.bus = bus
        self.settings = settings
        self._memory: AsyncMemory | None = None
        self._lock = asyncio.Lock()

    async def memory(self) -> AsyncMemory:
        if self._memory is None:
            async with self._lock:
                if self._memory is None:
                    self._memory = await AsyncMemory(self.bus, settings=self.settings,
                                                     source="urn:tether:gateway").start()
        return self._memory

    def grants(self, memory: AsyncMemory, caller: Caller) -> Grants:
        if caller.trusted and caller.agent is None:
            return Grants.open()
        return memory.grants if memory.grants.enabled else gateway_grants(caller.agent)

    async def handle(self, operation: str, caller: Caller, body: Any) -> tuple[int, dict[str, Any]]:
        """One request: (status, JSON document). Errors say what to send instead."""
        model = OPERATIONS.get(operation)
        if model is None:
            return 404, _error("not_found", f"no memory operation {operation!r}: use one of "
                               f"{', '.join(OPERATIONS)} (POST /v1/memory/<operation>)")
        if not isinstance(body, dict):
            return 400, _error("invalid_request", "the body is a JSON object of the operation's fields")
        try:
            args = model.model_validate(body)
        except ValidationError as exc:
            problems = [{"loc": [str(x) for x in e["loc"]], "msg": e["msg"]} for e in exc.errors()]
            return 400, _error("invalid_request", f"invalid {operation} request: " + "; ".join(
                f"{'.'.join(p['loc']) or 'body'}: {p['msg']}" for p in problems), problems=problems)
        try:
            root = await self.memory()
        except InvalidMemory as exc:  # [memory] embedder names a model this host cannot load
            return 503, _error("memory_unavailable", str(exc))
        memory = root.as_agent(caller.agent, grants=self.grants(root, caller), run=caller.run_id)
        try:
            done = await _run(memory, operation, args)
            root.position = max(root.position, memory.position)  # later requests read this write
            return 200, plain(done)
        except MemoryAccessDenied as exc:
            return 403, _error("memory_access_denied", f"{exc} (this key's agent: {caller.agent or 'none'})")
        except MemoryNotFound as exc:
            return 404, _error("memory_not_found", str(exc).strip("'\""))
        except VersionConflict as exc:
            return 409, _error("version_conflict", str(exc))
        except InvalidMemory as exc:
            return 400, _error("invalid_memory", str(exc))

    async def aclose(self) -> None:
        if self._memory is not None:
            await self._memory.close()


async def _run(memory: AsyncMemory, operation: str, args: Any) -> Any:
    if operation == "write":
        return await memory.write(args.namespace, args.text, args.key, args.metadata, args.ttl_s, args.expected_version)
    if operation == "get":
        return await memory.get(args.namespace, args.key)
    if operation == "history":
        return {"versions": await memory.history(args.namespace, args.key)}
    if operation == "search":
        return {"hits": await memory.search(args.query, args.namespaces, args.k, mode=args.mode)}
    return await memory.context(args.query, args.namespaces, args.token_budget)


def plain(value: Any) -> Any:
    """Dataclasses, datetimes and tuples as JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _error(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}

"""What the framework adapters share: a tool call a framework reports, recorded as tether's tool
events under the current run; state kept in a JetStream KV bucket; memory put into a model's
input, the retrieval recorded as a tool call naming the memories injected.

Only tether's public API is used here, and no framework is imported.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.js.errors import KeyDeletedError, KeyNotFoundError
from pydantic_core import to_jsonable_python

from tether.adapters import Hub, Redactor, background_hub, current_run, tool
from tether.bus import Bus, open_bucket
from tether.middleware import PolicySet, load_policies, tool_hash
from tether.schemas import ErrorInfo, Event, ToolCallCompleted, ToolCallFailed, ToolCallRequested, uuid7

__all__ = ["KvState", "ObservedTool", "inject_memory", "key_token", "policy_set", "untoken"]

_REDACT = Redactor()


def _jsonable(value: Any) -> Any:
    return to_jsonable_python(value, fallback=repr, serialize_unknown=True)


@dataclass
class ObservedTool:
    """One tool call a framework runs itself: ``requested`` when it starts (with its position in the
    run and its idempotency key), then ``completed`` or ``failed``. Only observed: dead-lettering,
    timeouts, retries and replay on resume are the tool policy's, which only ``@tether.tool`` applies."""

    hub: Hub
    name: str
    source: str
    call_id: str = field(default_factory=uuid7)
    runid: str | None = None
    agentid: str | None = None
    traceparent: str | None = None
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def start(cls, name: str, arguments: Any, *, source: str) -> ObservedTool | None:
        """Record the call's start under the current run; ``None`` when there is no bus to record to."""
        ctx = current_run()
        try:
            hub = ctx.hub if ctx is not None and ctx.hub is not None else background_hub()
        except Exception:  # no bus: the tool runs unrecorded, as tether never blocks the agent
            return None
        trace = ctx.trace_id if ctx is not None else secrets.token_hex(16)
        observed = cls(hub, name or "tool", source, runid=ctx.run_id if ctx else None,
                       agentid=ctx.agent if ctx else None, traceparent=f"00-{trace}-{secrets.token_hex(8)}-01")
        recorded = _REDACT(_jsonable(arguments))
        tools = ctx.tools if ctx is not None else None
        position = key = None
        if tools is not None:
            digest = tool_hash(observed.name, recorded)
            place = tools.place(digest)
            position, key = place.position, tools.key(place, digest)
        observed._emit(ToolCallRequested(call_id=observed.call_id, tool=observed.name, arguments=recorded,
                                         idempotency_key=key, position=position))
        return observed

    def completed(self, result: Any, duration_ms: float | None = None) -> None:
        self._emit(ToolCallCompleted(call_id=self.call_id, tool=self.name, result=_REDACT(_jsonable(result)),
                                     duration_ms=self._elapsed() if duration_ms is None else duration_ms))

    def failed(self, error: BaseException | str, duration_ms: float | None = None) -> None:
        kind = type(error).__name__ if isinstance(error, BaseException) else "ToolError"
        info = ErrorInfo(type=kind, message=_REDACT.text(str(error))[:2000], retryable=False)
        self._emit(ToolCallFailed(call_id=self.call_id, tool=self.name, attempts=1, error=info))

    def _elapsed(self) -> float:
        return (time.perf_counter() - self.started) * 1000

    def _emit(self, payload: ToolCallRequested | ToolCallCompleted | ToolCallFailed) -> None:
        self.hub.emit(Event.of(payload, runid=self.runid, agentid=self.agentid, traceparent=self.traceparent,
                               source=self.source))


# -- state ---------------------------------------------------------------------------------


def key_token(text: str) -> str:
    """Any string as one NATS KV key token (``[A-Za-z0-9_-]``, never empty)."""
    return "x" + base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def untoken(token: str) -> str:
    raw = token[1:]
    return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()


def pack(kind: str, data: bytes) -> list[str]:
    return [kind, base64.b64encode(data).decode()]


def unpack(value: Sequence[str]) -> tuple[str, bytes]:
    return value[0], base64.b64decode(value[1])


class KvState:
    """JSON documents in one KV bucket (file storage: they survive a restart of every process).

    Keys are listed from the stream's own per-subject index (``STREAM.INFO`` with a subject filter),
    not with a KV watch: nats-py's watch can signal its end before delivering what it holds (when the
    server has pushed every entry before the consumer's info comes back), which read as an empty list.
    A key is removed by purging its subject from the stream, so a listed key is a live one."""

    def __init__(self, bus: Bus, bucket: str) -> None:
        self.bus = bus
        self.bucket = bucket
        self.stream = f"KV_{bucket}"
        self.head = f"$KV.{bucket}."
        self._kv: Any = None

    async def kv(self) -> Any:
        if self._kv is None:
            self._kv = await open_bucket(self.bus.js, self.bucket)
        return self._kv

    async def entry(self, key: str) -> Any:
        """The KV entry (``value``, ``revision``), or None."""
        kv = await self.kv()
        try:
            return await kv.get(key)
        except (KeyNotFoundError, KeyDeletedError):  # never written, or removed
            return None

    async def get(self, key: str) -> Any:
        entry = await self.entry(key)
        return json.loads(entry.value) if entry is not None and entry.value else None

    async def put(self, key: str, value: Any) -> None:
        await (await self.kv()).put(key, json.dumps(_jsonable(value), separators=(",", ":")).encode())

    async def keys(self, prefix: str) -> list[str]:
        """Live keys under ``prefix`` (a key with its tokens, e.g. ``c.<thread>``)."""
        await self.kv()
        info = await self.bus.js.stream_info(self.stream, subjects_filter=f"{self.head}{prefix}.>")
        return [subject[len(self.head):] for subject in (info.state.subjects or {})]

    async def remove(self, key: str) -> None:
        """``key`` gone, its history too (``prefix.>`` removes every key under ``prefix``)."""
        await self.kv()
        await self.bus.js.purge_stream(self.stream, subject=f"{self.head}{key}")

# -- memory ---------------------------------------------------------------------------------


async def inject_memory(memory: Any, query: str, *, namespaces: Any = None, token_budget: int = 500) -> str:
    """``memory.context(query, token_budget)`` as a recorded tool call (``tether.memory.context``:
    arguments the query, result the memories injected as ``namespace/key@version``); the text."""
    if not query.strip():
        return ""

    async def memory_context(query: str, namespaces: Any, token_budget: int) -> dict[str, Any]:
        context = await memory.context(query, namespaces, token_budget)
        return {"injected": [f"{h.entry.namespace}/{h.entry.key}@{h.entry.version}" for h in context.hits],
                "tokens": context.tokens, "text": context.text}

    found = await tool(name="tether.memory.context")(memory_context)(query, namespaces, token_budget)
    return str(found["text"]) if found["injected"] else ""


# -- options --------------------------------------------------------------------------------


def policy_set(value: Any, where: str) -> PolicySet | None:
    """``policies`` as an adapter's options take it: a :class:`PolicySet`, the path of a TOML file
    written as ``tether.toml`` is, or that file's tables as a mapping (``{"budgets": {"run": {"*":
    {"calls": 1}}}}``); ``None`` leaves ``tether.toml``'s. Anything else is refused with a
    ``TypeError`` naming ``where`` (a file that does not parse: ``PolicyConfigError``)."""
    if value is None or isinstance(value, PolicySet):
        return value
    if isinstance(value, (str, Path)):
        return load_policies(value)
    if isinstance(value, Mapping):
        return PolicySet.from_mapping(value, source=f"{where}'s policies")
    raise TypeError(f"{where}: policies must be a tether.middleware.PolicySet, the path of a TOML file written as "
                    f"tether.toml is, or its tables as a dict, not {type(value).__name__}")

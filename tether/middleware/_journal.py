"""A run's journal: the calls it recorded, matched in order against the calls it makes again.

:func:`request_hash` is the canonical hash a call is matched by; :meth:`Journal.of` folds a
run's events into its calls; a :class:`Cursor` matches the calls of a resumed run against
them (a match replays the recorded answer, the first mismatch ends replay). Pure, and
thread-safe: reading the log is :func:`load_journal`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from tether.bus import Bus, event_filter, read_subject
from tether.schemas import (
    CallReplayed,
    Event,
    LlmCallCompleted,
    LlmCallFailed,
    LlmCallRequested,
    RunStarted,
    ToolCallCompleted,
    ToolCallFailed,
    ToolCallRequested,
    ToolCallResolved,
    Usage,
)

from ._budget import VOLATILE_KEYS, canonical_json

__all__ = [
    "REQUEST_VOLATILE_KEYS",
    "Cursor",
    "Entry",
    "Journal",
    "Lookup",
    "load_journal",
    "request_hash",
    "tool_hash",
]

CallKind = Literal["llm", "tool"]
State = Literal["completed", "failed", "unfinished"]

REQUEST_VOLATILE_KEYS = frozenset({
    "stream_options", "user", "metadata", "store", "safety_identifier", "prompt_cache_key", "service_tier",
})
"""Top-level request keys left out of :func:`request_hash`: who asks, how usage is reported,
whether the provider keeps the call, caching and latency hints. None changes the answer."""


def _digest(doc: Any) -> str:
    return "sha256:" + hashlib.sha256(canonical_json(doc).encode()).hexdigest()


def request_hash(body: Mapping[str, Any] | str | bytes, *, operation: str = "chat") -> str:
    """The canonical hash of an LLM request: the operation and the JSON body without
    :data:`REQUEST_VOLATILE_KEYS`, keys sorted, no whitespace, UTF-8, SHA-256. The model, the
    messages (or ``input``/``system``), the tools and every sampling parameter count, and
    ``stream`` too (a stream replays only as a stream). A body that is not a JSON object
    is hashed as its text."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    if isinstance(body, str):
        return _digest({"operation": operation, "raw": body})
    return _digest({"operation": operation,
                    "request": {k: v for k, v in body.items() if k not in REQUEST_VOLATILE_KEYS}})


def request_digests(body: Mapping[str, Any], *, operation: str = "chat") -> tuple[str, str]:
    """``(request_hash(body, operation=...), request_fingerprint(body))``, the same two strings, with
    each top-level value of the request written as canonical JSON once instead of twice (the
    conversation, the tools: most of an agent's request, and more each call)."""
    texts = {key: canonical_json(value) for key, value in body.items()}
    keys = [(key, canonical_json(key) + ":") for key in sorted(texts)]

    def joined(skipped: frozenset[str]) -> str:
        return "{" + ",".join(name + texts[key] for key, name in keys if key not in skipped) + "}"

    hashed = '{"operation":' + canonical_json(operation) + ',"request":' + joined(REQUEST_VOLATILE_KEYS) + "}"
    return ("sha256:" + hashlib.sha256(hashed.encode()).hexdigest(),
            hashlib.sha256(joined(VOLATILE_KEYS).encode()).hexdigest())


def tool_hash(tool: str, arguments: Any) -> str:
    """The canonical hash of a tool call: its name and arguments, as :func:`request_hash`."""
    return _digest({"tool": tool, "arguments": arguments})


# -- what a run recorded ----------------------------------------------------------------------


@dataclass
class Entry:
    """One call the run recorded. ``call_id`` is the call that paid for the answer (for a
    call that was itself replayed, the original's); ``state`` says how it ended."""

    kind: CallKind
    call_id: str
    request_hash: str | None
    state: State = "unfinished"
    stream: bool = False
    provider: str | None = None
    model: str | None = None
    tool: str | None = None
    arguments: Any = None
    response: Any = None
    chunks: list[dict[str, Any]] | None = None
    usage: Usage = field(default_factory=Usage)
    event_id: str | None = None
    """The event that recorded the answer (``completed``, or the ``replayed`` of a replay)."""
    run_id: str | None = None
    opened: int = 0
    closed: float = float("inf")

    @property
    def replayable(self) -> bool:
        """It completed and its answer was recorded (a stream's, event by event)."""
        if self.state != "completed":
            return False
        if self.kind == "tool":
            return True
        return self.chunks is not None if self.stream else self.response is not None


@dataclass(frozen=True)
class Lookup:
    """Where a call stands in the journal: its ``position`` among its run's calls of its
    kind (0, 1, ...), and the recorded call it matched, if any."""

    position: int
    entry: Entry | None = None

    @property
    def replay(self) -> bool:
        return self.entry is not None and self.entry.replayable


@dataclass
class Journal:
    """The calls of one run, in the order they were asked for."""

    run_id: str | None
    entries: list[Entry]

    @classmethod
    def of(cls, events: Iterable[Event], run_id: str | None = None) -> Journal:
        """Fold a run's events (in log order) into its calls. A ``run.started`` with ``resumed``
        begins another attempt: its calls replace those of the attempt before as far as they
        went, and where it went no further without diverging, the rest of that one's remain."""
        open_: dict[str, Entry] = {}
        attempts: list[list[Entry]] = [[]]
        count = 0
        for index, event in enumerate(events):
            count = index + 1
            data = event.data
            if isinstance(data, RunStarted):
                if data.resumed:
                    attempts.append([])
                continue
            if isinstance(data, LlmCallRequested):
                digest = data.request_hash or (request_hash(data.request, operation=data.operation)
                                               if isinstance(data.request, dict | str) else None)
                entry = Entry("llm", data.call_id, digest, stream=data.stream, provider=data.provider,
                              model=data.model, run_id=event.runid, opened=index)
            elif isinstance(data, ToolCallRequested):
                entry = Entry("tool", data.call_id, tool_hash(data.tool, data.arguments), tool=data.tool,
                              arguments=data.arguments, run_id=event.runid, opened=index)
            else:
                call_id = getattr(data, "call_id", None)
                found = open_.get(call_id) if isinstance(call_id, str) else None
                if found is not None and _close(found, event, index):
                    del open_[call_id]  # type: ignore[arg-type]
                continue
            if data.call_id not in open_:
                open_[data.call_id] = entry
                attempts[-1].append(entry)
        entries = attempts[0]
        for later in attempts[1:]:
            entries = _merge(entries, later, shift=count)
        return cls(run_id, entries)

    @property
    def unfinished(self) -> list[Entry]:
        """Calls asked for whose end is not in the log (the process died during them)."""
        return [e for e in self.entries if e.state == "unfinished"]

    def cursor(self) -> Cursor:
        return Cursor(self)


def _merge(before: list[Entry], later: list[Entry], *, shift: int) -> list[Entry]:
    """The calls of an attempt, then (if it never diverged from ``before``) what it did not reach."""
    cursor = Cursor(Journal(None, before))
    for entry in later:
        cursor.match(entry.kind, entry.request_hash)
    if cursor.diverged is not None:
        return later
    rest = sorted((e for lane in cursor._lanes.values() for group in lane.groups for e in group),
                  key=lambda e: e.opened)
    return later + [dataclasses.replace(e, opened=e.opened + shift, closed=e.closed + shift) for e in rest]


def _close(entry: Entry, event: Event, index: int) -> bool:
    """Record how a call ended; False if ``event`` is not its end."""
    data = event.data
    entry.closed = index
    if isinstance(data, LlmCallCompleted):
        entry.state, entry.response, entry.chunks = "completed", data.response, _chunks(data.chunks)
        entry.usage, entry.event_id, entry.model = data.usage, event.id, data.model
    elif isinstance(data, ToolCallCompleted):
        entry.state, entry.response, entry.event_id = "completed", data.result, event.id
    elif isinstance(data, CallReplayed):
        entry.state, entry.response, entry.chunks, entry.usage = "completed", data.response, _chunks(data.chunks), \
            data.usage
        entry.call_id, entry.event_id = data.original_call_id, data.original_event_id or event.id
        entry.run_id = data.original_run_id or entry.run_id
    elif isinstance(data, LlmCallFailed | ToolCallFailed):
        entry.state = "failed"
    elif isinstance(data, ToolCallResolved):  # someone said what became of a call the process died in
        entry.state, entry.response = ("completed", data.result) if data.happened else ("failed", None)
        entry.event_id = event.id if data.happened else None
    else:
        entry.closed = float("inf")  # not an end (an attempt failed, a dead letter's record)
        return False
    return True


def _chunks(value: Any) -> list[dict[str, Any]] | None:
    if not isinstance(value, list) or not all(isinstance(c, dict) for c in value):
        return None
    return value


# -- matching the calls of a resumed run ------------------------------------------------------


class _Lane:
    """The recorded calls of one kind, in groups of calls that were in flight together
    (asked for before the previous ones ended): in a group, calls match in any order."""

    def __init__(self, entries: list[Entry]) -> None:
        self.groups: list[list[Entry]] = []
        end = -1.0
        for entry in sorted(entries, key=lambda e: e.opened):
            if self.groups and entry.opened < end:
                self.groups[-1].append(entry)
                end = max(end, entry.closed)
            else:
                self.groups.append([entry])
                end = entry.closed
        self.calls = 0

    def take(self, digest: str) -> Entry | None:
        while self.groups and not self.groups[0]:
            self.groups.pop(0)
        if not self.groups:
            return None
        group = self.groups[0]
        for i, entry in enumerate(group):
            if entry.request_hash == digest:
                return group.pop(i)
        return None


class Cursor:
    """Matches a resumed run's calls against its journal, in order. Each call of a kind
    takes the next recorded call of that kind with the same request hash (calls that were
    in flight together match in any order among themselves); the first call that matches
    none ends replay: it, and every call after it of any kind, runs live."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self._lanes = {kind: _Lane([e for e in journal.entries if e.kind == kind]) for kind in ("llm", "tool")}
        self._lock = threading.Lock()
        self.diverged: tuple[str, int] | None = None
        """Where replay ended: the kind and position of the first call that matched nothing."""
        self.replayed = 0

    def match(self, kind: CallKind, digest: str | None) -> Lookup:
        """The call's place in the run and the recorded call it matches (consumed), if any."""
        with self._lock:
            lane = self._lanes[kind]
            position = lane.calls
            lane.calls += 1
            if self.diverged is not None:
                return Lookup(position)
            entry = lane.take(digest) if digest is not None else None
            if entry is None:
                self.diverged = (kind, position)
                return Lookup(position)
            if entry.replayable:
                self.replayed += 1
            return Lookup(position, entry)


async def load_journal(bus: Bus, run_id: str, *, timeout: float = 10.0) -> Journal:
    """The journal of ``run_id``, read from the log (its events, in order)."""
    results = await read_subject(bus, event_filter(run=run_id), timeout=timeout)
    return Journal.of((r.event for r in results if r.event is not None), run_id)

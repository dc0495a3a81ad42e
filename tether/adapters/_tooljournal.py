"""A run's tool calls: each one's position and idempotency key, and what a resumed run does with it.

A resumed run matches its tool calls against the run's journal (``tether.journal``: in order, by
tool and arguments, the first call that differs and every later one live). :func:`decide` turns
the recorded call into what to do: replay its result, run it (again), or stop for attention. Pure,
but for the thread-safe position counter.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

from tether.middleware import Cursor, Entry
from tether.schemas import Event, RunNeedsAttention, ToolCallCompleted, ToolCallFailed, ToolCallResolved

__all__ = ["Attention", "Live", "Place", "Replay", "ToolJournal", "decide", "unresolved"]


@dataclass(frozen=True)
class Place:
    """Where a tool call stands in its run: its position (from 0), the recorded call it matched (a
    resumed run), and whether replay had ended (the run went another way) by then."""

    position: int
    entry: Entry | None = None
    diverged: bool = False


@dataclass(frozen=True)
class Replay:
    """Return the recorded result; the tool does not run."""

    entry: Entry
    position: int


@dataclass(frozen=True)
class Live:
    """Run the tool. ``rerun``: the recorded call it repeats (idempotent, or it did not happen)."""

    rerun: Entry | None = None


@dataclass(frozen=True)
class Attention:
    """Stop the run: whether the recorded call's effect happened is unknown, and it may not run twice."""

    entry: Entry
    position: int
    reason: str


def decide(place: Place, *, idempotent: bool, captured: bool) -> Replay | Live | Attention:
    """What a call does, given the recorded call at its place (none: it runs live)."""
    entry = place.entry
    if entry is None:
        return Live()
    if entry.state == "failed":  # it failed, or someone said it did not happen: it runs again
        return Live(rerun=entry)
    if entry.state == "completed":
        if captured:
            return Replay(entry, place.position)
        if idempotent:
            return Live(rerun=entry)
        return Attention(entry, place.position, "the call completed, but its result was not recorded (capture=False) "
                                                "and the tool is not idempotent")
    if idempotent:
        return Live(rerun=entry)
    return Attention(entry, place.position, "the process died inside the call: its start was recorded, its end "
                                            "was not, and the tool is not idempotent")


@dataclass
class ToolJournal:
    """One run's tool calls in this process: positions (the journal's when it resumed) and keys."""

    run_id: str
    cursor: Cursor | None = None
    """The run's journal, when it resumed."""
    _next: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def place(self, digest: str) -> Place:
        """The place of the run's next tool call (``digest``: ``tether.journal.tool_hash``)."""
        if self.cursor is None:
            with self._lock:
                position = self._next
                self._next += 1
            return Place(position)
        look = self.cursor.match("tool", digest)
        return Place(look.position, look.entry, self.cursor.diverged is not None)

    def key(self, place: Place, digest: str) -> str:
        """The call's idempotency key, ``<run>:<position>:<hash>`` (the hash of its tool and arguments, 12
        hex digits): the same for this call in every resumption of the run, and never the key of another
        call, also where a resumed run went another way than it recorded."""
        return f"{self.run_id}:{place.position}:{digest.removeprefix('sha256:')[:12]}"


def unresolved(events: Iterable[Event]) -> list[RunNeedsAttention]:
    """The run's ``needs_attention`` calls whose outcome nothing recorded yet: no ``tool.call.resolved``
    (nor a completion or failure) names the call."""
    waiting: dict[str, RunNeedsAttention] = {}
    ended: set[str] = set()
    for event in events:
        data = event.data
        if isinstance(data, RunNeedsAttention):
            waiting[data.call_id] = data
        elif isinstance(data, ToolCallResolved | ToolCallCompleted | ToolCallFailed):
            ended.add(data.call_id)
    return [w for call_id, w in waiting.items() if call_id not in ended]

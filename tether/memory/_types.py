"""What the memory API returns: frozen records, no behaviour beyond formatting."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

__all__ = ["BulkWritten", "Context", "Entry", "Erased", "Hit", "Version", "Written", "to_datetime"]


def to_datetime(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


@dataclass(frozen=True, slots=True)
class Entry:
    """One memory entry as of some point: its text, metadata and where it came from."""

    namespace: str
    key: str
    version: int
    text: str
    metadata: dict[str, Any]
    seq: int
    created_at: datetime | None
    updated_at: datetime | None
    expires_at: datetime | None = None
    agent: str | None = None
    run: str | None = None
    source_call_id: str | None = None
    source_message_id: str | None = None
    kind: Literal["memory", "summary"] = "memory"
    status: Literal["live", "compacted"] = "live"
    compacted_into: str | None = None
    replaced: tuple[str, ...] = ()
    valid_from: datetime | None = None
    """When the fact became true, if the writer said (else it is taken as true from ``updated_at``)."""
    observed_at: datetime | None = None
    """When the fact was observed, for imported history."""

    @property
    def valid_time(self) -> datetime | None:
        """When this version became true: ``valid_from``, else when it was written."""
        return self.valid_from or self.updated_at

    @property
    def citation(self) -> str:
        """``namespace/key@vN``: what a context item cites."""
        return f"{self.namespace}/{self.key}@v{self.version}"


@dataclass(frozen=True, slots=True)
class Version:
    """One event in an entry's history."""

    version: int
    action: Literal["written", "deleted", "compacted"]
    seq: int
    time: datetime | None
    text: str | None
    metadata: dict[str, Any]
    reason: str | None = None
    agent: str | None = None
    run: str | None = None
    source_call_id: str | None = None
    source_message_id: str | None = None
    event_id: str | None = None


@dataclass(frozen=True, slots=True)
class Written:
    """The outcome of a write: the entry's new version and its position in the log."""

    namespace: str
    key: str
    version: int
    seq: int | None
    event_id: str
    merged_into: str | None = None
    """Set when the text was a near-duplicate of this existing key and was merged into it."""
    outboxed: bool = False
    """NATS was unreachable: the write is in the local outbox and has no position yet."""


@dataclass(frozen=True, slots=True)
class BulkWritten:
    """The outcome of :meth:`write_many`: how many, and a position at or after all of them."""

    count: int
    seq: int
    keys: tuple[str, ...]
    outboxed: int = 0
    """How many of them wait in the local outbox (NATS did not answer in time): they reach the
    stream, in order, once it answers again; reads see them then."""


@dataclass(frozen=True, slots=True)
class Reembedded:
    """The outcome of :meth:`reembed`: how many entries got a vector of ``embedder``, in which
    namespaces, and a position at or after all of them (reads see the new vectors from there)."""

    count: int
    seq: int
    embedder: str
    namespaces: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Erased:
    """The outcome of :meth:`erase`: which keys were destroyed, and where the erasure was recorded."""

    namespace: str
    keys_destroyed: tuple[str, ...]
    seq: int | None
    key: str | None = None
    """The one entry erased; None when the whole namespace was."""


@dataclass(frozen=True, slots=True)
class Hit:
    """A search result: the entry, its score, and its rank in each retriever (1-based)."""

    entry: Entry
    score: float
    keyword_rank: int | None = None
    semantic_rank: int | None = None


@dataclass(frozen=True, slots=True)
class Context:
    """Text ready to inject into a prompt, within a token budget, one citation per item."""

    text: str
    hits: tuple[Hit, ...]
    tokens: int
    token_budget: int
    citations: tuple[str, ...] = field(default=())

    def __str__(self) -> str:
        return self.text

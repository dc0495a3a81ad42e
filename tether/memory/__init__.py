"""Event-sourced agent memory: versioned, searchable, compactable, shareable, erasable.

Every write is a ``memory.written`` event on the bus; the memory view (SQLite with FTS5)
is a projection of the log, kept current in this process or by another one. ::

    import tether.memory

    async with await tether.memory.connect(agent="support-bot") as memory:
        written = await memory.write("agent:support-bot", "The customer prefers email.")
        hits = await memory.search("how to contact the customer?")
        prompt_part = await memory.context("contact preferences", token_budget=300)

See ``docs/memory.md``.
"""

from ._client import AsyncMemory
from ._client import connect_memory as connect
from ._compact import ExtractiveSummarizer, LlmSummarizer, Summarizer, Summary, plan_compaction, similarity
from ._embed import (
    AsymmetricEmbedder,
    Embedder,
    HashEmbedder,
    LateEmbedder,
    LocalEmbedder,
    QueryEmbedder,
    RemoteEmbedder,
    SpanEmbedder,
    StaticEmbedder,
    VectorCache,
    VectorIndex,
)
from ._errors import (
    BulkWriteFailed,
    InvalidMemory,
    MemoryAccessDenied,
    MemoryKeyMissing,
    MemoryNotFound,
    TetherMemoryError,
    VersionConflict,
)
from ._extract import Extraction, ExtractiveExtractor, Extractor, LlmExtractor, Operation, Proposal
from ._feed import MEMORY_SUBJECTS, ViewFeed, last_memory_seq
from ._grants import Grant, Grants, GrantTable, NatsPermissions, nats_permissions
from ._keys import FileKeyStore, InMemoryKeyStore, KeyStore, NatsKeyStore
from ._names import check_key, check_namespace, namespace_filter
from ._rank import Ranking
from ._settings import MemorySection, MemorySettings, load_settings
from ._sync import Memory
from ._types import BulkWritten, Context, Entry, Erased, Hit, Reembedded, Version, Written
from ._view import MemoryStore, MemoryView

__all__ = [
    "MEMORY_SUBJECTS",
    "AsymmetricEmbedder",
    "AsyncMemory",
    "BulkWriteFailed",
    "BulkWritten",
    "Context",
    "Embedder",
    "Entry",
    "Erased",
    "Extraction",
    "ExtractiveExtractor",
    "ExtractiveSummarizer",
    "Extractor",
    "FileKeyStore",
    "Grant",
    "GrantTable",
    "Grants",
    "HashEmbedder",
    "Hit",
    "InMemoryKeyStore",
    "InvalidMemory",
    "KeyStore",
    "LateEmbedder",
    "LlmExtractor",
    "LlmSummarizer",
    "LocalEmbedder",
    "Memory",
    "MemoryAccessDenied",
    "MemoryKeyMissing",
    "MemoryNotFound",
    "MemorySection",
    "MemorySettings",
    "MemoryStore",
    "MemoryView",
    "NatsKeyStore",
    "NatsPermissions",
    "Operation",
    "Proposal",
    "QueryEmbedder",
    "Ranking",
    "Reembedded",
    "RemoteEmbedder",
    "SpanEmbedder",
    "StaticEmbedder",
    "Summarizer",
    "Summary",
    "TetherMemoryError",
    "VectorCache",
    "VectorIndex",
    "Version",
    "VersionConflict",
    "ViewFeed",
    "Written",
    "check_key",
    "check_namespace",
    "connect",
    "last_memory_seq",
    "load_settings",
    "namespace_filter",
    "nats_permissions",
    "plan_compaction",
    "similarity",
]

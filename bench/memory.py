"""Memory benchmark: acked writes/s, search and context latency at 10k and 100k memories, recall@5.

What is measured, against one ``nats-server -js`` started here (free loopback port,
temporary store, stopped at the end) and a memory client that leads its own view:

* **writes/s**: ``AsyncMemory.write_many`` (seal each entry with AES-GCM, wrap it in a
  ``memory.written`` event, ``emit``, one ``flush``: every event acked by the stream)
  against plain nats-py ``publish_async`` + ``publish_async_completed`` of *the same
  bytes* (built beforehand, outside the timed section). Rounds alternate raw, tether; each
  starts with the view caught up (the view applies the raw events too), and each gives the
  CPU time of the event loop's thread per write beside the wall clock.
  Then the time the view takes to apply them (fold, FTS index, checkpoint), and
  sequential acked ``write()`` calls (one round trip each) for reference.
* **search p50/p95** (wall clock, and the process's CPU time per search, which the load of
  other processes on a shared machine does not stretch) over a synthetic corpus (words
  drawn from a Zipf distribution, so common words match many entries) at 10k and at 100k
  memories: keyword (FTS5 BM25 + recency), and hybrid (keyword + cosine, fused as ``Ranking``
  says) when the offline model is installed. The embedder measured is ``--embedder``: the
  static table distilled from MiniLM (256 dimensions, the default), MiniLM itself (384), or the
  asymmetric pair (documents by the static table, queries by MiniLM projected into its space);
  the other two are peers (``--peers``), their hybrid search, query embedding and embedded writes
  measured in the same run (and the development set scored with them, unless ``--no-peer``).
  Corpus vectors are random unit vectors recorded under each space's name, one namespace per
  space (the static and asymmetric embedders share one; embedding 100k texts with MiniLM on this CPU
  would take over ten minutes and does not change search cost); each query is embedded by
  the real embedder, and that time is part of the hybrid figure (a second figure searches the
  same query again, its vector cached).
* **context()** p50/p95 at 100k memories, token budget 500. Each search figure carries the 1-minute
  load average before and after it and the BLAS thread setting (``OPENBLAS_NUM_THREADS``): the
  wall clock is what a caller waits, which other processes on the machine stretch.
* **retrieval quality** on the labelled development set of ``bench/memory_set.py``
  (``bench/memory_set.json``: 738 memory writes in 55 namespaces, 413 queries asked by
  agents whose grants scope them), on its ``tune`` and its ``heldout`` part separately:
  recall@5, MRR@10, recall@5 per category (direct, paraphrase, now, latest, before,
  negation, multi-hop, team), stale hits (a superseded version's text in the top 5) and
  forbidden hits (an entry the asker may not read). For tether keyword, semantic and hybrid
  (the last two with the real model, if installed) and, in the same run, a plain BM25 in the
  standard library over the same entries with the same grant filter (``Bm25``). ``--cv`` judges
  candidate rankings (``CV_FAMILIES``, and a re-ranking model) by grouped cross-validation inside
  the tune split: each question template (or kind) left out in turn, the setting chosen on the rest.

Run it::

    .venv/bin/python bench/memory.py                  # about two minutes
    .venv/bin/python bench/memory.py --small --json   # 2k/10k memories, JSON on stdout
    .venv/bin/python bench/memory.py --quality        # the development set only (about a minute)
    .venv/bin/python bench/memory.py --writes --rounds 5      # the acked writes beside raw only
    .venv/bin/python bench/memory.py --quality --split tune   # the tune part only (while tuning)
    .venv/bin/python bench/memory.py --cv --embedder minilm    # candidates, cross-validated inside tune
    .venv/bin/python bench/memory.py --cv --embedder minilm --families "one pass,second text"   # some only
    .venv/bin/python bench/memory.py --cv --embedder minilm --families "semantic evidence" \
        --cv-base '{"expand_similar": 0, "expand_deep": 0, "entity": 0}'   # from session 10's default
    .venv/bin/python bench/memory.py --small --no-quality --embedder minilm   # latency with MiniLM
    .venv/bin/python bench/memory.py --embedder asymmetric    # the three embedders side by side
    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 .venv/bin/python bench/memory.py --no-quality   # one thread
    .venv/bin/python bench/memory.py --keyword-only --base ../wt-main   # keyword search, two checkouts

``--keyword-only`` times keyword search alone (about eight minutes for 10k and 100k, three rounds, at
load 5-6, most of it writing the view): it writes the view a full
run leaves (68,912 other entries, then the corpus in two namespaces with random vectors, as with a
model installed) once per size, then a process of this checkout and one of ``--base`` (another
checkout with its ``.venv``), alternating ``--rounds`` times, each open that view and time the same
``--queries`` (wall clock and the process's CPU time, 1-minute load average before and after), with a
digest of every result: the two checkouts rank alike when their digests are equal.

The static embedder's table is distilled on the first run (about a minute) and cached under
TETHER_HOME (default ./.tether).
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import json
import math
import os
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nats

ROOT = Path(__file__).resolve().parent.parent
if "--worker" not in sys.argv:  # a --keyword-only worker runs its own checkout's tether (its .venv's)
    sys.path.insert(0, str(ROOT))

from tether.bus import EVENTS_STREAM, connect  # noqa: E402
from tether.memory import (  # noqa: E402
    AsymmetricEmbedder,
    AsyncMemory,
    Embedder,
    Grants,
    LocalEmbedder,
    MemorySettings,
    QueryEmbedder,
    StaticEmbedder,
    VectorCache,
)
from tether.memory._codec import seal_entry  # noqa: E402
from tether.schemas import Event, MemoryWritten, uuid7  # noqa: E402
from tether.testing import NatsServer  # noqa: E402

SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "ta", "vo", "shi", "pe", "da", "gu", "zo", "ri", "fa", "be", "ko"]


def vocabulary(n: int, rng: random.Random) -> list[str]:
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))))
    return sorted(words)


class Corpus:
    """Sentences of 12-30 words drawn with Zipf weights from a 20k-word vocabulary."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.words = vocabulary(20_000, self.rng)
        self.weights = [1.0 / (i + 1) for i in range(len(self.words))]

    def sentence(self, lo: int = 12, hi: int = 30) -> str:
        return " ".join(self.rng.choices(self.words, self.weights, k=self.rng.randint(lo, hi))) + "."

    def query(self) -> str:
        return " ".join(self.rng.choices(self.words, self.weights, k=self.rng.randint(2, 4)))


class RandomVectors:
    """Unit vectors recorded under a real model's name: bulk-loads a corpus for timing hybrid search."""

    def __init__(self, name: str, dims: int = 384, seed: int = 11) -> None:
        import numpy as np

        self.name = name
        self.np = np
        self.rng = np.random.default_rng(seed)
        self.dims = dims

    async def embed(self, texts: Sequence[str], *, agent: str | None = None, run: str | None = None
                    ) -> list[list[float]]:
        m = self.rng.standard_normal((len(texts), self.dims)).astype("float32")
        m /= self.np.linalg.norm(m, axis=1, keepdims=True)
        return m.tolist()  # type: ignore[no-any-return]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def ms(values: list[float], cpu: list[float] | None = None) -> dict[str, float]:
    out = {"p50_ms": round(pct(values, 50) * 1000, 2), "p95_ms": round(pct(values, 95) * 1000, 2),
           "n": len(values)}
    if cpu:  # the process's CPU time per call (every thread): what the load of other processes does not stretch
        out |= {"cpu_p50_ms": round(pct(cpu, 50) * 1000, 2), "cpu_p95_ms": round(pct(cpu, 95) * 1000, 2)}
    return out


def say(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


async def bench_writes(memory: AsyncMemory, url: str, corpus: Corpus, n: int, rounds: int,
                       quiet: bool) -> dict[str, Any]:
    nc = await nats.connect(url)
    js = nc.jetstream(publish_async_max_pending=8192)
    raw_rates, tether_rates, apply_rates = [], [], []
    raw_cpu: list[float] = []  # CPU time of the event loop's thread per write (what the load does not stretch)
    tether_cpu: list[float] = []
    try:
        for rnd in range(rounds):
            items: list[dict[str, Any]] = [
                {"namespace": "team:writes", "text": corpus.sentence(), "metadata": {"round": rnd, "i": i}}
                for i in range(n)]
            # raw: the same bytes tether publishes, prepared outside the timed section
            messages = []
            for item in items:
                key = uuid7()
                sealed = seal_entry(memory.keys, "team:writes", key, item["text"], item["metadata"], None)
                event = Event.of(MemoryWritten(namespace="team:writes", key=key, version=1, **sealed),
                                 agentid="bench", source=memory.source)
                messages.append(memory.bus.publisher.prepare(event))
            start, used = time.perf_counter(), time.thread_time()
            for m in messages:
                await js.publish_async(m.subject, m.payload, headers=m.headers)
            await js.publish_async_completed()
            raw = n / (time.perf_counter() - start)
            raw_cpu.append((time.thread_time() - used) / n)
            # the view applies the raw events too: let it finish, so tether's round does not pay for them
            await memory.catch_up(timeout=300)
            start, used = time.perf_counter(), time.thread_time()
            done = await memory.write_many(items)
            tether = n / (time.perf_counter() - start)
            tether_cpu.append((time.thread_time() - used) / n)
            start = time.perf_counter()
            await memory.wait_for(done.seq, timeout=300)
            applied = n / (time.perf_counter() - start)
            raw_rates.append(raw)
            tether_rates.append(tether)
            apply_rates.append(applied)
            say(f"writes round {rnd + 1}: raw {raw:,.0f}/s, tether {tether:,.0f}/s acked "
                f"({tether / raw:.2f} of raw; CPU per write {tether_cpu[-1] * 1e6:.0f} us, raw "
                f"{raw_cpu[-1] * 1e6:.0f} us); view applied {applied:,.0f}/s after the flush", quiet)
    finally:
        await nc.close()
    latencies = []
    for i in range(300):
        start = time.perf_counter()
        await memory.write("team:writes", f"sequential write number {i} {corpus.sentence(5, 10)}", key=f"seq-{i}")
        latencies.append(time.perf_counter() - start)
    cond = []
    for i in range(100):
        start = time.perf_counter()
        await memory.write("team:writes", f"conditional write {i}", key="cas", expected_version=None if i == 0 else i)
        cond.append(time.perf_counter() - start)
    info = await memory.bus.js.stream_info(EVENTS_STREAM)
    return {
        "batch": n, "rounds": rounds,
        "raw_per_s": round(statistics.median(raw_rates)), "tether_per_s": round(statistics.median(tether_rates)),
        "ratio": round(statistics.median(tether_rates) / statistics.median(raw_rates), 3),
        "ratios": [round(t / r, 3) for t, r in zip(tether_rates, raw_rates, strict=True)],
        "cpu_us_per_write": round(statistics.median(tether_cpu) * 1e6, 1),
        "raw_cpu_us_per_write": round(statistics.median(raw_cpu) * 1e6, 1),
        "view_apply_per_s": round(statistics.median(apply_rates)),
        "sequential_write": ms(latencies), "conditional_write": ms(cond[1:]),
        "stream_messages": info.state.messages,
    }


async def bench_embedded_writes(memory: AsyncMemory, corpus: Corpus, model: Embedder, n: int,
                                quiet: bool) -> dict[str, Any]:
    """Acked writes/s when every text is embedded by a real embedder on the way (``write_many``:
    one batch; MiniLM on one BLAS thread), distinct texts, so the vector cache does not help; with
    the CPU time per write (the process's, every thread)."""
    memory.embedder = model
    rates, cpu = [], []
    try:
        for rnd in range(2):
            items = [{"namespace": "team:embedded", "text": f"{label(model)} {rnd} {i} {corpus.sentence(8, 20)}"}
                     for i in range(n)]
            start, used = time.perf_counter(), time.process_time()
            await memory.write_many(items)
            rates.append(n / (time.perf_counter() - start))
            cpu.append((time.process_time() - used) / n * 1000)
            say(f"embedded writes ({label(model)}) round {rnd + 1}: {rates[-1]:,.0f}/s acked", quiet)
    finally:
        memory.embedder = None
    return {"embedder": label(model), "batch": n, "per_s": round(statistics.median(rates)),
            "cpu_ms_per_write": round(statistics.median(cpu), 3)}


def embedded_batch(model: Embedder) -> int:
    """Texts per embedded-writes round: MiniLM makes 10-70 a second here, the static table thousands."""
    return 256 if isinstance(model, LocalEmbedder) else 2000  # the asymmetric embedder writes as the static one


async def load(memory: AsyncMemory, corpus: Corpus, count: int, quiet: bool, ns: str = "team:bench") -> None:
    step = 10_000
    for start in range(0, count, step):
        n = min(step, count - start)
        done = await memory.write_many({"namespace": ns, "text": corpus.sentence(),
                                        "metadata": {"bucket": (start + i) % 10}} for i in range(n))
        await memory.wait_for(done.seq, timeout=600)
        say(f"  loaded {start + n:,}", quiet)


def raw_fts5(memory: AsyncMemory, texts: list[str]) -> dict[str, float]:
    """The peer measured in the same run: one plain FTS5 BM25 query (top 10, any of the words) on the
    same view file, no filters, no liveness check, no Python around it."""
    import sqlite3

    db = sqlite3.connect(f"file:{memory.feed.path}?mode=ro", uri=True)
    times = []
    try:
        for q in texts:
            match = " OR ".join(f'"{w}"' for w in q.split())
            start = time.perf_counter()
            db.execute("SELECT rowid, bm25(versions_fts) AS b FROM versions_fts WHERE versions_fts MATCH ? "
                       "ORDER BY b LIMIT 10", (f"text : ({match})",)).fetchall()
            times.append(time.perf_counter() - start)
    finally:
        db.close()
    return ms(times)


async def query_embed(model: Embedder, texts: list[str]) -> list[list[float]]:
    """How search embeds a query with ``model`` (an asymmetric embedder's query encoder, else ``embed``)."""
    if isinstance(model, QueryEmbedder):
        return await model.embed_queries(texts)
    return await model.embed(texts)


async def bench_search(memory: AsyncMemory, corpus: Corpus, queries: int,
                       hybrids: Sequence[tuple[Embedder, str]] = (), compare: dict[str, Any] | None = None
                       ) -> dict[str, Any]:
    """Keyword search over ``team:bench``, then hybrid search with each embedder over the namespace
    holding its space's corpus vectors (``hybrid`` for the first, ``hybrid_peers`` by name for the others).
    ``compare``: :class:`Ranking` settings whose hybrid search with the first embedder is timed too, each
    query searched with both rankings (which goes first alternating), each embedding the query
    (``hybrid_compared``)."""
    from tether.memory._rank import Ranking
    out: dict[str, Any] = {"load_average_before": round(os.getloadavg()[0], 2),
                           "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")}
    texts = [corpus.query() for _ in range(queries)]
    for q in texts[:20]:  # warm caches (and build the vector matrix)
        await memory.search(q, ["team:bench"], k=10, mode="keyword")
    times, cpu = [], []
    found = 0
    for q in texts:
        start, used = time.perf_counter(), time.process_time()
        hits = await memory.search(q, ["team:bench"], k=10, mode="keyword")
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - used)
        found += bool(hits)
    out["keyword"] = {**ms(times, cpu), "queries_with_hits": found}
    out["raw_fts5"] = raw_fts5(memory, texts)
    filtered = []
    for q in texts[:100]:
        start = time.perf_counter()
        await memory.search(q, ["team:bench"], k=10, mode="keyword", filters={"bucket": 3})
        filtered.append(time.perf_counter() - start)
    out["keyword_filtered"] = ms(filtered)
    for n, (hybrid, ns) in enumerate(hybrids):
        memory.embedder = hybrid
        memory.vector_cache = VectorCache()
        for q in texts[:5]:
            await memory.search(q, [ns], k=10, mode="hybrid")
        times, embed, cpu, embed_cpu, cached, cached_cpu = [], [], [], [], [], []
        other, other_cpu = [], []
        base = memory.ranking
        for i, q in enumerate(texts[:100]):
            start, used = time.perf_counter(), time.process_time()
            await query_embed(hybrid, [q])
            embed.append(time.perf_counter() - start)
            embed_cpu.append(time.process_time() - used)
            if n == 0 and compare is not None and i % 2:
                memory.ranking = Ranking(**compare)
                start, used = time.perf_counter(), time.process_time()
                await memory.search(q, [ns], k=10, mode="hybrid")
                other.append(time.perf_counter() - start)
                other_cpu.append(time.process_time() - used)
                memory.ranking = base
                memory.vector_cache = VectorCache()  # the next search embeds the query again
            start, used = time.perf_counter(), time.process_time()
            await memory.search(q, [ns], k=10, mode="hybrid")  # embeds the query again
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - used)
            if n == 0 and compare is not None and not i % 2:
                memory.ranking = Ranking(**compare)
                memory.vector_cache = VectorCache()  # this search embeds the query again too
                start, used = time.perf_counter(), time.process_time()
                await memory.search(q, [ns], k=10, mode="hybrid")
                other.append(time.perf_counter() - start)
                other_cpu.append(time.process_time() - used)
                memory.ranking = base
            start, used = time.perf_counter(), time.process_time()
            await memory.search(q, [ns], k=10, mode="hybrid")  # its vector is cached now
            cached.append(time.perf_counter() - start)
            cached_cpu.append(time.process_time() - used)
        row: dict[str, Any] = {"hybrid": ms(times, cpu), "hybrid_vector_cached": ms(cached, cached_cpu),
                               "query_embedding": ms(embed, embed_cpu)}
        if other:
            row["hybrid_compared"] = {"ranking": compare, **ms(other, other_cpu)}
        if n == 0:
            out.update(row)
        else:
            out.setdefault("hybrid_peers", {})[hybrid.name if not isinstance(hybrid, QueryEmbedder)
                                               else hybrid.query_name] = row
        memory.embedder = None
    ctx = []
    for q in texts[:100]:
        start = time.perf_counter()
        await memory.context(q, ["team:bench"], token_budget=500, mode="keyword")
        ctx.append(time.perf_counter() - start)
    out["context"] = ms(ctx)
    out["load_average_after"] = round(os.getloadavg()[0], 2)
    return out


KEYWORD_OTHERS = 68_912
"""Entries a full run with a model installed writes before its corpus (60,400 in its write rounds,
8,512 embedded ones): ``--keyword-only`` writes as many first, in ``team:writes``."""


async def keyword_load(url: str, home: Path, corpus: Corpus, loaded: int, size: int, quiet: bool) -> None:
    """``--keyword-only``'s view as a full run leaves it: the other entries first, then the corpus
    in two namespaces (random vectors of 256 dimensions in ``team:bench`` and 384 in
    ``team:bench-1``, as the static table's and MiniLM's spaces), each to ``size``."""
    bus = await connect(url, home=home)
    settings = MemorySettings(view_dir=home / "memory", keyfile=home / "keys.json", dedupe=False)
    memory = await AsyncMemory(bus, agent="bench", settings=settings).start()
    try:
        if loaded == 0:
            for start in range(0, KEYWORD_OTHERS, 10_000):
                n = min(10_000, KEYWORD_OTHERS - start)
                done = await memory.write_many({"namespace": "team:writes", "text": corpus.sentence(),
                                                "metadata": {"i": start + i}} for i in range(n))
                await memory.wait_for(done.seq, timeout=600)
            say(f"  {KEYWORD_OTHERS:,} other entries", quiet)
        for name, dims, ns in (("static-table", 256, "team:bench"), ("minilm", 384, "team:bench-1")):
            memory.embedder = RandomVectors(name, dims)
            say(f"corpus of {ns} to {size:,} memories...", quiet)
            await load(memory, corpus, size - loaded, quiet, ns)
        memory.embedder = None
    finally:
        await memory.close()
        await bus.close()


async def keyword_worker(args: argparse.Namespace) -> dict[str, Any]:
    """In the checkout under test: open the view, time keyword search (and with a metadata filter) over
    ``team:bench``; a digest of every result, to check two checkouts rank alike."""
    import hashlib

    home = Path(args.home)
    texts = json.loads((home / "queries.json").read_text())
    now = (home / "queries.json").stat().st_mtime  # one clock for every worker: recency scores alike
    bus = await connect(args.url, home=home)
    settings = MemorySettings(view_dir=home / "memory", keyfile=home / "keys.json", dedupe=False)
    memory = await AsyncMemory(bus, agent="bench", settings=settings, clock=lambda: now).start()
    try:
        await memory.catch_up(timeout=600)
        for q in texts[:20]:  # warm caches
            await memory.search(q, ["team:bench"], k=10, mode="keyword")
        load_before = os.getloadavg()[0]
        times, cpu, results = [], [], []
        for q in texts[20:]:
            start, used = time.perf_counter(), time.process_time()
            hits = await memory.search(q, ["team:bench"], k=10, mode="keyword")
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - used)
            results.append([[h.entry.namespace, h.entry.key, round(h.score, 9)] for h in hits])
        filtered, filtered_cpu = [], []
        for q in texts[20:120]:
            start, used = time.perf_counter(), time.process_time()
            hits = await memory.search(q, ["team:bench"], k=10, mode="keyword", filters={"bucket": 3})
            filtered.append(time.perf_counter() - start)
            filtered_cpu.append(time.process_time() - used)
            results.append([[h.entry.namespace, h.entry.key, round(h.score, 9)] for h in hits])
        digest = hashlib.sha256(json.dumps(results).encode()).hexdigest()[:16]
        return {"keyword": ms(times, cpu), "keyword_filtered": ms(filtered, filtered_cpu), "results": digest,
                "queries_with_hits": sum(bool(r) for r in results[:len(times)]),
                "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}
    finally:
        await memory.close()
        await bus.close()


def run_keyword_only(args: argparse.Namespace) -> list[dict[str, Any]]:
    """``--keyword-only``: load the view once per size, then time keyword search in a process of this
    checkout and of ``--base`` (alternating, ``--rounds`` times), each opening the same view."""
    import subprocess

    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else [2_000, 10_000] if args.small else [
        10_000, 100_000]
    checkouts = {"this": ROOT}
    if args.base:
        checkouts = {"base": Path(args.base).resolve(), **checkouts}
    home = Path(tempfile.mkdtemp(prefix="tether-bench-keyword-"))
    corpus = Corpus()
    rows: list[dict[str, Any]] = []
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    with NatsServer() as server:
        loaded = 0
        for size in sizes:
            asyncio.run(keyword_load(server.url, home, corpus, loaded, size, args.quiet))
            loaded = size
            (home / "queries.json").write_text(json.dumps([corpus.query() for _ in range(args.queries + 20)]))
            for rnd in range(args.rounds):
                for code, checkout in checkouts.items():
                    cmd = [str(checkout / ".venv" / "bin" / "python"), str(Path(__file__).resolve()), "--worker",
                           "--url", server.url, "--home", str(home)]
                    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd=checkout)
                    row = {"size": size, "round": rnd + 1, "code": code,
                           **json.loads(out.stdout.strip().splitlines()[-1])}
                    rows.append(row)
                    say(json.dumps(row), args.quiet)
    return rows


def keyword_table(rows: list[dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        k, f = r["keyword"], r["keyword_filtered"]
        lines.append(f"{r['size']:>7,} round {r['round']} {r['code']:<5} keyword p50 {k['p50_ms']} / p95 {k['p95_ms']} "
                     f"ms (CPU {k['cpu_p50_ms']} / {k['cpu_p95_ms']}); filtered {f['p50_ms']} / {f['p95_ms']} "
                     f"(CPU {f['cpu_p50_ms']} / {f['cpu_p95_ms']}); results {r['results']} "
                     f"(load average {r['load_before']} before, {r['load_after']} after)")
    for size in dict.fromkeys(r["size"] for r in rows):
        here = [r for r in rows if r["size"] == size]
        if not any(r["code"] == "base" for r in here):
            continue

        def ratio(mode: str, figure: str, here: list[dict[str, Any]] = here) -> float:
            this, base = ([float(r[mode][figure]) for r in here if r["code"] == code] for code in ("this", "base"))
            return round(statistics.median(this) / statistics.median(base), 2)

        same = len({r["results"] for r in here}) == 1
        lines.append(f"{size:>7,} this / base (medians of the rounds): keyword p50 {ratio('keyword', 'p50_ms')}, p95 "
                     f"{ratio('keyword', 'p95_ms')} (CPU {ratio('keyword', 'cpu_p50_ms')}, "
                     f"{ratio('keyword', 'cpu_p95_ms')}); filtered p50 {ratio('keyword_filtered', 'p50_ms')} (CPU "
                     f"{ratio('keyword_filtered', 'cpu_p50_ms')}); results " + ("identical" if same else "DIFFER"))
    return "\n".join(lines)


DEV_SET = ROOT / "bench" / "memory_set.json"
CATEGORIES = ("direct", "paraphrase", "now", "latest", "before", "negation", "multi-hop", "team")


def dev_set() -> dict[str, Any]:
    return json.loads(DEV_SET.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def readable(grants: dict[str, Any], asker: str, namespace: str) -> bool:
    return any(fnmatch.fnmatchcase(namespace, p) for p in grants[asker]["read"])


class Bm25:
    """Plain Okapi BM25 (k1 1.2, b 0.75) in the standard library: the baseline tether's search is held to.

    It indexes the text of each entry's current version (the one with the latest ``valid_from``,
    log order breaking ties: the same truth tether's view is meant to hold) and searches only
    the namespaces the asker may read: the same filters as tether's search.
    """

    def __init__(self, memories: list[dict[str, Any]]) -> None:
        current: dict[tuple[str, str], dict[str, Any]] = {}
        for m in memories:
            pair = (m["namespace"], m["key"])
            old = current.get(pair)
            if old is None or (m.get("valid_from") or "") >= (old.get("valid_from") or ""):
                current[pair] = m
        self.docs = list(current.values())
        self.tokens = [self.words(d["text"]) for d in self.docs]
        self.avg = sum(map(len, self.tokens)) / len(self.tokens)
        self.df: dict[str, int] = {}
        for toks in self.tokens:
            for t in set(toks):
                self.df[t] = self.df.get(t, 0) + 1

    @staticmethod
    def words(text: str) -> list[str]:
        return re.findall(r"\w+", text.lower())

    def search(self, query: str, allow: Any, k: int) -> list[dict[str, Any]]:
        n = len(self.docs)
        terms = set(self.words(query))
        scored = []
        for doc, toks in zip(self.docs, self.tokens, strict=True):
            if not allow(doc["namespace"]):
                continue
            score = 0.0
            for t in terms:
                tf = toks.count(t)
                if tf:
                    idf = math.log(1 + (n - self.df[t] + 0.5) / (self.df[t] + 0.5))
                    score += idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * len(toks) / self.avg))
            if score > 0:
                scored.append((score, doc))
        scored.sort(key=lambda x: -x[0])
        return [d for _, d in scored[:k]]


def score_queries(queries: list[dict[str, Any]], results: list[list[tuple[str, str, str]]],
                  grants: dict[str, Any]) -> dict[str, Any]:
    """recall@5, MRR@10, recall@5 per category, stale and forbidden hits of ``results`` (top 10 each)."""
    recall, rr, stale, forbidden = [], [], 0, 0
    per: dict[str, list[float]] = {c: [] for c in CATEGORIES}
    top1: dict[str, list[float]] = {c: [] for c in CATEGORIES}
    for q, hits in zip(queries, results, strict=True):
        def found(rel: dict[str, Any], hit: tuple[str, str, str]) -> bool:
            return (hit[0], hit[1]) == (rel["namespace"], rel["key"]) and rel.get("text", hit[2]) == hit[2]

        top = hits[:5]
        share = sum(any(found(r, h) for h in top) for r in q["relevant"]) / len(q["relevant"])
        recall.append(share)
        first = next((i for i, h in enumerate(hits[:10], start=1) if any(found(r, h) for r in q["relevant"])), None)
        rr.append(1 / first if first else 0.0)
        stale += sum(h[2] in q["stale"] for h in top)
        forbidden += sum(not readable(grants, q["asker"], h[0]) for h in top)
        for c in q["categories"]:
            per[c].append(share)
            top1[c].append(float(first == 1))
    return {"queries": len(queries), "recall_at_5": round(statistics.fmean(recall), 3),
            "mrr_at_10": round(statistics.fmean(rr), 3),
            "by_category": {c: round(statistics.fmean(v), 3) for c, v in per.items() if v},
            "hit_at_1_by_category": {c: round(statistics.fmean(v), 3) for c, v in top1.items() if v},
            "stale_hits": stale, "forbidden_hits": forbidden}


async def load_dev_set(memory: AsyncMemory, doc: dict[str, Any]) -> None:
    """Every memory of the set, in its order, through ``write_many`` (valid time included)."""
    items = [{k: v for k, v in m.items() if v is not None} for m in doc["memories"]]
    done = await memory.write_many(items)
    await memory.wait_for(done.seq, timeout=300)


async def run_dev_set(memory: AsyncMemory, doc: dict[str, Any], mode: str, split: str,
                      **search: Any) -> list[list[tuple[str, str, str]]]:
    out = []
    for q in doc["queries"]:
        if q["split"] != split:
            continue
        memory.agent = q["asker"]
        hits = await memory.search(q["text"], k=10, mode=mode, valid_at="query", **search)  # type: ignore[arg-type]
        out.append([(h.entry.namespace, h.entry.key, h.entry.text) for h in hits])
    memory.agent = "loader"
    return out


def bm25_results(doc: dict[str, Any], split: str) -> list[list[tuple[str, str, str]]]:
    index = Bm25(doc["memories"])
    out = []
    for q in doc["queries"]:
        if q["split"] == split:
            found = index.search(q["text"], lambda ns, a=q["asker"]: readable(doc["grants"], a, ns), 10)
            out.append([(d["namespace"], d["key"], d["text"]) for d in found])
    return out


GRID: dict[str, list[Any]] = {
    "keyword": [0.15, 0.25, 0.35, 0.5, 0.65],
    "fusion": ["zscore", "ratio", "cosine", "minmax", "rrf"],
    "guard": [0, 1, 2],
    "guard_at": [3, 4, 5],
    "rrf_k": [2, 10, 30, 60],
    "validity": [0.1, 0.3, 0.5, 1.0],
    "validity_band": [0.05, 0.1, 0.2, 0.35],
    "key_weight": [0.0, 0.25, 0.5, 1.0],
    "meta_weight": [0.0, 0.25, 0.5, 1.0],
    "expand": [False, True],
    "expand_evidence": [False, True],
    "expand_at": [2, 3, 4, 5],
    "expand_from": [1, 2, 3, 5],
    "expand_slots": [1, 2, 3],
}


async def tune(memory: AsyncMemory, doc: dict[str, Any], quiet: bool,
               start: dict[str, Any] | None = None, only: list[str] | None = None) -> dict[str, Any]:
    """Coordinate ascent over :class:`Ranking`'s weights on the **tune** split only (hybrid recall@5,
    then MRR); the held-out split is never looked at here."""
    from dataclasses import replace

    from tether.memory._rank import Ranking

    queries = [q for q in doc["queries"] if q["split"] == "tune"]

    async def objective(ranking: Ranking) -> tuple[float, float]:
        memory.ranking = ranking
        r = score_queries(queries, await run_dev_set(memory, doc, "hybrid", "tune"), doc["grants"])
        return r["recall_at_5"], r["mrr_at_10"]

    best = Ranking(**start) if start else Ranking()
    best_score = await objective(best)
    say(f"tune: start {best_score}", quiet)
    for _ in range(2):
        for name, values in GRID.items():
            if only and name not in only:
                continue
            for value in values:
                trial = replace(best, **{name: value, **({"semantic": 1 - value} if name == "keyword" else {})})
                got = await objective(trial)
                if got > best_score:
                    best, best_score = trial, got
                    say(f"tune: {name}={value} -> {got}", quiet)
    memory.ranking = best
    return {"ranking": {f: getattr(best, f) for f in best.__dataclass_fields__}, "tune_recall_mrr": best_score}


# Grouped cross-validation inside the tune split: each candidate is a family of Ranking settings
# (the default always among them); for each group of questions left out, the family's best setting on
# the other groups is chosen and scored on the group left out. A choice that only fits the wording of
# some templates scores its training folds well and its left-out template badly.
CV_FAMILIES: dict[str, list[dict[str, Any]]] = {
    "default": [{}],
    "field weights": [{f: w} for f, ws in (("key_weight", (0.0, 0.5, 2.0, 4.0)), ("meta_weight", (0.0, 0.5, 2.0)),
                                           ("text_weight", (0.5, 2.0))) for w in ws],
    "keyword weight": [{"keyword": w, "semantic": 1 - w} for w in (0.35, 0.4, 0.6, 0.65)],
    "entity lift": [{"entity": e} for e in (0.1, 0.2, 0.3, 0.5)],
    "cosine without the names": [{"unnamed": u} for u in (0.1, 0.2, 0.3, 0.5, 0.75, 1.0)],
    "cosine without the names, one pass": [{"unnamed": u, "unnamed_from": "tokens", "unnamed_push": p}
                                           for p in (0.0, 0.5, 1.0, 2.0) for u in (0.2, 0.3, 0.5)],
    "cosine without the names, second text": [{"unnamed": u, "unnamed_from": "text"}
                                              for u in (0.1, 0.2, 0.3, 0.5, 0.75, 1.0)],
    "cosine without the names, entity lift": [{"unnamed": u, "entity": 0.2} for u in (0.1, 0.2, 0.3, 0.5, 0.75, 1.0)],
    "second hop, scored, evidence rule": [
        {"expand_fusion": "score", "expand_discount": d} for d in (0.8, 0.9, 1.0)],
    "second hop, scored, no evidence rule": [
        {"expand_fusion": "score", "expand_evidence": False, "expand_discount": d, "expand_query": q, "entity": e}
        for d in (0.7, 0.8, 0.9, 1.0) for q in ("swap", "rest") for e in (0.0, 0.2)],
    "second hop, places, no evidence rule": [{"expand_evidence": False}, {"expand_evidence": False, "entity": 0.2}],
    "one hop": [{"expand": False}],
    "second hop, semantic evidence": [{"expand_similar": t, "expand_deep": d}
                                      for t in (0.45, 0.55, 0.65) for d in (0, 10, 20)],
    "second hop, semantic evidence, entity lift": [{"expand_similar": t, "expand_deep": d, "entity": e}
                                                   for t in (0.45, 0.55, 0.65) for d in (0, 20)
                                                   for e in (0.1, 0.2, 0.3)],
    # the semantic test's words by the query encoder (for AsymmetricEmbedder: MiniLM) instead of the
    # document side (the default: the static table), and lower thresholds for the table's words
    "second hop, semantic evidence, words as queries": [
        {"expand_words": "queries", "expand_similar": t, "entity": e} for t in (0.45, 0.55, 0.65) for e in (0.2, 0.3)],
    "second hop, semantic evidence, lower thresholds": [{"expand_similar": t, "entity": e}
                                                        for t in (0.35, 0.4, 0.5) for e in (0.1, 0.2, 0.3)],
    # added after the lower thresholds' best was their lowest (0.35)
    "second hop, semantic evidence, lowest thresholds": [{"expand_similar": t, "entity": e, "expand_deep": d}
                                                         for t in (0.2, 0.25, 0.3) for e in (0.2, 0.3)
                                                         for d in (10, 20)],
    # session 12: late interaction (MaxSim of the query's tokens over each candidate's), judged as one family
    # (every setting below); the three kinds of query tokens are reported apart too
    "late interaction": [{"late": w, "late_tokens": t, "late_sif": f, "late_fields": d}
                         for t in ("all", "content", "asked") for f in (False, True) for d in ("text", "all")
                         for w in (0.2, 0.5, 1.0)],
    **{f"late interaction, {t} tokens, {'text' if d == 'text' else 'text, key and metadata'}": [
        {"late": w, "late_tokens": t, "late_sif": f, "late_fields": d} for f in (False, True) for w in (0.2, 0.5, 1.0)]
       for t in ("all", "content", "asked") for d in ("text", "all")},
    # added after the family's best weight came out at its grid's edge (1.0), on top of the adopted default
    "late interaction, heavier": [{"late": w, "late_tokens": t, "late_sif": f} for t in ("all", "content")
                                  for f in (True, False) for w in (1.5, 2.0, 3.0)],
}
RERANK_BASES: dict[str, dict[str, Any]] = {
    "default": {},
    "second hop, scored, no evidence rule": {"expand_fusion": "score", "expand_evidence": False,
                                              "expand_discount": 0.9},
}
"""The rankings a re-ranking model is trained over (its features captured from their top candidates)."""


def template_of(text: str) -> str:
    """A question's template: its people's and projects' names and its month left out."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tether_bench_memory_set", ROOT / "bench" / "memory_set.py")
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    for name in sorted((f"{f} {la}" for f in generator.FIRST for la in generator.LAST), key=len, reverse=True):
        text = text.replace(name, "{P}")
    text = re.sub(r"\b(" + "|".join(generator.PROJECTS) + r")\b", "{X}", text)
    return re.sub(r"before \w+\?", "before {M}?", text)


def hit_of(query: dict[str, Any], hit: tuple[str, str, str]) -> bool:
    return any((hit[0], hit[1]) == (r["namespace"], r["key"]) and r.get("text", hit[2]) == hit[2]
               for r in query["relevant"])


def recall5(query: dict[str, Any], hits: Sequence[tuple[str, str, str]]) -> float:
    top = hits[:5]
    return sum(any(hit_of({"relevant": [r]}, h) for h in top) for r in query["relevant"]) / len(query["relevant"])


def grouped_cv(per: dict[str, dict[str, float]], family: Sequence[str], group: dict[str, str]) -> float:
    """Recall@5 over every question when the family's setting is chosen without its group (see above)."""
    got: dict[str, float] = {}
    for left_out in sorted(set(group.values())):
        train = [i for i in group if group[i] != left_out]
        best = max(family, key=lambda c: (round(statistics.fmean(per[c][i] for i in train), 9), -family.index(c)))
        got.update({i: per[best][i] for i in group if group[i] == left_out})
    return statistics.fmean(got.values())


def fit_reranker(items: Sequence[tuple[Any, Any]], l2: float = 10.0) -> Any:
    """A logistic model over the captured features (each question weighs the same, positives balanced,
    L2 ``l2`` on standardised features), as raw-feature weights: the bias first."""
    import numpy as np

    x = np.vstack([f for f, _ in items])
    y = np.concatenate([lab for _, lab in items])
    per_q = np.concatenate([np.full(len(lab), 1.0 / len(lab)) for _, lab in items])
    mu, sd = x.mean(0), x.std(0)
    sd[sd < 1e-6] = np.inf  # a constant feature (every entry of the set is as recent) gets no weight
    z = np.hstack([np.ones((len(x), 1)), (x - mu) / sd])
    pos = y.sum()
    weight = np.where(y > 0, (len(y) - pos) / max(pos, 1.0), 1.0) * per_q
    weight /= weight.mean()
    ridge = l2 * np.diag(np.r_[0.0, np.ones(z.shape[1] - 1)])
    w = np.zeros(z.shape[1])
    for _ in range(100):  # Newton's method
        p = 1 / (1 + np.exp(-(z @ w)))
        step = np.linalg.solve((z * (weight * p * (1 - p))[:, None]).T @ z + ridge + 1e-9 * np.eye(len(w)),
                               z.T @ (weight * (p - y)) + ridge @ w)
        w -= step
        if np.abs(step).max() < 1e-9:
            break
    raw = w[1:] / sd
    return np.r_[w[0] - (raw * mu).sum(), raw]


def reranker_cv(captured: list[dict[str, Any]], queries: dict[str, dict[str, Any]],
                group: dict[str, str]) -> dict[str, float]:
    """Each question's recall@5 with its top candidates re-ordered by a model fitted without its group."""
    import numpy as np

    data = {c["id"]: (np.asarray(c["rows"], dtype=float),
                      np.asarray([float(hit_of(queries[c["id"]], tuple(h))) for h in c["cands"]]),
                      [tuple(h) for h in c["cands"]]) for c in captured}
    got: dict[str, float] = {}
    for left_out in sorted(set(group.values())):
        w = fit_reranker([(x, y) for i, (x, y, _) in data.items() if group[i] != left_out])
        for i in (i for i in data if group[i] == left_out):
            x, _, hits = data[i]
            order = np.argsort(-(x @ w[1:] + w[0]), kind="stable")
            got[i] = recall5(queries[i], [hits[j] for j in order])
    return got


async def cross_validate(memory: AsyncMemory, doc: dict[str, Any], quiet: bool,
                         only: Sequence[str] | None = None, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every family of :data:`CV_FAMILIES` and a re-ranking model over :data:`RERANK_BASES`, judged by
    grouped cross-validation on the **tune** split only, grouped by template and by kind. ``only``:
    the families whose name holds one of these strings (and no re-ranking model). Each family is
    also cross-validated without the default among its settings (``cv_<group>_own``): to compare two
    families that replace the default rather than add to it."""
    from tether.memory._rank import Ranking

    queries = {q["id"]: q for q in doc["queries"] if q["split"] == "tune"}
    groups = {"template": {i: template_of(q["text"]) for i, q in queries.items()},
              "kind": {i: q["categories"][0] for i, q in queries.items()}}
    per: dict[str, dict[str, float]] = {}
    bad: dict[str, int] = {}
    names: dict[str, list[str]] = {}
    for family, settings in CV_FAMILIES.items():
        if only and family != "default" and not any(o in family for o in only):
            continue
        names[family] = ["{}"]
        for setting in settings:
            name = json.dumps(setting, sort_keys=True)
            names[family].append(name)
            if name in per:
                continue
            memory.ranking = Ranking(**{**(base or {}), **setting})
            results = await run_dev_set(memory, doc, "hybrid", "tune")
            per[name] = {i: recall5(queries[i], hits) for i, hits in zip(queries, results, strict=True)}
            scored = score_queries(list(queries.values()), results, doc["grants"])
            bad[name] = scored["stale_hits"] + scored["forbidden_hits"]
        names[family] = list(dict.fromkeys(names[family]))
    out: dict[str, Any] = {"groups": {g: len(set(v.values())) for g, v in groups.items()}, "families": {}}
    for family, members in names.items():
        own = members[1:] or members  # the family's settings without the default (which every family holds)
        best = max(own, key=lambda c: statistics.fmean(per[c].values()))
        out["families"][family] = {
            "settings": len(own), "best_on_tune": round(statistics.fmean(per[best].values()), 3),
            "best_setting": json.loads(best),
            **{f"cv_{g}": round(grouped_cv(per, members, groups[g]), 3) for g in groups},
            **{f"cv_{g}_own": round(grouped_cv(per, own, groups[g]), 3) for g in groups},
            "stale_or_forbidden": max(bad[c] for c in own),
            "tune_by_setting": {c: round(statistics.fmean(per[c].values()), 3) for c in own}}
        say(f"cv: {family}: {out['families'][family]}", quiet)
    for model_base, setting in ({} if only else RERANK_BASES).items():
        memory.ranking = Ranking(**{**(base or {}), **setting})
        memory._capture = []
        results = await run_dev_set(memory, doc, "hybrid", "tune")
        captured = [{"id": i, "cands": c[1], "rows": c[2]} for i, c in zip(queries, memory._capture, strict=True)]
        memory._capture = None
        fitted = {i: recall5(queries[i], hits) for i, hits in zip(queries, results, strict=True)}
        row = {"without_model": round(statistics.fmean(fitted.values()), 3)}
        for g in groups:
            row[f"cv_{g}"] = round(statistics.fmean(reranker_cv(captured, queries, groups[g]).values()), 3)
        out["families"][f"re-ranking model over: {model_base}"] = row
        say(f"cv: re-ranking model over {model_base}: {row}", quiet)
    memory.ranking = Ranking()
    return out


async def bench_quality(url: str, home: Path, model: Embedder | None, quiet: bool,
                        tuning: bool = False, tune_only: list[str] | None = None,
                        splits: Sequence[str] = ("tune", "heldout"), cv: bool = False,
                        families: Sequence[str] | None = None, cv_base: dict[str, Any] | None = None,
                        words_by_table: bool = False) -> dict[str, Any]:
    """Each split of the development set: plain BM25, tether keyword, semantic and hybrid."""
    doc = dev_set()
    grants = Grants.from_mapping({**doc["grants"], "loader": {"read": ["*"], "write": ["*"]}})
    bus = await connect(url, home=home)
    settings = MemorySettings(view_dir=home / "quality", keyfile=home / "quality-keys.json", dedupe=False)
    await asyncio.to_thread(home.mkdir, parents=True, exist_ok=True)
    memory = await AsyncMemory(bus, agent="loader", settings=settings, embedder=model, grants=grants).start()
    out: dict[str, Any] = {"memory_writes": len(doc["memories"]), "queries": len(doc["queries"]),
                           "embedder": label(model) if model is not None else None}
    try:
        start = time.perf_counter()
        await load_dev_set(memory, doc)
        say(f"development set loaded in {time.perf_counter() - start:.1f} s", quiet)
        if cv_base and not cv:
            from tether.memory._rank import Ranking

            memory.ranking = Ranking(**cv_base)
        if words_by_table and model is not None:
            memory.embedder = TableWords(model, StaticEmbedder())
            out["embedder"] += " (words by the static table)"
        if tuning and model is not None:
            out["tuned"] = await tune(memory, doc, quiet, only=tune_only)
            say(f"tuned: {out['tuned']}", quiet)
        if cv and model is not None:
            out["cv"] = await cross_validate(memory, doc, quiet, families, cv_base)
            return out
        modes = ["keyword"] + (["semantic", "hybrid"] if model is not None else [])
        for split in splits:
            queries = [q for q in doc["queries"] if q["split"] == split]
            part: dict[str, Any] = {"bm25": score_queries(queries, bm25_results(doc, split), doc["grants"])}
            for mode in modes:
                part[mode] = score_queries(queries, await run_dev_set(memory, doc, mode, split), doc["grants"])
            out[split] = part
            say(f"  {split}: " + "; ".join(f"{m} recall@5 {r['recall_at_5']} MRR {r['mrr_at_10']}"
                                           for m, r in part.items()), quiet)
    finally:
        await memory.close()
        await bus.close()
    return out


class TableWords:
    """MiniLM for everything search embeds but the second hop's single words, which the static table
    looks up (``--words-by-table``: whether its rows serve that test as well as MiniLM's own outputs).
    Set on a memory after MiniLM wrote the set: ``embed`` (the documents' side) is the table's."""

    def __init__(self, model: Embedder, table: StaticEmbedder) -> None:
        self.model, self.table = model, table
        self.name = model.name
        self.query_name = f"{model.name}/words-by-table"

    async def embed(self, texts: Sequence[str], *, agent: str | None = None, run: str | None = None
                    ) -> list[list[float]]:
        return await self.table.embed(texts, agent=agent, run=run)

    async def embed_queries(self, texts: Sequence[str], *, agent: str | None = None, run: str | None = None
                            ) -> list[list[float]]:
        return await self.model.embed(texts, agent=agent, run=run)


def label(model: Embedder) -> str:
    """How the report names an embedder: an asymmetric one by its query encoder's name (its documents'
    space is the static table's)."""
    return model.query_name if isinstance(model, QueryEmbedder) else model.name


async def run(args: argparse.Namespace) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="tether-bench-memory-"))
    sizes = (2_000, 10_000) if args.small else (10_000, 100_000)
    minilm = LocalEmbedder() if LocalEmbedder.available() and not args.no_model else None
    embedders: dict[str, Embedder] = {}
    if minilm is not None:
        embedders = {"static": StaticEmbedder(), "minilm": minilm, "asymmetric": AsymmetricEmbedder()}
    model: Embedder | None = embedders.get(args.embedder)
    peers = [e for kind, e in embedders.items() if kind != args.embedder
             and (args.peers is None or kind in args.peers.split(","))]
    report: dict[str, Any] = {"model": label(model) if model else None, "sizes": list(sizes),
                              "peer_models": [label(p) for p in peers]}
    splits = ("tune", "heldout") if args.split == "both" else (args.split,)
    report["quality"] = None
    if not args.no_quality and not args.writes:
        with NatsServer() as server:  # its own server: the other clients' views never meet its keystore
            report["quality"] = await bench_quality(server.url, home / "quality", model, args.quiet, args.tune,
                                                    args.tune_only.split(",") if args.tune_only else None,
                                                    ("tune",) if args.cv else splits, cv=args.cv,
                                                    families=args.families.split(",") if args.families else None,
                                                    cv_base=json.loads(args.cv_base) if args.cv_base else None,
                                                    words_by_table=args.words_by_table)
    if not (args.tune or args.cv or args.no_peer or args.no_quality or args.writes):
        for i, peer in enumerate(peers):
            with NatsServer() as server:  # each peer on a log of its own
                report.setdefault("quality_peers", []).append(
                    await bench_quality(server.url, home / f"quality-peer-{i}", peer, args.quiet, splits=splits))
    if args.quality or args.tune or args.cv:
        return report
    with NatsServer() as server:
        bus = await connect(server.url, home=home)
        settings = MemorySettings(view_dir=home / "memory", keyfile=home / "keys.json", dedupe=False)
        # each vector space's corpus in a namespace of its own (the static and asymmetric embedders share one)
        spaces: dict[str, tuple[RandomVectors, str]] = {}
        for e in ([model] if model is not None else []) + peers:
            if e.name not in spaces:
                ns = "team:bench" if not spaces else f"team:bench-{len(spaces)}"
                spaces[e.name] = (RandomVectors(e.name, getattr(e, "dims", 384)), ns)
        memory = await AsyncMemory(bus, agent="bench", settings=settings).start()
        try:
            corpus = Corpus()
            say("writes...", args.quiet)
            report["writes"] = await bench_writes(memory, server.url, corpus, 5_000 if args.small else 10_000,
                                                  args.rounds, args.quiet)
            if args.writes:
                return report
            for i, e in enumerate(([model] if model is not None else []) + peers):
                report["embedded_writes" if i == 0 else f"embedded_writes_peer_{i}"] = await bench_embedded_writes(
                    memory, corpus, e, embedded_batch(e), args.quiet)
            loaded = 0
            for size in sizes:
                for vectors, ns in spaces.values() or [(None, "team:bench")]:
                    say(f"corpus of {ns} to {size:,} memories...", args.quiet)
                    memory.embedder = vectors
                    await load(memory, corpus, size - loaded, args.quiet, ns)
                memory.embedder = None
                loaded = size
                hybrids = [(e, spaces[e.name][1]) for e in ([model] if model is not None else []) + peers]
                report[f"search_{size}"] = await bench_search(memory, corpus, args.queries, hybrids,
                                                              json.loads(args.compare) if args.compare else None)
                say(f"  {json.dumps(report[f'search_{size}'])}", args.quiet)
        finally:
            await memory.close()
            await bus.close()
    return report


def quality_table(r: dict[str, Any]) -> list[str]:
    lines = [f"development set: {r['memory_writes']} memory writes, {r['queries']} queries"]
    for split in ("tune", "heldout"):
        if split not in r:
            continue
        lines.append(f"  {split} ({r[split]['bm25']['queries']} queries):")
        for mode, m in r[split].items():
            cats = ", ".join(f"{c} {v}" for c, v in m["by_category"].items())
            cats += "; hit@1: " + ", ".join(f"{c} {v}" for c, v in m["hit_at_1_by_category"].items()
                                             if c in ("now", "latest", "before"))
            lines.append(f"    {mode:<8} recall@5 {m['recall_at_5']:.3f}  MRR@10 {m['mrr_at_10']:.3f}  "
                         f"stale {m['stale_hits']}  forbidden {m['forbidden_hits']}  ({cats})")
    return lines


def quality_tables(r: dict[str, Any]) -> list[str]:
    if r["quality"] is None:
        return []
    lines = [f"embedder: {r['quality']['embedder']}", *quality_table(r["quality"])]
    if "cv" in r["quality"]:
        cv = r["quality"]["cv"]
        lines.append(f"grouped cross-validation on the tune split ({cv['groups']['template']} templates, "
                     f"{cv['groups']['kind']} kinds), hybrid recall@5:")
        for family, row in cv["families"].items():
            lines.append(f"  {family:<40} " + "  ".join(f"{k} {v}" for k, v in row.items()
                                                        if k not in ("best_setting", "tune_by_setting"))
                         + (f"  (best on tune: {row['best_setting']})" if row.get("best_setting") else ""))
    for peer in r.get("quality_peers", []):
        lines += [f"peer embedder: {peer['embedder']}", *quality_table(peer)]
    return lines


def table(r: dict[str, Any]) -> str:
    if "writes" not in r:
        return "\n".join(quality_tables(r))
    w = r["writes"]
    lines = [
        f"writes (batches of {w['batch']:,}, median of {w['rounds']}): tether {w['tether_per_s']:,}/s acked, "
        f"raw nats-py {w['raw_per_s']:,}/s ({w['ratio']:.2f} of raw; rounds {w['ratios']}); CPU per write "
        f"{w['cpu_us_per_write']} us (raw {w['raw_cpu_us_per_write']} us); view applies {w['view_apply_per_s']:,}/s",
        f"sequential write(): p50 {w['sequential_write']['p50_ms']} ms, p95 {w['sequential_write']['p95_ms']} ms; "
        f"conditional (expected_version): p50 {w['conditional_write']['p50_ms']} ms, "
        f"p95 {w['conditional_write']['p95_ms']} ms",
    ]
    for name in [n for n in r if n.startswith("embedded_writes")]:
        if name in r:
            e = r[name]
            lines.append(f"writes embedded by {e['embedder']} on the way: {e['per_s']:,}/s acked "
                         f"(batches of {e['batch']:,}; CPU {e['cpu_ms_per_write']} ms a write)")
    for size in [size for size in r["sizes"] if f"search_{size}" in r]:
        s = r[f"search_{size}"]
        line = (f"{size:>7,} memories: keyword p50 {s['keyword']['p50_ms']} / p95 {s['keyword']['p95_ms']} ms "
                f"(CPU {s['keyword']['cpu_p50_ms']} / {s['keyword']['cpu_p95_ms']}; "
                f"filtered {s['keyword_filtered']['p50_ms']} / {s['keyword_filtered']['p95_ms']}; raw FTS5 "
                f"{s['raw_fts5']['p50_ms']} / {s['raw_fts5']['p95_ms']})")
        if "hybrid" in s:
            h, c, e = s["hybrid"], s["hybrid_vector_cached"], s["query_embedding"]
            line += (f"; hybrid p50 {h['p50_ms']} / p95 {h['p95_ms']} ms (CPU {h['cpu_p50_ms']} / {h['cpu_p95_ms']}; "
                     f"query vector cached {c['p50_ms']} / {c['p95_ms']}, CPU {c['cpu_p50_ms']} / {c['cpu_p95_ms']}; "
                     f"the query embedding alone {e['p50_ms']} / {e['p95_ms']}, CPU {e['cpu_p50_ms']})")
            if "hybrid_compared" in s:
                o = s["hybrid_compared"]
                line += (f"; hybrid with {json.dumps(o['ranking'])} p50 {o['p50_ms']} / p95 {o['p95_ms']} ms (CPU "
                         f"{o['cpu_p50_ms']} / {o['cpu_p95_ms']}; CPU p95 {o['cpu_p95_ms'] / h['cpu_p95_ms']:.2f} "
                         f"of the default's)")
        for peer, p in s.get("hybrid_peers", {}).items():
            h, e = p["hybrid"], p["query_embedding"]
            line += (f"; hybrid with {peer} p50 {h['p50_ms']} / p95 {h['p95_ms']} ms (CPU {h['cpu_p50_ms']} / "
                     f"{h['cpu_p95_ms']}; the query embedding alone {e['p50_ms']} / {e['p95_ms']}, "
                     f"CPU {e['cpu_p50_ms']})")
        line += f"; context() p50 {s['context']['p50_ms']} / p95 {s['context']['p95_ms']} ms"
        line += (f" (load average {s['load_average_before']} before, {s['load_average_after']} after; BLAS threads "
                 f"{s['blas_threads'] or 'default'})")
        lines.append(line)
    return "\n".join(lines + quality_tables(r))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--small", action="store_true", help="2k and 10k memories instead of 10k and 100k")
    parser.add_argument("--rounds", type=int, default=3, help="write rounds (3); with --keyword-only, rounds "
                        "of the checkouts alternating")
    parser.add_argument("--queries", type=int, default=300, help="queries per measurement (300)")
    parser.add_argument("--writes", action="store_true", help="only the acked writes beside raw nats-py "
                        "(--rounds of them; a few seconds each)")
    parser.add_argument("--quality", action="store_true", help="only the development set's retrieval quality")
    parser.add_argument("--tune", action="store_true", help="choose Ranking's weights on the tune split, then "
                        "measure both splits with them (for --embedder: Ranking's defaults were chosen with minilm)")
    parser.add_argument("--cv", action="store_true", help="judge candidate rankings by grouped cross-validation "
                        "inside the tune split (left-out templates and kinds); no held-out question is asked")
    parser.add_argument("--families", help="with --cv: only the families whose name holds one of these strings "
                        "(comma-separated; the re-ranking model is left out)")
    parser.add_argument("--cv-base", help='with --cv: the Ranking settings every family starts from, as JSON (the '
                        'default: Ranking()); \'{"expand_similar": 0, "expand_deep": 0, "entity": 0}\' is the '
                        'default before session 11; with --quality: the Ranking scored (not the peers\')')
    parser.add_argument("--compare", help='with the latency measurement: Ranking settings as JSON (\'{"late": '
                        '0.3}\') whose hybrid search is timed beside the default\'s, query by query')
    parser.add_argument("--tune-only", help="with --tune: only these Ranking fields (comma-separated)")
    parser.add_argument("--split", choices=("tune", "heldout", "both"), default="both",
                        help="which part of the development set to score (both); tune while tuning")
    parser.add_argument("--no-model", action="store_true", help="skip the offline model even if installed")
    parser.add_argument("--embedder", choices=("static", "minilm", "asymmetric"), default="static",
                        help="the embedder measured (static: distilled from MiniLM, the default; asymmetric: "
                             "documents by the static table, queries by MiniLM projected into its space); the "
                             "other ones are measured beside it as peers")
    parser.add_argument("--peers", help="only these peers (comma-separated: static, minilm, asymmetric)")
    parser.add_argument("--words-by-table", action="store_true",
                        help="with --embedder minilm: the second hop's single words by the static table")
    parser.add_argument("--no-peer", action="store_true", help="do not score the development set with the peers")
    parser.add_argument("--no-quality", action="store_true", help="skip the development set (latency and writes only)")
    parser.add_argument("--keyword-only", action="store_true",
                        help="time keyword search only, on the view a full run leaves (a few minutes at 100k)")
    parser.add_argument("--base", help="with --keyword-only: another checkout (a git worktree with its .venv made) "
                        "timed beside this one, alternating --rounds times on the same view")
    parser.add_argument("--sizes", help="with --keyword-only: the view's sizes, comma-separated (10000,100000)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--home", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(asyncio.run(keyword_worker(args))))
        return 0
    if args.keyword_only:
        rows = run_keyword_only(args)
        print(json.dumps(rows, indent=2) if args.json else keyword_table(rows))
        return 0
    report = asyncio.run(run(args))
    print(json.dumps(report, indent=2) if args.json else table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

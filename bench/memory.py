"""Memory benchmark: acked writes/s, search and context latency at 10k and 100k memories, recall@5.

What is measured, against one ``nats-server -js`` started here (free loopback port,
temporary store, stopped at the end) and a memory client that leads its own view:

* **writes/s**: ``AsyncMemory.write_many`` (seal each entry with AES-GCM, wrap it in a
  ``memory.written`` event, ``emit``, one ``flush``: every event acked by the stream)
  against plain nats-py ``publish_async`` + ``publish_async_completed`` of *the same
  bytes* (built beforehand, outside the timed section). Rounds alternate raw, tether.
  Then the time the view takes to apply them (fold, FTS index, checkpoint), and
  sequential acked ``write()`` calls (one round trip each) for reference.
* **search p50/p95** over a synthetic corpus (words drawn from a Zipf distribution, so
  common words match many entries) at 10k and at 100k memories: keyword (FTS5 BM25 +
  recency), and hybrid (keyword + cosine over 384-dimension vectors, fused by RRF) when
  the offline model is installed. Corpus vectors are random unit vectors recorded under
  the model's name (embedding 100k texts on this CPU would take over ten minutes and
  does not change search cost); each query is embedded by the real model, and that time
  is part of the hybrid figure.
* **context()** p50/p95 at 100k memories, token budget 500.
* **recall@5** on the labelled set of ``tests/memory/labelled.py``: keyword, semantic and
  hybrid (the last two with the real model, if installed).

Run it::

    .venv/bin/python bench/memory.py                  # about two minutes
    .venv/bin/python bench/memory.py --small --json   # 2k/10k memories, JSON on stdout
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nats

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.memory.labelled import MEMORIES, QUERIES, recall_at  # noqa: E402
from tether.bus import EVENTS_STREAM, connect  # noqa: E402
from tether.memory import AsyncMemory, LocalEmbedder, MemorySettings  # noqa: E402
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


def ms(values: list[float]) -> dict[str, float]:
    return {"p50_ms": round(pct(values, 50) * 1000, 2), "p95_ms": round(pct(values, 95) * 1000, 2),
            "n": len(values)}


def say(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


async def bench_writes(memory: AsyncMemory, url: str, corpus: Corpus, n: int, rounds: int,
                       quiet: bool) -> dict[str, Any]:
    nc = await nats.connect(url)
    js = nc.jetstream(publish_async_max_pending=8192)
    raw_rates, tether_rates, apply_rates = [], [], []
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
            start = time.perf_counter()
            for m in messages:
                await js.publish_async(m.subject, m.payload, headers=m.headers)
            await js.publish_async_completed()
            raw = n / (time.perf_counter() - start)
            start = time.perf_counter()
            done = await memory.write_many(items)
            tether = n / (time.perf_counter() - start)
            start = time.perf_counter()
            await memory.wait_for(done.seq, timeout=300)
            applied = n / (time.perf_counter() - start)
            raw_rates.append(raw)
            tether_rates.append(tether)
            apply_rates.append(applied)
            say(f"writes round {rnd + 1}: raw {raw:,.0f}/s, tether {tether:,.0f}/s acked "
                f"({tether / raw:.2f} of raw); view applied {applied:,.0f}/s after the flush", quiet)
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
        "view_apply_per_s": round(statistics.median(apply_rates)),
        "sequential_write": ms(latencies), "conditional_write": ms(cond[1:]),
        "stream_messages": info.state.messages,
    }


async def load(memory: AsyncMemory, corpus: Corpus, count: int, quiet: bool) -> None:
    step = 10_000
    for start in range(0, count, step):
        n = min(step, count - start)
        done = await memory.write_many({"namespace": "team:bench", "text": corpus.sentence(),
                                        "metadata": {"bucket": (start + i) % 10}} for i in range(n))
        await memory.wait_for(done.seq, timeout=600)
        say(f"  loaded {start + n:,}", quiet)


async def bench_search(memory: AsyncMemory, corpus: Corpus, queries: int, hybrid: LocalEmbedder | None,
                       ) -> dict[str, Any]:
    out: dict[str, Any] = {}
    texts = [corpus.query() for _ in range(queries)]
    for q in texts[:20]:  # warm caches (and build the vector matrix)
        await memory.search(q, ["team:bench"], k=10, mode="keyword")
    times = []
    found = 0
    for q in texts:
        start = time.perf_counter()
        hits = await memory.search(q, ["team:bench"], k=10, mode="keyword")
        times.append(time.perf_counter() - start)
        found += bool(hits)
    out["keyword"] = {**ms(times), "queries_with_hits": found}
    filtered = []
    for q in texts[:100]:
        start = time.perf_counter()
        await memory.search(q, ["team:bench"], k=10, mode="keyword", filters={"bucket": 3})
        filtered.append(time.perf_counter() - start)
    out["keyword_filtered"] = ms(filtered)
    if hybrid is not None:
        memory.embedder = hybrid
        for q in texts[:5]:
            await memory.search(q, ["team:bench"], k=10, mode="hybrid")
        times, embed = [], []
        for q in texts[:100]:
            start = time.perf_counter()
            await hybrid.embed([q])
            embed.append(time.perf_counter() - start)
            start = time.perf_counter()
            await memory.search(q, ["team:bench"], k=10, mode="hybrid")
            times.append(time.perf_counter() - start)
        out["hybrid"] = ms(times)
        out["query_embedding"] = ms(embed)
        memory.embedder = None
    ctx = []
    for q in texts[:100]:
        start = time.perf_counter()
        await memory.context(q, ["team:bench"], token_budget=500, mode="keyword")
        ctx.append(time.perf_counter() - start)
    out["context"] = ms(ctx)
    return out


async def bench_recall(memory: AsyncMemory, model: LocalEmbedder | None) -> dict[str, float]:
    await memory.write_many({"namespace": "team:labelled", "key": k, "text": t} for k, t in MEMORIES.items())
    out = {}
    modes = ["keyword"] + (["semantic", "hybrid"] if model is not None else [])
    memory.embedder = model
    if model is not None:  # the labelled set gets real vectors: rewrite it through the model
        await memory.write_many({"namespace": "team:labelled", "key": k, "text": t} for k, t in MEMORIES.items())
    for mode in modes:
        results = [[h.entry.key for h in await memory.search(q, ["team:labelled"], k=5, mode=mode)]  # type: ignore[arg-type]
                   for q, _ in QUERIES]
        out[mode] = round(recall_at(results), 3)
    memory.embedder = None
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="tether-bench-memory-"))
    sizes = (2_000, 10_000) if args.small else (10_000, 100_000)
    model = LocalEmbedder() if LocalEmbedder.available() and not args.no_model else None
    report: dict[str, Any] = {"model": model.name if model else None, "sizes": list(sizes)}
    with NatsServer() as server:
        bus = await connect(server.url, home=home)
        settings = MemorySettings(view_dir=home / "memory", keyfile=home / "keys.json", dedupe=False)
        vectors = RandomVectors(model.name) if model is not None else None
        memory = await AsyncMemory(bus, agent="bench", settings=settings, embedder=vectors).start()
        try:
            corpus = Corpus()
            say("writes...", args.quiet)
            memory.embedder = None
            report["writes"] = await bench_writes(memory, server.url, corpus, 5_000 if args.small else 10_000,
                                                  args.rounds, args.quiet)
            memory.embedder = vectors
            loaded = 0
            for size in sizes:
                say(f"corpus to {size:,} memories...", args.quiet)
                memory.embedder = vectors
                await load(memory, corpus, size - loaded, args.quiet)
                memory.embedder = None
                loaded = size
                report[f"search_{size}"] = await bench_search(memory, corpus, args.queries, model)
                say(f"  {json.dumps(report[f'search_{size}'])}", args.quiet)
            report["recall_at_5"] = await bench_recall(memory, model)
        finally:
            await memory.close()
            await bus.close()
    return report


def table(r: dict[str, Any]) -> str:
    w = r["writes"]
    lines = [
        f"writes (batches of {w['batch']:,}, median of {w['rounds']}): tether {w['tether_per_s']:,}/s acked, "
        f"raw nats-py {w['raw_per_s']:,}/s ({w['ratio']:.2f} of raw); view applies {w['view_apply_per_s']:,}/s",
        f"sequential write(): p50 {w['sequential_write']['p50_ms']} ms, p95 {w['sequential_write']['p95_ms']} ms; "
        f"conditional (expected_version): p50 {w['conditional_write']['p50_ms']} ms, "
        f"p95 {w['conditional_write']['p95_ms']} ms",
    ]
    for size in r["sizes"]:
        s = r[f"search_{size}"]
        line = (f"{size:>7,} memories: keyword p50 {s['keyword']['p50_ms']} / p95 {s['keyword']['p95_ms']} ms "
                f"(filtered {s['keyword_filtered']['p50_ms']} / {s['keyword_filtered']['p95_ms']})")
        if "hybrid" in s:
            line += (f"; hybrid p50 {s['hybrid']['p50_ms']} / p95 {s['hybrid']['p95_ms']} ms (of which query "
                     f"embedding p50 {s['query_embedding']['p50_ms']})")
        line += f"; context() p50 {s['context']['p50_ms']} / p95 {s['context']['p95_ms']} ms"
        lines.append(line)
    lines.append("recall@5 on the labelled set: " + ", ".join(f"{k} {v}" for k, v in r["recall_at_5"].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--small", action="store_true", help="2k and 10k memories instead of 10k and 100k")
    parser.add_argument("--rounds", type=int, default=3, help="write rounds (3)")
    parser.add_argument("--queries", type=int, default=300, help="queries per measurement (300)")
    parser.add_argument("--no-model", action="store_true", help="skip the offline model even if installed")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)
    report = asyncio.run(run(args))
    print(json.dumps(report, indent=2) if args.json else table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

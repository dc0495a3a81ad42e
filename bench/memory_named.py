"""Hybrid search of queries that name someone, two checkouts of tether side by side on one view.

One ``nats-server -js`` and one view of synthetic memories (``bench/memory.py``'s Zipf sentences, a
tenth of them naming someone, random unit vectors recorded under the embedder's name) at each size;
then, alternating, a process of each checkout (its own ``.venv``, so its own tether) opens the same
view and asks the same queries ("What does Ann Fischer think about kalo rumi?"), each embedded by
the real embedder (the vector cache emptied before every search), with each ``--variants`` ranking
in turn per query. Reported per search: wall clock and the process's CPU time (every thread), p50 and
p95, with the 1-minute load average before and after each process's round::

    .venv/bin/python bench/memory_named.py --base ../wt-base              # 10k and 100k, MiniLM and static
    .venv/bin/python bench/memory_named.py --base ../wt-base --sizes 10000 --embedders minilm --rounds 3
    .venv/bin/python bench/memory_named.py --people --embedders asymmetric,static,minilm   # this checkout only

With ``--people`` the view also holds the development set's memories (``bench/memory_set.json``:
people's facts and the entries that relate them, "Ann Borg reports to Ben Berg.", written first, in
the same namespace, with random vectors as the rest) and the queries are its tune questions that
name someone, so the second hop's tests meet entries naming two people as they do in use.

``--base`` is the other checkout (a ``git worktree`` with its ``.venv`` made); ``--variants`` are
``Ranking`` settings as JSON objects separated by ``;`` (only fields both checkouts know are given
to the base). BLAS is held to one thread (``OPENBLAS_NUM_THREADS=1``) in the workers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FIRST = ["Ann", "Ben", "Carl", "Dana", "Eli", "Greta", "Jana", "Omar", "Lena", "Mira", "Tomas", "Ida"]
LAST = ["Fischer", "Borg", "Novak", "Ortiz", "Costa", "Berg", "Weber", "Lind", "Moreau", "Sato"]
TEMPLATES = ["What does {p} think about {w}?", "Where did {p} keep the {w}?", "Which {w} does {p} own?",
             "When did {p}'s {w} start?", "Does {p} still like {w}?"]


def named_queries(n: int, seed: int) -> list[str]:
    """In the driver only: bench/memory.py puts this checkout's tether first on sys.path."""
    sys.path.insert(0, str(HERE))
    from memory import Corpus  # bench/memory.py's Zipf words

    corpus, rng = Corpus(seed), random.Random(seed)
    return [rng.choice(TEMPLATES).format(p=f"{rng.choice(FIRST)} {rng.choice(LAST)}", w=corpus.query())
            for _ in range(n)]


def people_queries(n: int, seed: int) -> list[str]:
    """The development set's tune questions that name someone (``--people``), ``n`` of them, repeating."""
    doc = json.loads((HERE / "memory_set.json").read_text(encoding="utf-8"))
    named = [q["text"] for q in doc["queries"] if q["split"] == "tune" and sum(w[:1].isupper() for w in
                                                                               q["text"].split()[1:]) >= 2]
    random.Random(seed).shuffle(named)
    return [named[i % len(named)] for i in range(n)]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def embedder(kind: str, table: str | None) -> Any:
    from tether.memory import AsymmetricEmbedder, LocalEmbedder, StaticEmbedder

    if kind == "asymmetric":
        return AsymmetricEmbedder(path=table, build=table is None)
    return LocalEmbedder() if kind == "minilm" else StaticEmbedder(path=table, build=table is None)


async def worker(args: argparse.Namespace) -> dict[str, Any]:
    """In the checkout under test: open the view, ask the queries, time each variant."""
    from dataclasses import fields

    from tether.bus import connect
    from tether.memory import AsyncMemory, MemorySettings
    from tether.memory._rank import Ranking

    home = Path(args.home)
    model = embedder(args.embedder, args.table)
    known = {f.name for f in fields(Ranking)}
    variants = [json.loads(v) for v in args.variants.split(";")]
    rankings = [Ranking(**{k: v for k, v in v.items() if k in known}) for v in variants]
    bus = await connect(args.url, home=home)
    settings = MemorySettings(view_dir=home / "memory", keyfile=home / "keys.json", dedupe=False)
    memory = await AsyncMemory(bus, agent="bench", settings=settings, embedder=model).start()
    try:
        await memory.catch_up(timeout=600)
        queries = json.loads((home / "queries.json").read_text())
        for q in queries[:10]:  # the vector matrix, the FTS pages, the model's first encodes
            await memory.search(q, ["team:bench"], k=10, mode="hybrid")
        wall: list[list[float]] = [[] for _ in rankings]
        cpu: list[list[float]] = [[] for _ in rankings]
        load = os.getloadavg()[0]
        kept: dict[tuple[str, str], list[float]] = {}  # --warm-words: single words' vectors stay cached

        class Cache(type(memory.vector_cache)):  # type: ignore[misc]
            def put(self, embedder: str, text: str, vector: list[float]) -> None:
                super().put(embedder, text, vector)
                if args.warm_words and " " not in text.strip():
                    kept[(embedder, text)] = vector

        for q in queries[10:]:
            for i, ranking in enumerate(rankings):
                memory.ranking = ranking
                memory.vector_cache = Cache()  # the query is embedded in every search
                for (name, text), vector in kept.items():
                    memory.vector_cache.put(name, text, vector)
                start, used = time.perf_counter(), time.process_time()
                await memory.search(q, ["team:bench"], k=10, mode="hybrid")
                wall[i].append(time.perf_counter() - start)
                cpu[i].append(time.process_time() - used)
        return {"load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2), "variants": [
            {"variant": v, "wall_p50": round(pct(w, 50) * 1e3, 2), "wall_p95": round(pct(w, 95) * 1e3, 2),
             "cpu_p50": round(pct(c, 50) * 1e3, 2), "cpu_p95": round(pct(c, 95) * 1e3, 2), "n": len(w)}
            for v, w, c in zip(variants, wall, cpu, strict=True)]}
    finally:
        await memory.close()
        await bus.close()


async def load(url: str, home: Path, name: str, dims: int, start: int, size: int, people: bool = False) -> None:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(HERE))
    from memory import Corpus, RandomVectors

    from tether.bus import connect
    from tether.memory import AsyncMemory, MemorySettings

    bus = await connect(url, home=home)
    settings = MemorySettings(view_dir=home / "memory", keyfile=home / "keys.json", dedupe=False)
    memory = await AsyncMemory(bus, agent="bench", settings=settings, embedder=RandomVectors(name, dims)).start()
    corpus, rng = Corpus(start + 1), random.Random(start)
    try:
        if people and start == 0:  # the development set's memories first (--people)
            doc = json.loads((HERE / "memory_set.json").read_text(encoding="utf-8"))
            done = await memory.write_many({"namespace": "team:bench", **{k: v for k, v in m.items() if v is not None
                                                                          and k != "namespace"}}
                                           for m in doc["memories"])
            await memory.wait_for(done.seq, timeout=900)
            start = len(doc["memories"])
        for at in range(start, size, 10_000):
            n = min(10_000, size - at)
            done = await memory.write_many(
                {"namespace": "team:bench", "text": (f"{rng.choice(FIRST)} {rng.choice(LAST)} " if i % 10 == 0
                                                     else "") + corpus.sentence()} for i in range(n))
            await memory.wait_for(done.seq, timeout=900)
            print(f"  loaded {at + n:,}", file=sys.stderr, flush=True)
    finally:
        await memory.close()
        await bus.close()


def run_worker(python: Path, url: str, home: Path, args: argparse.Namespace, kind: str,
               table: str | None) -> dict[str, Any]:
    cmd = [str(python), str(Path(__file__).resolve()), "--worker", "--url", url, "--home", str(home),
           "--embedder", kind, "--variants", args.variants, *(["--warm-words"] if args.warm_words else [])]
    if table:
        cmd += ["--table", table]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd=python.parent.parent.parent)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--base", help="the other checkout (with its .venv)")
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--embedders", default="minilm,static", help="of minilm, static and asymmetric")
    parser.add_argument("--queries", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the two checkouts alternating (2)")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--variants", default='{};{"unnamed": 0}',
                        help='Ranking settings to time, ";"-separated JSON objects ({} is the default)')
    parser.add_argument("--people", action="store_true", help="the development set's people in the view and its "
                        "tune questions naming someone as the queries")
    parser.add_argument("--warm-words", action="store_true", help="keep single words' vectors cached from search to "
                        "search (the second hop's semantic test embeds words; they recur), every text else embedded")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--home", help=argparse.SUPPRESS)
    parser.add_argument("--embedder", help=argparse.SUPPRESS)
    parser.add_argument("--table", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(asyncio.run(worker(args))))
        return 0
    sys.path.insert(0, str(ROOT))
    from tether.testing import NatsServer

    checkouts = {"this": ROOT / ".venv" / "bin" / "python"}
    if args.base:
        checkouts = {"base": Path(args.base).resolve() / ".venv" / "bin" / "python", **checkouts}
    report: list[dict[str, Any]] = []
    for kind in args.embedders.split(","):
        model = embedder(kind, None)
        table = str(model.path if kind == "static" else model.static.path) if kind != "minilm" else None
        home = Path(tempfile.mkdtemp(prefix="tether-bench-named-"))
        queries = (people_queries if args.people else named_queries)(args.queries + 10, args.seed)
        (home / "queries.json").write_text(json.dumps(queries))
        with NatsServer() as server:
            loaded = 0
            for size in (int(s) for s in args.sizes.split(",")):
                print(f"{kind}: corpus to {size:,}", file=sys.stderr, flush=True)
                asyncio.run(load(server.url, home, model.name, getattr(model, "dims", 384), loaded, size, args.people))
                loaded = size
                for rnd in range(args.rounds):
                    for code, python in checkouts.items():
                        got = run_worker(python, server.url, home, args, kind, table)
                        row = {"embedder": kind, "size": size, "round": rnd + 1, "code": code, **got}
                        report.append(row)
                        print(json.dumps(row), file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for row in report:
        cells = "; ".join(f"{json.dumps(v['variant'])} wall {v['wall_p50']} / {v['wall_p95']} ms, CPU {v['cpu_p50']} / "
                          f"{v['cpu_p95']} ms" for v in row["variants"])
        print(f"{row['embedder']:<7} {row['size']:>7,} round {row['round']} {row['code']:<5} {cells} "
              f"(load {row['load_before']}-{row['load_after']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

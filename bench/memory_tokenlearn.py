"""A static table fitted to MiniLM's sentence vectors (model2vec's "tokenlearn" idea), judged on the tune split.

Sentences from the docstrings of the standard library and the installed packages (not tether's, never
the development set) are encoded by MiniLM, their pooled outputs mapped into the static table's space by
its query projection (what ``AsymmetricEmbedder`` does to a query); the table's rows are then fitted so
each sentence's mean row regresses that vector (scaled to the distilled table's norm for the sentence),
ridge-regularised towards the distilled table by ``lambda`` (conjugate gradient on the normal equations).
Each fitted table is scored by hybrid recall@5 on the **tune** split with the asymmetric embedder and
with the table alone, and the family of lambdas cross-validated by template and by kind beside the
distilled table (``bench/memory.py``'s grouped cross-validation). No held-out question is asked.

    .venv/bin/python bench/memory_tokenlearn.py --sentences 12000 --lambdas 1,10,100   # ~15 min

The corpus depends on what is installed, so the fitted table is not the same on every host.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import json
import random
import re
import statistics
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import memory as bench  # noqa: E402

from tether.bus import connect  # noqa: E402
from tether.memory import AsymmetricEmbedder, AsyncMemory, Embedder, Grants, MemorySettings, StaticEmbedder  # noqa: E402
from tether.memory._static import QueryProjection, StaticTable, projection_path, table_hash  # noqa: E402
from tether.testing import NatsServer  # noqa: E402


def docstring_sentences(limit: int, seed: int = 11) -> list[str]:
    """Sentences of 5-40 words from docstrings outside tether, without code-like characters, shuffled."""
    paths = sysconfig.get_paths()
    seen: set[str] = set()
    out: list[str] = []
    for root in (Path(paths["stdlib"]), Path(paths["purelib"])):
        for f in sorted(root.rglob("*.py")):
            if "tether" in f.parts or "test" in str(f).lower():
                continue
            try:
                tree = ast.parse(f.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
                continue
            for node in ast.walk(tree):
                if not isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    continue
                doc = ast.get_docstring(node)
                for para in re.split(r"\n\s*\n", doc or ""):
                    for sent in re.split(r"(?<=[.!?])\s+", " ".join(para.split())):
                        if 5 <= len(sent.split()) <= 40 and sent not in seen \
                                and not re.search(r"[{}<>=\[\]\\|`]|::|>>>", sent):
                            seen.add(sent)
                            out.append(sent)
    random.Random(seed).shuffle(out)
    return out[:limit]


def fit_tables(asym: AsymmetricEmbedder, sentences: list[str], lambdas: list[float], out: Path) -> dict[float, Path]:
    """One fitted table (and its query projection, the same map) per lambda, saved under ``out``."""
    import numpy as np

    base = np.ascontiguousarray(asym.static.table.table)
    proj = asym.projection
    pooled = np.zeros((len(sentences), proj.mean.shape[0]), dtype=np.float32)
    for i in range(0, len(sentences), 512):
        pooled[i:i + 512] = asym.model.pooled_words(sentences[i:i + 512], batch=64)
        bench.say(f"encoded {min(i + 512, len(sentences)):,} sentences", False)
    mapped = (pooled - proj.mean) @ proj.components
    rows_, cols_, vals_ = [], [], []
    for r, enc in enumerate(asym.static.table.tokenizer.encode_batch(sentences, add_special_tokens=False)):
        ids = [i for i in enc.ids if i != 0]
        for c in ids:
            rows_.append(r)
            cols_.append(c)
            vals_.append(1.0 / len(ids))
    rows, cols, vals = np.array(rows_), np.array(cols_), np.array(vals_, dtype=np.float32)
    starts = np.r_[0, np.flatnonzero(np.diff(rows)) + 1]
    order = np.argsort(cols, kind="stable")
    cstarts = np.r_[0, np.flatnonzero(np.diff(cols[order])) + 1]
    used = cols[order][cstarts]

    def x(t: Any) -> Any:  # each sentence's mean row
        return np.add.reduceat(vals[:, None] * t[cols], starts)

    def xt(e: Any) -> Any:  # its transpose
        g = np.zeros_like(base)
        g[used] = np.add.reduceat((vals[:, None] * e[rows])[order], cstarts)
        return g

    before = x(base)
    scale = np.linalg.norm(before, axis=1, keepdims=True)
    target = mapped / np.linalg.norm(mapped, axis=1, keepdims=True) * scale
    made: dict[float, Path] = {}
    for lam in lambdas:
        b = xt(target - before)
        delta, r = np.zeros_like(base), b.copy()
        p, rs = r.copy(), (r * r).sum(0)
        for _ in range(60):
            ap = xt(x(p)) + lam * p
            alpha = rs / np.maximum((p * ap).sum(0), 1e-30)
            delta += alpha * p
            r -= alpha * ap
            rn = (r * r).sum(0)
            p = r + (rn / np.maximum(rs, 1e-30)) * p
            rs = rn
        table = (base + delta).astype(np.float32)
        fitted = x(table)
        cos = float(np.mean(np.sum(fitted / np.linalg.norm(fitted, axis=1, keepdims=True) * target / scale, 1)))
        start = float(np.mean(np.sum(before * target, 1) / scale[:, 0] ** 2))
        bench.say(f"lambda {lam}: mean cosine to the targets {start:.3f} -> {cos:.3f}; {len(used):,} rows fitted",
                  False)
        path = out / f"tokenlearn-{lam}.npy"
        StaticTable.save(table, path)
        QueryProjection(proj.mean, proj.components, table_hash(table)).save(projection_path(path))
        made[lam] = path
    return made


async def tune_recall(url: str, home: Path, model: Embedder) -> dict[str, float]:
    """Each tune question's hybrid recall@5 with ``model`` (default ``Ranking``)."""
    doc = bench.dev_set()
    grants = Grants.from_mapping({**doc["grants"], "loader": {"read": ["*"], "write": ["*"]}})
    bus = await connect(url, home=home)
    settings = MemorySettings(view_dir=home / "view", keyfile=home / "keys.json", dedupe=False)
    memory = await AsyncMemory(bus, agent="loader", settings=settings, embedder=model, grants=grants).start()
    try:
        await bench.load_dev_set(memory, doc)
        queries = [q for q in doc["queries"] if q["split"] == "tune"]
        results = await bench.run_dev_set(memory, doc, "hybrid", "tune")
        return {q["id"]: bench.recall5(q, hits) for q, hits in zip(queries, results, strict=True)}
    finally:
        await memory.close()
        await bus.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="tether-tokenlearn-"))
    asym = AsymmetricEmbedder()
    tables = fit_tables(asym, docstring_sentences(args.sentences), [float(v) for v in args.lambdas.split(",")], work)
    models: dict[str, Embedder] = {"distilled, asymmetric": asym, "distilled, static": asym.static}
    for lam, path in tables.items():
        fitted = AsymmetricEmbedder(path=path, build=False)
        models[f"lambda {lam}, asymmetric"] = fitted
        models[f"lambda {lam}, static"] = StaticEmbedder(path=path, build=False)
    per: dict[str, dict[str, float]] = {}
    for i, (name, model) in enumerate(models.items()):
        with NatsServer() as server:
            per[name] = await tune_recall(server.url, work / f"q{i}", model)
        bench.say(f"{name}: tune hybrid recall@5 {statistics.fmean(per[name].values()):.3f}", False)
    doc = bench.dev_set()
    queries = {q["id"]: q for q in doc["queries"] if q["split"] == "tune"}
    groups = {"template": {i: bench.template_of(q["text"]) for i, q in queries.items()},
              "kind": {i: q["categories"][0] for i, q in queries.items()}}
    out: dict[str, Any] = {"sentences": args.sentences, "tune": {n: round(statistics.fmean(v.values()), 3)
                                                                for n, v in per.items()}}
    for kind in ("asymmetric", "static"):
        family = [f"distilled, {kind}"] + [f"lambda {lam}, {kind}" for lam in tables]
        out[f"cv_{kind}"] = {g: round(bench.grouped_cv(per, family, groups[g]), 3) for g in groups}
        out[f"cv_{kind}_own"] = {g: round(bench.grouped_cv(per, family[1:], groups[g]), 3) for g in groups}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sentences", type=int, default=12000, help="docstring sentences to fit on (12000)")
    parser.add_argument("--lambdas", default="1,10,100", help="ridge weights towards the distilled table")
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(run(args)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

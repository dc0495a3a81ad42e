"""Every tune question's hybrid top five with ``AsymmetricEmbedder`` on a table of the development set's
own tokens: what a new Ranking field set to 0 must leave as it was.

The table is distilled from the tokens of the set's memories and questions only (a few seconds, not
the minute of the whole vocabulary), so a test can make it; its vectors differ from the full table's,
its top fives are compared only with each other. Run with another checkout's ``tether`` first on the
path to record that code's top fives::

    PYTHONPATH=/tmp/main-src .venv/bin/python bench/memory_top5.py --out tests/memory/tune_top5.json
    .venv/bin/python bench/memory_top5.py --ranking '{"late": 0}' --check tests/memory/tune_top5.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DIMS = 256


def dev_set() -> dict[str, Any]:
    return json.loads((ROOT / "bench" / "memory_set.json").read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def table(home: Path, doc: dict[str, Any]) -> Path:
    """The table of the set's tokens and its query projection, under ``home``."""
    from tether.memory._minilm import MiniLM
    from tether.memory._static import StaticTable, distill_projected, projection_path

    model = MiniLM()
    texts = [m["text"] for m in doc["memories"]] + [q["text"] for q in doc["queries"]]
    ids = {i for enc in model.tokenizer.encode_batch(texts, add_special_tokens=False) for i in enc.ids}
    path = home / "table.npy"
    rows, projection = distill_projected(model, DIMS, tokens=ids)
    StaticTable.save(rows, path)
    projection.save(projection_path(path))
    return path


async def top5(url: str, home: Path, ranking: dict[str, Any] | None) -> dict[str, list[list[str]]]:
    """Each tune question's top five (namespace, key), asked as the set's askers with their grants."""
    from tether.bus import connect
    from tether.memory import AsymmetricEmbedder, AsyncMemory, Grants, MemorySettings, Ranking

    doc = dev_set()
    embedder = AsymmetricEmbedder(DIMS, path=table(home, doc), build=False)
    grants = Grants.from_mapping({**doc["grants"], "loader": {"read": ["*"], "write": ["*"]}})
    bus = await connect(url, home=home)
    settings = MemorySettings(view_dir=home / "view", keyfile=home / "keys.json", dedupe=False)
    memory = await AsyncMemory(bus, agent="loader", settings=settings, embedder=embedder, grants=grants).start()
    if ranking is not None:
        memory.ranking = Ranking(**ranking)
    out: dict[str, list[list[str]]] = {}
    try:
        done = await memory.write_many([{k: v for k, v in m.items() if v is not None} for m in doc["memories"]])
        await memory.wait_for(done.seq, timeout=300)
        for q in doc["queries"]:
            if q["split"] != "tune":
                continue
            memory.agent = q["asker"]
            hits = await memory.search(q["text"], k=5, mode="hybrid", valid_at="query")
            out[q["id"]] = [[h.entry.namespace, h.entry.key] for h in hits]
    finally:
        await memory.close()
        await bus.close()
    return out


def run(ranking: dict[str, Any] | None) -> dict[str, list[list[str]]]:
    from tether.testing import NatsServer

    with tempfile.TemporaryDirectory(prefix="tether-top5-") as tmp, NatsServer() as server:
        return asyncio.run(top5(server.url, Path(tmp), ranking))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--ranking", help="Ranking settings as JSON (default: Ranking())")
    parser.add_argument("--out", help="write the top fives to this file")
    parser.add_argument("--check", help="compare with the top fives in this file")
    args = parser.parse_args(argv)
    got = run(json.loads(args.ranking) if args.ranking else None)
    if args.out:
        Path(args.out).write_text(json.dumps(got, indent=0, sort_keys=True) + "\n", encoding="utf-8")
    if args.check:
        want = json.loads(Path(args.check).read_text(encoding="utf-8"))
        differ = [i for i in want if want[i] != got.get(i)]
        print(f"{len(want) - len(differ)} of {len(want)} tune questions have the same top five; differ: {differ}")
        return 1 if differ else 0
    print(f"{len(got)} tune questions")
    return 0


if __name__ == "__main__":
    sys.exit(main())

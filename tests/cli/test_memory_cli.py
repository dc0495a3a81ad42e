"""``tether memory`` commands (registered by tether.cli; built here from the module's add_commands)."""

from __future__ import annotations

import argparse
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tether.cli import _common
from tether.cli._memory import add_commands, parse_as_of, parse_duration, parse_pairs, run
from tether.memory import LocalEmbedder
from tether.projections import open_view
from tether.testing import NatsServer

from .test_cli import run_tether

pytestmark = [pytest.mark.anyio, pytest.mark.nats]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tether")
    sub = parser.add_subparsers(dest="command")
    add_commands(sub, _common)
    return parser.parse_args(argv)


async def cli(capsys: pytest.CaptureFixture[str], url: str, home: Path, *argv: str) -> tuple[int, str, str]:
    args = parse("memory", *argv[:1], *argv[1:], "--url", url, "--home", str(home))
    code = await run(args)
    out = capsys.readouterr()
    return code, out.out, out.err


async def test_write_get_search_history_erase(fresh_nats_server: NatsServer, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    url, home = fresh_nats_server.url, tmp_path / "home"
    code, out, _ = await cli(capsys, url, home, "write", "user:ann", "Ann prefers tea over coffee", "--key", "drink",
                             "--meta", "topic=food", "--meta", "score=3", "--agent", "bot", "--run", "r1")
    assert code == 0 and out.strip() == "wrote user:ann/drink v1 at seq 1"
    code, out, _ = await cli(capsys, url, home, "write", "user:ann", "Ann now prefers green tea", "--key", "drink",
                             "--expected-version", "1")
    assert code == 0 and "v2 at seq 2" in out
    code, _, err = await cli(capsys, url, home, "write", "user:ann", "lost update", "--key", "drink",
                             "--expected-version", "1")
    assert code == 2 and "version conflict on user:ann/drink" in err
    code, out, _ = await cli(capsys, url, home, "get", "user:ann", "drink")
    assert code == 0 and "user:ann/drink@v2" in out and "Ann now prefers green tea" in out
    code, out, _ = await cli(capsys, url, home, "get", "user:ann", "drink", "--as-of", "1", "--json")
    doc = json.loads(out)
    assert (doc["text"], doc["version"], doc["metadata"], doc["agent"]) == ("Ann prefers tea over coffee", 1,
                                                                            {"topic": "food", "score": 3}, "bot")
    code, out, _ = await cli(capsys, url, home, "search", "what does Ann drink? tea", "--json")
    assert code == 0 and json.loads(out)[0]["entry"]["key"] == "drink"
    code, out, _ = await cli(capsys, url, home, "context", "tea", "--budget", "60")
    assert code == 0 and "[1] Ann now prefers green tea (user:ann/drink@v2" in out
    code, out, _ = await cli(capsys, url, home, "history", "user:ann", "drink")
    lines = out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("v1") and "agent=bot run=r1" in lines[0]
    code, _, err = await cli(capsys, url, home, "get", "user:ann", "nothing")
    assert code == 1 and "no memory 'nothing' in namespace 'user:ann'" in err
    code, _, err = await cli(capsys, url, home, "write", "bad namespace", "x")
    assert code == 2 and "invalid namespace" in err
    code, _, err = await cli(capsys, url, home, "erase", "user:ann")
    assert code == 2 and "--yes" in err
    code, out, _ = await cli(capsys, url, home, "write", "user:ann", "Ann's locker code is 4711", "--key", "locker")
    assert code == 0
    code, out, _ = await cli(capsys, url, home, "erase", "user:ann", "--key", "locker", "--yes")
    assert code == 0 and "erased user:ann/locker: destroyed key(s) user:ann#1" in out
    code, _, err = await cli(capsys, url, home, "history", "user:ann", "locker")
    assert code == 1 and "never written, or erased" in err
    code, out, _ = await cli(capsys, url, home, "get", "user:ann", "drink")
    assert code == 0 and "Ann now prefers green tea" in out
    code, out, _ = await cli(capsys, url, home, "erase", "user:ann", "--yes")
    assert code == 0 and "erased user:ann: destroyed key(s) user:ann#1/" in out and "user:ann#2" in out
    code, out, _ = await cli(capsys, url, home, "search", "tea")
    assert code == 0 and "no matches" in out


async def test_grants_apply_to_the_cli(fresh_nats_server: NatsServer, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tether.toml").write_text('[memory.grants]\n"*" = { read = ["global"], write = [] }\n')
    code, _, err = await cli(capsys, fresh_nats_server.url, tmp_path / "home", "write", "global", "x",
                             "--agent", "intern")
    assert code == 2 and "agent 'intern' may not write memory namespace 'global'" in err


def test_argument_parsing() -> None:
    assert parse_duration("90s") == 90 and parse_duration("2h") == 7200 and parse_duration("1.5d") == 129600
    with pytest.raises(ValueError, match="--ttl"):
        parse_duration("soon")
    assert parse_as_of("42") == 42 and parse_as_of("2026-01-31T12:00").tzinfo is not None  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="--as-of"):
        parse_as_of("yesterday")
    assert parse_pairs(["a=1", "b=x", "c=[1,2]"], "--meta") == {"a": 1, "b": "x", "c": [1, 2]}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_pairs(["novalue"], "--meta")


async def test_valid_time_from_the_cli(fresh_nats_server: NatsServer, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    url, home = fresh_nats_server.url, tmp_path / "home"
    code, _, err = await cli(capsys, url, home, "write", "user:lea", "Lea moved to Oslo in May 2026.", "--key",
                             "city", "--valid-from", "2026-05-01")
    assert code == 0, err
    code, _, err = await cli(capsys, url, home, "write", "user:lea", "Lea lives in Rome.", "--key", "city",
                             "--valid-from", "2024-01-01", "--observed-at", "2026-11-20")
    assert code == 0, err
    code, out, _ = await cli(capsys, url, home, "get", "user:lea", "city", "--json")
    assert code == 0 and json.loads(out)["text"] == "Lea moved to Oslo in May 2026."
    code, out, _ = await cli(capsys, url, home, "search", "Where did Lea live before May?", "--valid-at", "query")
    assert code == 0 and "Lea lives in Rome." in out and "Oslo" not in out
    code, out, _ = await cli(capsys, url, home, "search", "Lea", "--valid-at", "2025-06-01")
    assert code == 0 and "Lea lives in Rome." in out
    code, _, err = await cli(capsys, url, home, "search", "Lea", "--valid-at", "last spring")
    assert code == 2 and "--valid-at 'last spring' is not an ISO 8601 time" in err
    code, _, err = await cli(capsys, url, home, "write", "user:lea", "x", "--valid-from", "soon")
    assert code == 2 and "valid_from 'soon' is not an ISO 8601 time" in err


def view_rows(home: Path, sql: str) -> list[tuple[Any, ...]]:
    """``sql``'s rows in the memory view this home's clients read (opened read-only)."""
    view = open_view(home / "memory", "memory")
    assert view is not None
    db = sqlite3.connect(f"file:{view}?mode=ro", uri=True)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


@pytest.mark.skipif(not LocalEmbedder.available(), reason="needs the [semantic] extra and the MiniLM package")
async def test_the_embedder_setting_makes_the_cli_search_hybrid(fresh_nats_server: NatsServer, tmp_path: Path) -> None:
    """``[memory] embedder = "minilm"``: the ``tether`` command (a child process, its own event loop)
    embeds what it writes and finds by meaning a query that shares no word with the entry."""
    home = tmp_path / "home"
    (tmp_path / "tether.toml").write_text('[memory]\nembedder = "minilm"\n')
    url = ("--url", fresh_nats_server.url)
    code, _, err = await run_tether("memory", "write", "team:notes", "The cat sleeps on the sofa all afternoon.", *url,
                                    home=home, timeout=60)
    assert code == 0, err
    code, out, err = await run_tether("memory", "search", "kitten napping on a couch", "--json", *url, home=home,
                                      timeout=60)
    assert code == 0, err
    assert json.loads(out)[0]["entry"]["text"] == "The cat sleeps on the sofa all afternoon."


@pytest.mark.skipif(not LocalEmbedder.available(), reason="needs the [semantic] extra and the MiniLM package")
async def test_reembed_after_the_embedder_changed(fresh_nats_server: NatsServer, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Written before ``[memory] embedder`` was set: ``tether memory reembed`` (a child process) gives the
    entry a vector, with progress on stderr (that search then finds it by meaning: tests/memory)."""
    monkeypatch.chdir(tmp_path)
    url, home = fresh_nats_server.url, tmp_path / "home"
    text = "The cat sleeps on the sofa all afternoon."
    code, _, err = await cli(capsys, url, home, "write", "team:notes", text)
    assert code == 0, err
    code, _, err = await cli(capsys, url, home, "reembed")
    assert code == 2 and 'set [memory] embedder = "static", "minilm" or "asymmetric"' in err and "--embedder" in err
    (tmp_path / "tether.toml").write_text('[memory]\nembedder = "static"\n')
    # a static table where StaticEmbedder looks for one (random rows: this checks the vectors are recorded;
    # that search then finds entries by meaning is tests/memory/test_static_embedder.py's)
    import numpy as np

    from tether.memory._minilm import model_dir
    from tether.memory._static import StaticTable, fingerprint, table_hash, table_path

    found = model_dir()
    assert found is not None
    table = np.random.default_rng(3).standard_normal((30522, 256)).astype(np.float32)
    StaticTable.save(table, table_path(home, 256, fingerprint(found)))
    name = f"tether-static/all-MiniLM-L6-v2/256/{table_hash(table)}"
    code, out, err = await run_tether("memory", "reembed", "-n", "team:notes", "--url", url, home=home, timeout=60)
    assert code == 0, err
    assert "re-embedded 1/1" in err and f"re-embedded 1 entry with {name} in team:notes" in out
    rows = view_rows(home, "SELECT text, embedder, length(embedding) FROM versions")
    assert rows == [(text, name, 256 * 4)]  # the same version, with a vector now


@pytest.mark.skipif(not LocalEmbedder.available(), reason="needs the [semantic] extra and the MiniLM package")
async def test_the_asymmetric_embedder_from_tether_toml(fresh_nats_server: NatsServer, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """``embedder = "asymmetric"``: ``tether memory write`` records the static table's vector, and
    ``tether memory search`` (a child process) embeds the query with MiniLM into the table's space, so a query
    sharing no word with the entry finds it by its vector (random table and projection where the embedder
    looks for them: this checks the wiring; tests/memory checks the ranking)."""
    import numpy as np

    from tether.memory._minilm import model_dir
    from tether.memory._static import QueryProjection, StaticTable, fingerprint, projection_path, table_hash, table_path

    monkeypatch.chdir(tmp_path)
    url, home = fresh_nats_server.url, tmp_path / "home"
    (tmp_path / "tether.toml").write_text('[memory]\nembedder = "asymmetric"\n')
    monkeypatch.setenv("TETHER_HOME", str(tmp_path / "elsewhere"))  # --home decides where the table is, not this
    found = model_dir()
    assert found is not None
    rng = np.random.default_rng(5)
    table = rng.standard_normal((30522, 256)).astype(np.float32)
    path = table_path(home, 256, fingerprint(found))
    StaticTable.save(table, path)
    QueryProjection(rng.standard_normal(384), rng.standard_normal((384, 256)), table_hash(table)).save(
        projection_path(path))
    text = "The cat sleeps on the sofa all afternoon."
    code, _, err = await cli(capsys, url, home, "write", "team:notes", text)
    assert code == 0, err
    code, out, err = await run_tether("memory", "search", "zzyzx qwv", "-n", "team:notes", "--json", "--url", url,
                                      home=home, timeout=60)
    assert code == 0, err
    [hit] = json.loads(out)
    assert (hit["entry"]["text"], hit["keyword_rank"], hit["semantic_rank"]) == (text, None, 1)
    rows = view_rows(home, "SELECT embedder, length(embedding) FROM versions")
    assert rows == [(f"tether-static/all-MiniLM-L6-v2/256/{table_hash(table)}", 256 * 4)]


async def test_a_bad_or_missing_embedder_is_a_clear_cli_error(fresh_nats_server: NatsServer, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    url, home = fresh_nats_server.url, tmp_path / "home"
    (tmp_path / "tether.toml").write_text('[memory]\nembedder = "bert"\n')
    code, _, err = await cli(capsys, url, home, "search", "cats")
    assert code == 2 and "memory.embedder: must be one of 'none', 'static', 'minilm' or 'asymmetric', got 'bert'" in err
    (tmp_path / "tether.toml").write_text('[memory]\nembedder = "static"\n')
    monkeypatch.setenv("TETHER_MINILM_DIR", str(tmp_path / "no-model"))  # as on a host without the model
    code, _, err = await cli(capsys, url, home, "write", "team:notes", "kept?")
    assert code == 2 and 'embedder = "static"' in err and 'set embedder = "none"' in err

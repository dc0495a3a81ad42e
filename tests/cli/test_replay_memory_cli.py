"""`tether replay memory` (and `tether replay`) rebuild the memory view from the log, run as users run them."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from tether.bus import connect
from tether.memory import AsyncMemory, HashEmbedder, MemorySettings, MemoryStore, MemoryView
from tether.testing import NatsServer

from .test_cli import run_tether

pytestmark = [pytest.mark.anyio, pytest.mark.nats]

VIEW_FILE = f"memory.v{MemoryView.version}.db"

SECRET = "Dana's locker code is 4711-quokka"


def settings(home: Path, view_dir: Path | None = None) -> MemorySettings:
    return MemorySettings(view_dir=view_dir or home / "memory", keyfile=home / "keys" / "memory-keys.json")


def checksum(directory: Path, home: Path) -> str:
    from tether.memory import FileKeyStore

    store = MemoryStore(MemoryView(FileKeyStore(home / "keys" / "memory-keys.json")), directory / VIEW_FILE)
    try:
        return store.checksum()
    finally:
        store.close()


async def write_memories(url: str, home: Path) -> None:
    """Versions, a delete, a compaction, vectors, and an erased namespace."""
    async with await connect(url, home=home) as bus:
        memory = await AsyncMemory(bus, agent="bot", settings=settings(home), embedder=HashEmbedder()).start()
        try:
            await memory.write("user:bob", "Bob prefers tea over coffee", key="drink", metadata={"topic": "food"})
            await memory.write("user:bob", "Bob now prefers green tea", key="drink", metadata={"topic": "food"})
            await memory.write("user:bob", "Bob lives in Lisbon", key="city")
            await memory.write("user:bob", "Bob's old phone number", key="phone")
            await memory.delete("user:bob", "phone")
            await memory.write_many([{"text": f"Team note {i}: deploys happen on Tuesdays, batch {i}"}
                                     for i in range(6)], namespace="team:ops")
            await memory.compact("team:ops", token_budget=30)
            await memory.write("user:dana", SECRET, key="locker")
            await memory.erase("user:dana")
            await memory.catch_up()
        finally:
            await memory.close()


async def test_replay_memory_rebuilds_the_view_identical_to_a_fresh_fold(fresh_nats_server: NatsServer,
                                                                        tether_home: Path) -> None:
    url = fresh_nats_server.url
    await write_memories(url, tether_home)
    view_dir = tether_home / "memory"
    live = checksum(view_dir, tether_home)

    # A fresh fold, by a client leading an empty directory.
    async with await connect(url, home=tether_home) as bus:
        fresh = await AsyncMemory(bus, settings=settings(tether_home, tether_home / "fresh")).start()
        await fresh.catch_up()
        await fresh.close()
    assert checksum(tether_home / "fresh", tether_home) == live

    # Corrupt the view, then replay it.
    (view_dir / VIEW_FILE).write_bytes(b"not a database" * 100)
    for suffix in ("-wal", "-shm"):
        (view_dir / f"{VIEW_FILE}{suffix}").unlink(missing_ok=True)
    code, out, err = await run_tether("replay", "memory", "--url", url, "--json", home=tether_home, timeout=60)
    assert code == 0, err
    doc = json.loads(out)
    assert list(doc["views"]) == ["memory"] and doc["memory"] == {"directory": str(view_dir), "failed": 0}
    db = sqlite3.connect(f"file:{view_dir / VIEW_FILE}?mode=ro", uri=True)
    try:  # the replay built the full-text index itself, as the live view has it
        assert db.execute("SELECT count(*) FROM versions_fts WHERE versions_fts MATCH 'lisbon'").fetchone() == (1,)
    finally:
        db.close()
    assert doc["views"]["memory"] == live == checksum(view_dir, tether_home)

    # Read back through the CLI: current versions, history, search (FTS index rebuilt too), erasure kept.
    code, out, err = await run_tether("memory", "get", "user:bob", "drink", "--url", url, "--json",
                                      home=tether_home, timeout=30)
    assert code == 0, err
    entry = json.loads(out)
    assert (entry["text"], entry["version"], entry["metadata"]) == ("Bob now prefers green tea", 2, {"topic": "food"})
    code, out, err = await run_tether("memory", "search", "Lisbon", "--url", url, "--json", home=tether_home,
                                      timeout=30)
    assert code == 0 and [h["entry"]["key"] for h in json.loads(out)] == ["city"], err
    code, _, err = await run_tether("memory", "get", "user:dana", "locker", "--url", url, home=tether_home,
                                    timeout=30)
    assert code == 1 and "user:dana" in err
    raw = b"".join(p.read_bytes() for p in view_dir.glob(f"{VIEW_FILE}*"))
    assert b"quokka" not in raw and b"Bob lives in Lisbon" in raw

    # `tether replay` without a view name rebuilds memory too (here from nothing at all).
    shutil.rmtree(view_dir)
    code, out, err = await run_tether("replay", "--url", url, "--processes", "0", home=tether_home, timeout=90)
    assert code == 0, err
    assert "replaying memory into" in err and "rebuilt 6 view(s)" in err
    assert checksum(view_dir, tether_home) == live


async def test_replay_memory_refuses_without_the_keystore_or_while_a_client_leads(fresh_nats_server: NatsServer,
                                                                                   tether_home: Path) -> None:
    url = fresh_nats_server.url
    await write_memories(url, tether_home)
    view_dir = tether_home / "memory"
    live = checksum(view_dir, tether_home)
    keyfile = tether_home / "keys" / "memory-keys.json"

    keyfile.rename(keyfile.with_suffix(".moved"))
    code, _, err = await run_tether("replay", "memory", "--url", url, home=tether_home, timeout=60)
    assert code == 2 and "there is no keystore at" in err and "--home" in err
    keyfile.with_suffix(".moved").rename(keyfile)
    assert checksum(view_dir, tether_home) == live  # nothing was replaced

    async with await connect(url, home=tether_home) as bus:
        leader = await AsyncMemory(bus, settings=settings(tether_home)).start()
        try:
            assert leader.feed.leading
            code, _, err = await run_tether("replay", "memory", "--url", url, home=tether_home, timeout=60)
            assert code == 1 and "a process using memory keeps the view in" in err and "--out" in err
            code, _, err = await run_tether("replay", "--url", url, "--processes", "0", home=tether_home, timeout=60)
            assert code == 1 and "tether replay traces cost errors metrics" in err
            assert not (tether_home / "views").exists(), "all or nothing: no other view was rebuilt"
        finally:
            await leader.close()

    code, _, err = await run_tether("replay", "memroy", "--url", url, home=tether_home, timeout=30)
    assert code == 2 and "unknown view(s) memroy; views are traces, cost, errors, metrics, eval, memory" in err

"""Erasure: destroyed keys keep erased content out of every view, including one rebuilt by replay."""

from __future__ import annotations

from pathlib import Path

import pytest

from tether.bus import EVENTS_STREAM
from tether.memory import AsyncMemory, FileKeyStore, InvalidMemory, MemoryNotFound, MemorySettings, MemoryView
from tether.projections import replay, view_path

from .conftest import Opener, settings_for

pytestmark = [pytest.mark.anyio, pytest.mark.nats]

SECRETS = ["Dana's passport number is X1234567", "Dana was diagnosed with tinnitus in March",
           "Dana lives at 42 Wallaby Way"]


def files_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in directory.rglob("*") if p.is_file())


async def raw_stream(memory: AsyncMemory) -> bytes:
    """Every message of the EVENTS stream, headers and data, as stored."""
    info = await memory.bus.js.stream_info(EVENTS_STREAM)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await memory.bus.js.get_msg(EVENTS_STREAM, seq)
        out.append(repr(msg.headers).encode() + (msg.data or b""))
    return b"\n".join(out)


async def test_erased_content_is_gone_from_the_live_view_a_replay_and_the_stream(open_memory: Opener, home: Path,
                                                                                 tmp_path: Path) -> None:
    memory = await open_memory(agent="bot")
    for i, text in enumerate(SECRETS):
        await memory.write("user:dana", text, key=f"fact{i}", metadata={"about": "dana-private-meta"})
    await memory.write("user:dana", "Dana's passport number is X7654321", key="fact0")  # a second version
    await memory.delete("user:dana", "fact2")
    await memory.write("user:eve", "Eve likes sailing", key="hobby")
    assert len(await memory.search("Dana")) == 2

    erased = await memory.erase("user:dana")
    assert erased.keys_destroyed == ("user:dana#1",)
    with pytest.raises(MemoryNotFound):
        await memory.get("user:dana", "fact1")
    with pytest.raises(MemoryNotFound, match="never written, or erased"):
        await memory.history("user:dana", "fact0")
    assert await memory.search("passport tinnitus Wallaby") == []
    assert (await memory.get("user:eve", "hobby")).text == "Eve likes sailing"  # other namespaces untouched

    # The raw log never held the plaintext: it holds ciphertext whose key is gone.
    stream = await raw_stream(memory)
    for needle in (b"passport", b"X1234567", b"tinnitus", b"Wallaby", b"dana-private-meta", b"sailing"):
        assert needle not in stream
    assert b"user:dana" in stream  # routing ids are not secret (and are documented as such)

    # The live view file (with its WAL and FTS index) no longer holds it either.
    live = files_bytes(home / "memory")
    for needle in (b"passport", b"X1234567", b"tinnitus", b"Wallaby", b"dana-private-meta"):
        assert needle not in live
    assert b"sailing" in live

    # A full replay into a fresh directory brings none of it back.
    rebuilt = tmp_path / "rebuilt"
    keys = FileKeyStore(settings_for(home).keyfile)
    await replay(memory.bus, [MemoryView(keys)], rebuilt)
    data = files_bytes(rebuilt)
    for needle in (b"passport", b"X1234567", b"tinnitus", b"Wallaby", b"dana-private-meta"):
        assert needle not in data
    assert b"sailing" in data
    import sqlite3

    db = sqlite3.connect(view_path(rebuilt, "memory", MemoryView.version))
    assert db.execute("SELECT count(*) FROM versions WHERE namespace = 'user:dana'").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM versions WHERE namespace = 'user:eve'").fetchone() == (1,)
    db.close()

    # The namespace lives on with a new key; old content stays unreadable.
    again = await memory.write("user:dana", "Dana asked to be remembered again", key="fact0")
    assert again.version == 1
    assert [v.text for v in await memory.history("user:dana", "fact0")] == ["Dana asked to be remembered again"]


async def test_erase_is_seen_by_other_processes_views(open_memory: Opener) -> None:
    a = await open_memory(agent="a")
    b = await open_memory(agent="b")
    await a.write("user:zed", "zed's secret code is 9981", key="code")
    assert (await b.get("user:zed", "code", after=a.position)).text.endswith("9981")
    await b.erase("user:zed")
    with pytest.raises(MemoryNotFound):
        await a.get("user:zed", "code", after=b.position)


async def test_erasing_one_entry_removes_it_from_history_the_view_a_replay_and_the_log(
        open_memory: Opener, home: Path, tmp_path: Path) -> None:
    memory = await open_memory(agent="bot")
    await memory.write("user:dana", "Dana's passport number is X1234567", key="passport")
    await memory.write("user:dana", "Dana's passport number is X7654321", key="passport")  # a second version
    await memory.write("user:dana", "Dana likes sailing on Sundays", key="hobby")
    await memory.write("user:dana", "Dana's cat is called Miso", key="cat")
    await memory.delete("user:dana", "cat")
    assert len(await memory.history("user:dana", "passport")) == 2

    erased = await memory.erase("user:dana", "passport")
    assert erased.key == "passport" and erased.keys_destroyed == ("user:dana#1",)
    with pytest.raises(MemoryNotFound, match="never written, or erased"):
        await memory.history("user:dana", "passport")
    with pytest.raises(MemoryNotFound):
        await memory.get("user:dana", "passport")
    assert await memory.search("passport X1234567") == []
    # the rest of the namespace is as it was, its history included
    assert (await memory.get("user:dana", "hobby")).text == "Dana likes sailing on Sundays"
    assert [v.text for v in await memory.history("user:dana", "cat")] == ["Dana's cat is called Miso", None]
    live = files_bytes(home / "memory")
    assert b"X1234567" not in live and b"X7654321" not in live and b"sailing" in live

    # the writes after it use a new generation, and are readable like the others
    later = await memory.write("user:dana", "Dana moved to Lyon", key="city")
    assert (await memory.get("user:dana", "city", after=later.seq)).text == "Dana moved to Lyon"

    stream = await raw_stream(memory)
    assert b"X1234567" not in stream and b"sailing" not in stream

    rebuilt = tmp_path / "rebuilt"
    await replay(memory.bus, [MemoryView(FileKeyStore(settings_for(home).keyfile))], rebuilt)
    data = files_bytes(rebuilt)
    assert b"X1234567" not in data and b"X7654321" not in data
    for needle in (b"sailing", b"Miso", b"Lyon"):
        assert needle in data
    import sqlite3

    db = sqlite3.connect(view_path(rebuilt, "memory", MemoryView.version))
    assert db.execute("SELECT count(*) FROM versions WHERE key = 'passport'").fetchone() == (0,)
    db.close()

    # a new process (its own view, rebuilt from the log) agrees
    other = await open_memory(agent="bot", settings=MemorySettings(view_dir=tmp_path / "other-view",
                                                                         keyfile=settings_for(home).keyfile))
    with pytest.raises(MemoryNotFound):
        await other.history("user:dana", "passport", after=later.seq)
    assert (await other.get("user:dana", "hobby")).text == "Dana likes sailing on Sundays"

    # erasing the whole namespace afterwards still destroys what is left
    gone = await memory.erase("user:dana")
    assert "user:dana#2" in gone.keys_destroyed
    with pytest.raises(MemoryNotFound):
        await memory.get("user:dana", "hobby")


async def test_erasing_one_entry_refuses_versions_sealed_under_the_namespace_key(open_memory: Opener) -> None:
    """An entry written before per-entry keys cannot be erased alone: a clear error, nothing destroyed."""
    from tether.memory._codec import seal_entry
    from tether.schemas import Event, MemoryWritten

    memory = await open_memory(agent="bot")
    key_id, namespace_key = memory.keys.current("user:old")
    from tether.memory._keys import content_hash, seal

    body = b'{"t":"an old secret","m":{}}'
    legacy = MemoryWritten(namespace="user:old", key="k", version=1, key_id=key_id,
                           text=seal(namespace_key, "user:old", "k", body),
                           content_hash=content_hash(namespace_key, "an old secret"))
    receipt = await memory.bus.publish(Event.of(legacy, agentid="bot", source="test"))
    assert (await memory.get("user:old", "k", after=receipt.stream_seq)).text == "an old secret"
    fields = seal_entry(memory.keys, "user:old", "new", "a new one", {}, None)
    assert fields["key_id"] == key_id + "/entry"
    with pytest.raises(InvalidMemory, match=r"sealed under the namespace key.*erase\('user:old'\)"):
        await memory.erase("user:old", "k")
    assert (await memory.get("user:old", "k")).text == "an old secret"  # nothing was destroyed
    with pytest.raises(InvalidMemory, match="reserved"):
        await memory.erase("user:old", "*")

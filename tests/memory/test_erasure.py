"""Erasure: destroyed keys keep erased content out of every view, including one rebuilt by replay."""

from __future__ import annotations

from pathlib import Path

import pytest

from tether.bus import EVENTS_STREAM
from tether.memory import AsyncMemory, FileKeyStore, MemoryNotFound, MemoryView
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

"""Valid time: a write says when its fact became true; supersession, "now" answers and valid-time
searches follow it, while as-of reads by log position stay what the log held (bitemporal)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from tether.memory import FileKeyStore, InvalidMemory, MemorySettings, MemoryView
from tether.projections import replay

from .conftest import Opener, settings_for

pytestmark = [pytest.mark.anyio, pytest.mark.nats]

MAY = datetime(2026, 5, 1, tzinfo=UTC)
OLD = datetime(2024, 1, 1, tzinfo=UTC)


async def test_an_older_fact_imported_later_is_history_not_the_current_version(open_memory: Opener, home: Path,
                                                                               tmp_path: Path) -> None:
    memory = await open_memory(agent="bot")
    moved = await memory.write("user:lea", "Lea moved to Oslo in May 2026.", key="city", valid_from=MAY)
    imported = await memory.write("user:lea", "Lea lives in Rome.", key="city", valid_from=OLD,
                                  observed_at=datetime(2026, 11, 20, tzinfo=UTC))
    assert imported.version == 2

    now = await memory.get("user:lea", "city")
    assert now.text == "Lea moved to Oslo in May 2026." and now.valid_from == MAY
    versions = await memory.history("user:lea", "city")
    assert [v.text for v in versions] == ["Lea moved to Oslo in May 2026.", "Lea lives in Rome."]
    hits = await memory.search("Where does Lea live now?", valid_at="query")
    assert [h.entry.text for h in hits] == ["Lea moved to Oslo in May 2026."]
    # valid time: what was true before May
    before = await memory.search("Where did Lea live before May?", valid_at="query")
    assert [h.entry.text for h in before] == ["Lea lives in Rome."]
    assert before[0].entry.valid_from == OLD and before[0].entry.observed_at == datetime(2026, 11, 20, tzinfo=UTC)
    at = await memory.search("Lea", valid_at=datetime(2025, 6, 1, tzinfo=UTC))
    assert [h.entry.text for h in at] == ["Lea lives in Rome."]
    # transaction time is untouched: as of a log position, the entry is what was last written by then
    assert (await memory.get("user:lea", "city", as_of=moved.seq)).text == "Lea moved to Oslo in May 2026."
    assert (await memory.get("user:lea", "city", as_of=imported.seq)).text == "Lea lives in Rome."

    # a later fact supersedes, with or without a valid time of its own
    await memory.write("user:lea", "Lea lives in Bergen now.", key="city")
    assert (await memory.get("user:lea", "city")).text == "Lea lives in Bergen now."

    # a replay folds the same decisions (they are in the events)
    rebuilt = tmp_path / "rebuilt"
    keyfile = settings_for(home).keyfile
    await replay(memory.bus, [MemoryView(FileKeyStore(keyfile))], rebuilt)
    other = await open_memory(agent="bot", settings=MemorySettings(view_dir=rebuilt, keyfile=keyfile))
    assert (await other.get("user:lea", "city")).text == "Lea lives in Bergen now."


async def test_bulk_writes_follow_valid_time_within_the_batch(open_memory: Opener) -> None:
    memory = await open_memory(agent="bot")
    done = await memory.write_many([
        {"namespace": "team:a", "key": "release", "text": "Atlas 3.1 shipped.", "valid_from": "2026-06-10"},
        {"namespace": "team:a", "key": "release", "text": "Atlas 2.4 shipped.", "valid_from": "2026-03-10"},
    ])
    entry = await memory.get("team:a", "release", after=done.seq)
    assert entry.text == "Atlas 3.1 shipped." and entry.version == 2


async def test_a_bad_valid_time_is_refused_and_nothing_is_written(open_memory: Opener) -> None:
    memory = await open_memory(agent="bot")
    with pytest.raises(InvalidMemory, match=r"valid_from 'last spring' is not an ISO 8601 time"):
        await memory.write("user:lea", "x", key="k", valid_from="last spring")  # type: ignore[arg-type]
    with pytest.raises(InvalidMemory, match="observed_at must be a datetime or ISO 8601 text, got int"):
        await memory.write("user:lea", "x", key="k", observed_at=5)  # type: ignore[arg-type]
    with pytest.raises(InvalidMemory, match="valid_at must be a datetime, 'query' or None"):
        await memory.search("x", valid_at="yesterday")  # type: ignore[arg-type]
    assert memory.position == 0


async def test_a_client_opened_after_a_write_sees_it_before_its_first_read_or_write(open_memory: Opener,
                                                                                   home: Path) -> None:
    """A new process (here: a client with a view of its own, as on another machine or after the
    first process closed before its view applied the write) numbers its write after the versions
    already in the log and decides supersession against them. Seen flaky from the CLI, where each
    command is a new client: the second write was numbered 1 again and became current."""
    first = await open_memory(agent="bot")
    await first.write_many([{"text": f"filler {i}", "key": f"f{i}"} for i in range(300)], namespace="user:lea")
    await first.write("user:lea", "Lea moved to Oslo in May 2026.", key="city", valid_from=MAY)
    view_elsewhere = MemorySettings(view_dir=home / "another-view", keyfile=settings_for(home).keyfile)
    second = await open_memory(agent="bot", settings=view_elsewhere)
    imported = await second.write("user:lea", "Lea lives in Rome.", key="city", valid_from=OLD)
    assert imported.version == 2
    assert (await second.get("user:lea", "city")).text == "Lea moved to Oslo in May 2026."

"""``AsyncMemory.entries``: a namespace's live entries now or as of a point in the log, by key, paged;
grants and bad input checked like every read."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tether.memory import AsyncMemory, Grant, Grants, InvalidMemory, MemoryAccessDenied

from .conftest import Opener

pytestmark = [pytest.mark.anyio, pytest.mark.nats]


async def test_entries_now_and_as_of(memory: AsyncMemory) -> None:
    first = await memory.write("team:docs", "the office opens at nine", key="hours")
    await memory.write("team:docs", "lunch is at noon", key="lunch")
    await memory.write("team:docs", "the office opens at ten", key="hours")
    gone = await memory.delete("team:docs", "lunch")
    await memory.write("team:other", "elsewhere", key="hours")

    now = await memory.entries("team:docs")
    assert [(e.key, e.version, e.text) for e in now] == [("hours", 2, "the office opens at ten")]
    then = await memory.entries("team:docs", as_of=first.seq)
    assert [(e.key, e.text) for e in then] == [("hours", "the office opens at nine")]
    before_delete = await memory.entries("team:docs", as_of=(gone.seq or 0) - 1)
    assert [(e.key, e.text) for e in before_delete] == [("hours", "the office opens at ten"),
                                                       ("lunch", "lunch is at noon")]
    assert await memory.entries("team:docs", as_of=0) == []
    assert await memory.entries("team:nothing") == []


async def test_entries_as_of_a_time(memory: AsyncMemory) -> None:
    await memory.write("team:docs", "first", key="a")
    a = await memory.get("team:docs", "a")
    await memory.write("team:docs", "second", key="b")
    assert a.updated_at is not None
    assert [e.key for e in await memory.entries("team:docs", as_of=a.updated_at)] == ["a"]
    assert [e.key for e in await memory.entries("team:docs", as_of=a.updated_at - timedelta(days=1))] == []


async def test_entries_page_by_key_and_skip_what_is_not_live(memory: AsyncMemory) -> None:
    for i in range(7):
        await memory.write("team:docs", f"note {i}", key=f"k{i}")
    await memory.delete("team:docs", "k1")
    await memory.write("team:docs", "short-lived", key="k8", ttl=timedelta(seconds=0.01))
    await memory.catch_up()
    import asyncio

    await asyncio.sleep(0.05)
    page = await memory.entries("team:docs", limit=3)
    assert [e.key for e in page] == ["k0", "k2", "k3"], "k1 deleted: the page still has 3"
    rest = await memory.entries("team:docs", limit=3, after_key=page[-1].key)
    assert [e.key for e in rest] == ["k4", "k5", "k6"], "k8 expired"
    assert await memory.entries("team:docs", limit=3, after_key="k6") == []


async def test_entries_leave_out_what_a_compaction_replaced_unless_asked(memory: AsyncMemory) -> None:
    from .test_compaction_and_models import FACTS as facts

    for i, fact in enumerate(facts):
        last = await memory.write("user:priya", fact, key=f"f{i}")
    done = await memory.compact("user:priya", 80)
    assert done is not None and done.seq is not None
    summary = await memory.get("user:priya", done.key)
    replaced = {r.split("@")[0] for r in summary.replaced}
    now = {e.key for e in await memory.entries("user:priya")}
    assert done.key in now and not now & replaced
    everything = {e.key: e.status for e in await memory.entries("user:priya", include_compacted=True)}
    assert {k for k, s in everything.items() if s == "compacted"} == replaced
    assert {e.key for e in await memory.entries("user:priya", as_of=done.seq)} == now
    assert replaced <= {e.key for e in await memory.entries("user:priya", as_of=done.seq, include_compacted=True)}
    before = {e.key for e in await memory.entries("user:priya", as_of=last.seq)}
    assert before == {f"f{i}" for i in range(len(facts))}, "before the compaction, nothing was replaced"


async def test_entries_need_read_grants(open_memory: Opener) -> None:
    grants = Grants({"bot": Grant(read=("team:docs",), write=("team:docs", "team:secret"))})
    bot = await open_memory(agent="bot", grants=grants)
    await bot.write("team:secret", "not for reading", key="s")
    with pytest.raises(MemoryAccessDenied):
        await bot.entries("team:secret")
    with pytest.raises(MemoryAccessDenied):
        await bot.entries("team:secret", as_of=1)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"limit": 0}, "limit must be an int from 1 to 1000"), ({"limit": 1001}, "limit must be"),
    ({"limit": True}, "limit must be"), ({"as_of": -1}, "as_of must be a stream sequence"),
    ({"after_key": ""}, "key"),
])
async def test_entries_refuse_bad_input(memory: AsyncMemory, kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidMemory, match=match):
        await memory.entries("team:docs", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(InvalidMemory, match="namespace"):
        await memory.entries("not a namespace")

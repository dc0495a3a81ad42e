"""A run's record read ahead (``SpendBook.snapshot``) saves a round trip, never a count."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tether.bus import connect
from tether.middleware._shared import SpendBook
from tether.schemas import uuid7
from tether.testing import NatsServer

pytestmark = [pytest.mark.anyio, pytest.mark.nats]


def bump(doc: dict[str, Any]) -> int:
    doc["calls"] = int(doc.get("calls", 0)) + 1
    return int(doc["calls"])


async def test_updates_count_once_whether_the_snapshot_is_fresh_stale_or_absent(
        nats_server: NatsServer, tmp_path: Path) -> None:
    async with await connect(nats_server.url, home=tmp_path / "home") as bus:
        book, other = await SpendBook.open(bus), await SpendBook.open(bus)
        run = f"r-{uuid7()}"
        assert await book.snapshot("run", run) == (None, None)
        assert await book.update("run", run, bump, snapshot=await book.snapshot("run", run)) == 1  # fresh, new key

        fresh = await book.snapshot("run", run)
        assert await book.update("run", run, bump, snapshot=fresh) == 2

        stale = await book.snapshot("run", run)
        assert await other.update("run", run, bump) == 3  # another worker wrote in between
        assert await book.update("run", run, bump, snapshot=stale) == 4  # the stale read costs a retry only
        assert await book.update("run", run, bump, snapshot=(None, None)) == 5  # "no key" was stale too
        assert (await book.get("run", run))["calls"] == 5


async def test_a_decision_to_write_nothing_is_taken_on_a_fresh_read(nats_server: NatsServer,
                                                                    tmp_path: Path) -> None:
    """What this process wrote last stands in for a read; a refusal must not rest on it, or a
    reservation another worker released since would still refuse calls."""
    from tether.middleware import BudgetLimits, Spend, check_budget
    from tether.middleware._holds import Hold, release, reserve

    def one_call_budget(call_id: str) -> Any:
        def fn(doc: dict[str, Any]) -> Any:
            return reserve(doc, call_id, Hold(1.0, 0, 4e9), now=1.0, check=lambda held: check_budget(
                "agent", "bot", BudgetLimits(usd=1.0), Spend(), est_usd=1.0, est_tokens=0, reserved=held))
        return fn

    async with await connect(nats_server.url, home=tmp_path / "home") as bus:
        book, other = await SpendBook.open(bus), await SpendBook.open(bus)
        agent = f"a-{uuid7()}"
        assert await book.update("agent", agent, one_call_budget("c1")) is None  # this process remembers c1's hold
        await other.update("agent", agent, lambda doc: release(doc, "c1", now=1.0))  # another worker released it
        assert await book.update("agent", agent, one_call_budget("c2")) is None, "refused on a stale value"
        assert list((await book.get("agent", agent))["holds"]) == ["c2"]


async def test_buckets_are_read_with_direct_gets_and_old_ones_are_upgraded(nats_server: NatsServer,
                                                                          tmp_path: Path) -> None:
    from nats.js.api import KeyValueConfig, StorageType

    from tether.middleware._shared import open_bucket

    async with await connect(nats_server.url, home=tmp_path / "home") as bus:
        name = f"test-direct-{uuid7().replace('-', '')[:12]}"
        made = await open_bucket(bus.js, name)
        assert made._direct
        await made.put("k", b"v1")
        assert (await made.get("k")).value == b"v1"
        old = f"test-old-{uuid7().replace('-', '')[:12]}"  # as an earlier version made them
        await bus.js.create_key_value(KeyValueConfig(bucket=old, history=1, storage=StorageType.FILE))
        assert not (await bus.js.key_value(old))._direct
        await (await bus.js.key_value(old)).put("k", b"kept")
        upgraded = await open_bucket(bus.js, old)
        assert upgraded._direct and (await upgraded.get("k")).value == b"kept"
        assert (await bus.js.stream_info(f"KV_{old}")).config.allow_direct
        for bucket in (name, old):
            await bus.js.delete_key_value(bucket)


async def test_what_a_worker_wrote_last_stands_in_for_a_read_and_other_writers_still_count(
        nats_server: NatsServer, tmp_path: Path) -> None:
    """Each book remembers its own last write to a key; two workers interleaving updates
    (each one's memory stale half the time) still count every call exactly once."""
    import asyncio

    async with await connect(nats_server.url, home=tmp_path / "home") as bus:
        book, other = await SpendBook.open(bus), await SpendBook.open(bus)
        run = f"r-{uuid7()}"
        for _ in range(3):
            await book.update("run", run, bump)
        assert await book.update("run", run, bump) == 4  # from its own memory, no read first
        assert book.known  # it remembers the key
        results = await asyncio.gather(*(b.update("run", run, bump) for _ in range(20) for b in (book, other)))
        assert sorted(results) == list(range(5, 45))  # every update counted once, none lost
        assert (await other.get("run", run))["calls"] == 44
        stale = await book.snapshot("run", run)
        assert await other.update("run", run, bump) == 45
        assert await book.update("run", run, bump, snapshot=stale) == 46

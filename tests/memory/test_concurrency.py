"""Conflicting writers: with expected_version exactly one of them wins, in-process and across processes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tether.memory import AsyncMemory, MemoryNotFound, VersionConflict
from tether.testing import NatsServer

from .conftest import Opener

pytestmark = [pytest.mark.anyio, pytest.mark.nats]


async def test_stale_expected_version_is_a_clear_conflict(memory: AsyncMemory) -> None:
    await memory.write("agent:bot", "v1", key="doc")
    await memory.write("agent:bot", "v2", key="doc", expected_version=1)
    with pytest.raises(VersionConflict, match=r"expected version 1, but the entry is at version 2") as info:
        await memory.write("agent:bot", "lost update", key="doc", expected_version=1)
    assert (info.value.expected, info.value.actual) == (1, 2)
    with pytest.raises(VersionConflict, match="does not exist"):
        await memory.write("agent:bot", "x", key="fresh", expected_version=3)
    created = await memory.write("agent:bot", "created", key="fresh", expected_version=0)
    assert created.version == 1
    with pytest.raises(VersionConflict):
        await memory.write("agent:bot", "again", key="fresh", expected_version=0)
    with pytest.raises(VersionConflict):
        await memory.delete("agent:bot", "fresh", expected_version=2)
    assert [v.text for v in await memory.history("agent:bot", "doc")] == ["v1", "v2"]


async def test_racing_clients_exactly_one_wins_each_round(open_memory: Opener) -> None:
    a = await open_memory(agent="a")
    b = await open_memory(agent="b")  # follows a's view: the racers see different view states
    await a.write("global", "round 0", key="race")
    for round_ in range(1, 16):
        results = await asyncio.gather(
            a.write("global", f"a wins round {round_}", key="race", expected_version=round_),
            b.write("global", f"b wins round {round_}", key="race", expected_version=round_),
            return_exceptions=True)
        conflicts = [r for r in results if isinstance(r, VersionConflict)]
        wins = [r for r in results if not isinstance(r, BaseException)]
        assert len(wins) == 1 and len(conflicts) == 1, results
        assert wins[0].version == round_ + 1
    history = await a.history("global", "race")
    assert [v.version for v in history] == list(range(1, 17))


async def test_a_write_to_another_key_is_a_retry_not_a_conflict(open_memory: Opener) -> None:
    a = await open_memory(agent="a")
    b = await open_memory(agent="b")
    await a.write("global", "mine", key="x")
    for i in range(10):  # b keeps changing the namespace under a's conditional writes
        await asyncio.gather(a.write("global", f"x{i}", key="x", expected_version=i + 1),
                             b.write("global", f"y{i}", key=f"y{i}"))
    assert (await a.get("global", "x")).version == 11


RACER = textwrap.dedent("""
    import asyncio, json, sys, time
    import tether.memory

    async def main(name, rounds):
        memory = await tether.memory.connect(agent=name)
        print("ready", flush=True)  # a barrier: the rounds start at a time given once both are connected
        start_at = float(await asyncio.to_thread(sys.stdin.readline))
        wins = conflicts = 0
        try:
            for r in range(rounds):
                await memory.catch_up()
                version = (await memory.get("team:race", "doc")).version
                delay = start_at + r * 0.15 - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                try:
                    await memory.write("team:race", f"{name} round {r}", key="doc", expected_version=version)
                    wins += 1
                except tether.memory.VersionConflict:
                    conflicts += 1
        finally:
            await memory.close()
        print(json.dumps({"wins": wins, "conflicts": conflicts}))

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
""")


def test_racing_processes_lose_no_update(fresh_nats_server: NatsServer, home: Path, tmp_path: Path) -> None:
    """Two processes sharing one TETHER_HOME (one leads the view, one follows) race on one key in rounds."""
    script = tmp_path / "racer.py"
    script.write_text(RACER)

    async def seed() -> None:
        from tether.memory import connect

        memory = await connect(fresh_nats_server.url, agent="seed")
        await memory.write("team:race", "round -1", key="doc")
        await memory.close()

    asyncio.run(seed())
    rounds = 12
    procs = []
    for name in ("p1", "p2"):
        env = {**os.environ, "TETHER_HOME": str(home), "TETHER_NATS_URL": fresh_nats_server.url}
        procs.append(subprocess.Popen([sys.executable, str(script), name, str(rounds)], env=env, stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for proc in procs:  # however slowly a loaded machine starts them, both are connected before round 0
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", proc.stderr
    start_at = time.time() + 0.5
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(f"{start_at}\n")
        proc.stdin.flush()
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        outs.append(json.loads(out))
    wins = sum(o["wins"] for o in outs)
    conflicts = sum(o["conflicts"] for o in outs)
    assert wins + conflicts == 2 * rounds
    assert conflicts >= 1  # they did collide

    async def check() -> None:
        from tether.memory import connect

        memory = await connect(fresh_nats_server.url, agent="check")
        await memory.catch_up()
        history = await memory.history("team:race", "doc")
        await memory.close()
        assert [v.version for v in history] == list(range(1, wins + 2))  # every win is a version; none lost
        assert len({v.text for v in history}) == len(history)

    asyncio.run(check())


async def test_a_view_of_some_namespaces_merges_them_in_log_order_and_resumes(open_memory: Opener,
                                                                             home: Path) -> None:
    """``namespaces=``: one consumer per namespace, applied in log order up to a barrier. Writes
    to two followed namespaces and one other, interleaved, while the view runs and while it is
    closed: it holds every entry of the two (each key's last version) and none of the third,
    also after reopening from its checkpoint; its files are apart from the whole view's."""
    writer = await open_memory(agent="writer")

    async def interleave(round_: int) -> int:
        seq = 0
        for i in range(6):
            for ns in ("team:a", "team:b", "team:c"):
                seq = (await writer.write(ns, f"{ns} note {i} round {round_}", key=f"k{i}")).seq or 0
        return seq

    await interleave(0)
    scoped = await open_memory(agent="reader", namespaces=["team:a", "team:b"])
    last = await interleave(1)
    for ns in ("team:a", "team:b"):
        for i in range(6):
            assert (await scoped.get(ns, f"k{i}", after=last)).text == f"{ns} note {i} round 1"
    with pytest.raises(MemoryNotFound):
        await scoped.get("team:c", "k0")
    directory = scoped.feed.directory
    await scoped.close()
    last = await interleave(2)
    again = await open_memory(agent="reader", namespaces=["team:b", "team:a"])
    assert again.feed.directory == directory and directory.parent == home / "memory"
    await again.wait_for(last)
    assert [(await again.get("team:a", f"k{i}")).version for i in range(6)] == [3] * 6
    assert (await again.get("team:b", "k5")).text == "team:b note 5 round 2"
    with pytest.raises(MemoryNotFound):
        await again.get("team:c", "k5")

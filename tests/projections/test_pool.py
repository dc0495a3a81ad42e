"""Views folded in child processes: the same views as one projector, live and rebuilt, and a
child that dies comes back from its checkpoints. Real nats-server, real processes."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from tether.bus import connect, encode_binary
from tether.cli._projector import default_views
from tether.projections import (
    Projector,
    ProjectorBusy,
    ProjectorPool,
    ViewStore,
    open_view,
    partition,
    replay,
)
from tether.projections.errors import ErrorsView
from tether.projections.ledger import CostLedger
from tether.projections.metrics import MetricsView
from tether.projections.traces import TracesView
from tether.schemas import Event, LlmCallCompleted, Usage
from tether.testing import NatsServer

from .test_runtime import publish_mix

pytestmark = [pytest.mark.anyio, pytest.mark.nats]


def _sums(directory: Path) -> dict[str, str]:
    out = {}
    for view in default_views():
        path = open_view(directory, view.name)
        assert path is not None, view.name
        store = ViewStore(view, path)
        try:
            out[view.name] = store.checksum()
        finally:
            store.close()
    return out


def test_partition_balances_by_weight() -> None:
    groups = partition([TracesView(), CostLedger(), ErrorsView(), MetricsView()], 2)
    assert [[v.name for v in g] for g in groups] == [["traces"], ["metrics", "cost", "errors"]]
    assert len(partition([TracesView()], 4)) == 1  # never more processes than views
    assert sum(len(g) for g in partition(default_views(), 3)) == 5


async def test_a_pool_gives_the_views_one_projector_gives(fresh_nats_server: NatsServer, tmp_path: Path) -> None:
    async with await connect(fresh_nats_server.url, home=tmp_path / "h") as bus:
        await publish_mix(bus, 1500, seed=21)
        # Bad input the view processes read differently: one skips memory writes unread, and
        # an event on another type's subject is refused wherever that subject's type is read.
        await bus.js.publish("tether.evt.a.r1.memory.written.ns", b"\x00 corrupt")
        completed = Event.of(LlmCallCompleted(call_id="c-x", provider="openai", model="gpt-4o",
                                              usage=Usage(input_tokens=5)), runid="run-1")
        headers, body = encode_binary(completed)
        await bus.js.publish("tether.evt.a.run-1.run.started._", body, headers=headers)
        await bus.publish(completed)
        async with Projector(bus, default_views(), tmp_path / "one", durable=None) as one:
            await one.catch_up(timeout=60)
        pool = await ProjectorPool(bus, default_views(), tmp_path / "pool", processes=2).start()
        try:
            assert sorted(pool.stores) == sorted(v.name for v in default_views())
            await pool.catch_up(timeout=60)
            with pytest.raises(ProjectorBusy):  # the parent holds the directory
                await Projector(bus, default_views(), tmp_path / "pool").start()
            await publish_mix(bus, 300, seed=22)  # live: more events while it runs
            head = await pool.catch_up(timeout=60)
            assert pool.applied_seq >= head and pool.lag() == 0
        finally:
            await pool.stop()
        async with Projector(bus, default_views(), tmp_path / "one", durable=None) as one:
            await one.catch_up(timeout=60)
        assert _sums(tmp_path / "pool") == _sums(tmp_path / "one")
        # a rebuild in processes gives the same checksums as a rebuild in one process
        side_by_side = await replay(bus, default_views(), tmp_path / "rebuilt2", processes=2)
        alone = await replay(bus, default_views(), tmp_path / "rebuilt1")
        assert side_by_side == alone == _sums(tmp_path / "one")
        durables = {c.name for c in await bus.js.consumers_info("EVENTS")}
        assert {"tether-projector-0", "tether-projector-1"} <= durables


async def test_a_killed_view_process_comes_back_from_its_checkpoints(fresh_nats_server: NatsServer,
                                                                     tmp_path: Path) -> None:
    async with await connect(fresh_nats_server.url, home=tmp_path / "h") as bus:
        await publish_mix(bus, 800, seed=31)
        pool = await ProjectorPool(bus, default_views(), tmp_path / "views", processes=2).start()
        try:
            await pool.catch_up(timeout=60)
            victim = pool._children[0]
            os.kill(victim.process.pid, signal.SIGKILL)
            await publish_mix(bus, 400, seed=32)
            async with asyncio.timeout(60):
                while victim.restarts == 0 or victim.conn is None:  # noqa: ASYNC110 (the supervisor restarts it)
                    await asyncio.sleep(0.1)
            await pool.catch_up(timeout=60)
        finally:
            await pool.stop()
        assert all(c.process.poll() is not None for c in pool._children)
        rebuilt = await replay(bus, default_views(), tmp_path / "rebuilt")
        assert _sums(tmp_path / "views") == rebuilt


async def test_a_view_process_whose_fold_dies_exits_and_is_started_again(fresh_nats_server: NatsServer,
                                                                        tmp_path: Path) -> None:
    from tether.schemas import Event, RunStarted

    from ._toy import Brittle

    async with await connect(fresh_nats_server.url, home=tmp_path / "h") as bus:
        await publish_mix(bus, 200, seed=51)
        pool = await ProjectorPool(bus, [Brittle()], tmp_path / "views", processes=1).start()
        try:
            await pool.catch_up(timeout=60)
            await bus.emit(Event.of(RunStarted(name="x"), runid="crash-the-fold", agentid="a"))
            await bus.flush()
            await publish_mix(bus, 100, seed=52)
            head = await pool.catch_up(timeout=60)  # the restarted process carries on past it
            [child] = pool._children
            assert child.restarts >= 1 and child.last_error is not None and "notifications broke" in child.last_error
            assert pool.applied_seq >= head
        finally:
            await pool.stop()

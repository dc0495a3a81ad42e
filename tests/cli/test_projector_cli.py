"""`tether projector` and `tether replay` with view processes, as a user runs them."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.projections.test_runtime import publish_mix
from tether.bus import connect
from tether.testing import NatsServer

from .test_cli import flat, run_tether, tether_child

pytestmark = [pytest.mark.anyio, pytest.mark.nats]


async def test_replay_in_processes_and_in_one_give_the_same_views(fresh_nats_server: NatsServer,
                                                                  tether_home: Path) -> None:
    async with await connect(fresh_nats_server.url, home=tether_home) as bus:
        await publish_mix(bus, 600, seed=41)
    url = fresh_nats_server.url
    code, out, err = await run_tether("replay", "--url", url, "--processes", "2", "--json",
                                      "--out", str(tether_home / "two"), home=tether_home, timeout=90)
    assert code == 0, err
    two = json.loads(out)
    assert sorted(two["views"]) == ["cost", "errors", "eval", "memory", "metrics", "traces"]  # memory: empty here
    code, out, err = await run_tether("replay", "--url", url, "--processes", "0", "--json",
                                      "--out", str(tether_home / "one"), home=tether_home, timeout=90)
    assert code == 0, err
    assert json.loads(out)["views"] == two["views"]
    code, _, err = await run_tether("replay", "traces", "--url", url, "--processes", "2",
                                    "--out", str(tether_home / "bar"), home=tether_home, timeout=90)
    assert code == 0 and "in 1 process(es)" in err  # one view: one process, whatever was asked
    assert "rebuilt 1 view(s)" in err


async def test_projector_runs_its_views_in_processes_and_stops_them(fresh_nats_server: NatsServer,
                                                                    tether_home: Path) -> None:
    async with await connect(fresh_nats_server.url, home=tether_home) as bus:
        await publish_mix(bus, 300, seed=42)
    async with tether_child("projector", "--url", fresh_nats_server.url, "--processes", "2",
                            home=tether_home) as child:
        line = await child.wait_for("projector running", timeout=60)
        assert "in 2 process(es): traces; metrics, cost, errors, eval" in line
        children = _view_processes(child.proc.pid)
        assert len(children) == 2
        child.proc.send_signal(signal.SIGINT)
        assert await child.finish(timeout=30) == 0
        assert "projector stopped." in child.output
    for pid in children:  # the view processes went with it
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def _view_processes(parent: int) -> list[int]:
    """The ``tether.projections._child`` processes whose parent is ``parent`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and b"tether.projections._child" in cmdline:
            found.append(int(stat.parent.name))
    return found


async def test_help_explains_processes(tether_home: Path) -> None:
    code, out, _ = await run_tether("projector", "--help", home=tether_home)
    assert code == 0
    assert "fold the views in N child processes" in flat(out) and "0 folds them in this process" in flat(out)

"""A real three-node JetStream cluster: what ``connect()`` provisions on it, and ``tether cluster``
as users run it (``up``, ``status``, ``down``), data and logs under ``TETHER_HOME``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from tether.bus import LocalCluster, connect, find_cluster
from tether.middleware import Executor
from tether.schemas import Event, RunStarted
from tether.testing import NatsCluster, NatsServer

pytestmark = [pytest.mark.anyio, pytest.mark.nats]

TETHER = (sys.executable, "-m", "tether")


def user_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env.update(NO_COLOR="1", PYTHONUNBUFFERED="1", **extra)
    return env


async def test_streams_buckets_and_object_store_get_three_replicas(nats_cluster: NatsCluster, tmp_path: Path) -> None:
    """With no ``replicas`` set, a bus on a cluster provisions everything at R3 (1 on one server)."""
    async with await connect(nats_cluster.url, home=tmp_path / "home") as bus:
        assert bus.config.replicas == 3
        async with Executor(bus, providers={}):  # opens the middleware's KV buckets
            pass
        receipt = await bus.publish(Event.of(RunStarted(), runid="r3", agentid="a"))
        assert receipt.stream_seq is not None and not receipt.outboxed
        infos = {si.config.name: si for si in await bus.js.streams_info()}
    expected = {"EVENTS", "WORK", "DLQ", "OBJ_tether-payloads", "KV_tether-calls", "KV_tether-breakers",
                "KV_tether-ratelimits", "KV_tether-spend"}
    assert expected <= set(infos), sorted(infos)
    for name in expected:
        si = infos[name]
        assert si.config.num_replicas == 3, (name, si.config.num_replicas)
        assert si.cluster is not None and si.cluster.leader in {"n1", "n2", "n3"}
        assert len(si.cluster.replicas or []) == 2, (name, si.cluster)


async def test_replicas_default_to_one_on_a_single_server(nats_server: NatsServer, tmp_path: Path) -> None:
    async with await connect(nats_server.url, home=tmp_path / "home") as bus:
        assert bus.config.replicas == 1


async def test_tether_nats_url_takes_every_node(nats_cluster: NatsCluster, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """``TETHER_NATS_URL=nats://a,nats://b,nats://c``: the client knows every node from the start."""
    monkeypatch.setenv("TETHER_NATS_URL", nats_cluster.url)
    async with await connect(home=tmp_path / "home") as bus:
        assert bus.url == nats_cluster.url
        assert sorted(str(s.uri.geturl()) for s in bus.nc._server_pool) == sorted(nats_cluster.urls)


def test_tether_cluster_up_status_down(tmp_path: Path) -> None:
    """``tether cluster up`` starts three nodes under TETHER_HOME/cluster and exits; every command
    with that home finds the cluster; ``status`` names each stream's leader; ``down`` stops them."""
    home = tmp_path / "home"
    env = user_env(TETHER_HOME=str(home))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*TETHER, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)

    try:
        up = run("cluster", "up")
        assert up.returncode == 0, up.stderr
        assert "cluster tether is up (3 nodes)" in up.stdout
        found = find_cluster(home)
        assert found is not None and len(found.url.split(",")) == 3
        for name in ("n1", "n2", "n3"):
            assert (home / "cluster" / name / "data").is_dir()
            assert "Server is ready" in (home / "cluster" / name / "nats-server.log").read_text()
        again = run("cluster", "up")  # idempotent: the same nodes
        assert again.returncode == 0 and found == find_cluster(home)

        async def provision() -> int:  # connect() with that home finds the cluster, provisions at R3
            async with await connect(home=home) as bus:
                await bus.publish(Event.of(RunStarted(), runid="r", agentid="a"))
                return bus.config.replicas

        assert anyio.run(provision) == 3
        tail = run("tail", "--all", "-n", "1", "--json")  # any command with the home finds it too
        assert tail.returncode == 0 and json.loads(tail.stdout)["type"] == "tether.run.started", tail.stderr
        status = run("cluster", "status", "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        st = json.loads(status.stdout)
        assert [n["healthy"] for n in st["nodes"]] == [True, True, True]
        assert st["streams"]["EVENTS"]["replicas"] == 3 and st["streams"]["EVENTS"]["leader"] in {"n1", "n2", "n3"}

        down = run("cluster", "down")
        assert down.returncode == 0 and "stopped n1, n2, n3" in down.stdout
        assert find_cluster(home) is None
        gone = run("cluster", "status")
        assert gone.returncode == 1 and gone.stdout.count("down") == 3
    finally:
        for node in LocalCluster(home / "cluster").nodes:  # never leak a node, whatever failed
            if node.pid:
                os.kill(node.pid, signal.SIGKILL)

"""compose/: a three-node JetStream cluster with tether's processes on it.

Where a Docker engine answers, ``docker compose up`` runs it; elsewhere (the machine tether is
built on has the Docker client but no engine) the same topology runs from the fixture: three
nodes with the compose file's cluster name and server names, and each tether service's command,
environment (the URL aside) and ``tether.toml`` as the compose file gives them. Either way a chat
call goes through the gateway to the fake provider and ends up in the log, folded by the
projector."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.cli.test_processes import Child, folded, stopped_cleanly
from tether.testing import NatsCluster

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose" / "docker-compose.yml"
KEY = "tg-compose-demo-key-0123456789abcdefgh"


def services() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text())["services"])


def docker_engine() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


def test_compose_is_a_three_node_cluster_with_tethers_processes() -> None:
    svc = services()
    nodes = {name: s for name, s in svc.items() if name.startswith("nats")}
    assert sorted(nodes) == ["nats1", "nats2", "nats3"]
    routes = "nats://nats1:6222,nats://nats2:6222,nats://nats3:6222"
    for n, (name, node) in enumerate(sorted(nodes.items()), start=1):
        cmd = node["command"]
        assert "-js" in cmd and cmd[cmd.index("--cluster_name") + 1] == "tether"
        assert cmd[cmd.index("--server_name") + 1] == f"n{n}" and cmd[cmd.index("-routes") + 1] == routes, name
    for name in ("worker", "projector", "gateway"):
        env = svc[name]["environment"]
        assert env["TETHER_NATS_URL"] == "nats://nats1:4222,nats://nats2:4222,nats://nats3:4222"
        assert svc[name]["command"][:2] == ["tether", name]
    assert svc["worker"]["deploy"]["replicas"] == 2
    dockerfile = (ROOT / "compose" / "Dockerfile").read_text()
    assert "pip install" in dockerfile and "COPY tether" in dockerfile


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.nats
def test_the_compose_topology_runs(tmp_path: Path) -> None:
    if docker_engine():  # pragma: no cover - no engine where tether is built
        up = subprocess.run(["docker", "compose", "-f", str(COMPOSE), "up", "-d", "--build", "--wait"],
                            capture_output=True, text=True, timeout=900)
        try:
            assert up.returncode == 0, up.stderr
            r = httpx.post("http://127.0.0.1:8400/v1/chat/completions", timeout=30,
                           headers={"Authorization": f"Bearer {KEY}"},
                           json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200, r.text
        finally:
            subprocess.run(["docker", "compose", "-f", str(COMPOSE), "down", "-v"], capture_output=True, timeout=300)
        return
    print("\nno Docker engine here: the compose topology runs from the fixture (same cluster, same commands)")
    svc = services()
    fake_port = free_port()
    toml = (ROOT / "compose" / "tether.toml").read_text().replace("http://fake-provider:8000",
                                                                  f"http://127.0.0.1:{fake_port}")
    (tmp_path / "tether.toml").write_text(toml)
    names = [s["command"][s["command"].index("--server_name") + 1] for n, s in sorted(svc.items())
             if n.startswith("nats")]
    with NatsCluster(tmp_path / "cluster") as cluster:
        assert [n.name for n in cluster.nodes] == names
        children: list[Child] = []
        try:
            def start(name: str, *, replace: dict[str, str] | None = None) -> Child:
                command = [replace.get(a, a) if replace else a for a in svc[name]["command"]]
                assert command[0] == "tether"
                env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
                env.update({k: str(v) for k, v in svc[name]["environment"].items()},
                           TETHER_NATS_URL=cluster.url, TETHER_HOME=str(tmp_path / "home"), NO_COLOR="1",
                           PYTHONUNBUFFERED="1")
                child = Child(*command[1:], cwd=tmp_path, env=env)
                children.append(child)
                return child

            start("fake-provider", replace={"0.0.0.0": "127.0.0.1", "8000": str(fake_port)})
            for _ in range(svc["worker"]["deploy"]["replicas"]):
                start("worker")
            start("projector")
            # port 0: the gateway binds a free one itself (one picked here could be taken before it binds)
            gateway = start("gateway", replace={"0.0.0.0": "127.0.0.1", "8400": "0"})
            gateway_port = int(gateway.wait_for(r"gateway listening on http://127\.0\.0\.1:(\d+)")[1])
            for child in children[1:3]:
                child.wait_for("running: 1 provider")
            children[3].wait_for("projector running")
            r = httpx.post(f"http://127.0.0.1:{gateway_port}/v1/chat/completions", timeout=30,
                           headers={"Authorization": f"Bearer {KEY}", "x-tether-run-id": "compose-run"},
                           json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200, r.text + gateway.output
            folded(tmp_path / "home" / "views", "traces",
                   lambda db: db.execute("SELECT 1 FROM runs WHERE run_id = 'compose-run'").fetchone() is not None)
        finally:
            stopped_cleanly(*children[1:], *children[:1])

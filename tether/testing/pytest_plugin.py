"""pytest fixtures: ``nats_server`` (shared by the session), ``fresh_nats_server``
(one per test, free to stop), ``nats_cluster`` (three nodes, shared by a module),
``tether_home`` (a temporary ``TETHER_HOME``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ._cluster import NatsCluster
from ._server import NatsServer


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    """One real nats-server for the whole session. Do not stop it; use ``fresh_nats_server``."""
    with NatsServer() as server:
        yield server


@pytest.fixture
def fresh_nats_server() -> Iterator[NatsServer]:
    """A real nats-server of this test's own, which the test may stop and restart."""
    with NatsServer() as server:
        yield server


@pytest.fixture(scope="module")
def nats_cluster() -> Iterator[NatsCluster]:
    """A real three-node JetStream cluster shared by the test module (``url`` names every node).
    A test that kills a node brings it back before it ends (``start_node``)."""
    with NatsCluster() as cluster:
        yield cluster


@pytest.fixture
def tether_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh ``TETHER_HOME`` for this test, with ``TETHER_NATS_URL`` unset."""
    home = tmp_path / "tether-home"
    monkeypatch.setenv("TETHER_HOME", str(home))
    monkeypatch.delenv("TETHER_NATS_URL", raising=False)
    return home

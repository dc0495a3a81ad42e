"""TLS against a real three-node cluster: certificates made by the test, TLS required and mutual
TLS (each client shows a certificate the cluster's CA signed); the library and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from tests.cluster._certs import Authority, Pem
from tether.bus import BusUnavailable, connect
from tether.schemas import Event, RunStarted
from tether.testing import NatsCluster

pytestmark = [pytest.mark.anyio, pytest.mark.nats]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pem]:
    directory = tmp_path_factory.mktemp("pki")
    ca = Authority(directory)
    stranger = Authority(directory / "stranger", "someone else's CA")
    return {"ca": ca.pem, "server": ca.issue("server", "localhost", server=True),
            "client": ca.issue("client", "tether-client", server=False),
            "stranger": stranger.issue("stranger", "tether-client", server=False)}


@pytest.fixture(scope="module")
def tls_cluster(pki: dict[str, Pem]) -> Iterator[NatsCluster]:
    """Every node requires TLS and verifies client certificates against the CA (mutual TLS)."""
    server, ca = pki["server"], pki["ca"]
    tls = (f'tls {{\n  cert_file: "{server.cert}"\n  key_file: "{server.key}"\n  ca_file: "{ca.cert}"\n'
           "  verify: true\n  timeout: 2\n}\n")
    with NatsCluster(extra_config=tls) as cluster:
        yield cluster


def mtls(pki: dict[str, Pem], client: str = "client") -> dict[str, str]:
    return {"tls_ca": str(pki["ca"].cert), "tls_cert": str(pki[client].cert), "tls_key": str(pki[client].key)}


async def publish_a_run(cluster: NatsCluster, pki: dict[str, Pem], home: Path) -> None:
    async with await connect(cluster.url, home=home, **mtls(pki)) as bus:
        receipt = await bus.publish(Event.of(RunStarted(), runid="tls", agentid="a"))
        assert receipt.stream_seq is not None and not receipt.outboxed
        assert bus.config.replicas == 3
        assert bus.nc._server_info.get("tls_required") is True


async def test_mutual_tls_publishes_on_the_cluster(tls_cluster: NatsCluster, pki: dict[str, Pem],
                                                   tmp_path: Path) -> None:
    await publish_a_run(tls_cluster, pki, tmp_path / "h")


async def test_no_tls_is_refused_with_what_to_do(tls_cluster: NatsCluster, tmp_path: Path) -> None:
    """nats-py waits forever after a certificate it cannot verify; ``connect()`` gives up in time
    and says which variables to set."""
    with anyio.fail_after(30), pytest.raises(BusUnavailable, match=r"cannot reach NATS .*CERTIFICATE_VERIFY_FAILED"
                                              r".* set TETHER_NATS_TLS_CA to the CA file"):
        await connect(tls_cluster.url, home=tmp_path / "h", connect_attempts=1, connect_timeout=2)


@pytest.mark.parametrize("client", [None, "stranger"])
async def test_a_client_without_a_certificate_the_ca_signed_is_refused(
        tls_cluster: NatsCluster, pki: dict[str, Pem], tmp_path: Path, client: str | None) -> None:
    """Mutual TLS: trusting the server is not enough, the server checks the client too."""
    options = mtls(pki, client) if client else {"tls_ca": str(pki["ca"].cert)}
    with anyio.fail_after(30), pytest.raises(BusUnavailable, match="cannot reach NATS"):
        await connect(tls_cluster.url, home=tmp_path / "h", connect_attempts=1, connect_timeout=2, **options)


def test_the_cli_over_mutual_tls_from_the_environment(tls_cluster: NatsCluster, pki: dict[str, Pem],
                                                      tmp_path: Path) -> None:
    """``TETHER_NATS_TLS_CA/CERT/KEY`` and ``TETHER_NATS_URL`` with every node: ``tether tail``."""
    anyio.run(publish_a_run, tls_cluster, pki, tmp_path / "publisher")  # the test needs no other to run first
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env.update(TETHER_HOME=str(tmp_path / "h"), TETHER_NATS_URL=tls_cluster.url,
               TETHER_NATS_TLS_CA=str(pki["ca"].cert), TETHER_NATS_TLS_CERT=str(pki["client"].cert),
               TETHER_NATS_TLS_KEY=str(pki["client"].key), NO_COLOR="1")
    done = subprocess.run([sys.executable, "-m", "tether", "tail", "--all", "-n", "1", "--json"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["type"] == "tether.run.started"
    del env["TETHER_NATS_TLS_CERT"], env["TETHER_NATS_TLS_KEY"]
    refused = subprocess.run([sys.executable, "-m", "tether", "tail", "--all", "-n", "1"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "cannot reach NATS" in refused.stderr, refused.stderr

"""connect(): embedded server, env URL, discovery, provisioning and drift, against real servers."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import anyio
import pytest
from nats.js.api import RetentionPolicy, StreamConfig

from tether.bus import (
    EVENTS_STREAM,
    BusConfig,
    BusUnavailable,
    connect,
    ensure_streams,
    find_running,
)
from tether.schemas import Event, RunStarted
from tether.testing import NatsServer, collect

pytestmark = [pytest.mark.anyio, pytest.mark.nats]


async def test_connect_without_arguments_starts_an_embedded_server(tether_home: Path) -> None:
    bus = await connect()
    try:
        assert bus.server is not None and bus.server.owned
        assert bus.url.startswith("nats://127.0.0.1:")
        assert (tether_home / "nats").is_dir()
        assert find_running(tether_home) is not None
        assert set(bus.provision_report.created) >= {"EVENTS", "WORK", "DLQ"}  # type: ignore[union-attr]
        receipt = await bus.publish(Event.of(RunStarted(name="hello"), runid="r1"))
        assert receipt.stream_seq == 1 and not receipt.outboxed

        # A second process (here: a second connect) finds the running server and shares it.
        other = await connect()
        try:
            assert other.server is None
            assert other.url == bus.url
            assert other.provision_report.unchanged == ["EVENTS", "WORK", "DLQ"]  # type: ignore[union-attr]
        finally:
            await other.close()
    finally:
        pid = bus.server.pid if bus.server else None
        await bus.close()
    assert find_running(tether_home) is None
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_embedded_server_keeps_data_and_port_across_restarts(tether_home: Path) -> None:
    bus = await connect()
    url = bus.url
    await bus.publish(Event.of(RunStarted(), runid="persist"))
    await bus.close()
    bus = await connect()
    try:
        assert bus.url == url, "restarted server should reuse its port so clients reconnect"
        events = [r.event for r in await collect(bus)]
        assert [e.runid for e in events if e] == ["persist"]
    finally:
        await bus.close()


async def test_tether_nats_url_wins(nats_server: NatsServer, tether_home: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETHER_NATS_URL", nats_server.url)
    bus = await connect()
    try:
        assert bus.server is None
        assert bus.url == nats_server.url
        assert not (tether_home / "nats").exists(), "no embedded server when a URL is given"
    finally:
        await bus.close()


async def test_unreachable_url_is_a_clear_error(tether_home: Path) -> None:
    with NatsServer() as server:
        url = server.url
    with pytest.raises(BusUnavailable, match=r"cannot reach NATS at .*TETHER_NATS_URL"):
        await connect(url, connect_timeout=0.5)


async def test_no_embedded_server_when_disabled(tether_home: Path) -> None:
    with pytest.raises(BusUnavailable, match="tether up"):
        await connect(embedded=False)


async def test_unknown_option_is_refused(tether_home: Path) -> None:
    with pytest.raises(TypeError, match="replicaz"):
        await connect(replicaz=3)


async def test_token_auth_passes_through(tmp_path: Path, tether_home: Path) -> None:
    from tether.bus import nats_server_binary

    port_dir = tmp_path / "ports"
    port_dir.mkdir()
    proc = await asyncio.create_subprocess_exec(
        nats_server_binary(), "-js", "-sd", str(tmp_path / "js"), "-a", "127.0.0.1", "-p", "-1",
        "--auth", "s3cret", "--ports_file_dir", str(port_dir),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        ports = port_dir / f"nats-server_{proc.pid}.ports"
        with anyio.fail_after(30):  # nats-server writes it once it listens
            while not (ports.exists() and ports.read_text().strip()):  # noqa: ASYNC110 - another process's file
                await asyncio.sleep(0.02)
        import json

        url = json.loads(ports.read_text())["nats"][0]
        with pytest.raises(BusUnavailable):
            await connect(url, token="wrong", connect_timeout=1)
        bus = await connect(url, token="s3cret")
        try:
            assert (await bus.publish(Event.of(RunStarted()))).stream_seq == 1
        finally:
            await bus.close()
    finally:
        proc.terminate()
        await proc.wait()


async def test_provisioning_is_idempotent_and_reports_drift(fresh_nats_server: NatsServer,
                                                            tether_home: Path) -> None:
    bus = await connect(fresh_nats_server.url)
    try:
        again = await ensure_streams(bus.js)
        assert again.unchanged == ["EVENTS", "WORK", "DLQ"] and again.ok

        # Someone changed the dedupe window by hand: reported, fixed only when asked.
        info = await bus.js.stream_info(EVENTS_STREAM)
        cfg = info.config
        cfg.duplicate_window = 30.0
        await bus.js.update_stream(cfg)
        report = await ensure_streams(bus.js)
        assert [(d.stream, d.field, d.fixable) for d in report.drift] == [
            ("EVENTS", "duplicate_window", True)
        ]
        assert "--update-streams" in str(report.drift[0])
        fixed = await ensure_streams(bus.js, update=True)
        assert fixed.updated == ["EVENTS"]
        assert (await bus.js.stream_info(EVENTS_STREAM)).config.duplicate_window == 120.0
    finally:
        await bus.close()


async def test_drift_that_cannot_be_fixed_in_place(fresh_nats_server: NatsServer, tether_home: Path) -> None:
    import nats

    nc = await nats.connect(fresh_nats_server.url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="WORK", subjects=["tether.work.>"],
                                     retention=RetentionPolicy.LIMITS))
    report = await ensure_streams(js, update=True)
    fields = {d.field: d for d in report.drift if d.stream == "WORK"}
    assert "retention" in fields and not fields["retention"].fixable
    assert "recreate" in str(fields["retention"])
    assert "WORK" not in report.updated
    await nc.close()


async def test_replicas_are_configurable(tether_home: Path) -> None:
    config = BusConfig.from_env(replicas=3)
    assert config.replicas == 3
    from tether.bus import stream_configs

    assert {c.num_replicas for c in stream_configs(replicas=3)} == {3}


async def test_a_server_that_resets_as_it_reads_the_credentials_names_them(tether_home: Path) -> None:
    """nats-server refusing credentials can close the connection before its -ERR reaches the client
    (seen in CI: `Connection reset by peer`, no word of authorization). With credentials given, the
    error then still says which settings to check."""
    import socket
    import struct

    async def handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b'INFO {"server_id":"x","version":"2.10.0","proto":1,"headers":true,"max_payload":1048576,'
                     b'"auth_required":true}\r\n')
        await writer.drain()
        await reader.readline()  # CONNECT {...}: then a reset (linger 0), as a refusing server may
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    server = await asyncio.start_server(handshake, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(BusUnavailable, match=r"(?s)reset by peer.*may have refused them\): check "
                                                 r"TETHER_NATS_CREDS"):
            await connect(f"nats://127.0.0.1:{port}", home=tether_home, token="wrong", connect_attempts=1)
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.anyio
async def test_a_cancel_as_the_connect_completes_is_not_lost() -> None:
    """Python 3.11's ``wait_for`` returned normally here, so Ctrl-C during ``tether up`` could go unseen."""
    from tether.bus._connect import _bounded

    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    bounded = asyncio.ensure_future(_bounded(5.0, [], done))
    await asyncio.sleep(0)  # now waiting on `done`
    done.set_result(None)
    bounded.cancel()  # in the same turn of the loop
    with pytest.raises(asyncio.CancelledError):
        await bounded

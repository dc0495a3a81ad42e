"""Permissions the server enforces: ``tether auth`` (run as users run it) makes an operator, an
account and per-agent ``.creds`` files; a real three-node cluster in operator mode checks them.

Agent ``support-bot`` may write and read memory namespace ``team:docs``; ``fin-bot``'s namespace
``team:finance`` is not its own. The server refuses its reads of ``team:finance`` and its
publishes outside its own subjects, tether says so clearly, and nothing is lost on the way.
Also: nkey seed files against a server that lists nkey users.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from nats.aio.msg import Msg

from tether.bus import (
    BusUnavailable,
    PermissionDenied,
    PublishRejected,
    Realm,
    connect,
    event_filter,
    read_subject,
    set_aside,
)
from tether.bus._jwt import new_key
from tether.schemas import Event, MemoryWritten, RunStarted
from tether.testing import NatsCluster, collect

pytestmark = [pytest.mark.anyio, pytest.mark.nats]

TETHER = (sys.executable, "-m", "tether")
REFUSED = (r"(?i)(authorization violation.*The server refused the credentials"
           # nats-server may close the connection before its -ERR reaches the client (seen in CI)
           r"|reset by peer.*The server closed the connection as it read the credentials \(it may have refused "
           r"them\)): check TETHER_NATS_CREDS")


def docs(ns: str) -> str:
    return f"tether.evt.*.*.memory.*.{ns}"


def memory(agent: str, ns: str, text: str) -> Event:
    return Event.of(MemoryWritten(namespace=ns, key="k", version=1, text=text), runid="r1", agentid=agent)


def tether_cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env.update(TETHER_HOME=str(home), NO_COLOR="1")
    return subprocess.run([*TETHER, *args], env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tether auth init``, ``service``, and ``agent`` for two agents, as a user runs them."""
    home = tmp_path_factory.mktemp("auth") / "home"
    made = tether_cli(home, "auth", "init")
    assert made.returncode == 0 and "made operator O" in made.stdout, made.stderr
    again = tether_cli(home, "auth", "init")
    assert again.returncode == 0 and "kept as it is" in again.stdout
    assert tether_cli(home, "auth", "service").returncode == 0
    bot = tether_cli(home, "auth", "agent", "support-bot", "--write", "team:docs", "--read", "team:docs",
                     "--gateway-key")
    assert bot.returncode == 0, bot.stderr
    assert "tether.evt.support-bot.*.memory.*.team:docs" in bot.stdout
    assert re.search(r'"tg-[\w-]{32}" = "support-bot"', bot.stdout), "a gateway key for the same agent"
    assert tether_cli(home, "auth", "agent", "fin-bot", "--write", "team:finance").returncode == 0
    for creds in (home / "auth").glob("*.creds"):
        assert creds.stat().st_mode & 0o777 == 0o600
    return home


@pytest.fixture(scope="module")
def cluster(home: Path) -> Iterator[NatsCluster]:
    with NatsCluster(extra_config=(home / "auth" / "server.conf").read_text()) as cluster:
        yield cluster


def creds(home: Path, name: str) -> str:
    return str(home / "auth" / f"{name}.creds")


async def test_the_service_identity_runs_tether_at_three_replicas(home: Path, cluster: NatsCluster,
                                                                  tmp_path: Path) -> None:
    async with await connect(cluster.url, home=tmp_path / "svc", creds=creds(home, "tether")) as bus:
        assert bus.config.replicas == 3
        assert (await bus.publish(Event.of(RunStarted(), runid="svc", agentid="svc"))).stream_seq


async def test_an_agent_is_confined_to_its_events_and_granted_namespaces(home: Path, cluster: NatsCluster,
                                                                         tmp_path: Path) -> None:
    with anyio.fail_after(60):
        service = await connect(cluster.url, home=tmp_path / "svc", creds=creds(home, "tether"))
        fin = await connect(cluster.url, home=tmp_path / "fin", creds=creds(home, "agent-fin-bot"), provision=False)
        bot = await connect(cluster.url, home=tmp_path / "bot", creds=creds(home, "agent-support-bot"),
                            provision=False, ack_timeout_s=2)
        try:
            secret = memory("fin-bot", "team:finance", "the finance team's secret")
            assert (await fin.publish(secret)).stream_seq

            # its own events and its granted namespace: published
            mine = [Event.of(RunStarted(), runid="r1", agentid="support-bot"), memory("support-bot", "team:docs", "ok")]
            for event in mine:
                assert (await bot.publish(event)).stream_seq

            # outside its own: refused by the server, said clearly, kept, and nothing else lost
            with pytest.raises(PublishRejected, match="permission denied: this connection may not publish to "
                               r"tether\.evt\.support-bot\.r1\.memory\.written\.team:finance"):
                await bot.publish(memory("support-bot", "team:finance", "overwrite"))
            for other in ("fin-bot", "Fin-Bot"):  # as another agent (nats-py reports the subject in lower case)
                with anyio.fail_after(1.5), pytest.raises(PublishRejected, match="permission denied"):
                    await bot.publish(Event.of(RunStarted(), runid="r1", agentid=other))
            after = memory("support-bot", "team:docs", "still fine")
            assert (await bot.publish(after)).stream_seq
            kept = set_aside(tmp_path / "bot" / "outbox")
            assert len(kept) == 3 and all("permission denied" in k.error for k in kept)

            # reads: its namespace yes; fin-bot's namespace and fin-bot's events, refused at once
            got = await read_subject(bot, docs("team:docs"))
            assert [r.event.id for r in got if r.event] == [mine[1].id, after.id]
            for forbidden in (docs("team:finance"), event_filter(agent="fin-bot")):
                with anyio.fail_after(3), pytest.raises(PermissionDenied, match=r"NATS refused reading .* may not "
                                                        r"read it .* `tether auth agent NAME --read NAMESPACE`"):
                    await read_subject(bot, forbidden)

            # a core subscription on fin-bot's namespace hears nothing, even as fin-bot writes there
            heard: list[str] = []

            async def hear(msg: Msg) -> None:
                heard.append(msg.subject)

            sub = await bot.nc.subscribe(docs("team:finance"), cb=hear)
            await fin.publish(memory("fin-bot", "team:finance", "another secret"))
            await asyncio.sleep(0.5)
            await sub.unsubscribe()
            assert heard == []

            # the service identity sees everything that was accepted, each once
            log = [r.event.id for r in await collect(service) if r.event]
            assert {secret.id, after.id, *(e.id for e in mine)} <= set(log) and len(log) == len(set(log))
        finally:
            for bus in (bot, fin, service):
                await bus.close()


async def test_credentials_of_another_realm_are_refused(cluster: NatsCluster, tmp_path: Path) -> None:
    other = Realm.create(tmp_path / "other")
    with anyio.fail_after(30), pytest.raises(BusUnavailable, match=REFUSED):
        await connect(cluster.url, home=tmp_path / "x", creds=str(other.agent("support-bot")), connect_attempts=1)


async def test_nkey_seed_files_against_a_server_with_nkey_users(tmp_path: Path) -> None:
    user = new_key("user")
    seed = tmp_path / "user.nk"
    seed.write_text(user.seed)
    stranger = tmp_path / "stranger.nk"
    stranger.write_text(new_key("user").seed)
    config = f'authorization {{ users = [ {{ nkey: "{user.public}" }} ] }}\n'
    with NatsCluster(tmp_path / "nk", size=1, extra_config=config) as server, anyio.fail_after(30):
        async with await connect(server.url, home=tmp_path / "h", nkey_seed=str(seed)) as bus:
            assert (await bus.publish(Event.of(RunStarted(), runid="nk", agentid="a"))).stream_seq
        with pytest.raises(BusUnavailable, match=REFUSED):
            await connect(server.url, home=tmp_path / "h2", nkey_seed=str(stranger), connect_attempts=1)


async def test_only_the_service_identity_reads_the_erasure_keys(home: Path, cluster: NatsCluster) -> None:
    """The shared key store (a KV bucket) under ``tether auth``: the service identity makes and reads
    keys; an agent's credentials cannot open the bucket, nor read a key from it directly."""
    from tether.memory import NatsKeyStore

    service = await asyncio.to_thread(NatsKeyStore, cluster.url, user_credentials=creds(home, "tether"))
    try:
        key_id, key = await asyncio.to_thread(service.current, "team:docs")
        assert await asyncio.to_thread(service.get, key_id) == key
    finally:
        await asyncio.to_thread(service.close)
    with anyio.fail_after(20), pytest.raises(Exception) as refused:
        await asyncio.to_thread(NatsKeyStore, cluster.url, user_credentials=creds(home, "agent-support-bot"),
                                timeout=1.0)
    assert "timeout" in repr(refused.value).lower() or "permission" in repr(refused.value).lower()
    async with await connect(cluster.url, home=home / "peek", creds=creds(home, "agent-support-bot"),
                             provision=False) as bot:
        with pytest.raises(Exception):  # noqa: B017 - refused by the server: no reply comes
            await bot.nc.request(f"$JS.API.DIRECT.GET.KV_{NatsKeyStore.BUCKET}", b'{"seq": 1}', timeout=1)
        assert any("kv_tether-keys" in subject for subject in bot.denials), bot.denials


async def test_a_confined_agent_uses_the_memory_view_of_its_namespaces(home: Path, cluster: NatsCluster,
                                                                       tmp_path: Path) -> None:
    """``AsyncMemory(namespaces=[...])`` follows the namespaces an agent may read, each through a
    consumer filtered on it, so it works under the agent's credentials: its writes and others' in
    ``team:docs`` are read back (and followed live); ``team:finance``, written by fin-bot, is in
    none of its view's files. The view of every namespace stays refused to it, saying why."""
    from tether.memory import AsyncMemory, MemoryNotFound, MemorySettings

    with anyio.fail_after(90):
        service = await connect(cluster.url, home=tmp_path / "svc", creds=creds(home, "tether"))
        fin = await connect(cluster.url, home=tmp_path / "fin", creds=creds(home, "agent-fin-bot"), provision=False)
        bot = await connect(cluster.url, home=tmp_path / "bot", creds=creds(home, "agent-support-bot"),
                            provision=False)
        settings = MemorySettings(view_dir=tmp_path / "bot" / "memory", keyfile=tmp_path / "bot" / "keys.json")
        try:
            assert (await fin.publish(memory("fin-bot", "team:finance", "fin-bot's ledger password"))).stream_seq
            assert (await service.publish(memory("someone", "team:docs", "the docs style guide"))).stream_seq
            with anyio.fail_after(3), pytest.raises(PermissionDenied, match=r"NATS refused the memory view's "
                                                    r"consumer .* AsyncMemory\(bus, namespaces=\[\.\.\.\]\)"):
                await AsyncMemory(bot, agent="support-bot", settings=settings).start()
            mem = await AsyncMemory(bot, agent="support-bot", settings=settings, namespaces=["team:docs"]).start()
            try:
                await mem.write("team:docs", "support-bot's note", key="note")
                assert (await mem.get("team:docs", "note")).text == "support-bot's note"
                await mem.catch_up()
                assert (await mem.get("team:docs", "k")).text == "the docs style guide"
                newer = Event.of(MemoryWritten(namespace="team:docs", key="k", version=2, text="the new guide"),
                                 runid="r2", agentid="someone")
                seq = (await service.publish(newer)).stream_seq
                assert seq and (await mem.get("team:docs", "k", after=seq)).text == "the new guide"
                with pytest.raises(MemoryNotFound):
                    await mem.get("team:finance", "k")
            finally:
                await mem.close()
            files = [f for f in (tmp_path / "bot" / "memory").rglob("*") if f.is_file()]
            assert files and not any(b"ledger password" in f.read_bytes() for f in files)
        finally:
            for bus in (bot, fin, service):
                await bus.close()

"""NATS permissions confine an agent to its own subjects and memory namespaces (docs/subjects.md)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from tether.bus import PublishRejected, connect, event_filter, nats_server_binary
from tether.schemas import Event, MemoryWritten, RunStarted, ToolCallCompleted
from tether.testing import collect

pytestmark = [pytest.mark.anyio, pytest.mark.nats]

ALLOW = [
    "tether.evt.support-bot.*.run.>",
    "tether.evt.support-bot.*.llm.>",
    "tether.evt.support-bot.*.tool.>",
    "tether.evt.support-bot.*.memory.*.agent:support-bot",
    "tether.evt.support-bot.*.memory.*.team:docs",
]


@pytest.fixture
async def secured_url(tmp_path: Path) -> AsyncIterator[str]:
    conf = tmp_path / "nats.conf"
    conf.write_text(
        "listen: 127.0.0.1:-1\n"
        f'jetstream {{ store_dir: "{tmp_path / "js"}" }}\n'
        "authorization { users = [\n"
        "  { user: admin, password: admin }\n"
        "  { user: support-bot, password: pw, permissions: {\n"
        f"      publish: {{ allow: {json.dumps(ALLOW)} }}\n"
        '      subscribe: { allow: ["_INBOX.>"] } } }\n'
        "] }\n"
    )
    proc = await asyncio.create_subprocess_exec(
        nats_server_binary(), "-c", str(conf), "--ports_file_dir", str(tmp_path),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    ports = tmp_path / f"nats-server_{proc.pid}.ports"
    with anyio.fail_after(30):  # nats-server writes it once it listens
        while not (ports.exists() and ports.read_text().strip()):  # noqa: ASYNC110 - another process's file
            await asyncio.sleep(0.02)
    try:
        yield json.loads(ports.read_text())["nats"][0]
    finally:
        proc.terminate()
        await proc.wait()


async def test_agent_is_confined_to_its_subjects_and_namespaces(secured_url: str, tmp_path: Path) -> None:
    admin = await connect(secured_url, user="admin", password="admin", home=tmp_path / "admin")
    bot = await connect(secured_url, user="support-bot", password="pw", home=tmp_path / "bot",
                        provision=False, ack_timeout_s=2)
    try:
        def mine(payload: object, agent: str = "support-bot") -> Event:
            return Event.of(payload, runid="r1", agentid=agent)  # type: ignore[arg-type]

        allowed = [
            mine(RunStarted()),
            mine(ToolCallCompleted(call_id="c", tool="search")),
            mine(MemoryWritten(namespace="team:docs", key="k", version=1, text="ok")),
        ]
        for event in allowed:
            assert (await bot.publish(event)).stream_seq is not None

        # Another team's memory, and another agent's subjects: refused, not retried forever.
        with pytest.raises(PublishRejected, match="permission denied"):
            await bot.publish(mine(MemoryWritten(namespace="team:finance", key="k", version=1, text="no")))
        with pytest.raises(PublishRejected, match="permission denied"):
            await bot.publish(mine(RunStarted(), agent="other-bot"))
        await bot.emit(mine(MemoryWritten(namespace="user:alice", key="k", version=1, text="no")))
        await bot.flush()
        with anyio.fail_after(20):  # the refusal of the emitted one comes back from the server
            while bot.publisher.stats.rejected < 3:  # noqa: ASYNC110 - a counter, no event
                await asyncio.sleep(0.01)
        assert bot.publisher.stats.rejected == 3
        assert not bot.publisher.degraded and bot.publisher.outbox_depth() == 0

        stored = [r.event.id for r in await collect(admin, event_filter(run="r1")) if r.event]
        assert stored == [e.id for e in allowed]
    finally:
        await bot.close()
        await admin.close()

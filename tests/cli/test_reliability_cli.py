"""`tether worker` and `tether dlq` against a real server, a real worker process and the fake provider."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from tether.bus import WORK_STREAM, connect
from tether.middleware import CallFailed, DurableCalls, deadletter
from tether.schemas import uuid7
from tether.testing import NatsServer
from tether.testing.fake_provider import FakeProvider

pytestmark = [pytest.mark.anyio, pytest.mark.nats]

TETHER = (sys.executable, "-m", "tether")
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}


def env_for(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env.update(TETHER_HOME=str(home), NO_COLOR="1", PYTHONUNBUFFERED="1")
    return env


async def tether(*args: str, home: Path, timeout: float = 30) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(*TETHER, *args, env=env_for(home), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode or 0, out.decode(), err.decode()


async def test_worker_process_runs_calls_and_dlq_commands_manage_dead_letters(
        nats_server: NatsServer, tmp_path: Path) -> None:
    home = tmp_path / "home"
    async with FakeProvider(seed=3) as fake, await connect(nats_server.url, home=home) as bus:
        await bus.js.purge_stream(WORK_STREAM)
        config = tmp_path / "tether.toml"
        config.write_text(
            f'[providers.fake]\nkind = "openai"\nbase_url = "{fake.url}"\n\n'
            '[routes."*".retry]\nmax_attempts = 2\nbase_delay_s = 0.01\n\n[worker]\nconcurrency = 8\n')
        worker = await asyncio.create_subprocess_exec(
            *TETHER, "worker", "--url", nats_server.url, "--config", str(config), env=env_for(home),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            assert worker.stdout is not None
            line = (await asyncio.wait_for(worker.stdout.readline(), 20)).decode()
            assert "running: 1 provider(s) [fake]" in line and "concurrency 8" in line, line
            async with DurableCalls(bus) as calls:
                run = f"r-{uuid7()}"
                ok = await calls.llm("fake", "m1", CHAT, runid=run)
                assert ok.response["choices"]
                fake.set_faults("400=m-bad")
                with pytest.raises(CallFailed) as failed:
                    await calls.llm("fake", "m-bad", CHAT, runid=run)
            bad_id = failed.value.call_id

            code, out, _ = await tether("dlq", "ls", "--url", nats_server.url, "--json", home=home)
            assert code == 0
            listed = {d["call_id"]: d for d in json.loads(out)}
            assert listed[bad_id]["reason"] == "not_retryable" and listed[bad_id]["route"] == "fake:m-bad"

            code, out, _ = await tether("dlq", "ls", "--url", nats_server.url, home=home)
            assert code == 0 and bad_id in out and "BadRequestError" in out

            code, out, _ = await tether("dlq", "show", bad_id, "--url", nats_server.url, home=home)
            shown = json.loads(out)
            assert shown["item"]["model"] == "m-bad" and len(shown["attempts"]) == 1

            code, out, err = await tether("dlq", "ls", "--filter", "nonsense", "--url", nats_server.url, home=home)
            assert code == 2 and "KEY=VALUE" in err

            fake.clear_faults()
            code, out, _ = await tether("dlq", "redrive", bad_id, "--json", "--url", nats_server.url, home=home)
            assert code == 0
            [redriven] = json.loads(out)
            async with DurableCalls(bus) as calls:
                again = await calls.attach(redriven["new_call_id"], timeout=15)
            assert again.response["model"] == "m-bad"
            assert bad_id not in {d.call_id for d in await deadletter.list_dead_letters(bus)}

            fake.set_faults("400=m-bad")
            async with DurableCalls(bus) as calls:
                with pytest.raises(CallFailed):
                    await calls.llm("fake", "m-bad", CHAT, runid=run)
            code, out, _ = await tether("dlq", "purge", "--filter", "route=fake:m-bad", "--yes",
                                        "--url", nats_server.url, home=home)
            assert code == 0 and "purged 1" in out
            assert [d for d in await deadletter.list_dead_letters(bus) if d.route == "fake:m-bad"] == []

            code, out, err = await tether("dlq", "show", "no-such-call", "--url", nats_server.url, home=home)
            assert code == 1 and "no dead letter" in err
        finally:
            worker.send_signal(signal.SIGINT)
            try:
                rest = await asyncio.wait_for(worker.communicate(), 15)
            finally:
                if worker.returncode is None:
                    worker.kill()
                    await worker.wait()
        assert worker.returncode == 0
        assert "worker stopped." in rest[0].decode()


async def test_worker_refuses_a_bad_config_with_the_path(tmp_path: Path, nats_server: NatsServer) -> None:
    config = tmp_path / "tether.toml"
    config.write_text('[routes."*".retry]\nmax_atempts = 2\n')
    code, _, err = await tether("worker", "--url", nats_server.url, "--config", str(config), home=tmp_path / "h")
    assert code == 2
    assert "max_atempts" in err and str(config) in err


async def test_dlq_without_an_action_prints_help(tmp_path: Path) -> None:
    code, out, _ = await tether("dlq", home=tmp_path / "h")
    assert code == 2 and "redrive" in out and "purge" in out

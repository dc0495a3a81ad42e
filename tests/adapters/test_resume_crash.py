"""A run killed with SIGKILL midway, then resumed: only the calls it had not completed reach the provider.

The agent is a process (``tests/adapters/resume_agent.py``: the sync OpenAI SDK through
``tether.instrument``, or through ``tether gateway`` run as a process too); the fake provider's
request log (each request carries its call id as ``idempotency-key``) and the run's events say
which calls were paid for, and the answers of the resumed run must be the ones recorded.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import tether.adapters
from tether.adapters import Hub
from tether.adapters.gateway import digest
from tether.bus import event_filter
from tether.schemas import Event
from tether.testing import NatsServer, collect
from tether.testing.fake_provider import FakeProvider

from .resume_agent import main

pytestmark = pytest.mark.nats

ROOT = Path(__file__).resolve().parents[2]
STEPS = 8
KEY = "tg-test-crash-key-00001"


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider(seed=11) as provider:
        yield provider


def environ(nats: NatsServer, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env.update(TETHER_NATS_URL=nats.url, TETHER_HOME=str(home), UPSTREAM_KEY="sk-upstream-crash-0123456789",
               PYTHONPATH=str(ROOT))
    return env


def agent(env: dict[str, str], base_url: str, run_id: str, resume: str, *key: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tests.adapters.resume_agent", base_url, run_id, str(STEPS), resume,
                             *key], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


async def read_events(nats: NatsServer, run_id: str) -> list[Event]:
    from tether.bus import connect

    async with await connect(nats.url) as bus:
        return [r.event for r in await collect(bus, event_filter(run=run_id)) if r.event is not None]


def events_of(nats: NatsServer, run_id: str) -> list[Event]:
    import anyio

    return anyio.run(read_events, nats, run_id)


def paid_steps(events: list[Event], call_ids: set[str]) -> list[int]:
    """The step each of these calls asked for (its last user message: ``step N``)."""
    steps = []
    for event in events:
        if event.type == "tether.llm.call.requested" and event.data.call_id in call_ids:  # type: ignore[union-attr]
            messages = event.data.request["messages"]  # type: ignore[union-attr, index]
            steps.append(int(messages[-1]["content"].split()[1]))
    return sorted(steps)


def check_resumed(fake: FakeProvider, events: list[Event], first: list[str], resumed: list[str],
                  paid_first: int) -> None:
    completed = {e.data.call_id for e in events if e.type == "tether.llm.call.completed"}  # type: ignore[union-attr]
    first_ids = {r.idempotency_key for r in fake.log[:paid_first]}
    second_ids = {r.idempotency_key for r in fake.log[paid_first:]}
    done_first = completed & first_ids
    assert len(done_first) >= len(first), "every answer the agent got was in the log before it got it"
    assert resumed[:len(first)] == first, "the resumed run got the answers recorded"
    assert len(resumed) == STEPS
    replayed = [e for e in events if e.type == "tether.call.replayed"]
    assert len(replayed) == len(done_first), "every call the run completed is replayed"
    assert {e.data.original_call_id for e in replayed} == done_first  # type: ignore[union-attr]
    assert len(fake.log) - paid_first == STEPS - len(done_first), "the provider only for the calls not completed"
    assert not set(paid_steps(events, done_first)) & set(paid_steps(events, second_ids)), "no completed step paid twice"
    assert sorted(paid_steps(events, done_first) + paid_steps(events, second_ids & completed)) == list(range(STEPS))


def test_instrumented_agent_killed_the_moment_it_got_an_answer_and_resumed(
        fake: FakeProvider, nats_server: NatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent process SIGKILLs itself the moment it has its sixth answer (a streamed one), before
    it prints it; the run resumes here (the same script in this process, on tether's background bus).
    In a run, an answer reaches the caller only once the log acked its completion: the resumed run
    replays all six and asks the provider only for the steps after them."""
    env = environ(nats_server, tmp_path / "home")
    env["RESUME_AGENT_DIE_AFTER"] = "5"
    run_id = "crash-instrument"
    child = agent(env, fake.url, run_id, "0")
    out, err = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL, err
    first = out.splitlines()
    assert len(first) == 5 and len(fake.log) == 6
    completed = [e for e in events_of(nats_server, run_id) if e.type == "tether.llm.call.completed"]
    assert len(completed) == 6, "each answer the agent got was in the log"
    tether.adapters.shutdown()
    monkeypatch.setenv("TETHER_NATS_URL", nats_server.url)
    monkeypatch.setenv("TETHER_HOME", str(tmp_path / "home"))
    try:
        resumed = main(fake.url, run_id, STEPS, "1")
    finally:
        tether.adapters.shutdown()
    events = events_of(nats_server, run_id)
    assert len([e for e in events if e.type == "tether.call.replayed"]) == 6
    check_resumed(fake, events, first, resumed, 6)
    assert len(fake.log) == STEPS, "the provider was asked each step once"


def gateway(config: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    child = subprocess.Popen([sys.executable, "-m", "tether", "gateway", "--config", str(config), "--port", "0"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert child.stdout is not None
    first = child.stdout.readline()
    assert first.startswith("gateway listening on http://127.0.0.1:"), first
    return child, first.split()[3].rstrip(":")


@pytest.mark.anyio
async def test_gateway_killed_and_resumed(fake: FakeProvider, nats_server: NatsServer, tmp_path: Path) -> None:
    """``tether gateway`` (a process) is SIGKILLed after the agent's fourth answer (the agent, an
    OpenAI SDK client here, stops there too); a new gateway (in this process) serves the resumed run."""
    from tether.adapters.gateway import GatewayServer, load_gateway_config
    from tether.bus import connect

    env = environ(nats_server, tmp_path / "home")
    config = tmp_path / "tether.toml"
    config.write_text(f'[providers.openai]\nkind = "openai"\nbase_url = "{fake.url}"\napi_key_env = "UPSTREAM_KEY"\n\n'
                      f'[gateway]\ndefault_provider = "openai"\n\n[gateway.keys]\n"sha256:{digest(KEY)}" = "gw-bot"\n')
    run_id = "crash-gateway"
    server, url = gateway(config, env)
    try:
        first = await asyncio.to_thread(main, url, run_id, 4, "0", KEY)
    finally:
        server.send_signal(signal.SIGKILL)
        server.communicate(timeout=30)
    paid_first = len(fake.log)
    async with await connect(nats_server.url, home=tmp_path / "home2") as bus, \
            GatewayServer(load_gateway_config(config, environ=env), bus, port=0, grace_s=1) as again:
        resumed = await asyncio.to_thread(main, again.url, run_id, STEPS, "2", KEY)
        await Hub.of(bus).flush()
    check_resumed(fake, await read_events(nats_server, run_id), first, resumed, paid_first)

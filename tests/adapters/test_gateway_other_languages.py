"""The examples of sending events from other languages, run for real against a gateway:
``examples/other-languages/events.mjs`` with Node, ``events.rs`` compiled with rustc (std only)."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from tether.adapters.gateway import Gateway, GatewayServer, run_for_trace
from tether.bus import Bus
from tether.memory import MemorySettings
from tether.middleware import PolicySet
from tether.testing.fake_provider import FakeProvider

from .conftest import GATEWAY_KEY, gateway_config, kinds, run_events

pytestmark = [pytest.mark.anyio, pytest.mark.nats]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "other-languages"


def node() -> str | None:
    return shutil.which("node")


@pytest.fixture
async def gateway(fake: FakeProvider, bus: Bus, policies: PolicySet, tmp_path: Path) -> AsyncIterator[GatewayServer]:
    config = gateway_config(fake, policies)
    settings = MemorySettings(view_dir=tmp_path / "memory", keyfile=tmp_path / "keys.json")
    async with GatewayServer(config, bus, port=0, grace_s=1, gateway=Gateway(config, bus, memory=settings)) as server:
        yield server


def env(gateway: GatewayServer, trace: str) -> dict[str, str]:
    return {**os.environ, "TETHER_GATEWAY_URL": gateway.url, "TETHER_GATEWAY_KEY": GATEWAY_KEY, "TRACE_ID": trace}


async def test_the_javascript_example_with_node(gateway: GatewayServer, bus: Bus) -> None:
    binary = node()
    if binary is None:
        pytest.skip("no Node on this machine (any Node >= 18 runs the example): the JavaScript example is not run")
    trace = secrets.token_hex(16)
    done = await anyio.to_thread.run_sync(lambda: subprocess.run(
        [binary, str(EXAMPLES / "events.mjs")], env=env(gateway, trace), capture_output=True, text=True,
        timeout=60, check=False))
    assert done.returncode == 0, done.stderr
    assert "tool call recorded: 2 events" in done.stdout and "search found 1" in done.stdout
    events = await run_events(bus, run_for_trace("bot", trace))
    assert kinds(events) == ["tool.call.requested", "tool.call.completed", "memory.written", "run.finished"]
    assert events[1].data.result == {"hits": ["NATS JetStream keeps a log"]}
    assert events[-1].data.ended_by == "agent" and {e.agentid for e in events} == {"bot"}


async def test_the_rust_example_compiled_with_the_standard_library_only(gateway: GatewayServer, bus: Bus,
                                                                         tmp_path: Path) -> None:
    rustc = shutil.which("rustc")
    if rustc is None:
        pytest.skip("no rustc on this machine")
    binary = tmp_path / "events"
    built = await anyio.to_thread.run_sync(lambda: subprocess.run(
        [rustc, "-O", "-o", str(binary), str(EXAMPLES / "events.rs")], capture_output=True, text=True,
        timeout=120, check=False))
    assert built.returncode == 0, built.stderr
    trace = secrets.token_hex(16)
    done = await anyio.to_thread.run_sync(lambda: subprocess.run(
        [str(binary)], env=env(gateway, trace), capture_output=True, text=True, timeout=60, check=False))
    assert done.returncode == 0 and done.stdout.startswith("202 "), done.stdout + done.stderr
    events = await run_events(bus, run_for_trace("bot", trace))
    assert kinds(events) == ["tool.call.requested", "tool.call.completed"]
    assert events[1].data.result == ["a.txt:1: nats"] and events[1].data.duration_ms == 3.5

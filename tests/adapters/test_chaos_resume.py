"""The resume chaos harness (``tests/adapters/chaos_resume.py``) against a real nats-server, the fake provider
and the gateway as processes: a bank agent SIGKILLed at seeded points and resumed ends as an uninterrupted
run does, with no side effect twice, no completed LLM call paid twice, and ``needs_attention`` after every
death inside its non-idempotent tool. ``TETHER_CHAOS_SLOW=1`` (``make chaos``) runs 2,000 scenarios instead of
60, printing its figures so far every 100, and stops starting new ones after ``TETHER_CHAOS_SECONDS`` (if set)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tether.testing import NatsServer

pytestmark = [pytest.mark.anyio, pytest.mark.nats]

ROOT = Path(__file__).resolve().parents[2]
SLOW = os.environ.get("TETHER_CHAOS_SLOW") == "1"
SCENARIOS = int(os.environ.get("TETHER_CHAOS_SCENARIOS") or (2000 if SLOW else 60))
BUDGET = float(os.environ.get("TETHER_CHAOS_SECONDS") or 0)
GATEWAY_KEY = "tg-chaos-bank-key-0123456789"


async def started(*args: str, env: dict[str, str], pattern: str) -> tuple[asyncio.subprocess.Process, str]:
    """A process and the first match of ``pattern`` in what it prints first."""
    proc = await asyncio.create_subprocess_exec(*args, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    assert proc.stdout is not None
    seen = []
    async with asyncio.timeout(90):
        while True:
            line = (await proc.stdout.readline()).decode()
            seen.append(line)
            if not line:
                raise AssertionError(f"{args[2:4]} ended: {''.join(seen)}")
            found = re.search(pattern, line)
            if found:
                return proc, found[1]


@pytest.fixture
async def services(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env.update(TETHER_HOME=str(tmp_path / "home"), FAKE_API_KEY="sk-fake-0123456789", NO_COLOR="1",
               PYTHONUNBUFFERED="1")
    fake, fake_url = await started(sys.executable, "-m", "tether", "fake-provider", "--port", "0", env=env,
                                   pattern=r"^(http://\S+/v1)")
    config = tmp_path / "gateway.toml"
    config.write_text(f'[providers.fake]\nkind = "openai"\nbase_url = "{fake_url}"\napi_key_env = "FAKE_API_KEY"\n\n'
                      f'[gateway]\nport = 0\ndefault_provider = "fake"\n\n[gateway.keys]\n"{GATEWAY_KEY}" = '
                      '"chaos-bank"\n')
    try:
        gateway, gateway_url = await started(sys.executable, "-m", "tether", "gateway", "--url", nats_server.url,
                                             "--config", str(config), env=env, pattern=r"OpenAI base URL (\S+/v1)")
        try:
            yield fake_url, gateway_url
        finally:
            gateway.terminate()
            await gateway.wait()
    finally:
        fake.terminate()
        await fake.wait()


async def test_a_bank_agent_killed_at_seeded_points_and_resumed_ends_as_an_uninterrupted_run(
        nats_server: NatsServer, services: tuple[str, str], tmp_path: Path) -> None:
    fake_url, gateway_url = services
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.adapters.chaos_resume", "--nats", nats_server.url, "--fake", fake_url,
        "--gateway", gateway_url, "--gateway-key", GATEWAY_KEY, "--scenarios", str(SCENARIOS), "--seed", "16",
        "--workdir", str(tmp_path / "chaos"), "--max-seconds", str(BUDGET), "--progress", "100" if SLOW else "0",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=None if SLOW else asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), BUDGET + 600 if BUDGET else 4 * 3600 if SLOW else 600)
    assert proc.returncode == 0, (err or b"(on stderr above)").decode()[-3000:]
    figures = json.loads(out.decode().strip().splitlines()[-1])
    print(f"\nresume chaos: {figures}")  # the figures docs/resume.md quotes
    assert figures["problems"] == []
    ran = figures["scenarios"]
    assert ran == SCENARIOS or (BUDGET and figures["seconds"] > BUDGET and ran >= 1), figures
    assert figures["deaths"] >= ran
    assert (figures["duplicates"], figures["divergences"], figures["paid_twice"], figures["asked_again"],
            figures["silent_repeats"]) == (0, 0, 0, 0, 0)
    assert figures["deaths_in_non_idempotent_tool"] >= 1, "some deaths fell inside the non-idempotent tool"
    assert figures["needs_attention"] == figures["deaths_in_non_idempotent_tool"]

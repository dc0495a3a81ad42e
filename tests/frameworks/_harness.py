"""Running an agent script in its framework's own venv against the fake provider and a real NATS,
and reading back what tether recorded.

Each framework's venv (``.venv-<framework>``) is built by ``tests/_envs.py`` from
``requirements/<framework>.txt``, with tether from this checkout. The script prints one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tether.bus import connect
from tether.schemas import Event
from tether.testing import FakeProvider, NatsServer, collect

from .._envs import OptionalEnv

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

POLICIES = """
[routes."*"]
timeout_s = 10.0

[routes."*".retry]
max_attempts = 3
base_delay_s = 0.01
max_delay_s = 0.05

[routes."*".breaker]
enabled = false
"""
BUDGET_ONE_CALL = """
[budgets.run."*"]
calls = 1
"""


@dataclass
class Outcome:
    """What one run of the script said, and what the fake provider and the log saw."""

    said: dict[str, Any]
    upstream: list[str]  # outcome of each request the fake provider received, in order
    events: list[Event] = field(default_factory=list)

    def runs(self) -> dict[str, list[Event]]:
        by_run: dict[str, list[Event]] = defaultdict(list)
        for event in self.events:
            if event.runid:
                by_run[event.runid].append(event)
        return dict(by_run)

    def types(self, run_id: str) -> list[str]:
        return [e.type.removeprefix("tether.") for e in self.runs()[run_id]]

    def started(self) -> list[Event]:
        return [e for e in self.events if e.type == "tether.run.started"]


def run_script(env: OptionalEnv, script: str, *args: str, nats: NatsServer, fake: FakeProvider, work: Path,
               policies: str = POLICIES) -> Outcome:
    """``script`` (in tests/frameworks/) run by the venv's python, in ``work`` (its tether.toml)."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "tether.toml").write_text(policies)
    first = len(fake.log)
    done = subprocess.run(
        [str(env.bin("python")), str(HERE / script), *args], cwd=work, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TETHER_NATS_URL": nats.url, "TETHER_HOME": str(work / "home"),
             "OPENAI_BASE_URL": fake.url, "OPENAI_API_KEY": "sk-fake-key-for-tests", "NO_COLOR": "1"},
        check=False)
    assert done.returncode == 0, f"{script} exited {done.returncode}:\n{done.stdout}\n{done.stderr[-6000:]}"
    said = json.loads(done.stdout.strip().splitlines()[-1])
    return Outcome(said, [r.outcome for r in fake.log[first:]])


def events(nats: NatsServer, home: Path) -> list[Event]:
    """Every event now in the log."""

    async def read() -> list[Event]:
        async with await connect(nats.url, home=home) as bus:
            return [r.event for r in await collect(bus) if r.event is not None]

    return asyncio.run(read())


def across_a_restart(env: OptionalEnv, script: str, *, work: Path, policies: str = POLICIES
                     ) -> tuple[Outcome, dict[str, Any]]:
    """Every scenario of ``script`` once against one fake provider and one NATS; then NATS restarts
    and a second process of the script runs with ``--continue``. The first run's outcome (its events:
    the log after both) and what the second said."""
    with NatsServer() as nats, FakeProvider(seed=1) as fake:
        out = run_script(env, script, nats=nats, fake=fake, work=work, policies=policies)
        nats.stop()
        nats.start()
        continued = run_script(env, script, "--continue", nats=nats, fake=fake, work=work, policies=policies).said
        out.events = events(nats, work / "home")
    return out, continued

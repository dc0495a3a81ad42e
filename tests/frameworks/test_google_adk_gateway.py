"""The real google-genai SDK (from .venv-google-adk) through ``tether gateway`` (a process, as users run it)
in front of the fake provider's Gemini endpoints: a 429 retried by tether alone, a stream, the tool call
the conversation shows as an inferred span, the run ended by its last call, a bad key refused as
google-genai's own ``ClientError`` (the script: genai_gateway.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tether.schemas import Event
from tether.testing import FakeProvider, NatsServer

from .._envs import optional_env
from ._harness import HERE, POLICIES, events

pytestmark = [pytest.mark.slow, pytest.mark.nats]

KEY = "tg-genai-gateway-key-0001"
AGENT = "genai-agent"
RUN = "genai-through-the-gateway"


def gateway(config: Path, nats: NatsServer, home: Path) -> tuple[subprocess.Popen[str], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env.update(TETHER_HOME=str(home), GOOGLE_UPSTREAM_KEY="AIza-upstream-key-for-tests-0123456789")
    with (home.parent / "gateway.err").open("w") as errors:
        child = subprocess.Popen([sys.executable, "-m", "tether", "gateway", "--url", nats.url, "--config",
                                  str(config), "--port", "0"], env=env, stdout=subprocess.PIPE, stderr=errors,
                                 text=True)
    assert child.stdout is not None
    first = child.stdout.readline()
    assert first.startswith("gateway listening on http://127.0.0.1:"), (home.parent / "gateway.err").read_text()
    return child, first.split()[3].rstrip(":")


def test_google_genai_through_tether_gateway(tmp_path: Path) -> None:
    venv = optional_env("google-adk", project=True)
    with NatsServer() as nats, FakeProvider(seed=2, faults="429(0.1s)#1/gemini") as fake:
        config = tmp_path / "tether.toml"
        config.write_text(POLICIES + f'\n[providers.google]\nkind = "gemini"\nbase_url = "{fake.url[:-3]}/v1beta"\n'
                          f'api_key_env = "GOOGLE_UPSTREAM_KEY"\n\n[gateway]\nport = 0\n\n[gateway.keys]\n'
                          f'"{KEY}" = "{AGENT}"\n\n[gateway.models]\n"gemini-*" = "google"\n')
        child, url = gateway(config, nats, tmp_path / "home")
        try:
            done = subprocess.run([str(venv.bin("python")), str(HERE / "genai_gateway.py"), url, KEY, RUN],
                                  capture_output=True, text=True, timeout=120, check=False)
            assert done.returncode == 0, f"{done.stdout}\n{done.stderr[-4000:]}"
            said = json.loads(done.stdout.strip().splitlines()[-1])
            run = poll(nats, tmp_path / "reader")
        finally:
            child.terminate()
            child.wait(30)
            assert child.stdout is not None
            child.stdout.close()
    assert said["call"] == {"name": "get_weather", "args": {"city": "fake city"}, "id": None}
    assert said["text"].startswith("This is fake reply")
    assert said["refused"] == ["ClientError", 401, "UNAUTHENTICATED"], "google-genai's own error"
    assert [r.outcome for r in fake.log] == ["429", "200", "200"], "tether retried the 429; the SDK did not"
    assert [e.type.removeprefix("tether.") for e in run if not e.type.startswith("tether.tool")] == [
        "run.started", "llm.call.requested", "llm.call.attempt_failed", "llm.call.completed",
        "llm.call.requested", "llm.call.completed", "run.finished"]
    [requested] = [e.data for e in run if e.type == "tether.tool.call.requested"]
    [completed] = [e.data for e in run if e.type == "tether.tool.call.completed"]
    assert (requested.tool, requested.arguments, requested.inferred) == ("get_weather", {"city": "fake city"}, True)
    assert completed.result == {"result": "18 C in Paris"} and completed.call_id == requested.call_id
    assert {e.agentid for e in run} == {AGENT}


def poll(nats: NatsServer, home: Path, timeout: float = 30.0) -> list[Event]:
    """The run's events once its end and its tool span are in the log (the gateway publishes them after
    the answers)."""
    deadline = time.monotonic() + timeout
    while True:
        run = [e for e in events(nats, home) if e.runid == RUN]
        types = {e.type for e in run}
        if {"tether.run.finished", "tether.tool.call.completed"} <= types or time.monotonic() > deadline:
            return run
        time.sleep(0.2)

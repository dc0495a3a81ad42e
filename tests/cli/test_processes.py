"""Every long-running command as users run it, each carrying a real call or event end to end.

``tether fake-provider``, ``worker``, ``projector``, ``gateway`` and ``up`` run as child processes
(``python -m tether ...``) with their default settings: nothing sets ``TETHER_EVENT_LOOP``, so
they run on uvloop, as the CLI does (each test checks that uvloop is loaded in the child). The
first four share a nats-server of this module's own and are started once; ``tether up`` starts
its embedded server, as in docs/gateway.md's quick start, which is followed as written there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

import tether
from tests.adapters.test_gateway_openclaw import chat_body, sse, stainless
from tether.adapters.gateway import run_for_trace
from tether.bus import connect
from tether.middleware import DurableCalls
from tether.projections import open_view
from tether.projections.ledger import totals
from tether.projections.traces import list_runs
from tether.testing import NatsServer

pytestmark = pytest.mark.nats

TETHER = (sys.executable, "-m", "tether")
DOCS = Path(__file__).parents[2] / "docs" / "gateway.md"
CHAT = [{"role": "user", "content": "What is the weather in Paris?"}]
AGENT = "cli-agent"


def user_env(**extra: str) -> dict[str, str]:
    """A user's environment: none of tether's variables (the loop, the home, the URL) set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env.update(NO_COLOR="1", PYTHONUNBUFFERED="1", **extra)
    return env


class Child:
    """``tether ARGS`` in the background, its output (stdout and stderr) in a file."""

    def __init__(self, *args: str, cwd: Path, env: dict[str, str]) -> None:
        self.args = args
        self.url = ""  # what it serves, once known
        self.log = cwd / f"{args[0]}-{secrets.token_hex(3)}.out"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen([*TETHER, *args], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)

    @property
    def output(self) -> str:
        return self.log.read_text()

    def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        """The first match of ``pattern`` in the output, once it is printed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.output)
            if found:
                return found
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"`tether {' '.join(self.args)}` printed no {pattern!r}:\n{self.output}")

    def on_uvloop(self) -> bool:
        return "uvloop" in Path(f"/proc/{self.proc.pid}/maps").read_text()

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
            for pid in re.findall(r"nats-server pid (\d+)", self.output):  # never leak an embedded server
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)


def stopped_cleanly(*children: Child, sig: signal.Signals = signal.SIGTERM) -> None:
    """Stop every one (whatever happens to the others), then check each exited cleanly."""
    codes: list[int | str] = []
    for child in children:
        try:
            codes.append(child.stop(sig))
        except Exception as exc:  # stop the rest first; reported below
            codes.append(repr(exc))
    for child, code in zip(children, codes, strict=True):
        assert code == 0 and "Traceback" not in child.output, f"`tether {child.args[0]}`: {code}\n{child.output}"


def cli(*args: str, cwd: Path, env: dict[str, str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TETHER, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the processes, started once ------------------------------------------------------------


@pytest.fixture(scope="module")
def place(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("users")


@pytest.fixture(scope="module")
def nats(place: Path) -> Iterator[NatsServer]:
    with NatsServer(place / "nats") as server:
        yield server


@pytest.fixture(scope="module")
def fake(place: Path) -> Iterator[str]:
    """``tether fake-provider``: its OpenAI base URL."""
    child = Child("fake-provider", "--seed", "7", cwd=place, env=user_env())
    try:
        url = child.wait_for(r"(?m)^(http://127\.0\.0\.1:\d+/v1)$")[1]
        assert child.on_uvloop()
        yield url
    finally:
        stopped_cleanly(child, sig=signal.SIGINT)


def fake_log(fake: str) -> list[dict[str, object]]:
    return list(httpx.get(fake.removesuffix("/v1") + "/_fake/log").json()["requests"])


def set_faults(fake: str, spec: str) -> None:
    httpx.post(fake.removesuffix("/v1") + "/_fake/faults", json={"spec": spec}).raise_for_status()


@pytest.fixture(scope="module")
def key() -> str:
    return "tg-" + secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
def stack(place: Path, nats: NatsServer, fake: str, key: str) -> Iterator[dict[str, Child]]:
    """``tether worker``, ``tether projector`` and ``tether gateway`` on the module's server, one home."""
    (place / "tether.toml").write_text(
        f'[providers.openai]\nkind = "openai"\nbase_url = "{fake}"\napi_key_env = "OPENAI_API_KEY"\n\n'
        f'[providers.anthropic]\nkind = "anthropic"\nbase_url = "{fake}"\napi_key_env = "ANTHROPIC_API_KEY"\n\n'
        '[routes."*".retry]\nbase_delay_s = 0.01\n\n'
        f'[gateway]\nport = 0\ndefault_provider = "openai"\n\n[gateway.keys]\n"{key}" = "{AGENT}"\n\n'
        '[gateway.models]\n"claude-*" = "anthropic"\n')
    env = user_env(TETHER_HOME=str(place / "home"), OPENAI_API_KEY="sk-fake-openai-0123456789",
                   ANTHROPIC_API_KEY="sk-ant-fake-0123456789")
    children: dict[str, Child] = {}
    try:
        for name in ("worker", "projector", "gateway"):
            children[name] = Child(name, "--url", nats.url, cwd=place, env=env)
        children["worker"].wait_for(r"running: 2 provider\(s\)")
        children["projector"].wait_for("projector running")
        children["gateway"].url = children["gateway"].wait_for(r"gateway listening on (http://127\.0\.0\.1:\d+)")[1]
        for child in children.values():
            assert child.on_uvloop(), f"`tether {child.args[0]}` is not on uvloop"
        yield children
    finally:
        stopped_cleanly(*children.values())
        assert "worker stopped." in children["worker"].output
        assert "projector stopped." in children["projector"].output


def tail(run_id: str, count: int, *, cwd: Path, env: dict[str, str], url: str | None = None) -> list[dict]:
    """``tether tail --all --json``: the run's first ``count`` events."""
    done = cli("tail", *(("--url", url) if url else ()), "--all", "--run", run_id, "--json", "-n", str(count),
               cwd=cwd, env=env)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def types(events: list[dict]) -> list[str]:
    return [e["type"].removeprefix("tether.") for e in events]


def folded(views: Path, view: str, found: Callable[[sqlite3.Connection], bool], timeout: float = 30.0) -> None:
    """Wait until the projector has folded what ``found`` looks for into ``view``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        path = open_view(views, view) if views.is_dir() else None
        if path is not None:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                if found(db):
                    return
            except sqlite3.OperationalError:  # not created yet
                pass
            finally:
                db.close()
        time.sleep(0.1)
    raise AssertionError(f"the projector did not fold it into the {view} view within {timeout:g} s")


# -- through each -------------------------------------------------------------------------------


def test_the_sdks_through_tether_gateway_to_tether_fake_provider(stack: dict[str, Child], fake: str, key: str,
                                                                  nats: NatsServer, place: Path) -> None:
    url = stack["gateway"].url
    before = len(fake_log(fake))
    run = "gateway-sdks-" + secrets.token_hex(4)
    headers = {"x-tether-run-id": run}
    with openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0) as sdk:
        answer = sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT,  # type: ignore[arg-type]
                                             extra_headers=headers)
        set_faults(fake, "linger(300ms)")  # the upstream ends the stream 0.3 s after [DONE]; the SDK does not wait
        try:
            stream = sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT, stream=True,  # type: ignore[arg-type]
                                                 extra_headers=headers)
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        finally:
            set_faults(fake, "")
    with anthropic.Anthropic(base_url=url, api_key=key, max_retries=0) as claude, \
            claude.messages.stream(model="claude-haiku-4-5", max_tokens=64, messages=CHAT,  # type: ignore[arg-type]
                                   extra_headers=headers) as claude_stream:
        claude_text = "".join(claude_stream.text_stream)
    assert answer.choices[0].message.content and text and claude_text
    logged = fake_log(fake)[before:]
    assert [r["fault"] for r in logged] == [None, "linger", None], "one request upstream per call"
    events = tail(run, 7, cwd=place, env=user_env(), url=nats.url)
    assert types(events) == ["run.started", *["llm.call.requested", "llm.call.completed"] * 3]
    completed = [e["data"] for e in events if e["type"] == "tether.llm.call.completed"]
    assert all(c["usage"]["output_tokens"] > 0 for c in completed), "each stream delivered in full, usage recorded"
    assert completed[1]["response"]["choices"][0]["message"]["content"] == text
    assert {e["agentid"] for e in events} == {AGENT}


@pytest.mark.anyio
async def test_a_durable_call_executed_by_tether_worker(stack: dict[str, Child], fake: str, nats: NatsServer,
                                                        place: Path) -> None:
    before = len(fake_log(fake))
    async with await connect(nats.url, home=place / "caller") as bus, DurableCalls(bus) as calls:
        result = await asyncio.wait_for(calls.llm("openai", "gpt-4o-mini", {"messages": CHAT, "max_tokens": 10},
                                                  runid="durable-" + secrets.token_hex(4)), 30)
    assert result.response["choices"][0]["message"]["content"]
    assert len(fake_log(fake)) == before + 1
    assert "Traceback" not in stack["worker"].output


@pytest.mark.anyio
async def test_a_durable_stream_relayed_by_tether_worker_from_a_lingering_upstream(
        stack: dict[str, Child], fake: str, nats: NatsServer, place: Path) -> None:
    """The worker streams from the upstream and relays the chunks; the SDK reads to [DONE] and
    closes while the upstream holds the stream open 0.3 s more: a whole call."""
    set_faults(fake, "linger(300ms)")
    try:
        async with await connect(nats.url, home=place / "caller") as bus:
            sdk = tether.instrument(openai.AsyncOpenAI(base_url=fake, api_key="sk-fake"), bus=bus, mode="durable")
            async with tether.run(bus=bus, agent=AGENT) as run:
                stream = await sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT,  # type: ignore[arg-type]
                                                           stream=True)
                text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            await sdk.close()
    finally:
        set_faults(fake, "")
    assert text.startswith("This is fake reply")
    events = tail(run.run_id, 4, cwd=place, env=user_env(), url=nats.url)
    assert sorted(types(events)) == ["llm.call.completed", "llm.call.requested", "run.finished", "run.started"]
    [completed] = [e["data"] for e in events if e["type"] == "tether.llm.call.completed"]
    assert completed["usage"]["output_tokens"] > 0 and completed["response"]["choices"][0]["message"]["content"] == text


def test_events_folded_by_tether_projector_read_back_by_runs_and_cost(stack: dict[str, Child], key: str,
                                                                       place: Path) -> None:
    trace = secrets.token_hex(16)
    run_id = run_for_trace(AGENT, trace)
    with openai.OpenAI(base_url=stack["gateway"].url + "/v1", api_key=key) as sdk:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT,  # type: ignore[arg-type]
                                    extra_headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01"})
    views = place / "home" / "views"
    folded(views, "traces", lambda db: any(r["run_id"] == run_id and r["llm_calls"] == 1 for r in list_runs(db)))
    folded(views, "cost", lambda db: any(r["key"] == run_id for r in totals(db, by="run")))
    env = user_env(TETHER_HOME=str(place / "home"))
    done = cli("runs", "--agent", AGENT, "--json", cwd=place, env=env)
    assert done.returncode == 0, done.stderr
    [row] = [r for r in json.loads(done.stdout) if r["run_id"] == run_id]
    assert row["llm_calls"] == 1 and row["agent"] == AGENT and row["cost_usd"] > 0
    done = cli("cost", "--by", "run", "--json", cwd=place, env=env)
    assert done.returncode == 0, done.stderr
    [cost] = [r for r in json.loads(done.stdout)["rows"] if r["run"] == run_id]
    assert cost["calls"] == 1 and cost["usd"] == pytest.approx(row["cost_usd"])


# -- tether up, as docs/gateway.md says ---------------------------------------------------------


def quick_start() -> tuple[str, list[str], str]:
    """docs/gateway.md's quick start: the tether.toml, the shell lines, the Python lines."""
    text = DOCS.read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(\w+)\n(.*?)```", text, re.S)
    toml = next(body for lang, body in blocks if lang == "toml")
    shell = [line.split("#")[0].strip() for lang, body in blocks if lang == "sh" for line in body.splitlines()]
    python = next(body for lang, body in blocks if lang == "python")
    return toml, [line for line in shell if line], python


def test_the_gateway_quick_start_as_written(fake: str, tmp_path: Path) -> None:
    """The quick start, in its order, with three things changed: the providers' base URLs are the
    fake provider's, the port a free one, the key line the one ``--new-key`` printed."""
    toml, shell, python = quick_start()
    assert shell == ["tether gateway --new-key --agent openclaw-main", "tether up", "tether gateway"]
    port = free_port()
    env = user_env(OPENAI_API_KEY="sk-fake-openai-0123456789", ANTHROPIC_API_KEY="sk-ant-fake-0123456789")
    made = cli(*shell[0].split()[1:], cwd=tmp_path, env=env)
    assert made.returncode == 0, made.stderr
    key, key_line = made.stdout.splitlines()[0], made.stdout.strip().splitlines()[-1]
    assert key_line.endswith('= "openclaw-main"')
    toml = re.sub(r'base_url = "https://api\.(openai|anthropic)\.com/v1"', f'base_url = "{fake}"', toml)
    toml = toml.replace("port = 8400", f"port = {port}")
    toml = re.sub(r'^"tg-replace-me[^\n]*$', key_line, toml, flags=re.M)
    assert toml.count(fake) == 2 and key_line in toml
    (tmp_path / "tether.toml").write_text(toml)

    up = Child(*shell[1].split()[1:], cwd=tmp_path, env=env)
    gateway = None
    try:
        up.wait_for("tether is up")
        gateway = Child(*shell[2].split()[1:], cwd=tmp_path, env=env)
        gateway.wait_for(f"gateway listening on http://127.0.0.1:{port}")
        assert up.on_uvloop() and gateway.on_uvloop()
        clients = python.replace("8400", str(port)).replace('"tg-..."', repr(key))
        scope: dict[str, object] = {"openai": openai, "anthropic": anthropic}
        sdk, claude = [eval(line.split("#")[0], scope) for line in clients.strip().splitlines()]  # the docs' lines
        with sdk, claude:
            answer = sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT)
            message = claude.messages.create(model="claude-haiku-4-5", max_tokens=32, messages=CHAT)
        assert answer.choices[0].message.content and message.content[0].text
        assert "Traceback" not in gateway.output
    finally:
        stopped_cleanly(*([gateway] if gateway is not None else []), up, sig=signal.SIGINT)
    assert up.output.rstrip().endswith("stopped cleanly.")


def test_tether_up_gateway_port_with_an_openclaw_request(fake: str, tmp_path: Path) -> None:
    """``tether up --gateway-port``: the gateway inside up, on its bus; a request shaped as
    OpenClaw sends it (docs/gateway.md, OpenClaw): streamed, usage asked, a trace per run."""
    key = "tg-" + secrets.token_urlsafe(24)
    (tmp_path / "tether.toml").write_text(
        f'[providers.openai]\nkind = "openai"\nbase_url = "{fake}"\n\n'
        f'[gateway]\ndefault_provider = "openai"\n\n[gateway.keys]\n"{key}" = "openclaw-main"\n')
    port = free_port()
    env = user_env()
    up = Child("up", "--gateway-port", str(port), cwd=tmp_path, env=env)
    try:
        up.wait_for("tether is up")
        assert f"gateway listening on http://127.0.0.1:{port}" in up.output and up.on_uvloop()
        trace = secrets.token_hex(16)
        headers = {"authorization": f"Bearer {key}", "content-type": "application/json",
                   "traceparent": f"00-{trace}-b7ad6b7169203331-01", **stainless()}
        with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions", content=chat_body(),
                          headers=headers, timeout=30) as response:
            assert response.status_code == 200, response.read()
            body = response.read()
        assert body.endswith(b"data: [DONE]\n\n")
        usage = sse(body)[-1]["usage"]
        assert usage["prompt_tokens"] > 6000, "OpenClaw asked for usage: its usage chunk reaches it"
        events = tail(run_for_trace("openclaw-main", trace), 3, cwd=tmp_path, env=env)
        assert types(events) == ["run.started", "llm.call.requested", "llm.call.completed"]
        assert events[2]["data"]["usage"]["input_tokens"] == usage["prompt_tokens"]
    finally:
        stopped_cleanly(up, sig=signal.SIGINT)
    assert up.output.rstrip().endswith("stopped cleanly.")

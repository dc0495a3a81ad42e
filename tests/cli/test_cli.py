"""The ``tether`` command, run for real against real nats-servers.

``up`` and ``tail`` run as child processes (``python -m tether``), the way users run them,
so signals, exit codes and the embedded server's lifetime are the real ones. Help, schema
export and ``status`` call :func:`tether.cli.main` in-process, which is faster and shows
the same output.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tests._samples import SAMPLES, sample_event
from tether import __version__
from tether.bus import EVENTS_STREAM, Bus, ReadResult, connect
from tether.cli import main
from tether.cli._format import Style, event_line, result_line
from tether.schemas import (
    ErrorInfo,
    Event,
    InvalidEvent,
    LlmCallAttemptFailed,
    LlmCallCompleted,
    LlmCallRequested,
    Payload,
    RunFinished,
    RunStarted,
    ToolCallCompleted,
    Usage,
    catalogue,
    uuid7,
)
from tether.testing import NatsServer, collect

TETHER = (sys.executable, "-m", "tether")
EVENT_LINE = re.compile(r"^\s*\d\d:\d\d:\d\d\.\d{3} (?P<agent>\S+)/(?P<run>\S+) (?P<kind>\S+)")
INVALID = "!! not a valid tether event"


def cli_env(home: Path) -> dict[str, str]:
    """The environment of a child ``tether``: its own home, no server URL, no colours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env.update(TETHER_HOME=str(home), NO_COLOR="1", PYTHONUNBUFFERED="1")
    return env


def exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def flat(text: str) -> str:
    """Help text with argparse's line wrapping undone."""
    return " ".join(text.split())


async def run_tether(*args: str, home: Path, timeout: float = 60.0) -> tuple[int, str, str]:
    """Run ``tether ARGS`` to completion: exit code, stdout, stderr. Killed if it overruns."""
    proc = await asyncio.create_subprocess_exec(
        *TETHER, *args, env=cli_env(home), cwd=home.parent,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


class Child:
    """A running ``tether`` child whose output is read line by line as it comes."""

    def __init__(self, proc: asyncio.subprocess.Process, stream: asyncio.StreamReader) -> None:
        self.proc = proc
        self._stream = stream
        self.lines: list[str] = []

    async def wait_for(self, text: str, timeout: float = 60.0) -> str:
        """The first line (from now) that contains ``text``."""

        async def read() -> str:
            while True:
                raw = await self._stream.readline()
                if not raw:
                    raise AssertionError(f"tether exited before printing {text!r}:\n{self.output}")
                line = raw.decode().rstrip("\n")
                self.lines.append(line)
                if text in line:
                    return line

        try:
            return await asyncio.wait_for(read(), timeout)
        except TimeoutError:
            raise AssertionError(f"no {text!r} within {timeout}s:\n{self.output}") from None

    async def finish(self, timeout: float = 30.0) -> int:
        """Wait for the exit; the rest of the output joins ``lines``."""
        rest = await asyncio.wait_for(self._stream.read(), timeout)
        self.lines.extend(rest.decode().splitlines())
        return await asyncio.wait_for(self.proc.wait(), timeout)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def nats_pid(self) -> int:
        match = re.search(r"nats-server pid (\d+)", self.output)
        assert match, f"no nats-server pid in the output:\n{self.output}"
        return int(match[1])


@asynccontextmanager
async def tether_child(*args: str, home: Path, stream: str = "stdout") -> AsyncIterator[Child]:
    """Start ``tether ARGS``; on the way out, kill it and any nats-server it left running."""
    proc = await asyncio.create_subprocess_exec(
        *TETHER, *args, env=cli_env(home), cwd=home.parent,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT if stream == "stdout" else asyncio.subprocess.PIPE,
    )
    reader = proc.stdout if stream == "stdout" else proc.stderr
    assert reader is not None
    child = Child(proc, reader)
    try:
        yield child
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        # Only after a failure: never leak a server, whether or not its pid was printed.
        pids = {int(m) for m in re.findall(r"nats-server pid (\d+)", child.output)}
        pids |= {int(p.stem.split("_")[1]) for p in (home / "run").glob("nats-server_*.ports")}
        for pid in pids:
            if exists(pid):
                os.kill(pid, signal.SIGKILL)


# -- help and version ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], ["up", "start tether", "tail", "show events live", "status", "schemas",
              "TETHER_HOME", "TETHER_NATS_URL"]),
        (["up"], ["Start the embedded nats-server", "provision the EVENTS, WORK and DLQ streams",
                  "until Ctrl-C", "--demo", "--runs N", "--interval S", "--url", "--home"]),
        (["tail"], ["Follow the event log", "--agent", "--run", "--kind", "--action", "--key",
                    "start from the beginning of the log", "start N messages back", "--count N",
                    "as CloudEvents JSON"]),
        (["status"], ["the streams with message counts", "outbox depth", "--json", "--url"]),
        (["schemas", "export"], ["DIR", "envelope.json", "index.json", "per event payload",
                                 "validate their events"]),
    ],
    ids=["tether", "up", "tail", "status", "schemas-export"],
)
def test_help_explains_each_command(argv: list[str], expected: list[str],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(" ".join(["usage: tether", *argv]))
    for text in expected:
        assert text in flat(out), f"{text!r} missing from `tether {' '.join(argv)} --help`"


@pytest.mark.anyio
async def test_no_command_prints_help_and_exits_2(tmp_path: Path) -> None:
    code, out, _ = await run_tether(home=tmp_path / "home")
    assert code == 2
    assert out.startswith("usage: tether")
    assert all(command in out for command in ("up", "tail", "status", "schemas"))


def test_schemas_without_an_action_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schemas"]) == 2
    out = capsys.readouterr().out
    assert out.startswith("usage: tether schemas") and "export" in out


@pytest.mark.anyio
async def test_version(tmp_path: Path) -> None:
    code, out, _ = await run_tether("--version", home=tmp_path / "home")
    assert code == 0
    assert out.strip() == f"tether {__version__}"


def test_unknown_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["tail", "--kind", "nonsense"])
    assert exited.value.code == 2
    assert "invalid choice: 'nonsense'" in capsys.readouterr().err


# -- schemas export -----------------------------------------------------------------------------


def test_schemas_export_writes_every_file_and_says_how_many(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "out" / "schemas"
    assert main(["schemas", "export", str(directory)]) == 0
    expected = {"envelope.json", "index.json", "tether-config.json"} | {
        f"{t}.v{m.schema_version}.json" for t, m in catalogue().items()
    }
    assert {p.name for p in directory.iterdir()} == expected
    assert capsys.readouterr().out.strip() == (f"wrote {len(expected)} schema files to {directory} (the events', "
                                               "and tether.toml's in tether-config.json)")
    index = json.loads((directory / "index.json").read_text())
    assert sorted(e["type"] for e in index["events"]) == sorted(catalogue())
    for entry in index["events"]:
        assert json.loads((directory / entry["file"]).read_text())["$id"].endswith(
            f"{entry['type']}:v{entry['version']}")


# -- up -----------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.nats
async def test_up_demo_plays_its_runs_and_stops_cleanly(tether_home: Path) -> None:
    """The demo makes real durable calls: a retry, a tool, a fallback, the breaker of the model that is
    down opening on run 2 (its calls then fall back at once), and on run 3 a dead letter."""
    async with tether_child("up", "--demo", "--runs", "3", "--interval", "0.1", home=tether_home) as up:
        await up.wait_for("tether is up")
        code = await up.finish(timeout=120)
    out = up.output
    assert code == 0, out
    assert up.lines[-1] == "stopped cleanly."
    assert "fake provider (demo) on http://127.0.0.1:" in out and "worker: durable calls from WORK" in out
    nats_pid = up.nats_pid()
    assert not exists(nats_pid), "tether up left its nats-server running"
    assert not (tether_home / "server.json").exists()

    by_run: dict[str, list[str]] = {}
    circuit = []
    for line in up.lines:
        if match := EVENT_LINE.match(line):
            if match["kind"].startswith("circuit."):  # the worker's, of no run
                circuit.append((match["agent"], match["kind"], len(by_run)))
                continue
            assert match["agent"] == "demo-researcher"
            by_run.setdefault(match["run"], []).append(match["kind"])
    assert len(by_run) == 3, out
    assert circuit == [("-", "circuit.opened", 2)], "opened by the large model's second failure, in run 2"
    ok_run = ["run.started", "llm.call.requested", "llm.call.attempt_failed", "llm.call.completed",
              "tool.call.requested", "tool.call.completed", "memory.written",
              "llm.call.requested", "llm.call.attempt_failed", "llm.call.completed"]
    runs = list(by_run.values())
    assert runs[0] == runs[1] == [*ok_run, "run.finished"]
    assert runs[2] == [*ok_run, "llm.call.requested", "llm.call.attempt_failed", "llm.call.failed",
                       "call.dead_lettered", "run.finished"]
    assert "RateLimitError 429 → retry in 0.40s" in out
    assert "ServiceUnavailableError 503 → fallback to openai/gpt-4o-mini" in out
    assert "CircuitOpenError → fallback to openai/gpt-4o-mini" in out, "run 3: the open circuit refuses at once"
    assert "BadRequestError 400 → give_up" in out and "see `tether dlq ls`" in out
    for n, run in enumerate(by_run, start=1):
        assert f"run {n} done. Try: tether tail --run {run} --all" in out
    assert out.index("tether is up") < out.index("run.started") < out.index("stopped cleanly")

    # The events outlive the server: the next start of the same home reads them back.
    async with await connect(home=tether_home) as bus:
        stored = await collect(bus)
        from tether.middleware import deadletter

        letters = await deadletter.list_dead_letters(bus)
    assert all(r.ok for r in stored)
    events = [r.event for r in stored if r.event is not None and r.event.agentid == "demo-researcher"]
    assert Counter(e.runid for e in events) == {run: len(kinds) for run, kinds in by_run.items()}
    assert [e.type.removeprefix("tether.") for e in events] == [k for kinds in runs for k in kinds]
    assert [(d.reason, d.error_type, d.route) for d in letters] == [
        ("not_retryable", "BadRequestError", "openai:o3-mini")]


@pytest.mark.anyio
@pytest.mark.nats
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_up_stops_cleanly_on_a_signal(sig: signal.Signals, tether_home: Path) -> None:
    async with tether_child("up", home=tether_home) as up:
        await up.wait_for("tether is up")
        nats_pid = up.nats_pid()
        assert exists(nats_pid)
        assert (tether_home / "server.json").exists()
        up.proc.send_signal(sig)
        code = await up.finish()
    assert code == 0, up.output
    assert up.lines[-2:] == ["stopping tether...", "stopped cleanly."]
    assert not exists(nats_pid), f"nats-server {nats_pid} still running after {sig.name}"
    assert not (tether_home / "server.json").exists()


@pytest.mark.anyio
@pytest.mark.parametrize("delay", [0.0, 0.05, 0.15, 0.3])
async def test_a_signal_during_startup_leaves_no_server_behind(delay: float, tether_home: Path) -> None:
    """Ctrl-C while the embedded server is still starting: whatever the moment, nothing leaks."""
    async with tether_child("up", home=tether_home) as up:
        await up.wait_for("starting:")
        await asyncio.sleep(delay)
        up.proc.send_signal(signal.SIGINT)
        code = await up.finish()
    assert code == 0, up.output
    assert "stopped" in up.lines[-1], up.output
    started = [int(p.stem.split("_")[1]) for p in (tether_home / "run").glob("nats-server_*.ports")]
    leaked = [pid for pid in started if exists(pid)]
    for pid in leaked:  # do not let a failure leave a server behind
        os.kill(pid, signal.SIGKILL)
    assert not leaked, f"nats-server left running:\n{up.output}"
    assert not (tether_home / "server.json").exists()


@pytest.mark.anyio
@pytest.mark.nats
async def test_up_against_a_url_leaves_that_server_alone(nats_server: NatsServer, tether_home: Path) -> None:
    async with tether_child("up", "--url", nats_server.url, home=tether_home) as up:
        await up.wait_for("tether is up")
        assert f"connected to {nats_server.url}" in up.output
        assert "nats-server pid" not in up.output
        up.proc.send_signal(signal.SIGINT)
        assert await up.finish() == 0
    assert nats_server.running and nats_server.pid is not None and exists(nats_server.pid)


# -- tail ---------------------------------------------------------------------------------------


def tool_done(run: str, agent: str, n: int) -> Event:
    return Event.of(ToolCallCompleted(call_id=f"c{n}", tool="search", result=n), runid=run, agentid=agent)


async def publish_mixed_run(bus: Bus, run: str) -> list[Event | str]:
    """Five valid events and two bad messages on one run's subjects, in this order.

    Returns the valid events and, in place of each bad message, what its error says.
    """
    started = Event.of(RunStarted(name="tail me"), runid=run, agentid="alpha")
    asked = Event.of(LlmCallRequested(call_id="l1", provider="openai", model="m"), runid=run, agentid="alpha")
    searched = tool_done(run, "beta", 1)
    answered = Event.of(LlmCallCompleted(call_id="l1", provider="openai", model="m",
                                         usage=Usage(input_tokens=3, output_tokens=4)),
                        runid=run, agentid="beta")
    finished = Event.of(RunFinished(status="ok"), runid=run, agentid="alpha")
    subject = f"tether.evt.alpha.{run}.tool.completed.search"
    for event in (started, asked, searched):
        await bus.publish(event)
    await bus.js.publish(subject, b"\xff this is not a CloudEvent")
    unknown = {"ce-specversion": "1.0", "ce-id": "bad-1", "ce-source": "urn:x",
               "ce-type": "tether.tool.call.exploded"}
    await bus.js.publish(subject, b'{"x": 1}', headers=unknown)
    for event in (answered, finished):
        await bus.publish(event)
    return [started, asked, searched, "not a CloudEvent", "unknown event type", answered, finished]


@pytest.fixture
async def mixed_run(nats_server: NatsServer, tether_home: Path) -> tuple[str, list[Event | str]]:
    run = f"tail-{uuid7()}"
    async with await connect(nats_server.url) as bus:
        return run, await publish_mixed_run(bus, run)


def expect_line(line: str, event: Event) -> None:
    match = EVENT_LINE.match(line)
    assert match, f"not an event line: {line!r}"
    assert (match["agent"], match["run"]) == (event.agentid, event.runid)
    assert match["kind"] == event.type.removeprefix("tether.")


@pytest.mark.anyio
@pytest.mark.nats
async def test_tail_all_prints_one_line_per_message_and_survives_bad_ones(
        nats_server: NatsServer, tether_home: Path, mixed_run: tuple[str, list[Event | str]]) -> None:
    run, expected = mixed_run
    code, out, err = await run_tether("tail", "--url", nats_server.url, "--all", "--run", run,
                                      "--count", str(len(expected)), home=tether_home)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == len(expected), out
    for line, want in zip(lines, expected, strict=True):
        if isinstance(want, Event):
            expect_line(line, want)
        else:
            assert line.startswith(f"{INVALID} on tether.evt.alpha.{run}.tool.completed.search (seq ")
            assert want in line
    assert "tail me" in lines[0] and "→" in lines[2] and "tokens 3→4" in lines[5]
    assert f"following tether.evt.*.{run}.*.*.* on {nats_server.url}" in err


@pytest.mark.anyio
@pytest.mark.nats
async def test_tail_json_prints_cloudevents_and_error_objects(
        nats_server: NatsServer, tether_home: Path, mixed_run: tuple[str, list[Event | str]]) -> None:
    run, expected = mixed_run
    code, out, err = await run_tether("tail", "--url", nats_server.url, "--all", "--run", run, "--json",
                                      "--count", str(len(expected)), home=tether_home)
    assert code == 0, err
    assert err == ""  # --json keeps stderr quiet too: stdout is for machines
    docs = [json.loads(line) for line in out.splitlines()]
    assert len(docs) == len(expected)
    for doc, want in zip(docs, expected, strict=True):
        if isinstance(want, Event):
            assert doc["specversion"] == "1.0"
            assert (doc["type"], doc["id"], doc["runid"]) == (want.type, want.id, run)
            assert doc["data"] == want.to_json()["data"]
            assert Event.from_wire({k: v for k, v in doc.items() if k != "data"}, doc["data"]) == want
        else:
            assert set(doc) == {"error", "subject", "stream_seq"}
            assert want in doc["error"]
            assert doc["subject"] == f"tether.evt.alpha.{run}.tool.completed.search"
            assert isinstance(doc["stream_seq"], int) and doc["stream_seq"] > 0


@pytest.mark.anyio
@pytest.mark.nats
@pytest.mark.parametrize(
    ("option", "pick"),
    [
        (["--kind", "llm"], [1, 5]),
        (["--agent", "beta"], [2, 5]),
        (["--kind", "run", "--action", "finished"], [6]),
        (["--key", "openai"], [1, 5]),
        (["--last", "2"], [5, 6]),
    ],
    ids=["kind", "agent", "kind+action", "key", "last"],
)
async def test_tail_filters_and_start_position(option: list[str], pick: list[int], nats_server: NatsServer,
                                               tether_home: Path,
                                               mixed_run: tuple[str, list[Event | str]]) -> None:
    run, expected = mixed_run
    start = [] if "--last" in option else ["--all"]
    # --count stops at the matches we expect: a filter letting anything else through shows up
    # in their place, and a filter too strict leaves tail waiting until the timeout.
    code, out, err = await run_tether("tail", "--url", nats_server.url, "--run", run, *start, *option,
                                      "--count", str(len(pick)), home=tether_home)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == len(pick)
    for line, i in zip(lines, pick, strict=True):
        want = expected[i]
        assert isinstance(want, Event)
        expect_line(line, want)


@pytest.mark.anyio
@pytest.mark.nats
async def test_tail_follows_new_events_and_stops_on_ctrl_c(nats_server: NatsServer,
                                                           tether_home: Path) -> None:
    run = f"live-{uuid7()}"
    async with await connect(nats_server.url) as bus:
        await bus.publish(tool_done(run, "old", 0))  # before tail starts: not shown without --all
        async with tether_child("tail", "--url", nats_server.url, "--run", run,
                                home=tether_home, stream="stderr") as tail:
            await tail.wait_for("following")
            new = [tool_done(run, "new", n) for n in (1, 2)]
            for event in new:
                await bus.publish(event)
            assert tail.proc.stdout is not None
            lines = [(await asyncio.wait_for(tail.proc.stdout.readline(), 30)).decode() for _ in new]
            for line, event in zip(lines, new, strict=True):
                expect_line(line, event)
            tail.proc.send_signal(signal.SIGINT)
            assert await asyncio.wait_for(tail.proc.wait(), 30) == 0
            assert await tail.proc.stdout.read() == b""  # nothing else, and not the old event


def test_tail_without_a_server_says_to_run_tether_up(tether_home: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tail"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tether: no NATS server")
    assert "run `tether up`" in err and str(tether_home) in err


@pytest.mark.anyio
@pytest.mark.nats
async def test_tail_of_a_server_without_streams_explains(fresh_nats_server: NatsServer,
                                                         tether_home: Path) -> None:
    code, out, err = await run_tether("tail", "--url", fresh_nats_server.url, "--all", home=tether_home)
    assert code == 1 and out == ""
    assert "cannot follow tether.evt.>" in err and "tether up" in err


# -- status -------------------------------------------------------------------------------------


async def status_of(*argv: str) -> int:
    # status installs no signal handlers, so it can run in a worker thread, in-process
    return await asyncio.to_thread(main, ["status", *argv])


@pytest.mark.anyio
@pytest.mark.nats
async def test_status_shows_server_streams_and_outbox(nats_server: NatsServer, tether_home: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    async with await connect(nats_server.url) as bus:
        await bus.publish(Event.of(RunStarted(), runid=f"status-{uuid7()}"))
        messages = (await bus.js.stream_info(EVENTS_STREAM)).state.messages
    assert await status_of("--url", nats_server.url) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith(f"server  {nats_server.url}  nats-server 2.") and "jetstream=on" in lines[0]
    assert f"home    {tether_home}" in lines
    rows = {line.split()[0]: line.split() for line in lines if line.startswith("  ")}
    assert set(rows) == {"name", "EVENTS", "WORK", "DLQ"}
    assert rows["EVENTS"][1] == f"{messages:,}"
    assert "outbox  0 queued in 0 file(s), 0 rejected" in lines
    assert lines[-1] == "views   none yet (tether up runs the projector)"


@pytest.mark.anyio
@pytest.mark.nats
async def test_status_json(nats_server: NatsServer, tether_home: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    async with await connect(nats_server.url) as bus:
        await bus.publish(Event.of(RunStarted(), runid=f"status-{uuid7()}"))
    assert await status_of("--url", nats_server.url, "--json") == 0
    st = json.loads(capsys.readouterr().out)
    assert set(st) == {"server", "home", "streams", "drift", "outbox", "publisher", "views"}
    assert st["views"] == []
    assert st["server"]["url"] == nats_server.url and st["server"]["jetstream"] is True
    assert [s["name"] for s in st["streams"]] == ["EVENTS", "WORK", "DLQ"]
    assert st["streams"][0]["messages"] >= 1
    assert {"messages", "bytes", "first_seq", "last_seq", "consumers"} <= set(st["streams"][0])
    assert st["outbox"] == {"files": 0, "queued": 0, "rejected": 0, "set_aside": []}
    assert st["home"] == str(tether_home)


@pytest.mark.anyio
@pytest.mark.nats
async def test_status_of_a_server_without_streams_says_run_tether_up(
        fresh_nats_server: NatsServer, tether_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert await status_of("--url", fresh_nats_server.url) == 0
    out = capsys.readouterr().out
    for name in ("EVENTS", "WORK", "DLQ"):
        assert re.search(rf"^  {name}\s+missing: .* \(run `tether up`\)$", out, re.M), out


@pytest.mark.anyio
async def test_status_without_a_server_exits_1_and_says_to_run_tether_up(
        tether_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert await status_of() == 1
    out = capsys.readouterr().out
    assert "no tether server is running" in out and "start one with `tether up`" in out
    assert "outbox: 0 event(s) queued in 0 file(s), 0 rejected" in out

    assert await status_of("--json") == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["server"] is None and "tether up" in doc["error"]
    assert doc["outbox"] == {"files": 0, "queued": 0, "rejected": 0, "set_aside": []}


@pytest.mark.anyio
@pytest.mark.nats
async def test_status_without_a_server_still_counts_the_outbox(fresh_nats_server: NatsServer,
                                                               tether_home: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    bus = await connect(fresh_nats_server.url, ack_timeout_s=0.5)
    await asyncio.to_thread(fresh_nats_server.stop)
    for n in range(3):
        assert (await bus.publish(tool_done("r", "a", n))).outboxed
    await bus.close(timeout=0.5)
    assert await status_of() == 1
    assert "outbox: 3 event(s) queued in 1 file(s), 0 rejected" in capsys.readouterr().out


# -- the one-line format ------------------------------------------------------------------------


def bare(payload: Payload) -> Payload:
    """The payload with every field that may be None set to None (the other branch of each line)."""
    nullable = {name: None for name, field in type(payload).model_fields.items()
                if not field.is_required() and field.default is None}
    return payload.model_copy(update=nullable)


@pytest.mark.parametrize("event_type", sorted(catalogue()))
def test_event_line_covers_every_type(event_type: str) -> None:
    full = sample_event(event_type)
    kind = event_type.removeprefix("tether.")
    line = event_line(full, Style())
    assert line.startswith(f"15:09:26.535 support-bot/run-42 {kind} ")
    assert "\n" not in line and "\033" not in line
    assert len(line) < 250
    assert event_line(full.with_dataref("nats-obj://b/x")).endswith(" [object store]")

    minimal = event_line(Event.of(bare(SAMPLES[event_type])))
    assert f" -/- {kind}" in minimal
    assert "None" not in minimal


@pytest.mark.parametrize(
    ("payload", "text"),
    [
        (SAMPLES["tether.llm.call.attempt_failed"],
         "openai/gpt-4.1-mini call=…l-0001 attempt 2: RateLimitError 429 → fallback to anthropic/claude-haiku "
         "in 0.50s"),
        (LlmCallAttemptFailed(call_id="c", provider="openai", model="gpt-4o", attempt=1, decision="fallback",
                              error=ErrorInfo(type="CircuitOpenError", message="open"), retry_in_s=0.0,
                              next_provider="openai", next_model="gpt-4o-mini"),
         "attempt 1: CircuitOpenError → fallback to openai/gpt-4o-mini"),
        (SAMPLES["tether.run.finished"], "error 1.2s Timeout"),
        (SAMPLES["tether.budget.exceeded"], "tenant=acme 9.75/10.0 usd"),
        (SAMPLES["tether.call.redriven"], "call=call-0004 → call-0005"),
        (SAMPLES["tether.circuit.opened"], "openai/gpt-4.1-mini: 5 failures in 10 s"),
        (RunFinished(status="ok", duration_ms=12.4), "run.finished ok 12ms"),
        (ToolCallCompleted(call_id="c1", tool="t", result="x" * 100), "→ " + "x" * 39 + "…"),
    ],
    ids=["llm-failed", "no-status", "run-finished", "budget", "redriven", "circuit", "ms", "cut"],
)
def test_event_line_details(payload: Payload, text: str) -> None:
    line = event_line(Event.of(payload))
    assert text in line and "  " not in line, "one space between words: no gap for a missing status code"


def test_result_line_and_colours(monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal:
        def isatty(self) -> bool:
            return True

    failed = Event.of(ToolCallCompleted(call_id="c", tool="t"))
    monkeypatch.delenv("NO_COLOR", raising=False)
    coloured = event_line(failed, Style(Terminal()))
    assert "\033[32mtool.call.completed\033[0m" in coloured
    monkeypatch.setenv("NO_COLOR", "1")
    assert "\033" not in event_line(failed, Style(Terminal()))

    bad = ReadResult("tether.evt.a.r.tool.completed.t", None,
                     InvalidEvent("tether.tool.call.completed", [{"loc": ("tool",), "msg": "missing"}]), 7)
    line = result_line(bad, Style())
    assert line.startswith(f"{INVALID} on tether.evt.a.r.tool.completed.t (seq 7): ")
    assert "tool" in line


@pytest.mark.anyio
@pytest.mark.nats
async def test_a_reader_that_goes_away_does_not_leak_the_server(tether_home: Path) -> None:
    """`tether up --demo | head -1`: the pipe closes, tether stops quietly and stops its server."""
    proc = await asyncio.create_subprocess_exec(
        *TETHER, "up", "--demo", "--runs", "2", "--interval", "0.1", env=cli_env(tether_home),
        cwd=tether_home.parent, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        first = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert b"starting" in first
        proc.stdout.feed_eof()
        transport = proc._transport  # type: ignore[attr-defined]
        transport.get_pipe_transport(1).close()  # the reader goes away, like `head` exiting
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert b"Traceback" not in err, err.decode()
    started = [int(p.stem.split("_")[1]) for p in (tether_home / "run").glob("nats-server_*.ports")]
    leaked = [pid for pid in started if exists(pid)]
    for pid in leaked:
        os.kill(pid, signal.SIGKILL)
    assert not leaked, "tether up left its nats-server running after its stdout closed"


@pytest.mark.anyio
async def test_a_connect_finishing_as_it_is_cancelled_is_closed(monkeypatch: pytest.MonkeyPatch,
                                                                tether_home: Path) -> None:
    """If the cancel of Ctrl-C is swallowed and the connect returns a bus anyway, `tether up` closes it."""
    from tether.cli import _up, build_parser

    class Late:
        closed = False

        async def close(self) -> None:
            self.closed = True

    late = Late()

    async def connect(**_: object) -> Late:
        with contextlib.suppress(asyncio.CancelledError):  # swallows the cancel, as wait_for could
            await asyncio.sleep(30)
        return late

    monkeypatch.setattr(_up, "connect", connect)
    args = build_parser().parse_args(["up", "--home", str(tether_home)])
    up = asyncio.ensure_future(_up.run_up(args))
    await asyncio.sleep(0.05)
    os.kill(os.getpid(), signal.SIGINT)  # run_up's own handler turns it into a stop
    assert await asyncio.wait_for(up, 10) == 0
    assert late.closed

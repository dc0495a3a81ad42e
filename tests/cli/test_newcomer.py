"""What a newcomer sees, run as they run it: the ``tether`` command as a child process, on its
default event loop, against real nats-servers (issue 12, section 4)."""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from tether.bus import connect
from tether.cli._freshness import Freshness, catch_up_words, lag_note
from tether.projections import ErrorsView, Item, MetricsView, TracesView, ViewStore, view_path
from tether.schemas import (
    ErrorInfo,
    Event,
    LlmCallAttemptFailed,
    LlmCallCompleted,
    LlmCallRequested,
    RunFinished,
    RunStarted,
    ToolCallCompleted,
    ToolCallRequested,
    Usage,
    uuid7,
)
from tether.testing import NatsServer

from .test_cli import TETHER, cli_env, exists, run_tether, tether_child

pytestmark = pytest.mark.anyio


def url_env(home: Path, url: str) -> dict[str, str]:
    return {**cli_env(home), "TETHER_NATS_URL": url}


async def run_with(env: dict[str, str], *args: str, cwd: Path, timeout: float = 60.0) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(*args, env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


# -- tether up --demo ---------------------------------------------------------------------------


@pytest.mark.nats
async def test_the_demo_prints_its_own_lines_only(tether_home: Path) -> None:
    """No raw ``WARNING tether.middleware: circuit ... opened`` among the event lines (the circuit's
    events say it), no gap where an error has no status code, and a projector line in words."""
    async with tether_child("up", "--demo", "--runs", "3", "--interval", "0.1", home=tether_home) as up:
        await up.wait_for("tether is up")
        code = await up.finish(timeout=120)
    out = up.output  # stdout and stderr, as a terminal shows them
    assert code == 0, out
    assert re.search(r"circuit\.opened openai:gpt-4o: 2 failures in a row", out), out
    raw = [line for line in up.lines if re.match(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) ", line)]
    assert raw == [], "raw log lines between the demo's lines"
    assert "attempt 1: CircuitOpenError → fallback to openai/gpt-4o-mini" in out
    assert not [line for line in up.lines if re.search(r"\S  +→", line)], "a gap before the arrow"
    [projector] = [line for line in up.lines if line.startswith("  projector:")]
    assert projector.endswith(": the log is empty so far"), projector
    assert "seq" not in projector and "log head" not in projector
    # `make run` shows the dashboard (on another port, said on a line of its own, when 8470 is taken)
    [ui] = [line for line in up.lines if line.startswith("  ui: the dashboard")]
    assert re.fullmatch(r"  ui: the dashboard is at http://127\.0\.0\.1:\d+/\?token=\S+  \(.*\)", ui), ui


def test_the_projector_start_in_words() -> None:
    assert catch_up_words(0, 0) == "the log is empty so far"
    assert catch_up_words(120, 120) == "up to date with the log's 120 events"
    assert catch_up_words(0, 1) == "folding the log's 1 event from the start"
    assert catch_up_words(80, 120) == "catching up on 40 of the log's 120 events"


# -- tether status ------------------------------------------------------------------------------


async def test_status_without_a_server_says_it_once_with_what_to_do(tether_home: Path) -> None:
    code, out, err = await run_tether("status", home=tether_home)
    assert code == 1, err
    first = out.splitlines()[0]
    assert first == (f"no tether server is running for {tether_home}: start one with `tether up` "
                     "(or set TETHER_NATS_URL to use your own NATS)")
    assert out.lower().count("no nats server") == 0 and out.count("server") == 2  # said once (and NATS)
    assert "outbox: 0 event(s) queued" in out


@pytest.mark.nats
async def test_status_hides_the_random_names_of_temporary_readers(fresh_nats_server: NatsServer,
                                                                  tether_home: Path) -> None:
    async with await connect(fresh_nats_server.url):  # the streams (on a server of its own: no worker ran there)
        pass
    env = url_env(tether_home, fresh_nats_server.url)
    code, _, err = await run_with(env, *TETHER, "dlq", "ls", cwd=tether_home.parent)
    assert code == 0, err  # it leaves an ephemeral consumer on DLQ behind, for 30 s
    code, out, err = await run_with(env, *TETHER, "status", cwd=tether_home.parent)
    assert code == 0, err
    [dlq] = [line for line in out.splitlines() if line.startswith("  DLQ ")]
    assert dlq.endswith("temporary reader(s)"), dlq
    assert not re.search(r"[A-Za-z0-9]{20,}", dlq), f"a random consumer name: {dlq}"
    [work] = [line for line in out.splitlines() if line.startswith("  WORK ")]
    assert work.endswith("  -"), f"no worker ran, so no consumer: {work}"


# -- tether stats -------------------------------------------------------------------------------


def build(home: Path, view: object, events: list[Event]) -> None:
    store = ViewStore(view, view_path(home / "views", view.name, view.version))  # type: ignore[attr-defined]
    store.apply_batch([Item(i, e) for i, e in enumerate(events, 1)], at=time.time())
    store.mark_complete()
    store.close()


def fallback_history() -> list[Event]:
    """Two calls to gpt-4o, which is down: each falls back to gpt-4o-mini; one tool call."""
    down = ErrorInfo(type="ServiceUnavailableError", status_code=503, message="down")
    out: list[Event] = []
    for n in range(2):
        call = f"c{n}"
        out += [Event.of(LlmCallRequested(call_id=call, provider="openai", model="gpt-4o"), runid="r"),
                Event.of(LlmCallAttemptFailed(call_id=call, provider="openai", model="gpt-4o", attempt=1, error=down,
                                              decision="fallback", next_model="gpt-4o-mini"), runid="r"),
                Event.of(LlmCallCompleted(call_id=call, provider="openai", model="gpt-4o-mini", attempt=2,
                                          latency_ms=100.0 * (n + 1), usage=Usage(input_tokens=10, output_tokens=5)),
                         runid="r")]
    out += [Event.of(LlmCallRequested(call_id="m", provider="openai", model="gpt-4o-mini"), runid="r"),
            Event.of(LlmCallCompleted(call_id="m", provider="openai", model="gpt-4o-mini", latency_ms=50.0,
                                      usage=Usage(input_tokens=10, output_tokens=5)), runid="r"),
            Event.of(ToolCallRequested(call_id="t", tool="search"), runid="r"),
            Event.of(ToolCallCompleted(call_id="t", tool="search", duration_ms=7.0), runid="r")]
    return out


def columns(header: str, line: str) -> dict[str, str]:
    """A row's cells by header name, checking that each sits under its header: the first column
    left-aligned with it, every other (the figures) right-aligned with it."""
    cell = re.compile(r"\S+(?: \S+)*")  # names and cells hold single spaces only ("FELL BACK")
    names, cells = list(cell.finditer(header)), list(cell.finditer(line))
    assert len(names) == len(cells), (header, line)
    assert names[0].start() == cells[0].start() == 0
    for name, value in zip(names[1:], cells[1:], strict=True):
        assert value.end() == name.end(), f"{value[0]!r} is not under {name[0]!r}:\n{header}\n{line}"
    return {n[0]: c[0] for n, c in zip(names, cells, strict=True)}


async def test_stats_rows_add_up_to_the_total_under_aligned_titled_headers(tether_home: Path) -> None:
    build(tether_home, MetricsView(), fallback_history())
    code, out, err = await run_tether("stats", home=tether_home)
    assert code == 0, err
    header, *rows, total, footer = out.splitlines()
    assert header.split("  ")[0] == "MODEL" and header == header.upper(), "titled like `tether runs`"
    assert "FELL BACK" in header and "GAVE UP" in header
    cells = {columns(header, r)["MODEL"]: columns(header, r) for r in [*rows, total]}
    assert set(cells) == {"gpt-4o-mini", "gpt-4o", "TOTAL"}
    assert cells["gpt-4o"]["CALLS"] == "0" and cells["gpt-4o"]["ATTEMPTS"] == "2"
    assert cells["gpt-4o"]["FELL BACK"] == "100%", "both of its attempts fell back"
    assert cells["gpt-4o-mini"]["CALLS"] == "3", "its own call and the two that fell back to it"
    for title in ("CALLS", "ATTEMPTS"):
        assert int(cells["TOTAL"][title]) == sum(int(cells[m][title]) for m in ("gpt-4o", "gpt-4o-mini")), title
    assert "a call that fell back counts under the model that answered it" in footer

    code, out, err = await run_tether("stats", "--by", "tool", home=tether_home)
    assert code == 0, err
    header, row, total, _ = out.splitlines()
    assert columns(header, row)["CALLS"] == "1" and columns(header, total)["CALLS"] == "1"


async def test_the_other_tables_are_titled_too(tether_home: Path) -> None:
    """`runs` and `cost` title their headers; so does `errors` now."""
    down = ErrorInfo(type="ServiceUnavailableError", status_code=503, message="down")
    build(tether_home, ErrorsView(), [Event.of(LlmCallAttemptFailed(call_id="c", provider="openai", model="m",
                                                                    attempt=1, error=down, decision="retry"),
                                               runid="r")])
    code, out, err = await run_tether("errors", home=tether_home)
    assert code == 0, err
    header = out.splitlines()[0]
    assert header == header.upper() and header.split()[0] == "COUNT"


# -- how far behind the log a view is ------------------------------------------------------------


def test_lag_notes_in_words() -> None:
    now = 1_000_000.0
    current = Freshness("traces", seq=40, at=now - 5, running=True, head=40)
    assert lag_note(current, now=now) is None
    assert lag_note(Freshness("traces", 40, now - 5, running=False, head=40), now=now) is None
    behind = lag_note(Freshness("traces", 28, now - 300, running=False, head=40), now=now)
    assert behind == ("note: the traces view is 12 events behind the log (its newest event is from 5 min ago) "
                      "and no projector is running: `tether up` (or `tether projector`) brings it up to date")
    catching = lag_note(Freshness("cost", 39, now - 2, running=True, head=40), now=now)
    assert catching == "note: the cost view is 1 event behind the log (its newest event is from 2 s ago); " \
                       "the projector is catching up"
    unknown = lag_note(Freshness("metrics", 40, now - 7200, running=False, head=None), now=now)
    assert unknown is not None and "no NATS server answers" in unknown and "from 2 h ago" in unknown


async def publish_run(bus: object, run: str) -> None:
    await bus.publish(Event.of(RunStarted(name="q"), runid=run, agentid="bot"))  # type: ignore[attr-defined]
    await bus.publish(Event.of(RunFinished(status="ok"), runid=run, agentid="bot"))  # type: ignore[attr-defined]


@pytest.mark.nats
async def test_view_commands_say_how_far_behind_the_log_they_are(fresh_nats_server: NatsServer,
                                                                   tether_home: Path) -> None:
    """A real projector (`tether projector`) keeps the views current: no note. Stopped, with new
    events in the log, every view command says how many events behind it is, and how old its
    newest event is; with no server, that nothing can say how many."""
    env = url_env(tether_home, fresh_nats_server.url)
    async with await connect(fresh_nats_server.url, home=tether_home) as bus:
        await publish_run(bus, "first")
    proc = await asyncio.create_subprocess_exec(*TETHER, "projector", "--processes", "0", env=env,
                                                cwd=tether_home.parent, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert "projector running" in line and "folding the log's 2 events from the start" in line, line
        deadline = time.monotonic() + 60
        while True:  # until the views have the run, both its events: a running projector, caught up: no note
            code, out, err = await run_with(env, *TETHER, "runs", cwd=tether_home.parent)
            if code == 0 and "first" in out and err == "":
                break
            assert time.monotonic() < deadline, (code, out, err)
            await asyncio.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 30)

    async with await connect(fresh_nats_server.url, home=tether_home) as bus:
        await publish_run(bus, "second")
    for command in ("runs", "cost", "errors", "stats"):
        code, out, err = await run_with(env, *TETHER, command, cwd=tether_home.parent)
        assert code == 0, err
        view = {"runs": "traces", "stats": "metrics"}.get(command, command)
        assert re.search(rf"^note: the {view} view is 2 events behind the log \(its newest event is from \d+ s ago\) "
                         r"and no projector is running: `tether up` \(or `tether projector`\) brings it up to date$",
                         err, re.M), (command, err)
    code, out, err = await run_with(env, *TETHER, "trace", "first", cwd=tether_home.parent)
    assert code == 0 and "2 events behind the log" in err, err

    await asyncio.to_thread(fresh_nats_server.stop)
    code, out, err = await run_with(env, *TETHER, "runs", cwd=tether_home.parent)
    assert code == 0 and "first" in out, err
    assert "no projector is running and no NATS server answers" in err and "newer events, if any, are missing" in err


async def test_a_projector_holding_the_views_gets_no_note(tether_home: Path) -> None:
    """The probe takes the views' lock shared for an instant: a projector holding it is seen."""
    build(tether_home, TracesView(), [Event.of(RunStarted(name="q"), runid="r")])
    with open(tether_home / "views" / ".lock", "a+") as held:  # noqa: ASYNC230 - a lock, held
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, out, err = await run_tether("runs", home=tether_home)
    assert code == 0 and "r " in out, err
    assert err == "", "a running projector, and no server to ask for the head: nothing to say"
    code, out, err = await run_tether("runs", home=tether_home)
    assert "no projector is running and no NATS server answers" in err


# -- the README's instrument example, as a newcomer runs it --------------------------------------


async def test_instrument_without_a_server_exits_cleanly_and_stops_the_server_it_started(tmp_path: Path) -> None:
    """No TETHER_NATS_URL: the background bus starts NATS for the script; at exit it must stop it,
    quietly (it raised `cannot schedule new futures after shutdown` and left the server running)."""
    script = tmp_path / "agent.py"
    script.write_text(
        "import asyncio, openai, tether\n"
        "from tether.testing import FakeProvider\n"
        "async def main():\n"
        "    async with FakeProvider() as fake:\n"
        "        client = tether.instrument(openai.AsyncOpenAI(base_url=fake.url, api_key='sk-x'))\n"
        "        async with client, tether.run(agent='bot'):\n"
        "            await client.chat.completions.create(model='gpt-4o-mini', messages=[{'role': 'user',"
        " 'content': 'hi'}])\n"
        "    print('done')\n"
        "asyncio.run(main())\n")
    home = tmp_path / ".tether"
    code, out, err = await run_with(cli_env(home), sys.executable, str(script), cwd=tmp_path, timeout=120)
    pids = {int(p.stem.split("_")[1]) for p in (home / "run").glob("nats-server_*.ports")}
    try:
        assert code == 0 and out.strip() == "done", err
        assert err == "", err
        assert not (home / "server.json").exists(), "the embedded server was left running"
        assert not [pid for pid in pids if exists(pid)]
    finally:
        for pid in pids:
            if exists(pid):
                os.kill(pid, signal.SIGKILL)


# -- Bus.drain: flush is durable, drain is in the stream ------------------------------------------


@pytest.mark.nats
async def test_flush_is_durable_drain_is_in_the_stream(fresh_nats_server: NatsServer, tether_home: Path) -> None:
    from tether.testing import collect

    bus = await connect(fresh_nats_server.url, home=tether_home, ack_timeout_s=0.5)
    try:
        await asyncio.to_thread(fresh_nats_server.stop)
        run = f"drain-{uuid7()}"
        for _ in range(3):
            await bus.emit(Event.of(RunStarted(name="q"), runid=run))
        await bus.flush()
        assert bus.publisher.outbox_depth() == 3, "flush: durable, in the local outbox"
        with pytest.raises(TimeoutError):
            await bus.drain(timeout=0.5)  # no server: the events wait, safe
        await asyncio.to_thread(fresh_nats_server.start)
        await bus.drain(timeout=30)
        assert bus.publisher.outbox_depth() == 0
        from tether.bus import event_filter

        assert len(await collect(bus, event_filter(run=run))) == 3, "drain: in the stream"
    finally:
        await bus.close(timeout=2)


def test_a_projector_starting_during_a_probe_waits_for_it(tmp_path: Path) -> None:
    """A view command's probe holds the views' lock shared for an instant; a projector that starts
    in that instant waits for it instead of giving up as if another projector ran."""
    import threading

    from tether.projections._runner import _lock

    directory = tmp_path / "views"
    directory.mkdir()
    probe = open(directory / ".lock", "a+")  # noqa: SIM115 - released by the timer
    fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)
    threading.Timer(0.03, lambda: (fcntl.flock(probe, fcntl.LOCK_UN), probe.close())).start()
    handle = _lock(directory)
    fcntl.flock(handle, fcntl.LOCK_UN)
    handle.close()

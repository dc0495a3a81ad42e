"""``tether otel-export`` and the exporter inside ``tether up``: views built here, a real OTLP receiver."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tether.cli._otel import add_commands, default_endpoint, parse_headers, run
from tether.projections import Item, Projector, TracesView, ViewStore, view_path
from tether.projections.otel import otel_available, state_path
from tether.schemas import (
    ErrorInfo,
    Event,
    LlmCallCompleted,
    LlmCallFailed,
    LlmCallRequested,
    Payload,
    RunFinished,
    RunStarted,
    Usage,
)
from tether.testing import NatsServer

if TYPE_CHECKING:
    from tether.testing.otlp import OtlpReceiver

pytestmark = [pytest.mark.anyio, pytest.mark.skipif(not otel_available(),
                                                    reason="needs the otel extra: pip install 'tether[otel]'")]

ROOT = Path(__file__).resolve().parents[2]
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def ev(payload: Payload, ago: float, run: str = "run-1") -> Event:
    return Event.of(payload, time=datetime.fromtimestamp(time.time() - ago, UTC), runid=run, agentid="bot",
                    traceparent=TRACEPARENT)


def a_run(run: str = "run-1", ago: float = 100) -> list[Event]:
    return [
        ev(RunStarted(name="ask"), ago, run),
        ev(LlmCallRequested(call_id=f"{run}-c1", provider="openai", model="gpt-4o"), ago - 1, run),
        ev(LlmCallCompleted(call_id=f"{run}-c1", provider="openai", model="gpt-4o",
                            usage=Usage(input_tokens=12, output_tokens=3)), ago - 2, run),
        ev(LlmCallRequested(call_id=f"{run}-c2", provider="openai", model="gpt-4o"), ago - 3, run),
        ev(LlmCallFailed(call_id=f"{run}-c2", provider="openai", model="gpt-4o", attempts=1,
                         error=ErrorInfo(type="BadRequestError", status_code=400)), ago - 4, run),
        ev(RunFinished(status="error"), ago - 5, run),
    ]


def build(home: Path, events: Sequence[Event], start: int = 1) -> None:
    store = ViewStore(TracesView(), view_path(home / "views", "traces", TracesView.version))
    store.apply_batch([Item(i, e) for i, e in enumerate(events, start)])
    store.mark_complete()
    store.close()


def parser() -> argparse.ArgumentParser:
    def common(p: argparse.ArgumentParser) -> None:  # what tether.cli passes: --url, --home, -v
        p.add_argument("--url")
        p.add_argument("--home", type=Path)
        p.add_argument("-v", "--verbose", action="store_true")

    top = argparse.ArgumentParser(prog="tether")
    add_commands(top.add_subparsers(dest="command"), common)
    return top


async def tether(home: Path, *argv: str) -> int:
    return await run(parser().parse_args(["otel-export", *argv, "--home", str(home)]))


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    from tether.testing.otlp import OtlpReceiver

    with OtlpReceiver() as r:
        yield r


async def test_once_sends_what_finished_then_nothing_new(tmp_path: Path, receiver: OtlpReceiver,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    build(tmp_path, a_run())
    assert await tether(tmp_path, "--endpoint", receiver.url, "--header", "Authorization=Bearer t0k") == 0
    out = capsys.readouterr().out
    assert f"sent 3 span(s) to {receiver.url}/v1/traces" in out
    assert sorted((s.name, s.status) for s in receiver.spans()) == [
        ("chat gpt-4o", "ERROR"), ("chat gpt-4o", "UNSET"), ("invoke_agent bot", "ERROR")]
    assert {s.trace_id for s in receiver.spans()} == {TRACEPARENT.split("-")[1]}
    [root] = [s for s in receiver.spans() if s.name == "invoke_agent bot"]
    assert root.status_message == "1 call failed: BadRequestError (chat gpt-4o)", "says what failed"
    assert {(s.resource["service.name"], s.resource["openinference.project.name"]) for s in receiver.spans()} == {
        ("tether", "tether")}
    assert receiver.requests[0].headers["authorization"] == "Bearer t0k"
    assert state_path(tmp_path, receiver.url).exists(), "what was sent is remembered per receiver"

    assert await tether(tmp_path, "--endpoint", receiver.url, "--once", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["sent"], report["failed"], report["endpoint"]) == (0, 0, f"{receiver.url}/v1/traces")
    assert len(receiver.requests) == 1


async def test_a_refusing_receiver_fails_the_run_and_the_spans_go_next_time(
        tmp_path: Path, receiver: OtlpReceiver, capsys: pytest.CaptureFixture[str]) -> None:
    build(tmp_path, a_run())
    receiver.refuse(1, status=400)
    assert await tether(tmp_path, "--endpoint", receiver.url) == 1
    assert "could not send 3 span(s)" in capsys.readouterr().err
    assert await tether(tmp_path, "--endpoint", receiver.url) == 0
    assert len(receiver.spans()) == 3


async def test_the_service_name_is_the_project(tmp_path: Path, receiver: OtlpReceiver,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    build(tmp_path, a_run())
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    assert await tether(tmp_path, "--endpoint", receiver.url, "--service-name", "research-agent") == 0
    assert {(s.resource["service.name"], s.resource["openinference.project.name"]) for s in receiver.spans()} == {
        ("research-agent", "research-agent")}, "Phoenix files spans under openinference.project.name"


async def test_content_capture_needs_the_log(tmp_path: Path, receiver: OtlpReceiver,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    build(tmp_path, a_run())
    assert await tether(tmp_path, "--endpoint", receiver.url, "--content-limit", "0") == 2
    assert "--content-limit 0: give a number of characters, at least 1" in capsys.readouterr().err
    assert await tether(tmp_path, "--endpoint", receiver.url, "--capture-content", "--url",
                        "nats://127.0.0.1:9") == 1
    err = capsys.readouterr().err
    assert "--capture-content reads prompts and results from the log" in err and "without content" in err
    assert receiver.spans() == [], "nothing sent half-way"


def test_tether_up_otel_options_go_with_an_endpoint(tmp_path: Path) -> None:
    done = subprocess.run([str(Path(sys.executable).with_name("tether")), "up", "--otel-capture-content",
                           "--otel-service-name", "x"], env={**os.environ, "TETHER_HOME": str(tmp_path)},
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "--otel-service-name and --otel-capture-content go with --otel-endpoint URL" in done.stderr
    assert not (tmp_path / "nats").exists(), "nothing started"


async def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    assert await tether(tmp_path, "--endpoint", "localhost:4318") == 2
    assert "not an http(s) URL" in capsys.readouterr().err
    assert await tether(tmp_path, "--endpoint", "http://127.0.0.1:9", "--header", "nothing") == 2
    assert "NAME=VALUE" in capsys.readouterr().err
    assert await tether(tmp_path, "--endpoint", "http://127.0.0.1:9") == 1
    assert "no traces view yet" in capsys.readouterr().err
    assert parse_headers(["a=b=c", "X-Key: v"]) == {"a": "b=c", "X-Key": "v"}
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    assert default_endpoint() == "http://collector:4318"


async def test_follow_sends_runs_as_they_finish_and_stops_on_a_signal(tmp_path: Path, receiver: OtlpReceiver) -> None:
    build(tmp_path, a_run("run-1"))
    script = ("import argparse, asyncio, sys\n"
              "from tether.cli._otel import add_commands, run\n"
              "p = argparse.ArgumentParser(); sub = p.add_subparsers(dest='command')\n"
              "add_commands(sub, lambda q: (q.add_argument('--url'), q.add_argument('--home')))\n"
              "sys.exit(asyncio.run(run(p.parse_args(sys.argv[1:]))))\n")
    env = {**os.environ, "TETHER_NATS_URL": "", "TETHER_HOME": str(tmp_path)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, "otel-export", "--follow", "--interval", "0.1", "--endpoint", receiver.url,
        "--home", str(tmp_path), cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        await _until(lambda: len(receiver.spans()) == 3)
        build(tmp_path, a_run("run-2", ago=50), start=7)  # the projector applied more of the log
        await _until(lambda: len(receiver.spans()) == 6)
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert "sent 3 span(s)" in out.decode()


async def _until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


@pytest.mark.nats
async def test_the_follower_in_tether_up_is_woken_by_the_projector(fresh_nats_server: NatsServer, tmp_path: Path,
                                                                   receiver: OtlpReceiver) -> None:
    from tether.bus import connect
    from tether.cli._otel import Follower
    async with await connect(fresh_nats_server.url, home=tmp_path / "home") as bus:
        async with Projector(bus, [TracesView()], tmp_path / "views"):
            follower = await Follower.start(bus, tmp_path, receiver.url, interval=60)  # only a wake-up sends
            try:
                for event in a_run(ago=10):
                    await bus.publish(event)
                await bus.flush()
                await _until(lambda: len(receiver.spans()) == 3)
            finally:
                final = await follower.stop()
        assert final is not None and final.sent == 0

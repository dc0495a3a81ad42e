"""`tether resume` and `tether runs resolve` as users run them: an agent process with an ``@tether.entrypoint``
SIGKILLed inside a tool that is not idempotent, then resumed from the command line."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
import textwrap
from pathlib import Path

import pytest

from tether import run as tether_run
from tether.testing import NatsServer

pytestmark = [pytest.mark.anyio, pytest.mark.nats]

AGENT = '''
import os, signal, sqlite3
import tether

BANK = os.environ["BANK"]


@tether.tool
def deposit(amount: int, idempotency_key: str = "") -> dict:
    db = sqlite3.connect(BANK)
    db.execute("INSERT INTO deposits VALUES (?, ?)", (idempotency_key, amount))
    db.commit()
    if os.environ.get("DIE_IN") == str(amount):
        os.kill(os.getpid(), signal.SIGKILL)  # the effect happened; its end is never recorded
    return {"deposited": amount}


@tether.tool(idempotent=True)
def balance() -> int:
    return sum(a for (a,) in sqlite3.connect(BANK).execute("SELECT amount FROM deposits"))


@tether.entrypoint(agent="bank-bot")
def main(task: dict) -> dict:
    for amount in task["amounts"]:
        deposit(amount)
    return {"balance": balance()}
'''


def env_for(home: Path, url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env.update(TETHER_HOME=str(home), TETHER_NATS_URL=url, NO_COLOR="1", PYTHONUNBUFFERED="1", **extra)
    return env


async def run(*args: str, cwd: Path, env: dict[str, str], timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(*args, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_a_run_killed_inside_a_non_idempotent_tool_is_resolved_and_resumed_from_the_cli(
        nats_server: NatsServer, tmp_path: Path) -> None:
    (tmp_path / "bankagent.py").write_text(textwrap.dedent(AGENT))
    (tmp_path / "tether.toml").write_text('[resume.entrypoints]\nbank-bot = "bankagent:main"\n')
    bank = tmp_path / "bank.db"
    db = sqlite3.connect(bank)
    db.execute("CREATE TABLE deposits (key TEXT, amount INTEGER)")
    db.commit()
    env = env_for(tmp_path / "home", nats_server.url, BANK=str(bank))
    tether = (sys.executable, "-m", "tether")

    code, _, err = await run(sys.executable, "-c", "import bankagent; bankagent.main({'amounts': [5, 7, 9]}, "
                             "run_id='cli-run-1')", cwd=tmp_path, env={**env, "DIE_IN": "7"})
    assert code == -signal.SIGKILL, err

    code, out, err = await run(*tether, "resume", "cli-run-1", cwd=tmp_path, env=env)
    assert code == 3, (out, err)
    assert "tool call 1 (deposit" in err and "tether runs resolve cli-run-1 --happened" in err

    code, out, err = await run(*tether, "runs", "resolve", "cli-run-1", "--happened", "--result",
                               '{"deposited": 7}', "--note", "the bank has it", cwd=tmp_path, env=env)
    assert code == 0, err
    assert "tool call 1 (deposit" in out and "happened" in out

    code, out, err = await run(*tether, "resume", "cli-run-1", cwd=tmp_path, env=env)
    assert code == 0, (out, err)
    assert json.loads(out.split("finished: ", 1)[1]) == {"balance": 21}
    keys = [k for (k,) in sqlite3.connect(bank).execute("SELECT key FROM deposits")]
    assert [k.rsplit(":", 1)[0] for k in keys] == ["cli-run-1:0", "cli-run-1:1", "cli-run-1:2"], "each deposit once"



def test_resolve_and_resume_refuse_what_they_cannot_do_and_say_why(
        nats_server: NatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from tether.bus import connect
    from tether.cli import main

    async def finished_run() -> None:
        async with await connect(nats_server.url, home=tmp_path / "home") as bus:
            async with tether_run(agent="bank-bot", run_id="cli-done-1", bus=bus):
                pass
            from tether.adapters import Hub

            await Hub.of(bus).aclose()

    asyncio.run(finished_run())
    monkeypatch.chdir(tmp_path)
    common = ["--url", nats_server.url, "--home", str(tmp_path / "home")]

    def cli(*args: str) -> tuple[int, str]:
        code = main([*args, *common])
        return code, capsys.readouterr().err

    code, err = cli("runs", "resolve", "cli-done-1", "--happened", "--result", "{bad")
    assert code == 2 and "--result is not JSON" in err
    code, err = cli("runs", "resolve", "cli-done-1", "--not-happened", "--result", "1")
    assert code == 2 and "--result goes with --happened" in err
    code, err = cli("runs", "resolve", "cli-done-1", "--not-happened")
    assert code == 1 and "waits on no tool call" in err
    code, err = cli("runs", "resolve", "no-such-run", "--not-happened")
    assert code == 1 and "no events of run 'no-such-run'" in err
    code, err = cli("resume", "cli-done-1")
    assert code == 1 and "finished (ok): there is nothing to resume" in err
    code, err = cli("resume", "no-such-run")
    assert code == 1 and "no run.started of run 'no-such-run'" in err


def test_resume_interrupted_resumes_every_run_the_view_shows_interrupted(
        nats_server: NatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from datetime import UTC, datetime, timedelta

    from tether.bus import connect
    from tether.cli import main
    from tether.schemas import Event, RunStarted

    from .test_views_cli import write_views

    long_ago = datetime.now(UTC) - timedelta(hours=1)
    started = Event.of(RunStarted(input={"x": 1}), runid="cli-int-1", agentid="echo-bot", time=long_ago)

    async def publish() -> None:
        async with await connect(nats_server.url, home=tmp_path / "home") as bus:
            await bus.publish(started)

    asyncio.run(publish())
    write_views(tmp_path / "views", [started])
    (tmp_path / "echoagent.py").write_text("def main(task):\n    return {'echo': task}\n")
    (tmp_path / "tether.toml").write_text('[resume.entrypoints]\necho-bot = "echoagent:main"\n')
    monkeypatch.chdir(tmp_path)
    common = ["--url", nats_server.url, "--home", str(tmp_path / "home")]

    assert main(["resume", *common]) == 2
    assert "name a RUN, or pass --interrupted" in capsys.readouterr().err
    assert main(["resume", "--interrupted", "--views", str(tmp_path / "nothing"), *common]) == 1
    assert "no traces view in" in capsys.readouterr().err
    assert main(["resume", "--interrupted", "--heartbeat-s", "7200", "--views", str(tmp_path / "views"),
                 *common]) == 0
    assert capsys.readouterr().out.strip() == "no interrupted runs"
    assert main(["resume", "--interrupted", "--views", str(tmp_path / "views"), *common]) == 0
    assert 'run cli-int-1 resumed and finished: {"echo": {"x": 1}}' in capsys.readouterr().out
    assert main(["resume", "cli-int-1", *common]) == 1, "it finished"

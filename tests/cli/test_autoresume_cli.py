"""``tether worker --resume-interrupted`` as users run it: an agent process SIGKILLed between two tool calls,
two workers that resume interrupted runs (one told so by its flags, one by ``[worker]`` in tether.toml), and
the run resumed once, to ``ok``, by one of them."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tether.bus import connect
from tether.projections.traces import list_runs
from tether.schemas import Event, RunStarted
from tether.testing import NatsServer

from .test_processes import Child, folded, stopped_cleanly, user_env

pytestmark = pytest.mark.nats

AGENT = '''
import os, signal, sqlite3
import tether

BANK = os.environ["BANK"]


@tether.tool
def deposit(amount: int, idempotency_key: str = "") -> dict:
    db = sqlite3.connect(BANK)
    db.execute("INSERT INTO deposits VALUES (?, ?)", (idempotency_key, amount))
    db.commit()
    return {"deposited": amount}


@tether.entrypoint(agent="bank-bot")
def main(task: dict) -> dict:
    db = sqlite3.connect(BANK)
    db.execute("INSERT INTO entered VALUES (1)")  # the entry point's own side effect: once per (re)start
    db.commit()
    for amount in task["amounts"]:
        deposit(amount)
        if os.environ.get("DIE_AFTER") == str(amount):
            os.kill(os.getpid(), signal.SIGKILL)  # between two tool calls
    return {"total": sum(task["amounts"])}


def broken(task: dict) -> dict:
    raise RuntimeError("the broken agent breaks")
'''


def test_two_workers_resume_an_interrupted_run_once_and_survive_an_entry_point_that_fails(tmp_path: Path) -> None:
    (tmp_path / "bankagent.py").write_text(textwrap.dedent(AGENT))
    (tmp_path / "tether.toml").write_text('[resume.entrypoints]\nbank-bot = "bankagent:main"\n'
                                          'broken-bot = "bankagent:broken"\n\n'
                                          '[worker]\nresume_interrupted = true\nresume_every_s = 0.3\n'
                                          'resume_heartbeat_s = 1\n')
    bank = tmp_path / "bank.db"
    db = sqlite3.connect(bank)
    db.execute("CREATE TABLE deposits (key TEXT, amount INTEGER)")
    db.execute("CREATE TABLE entered (n INTEGER)")
    db.commit()
    home = tmp_path / "home"
    with NatsServer(tmp_path / "nats") as nats:
        env = user_env(TETHER_HOME=str(home), TETHER_NATS_URL=nats.url, BANK=str(bank))
        killed = subprocess.run([sys.executable, "-c", "import bankagent; bankagent.main({'amounts': [5, 7, 9]}, "
                                 "run_id='auto-run-1')"], cwd=tmp_path, env={**env, "DIE_AFTER": "7"},
                                capture_output=True, text=True, timeout=60)
        assert killed.returncode == -signal.SIGKILL, killed.stderr

        async def broken_run() -> None:  # an interrupted run whose entry point raises when resumed
            async with await connect(nats.url, home=home) as bus:
                await bus.publish(Event.of(RunStarted(input={"x": 1}), runid="auto-broken-1", agentid="broken-bot",
                                           time=datetime.now(UTC) - timedelta(hours=1)))

        asyncio.run(broken_run())
        option = ("--resume-interrupted", "--resume-every", "0.3", "--heartbeat-s", "1")
        workers = [Child("worker", cwd=tmp_path, env=env), Child("worker", *option, cwd=tmp_path, env=env)]
        projector = None
        try:
            for worker in workers:  # no views yet: each says so, and keeps running
                worker.wait_for(r"show interrupted \(no event for 1 s\), every 0.3 s")
                worker.wait_for(r"no traces view in .*run the projector")
                assert worker.proc.poll() is None and worker.on_uvloop()
            projector = Child("projector", "--processes", "0", cwd=tmp_path, env=env)
            projector.wait_for("projector running")
            folded(home / "views", "traces", lambda v: {r["run_id"]: r["status"] for r in list_runs(v)}.get(
                "auto-run-1") == "ok")
            deadline = time.monotonic() + 60
            while not all(line in "".join(w.output for w in workers) for line in (
                    "interrupted run auto-broken-1 failed", "run auto-run-1 resumed and finished")):
                assert time.monotonic() < deadline, [w.output for w in workers]
                time.sleep(0.05)
            assert all(w.proc.poll() is None for w in workers), "a failing entry point does not stop a worker"
            outputs = [w.output for w in workers]
            assert sum(o.count("run auto-run-1 resumed and finished") for o in outputs) == 1, outputs
            assert sum(o.count("failed again: RuntimeError: the broken agent breaks") for o in outputs) == 1, outputs
        finally:
            stopped_cleanly(*workers, *([projector] if projector else []))
    rows = sqlite3.connect(bank).execute("SELECT key, amount FROM deposits").fetchall()
    assert sorted(a for _, a in rows) == [5, 7, 9] and len({k for k, _ in rows}) == 3, "each deposit once"
    assert sqlite3.connect(bank).execute("SELECT count(*) FROM entered").fetchone()[0] == 2, \
        "the entry point ran twice: the killed start and one resume"


def test_worker_refuses_a_resume_period_that_is_not_a_positive_number(capsys: pytest.CaptureFixture[str]) -> None:
    from tether.cli import main

    for option in (["--resume-every", "0"], ["--heartbeat-s", "-1"]):
        assert main(["worker", "--resume-interrupted", *option, "--url", "nats://127.0.0.1:1"]) == 2
        assert "--resume-every and --heartbeat-s are seconds greater than 0" in capsys.readouterr().err


def test_worker_refuses_bad_resume_settings_in_tether_toml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tether.cli import main

    config = tmp_path / "tether.toml"
    for line, problem in (('resume_interrupted = "yes"', "worker.resume_interrupted: expected true or false"),
                          ("resume_every_s = 0", "worker.resume_every_s: must be positive, got 0"),
                          ('resume_heartbeat_s = "300"', "worker.resume_heartbeat_s: expected a number"),
                          ("resume_evry_s = 3", "worker.resume_evry_s: unknown key (did you mean 'resume_every_s'?)")):
        config.write_text(f"[worker]\n{line}\n")
        assert main(["worker", "--config", str(config), "--url", "nats://127.0.0.1:1"]) == 2
        assert f"tether worker: {config}: {problem}" in capsys.readouterr().err


def test_the_flags_win_over_the_worker_section() -> None:
    import argparse

    from tether.cli._reliability import resume_options
    from tether.middleware import WorkerConfig

    def given(interrupted: bool | None = None, every: float | None = None,
              heartbeat: float | None = None) -> argparse.Namespace:
        return argparse.Namespace(resume_interrupted=interrupted, resume_every=every, heartbeat_s=heartbeat)

    off, on = WorkerConfig(), WorkerConfig(resume_interrupted=True, resume_every_s=5.0, resume_heartbeat_s=60.0)
    assert resume_options(given(), off) is None
    assert resume_options(given(True), off) == (30.0, 300.0)
    assert resume_options(given(), on) == (5.0, 60.0)
    assert resume_options(given(None, 2.0), on) == (2.0, 60.0)
    assert resume_options(given(None, None, 9.0), on) == (5.0, 9.0)
    assert resume_options(given(False), on) is None

"""``tether eval`` as users run it (a child process, default settings): a dataset from recorded
runs, two replayed model variants, ``compare``'s exit code on a planted regression and on noise,
``--json`` everywhere, and bad input refused before anything is written."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

import tether.eval as ev
from tether.bus import Bus
from tether.cli import main
from tether.eval import Evals
from tether.schemas import Event, ExperimentStarted
from tether.testing import FakeProvider, NatsServer

from .conftest import record_run, unique

pytestmark = [pytest.mark.anyio, pytest.mark.nats]

ROOT = Path(__file__).resolve().parents[2]


async def tether_eval(*args: str, url: str, home: Path, fake_url: str = "", timeout: float = 60) -> tuple[
        int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env.update(TETHER_HOME=str(home), TETHER_NATS_URL=url, NO_COLOR="1", SAMPLE_AGENT_BASE_URL=fake_url)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "tether", "eval", *args, env=env, cwd=ROOT,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def as_json(out: str) -> Any:
    return json.loads(out)


async def test_dataset_experiments_and_the_ci_gate(nats_server: NatsServer, bus: Bus, fake: FakeProvider,
                                                   evals: Evals, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    home, url = tmp_path / "home", nats_server.url
    agent, ds = unique("support-bot"), unique("qa")
    runs = [await record_run(bus, agent, f"where is parcel {n}?") for n in range(6)]
    failed = await record_run(bus, agent, "fail on parcel 6")

    errors: list[str] = []

    def cli(*args: str) -> tuple[int, Any]:
        code = main(["eval", *args, "--url", url, "--home", str(home)])
        captured = capsys.readouterr()
        errors.append(captured.err)
        return code, captured.out

    capsys.readouterr()
    # two commands as child processes (what users run: on uvloop, the agent imported by its entry
    # point); the others through tether.cli.main, in a thread (it runs its own event loop)
    code, out = await asyncio.to_thread(cli, "dataset", "add", ds, *[f"--from-run={r}" for r in runs], "--json")
    assert code == 0
    added = as_json(out)
    assert added["added"] == 6
    code, out = await asyncio.to_thread(cli, "dataset", "add", ds, "--agent", agent, "--status", "error",
                                        "--since", "1h")
    assert code == 0 and "added 1 item(s)" in out

    names = {m: unique(m.replace(".", "")) for m in ("gpt-4o-mini", "gpt-4o")}
    for model, name in names.items():
        args = ("run", ds, "--agent-fn", "tests.eval.sample_agent:answer", "--model", model, "--replay", "--scorer",
                "exact", "--scorer", "called_tool:lookup", "--name", name, "--as-of", str(added["seq"]), "--json")
        if model == "gpt-4o":
            code, out, err = await tether_eval(*args, url=url, home=home, fake_url=fake.url)
            assert code == 0, err
            assert f"eval {name}  [####################] 6/6" in err  # the progress bar, on stderr
        else:
            code, out = await asyncio.to_thread(cli, *args)
            assert code == 0
        result = as_json(out)
        assert (result["ran"], result["tools_replayed"]) == (6, 6)
        assert result["scores"]["exact"]["pass_rate"] == (0.0 if model == "gpt-4o" else 1.0)

    code, out, err = await tether_eval("compare", names["gpt-4o-mini"], names["gpt-4o"], "--tolerance", "0.1",
                                       "--json", url=url, home=home)
    assert code == 1, "a significant regression larger than the tolerance fails CI"
    report = as_json(out)
    exact = next(s for s in report["scorers"] if s["scorer"] == "exact")
    assert (exact["delta"], exact["pass_to_fail"], exact["p_value"]) == (-1.0, 6, 2 / 64)
    assert report["regressed"] is True and len(report["items"]) == 6 and report["cost_delta"] != 0

    # noise: three items flip either way out of thirty; the drop is within chance
    noisy = [unique("noise-a"), unique("noise-b")]
    for name, flips in zip(noisy, [(), (1, 2, 3)], strict=True):
        await evals.publish([Event.of(ExperimentStarted(experiment=name, dataset=ds))])
        for n in range(30):
            passed = (n % 3 != 0) != (n in flips)
            await evals.record_score(name, f"i{n}", "exact", ev.Score.verdict(passed))

    # the reading commands, through tether.cli.main (in a thread: it runs its own event loop)
    code, out = await asyncio.to_thread(cli, "dataset", "show", ds, "--as-of", str(added["seq"]), "--json")
    assert sorted(i["id"] for i in as_json(out)) == sorted(runs)
    code, out = await asyncio.to_thread(cli, "dataset", "show", ds)
    assert failed in out and code == 0
    code, out = await asyncio.to_thread(cli, "dataset", "history", ds, "--json")
    assert [c["op"] for c in as_json(out)] == ["added"] * 7
    code, out = await asyncio.to_thread(cli, "show", names["gpt-4o"], "--json")
    shown = as_json(out)
    assert shown["variant"]["model"] == "gpt-4o" and shown["replay"] is True and shown["trials"] == 6
    code, out = await asyncio.to_thread(cli, "list", "--json")
    assert set(names.values()) <= {e["experiment"] for e in as_json(out)}
    code, out = await asyncio.to_thread(cli, "compare", names["gpt-4o-mini"], names["gpt-4o"], "--tolerance", "1")
    assert code == 0 and "no significant regression" in out, "a drop within the tolerance passes"
    code, _ = await asyncio.to_thread(cli, "compare", "no-such-experiment", names["gpt-4o"])
    assert code == 2 and "no experiment 'no-such-experiment' (`tether eval list`)" in errors[-1]
    code, out = await asyncio.to_thread(cli, "compare", *noisy)
    assert code == 0 and "exact: 0.667 → 0.633" in out and "no significant regression" in out

    gold = tmp_path / "gold.jsonl"
    gold.write_text("".join(json.dumps({"id": r, "passed": i % 2 == 0}) + "\n" for i, r in enumerate(runs)))
    code, out = await asyncio.to_thread(cli, "calibrate", names["gpt-4o"], "--scorer", "exact", "--gold", str(gold),
                                        "--json")
    assert code == 0
    cal = as_json(out)
    assert (cal["agreement"], cal["tpr"], cal["fpr"]) == (0.5, 0.0, 0.0)


@pytest.mark.parametrize(("args", "error"), [
    (["dataset", "add", "ds"], "give one source: --from-run RUN"),
    (["dataset", "add", "ds", "--since", "7d", "--from-run", "r"], "--since filters --agent's runs"),
    (["dataset", "add", "ds", "--file", "{bad}"], "bad.jsonl:1: not JSON"),
    (["run", "ds", "--agent-fn", "tests.eval.sample_agent:answer", "--scorer", "bogus"], "not a scorer"),
    (["run", "ds", "--agent-fn", "nosuchmodule_q:fn"], "cannot import nosuchmodule_q"),
    (["run", "ds", "--agent-fn", "tests.eval.sample_agent:answer", "--param", "novalue"], "expected KEY=VALUE"),
    (["calibrate", "exp", "--gold", "{bad}"], 'expected {"id": ITEM, "passed": true|false}'),
    (["run", "ds", "--agent-fn", "tests.eval.sample_agent:answer", "--policy", "{missing}"], "no such file"),
    (["run", "ds", "--agent-fn", "tests.eval.sample_agent:answer", "--policy", "{bad}"], "not valid TOML"),
])
def test_bad_input_is_refused_before_anything_is_written(args: list[str], error: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Refused before connecting (no server is named: none is needed to say what is wrong)."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    args = [a.replace("{bad}", str(bad)).replace("{missing}", str(tmp_path / "missing.toml")) for a in args]
    code = main(["eval", *args, "--home", str(tmp_path / "home")])
    assert code == 2 and error in capsys.readouterr().err

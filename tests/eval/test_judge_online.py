"""The LLM judge (through tether, under a budget, its rubric and reasoning kept), its calibration
against gold labels, and online scoring of live runs."""

from __future__ import annotations

import asyncio
import json
import zlib
from pathlib import Path

import anyio
import openai
import pytest

import tether.eval as ev
from tether.bus import Bus
from tether.cli import main
from tether.eval import Evals
from tether.eval._online import sampled
from tether.testing import FakeProvider

from .conftest import record_run, unique

pytestmark = [pytest.mark.anyio, pytest.mark.nats]


async def canned(question: str, variant: ev.Variant) -> str:
    return f"answer to {question}"


async def test_judge_under_a_budget_with_its_reasoning_kept(bus: Bus, fake: FakeProvider, evals: Evals) -> None:
    name = unique("judged")
    await evals.add_items(name, [{"id": f"i{n}", "input": f"question {n}", "expected": "yes"} for n in range(4)])
    rubric = "The answer addresses the question."
    client = openai.AsyncOpenAI(base_url=fake.url, api_key="sk-judge")
    stingy = ev.judge(client, model="gpt-4o-mini", rubric=rubric, budget_usd=1e-9)
    first = await ev.run_experiment(evals, name, canned, scorers=[stingy], concurrency=1, progress=False)
    scores = await evals.scores(first.experiment)
    judged = [s for s in scores if s.passed is not None]
    assert len(judged) == 1 and stingy.refused == 3 and stingy.spent > 0
    refused = [s for s in scores if s.passed is None]
    assert all(s.reason is not None and "budget" in s.reason and s.value is None for s in refused)
    meta = judged[0].metadata
    assert meta["rubric"] == rubric and meta["reasoning"] == "fake reasoning" and meta["model"] == "gpt-4o-mini"
    trace = await ev.read_run(bus, meta["judge_run_id"])
    assert trace.agent == "eval-judge" and trace.llm_calls == 1 and trace.output == {"passed": True,
                                                                                      "reasoning": "fake reasoning"}

    generous = ev.judge(client, model="gpt-4o-mini", rubric=rubric, budget_usd=1.0)
    second = await ev.run_experiment(evals, name, canned, scorers=[generous], progress=False)
    await client.close()
    gold = {"i0": True, "i1": False, "i2": True, "i3": False}
    report = ev.judge_report(await evals.scores(second.experiment), "judge", gold)
    # the fake judge passes everything: it agrees on half, and its pass rate cannot be corrected
    assert (report.calibration.agreement, report.calibration.tpr, report.calibration.fpr) == (0.5, 1.0, 1.0)
    assert report.observed_pass_rate == 1.0 and report.corrected_pass_rate is None
    assert report.note is not None and "no better than chance" in report.note
    with pytest.raises(ValueError, match="none of the 1 gold-labelled items"):
        ev.judge_report(await evals.scores(second.experiment), "judge", {"other": True})


def test_judge_report_corrects_the_pass_rate() -> None:
    rows = [ev.ScoreRow(f"i{n}", "judge", None, passed, None, {}, None)
            for n, passed in enumerate([True, True, True, False, True, False, True, True, False, True])]
    gold = {"i0": True, "i1": True, "i2": False, "i3": False, "i4": True, "i5": False}
    report = ev.judge_report(rows, "judge", gold)
    c = report.calibration
    assert (c.tpr, c.fpr) == (1.0, pytest.approx(1 / 3))
    assert report.observed_pass_rate == 0.7
    assert report.corrected_pass_rate == pytest.approx((0.7 - 1 / 3) / (1 - 1 / 3))


def test_sampling_is_by_run_id() -> None:
    ids = [f"run-{n}" for n in range(2000)]
    share = sum(sampled(i, 0.25) for i in ids) / len(ids)
    assert 0.2 < share < 0.3
    assert [sampled(i, 0.25) for i in ids[:50]] == [sampled(i, 0.25) for i in ids[:50]]
    assert all(sampled(i, 1.0) for i in ids[:10]) and not any(sampled(i, 0.0) for i in ids[:10])
    assert sampled("run-1", 0.5) == (zlib.crc32(b"run-1") / 0xFFFFFFFF < 0.5)


async def test_online_scorers_score_live_runs(bus: Bus, fake: FakeProvider, evals: Evals, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    agent, name = unique("live-bot"), unique("online")
    scorer = ev.OnlineScorer(evals, name, [ev.called_tool("lookup"), ev.no_dead_letters(),
                                           ev.contains("fake reply")], agent=agent, rate=1.0)
    async with scorer:
        runs = [await record_run(bus, agent, f"where is parcel {n}?") for n in range(2)]
        failed = await record_run(bus, agent, "fail here")
        await record_run(bus, unique("other-bot"), "not this agent's run")
        with anyio.fail_after(60):
            while len(await evals.scores(f"online:{name}")) < 9:  # noqa: ASYNC110 - the scores are in the log
                await asyncio.sleep(0.05)
    scores = await evals.scores(f"online:{name}")
    assert {s.item_id for s in scores} == {*runs, failed}
    assert all(s.passed for s in scores if s.item_id in runs)
    assert [s.passed for s in scores if s.item_id == failed and s.scorer == "contains"] == [False]
    assert scorer.scored == 3
    shown = await asyncio.to_thread(main, ["eval", "show", f"online:{name}", "--json", "--url", bus.servers[0],
                                           "--home", str(tmp_path / "home")])
    assert shown == 0
    summary = json.loads(capsys.readouterr().out)["scores"]
    assert summary["called_tool:lookup"]["pass_rate"] == 1.0 and summary["contains"]["passed"] == 2
    with pytest.raises(ValueError, match="between 0 and 1"):
        ev.OnlineScorer(evals, name, [ev.no_dead_letters()], rate=2)

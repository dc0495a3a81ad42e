"""Experiments over a dataset built from recorded runs: two model variants on the fake provider
(whose replies differ by model, deterministically), replay with the tools' results read from the
log (no tool runs), every call linked to its item, the comparison's deltas as predicted, and the
eval view rebuilt by replay equal to the live one."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest

import tether
import tether.eval as ev
from tether.adapters import Hub, RecordedResult, RecordedToolError, RecordedTools, ReplayMismatch, recorded_tools
from tether.bus import Bus
from tether.eval import Evals, Variant
from tether.middleware import PolicyConfigError
from tether.projections import Projector, replay
from tether.schemas import RunStarted
from tether.testing import FakeProvider, reply_text

from . import sample_agent
from .conftest import SEED, digest, record_run, unique

pytestmark = [pytest.mark.anyio, pytest.mark.nats]

ITEMS = 6


async def test_two_models_replayed_then_compared(bus: Bus, fake: FakeProvider, evals: Evals, tmp_path: Path) -> None:
    live = await Projector(bus, [ev.EvalView()], tmp_path / "live", durable=None).start()
    try:
        agent, name = unique("support-bot"), unique("qa")
        runs = [await record_run(bus, agent, f"where is parcel {n}?") for n in range(ITEMS)]
        await evals.add_runs(name, runs)
        sources = {r: await ev.read_run(bus, r) for r in runs}
        prompts = {r: sample_agent.prompt_of(t.input, t.tools[0].result) for r, t in sources.items()}

        scorers = [ev.exact(), ev.custom(lambda c: digest(c.output), name="digest", kind="numeric"),
                   ev.called_tool("lookup"), ev.no_dead_letters()]
        lookups = len(sample_agent.LOOKUPS)
        bar = io.StringIO()
        a = await ev.run_experiment(evals, name, sample_agent.answer, variant=Variant(model="gpt-4o-mini"),
                                    scorers=scorers, replay=True, concurrency=3, progress=bar, name=unique("A"))
        b = await ev.run_experiment(evals, name, sample_agent.answer, variant=Variant(model="gpt-4o"),
                                    scorers=scorers, replay=True, concurrency=3, progress=False, name=unique("B"))
        assert len(sample_agent.LOOKUPS) == lookups, "a replay calls no tool: results come from the log"
        assert a.tools_replayed == b.tools_replayed == ITEMS and a.errors == b.errors == 0
        assert bar.getvalue().endswith(f"] {ITEMS}/{ITEMS}  errors 0  ${a.cost_usd:.4f}\n")

        # the same model, the same tool results: the recorded answers, exactly; another model: its own
        trials_a = {t.item_id: t for t in await evals.trials(a.experiment)}
        trials_b = {t.item_id: t for t in await evals.trials(b.experiment)}
        for run_id, trace in sources.items():
            assert trials_a[run_id].output == trace.output
            assert trials_b[run_id].output == reply_text(prompts[run_id], model="gpt-4o", seed=SEED)
            assert trials_b[run_id].cost_usd is not None and trials_b[run_id].cost_usd > 0

        # every call of a trial is in a run linked to the experiment's item
        replayed = await ev.read_run(bus, trials_b[runs[0]].run_id)
        started = next(e.data for e in replayed.events if isinstance(e.data, RunStarted))
        assert set(started.tags) == {"eval", f"experiment:{b.experiment}", f"item:{runs[0]}"}
        assert started.metadata["eval.replay_of"] == runs[0] and started.metadata["eval.variant"]["model"] == "gpt-4o"
        assert replayed.models == ("gpt-4o",) and replayed.called_tool("lookup")

        compared = ev.compare(a.experiment, b.experiment, await evals.scores(a.experiment),
                              await evals.scores(b.experiment), await evals.trials(a.experiment),
                              await evals.trials(b.experiment), tolerance=0.1)
        by = {d.scorer: d for d in compared.scorers}
        assert (by["exact"].mean_a, by["exact"].mean_b, by["exact"].pass_to_fail) == (1.0, 0.0, ITEMS)
        assert by["exact"].p_value == pytest.approx(2 / 2**ITEMS) and by["exact"].regression
        predicted = [digest(reply_text(prompts[r], model="gpt-4o", seed=SEED))
                     - digest(reply_text(prompts[r], model="gpt-4o-mini", seed=SEED)) for r in runs]
        assert by["digest"].kind == "numeric" and by["digest"].delta == pytest.approx(sum(predicted) / ITEMS)
        assert [i["scores"]["digest"]["delta"] for i in compared.items] == [predicted[runs.index(i["item_id"])]
                                                                            for i in compared.items]
        assert by["called_tool:lookup"].delta == 0 and not by["no_dead_letters"].regression

        # without replay the tools run again, and the world has changed (the lookup counts up)
        c = await ev.run_experiment(evals, name, sample_agent.answer, variant=Variant(model="gpt-4o-mini"),
                                    scorers=[ev.exact()], progress=False, name=unique("C"))
        assert len(sample_agent.LOOKUPS) == lookups + ITEMS and c.tools_replayed == 0
        assert all(s.passed is False for s in await evals.scores(c.experiment))

        # the eval view: the live projector's, a replay's and this client's copy hold the same rows
        await live.catch_up()
        live_sum = live.stores["eval"].checksum()
    finally:
        await live.stop()
    rebuilt = await replay(bus, [ev.EvalView()], tmp_path / "rebuilt")
    assert rebuilt["eval"] == live_sum
    await evals.sync()
    assert evals.store.checksum() == live_sum


async def test_budget_skips_items_and_agent_errors_are_recorded(bus: Bus, fake: FakeProvider, evals: Evals) -> None:
    name = unique("qa")
    await evals.add_items(name, [{"id": f"q{n}", "input": f"where is parcel {n}?"} for n in range(3)]
                          + [{"id": "bad", "input": "fail on this one"}])
    result = await ev.run_experiment(evals, name, sample_agent.answer, scorers=[ev.contains("fake reply")],
                                     concurrency=1, budget_usd=1e-9, progress=False)
    # items run in id order: "bad" fails before any LLM call (it costs nothing), q0 spends the budget
    assert (result.ran, result.errors, result.skipped) == (2, 1, 2)
    assert sorted(result.run_ids) == ["bad", "q0"] and result.cost_usd > 1e-9
    everything = await ev.run_experiment(evals, name, sample_agent.answer,
                                         scorers=[ev.contains("fake reply"), ev.called_tool("lookup")],
                                         concurrency=2, progress=False)
    assert everything.ran == 4 and everything.errors == 1
    bad = next(t for t in await evals.trials(everything.experiment) if t.item_id == "bad")
    assert bad.error is not None and bad.error["type"] == "RuntimeError"
    verdict, traced = sorted((s for s in await evals.scores(everything.experiment) if s.item_id == "bad"),
                             key=lambda s: s.scorer != "contains")
    assert verdict.passed is False and verdict.reason is not None and "the agent failed" in verdict.reason
    assert traced.scorer == "called_tool:lookup" and traced.passed is True, "a trace scorer scores a failed run too"
    info = await evals.experiment(everything.experiment)
    assert info is not None and info["trials"] == 4 and info["errors"] == 1


async def test_a_policy_variant_runs_the_agents_calls_under_that_policy(bus: Bus, fake: FakeProvider, evals: Evals,
                                                                        tmp_path: Path) -> None:
    name = unique("qa")
    await evals.add_items(name, [{"id": f"q{n}", "input": f"where is parcel {n}?"} for n in range(2)])
    strict = tmp_path / "strict.toml"
    strict.write_text('[budgets.run."*"]\ntokens = 1\n')  # every call is over budget: refused, nothing sent
    sent = len(fake.log)
    refused = await ev.run_experiment(evals, name, sample_agent.answer, variant=Variant(policy=str(strict)),
                                      scorers=[ev.contains("fake reply")], progress=False)
    assert (refused.ran, refused.errors) == (2, 2) and len(fake.log) == sent, "the variant's budget refused them"
    info = await evals.experiment(refused.experiment)
    assert info is not None and info["variant"]["policy"] == str(strict)
    usual = await ev.run_experiment(evals, name, sample_agent.answer, scorers=[ev.contains("fake reply")],
                                    progress=False)
    assert (usual.ran, usual.errors) == (2, 0) and len(fake.log) == sent + 2
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('[budgets.run."*"]\ntokenz = 1\n')
    with pytest.raises(PolicyConfigError, match="tokenz"):
        await ev.run_experiment(evals, name, sample_agent.answer, variant=Variant(policy=str(wrong)), progress=False,
                                name=unique("never"))


async def test_bad_experiments_are_refused(bus: Bus, evals: Evals) -> None:
    with pytest.raises(ValueError, match="has no items"):
        await ev.run_experiment(evals, unique("empty"), sample_agent.answer, progress=False)
    with pytest.raises(ValueError, match="concurrency"):
        await ev.run_experiment(evals, "x", sample_agent.answer, concurrency=0, progress=False)
    with pytest.raises(ValueError, match="expected module:function"):
        ev.load_agent("nocolon")
    with pytest.raises(ValueError, match="cannot import"):
        ev.load_agent("no_such_module_x:fn")
    assert ev.load_agent("tests.eval.sample_agent:answer") is sample_agent.answer


async def test_a_replay_that_takes_another_path_fails_clearly() -> None:
    recorded = ev.RunTrace.of("r", [])
    tools = ev._experiment._recorded(recorded)  # no tool results recorded
    with recorded_tools(tools), pytest.raises(ReplayMismatch, match="recorded 0"):
        tools.take("lookup")


async def test_a_sync_tool_is_answered_from_the_log_too(bus: Bus) -> None:
    calls: list[str] = []

    @tether.tool(bus=bus)
    def weather(city: str) -> dict[str, int]:
        calls.append(city)
        return {"celsius": 20}

    tools = RecordedTools({"weather": [RecordedResult({"celsius": 7}), RecordedResult(error="Timeout")]})
    async with tether.run(agent=unique("bot"), bus=bus) as run:
        with recorded_tools(tools):
            first = await asyncio.to_thread(weather, "Oslo")
            with pytest.raises(RecordedToolError, match="failed with Timeout"):
                await asyncio.to_thread(weather, "Oslo")
    assert first == {"celsius": 7} and calls == [] and tools.replayed == 2
    await Hub.of(bus).flush()
    trace = await ev.read_run(bus, run.run_id)
    assert [(t.name, t.result, t.error) for t in trace.tools] == [("weather", {"celsius": 7}, None),
                                                                 ("weather", None, "RecordedToolError")]

"""Experiments: a user's agent over a dataset with one variant, each item a tether run linked to
the experiment; or a replay of each item's recorded run with one thing changed, its tool
results read from the log. Concurrency, a budget, a progress bar on stderr.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from tether.adapters import Hub, RecordedResult, RecordedTools, recorded_tools, run
from tether.middleware import PolicySet, load_policies
from tether.projections.eval import DatasetItem
from tether.schemas import ErrorInfo, ExperimentStarted, TrialCompleted, uuid7

from ._client import Evals
from ._log import read_run
from ._scorers import Case, Score, Scorer
from ._trace import RunTrace

__all__ = ["ExperimentResult", "Variant", "load_agent", "run_experiment"]

Agent = Callable[[Any, "Variant"], Any]


@dataclass(frozen=True)
class Variant:
    """The one thing an experiment changes: the model, the prompt, parameters, or the reliability
    policy (``policy``: a ``tether.toml`` whose retries, fallbacks, budgets... the agent's calls run
    under: it passes ``variant.policies()`` to ``tether.instrument``)."""

    model: str | None = None
    prompt: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    policy: str | None = None

    def policies(self) -> PolicySet | None:
        """The policy file's policies (``PolicyConfigError`` naming the key when it is wrong), or
        None with no ``policy``: the agent then keeps its usual ones."""
        return None if self.policy is None else load_policies(self.policy)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "prompt": self.prompt, "params": dict(self.params)}
        if self.policy is not None:
            out["policy"] = self.policy
        return out


@dataclass
class ExperimentResult:
    experiment: str
    dataset: str
    dataset_seq: int
    items: int = 0
    ran: int = 0
    errors: int = 0
    skipped: int = 0
    """Items not run because the budget was spent."""
    cost_usd: float = 0.0
    run_ids: dict[str, str] = field(default_factory=dict)
    """Item id → the run it was scored on."""
    tools_replayed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"experiment": self.experiment, "dataset": self.dataset, "dataset_seq": self.dataset_seq,
                "items": self.items, "ran": self.ran, "errors": self.errors, "skipped": self.skipped,
                "cost_usd": self.cost_usd, "run_ids": self.run_ids, "tools_replayed": self.tools_replayed}


def load_agent(spec: str) -> Agent:
    """``module:function`` (the module importable from the working directory) as an agent."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"agent {spec!r}: expected module:function, e.g. myagents.support:answer")
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"agent {spec!r}: cannot import {module_name} ({exc}); run from the directory that "
                         "holds it or set PYTHONPATH") from None
    target: Any = module
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ValueError(f"agent {spec!r}: {module_name} has no {attr}")
    if not callable(target):
        raise ValueError(f"agent {spec!r}: {attr} is not callable")
    return target  # type: ignore[no-any-return]


class _Progress:
    """``eval exp-1  [#####.....] 5/10  errors 0  $0.0012`` on one line of stderr."""

    def __init__(self, name: str, total: int, out: TextIO | None) -> None:
        self.name, self.total, self.out = name, total, out
        self.done = self.errors = 0
        self.cost = 0.0

    def step(self, *, error: bool, cost: float) -> None:
        self.done += 1
        self.errors += error
        self.cost += cost
        if self.out is None:
            return
        width = 20
        filled = width * self.done // max(1, self.total)
        end = "\n" if self.done >= self.total else ""
        self.out.write(f"\reval {self.name}  [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}  "
                       f"errors {self.errors}  ${self.cost:.4f}{end}")
        self.out.flush()


def _recorded(trace: RunTrace) -> RecordedTools:
    return RecordedTools({name: [RecordedResult(t.result, t.error) for t in uses]
                          for name, uses in trace.recorded_results().items()}, source_run=trace.run_id)


async def run_experiment(evals: Evals, dataset: str, agent: Agent, *, variant: Variant | None = None,
                         scorers: Sequence[Scorer] = (), name: str | None = None, concurrency: int = 4,
                         budget_usd: float | None = None, replay: bool = False, agent_id: str = "eval-agent",
                         progress: TextIO | bool | None = True, as_of: int | None = None) -> ExperimentResult:
    """Run ``agent(input, variant)`` (sync or async) on every item of ``dataset`` (as of ``as_of``,
    default now), each inside ``tether.run(agent=agent_id, tags=("eval", experiment, item))`` so
    every call it makes is recorded and linked to the item; record each trial and each scorer's
    score as events.

    ``replay``: items taken from a recorded run (``source_run_id``) get that run's tool results
    back by position (``tether.adapters.recorded_tools``), so no tool runs and only the variant
    differs. ``budget_usd``: items not yet started when the trials' cost reaches it are skipped.
    ``progress``: a bar on stderr (True), on a stream, or none (False/None).
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be 1 or more, got {concurrency}")
    variant = variant or Variant()
    variant.policies()  # a policy file that does not load is refused before anything runs
    experiment = name or f"exp-{uuid7()[-12:]}"
    await evals.sync()
    if await evals.experiment(experiment) is not None:
        raise ValueError(f"experiment {experiment!r} exists already; name this one differently")
    items = await evals.items(dataset, as_of=as_of)
    if not items:
        raise ValueError(f"dataset {dataset!r} has no items{'' if as_of is None else f' as of seq {as_of}'} "
                         "(`tether eval dataset list`)")
    dataset_seq = max(i.seq for i in items)
    agent_name = f"{getattr(agent, '__module__', '?')}:{getattr(agent, '__qualname__', repr(agent))}"
    for scorer in scorers:
        bind = getattr(scorer, "bind", None)
        if bind is not None:
            bind(evals.bus)
    await evals.publish([evals._event(ExperimentStarted(
        experiment=experiment, dataset=dataset, dataset_seq=dataset_seq, variant=variant.as_dict(), agent=agent_name,
        replay=replay))])
    result = ExperimentResult(experiment, dataset, dataset_seq, items=len(items))
    out = sys.stderr if progress is True else (progress or None)
    bar = _Progress(experiment, len(items), out)
    gate = asyncio.Semaphore(concurrency)
    hub = Hub.of(evals.bus)

    async def one(item: DatasetItem) -> None:
        async with gate:
            if budget_usd is not None and result.cost_usd >= budget_usd:
                result.skipped += 1
                bar.step(error=False, cost=0.0)
                return
            source = await read_run(evals.bus, item.source_run_id) if replay and item.source_run_id else None
            tools = _recorded(source) if source is not None else None
            started = time.perf_counter()
            error: ErrorInfo | None = None
            output: Any = None
            tagged = ("eval", f"experiment:{experiment}", f"item:{item.id}")
            meta: Mapping[str, Any] = {"eval.experiment": experiment, "eval.item": item.id,
                                       "eval.variant": variant.as_dict(),
                                       **({"eval.replay_of": item.source_run_id} if tools is not None else {})}
            running = run(agent=agent_id, bus=evals.bus, input=item.input, tags=tagged, metadata=meta)
            try:
                async with running:
                    output = await _call(agent, item.input, variant, tools)
                    running.output = output
            except Exception as exc:  # the agent failed on this item: recorded, and the experiment goes on
                error = ErrorInfo(type=type(exc).__name__, message=str(exc)[:2000])
            latency = (time.perf_counter() - started) * 1000
            await hub.flush()
            trace = await read_run(evals.bus, running.run_id)
            result.ran += 1
            result.errors += error is not None
            result.cost_usd += trace.cost
            result.run_ids[item.id] = running.run_id
            result.tools_replayed += tools.replayed if tools is not None else 0
            events = [evals._event(TrialCompleted(
                experiment=experiment, item_id=item.id, run_id=running.run_id, output=output, error=error,
                latency_ms=latency, cost_usd=trace.cost, tokens=trace.tokens))]
            case = Case(item.input, output, item.expected, trace, item.id, item.metadata)
            for scorer in scorers:
                events.append(evals.score_event(experiment, item.id, scorer.name,
                                                await _safe_score(scorer, case, error), run_id=running.run_id,
                                                kind=scorer.kind))
            await evals.publish(events)
            bar.step(error=error is not None, cost=trace.cost)

    await asyncio.gather(*(one(item) for item in items))
    return result


async def _safe_score(scorer: Scorer, case: Case, error: ErrorInfo | None) -> Score:
    if error is not None and scorer.kind == "pass" and scorer.of_output:
        return Score.verdict(False, f"the agent failed: {error.type}: {error.message[:200]}")
    try:
        return await scorer.score(case)
    except Exception as exc:  # a scorer that cannot score this item says why, on the score
        return Score(None, None, f"scorer failed: {type(exc).__name__}: {str(exc)[:300]}")


async def _call(agent: Agent, value: Any, variant: Variant, tools: RecordedTools | None) -> Any:
    async def go() -> Any:
        if inspect.iscoroutinefunction(agent):
            return await agent(value, variant)
        outcome = await asyncio.to_thread(agent, value, variant)
        return await outcome if inspect.isawaitable(outcome) else outcome

    if tools is None:
        return await go()
    with recorded_tools(tools):
        return await go()



"""Evaluation end to end: recorded runs become a dataset, two models are replayed over it with the
tools' results read from the log, and the comparison says whether the change regressed.

Run it with ``.venv/bin/python examples/evaluation.py`` (it uses ``TETHER_NATS_URL`` or starts the
embedded server). The agent asks tether's fake provider, whose replies differ by model.
"""

import asyncio
import uuid
from typing import Any

import openai

import tether
import tether.eval as ev
from tether.adapters import Hub
from tether.testing import FakeProvider

BASE_URL = ""


@tether.tool(idempotent=True)
async def lookup(question: str) -> dict[str, str]:
    return {"fact": f"{question.split()[-1]} left the depot"}


async def answer(question: str, variant: ev.Variant) -> str:
    """The agent: a tool, then a model. Any callable ``(input, variant)`` will do."""
    facts = await lookup(question)
    async with tether.instrument(openai.AsyncOpenAI(base_url=BASE_URL, api_key="sk-example")) as client:
        reply = await client.chat.completions.create(
            model=variant.model or "gpt-4o-mini",
            messages=[{"role": "user", "content": f"{question} ({facts['fact']})"}])
    return reply.choices[0].message.content or ""


async def main() -> None:
    global BASE_URL
    suffix = uuid.uuid4().hex[:6]
    async with FakeProvider(seed=1) as fake, await tether.connect() as bus, ev.Evals(bus) as evals:
        BASE_URL = fake.url
        # 1. Production runs, recorded in the log as they happen.
        runs = []
        for n in range(6):
            async with tether.run(agent="support-bot", bus=bus, input=f"where is parcel-{n}") as run:
                run.output = await answer(f"where is parcel-{n}", ev.Variant())
            runs.append(run.run_id)
        await Hub.of(bus).flush()

        # 2. A dataset from those runs: each run's input, its output as the expected one.
        dataset = f"parcels-{suffix}"
        seq = await evals.add_runs(dataset, runs)
        print(f"dataset {dataset}: {len(await evals.items(dataset))} items (version: seq {seq})")

        # 3. Replay them on two models; tool results come from each source run, so only the model changes.
        scorers: list[Any] = [ev.exact(), ev.called_tool("lookup"), ev.similarity(0.5)]
        results = {}
        for model in ("gpt-4o-mini", "gpt-4o"):
            results[model] = await ev.run_experiment(evals, dataset, answer, variant=ev.Variant(model=model),
                                                     scorers=scorers, replay=True, name=f"{model}-{suffix}")
            print(f"experiment {results[model].experiment}: {results[model].ran} items, "
                  f"{results[model].tools_replayed} tool results from the log")

        # 4. Compare, paired by item: the CI gate fails only on a significant regression above the tolerance.
        a, b = (results[m].experiment for m in ("gpt-4o-mini", "gpt-4o"))
        compared = ev.compare(a, b, await evals.scores(a), await evals.scores(b), await evals.trials(a),
                              await evals.trials(b), tolerance=0.1)
        for d in compared.scorers:
            low, high = d.interval or (0.0, 0.0)
            test = f"p={d.p_value:.3f}" if d.p_value is not None else f"95% CI [{low:+.2f}, {high:+.2f}]"
            print(f"  {d.scorer}: {d.mean_a:.2f} -> {d.mean_b:.2f} ({test}){'  REGRESSION' if d.regression else ''}")
        print("CI would", "fail" if compared.regressed else "pass")


if __name__ == "__main__":
    asyncio.run(main())

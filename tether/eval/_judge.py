"""LLM-as-judge: a model grades an output against a rubric, through tether (its calls are a
run of their own, recorded like any other), under a budget; the rubric and the judge's
reasoning are kept with the score.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from tether.adapters import instrument, run
from tether.bus import Bus
from tether.pricing import price
from tether.schemas import Usage

from ._scorers import Case, Score, Scorer, _text

__all__ = ["Judge", "judge"]

_VERDICT_TOOL = {"type": "function", "function": {
    "name": "verdict", "description": "Record whether the output meets the rubric, and why.",
    "parameters": {"type": "object", "properties": {"passed": {"type": "boolean"}, "reasoning": {"type": "string"}},
                   "required": ["passed", "reasoning"]}}}
_WORD = re.compile(r"\b(PASS|FAIL)\b", re.IGNORECASE)


class Judge(Scorer):
    """See :func:`judge`."""

    def __init__(self, client: Any, *, model: str, rubric: str, budget_usd: float, name: str = "judge",
                 provider: str = "openai", bus: Bus | None = None) -> None:
        super().__init__(name, self._judge)
        if budget_usd <= 0:
            raise ValueError(f"judge {name}: budget_usd must be above 0, got {budget_usd}")
        self.client = instrument(client, bus=bus, agent="eval-judge")
        self.model, self.rubric, self.budget_usd, self.provider = model, rubric, budget_usd, provider
        self.bus = bus
        self.spent = 0.0
        self.refused = 0
        self._lock = asyncio.Lock()

    def bind(self, bus: Bus) -> None:
        """Record the judge's runs on ``bus`` (an experiment binds its own)."""
        if self.bus is None:
            self.bus = bus
            instrument(self.client, bus=bus, agent="eval-judge")

    async def _judge(self, case: Case) -> Score:
        async with self._lock:
            if self.spent >= self.budget_usd:
                self.refused += 1
                return Score(None, None, f"not judged: the judge's budget of ${self.budget_usd:g} is spent "
                             f"(${self.spent:.6f}); raise budget_usd", {"rubric": self.rubric})
        messages = [
            {"role": "system", "content": "You grade an AI agent's output against a rubric. Call `verdict` with "
             f"passed true or false and your reasoning.\nRubric: {self.rubric}"},
            {"role": "user", "content": f"Input: {_text(case.input)}\nExpected: {_text(case.expected)}\n"
             f"Output: {_text(case.output)}"},
        ]
        async with run(agent="eval-judge", bus=self.bus, input={"item": case.item_id},
                       tags=("eval", "judge", self.name)) as judged:
            answer = await self.client.chat.completions.create(
                model=self.model, messages=messages, tools=[_VERDICT_TOOL],
                tool_choice={"type": "function", "function": {"name": "verdict"}}, temperature=0)
            passed, reasoning = _parse(answer)
            judged.output = {"passed": passed, "reasoning": reasoning}
        usage = getattr(answer, "usage", None)
        cost = 0.0
        if usage is not None:
            priced = price(self.provider, self.model, Usage(input_tokens=usage.prompt_tokens,
                                                            output_tokens=usage.completion_tokens))
            cost = priced.usd or 0.0
        async with self._lock:
            self.spent += cost
        meta = {"rubric": self.rubric, "reasoning": reasoning, "model": self.model, "cost_usd": cost,
                "judge_run_id": judged.run_id}
        if passed is None:
            return Score(None, None, "the judge gave no verdict", meta)
        return Score(1.0 if passed else 0.0, passed, reasoning[:500], meta)


def _parse(answer: Any) -> tuple[bool | None, str]:
    message = answer.choices[0].message
    for call in getattr(message, "tool_calls", None) or ():
        try:
            args = json.loads(call.function.arguments)
        except (json.JSONDecodeError, AttributeError):
            continue
        if isinstance(args, dict) and isinstance(args.get("passed"), bool):
            return args["passed"], str(args.get("reasoning", ""))
    text = message.content or ""
    found = _WORD.search(text)
    return (None if found is None else found[1].upper() == "PASS"), text


def judge(client: Any, *, model: str, rubric: str, budget_usd: float, name: str = "judge",
          provider: str = "openai", bus: Bus | None = None) -> Judge:
    """An LLM judge: ``client`` (an ``openai.AsyncOpenAI``) is instrumented by tether, so each
    verdict is a recorded run of agent ``eval-judge``. Judging stops (the score is None, saying
    why) once the calls' priced cost reaches ``budget_usd``. The score's metadata keeps the
    rubric, the judge's reasoning, its model, the call's cost and the judge's run id."""
    return Judge(client, model=model, rubric=rubric, budget_usd=budget_usd, name=name, provider=provider, bus=bus)

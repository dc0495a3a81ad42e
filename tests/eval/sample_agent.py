"""A small agent for the evaluation tests: one tool (a lookup whose answer changes with every
call, as the world does), then one LLM call on the fake provider. ``tests.eval.sample_agent:answer``
is also the entry point the CLI tests run."""

from __future__ import annotations

import os
from typing import Any

import openai

import tether

LOOKUPS: list[str] = []
"""Every real call of the tool in this process."""


@tether.tool(idempotent=True)
async def lookup(question: str) -> dict[str, Any]:
    LOOKUPS.append(question)
    return {"fact": f"{question.split()[0]} is in the archive", "lookup": len(LOOKUPS)}


def prompt_of(question: str, facts: dict[str, Any]) -> str:
    return f"{question} Facts: {facts['fact']} (lookup {facts['lookup']})"


async def answer(question: str, variant: Any) -> str:
    base_url = variant.params.get("base_url") or os.environ["SAMPLE_AGENT_BASE_URL"]
    facts = await lookup(question)
    if question.startswith("fail"):
        raise RuntimeError(f"cannot answer {question!r}")
    client = tether.instrument(openai.AsyncOpenAI(base_url=base_url, api_key="sk-sample"),
                               policies=variant.policies())
    async with client:
        messages: list[Any] = [{"role": "system", "content": variant.prompt}] if variant.prompt else []
        messages.append({"role": "user", "content": prompt_of(question, facts)})
        reply = await client.chat.completions.create(model=variant.model or "gpt-4o-mini", messages=messages)
    return reply.choices[0].message.content or ""

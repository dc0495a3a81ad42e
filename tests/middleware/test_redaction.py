"""The middleware records through tether's one redaction rule set too: durable and inline calls
made without an adapter (``DurableCalls``, ``InlineCalls``, a worker's completions and errors)."""

from __future__ import annotations

import pytest

from tests.adapters.test_secret_formats import planted
from tether.middleware import InlineCalls
from tether.schemas import uuid7

from .test_executor import Env, env  # noqa: F401 - the fixture

pytestmark = [pytest.mark.anyio, pytest.mark.nats]


def leaked(formats: dict[str, tuple[str, str]], recorded: str) -> list[str]:
    return [name for name, (_, secret) in formats.items() if secret in recorded]


async def test_durable_and_inline_calls_record_no_secret(env: Env) -> None:  # noqa: F811
    formats = planted()
    pasted = [text for text, _ in formats.values()]
    chat = {"messages": [{"role": "user", "content": text} for text in pasted], "max_tokens": 20}
    failures: list[int] = []

    @env.tools.tool("remember", idempotent=True)
    def remember(notes: list[str]) -> list[str]:
        if not failures:
            failures.append(1)
            raise ConnectionError(f"could not store {notes[0]} {notes[-1]}")  # the message is recorded
        return notes

    run = f"r-{uuid7()}"
    await env.calls.llm("fake", "gpt-4o-mini", chat, runid=run)
    result = await env.calls.tool("remember", {"notes": pasted}, runid=run)
    assert result.response == pasted, "the caller gets the real result; only the record is redacted"
    async with InlineCalls(env.bus, policies=env.executor.policies, providers=env.executor.providers,
                           tools=env.tools) as inline:
        await inline.llm("fake", "gpt-4o-mini", chat, runid=run)
        await inline.tool("remember", {"notes": pasted}, runid=run)
    events = await env.events(run)
    kinds = [e.type.removeprefix("tether.") for e in events]
    assert kinds.count("llm.call.requested") == 2 and kinds.count("tool.call.completed") == 2
    assert "tool.call.attempt_failed" in kinds
    recorded = "\n".join(e.data.model_dump_json() for e in events)
    assert not leaked(formats, recorded)
    assert recorded.count("[redacted]") >= 4 * len(formats)

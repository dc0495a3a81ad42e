"""Durable LLM and tool calls through a worker, against tether's fake provider.

Run it with ``.venv/bin/python examples/durable_calls.py``. It starts (in this one
process, for the example's sake) the fake provider with a scripted rate limit, a
worker, and a caller; in production the worker is ``tether worker`` on other machines.
"""

import asyncio

import tether
from tether.middleware import (
    CallFailed,
    DurableCalls,
    Executor,
    InlineCalls,
    Policy,
    PolicySet,
    ProviderConfig,
    RetryPolicy,
    ToolRegistry,
)
from tether.schemas import uuid7
from tether.testing import FakeProvider

tools = ToolRegistry()


@tools.tool("lookup", idempotent=True)
def lookup(city: str) -> dict[str, str]:
    return {"city": city, "weather": "sunny"}


async def main() -> None:
    policies = PolicySet(routes={"*": Policy(retry=RetryPolicy(max_attempts=3, base_delay_s=0.1))})
    async with FakeProvider(seed=1, faults="429(0.2s)#1") as fake, await tether.connect() as bus:
        # name: the provider in routes; kind: its wire format; base_url: where it listens. Keys stay in the worker.
        providers = {"openai": ProviderConfig(name="openai", kind="openai", base_url=fake.url)}
        async with Executor(bus, policies=policies, providers=providers, tools=tools), DurableCalls(bus) as calls:
            run = f"example-{uuid7()}"
            chat = {"messages": [{"role": "user", "content": "Weather in Paris?"}], "max_tokens": 30}
            answer = await calls.llm("openai", "gpt-4o-mini", chat, runid=run, agentid="example")
            print("durable:", answer.response["choices"][0]["message"]["content"], answer.usage)
            print("tool:", (await calls.tool("lookup", {"city": "Paris"}, runid=run)).response)
            try:
                await calls.tool("no-such-tool", {}, runid=run)
            except CallFailed as exc:
                print("dead-lettered:", exc.error.type, "-", exc.error.message)
        async with InlineCalls(bus, policies=policies, providers=providers) as inline:
            quick = await inline.llm("openai", "gpt-4o-mini", chat, runid=run)
            print("inline:", quick.response["model"])


if __name__ == "__main__":
    asyncio.run(main())

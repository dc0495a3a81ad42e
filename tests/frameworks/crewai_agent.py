"""CrewAI crews (one agent with one tool, one task) run by .venv-crewai's python, one scenario after
another in one process (CrewAI takes seconds to import): tests/frameworks/test_crewai.py.

The two lines a user adds are marked. The model is the fake provider (``OPENAI_BASE_URL``: each
scenario sets its faults there first and reads back what reached it), the bus ``TETHER_NATS_URL``,
the policies ``tether.toml`` in the working directory (the agent ``budget-bot`` may make one
call). Prints one JSON line: per scenario, what the crew gave or raised, the LLM events CrewAI
itself saw, and the upstream requests.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections import Counter
from typing import Any

os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")
os.environ.setdefault("OTEL_SDK_DISABLED", "true")

from crewai import Agent, Crew, Task
from crewai.events import LLMCallCompletedEvent, LLMCallFailedEvent, crewai_event_bus
from crewai.llms.providers.openai.completion import OpenAICompletion
from crewai.tools import tool

import tether
import tether.adapters
from tether.adapters.crewai import HOOKS, llm

FAKE = os.environ["OPENAI_BASE_URL"].removesuffix("/v1")
SEEN: Counter[str] = Counter()


@crewai_event_bus.on(LLMCallCompletedEvent)
def _completed(source: Any, event: Any) -> None:
    SEEN["completed"] += 1


@crewai_event_bus.on(LLMCallFailedEvent)
def _failed(source: Any, event: Any) -> None:
    SEEN["failed"] += 1


@tool("get_weather")
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"It is sunny in {city}."


@tool("get_forecast")
def get_forecast(city: str) -> str:
    """The forecast for a city."""
    raise ValueError(f"no forecast for {city}")


def fake(path: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(f"{FAKE}/_fake/{path}", method="POST" if body is not None else "GET",
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.load(answer)


def scenario(name: str, faults: str, *, role: str = "weather-bot", failing_tool: bool = False) -> dict[str, Any]:
    fake("faults", {"spec": faults})
    before = fake("log")["total"]
    model = llm("gpt-4o-mini")  # line 2: the model's calls under tether's policy, CrewAI's retries out of them
    agent = Agent(role=role, goal="Answer about the weather.", backstory="A forecaster.",
                  tools=[get_forecast if failing_tool else get_weather], llm=model)
    task = Task(description="What is the weather in Paris?", expected_output="The weather.", agent=agent)
    crew = Crew(agents=[agent], tasks=[task], name=name)
    SEEN.clear()
    out: dict[str, Any] = {}
    try:
        out.update(ok=True, answer=crew.kickoff().raw)
    except Exception as exc:  # what the framework raised, as the agent's code sees it
        out.update(ok=False, error=f"{type(exc).__module__}.{type(exc).__name__}", message=str(exc)[:500],
                   kinds=[f"{k.__module__}.{k.__name__}" for k in type(exc).__mro__],
                   error_code=getattr(exc, "error_code", None))
    crewai_event_bus.flush()
    out["crewai_saw"] = dict(SEEN)
    out["upstream"] = [r["outcome"] for r in fake("log")["requests"][before:]]
    return out


def refused(make: Any) -> str:
    try:
        make()
    except ValueError as exc:
        return str(exc)
    return "accepted"


def private_api() -> dict[str, Any]:
    """CrewAI's private API tether relies on (tether.adapters.crewai.HOOKS): there, and used."""
    missing = [hook.name for hook in HOOKS if not callable(getattr(OpenAICompletion, hook.name, None))]
    model = llm("gpt-4o-mini")
    clients = (model._get_sync_client(), model._get_async_client())  # read here for the check; tether does not
    return {"missing": missing, "transports": [type(c._client._transport).__name__ for c in clients]}


def main() -> dict[str, Any]:
    installed = tether.init()  # line 1: runs, tasks and tool calls of every crew
    said: dict[str, Any] = {"installed": installed, "again": tether.init()}
    said["faults"] = scenario("faults", "500#1/chat,503#3/chat")
    said["persistent"] = scenario("persistent", "429/chat")
    said["budget"] = scenario("budget", "", role="budget-bot")  # tether.toml: one call for this agent
    said["tool_error"] = scenario("tool_error", "", failing_tool=True)
    said["hooks"] = private_api()
    said["refused"] = [refused(lambda: llm("gpt-4o-mini", max_retries=3)), refused(lambda: llm("anthropic/claude"))]
    tether.adapters.flush()
    return said


if __name__ == "__main__":
    print(json.dumps(main()))

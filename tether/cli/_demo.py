"""The scripted demo agent behind ``tether up --demo``.

It plays a small research agent: each run asks a model (the first attempt hits a
rate limit and is retried), searches the web with a tool, remembers what it found and
answers. The steps are scripted, not real model calls, so the demo needs no API key;
every event is real, on the real log, and can be watched with ``tether tail``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

from tether.bus import Bus
from tether.schemas import (
    ErrorInfo,
    Event,
    LlmCallAttemptFailed,
    LlmCallCompleted,
    LlmCallRequested,
    MemoryWritten,
    Payload,
    RunFinished,
    RunStarted,
    ToolCallCompleted,
    ToolCallRequested,
    Usage,
    uuid7,
)

__all__ = ["run_demo"]

AGENT = "demo-researcher"
QUESTIONS = [
    "Which JetStream retention suits a work queue?",
    "How do I dedupe messages in NATS?",
    "What is a CloudEvents claim check?",
    "When should a circuit breaker half-open?",
]


async def demo_run(bus: Bus, n: int, on_event: Callable[[Event], None] | None = None,
                   pace: float = 0.15) -> str:
    """One scripted run; returns its run id."""
    run_id = f"demo-{n}-{uuid7()[-6:]}"
    question = QUESTIONS[n % len(QUESTIONS)]
    rng = random.Random(n)
    started = time.monotonic()

    async def emit(payload: Payload) -> None:
        event = Event.of(payload, runid=run_id, agentid=AGENT, source="urn:tether:demo")
        await bus.publish(event)
        if on_event is not None:
            on_event(event)
        await asyncio.sleep(pace * rng.uniform(0.5, 1.5))

    await emit(RunStarted(name="answer a question", input={"question": question}, tags=("demo",)))
    call = uuid7()
    await emit(LlmCallRequested(call_id=call, provider="openai", model="gpt-4o-mini",
                                request={"messages": [{"role": "user", "content": question}]}))
    await emit(LlmCallAttemptFailed(
        call_id=call, provider="openai", model="gpt-4o-mini", attempt=1, decision="retry",
        retry_in_s=0.4, latency_ms=rng.uniform(80, 200),
        error=ErrorInfo(type="RateLimitError", status_code=429, message="rate limit reached",
                        retryable=True, retry_after_s=0.4)))
    await emit(LlmCallCompleted(
        call_id=call, provider="openai", model="gpt-4o-mini", attempt=2,
        latency_ms=rng.uniform(300, 900), finish_reason="tool_calls",
        usage=Usage(input_tokens=rng.randint(200, 400), output_tokens=rng.randint(20, 60)),
        response={"tool_calls": [{"name": "web_search", "arguments": {"q": question}}]}))
    tool = uuid7()
    await emit(ToolCallRequested(call_id=tool, tool="web_search", arguments={"q": question}))
    await emit(ToolCallCompleted(call_id=tool, tool="web_search", duration_ms=rng.uniform(50, 300),
                                 result={"hits": 3, "top": "docs.nats.io"}))
    await emit(MemoryWritten(namespace=f"agent:{AGENT}", key=f"q{n % len(QUESTIONS)}", version=n // 4 + 1,
                             text=f"Looked up: {question}", source_call_id=tool))
    final = uuid7()
    await emit(LlmCallRequested(call_id=final, provider="openai", model="gpt-4o-mini"))
    await emit(LlmCallCompleted(
        call_id=final, provider="openai", model="gpt-4o-mini", latency_ms=rng.uniform(400, 1200),
        finish_reason="stop", usage=Usage(input_tokens=rng.randint(500, 900),
                                          output_tokens=rng.randint(80, 200), cached_input_tokens=128)))
    await emit(RunFinished(status="ok", duration_ms=(time.monotonic() - started) * 1000,
                           output={"answer": "(scripted)"}))
    return run_id


async def run_demo(bus: Bus, *, runs: int | None = None, interval: float = 2.0,
                   on_event: Callable[[Event], None] | None = None,
                   on_run: Callable[[int, str], None] | None = None, pace: float = 0.15) -> int:
    """Play runs until cancelled (or ``runs`` of them). Returns how many completed."""
    n = 0
    while runs is None or n < runs:
        run_id = await demo_run(bus, n, on_event, pace)
        n += 1
        if on_run is not None:
            on_run(n, run_id)
        if runs is None or n < runs:
            await asyncio.sleep(interval)
    return n

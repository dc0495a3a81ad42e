"""What following runs costs the gateway per call: the run book's work on an OpenClaw-sized call.

The gateway hands each of its calls' events to a background task (an O(1) append on the
call's path); that task matches tool calls and results. This measures the task's CPU per
LLM call (``RunBook.observed`` on the call's ``requested`` and ``completed`` events, then the
tool span it infers), on requests shaped like OpenClaw's (a 25 KB system prompt, 11 tools,
the conversation so far with N earlier tool results, resent every time), against the
gateway's measured CPU per call (``bench/adapters.py``, docs/benchmarks.md) as a ratio.

    .venv/bin/python bench/gateway_runs.py [--calls 2000] [--history 20]
"""

from __future__ import annotations

import argparse
import json
import time

from tether.adapters.gateway._runbook import RunBook
from tether.schemas import Event, LlmCallCompleted, LlmCallRequested

TOOLS = ["read", "write", "edit", "exec", "process", "browser", "web_search", "web_fetch", "memory_search",
         "message", "sessions_spawn"]


def request(turn: int, history: int) -> dict[str, object]:
    messages: list[dict[str, object]] = [{"role": "system", "content": "x" * 25_000},
                                         {"role": "user", "content": "Summarise my notes"}]
    for n in range(max(0, turn - history), turn):
        messages.append({"role": "assistant", "content": None, "tool_calls": [
            {"id": f"call_{n}", "type": "function", "function": {"name": "read", "arguments": '{"path": "a"}'}}]})
        messages.append({"role": "tool", "tool_call_id": f"call_{n}", "content": "notes " * 100})
    return {"model": "gpt-4o", "stream": True, "messages": messages,
            "tools": [{"type": "function", "function": {"name": t, "parameters": {"type": "object"}}} for t in TOOLS]}


def answer(turn: int) -> dict[str, object]:
    return {"choices": [{"message": {"role": "assistant", "tool_calls": [
        {"id": f"call_{turn}", "type": "function", "function": {"name": "read", "arguments": '{"path": "a"}'}}]}}]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--history", type=int, default=20, help="earlier tool results resent in each request")
    args = parser.parse_args()
    book = RunBook(idle_s=300)
    book.call_started("r", "claw", "t" * 32, None, time.time())
    events = []
    for turn in range(args.calls):
        events.append(Event.of(LlmCallRequested(call_id=f"c{turn}", provider="openai", model="gpt-4o",
                                                request=request(turn, args.history)), runid="r"))
        events.append(Event.of(LlmCallCompleted(call_id=f"c{turn}", provider="openai", model="gpt-4o",
                                                response=answer(turn)), runid="r"))
    spans = 0
    start = time.process_time()
    for event in events:
        spans += len(book.observed(event))
    cpu_ms = (time.process_time() - start) * 1000 / args.calls
    print(json.dumps({"calls": args.calls, "history": args.history, "tool_span_events": spans,
                      "run_book_cpu_ms_per_call": round(cpu_ms, 4)}))


if __name__ == "__main__":
    main()

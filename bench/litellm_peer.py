"""LiteLLM in process, the peer ``bench/adapters.py`` measures beside tether: one variant per process.

``bench/adapters.py`` starts this script once per variant, with the interpreter that has
LiteLLM (``.venv-bench/bin/python``, made by ``make bench`` from the ``bench`` extra), and
reads one JSON document from its stdout. A variant owns its process because creating a
LiteLLM ``Router`` registers global callbacks that slow every other LiteLLM call made in
that process afterwards.

Variants, each against the same fake provider as tether (an OpenAI-compatible base URL):

- ``sdk``: ``litellm.completion`` vs the sync ``openai.OpenAI`` client;
- ``sdk-async``: ``litellm.acompletion`` vs ``openai.AsyncOpenAI``;
- ``router``: ``Router.completion`` (one deployment: the fake) vs ``openai.OpenAI``;
- ``router-async``: ``Router.acompletion`` vs ``openai.AsyncOpenAI``.

The direct SDK call and the LiteLLM call alternate in blocks in this same process, so drift
hits both, with the same numbered questions as ``bench/adapters.py``: a non-streaming chat
completion, then a streamed one (time to the first content chunk and to the end of the
stream). Each block's CPU time (``time.process_time``) is recorded too. LiteLLM makes no
network call of its own: the model cost map is the local copy and telemetry is off.

    .venv-bench/bin/python bench/litellm_peer.py --variant sdk --url http://127.0.0.1:PORT/v1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch of the cost map at import
os.environ.setdefault("LITELLM_TELEMETRY_DISABLED", "True")
os.environ.setdefault("LITELLM_LOG", "ERROR")
# (set before LiteLLM is imported: it reads them at import)
import litellm
import openai

VARIANTS = ("sdk", "sdk-async", "router", "router-async")
MODEL = "gpt-4o-mini"
KEY = "sk-bench"

SyncCall = Callable[[int], tuple[float, float | None]]
AsyncCall = Callable[[int], Awaitable[tuple[float, float | None]]]

litellm.telemetry = False
litellm.suppress_debug_info = True


def messages(n: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Question number {n}: what is {n} times {n + 1}?"}]


def _content(chunk: Any) -> str | None:
    choices = getattr(chunk, "choices", None)
    return choices[0].delta.content if choices else None


def _check(response: Any) -> None:
    if not response.choices[0].message.content:
        raise RuntimeError(f"an empty reply: {response!r}")


def sync_caller(create: Callable[..., Any], stream: bool) -> SyncCall:
    def call(n: int) -> tuple[float, float | None]:
        started = time.perf_counter()
        if not stream:
            _check(create(model=MODEL, messages=messages(n), max_tokens=16))
            return (time.perf_counter() - started) * 1000, None
        first: float | None = None
        for chunk in create(model=MODEL, messages=messages(n), max_tokens=16, stream=True):
            if first is None and _content(chunk):
                first = (time.perf_counter() - started) * 1000
        if first is None:
            raise RuntimeError("a stream without content")
        return (time.perf_counter() - started) * 1000, first

    return call


def async_caller(create: Callable[..., Awaitable[Any]], stream: bool) -> AsyncCall:
    async def call(n: int) -> tuple[float, float | None]:
        started = time.perf_counter()
        if not stream:
            _check(await create(model=MODEL, messages=messages(n), max_tokens=16))
            return (time.perf_counter() - started) * 1000, None
        first: float | None = None
        async for chunk in await create(model=MODEL, messages=messages(n), max_tokens=16, stream=True):
            if first is None and _content(chunk):
                first = (time.perf_counter() - started) * 1000
        if first is None:
            raise RuntimeError("a stream without content")
        return (time.perf_counter() - started) * 1000, first

    return call


def _bucket(results: dict[str, dict[str, list[float]]], key: str) -> dict[str, list[float]]:
    return results.setdefault(key, {"total": [], "ttft": [], "cpu": []})


def _record(bucket: dict[str, list[float]], total: float, ttft: float | None) -> None:
    bucket["total"].append(total)
    if ttft is not None:
        bucket["ttft"].append(ttft)


def _router(url: str) -> litellm.Router:
    return litellm.Router(model_list=[{"model_name": MODEL,
                                       "litellm_params": {"model": f"openai/{MODEL}", "api_base": url,
                                                          "api_key": KEY}}])


def measure_sync(variant: str, url: str, calls: int, rounds: int, block: int) -> dict[str, Any]:
    direct = openai.OpenAI(base_url=url, api_key=KEY)
    if variant == "router":
        peer: Callable[..., Any] = _router(url).completion
    else:
        def peer(**kwargs: Any) -> Any:
            return litellm.completion(model=f"openai/{MODEL}", api_base=url, api_key=KEY,
                                      **{k: v for k, v in kwargs.items() if k != "model"})
    results: dict[str, dict[str, list[float]]] = {}
    counter = 0
    with direct:
        for stream in (False, True):
            kind = "stream" if stream else "chat"
            variants = [("direct", sync_caller(direct.chat.completions.create, stream)),
                        ("litellm", sync_caller(peer, stream))]
            for warm in range(50):  # connections, imports, LiteLLM's client cache
                for _, call in variants:
                    call(warm)
            for _ in range(rounds):
                done = 0
                while done < calls:
                    for name, call in variants:
                        bucket = _bucket(results, f"{kind}/{name}")
                        cpu = time.process_time()
                        for _ in range(block):
                            counter += 1
                            _record(bucket, *call(counter))
                        bucket["cpu"].append((time.process_time() - cpu) * 1000 / block)
                    done += block
    return results


async def measure_async(variant: str, url: str, calls: int, rounds: int, block: int) -> dict[str, Any]:
    direct = openai.AsyncOpenAI(base_url=url, api_key=KEY)
    if variant == "router-async":
        peer: Callable[..., Awaitable[Any]] = _router(url).acompletion
    else:
        async def peer(**kwargs: Any) -> Any:
            return await litellm.acompletion(model=f"openai/{MODEL}", api_base=url, api_key=KEY,
                                             **{k: v for k, v in kwargs.items() if k != "model"})
    results: dict[str, dict[str, list[float]]] = {}
    counter = 0
    async with direct:
        for stream in (False, True):
            kind = "stream" if stream else "chat"
            variants = [("direct", async_caller(direct.chat.completions.create, stream)),
                        ("litellm", async_caller(peer, stream))]
            for warm in range(50):
                for _, call in variants:
                    await call(warm)
            for _ in range(rounds):
                done = 0
                while done < calls:
                    for name, call in variants:
                        bucket = _bucket(results, f"{kind}/{name}")
                        cpu = time.process_time()
                        for _ in range(block):
                            counter += 1
                            _record(bucket, *await call(counter))
                        bucket["cpu"].append((time.process_time() - cpu) * 1000 / block)
                    done += block
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", choices=VARIANTS, required=True)
    parser.add_argument("--url", required=True, help="the fake provider's OpenAI base URL (…/v1)")
    parser.add_argument("--calls", type=int, default=1000, help="calls per variant per round (default 1000)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--block", type=int, default=50, help="calls in a row of one variant (default 50)")
    args = parser.parse_args()
    started = time.perf_counter()
    if args.variant.endswith("-async"):
        results = asyncio.run(measure_async(args.variant, args.url, args.calls, args.rounds, args.block))
    else:
        results = measure_sync(args.variant, args.url, args.calls, args.rounds, args.block)
    json.dump({"variant": args.variant, "litellm": _version(), "openai": openai.__version__,
               "seconds": round(time.perf_counter() - started, 1), "results": results}, sys.stdout)
    sys.stdout.write("\n")
    return 0


def _version() -> str:
    from importlib.metadata import version

    return version("litellm")


if __name__ == "__main__":
    sys.exit(main())

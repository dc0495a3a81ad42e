"""What the framework scripts share (imported from the script's own directory, in the framework's venv):
the fake provider's faults set and its log read over its control endpoints, so that one process (one
import of a slow framework) runs every scenario of a test module one after the other."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

ORIGIN = os.environ.get("OPENAI_BASE_URL", "").removesuffix("/v1")


def faults(spec: str) -> None:
    httpx.post(f"{ORIGIN}/_fake/faults", json={"spec": spec}, timeout=10).raise_for_status()


def received() -> int:
    """How many requests the fake provider has received."""
    return int(httpx.get(f"{ORIGIN}/_fake/log?limit=0", timeout=10).json()["total"])


def outcomes(since: int) -> list[str]:
    """The outcome of each request received after the first ``since``, in order."""
    summary = httpx.get(f"{ORIGIN}/_fake/log", timeout=10).json()
    new = int(summary["total"]) - since
    return [r["outcome"] for r in summary["requests"][-new:]] if new > 0 else []


async def scenario(name: str, spec: str, body: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    """``body()``'s result under fault ``spec``, the run's outcome and the upstream requests it made
    (their outcomes, in order); what the framework raised, as the agent's code sees it."""
    faults(spec)
    seen = received()
    try:
        out: dict[str, Any] = {"ok": True, **await body()}
    except Exception as exc:
        out = {"ok": False, "error": f"{type(exc).__module__}.{type(exc).__name__}", "message": str(exc)[:500],
               "kinds": [f"{k.__module__}.{k.__name__}" for k in type(exc).__mro__]}
    out["upstream"] = outcomes(seen)
    faults("")
    return {name: out}

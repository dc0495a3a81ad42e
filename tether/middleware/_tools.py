"""Tools a worker can run by name."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["ToolRegistry", "ToolSpec", "UnknownTool", "tools"]

F = TypeVar("F", bound=Callable[..., Any])


class UnknownTool(LookupError):
    """No tool of that name is registered in this worker."""


@dataclass(frozen=True)
class ToolSpec:
    name: str
    fn: Callable[..., Any]
    idempotent: bool
    takes_key: bool

    async def __call__(self, arguments: Any, *, idempotency_key: str | None) -> Any:
        kwargs: dict[str, Any] = dict(arguments) if isinstance(arguments, dict) else {}
        args: tuple[Any, ...] = ()
        if not isinstance(arguments, dict) and arguments is not None:
            args = tuple(arguments) if isinstance(arguments, list) else (arguments,)
        if self.takes_key:
            kwargs["idempotency_key"] = idempotency_key
        if inspect.iscoroutinefunction(self.fn):
            result: Any = await self.fn(*args, **kwargs)
            return result
        return await asyncio.to_thread(self.fn, *args, **kwargs)


class ToolRegistry:
    """Name → function. Sync functions run in a thread; async ones on the loop.

    Only tools registered ``idempotent=True`` are retried: running a side effect twice
    is the caller's decision, not tether's. A tool whose signature has an
    ``idempotency_key`` parameter receives the call id there.
    """

    def __init__(self) -> None:
        self._tools: dict[str, ToolSpec] = {}

    def register(self, name: str, fn: Callable[..., Any] | Callable[..., Awaitable[Any]], *,
                 idempotent: bool = False) -> None:
        takes_key = "idempotency_key" in inspect.signature(fn).parameters
        self._tools[name] = ToolSpec(name, fn, idempotent, takes_key)

    def tool(self, name: str | None = None, *, idempotent: bool = False) -> Callable[[F], F]:
        """Decorator form of :meth:`register`."""

        def wrap(fn: F) -> F:
            self.register(name or fn.__name__, fn, idempotent=idempotent)
            return fn

        return wrap

    def get(self, name: str) -> ToolSpec:
        try:
            return self._tools[name]
        except KeyError:
            known = ", ".join(sorted(self._tools)) or "none"
            raise UnknownTool(f"no tool {name!r} in this worker (registered: {known})") from None

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def names(self) -> list[str]:
        return sorted(self._tools)


tools = ToolRegistry()
"""The worker's default registry: ``@tools.tool()`` in a module named by ``tether worker --tools``."""

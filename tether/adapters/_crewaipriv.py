"""CrewAI's private API: every use tether makes of it, in this one module.

CrewAI has no public way to hand its OpenAI provider an HTTP client, nor to wrap a tool class's
``_run`` or ``_arun``. :data:`HOOKS` names each attribute and what tether uses it for;
``tests/frameworks/test_crewai.py`` checks them against the installed CrewAI (in its venv), and
:func:`require` refuses a CrewAI without one, naming its version. Imported by ``tether.adapters.crewai``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

from tether._hooks import Hook

__all__ = ["HOOKS", "CrewAIChanged", "has_arun", "instance_run", "missing", "require", "routed_clients",
           "run_is_async", "wrap_arun", "wrap_run"]

_COMPLETION = "crewai.llms.providers.openai.completion.OpenAICompletion"
_WHY_CLIENTS = ("the openai client CrewAI's OpenAI provider builds (sync and async): TetherLLM gives it to "
                "tether.instrument() as it is built. CrewAI has no public way in: its client_params go to both "
                "clients (one http_client cannot be both) and its interceptor can edit a request, not send it")
_WHY_RUN = ("the method a BaseTool subclass runs in (CrewAI's native tool calls reach it through run(), its text "
            "tool calls directly): tether puts it under the tool policy (timeout, retries of idempotent tools, "
            "replay on resume). A crewai.tools.tool function's own func is public and used instead")

_WHY_ARUN = ("the coroutine a BaseTool subclass may implement for BaseTool.arun(): tether puts it under the "
             "tool policy as it does _run")

HOOKS = (
    Hook("crewai", _COMPLETION, "_build_sync_client", _WHY_CLIENTS, __name__),
    Hook("crewai", _COMPLETION, "_build_async_client", _WHY_CLIENTS, __name__),
    Hook("crewai", "crewai.tools.BaseTool", "_run", _WHY_RUN, __name__),
    Hook("crewai", "crewai.tools.BaseTool", "_arun", _WHY_ARUN, __name__),
)


class CrewAIChanged(RuntimeError):
    """The installed CrewAI lacks a private attribute tether relies on (:data:`HOOKS`)."""


def missing(owners: dict[str, type], names: Iterable[str] | None = None) -> list[Hook]:
    """The hooks (of ``names``, default all) whose attribute is not on its owner (``owners``: the
    owner's dotted name in :data:`HOOKS` to the installed class)."""
    chosen = [hook for hook in HOOKS if names is None or hook.name in set(names)]
    return [hook for hook in chosen if not callable(getattr(owners.get(hook.owner), hook.name, None))]


def require(owners: dict[str, type], names: Iterable[str] | None = None) -> None:
    """Raise :class:`CrewAIChanged`, naming the installed CrewAI's version and the attribute, when
    one of the hooks ``names`` is missing: tether would otherwise be silently bypassed."""
    gone = missing(owners, names)
    if gone:
        raise CrewAIChanged("\n".join(hook.broken("it is missing") for hook in gone))


def routed_clients(completion: type, route: Callable[[Any, Any], Any]) -> type:
    """A subclass of CrewAI's ``OpenAICompletion`` whose two SDK clients are handed to
    ``route(llm, client)`` as CrewAI builds them (what ``route`` returns is the client used)."""

    class Routed(completion):  # type: ignore[misc]
        def _build_sync_client(self) -> Any:
            return route(self, super()._build_sync_client())

        def _build_async_client(self) -> Any:
            return route(self, super()._build_async_client())

    Routed.__name__ = Routed.__qualname__ = f"Routed{completion.__name__}"
    return Routed


def wrap_run(tool: Any, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """Put ``wrap(tool._run)`` in place of this tool instance's ``_run`` (a ``BaseTool`` subclass's)."""
    object.__setattr__(tool, "_run", wrap(tool._run))


def instance_run(tool: Any) -> Any:
    """What :func:`wrap_run` put on this tool instance in place of ``_run`` (None if nothing)."""
    return getattr(tool, "__dict__", {}).get("_run")


def run_is_async(tool: Any) -> bool:
    """Whether the tool's class implements ``_run`` as a coroutine function."""
    return inspect.iscoroutinefunction(type(tool)._run)


def has_arun(tool: Any, base: type) -> bool:
    """Whether the tool's class implements ``_arun`` itself (``base``'s only says it does not)."""
    return getattr(type(tool), "_arun", None) is not getattr(base, "_arun", None)


def wrap_arun(tool: Any, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """Put ``wrap(tool._arun)`` in place of this tool instance's ``_arun``."""
    object.__setattr__(tool, "_arun", wrap(tool._arun))

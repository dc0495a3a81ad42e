"""pydantic-ai under tether: runs and tool calls from a capability given to each agent
(:func:`capability`: pydantic-ai has no process-wide hook), model calls through tether with the
SDK's retries off (:func:`model`). The only module of tether that imports ``pydantic_ai``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pydantic_ai.capabilities import AbstractCapability
from pydantic_ai.messages import ModelRequest, SystemPromptPart, UserPromptPart
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from tether.adapters import Run, instrument

from ._frameworks import ObservedTool, inject_memory

__all__ = ["TetherCapability", "capability", "model"]

SOURCE = "urn:tether:adapter:pydantic-ai"


@dataclass(init=False)
class TetherCapability(AbstractCapability[Any]):
    """Each run of the agent is a tether run named for the agent (a run of another agent inside
    it, e.g. from a tool, is its child run); each tool call is recorded under it (arguments,
    result, duration, error), with no decorator on the tools. With ``memory``, what it holds on
    the last user prompt goes before each model request (see :func:`capability`)."""

    def __init__(self, memory: Any = None, *, namespaces: Any = None, token_budget: int = 500) -> None:
        self.memory = memory
        self.namespaces = namespaces
        self.token_budget = token_budget

    async def before_model_request(self, ctx: Any, request_context: Any) -> Any:
        if self.memory is None:
            return request_context
        messages = list(request_context.messages)
        query = next((_text(part.content) for message in reversed(messages) if isinstance(message, ModelRequest)
                      for part in reversed(message.parts) if isinstance(part, UserPromptPart)), "")
        text = await inject_memory(self.memory, query, namespaces=self.namespaces, token_budget=self.token_budget)
        if not text:
            return request_context
        injected = ModelRequest(parts=[SystemPromptPart(content=f"What you remember:\n{text}")])
        return dataclasses.replace(request_context, messages=[injected, *messages])

    async def wrap_run(self, ctx: Any, *, handler: Any) -> Any:
        agent = getattr(ctx, "agent", None)
        name = str(getattr(agent, "name", None) or "agent")
        run = Run(agent=name, name=name, metadata={"framework": "pydantic-ai"}, derive="pydantic-ai")
        try:
            await run.__aenter__()
        except Exception:  # no bus: the agent runs unrecorded
            return await handler()
        try:
            result = await handler()
        except BaseException as error:
            await run.__aexit__(type(error), error, error.__traceback__)
            raise
        await run.__aexit__(None, None, None)
        return result

    async def wrap_tool_execute(self, ctx: Any, *, call: Any, tool_def: Any, args: Any, handler: Any) -> Any:
        observed = ObservedTool.start(call.tool_name, call.args_as_dict(), source=SOURCE)
        if observed is None:
            return await handler(args)
        try:
            result = await handler(args)
        except Exception as error:  # a ModelRetry too: the model is told, the call recorded as failed
            observed.failed(error)
            raise
        observed.completed(result)
        return result


def capability(memory: Any = None, *, namespaces: Any = None, token_budget: int = 500) -> TetherCapability:
    """The capability that records an agent's runs and tool calls: ``Agent(...,
    capabilities=[tether.adapters.pydantic_ai.capability()])``. With a ``tether.memory.AsyncMemory``
    (opt-in, per agent), ``memory.context(last user prompt, token_budget)`` goes before each model
    request as a system message (that request only, not the run's history), the retrieval recorded
    as the tool call ``tether.memory.context`` naming the memories injected."""
    return TetherCapability(memory, namespaces=namespaces, token_budget=token_budget)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return " ".join(part for part in content if isinstance(part, str)) if isinstance(content, list) else ""


def model(name: str = "gpt-4o-mini", *, client: Any = None, **options: Any) -> OpenAIChatModel:
    """An OpenAI chat model whose requests run under tether's policy: ``client`` (default: a new
    ``AsyncOpenAI()`` from the environment) instrumented with :func:`tether.instrument`'s
    ``options`` and its retries off. A request's ``ModelSettings(max_retries=...)`` stays without
    effect on failures tether gave up on (its answers say ``x-should-retry: false``)."""
    provider, colon, _ = name.partition(":")
    if colon and provider != "openai":
        raise ValueError(f"tether.adapters.pydantic_ai.model builds OpenAI chat models, not {name!r}: give that "
                         "model's provider http_client=tether.async_http_client() instead")
    if client is None:
        from openai import AsyncOpenAI

        client = AsyncOpenAI()
    instrument(client, **options)
    return OpenAIChatModel(name.removeprefix("openai:"), provider=OpenAIProvider(openai_client=client))

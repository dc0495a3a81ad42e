"""pydantic-ai under tether: runs and tool calls (under tether's tool policy) from a capability
given to each agent (:func:`capability`: pydantic-ai has no process-wide hook), model calls through
tether with the SDK's retries off (:func:`model`), a conversation's message history kept in tether
(:class:`MessageHistory`). The only module of tether that imports ``pydantic_ai``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic_ai.capabilities import AbstractCapability
from pydantic_ai.exceptions import ModelRetry
from pydantic_ai.messages import ModelMessage, ModelMessagesTypeAdapter, ModelRequest, SystemPromptPart, UserPromptPart
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from tether.adapters import Hub, Run, instrument
from tether.bus import Bus
from tether.middleware import PolicySet
from tether.schemas import uuid7

from ._frameworks import KvState, inject_memory, key_token
from ._tools import FrameworkTools

__all__ = ["MessageHistory", "TetherCapability", "capability", "model"]

SOURCE = "urn:tether:adapter:pydantic-ai"


@dataclass(init=False)
class TetherCapability(AbstractCapability[Any]):
    """Each run of the agent is a tether run named for the agent (a run of another agent inside
    it, e.g. from a tool, is its child run); each tool call is recorded under it (arguments,
    result, duration, error) and run under tether's tool policy, with no decorator on the tools.
    With ``memory``, what it holds on the last user prompt goes before each model request (see
    :func:`capability`)."""

    def __init__(self, memory: Any = None, *, namespaces: Any = None, token_budget: int = 500,
                 idempotent: Iterable[str] = (), timeout_s: float | None = None,
                 policies: PolicySet | None = None) -> None:
        self.memory = memory
        self.namespaces = namespaces
        self.token_budget = token_budget
        self.tools = FrameworkTools(SOURCE, idempotent=idempotent, timeout_s=timeout_s, policies=policies)

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
        """The call under tether's tool policy (a ``ModelRetry`` the tool raises is recorded as failed
        and reaches pydantic-ai, which tells the model); a timeout is pydantic-ai's own, a ``ModelRetry``."""
        try:
            return await self.tools.acall(call.tool_name, args, lambda: handler(args))
        except TimeoutError as error:  # tether's, after the policy's retries: as pydantic-ai's tool timeout says it
            raise ModelRetry(f"Timed out after {self.tools.timeout(call.tool_name)} seconds.") from error


def capability(memory: Any = None, *, namespaces: Any = None, token_budget: int = 500,
               idempotent: Iterable[str] = (), timeout_s: float | None = None,
               policies: PolicySet | None = None) -> TetherCapability:
    """The capability that records an agent's runs and tool calls: ``Agent(...,
    capabilities=[tether.adapters.pydantic_ai.capability()])``. With a ``tether.memory.AsyncMemory``
    (opt-in, per agent), ``memory.context(last user prompt, token_budget)`` goes before each model
    request as a system message (that request only, not the run's history), the retrieval recorded
    as the tool call ``tether.memory.context`` naming the memories injected.

    Tool calls run under tether's tool policy: retried only for the tools named in ``idempotent``
    (or whose route ``tool:<name>`` says ``idempotent = true``), each attempt bounded by
    ``timeout_s`` (else the route's ``tool_timeout_s``), a resumed run's completed call answered
    from the log without running, and a crash inside a non-idempotent call raising
    :class:`tether.NeedsAttention` from ``agent.run``."""
    return TetherCapability(memory, namespaces=namespaces, token_budget=token_budget, idempotent=idempotent,
                            timeout_s=timeout_s, policies=policies)


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


class MessageHistory:
    """A conversation's pydantic-ai messages in tether: each message a key of the JetStream KV bucket
    ``bucket`` (file storage), in the order appended, written and read with pydantic-ai's own
    ``ModelMessagesTypeAdapter``, so the conversation survives a restart of the process and of NATS.
    Its calls run on the bus's event loop, whichever loop awaits them::

        history = MessageHistory("user-42", bus)
        result = await agent.run(prompt, message_history=await history.load())
        await history.append(result.new_messages())
    """

    def __init__(self, conversation_id: str, bus: Bus, *, bucket: str = "tether-pydantic-ai-history") -> None:
        self.conversation_id = conversation_id
        self.state = KvState(bus, bucket)
        self._hub = Hub.of(bus)
        self._prefix = f"h.{key_token(conversation_id)}"

    async def _entries(self) -> list[Any]:
        found = [await self.state.entry(key) for key in await self.state.keys(self._prefix)]
        return sorted((e for e in found if e is not None and e.value), key=lambda e: e.revision)

    async def load(self) -> list[ModelMessage]:
        """The conversation's messages, oldest first (``[]`` for a new one): ``message_history=``."""
        raw = b"[" + b",".join(e.value for e in await self._hub.call(self._entries)) + b"]"
        messages: list[ModelMessage] = ModelMessagesTypeAdapter.validate_json(raw)
        return messages

    async def append(self, messages: Iterable[ModelMessage]) -> None:
        """Add ``messages`` (a run's ``result.new_messages()``) after those kept, in their order."""
        dumped = ModelMessagesTypeAdapter.dump_python(list(messages), mode="json")

        async def add() -> None:
            for message in dumped:
                await self.state.put(f"{self._prefix}.{uuid7()}", message)

        await self._hub.call(add)

    async def clear(self) -> None:
        """The conversation forgotten."""
        await self._hub.call(lambda: self.state.remove(f"{self._prefix}.>"))

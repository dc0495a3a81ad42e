"""LlamaIndex's private API: the one use tether makes of it, in this module.

A ``Memory`` block is a subclass of ``BaseMemoryBlock`` implementing its private ``_aget`` (what
goes into the model's input) and ``_aput`` (what the memory flushes to it), as LlamaIndex's own
blocks and its documentation's custom blocks do: :class:`MemoryBlock` implements them by calling
its public ``pull`` and ``push``. A replayed handoff (:func:`hand_off`) sets the workflow store's
``next_agent`` as LlamaIndex's ``handoff`` tool does. ``tests/frameworks/test_llama_index.py``
checks :data:`HOOKS`.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

from llama_index.core.agent.workflow.multi_agent_workflow import DEFAULT_HANDOFF_OUTPUT_PROMPT, AgentWorkflow, handoff
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.memory.memory import BaseMemoryBlock

from tether._hooks import Hook

__all__ = ["HOOKS", "MemoryBlock", "broken_hooks", "hand_off"]

_OWNER = "llama_index.core.memory.memory.BaseMemoryBlock"
HOOKS = (
    Hook("llama-index-core", _OWNER, "_aget", "what a memory block puts into the model's input: "
         "TetherMemoryBlock (what tether memory holds on the last user message)", __name__),
    Hook("llama-index-core", _OWNER, "_aput", "what the Memory flushes to a block (TetherMemoryBlock keeps none)",
         __name__),
    Hook("llama-index-core", "llama_index.core.agent.workflow.AgentWorkflow", "store['next_agent']",
         "a handoff replayed on resume: the agent its recorded call handed to acts next, as the handoff tool "
         "(which sets it) and aggregate_tool_results (which reads it) do", __name__),
)
_HANDOFF_KEYS = ("next_agent", "handoff_output_prompt")


class MemoryBlock(BaseMemoryBlock[str]):
    """A ``BaseMemoryBlock`` whose content is ``await self.pull(messages)`` (a subclass says what)."""

    @abstractmethod
    async def pull(self, messages: list[ChatMessage]) -> str:
        """What goes into the model's input, given the conversation's messages."""

    async def push(self, messages: list[ChatMessage]) -> None:
        return None

    async def _aget(self, messages: list[ChatMessage] | None = None, **block_kwargs: Any) -> str:
        return await self.pull(list(messages or []))

    async def _aput(self, messages: list[ChatMessage]) -> None:
        await self.push(messages)


async def hand_off(ctx: Any, to_agent: Any, reason: Any, said: str) -> bool:
    """What LlamaIndex's ``handoff`` tool did to the workflow's store when it answered ``said``, done
    again without running it: when ``said`` is what it answers on handing off (its output prompt of
    ``to_agent`` and ``reason``), the workflow's next agent is ``to_agent``. Whether it handed off."""
    prompt = await ctx.store.get("handoff_output_prompt", default=DEFAULT_HANDOFF_OUTPUT_PROMPT)
    if not isinstance(to_agent, str) or said != str(prompt).format(to_agent=to_agent, reason=reason):
        return False
    await ctx.store.set("next_agent", to_agent)
    return True


def broken_hooks() -> list[str]:
    """Each hook LlamaIndex no longer has as tether relies on it (an abstract method of the block's
    base, which ``aget`` / ``aput`` call), as :meth:`Hook.broken` says it."""
    problems = []
    for hook in HOOKS[:2]:  # the memory block's
        member = vars(BaseMemoryBlock).get(hook.name)
        if member is None or not getattr(member, "__isabstractmethod__", False):
            problems.append(hook.broken("not an abstract method of BaseMemoryBlock"))
    public = {"_aget": BaseMemoryBlock.aget, "_aput": BaseMemoryBlock.aput}
    for hook in HOOKS[:2]:  # the memory block's
        caller = public.get(hook.name)
        if caller is None or hook.name not in caller.__code__.co_names:
            problems.append(hook.broken(f"{hook.name.removeprefix('_')}() no longer calls it"))
    uses = {"handoff": (handoff, ("next_agent", "handoff_output_prompt")),
            "AgentWorkflow.aggregate_tool_results": (AgentWorkflow.aggregate_tool_results, ("next_agent",))}
    for name, (fn, keys) in uses.items():
        problems += [HOOKS[2].broken(f"{name} no longer uses the store key {key!r}") for key in keys
                     if key not in fn.__code__.co_consts]
    if "handoff" not in AgentWorkflow._get_handoff_tool.__code__.co_names:
        problems.append(HOOKS[2].broken("AgentWorkflow's handoff tool no longer runs multi_agent_workflow.handoff"))
    return problems

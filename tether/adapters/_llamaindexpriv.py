"""LlamaIndex's private API: the one use tether makes of it, in this module.

A ``Memory`` block is a subclass of ``BaseMemoryBlock`` implementing its private ``_aget`` (what
goes into the model's input) and ``_aput`` (what the memory flushes to it), as LlamaIndex's own
blocks and its documentation's custom blocks do: :class:`MemoryBlock` implements them by calling
its public ``pull`` and ``push``. ``tests/frameworks/test_llama_index.py`` checks :data:`HOOKS`.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.memory.memory import BaseMemoryBlock

from tether._hooks import Hook

__all__ = ["HOOKS", "MemoryBlock", "broken_hooks"]

_OWNER = "llama_index.core.memory.memory.BaseMemoryBlock"
HOOKS = (
    Hook("llama-index-core", _OWNER, "_aget", "what a memory block puts into the model's input: "
         "TetherMemoryBlock (what tether memory holds on the last user message)", __name__),
    Hook("llama-index-core", _OWNER, "_aput", "what the Memory flushes to a block (TetherMemoryBlock keeps none)",
         __name__),
)


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


def broken_hooks() -> list[str]:
    """Each hook LlamaIndex no longer has as tether relies on it (an abstract method of the block's
    base, which ``aget`` / ``aput`` call), as :meth:`Hook.broken` says it."""
    problems = []
    for hook in HOOKS:
        member = vars(BaseMemoryBlock).get(hook.name)
        if member is None or not getattr(member, "__isabstractmethod__", False):
            problems.append(hook.broken("not an abstract method of BaseMemoryBlock"))
    public = {"_aget": BaseMemoryBlock.aget, "_aput": BaseMemoryBlock.aput}
    for hook in HOOKS:
        caller = public.get(hook.name)
        if caller is None or hook.name not in caller.__code__.co_names:
            problems.append(hook.broken(f"{hook.name.removeprefix('_')}() no longer calls it"))
    return problems

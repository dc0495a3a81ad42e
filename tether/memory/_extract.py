"""Extraction: memory operations (add, update by key, delete) proposed from a conversation.

An extractor reads the conversation and the namespace's live entries and proposes
operations; :func:`plan` checks them against what exists (an ``add`` of a key that
exists becomes an ``update``, an ``update`` of a missing key an ``add``, a ``delete`` of a
missing key is skipped); ``AsyncMemory.extract`` then writes them as ordinary memory
events, each carrying the model call that proposed it (``source_call_id``) and the
message it came from (``source_message_id``). Two extractors:

* :class:`LlmExtractor`: a model, called through tether (``InlineCalls`` or
  ``DurableCalls``: retried, recorded as ``llm.call.*`` events, costed), answers with a
  ``record_memory_operations`` tool call;
* :class:`ExtractiveExtractor`: no model. It keeps the user's first-person statements
  ("I live in Lyon", "my manager is Leo"), keys each by its subject and verb
  (``fact:i-live-in``) so a later statement of the same kind updates it, and turns "I no
  longer ..." or "forget that ..." into a deletion of that key.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from ._errors import InvalidMemory
from ._names import check_key
from ._types import Entry, Written

__all__ = [
    "Extraction",
    "ExtractiveExtractor",
    "Extractor",
    "LlmExtractor",
    "Operation",
    "Proposal",
    "plan",
]

Action = Literal["add", "update", "delete"]


@dataclass(frozen=True, slots=True)
class Operation:
    """One proposed change: ``add`` a fact (``key`` may be None), ``update`` a key, ``delete`` a key."""

    action: Action
    key: str | None
    text: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Proposal:
    """What an extractor proposed, and the model call that proposed it (None without a model)."""

    operations: tuple[Operation, ...]
    call_id: str | None = None


@dataclass(frozen=True, slots=True)
class Extraction:
    """The outcome of ``AsyncMemory.extract``: the operations done (or planned, with ``apply=False``),
    those skipped and why, the model call, and what each write returned."""

    operations: tuple[Operation, ...]
    skipped: tuple[Operation, ...]
    call_id: str | None
    extractor: str
    written: tuple[Written, ...] = field(default=())


class Extractor(Protocol):
    name: str

    async def propose(self, messages: Sequence[Mapping[str, Any]], existing: Sequence[Entry], *,
                      agent: str | None = None, run: str | None = None) -> Proposal: ...


def plan(proposal: Proposal, existing: Sequence[Entry]) -> tuple[list[Operation], list[Operation]]:
    """The operations to do and those to skip (each skipped one says why), checked against the
    namespace's live entries."""
    live = {e.key: e for e in existing}
    todo: list[Operation] = []
    skipped: list[Operation] = []
    for op in proposal.operations:
        if op.key is not None:
            try:
                check_key(op.key)
            except InvalidMemory as exc:
                skipped.append(Operation(op.action, op.key, op.text, f"invalid key: {exc}"))
                continue
        if op.action in ("add", "update"):
            if not (op.text or "").strip():
                skipped.append(Operation(op.action, op.key, op.text, "no text"))
                continue
            if op.key is not None and op.key in live and live[op.key].text.strip() == (op.text or "").strip():
                skipped.append(Operation(op.action, op.key, op.text, "already remembered"))
                continue
            action: Action = "update" if op.key is not None and op.key in live else "add"
            todo.append(Operation(action, op.key, op.text, op.reason))
        elif op.action == "delete":
            if op.key is None or op.key not in live:
                skipped.append(Operation("delete", op.key, op.text, "no such entry"))
            else:
                todo.append(op)
        else:  # pragma: no cover - Operation's type says it cannot be
            skipped.append(Operation(op.action, op.key, op.text, "unknown action"))
    return todo, skipped


def _content(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    return ""


# -- with a model -----------------------------------------------------------------------------------

TOOL = {
    "type": "function",
    "function": {
        "name": "record_memory_operations",
        "description": "Record what the assistant should remember, change or forget about the user.",
        "parameters": {
            "type": "object",
            "properties": {
                "operations": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "op": {"type": "string", "enum": ["add", "update", "delete"]},
                            "key": {"type": "string", "description": "an existing key to update or delete; "
                                                                     "a short new one to add"},
                            "text": {"type": "string", "description": "the fact, one sentence (empty to delete)"},
                        },
                        "required": ["op", "key", "text"],
                    },
                },
            },
            "required": ["operations"],
        },
    },
}


class LlmExtractor:
    """Operations proposed by a model through tether: ``calls`` is a started InlineCalls or DurableCalls."""

    def __init__(self, calls: Any, provider: str, model: str, *, instructions: str | None = None,
                 max_tokens: int = 800) -> None:
        self.calls = calls
        self.provider = provider
        self.model = model
        self.max_tokens = max_tokens
        self.name = f"llm:{provider}:{model}"
        self.instructions = instructions or (
            "You maintain an AI agent's long-term memory about a user. From the conversation, record durable "
            "facts (preferences, plans, relationships, decisions) with record_memory_operations: 'add' a new fact "
            "under a short new key, 'update' an existing key whose fact changed, 'delete' an existing key the "
            "user retracted. Ignore chit-chat. Existing memories are listed as [key] text.")

    async def propose(self, messages: Sequence[Mapping[str, Any]], existing: Sequence[Entry], *,
                      agent: str | None = None, run: str | None = None) -> Proposal:
        listing = "\n".join(f"[{e.key}] {e.text}" for e in existing) or "(none)"
        talk = "\n".join(f"{m.get('role', 'user')}: {_content(m)}" for m in messages)
        body = {"model": self.model, "max_tokens": self.max_tokens, "tools": [TOOL],
                "tool_choice": {"type": "function", "function": {"name": "record_memory_operations"}},
                "messages": [{"role": "system", "content": self.instructions},
                             {"role": "user", "content": f"Existing memories:\n{listing}\n\nConversation:\n{talk}"}]}
        result = await self.calls.llm(self.provider, self.model, body, agentid=agent, runid=run)
        return Proposal(tuple(parse_operations(result.response)), result.call_id)


def parse_operations(response: Mapping[str, Any]) -> list[Operation]:
    """The operations in a chat completion: the tool call's arguments, else JSON in the content.
    Anything malformed is left out (a model's answer is input, not instructions)."""
    try:
        message = response["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        return []
    raw: Any = None
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, Mapping) else None
        if isinstance(function, Mapping) and function.get("name") == "record_memory_operations":
            raw = function.get("arguments")
            break
    if raw is None:
        raw = message.get("content")
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return []
    items = raw.get("operations") if isinstance(raw, Mapping) else None
    out = []
    for item in items if isinstance(items, list) else ():
        if not isinstance(item, Mapping) or item.get("op") not in ("add", "update", "delete"):
            continue
        key = item.get("key")
        text = item.get("text")
        out.append(Operation(item["op"], key.strip() or None if isinstance(key, str) else None,
                             text.strip() if isinstance(text, str) else None))
    return out


# -- without a model --------------------------------------------------------------------------------

_SENTENCE = re.compile(r"[^.!?\n]+[.!?]?")
_FIRST = re.compile(r"^(?:(?:and|but|so|also|well|oh|actually|btw),?\s+)*(i|i'm|i am|my|we|our)\b\s*(.*)$",
                    re.IGNORECASE)
_RETRACT = re.compile(r"^(?:please\s+)?(?:forget\s+(?:that\s+)?|(?:that'?s|this is)\s+no longer true:?\s*)",
                      re.IGNORECASE)
_NO_LONGER = re.compile(r"\b(?:no longer|don't|do not|not)\s+(?:\w+\s+)?anymore\b|\bno longer\b|\banymore\b",
                        re.IGNORECASE)
_SKIP = frozenset({"think", "guess", "mean", "hope", "wonder", "see", "know", "agree", "understand", "thank",
                   "thanks", "want", "need", "would", "could", "will", "should"})
_PREPS = frozenset({"in", "at", "to", "for", "with", "on", "by", "from", "as", "of"})


class ExtractiveExtractor:
    """First-person statements of the user, keyed by their subject and verb; no model."""

    name = "extractive"

    async def propose(self, messages: Sequence[Mapping[str, Any]], existing: Sequence[Entry], *,
                      agent: str | None = None, run: str | None = None) -> Proposal:
        ops: list[Operation] = []
        for message in messages:
            if message.get("role", "user") != "user":
                continue
            for raw in _SENTENCE.findall(_content(message)):
                op = self.statement(raw.strip())
                if op is not None:
                    ops.append(op)
        return Proposal(tuple(ops))

    @staticmethod
    def statement(sentence: str) -> Operation | None:
        """The operation a sentence states, if it is a first-person fact (or its retraction)."""
        if not sentence or sentence.endswith("?"):
            return None
        retract = _RETRACT.match(sentence)
        body = sentence[retract.end():] if retract else sentence
        negated = _NO_LONGER.search(body) is not None
        first = _FIRST.match(body)
        if first is None:
            return None
        pronoun, rest = first.group(1).lower(), first.group(2)
        plain = _NO_LONGER.sub(" ", rest) if negated else rest
        words = re.findall(r"[a-z']+", plain.lower())
        if not words or words[0] in _SKIP or len(words) < 2:
            return None
        verb = words[:2] if words[0] in ("am", "have", "'m") or pronoun in ("my", "our") else words[:1]
        tail = words[len(verb):]
        if tail and tail[0] in _PREPS:
            verb = [*verb, tail[0]]
        key = "fact:" + "-".join([pronoun.replace("'", "").replace(" ", "-"), *verb])
        if retract or negated:
            return Operation("delete", key, None, sentence)
        text = sentence if sentence[-1] in ".!" else sentence + "."
        return Operation("add", key, text[0].upper() + text[1:])

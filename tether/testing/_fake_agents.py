"""What the fake provider tells agents that call their tools in words, not through ``tools``: a ReAct
agent (``Action:`` / ``Action Input:``, tools listed as ``Tool Name:`` / ``Tool Args:``) or a CodeAct
agent (code in ``<execute>`` tags calling ``def`` stubs). Once per user turn the call, after its result the answer."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["agent_text"]

_TOOL = re.compile(r"Tool Name:\s*(\S+)")
_ARGS = re.compile(r"^Tool Arg(?:s|uments):\s*(\{.*\})\s*$", re.MULTILINE)
_DEF = re.compile(r"^def (\w+)\((.*)\)(?:\s*->\s*[^:]+)?:\s*$", re.MULTILINE)
_STUB = re.compile(r"^\s*\.\.\.\s*$", re.MULTILINE)
_OBSERVATION = "Observation:"
_CODE_RESULT = "Result of executing"
_VALUES = {"int": "1", "float": "1.5", "bool": "True"}


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p["text"]) for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _react_tools(system: str) -> list[tuple[str, Any]]:
    """Each ``Tool Name:`` of the prompt with the JSON schema of its ``Tool Args:`` (``{}`` if none parses)."""
    starts = list(_TOOL.finditer(system))
    tools = []
    for i, found in enumerate(starts):
        chunk = system[found.end():starts[i + 1].start() if i + 1 < len(starts) else len(system)]
        args = _ARGS.search(chunk)
        try:
            schema = json.loads(args.group(1)) if args else {}
        except ValueError:
            schema = {}
        tools.append((found.group(1), schema))
    return tools


def _ran(messages: Sequence[Mapping[str, Any]], result: str) -> tuple[bool, str]:
    """Whether a tool ran since the user last spoke (a user message starting with ``result``, or a
    ``tool`` message), and what the user last said."""
    for message in reversed(messages):
        role, text = message.get("role"), _text(message.get("content")).lstrip()
        if role == "tool":
            return True, ""
        if role == "user":
            if text.startswith(result):
                return True, ""
            return False, text
    return False, ""


def _named(tools: Sequence[str], said: str) -> int:
    """The tool the user's words name as a whole word (the longest), else the first."""
    named = [i for i, t in enumerate(tools) if re.search(rf"(?<![\w-]){re.escape(t)}(?![\w-])", said)]
    return max(named, key=lambda i: len(tools[i])) if named else 0


def _stubs(system: str) -> list[tuple[str, str]]:
    """The functions the prompt lists (name, parameters): each ``def`` whose body is ``...`` (not an
    example's code)."""
    heads = list(_DEF.finditer(system))
    return [(h.group(1), h.group(2)) for i, h in enumerate(heads)
            if _STUB.search(system, h.end(), heads[i + 1].start() if i + 1 < len(heads) else len(system))]


def _argument(parameter: str) -> str | None:
    """A Python value for one parameter of a ``def`` line, None for those it may leave out."""
    name, _, annotation = parameter.partition(":")
    name, annotation = name.strip(), annotation.partition("=")[0].strip()
    if not name or name.startswith("*") or "=" in parameter or name in ("self", "cls"):
        return None
    return f"{name}={_VALUES.get(annotation, repr('fake ' + name))}"


def agent_text(messages: Sequence[Mapping[str, Any]], answer: Callable[[], str],
               plausible: Callable[[Any], Any]) -> str | None:
    """What a ReAct or CodeAct agent's model says next (``answer()`` its words when it answers;
    ``plausible(schema)`` the arguments of a tool), or None when the system prompt asks for neither."""
    system = "\n".join(_text(m.get("content")) for m in messages if m.get("role") in ("system", "developer"))
    if "Action Input:" in system and (tools := _react_tools(system)):
        ran, said = _ran(messages, _OBSERVATION)
        if ran:
            return f"Thought: I can answer without using any more tools.\nAnswer: {answer()}"
        name, schema = tools[_named([t[0] for t in tools], said)]
        return (f"Thought: I need to use a tool to help me answer the question.\nAction: {name}\n"
                f"Action Input: {json.dumps(plausible(schema))}")
    if "<execute>" in system:
        ran, said = _ran(messages, _CODE_RESULT)
        if ran:
            return answer()
        functions = _stubs(system)
        if not functions:
            return "<execute>\nprint(1 + 1)\n</execute>"
        name, parameters = functions[_named([f[0] for f in functions], said)]
        arguments = [a for p in re.split(r",(?![^\[]*\])", parameters) if (a := _argument(p)) is not None]
        return f"<execute>\nprint({name}({', '.join(arguments)}))\n</execute>"
    return None

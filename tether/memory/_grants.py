"""Who may read and write which namespaces, from ``[memory.grants]`` in tether.toml.

::

    [memory.grants]
    support-bot = { read = ["agent:{agent}", "team:docs", "global"], write = ["agent:{agent}", "team:docs"] }
    "*"         = { read = ["agent:{agent}", "global"], write = ["agent:{agent}"] }

Patterns are namespaces, optionally with ``*`` (``user:*``, or ``*`` for all);
``{agent}`` stands for the agent's own id. An agent's grants are its own entry plus the
``"*"`` entry. With no ``[memory.grants]`` table at all, grants are off: every agent may
read and write every namespace (:meth:`Grants.open`).

The same grants give the NATS permissions that let the server enforce writes
(:func:`nats_permissions`): a memory event's subject ends in its namespace, so an agent
may publish only on the namespaces it can write (``docs/subjects.md``).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, TypeAdapter, ValidationError

from tether._configfile import problems
from tether.bus import encode_token

from ._errors import InvalidMemory, MemoryAccessDenied

__all__ = ["Grant", "GrantTable", "Grants", "NatsPermissions", "nats_permissions"]

Mode = Literal["read", "write"]
_Pattern = Annotated[StrictStr, Field(min_length=1)]


class GrantTable(BaseModel):
    """One agent's entry of ``[memory.grants]``: namespace patterns it may read and write."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    read: list[_Pattern] = []
    """Namespaces, optionally with '*'; '{agent}' stands for the agent's own id."""
    write: list[_Pattern] = []
    """Namespaces, optionally with '*'; '{agent}' stands for the agent's own id."""


GrantsTable = dict[str, GrantTable]
_GRANTS = TypeAdapter(GrantsTable)


@dataclass(frozen=True)
class Grant:
    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()


@dataclass(frozen=True)
class Grants:
    """Read and write grants per agent; ``enabled=False`` allows everything."""

    agents: Mapping[str, Grant] = field(default_factory=dict)
    enabled: bool = True

    @classmethod
    def open(cls) -> Grants:
        return cls({}, enabled=False)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str | None = None) -> Grants:
        """``[memory.grants]``; :class:`InvalidMemory` names the file and the bad key."""
        try:
            table = _GRANTS.validate_python(data)
        except ValidationError as exc:
            found = problems(exc, data, root=GrantsTable, prefix=("memory", "grants"))
            raise InvalidMemory("\n".join(f"{source}: {path}: {problem}" if source else f"{path}: {problem}"
                                          for path, problem in found)) from None
        return cls.of(table)

    @classmethod
    def of(cls, table: Mapping[str, GrantTable]) -> Grants:
        """The grants of a validated ``[memory.grants]``."""
        return cls({str(agent): Grant(tuple(entry.read), tuple(entry.write)) for agent, entry in table.items()})

    def patterns(self, agent: str | None, mode: Mode) -> tuple[str, ...]:
        """The namespace patterns ``agent`` may use for ``mode``, with ``{agent}`` filled in."""
        if not self.enabled:
            return ("*",)
        out: list[str] = []
        for name in ((agent,) if agent else ()) + ("*",):
            grant = self.agents.get(name) if name else None
            if grant is None:
                continue
            for pattern in grant.read if mode == "read" else grant.write:
                if "{agent}" in pattern:
                    if not agent:
                        continue
                    pattern = pattern.replace("{agent}", agent)
                out.append(pattern)
        return tuple(dict.fromkeys(out))

    def allows(self, agent: str | None, namespace: str, mode: Mode) -> bool:
        return any(fnmatch.fnmatchcase(namespace, p) for p in self.patterns(agent, mode))

    def check(self, agent: str | None, namespace: str, mode: Mode) -> None:
        """``MemoryAccessDenied`` unless ``agent`` may ``mode`` the namespace."""
        if not self.allows(agent, namespace, mode):
            raise MemoryAccessDenied(agent, namespace, mode)

    def readable(self, agent: str | None, namespaces: Iterable[str]) -> list[str]:
        return [n for n in namespaces if self.allows(agent, n, "read")]


@dataclass(frozen=True)
class NatsPermissions:
    """NATS ``publish``/``subscribe`` allow lists for one agent, and what NATS cannot express."""

    agent: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    unenforceable: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"publish": {"allow": list(self.publish)}, "subscribe": {"allow": list(self.subscribe)}}

    def to_conf(self, *, password: str = "...") -> str:
        """A user block for nats-server's ``authorization { users = [...] }``."""
        pub = ",\n".join(f'        "{s}"' for s in self.publish)
        sub = ", ".join(f'"{s}"' for s in self.subscribe)
        return (f'{{ user: "{self.agent}", password: "{password}",\n  permissions: {{\n'
                f"    publish: {{ allow: [\n{pub}\n    ] }},\n    subscribe: {{ allow: [{sub}] }}\n  }} }}")


def _namespace_token(pattern: str) -> str | None:
    """The last subject token for a write pattern: exact namespaces and ``*`` only."""
    if pattern == "*":
        return "*"
    if "*" in pattern or "?" in pattern or "[" in pattern:
        return None  # a wildcard inside a token: NATS wildcards are whole tokens
    return encode_token(pattern)


def nats_permissions(agent: str, grants: Grants, *, own_events: bool = True) -> NatsPermissions:
    """The subjects agent ``agent`` may publish on, given its memory write grants.

    ``own_events`` adds its run, LLM and tool events (``tether.evt.<agent>.*.run.>`` ...), as in
    ``docs/subjects.md``. A pattern such as ``user:*`` has no NATS equivalent (a wildcard
    cannot stand for part of a token) and is listed in ``unenforceable``: grant such
    namespaces one by one, or let tether enforce them in the client.
    Reads go through the memory view, not through subjects, and are enforced by the client.
    """
    me = encode_token(agent)
    publish = [f"tether.evt.{me}.*.{kind}.>" for kind in ("run", "llm", "tool")] if own_events else []
    unenforceable = []
    for pattern in grants.patterns(agent, "write"):
        token = _namespace_token(pattern)
        if token is None:
            unenforceable.append(pattern)
        else:
            publish.append(f"tether.evt.{me}.*.memory.*.{token}")
    return NatsPermissions(agent, tuple(dict.fromkeys(publish)), ("_INBOX.>",), tuple(unenforceable))

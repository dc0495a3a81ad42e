"""``tether auth``'s realm: the operator, the ``TETHER`` account and the credentials it issues.

Kept in ``<home>/auth`` (``realm.json`` holds the seeds, mode 0600): ``server.conf`` is what each
nats-server includes (operator mode, accounts preloaded); ``<name>.creds`` is one identity's
credentials. The service identity (tether's own processes) may do anything in the account; an
agent may publish only its own events and the memory namespaces it may write, and read (create
a consumer on EVENTS, or subscribe) only its own events and the namespaces it may read. The
server enforces it: the permissions are in the user JWT, signed by the account key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ._jwt import KeyPair, account_jwt, creds_file, new_key, operator_jwt, server_config, user_jwt
from ._subjects import encode_token

__all__ = ["AgentPermissions", "Realm", "agent_permissions"]

_OWN_KINDS = ("run", "llm", "tool", "call", "budget", "circuit")
_TETHER_DURABLES = ("tether-projector", "tether-otel", "tether-workers")


@dataclass(frozen=True)
class AgentPermissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    deny_publish: tuple[str, ...]


def agent_permissions(agent: str, *, writes: Sequence[str] = (), reads: Sequence[str] = ()) -> AgentPermissions:
    """What agent ``agent`` may publish and read, by the subject scheme's routing token.

    Writes: its own events of every kind but memory (``tether.evt.<agent>.*.<kind>.>``), and
    ``memory.*`` events on the namespaces in ``writes``. Reads: JetStream consumers on EVENTS
    whose filter is its own events or a namespace in ``reads`` (nats-py puts the filter in the
    create subject, ``$JS.API.CONSUMER.CREATE.EVENTS.<name>.<filter>``, which the server checks
    against the consumer's config), core subscriptions on those namespaces, and its inboxes; and
    the info of consumers on EVENTS (positions and filters, never events), which the memory view
    of its namespaces needs (``AsyncMemory(namespaces=...)``).
    Namespaces are exact (NATS wildcards are whole tokens); its own memory is ``agent:<agent>``.
    """
    me = encode_token(agent)
    api = "$JS.API.CONSUMER.CREATE.EVENTS.*"
    publish = [f"tether.evt.{me}.*.{kind}.>" for kind in _OWN_KINDS]
    publish += [f"tether.evt.{me}.*.memory.*.{encode_token(ns)}" for ns in writes]
    publish += ["$JS.API.INFO", "$JS.API.STREAM.INFO.EVENTS", f"{api}.tether.evt.{me}.>"]
    publish += [f"{api}.tether.evt.*.*.memory.*.{encode_token(ns)}" for ns in reads]
    # Where its consumers are (positions and filters, never events): how the memory view of
    # its namespaces (``AsyncMemory(namespaces=...)``) knows each has sent everything.
    publish += ["$JS.API.CONSUMER.INFO.EVENTS.*"]
    subscribe = ["_INBOX.>", *(f"tether.evt.*.*.memory.*.{encode_token(ns)}" for ns in reads)]
    # A consumer named as one of tether's own would be updated in place: never let an agent try.
    deny = [f"$JS.API.CONSUMER.CREATE.EVENTS.{name}.>" for name in _TETHER_DURABLES]
    return AgentPermissions(tuple(dict.fromkeys(publish)), tuple(dict.fromkeys(subscribe)), tuple(deny))


class Realm:
    """The keys of one tether deployment, under ``directory`` (``<home>/auth``)."""

    def __init__(self, directory: Path, operator: KeyPair, system: KeyPair, account: KeyPair) -> None:
        self.directory = directory
        self.operator, self.system, self.account = operator, system, account

    @property
    def server_conf(self) -> Path:
        return self.directory / "server.conf"

    @classmethod
    def load(cls, directory: Path) -> Realm | None:
        try:
            raw = json.loads((directory / "realm.json").read_text())
            return cls(directory, *(KeyPair.from_seed(raw[k]) for k in ("operator", "system", "account")))
        except (OSError, ValueError, KeyError):
            return None

    @classmethod
    def create(cls, directory: Path) -> Realm:
        """A new realm (operator, system account, TETHER account) and its ``server.conf``."""
        realm = cls(directory, new_key("operator"), new_key("account"), new_key("account"))
        directory.mkdir(parents=True, exist_ok=True)
        _secret(directory / "realm.json", json.dumps({"operator": realm.operator.seed, "system": realm.system.seed,
                                                      "account": realm.account.seed}))
        realm.server_conf.write_text(realm.server_lines())
        return realm

    def server_lines(self) -> str:
        accounts = {self.system.public: account_jwt(self.operator, self.system, "SYS", jetstream=False),
                    self.account.public: account_jwt(self.operator, self.account, "TETHER", jetstream=True)}
        return server_config(operator_jwt(self.operator, self.system), self.system, accounts)

    def service(self, name: str = "tether") -> Path:
        """Credentials for tether's own processes (workers, projector, gateway): the whole account."""
        user = new_key("user")
        return self._write(name, creds_file(user_jwt(self.account, user, name), user))

    def agent(self, agent: str, *, writes: Sequence[str] = (), reads: Sequence[str] = ()) -> Path:
        """Credentials confining ``agent`` (see :func:`agent_permissions`)."""
        perms = agent_permissions(agent, writes=writes, reads=reads)
        user = new_key("user")
        jwt = user_jwt(self.account, user, agent, publish=list(perms.publish), subscribe=list(perms.subscribe),
                       deny_publish=list(perms.deny_publish))
        return self._write(f"agent-{encode_token(agent)}", creds_file(jwt, user))

    def _write(self, stem: str, text: str) -> Path:
        path = self.directory / f"{stem}.creds"
        _secret(path, text)
        return path


def _secret(path: Path, text: str) -> None:
    """Write ``text`` readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)

"""The gateway's configuration: ``[gateway]`` in ``tether.toml`` (the policy parser skips it).

Upstream providers and policies are the worker's (``[providers.*]``, ``[routes.*]``...): the
gateway reads the same file with :func:`~tether.middleware.load_worker_config`, then its own
section::

    [gateway]
    host = "127.0.0.1"
    port = 8400
    default_provider = "openai"     # models no [gateway.models] entry names go here; unset: 404
    max_body_mb = 20                # larger requests get 413
    capture = true                  # record request and response bodies in the events
    retry_after_s = 5               # Retry-After of a give-up with no better hint
    keys_env = "TETHER_GATEWAY_KEYS"  # more keys from the environment: "KEY=agent,KEY2=agent2"
    redact = ["customer_token"]     # more body fields to redact

    [gateway.keys]                  # gateway key -> agent id
    "tg-abc" = "openclaw-main"
    "sha256:9f86d08..." = "ci-bot"  # the key's SHA-256 (hex): the file holds no key
    "tg-ops" = "*"                  # trusted: the agent is whatever x-tether-agent says

    [gateway.models]                # model name or glob -> "provider" or "provider:model"
    "gpt-4o" = "openai"
    "fast" = "openai:gpt-4o-mini"
    "claude-*" = "anthropic"

Nothing here does I/O but :func:`load_gateway_config` (which reads the file and the
environment); :meth:`GatewayConfig.from_mapping` is pure.
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tether.middleware import PolicyConfigError, PolicySet, ProviderConfig, load_worker_config

from ._routing import ModelRoute, parse_route

__all__ = ["DEFAULT_PORT", "TRUSTED", "GatewayConfig", "digest", "load_gateway_config"]

DEFAULT_PORT = 8400
TRUSTED = "*"
"""The agent of a trusted key: calls are recorded as the ``x-tether-agent`` header says."""

_KNOWN = ("host", "port", "default_provider", "max_body_mb", "capture", "retry_after_s", "keys_env", "redact",
          "keys", "models")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def digest(key: str) -> str:
    """The SHA-256 (hex) a gateway key is looked up by (and may be configured as)."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class GatewayConfig:
    """Everything the gateway runs with. ``keys`` maps a key's :func:`digest` to its agent."""

    providers: Mapping[str, ProviderConfig] = field(default_factory=dict)
    policies: PolicySet = field(default_factory=PolicySet.default)
    keys: Mapping[str, str] = field(default_factory=dict)
    plain_keys: tuple[str, ...] = field(default=(), repr=False)
    """Keys written in clear in the configuration: redacted wherever they appear in a body."""
    models: tuple[ModelRoute, ...] = ()
    default_provider: str | None = None
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    max_body_bytes: int = 20 * 1024 * 1024
    capture: bool = True
    retry_after_s: float = 5.0
    redact: tuple[str, ...] = ()
    source: str | None = None

    def __post_init__(self) -> None:
        if self.default_provider is not None and self.default_provider not in self.providers:
            raise PolicyConfigError("gateway.default_provider", f"{self.default_provider!r} is not a configured "
                                    f"provider (known: {', '.join(sorted(self.providers)) or 'none'})",
                                    source=self.source)
        for route in self.models:
            if route.provider not in self.providers:
                raise PolicyConfigError(f"gateway.models.{route.pattern}", f"provider {route.provider!r} is not "
                                        f"configured (add [providers.{route.provider}])", source=self.source)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, providers: Mapping[str, ProviderConfig] | None = None,
                     policies: PolicySet | None = None, environ: Mapping[str, str] | None = None,
                     source: str | None = None) -> GatewayConfig:
        """Parse a ``[gateway]`` table (pure: ``environ`` stands for the environment)."""
        env = os.environ if environ is None else environ

        def fail(path: str, problem: str) -> PolicyConfigError:
            return PolicyConfigError(f"gateway.{path}" if path else "gateway", problem, source=source)

        if not isinstance(data, Mapping):
            raise fail("", "must be a table")
        unknown = sorted(set(data) - set(_KNOWN))
        if unknown:
            raise fail(unknown[0], f"unknown key (known: {', '.join(_KNOWN)})")
        host = data.get("host", "127.0.0.1")
        if not isinstance(host, str) or not host:
            raise fail("host", "must be a host name or address")
        port = data.get("port", DEFAULT_PORT)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise fail("port", "must be a port number (0: any free port)")
        max_mb = data.get("max_body_mb", 20)
        if isinstance(max_mb, bool) or not isinstance(max_mb, int | float) or max_mb <= 0:
            raise fail("max_body_mb", "must be a positive number of megabytes")
        capture = data.get("capture", True)
        if not isinstance(capture, bool):
            raise fail("capture", "must be true or false")
        retry_after = data.get("retry_after_s", 5.0)
        if isinstance(retry_after, bool) or not isinstance(retry_after, int | float) or retry_after < 0:
            raise fail("retry_after_s", "must be a number of seconds, at least 0")
        default = data.get("default_provider")
        if default is not None and (not isinstance(default, str) or not default):
            raise fail("default_provider", "must be a provider name")
        redact = data.get("redact", [])
        if not isinstance(redact, list) or not all(isinstance(f, str) and f for f in redact):
            raise fail("redact", "must be a list of field names")
        keys: dict[str, str] = {}
        plain: list[str] = []
        table = data.get("keys", {})
        if not isinstance(table, Mapping):
            raise fail("keys", "must be a table of key = agent id")
        for key, agent in table.items():
            _add_key(keys, plain, key, agent, lambda problem, k=key: fail(f'keys."{_shown(k)}"', problem))
        keys_env = data.get("keys_env")
        if keys_env is not None:
            if not isinstance(keys_env, str) or not keys_env:
                raise fail("keys_env", "must name an environment variable")
            for pair in filter(None, (p.strip() for p in env.get(keys_env, "").split(","))):
                key, sep, agent = pair.rpartition("=")
                if not sep:
                    raise fail("keys_env", f"${keys_env}: expected KEY=agent pairs separated by commas")
                _add_key(keys, plain, key.strip(), agent.strip(),
                         lambda problem: fail("keys_env", f"${keys_env}: {problem}"))
        models_table = data.get("models", {})
        if not isinstance(models_table, Mapping):
            raise fail("models", 'must be a table of model = "provider" or "provider:model"')
        models = []
        for pattern, value in models_table.items():
            try:
                models.append(parse_route(pattern, value))
            except ValueError as exc:
                raise fail(f'models."{pattern}"', str(exc)) from None
        return cls(providers=dict(providers or {}), policies=policies or PolicySet.default(), keys=keys,
                   plain_keys=tuple(plain), models=tuple(models), default_provider=default, host=host, port=port,
                   max_body_bytes=int(max_mb * 1024 * 1024), capture=capture, retry_after_s=float(retry_after),
                   redact=tuple(redact), source=source)

    def upstream_keys(self) -> tuple[str, ...]:
        """The providers' keys (from the environment): redacted wherever they appear."""
        return tuple(p.api_key for p in self.providers.values() if p.api_key)


def _shown(key: str) -> str:
    """A key as an error message may show it: its first characters only."""
    return key if key.startswith("sha256:") else (key[:4] + "…" if len(key) > 4 else "…")


def _add_key(keys: dict[str, str], plain: list[str], key: Any, agent: Any, fail: Any) -> None:
    if not isinstance(key, str) or not key or key != key.strip() or any(c.isspace() for c in key):
        raise fail("a key is a non-empty string without spaces")
    if not isinstance(agent, str) or not agent or agent != agent.strip():
        raise fail("the agent id must be a non-empty string (or \"*\" for a trusted key)")
    if key.startswith("sha256:"):
        hashed = key.removeprefix("sha256:").lower()
        if not _HEX64.match(hashed):
            raise fail("a hashed key is sha256: followed by 64 hex digits")
        keys[hashed] = agent
        return
    if len(key) < 6:
        raise fail("a key must be at least 6 characters")
    keys[digest(key)] = agent
    plain.append(key)


def load_gateway_config(path: str | Path | None = None, *, cwd: Path | None = None,
                        environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """``[gateway]`` with the providers and policies of ``tether.toml`` (or ``[tool.tether]`` in
    ``pyproject.toml``, or ``path``); defaults when there is no file."""
    worker = load_worker_config(path, cwd=cwd)
    data: Mapping[str, Any] = {}
    if worker.source is not None:
        file = Path(worker.source)
        raw: dict[str, Any] = tomllib.loads(file.read_text(encoding="utf-8"))  # parsed once already
        if file.name == "pyproject.toml":
            raw = (raw.get("tool") or {}).get("tether") or {}
        data = raw.get("gateway") or {}
    return GatewayConfig.from_mapping(data, providers=worker.providers, policies=worker.policies, environ=environ,
                                      source=worker.source)

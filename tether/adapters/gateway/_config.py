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
    run_idle_s = 300                # a run with no call for this long is finished (ended_by "idle")
    infer_tools = true              # tool spans from the conversation (needs capture)

    [gateway.keys]                  # gateway key -> agent id
    "tg-abc" = "openclaw-main"
    "sha256:9f86d08..." = "ci-bot"  # the key's SHA-256 (hex): the file holds no key
    "tg-ops" = "*"                  # trusted: the agent is whatever x-tether-agent says

    [gateway.models]                # model name or glob -> "provider" or "provider:model"
    "gpt-4o" = "openai"
    "fast" = "openai:gpt-4o-mini"
    "claude-*" = "anthropic"

:class:`GatewaySection` is the schema of ``[gateway]`` (defaults included); nothing here
does I/O but :func:`load_gateway_config` (which reads the file and the environment);
:meth:`GatewayConfig.from_mapping` is pure.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict, StrictBool, StrictInt, StrictStr, ValidationError

from tether.middleware import ELSEWHERE, PolicyConfigError, PolicySet, ProviderConfig, WorkerFile, read_table

from ._routing import ModelRoute, parse_route

__all__ = ["DEFAULT_PORT", "TRUSTED", "GatewayConfig", "GatewaySection", "digest", "load_gateway_config"]

DEFAULT_PORT = 8400
TRUSTED = "*"
"""The agent of a trusted key: calls are recorded as the ``x-tether-agent`` header says."""

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_Name = Annotated[StrictStr, Field(min_length=1)]
_String = Annotated[Any, Field(json_schema_extra={"type": "string"})]  # checked by hand: a key is never shown whole


def digest(key: str) -> str:
    """The SHA-256 (hex) a gateway key is looked up by (and may be configured as)."""
    return hashlib.sha256(key.encode()).hexdigest()


class GatewaySection(BaseModel):
    """``[gateway]`` of ``tether.toml``."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    host: _Name = "127.0.0.1"
    port: Annotated[StrictInt, Field(ge=0, le=65535)] = DEFAULT_PORT
    """0: any free port."""
    default_provider: _Name | None = None
    """Models no [gateway.models] entry names go here; unset: 404."""
    max_body_mb: Annotated[float, Strict(), Field(gt=0)] = 20
    """Larger requests get 413."""
    capture: StrictBool = True
    """Record request and response bodies in the events."""
    retry_after_s: Annotated[float, Strict(), Field(ge=0)] = 5.0
    """Retry-After of a give-up with no better hint."""
    keys_env: _Name | None = None
    """More keys from this environment variable: "KEY=agent,KEY2=agent2"."""
    redact: list[_Name] = []
    """More body fields to redact."""
    run_idle_s: Annotated[float, Strict(), Field(gt=0)] = 300.0
    """A run with no call for this long is finished (run.finished, ended_by "idle"); it resumes if its agent
    calls again."""
    infer_tools: StrictBool = True
    """Record the tool calls seen in the conversation as tool spans (inferred; needs capture)."""
    keys: dict[str, _String] = {}
    """Gateway key (or "sha256:" and its SHA-256 in hex) -> agent id; agent "*": trusted, the agent is
    whatever x-tether-agent says."""
    models: dict[str, _String] = {}
    """Model name or glob -> "provider" or "provider:model"."""


_DEFAULTS = GatewaySection()


@dataclass(frozen=True)
class GatewayConfig:
    """Everything the gateway runs with. ``keys`` maps a key's :func:`digest` to its agent."""

    providers: Mapping[str, ProviderConfig] = field(default_factory=dict)
    policies: PolicySet = field(default_factory=PolicySet.default)
    keys: Mapping[str, str] = field(default_factory=dict)
    plain_keys: tuple[str, ...] = field(default=(), repr=False)
    """Keys written in clear in the configuration: redacted wherever they appear in a body."""
    models: tuple[ModelRoute, ...] = ()
    default_provider: str | None = _DEFAULTS.default_provider
    host: str = _DEFAULTS.host
    port: int = _DEFAULTS.port
    max_body_bytes: int = int(_DEFAULTS.max_body_mb * 1024 * 1024)
    capture: bool = _DEFAULTS.capture
    retry_after_s: float = _DEFAULTS.retry_after_s
    redact: tuple[str, ...] = ()
    run_idle_s: float = _DEFAULTS.run_idle_s
    infer_tools: bool = _DEFAULTS.infer_tools
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
        try:
            section = GatewaySection.model_validate(data)
        except ValidationError as exc:
            raise PolicyConfigError.of(exc, data, root=GatewaySection, source=source, prefix=("gateway",)) from None
        return cls.from_section(section, providers=providers, policies=policies, environ=environ, source=source)

    @classmethod
    def from_section(cls, section: GatewaySection, *, providers: Mapping[str, ProviderConfig] | None = None,
                     policies: PolicySet | None = None, environ: Mapping[str, str] | None = None,
                     source: str | None = None) -> GatewayConfig:
        """The gateway of a validated ``[gateway]``: its keys (and ``$keys_env``'s) and model routes."""
        env = os.environ if environ is None else environ

        def fail(path: str, problem: str) -> PolicyConfigError:
            return PolicyConfigError(f"gateway.{path}", problem, source=source)

        keys: dict[str, str] = {}
        plain: list[str] = []
        for key, agent in section.keys.items():
            _add_key(keys, plain, key, agent, lambda problem, k=key: fail(f'keys."{_shown(k)}"', problem))
        keys_env = section.keys_env
        if keys_env is not None:
            for pair in filter(None, (p.strip() for p in env.get(keys_env, "").split(","))):
                key, sep, agent = pair.rpartition("=")
                if not sep:
                    raise fail("keys_env", f"${keys_env}: expected KEY=agent pairs separated by commas")
                _add_key(keys, plain, key.strip(), agent.strip(),
                         lambda problem: fail("keys_env", f"${keys_env}: {problem}"))
        models = []
        for pattern, value in section.models.items():
            try:
                models.append(parse_route(pattern, value))
            except ValueError as exc:
                raise fail(f'models."{pattern}"', str(exc)) from None
        return cls(providers=dict(providers or {}), policies=policies or PolicySet.default(), keys=keys,
                   plain_keys=tuple(plain), models=tuple(models), default_provider=section.default_provider,
                   host=section.host, port=section.port, max_body_bytes=int(section.max_body_mb * 1024 * 1024),
                   capture=section.capture, retry_after_s=section.retry_after_s, redact=tuple(section.redact),
                   run_idle_s=section.run_idle_s, infer_tools=section.infer_tools, source=source)

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
    source, data = read_table(path, cwd)
    worker = WorkerFile.parse({k: v for k, v in data.items() if k not in ELSEWHERE}, source=source)
    config = worker.worker_config(source)  # the providers' keys: from the process's environment
    return GatewayConfig.from_mapping(data.get("gateway", {}), providers=config.providers, policies=config.policies,
                                      environ=environ, source=source)

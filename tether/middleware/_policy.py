"""Policies: what tether may do with a call, per route, in code or in a config file.

A *route* names what is called: ``"provider:model"`` for an LLM call
(``"openai:gpt-4o"``), ``"tool:<name>"`` for a tool. :meth:`PolicySet.policy_for` picks
the most specific policy: the exact route, then ``"provider:*"`` (or ``"tool:*"``), then
``"*"``, then the built-in :class:`Policy` defaults.

Configuration lives in ``tether.toml``, or under ``[tool.tether]`` in ``pyproject.toml``
(see :func:`load_policies`). The schema, with every key and its default::

    [runaway]
    max_calls_per_run = 500        # calls one run may make; false = no limit
    max_identical_calls = 5        # times one run may make the very same call; false = no limit

    [routes."*"]                   # every route; other routes inherit from it key by key
    timeout_s = 60.0               # per attempt
    deadline_s = 300.0             # per call, all attempts and backoffs included; false = none
    max_total_attempts = false     # default: retry.max_attempts + fallback.max_fallbacks

    [routes."*".retry]
    max_attempts = 3               # attempts on one target
    base_delay_s = 0.25            # backoff: full jitter, uniform(0, min(max, base * 2**(n-1)))
    max_delay_s = 20.0
    retry_statuses = [408, 409, 425, 429, 500, 502, 503, 504]
    retry_timeouts = true
    retry_connection_errors = true
    honour_retry_after = true      # Retry-After and the providers' rate-limit reset headers
    max_retry_after_s = 60.0       # longer hints are capped to this

    [routes."*".breaker]           # one circuit breaker per route, shared by all workers
    enabled = true
    failure_streak = 5             # opens after this many failures in a row...
    failure_rate = 0.5             # ...or this share of failures...
    min_calls = 10                 # ...once this many calls are in the window
    window = 20                    # calls the failure rate is measured over
    cooldown_s = 30.0              # open this long, then one probe call half-opens it

    [routes."*".fallback]
    targets = []                   # ordered "provider:model" alternatives
    on = ["rate_limit", "server_error", "timeout", "connection", "breaker_open"]
    max_fallbacks = 2
    after_retry_after_s = 5.0      # a longer Retry-After falls back at once

    [routes."*".rate_limit]        # per route (model); see [rate_limits] for per provider
    requests_per_minute = false
    tokens_per_minute = false

    [rate_limits.openai]           # per provider, shared by all workers; "*" for any provider
    requests_per_minute = 500
    tokens_per_minute = 200000

    [budgets.run."*"]              # each run; a run id of its own replaces the "*" limits
    usd = 1.0                      # any of usd, tokens, calls; a missing one is no limit
    [budgets.agent."bot"]
    calls = 1000
    [budgets.tenant."acme"]
    usd = 50.0

An example::

    [routes."*".retry]
    max_attempts = 4

    [routes."openai:gpt-4o"]
    timeout_s = 30

    [routes."openai:gpt-4o".fallback]
    targets = ["openai:gpt-4o-mini", "anthropic:claude-haiku-4-5"]

    [routes."tool:*".retry]
    max_attempts = 1

Inheritance is field by field: ``routes."openai:gpt-4o"`` takes every key it does not
set from ``routes."openai:*"``, which takes its own from ``routes."*"``. Budgets do not
inherit: a specific id's table replaces the scope's ``"*"`` table.

TOML has no null, so ``false`` switches an optional limit off. An unknown key, a wrong
type or a bad value raises :class:`PolicyConfigError` naming the exact place, e.g.
``routes."openai:*".retry.max_atempts: unknown key``.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tether._configfile import config_file, tether_table

from ._failures import FailureCategory

__all__ = [
    "BreakerPolicy",
    "BudgetLimits",
    "BudgetScope",
    "FallbackPolicy",
    "Policy",
    "PolicyConfigError",
    "PolicySet",
    "RateLimitPolicy",
    "RetryPolicy",
    "RunawayGuard",
    "Target",
    "load_policies",
]

BudgetScope = Literal["run", "agent", "tenant"]
CATEGORIES: frozenset[str] = frozenset(
    {"rate_limit", "server_error", "client_error", "timeout", "connection", "malformed", "breaker_open",
     "tool_error", "cancelled"}
)
_SCOPES: tuple[BudgetScope, ...] = ("run", "agent", "tenant")


class PolicyConfigError(ValueError):
    """A policy configuration that tether refuses, with the path to the offending key."""

    def __init__(self, path: str, problem: str, *, source: str | None = None) -> None:
        self.path = path
        self.problem = problem
        self.source = source
        text = f"{path}: {problem}" if path else problem
        super().__init__(f"{source}: {text}" if source else text)


class _Invalid(ValueError):
    """A bad field value, raised by the dataclasses below; the parser adds the path."""

    def __init__(self, field_name: str, problem: str) -> None:
        self.field = field_name
        self.problem = problem
        super().__init__(f"{field_name}: {problem}")


def _require(ok: bool, field_name: str, problem: str) -> None:
    if not ok:
        raise _Invalid(field_name, problem)


# -- the policy dataclasses ------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where an LLM call goes: a provider and a model."""

    provider: str
    model: str

    def __post_init__(self) -> None:
        _require(bool(self.provider) and ":" not in self.provider, "provider",
                 f"must be a non-empty name without ':', got {self.provider!r}")
        _require(bool(self.model), "model", "must not be empty")

    @property
    def route(self) -> str:
        return f"{self.provider}:{self.model}"

    @classmethod
    def parse(cls, route: str) -> Target:
        """``"openai:gpt-4o"`` -> ``Target("openai", "gpt-4o")``; the model may contain ':'."""
        provider, sep, model = route.partition(":")
        if not sep or not provider or not model:
            raise ValueError(f"a target is written 'provider:model', got {route!r}")
        return cls(provider, model)

    def __str__(self) -> str:
        return self.route


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    """Attempts on one target, the first included."""
    base_delay_s: float = 0.25
    max_delay_s: float = 20.0
    retry_statuses: frozenset[int] = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
    retry_timeouts: bool = True
    retry_connection_errors: bool = True
    honour_retry_after: bool = True
    max_retry_after_s: float = 60.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "retry_statuses", frozenset(self.retry_statuses))
        _require(self.max_attempts >= 1, "max_attempts", f"must be at least 1, got {self.max_attempts}")
        _require(self.base_delay_s >= 0, "base_delay_s", f"must not be negative, got {self.base_delay_s}")
        _require(self.max_delay_s >= 0, "max_delay_s", f"must not be negative, got {self.max_delay_s}")
        bad = sorted(s for s in self.retry_statuses if not 100 <= s <= 599)
        _require(not bad, "retry_statuses", f"HTTP statuses lie in 100..599, got {bad}")
        _require(self.max_retry_after_s >= 0, "max_retry_after_s",
                 f"must not be negative, got {self.max_retry_after_s}")


@dataclass(frozen=True)
class BreakerPolicy:
    enabled: bool = True
    failure_streak: int = 5
    failure_rate: float = 0.5
    min_calls: int = 10
    window: int = 20
    cooldown_s: float = 30.0

    def __post_init__(self) -> None:
        _require(self.failure_streak >= 1, "failure_streak", f"must be at least 1, got {self.failure_streak}")
        _require(0 < self.failure_rate <= 1, "failure_rate", f"must be in (0, 1], got {self.failure_rate}")
        _require(self.window >= 1, "window", f"must be at least 1, got {self.window}")
        _require(self.min_calls >= 1, "min_calls", f"must be at least 1, got {self.min_calls}")
        _require(self.min_calls <= self.window, "min_calls",
                 f"must not exceed window ({self.window}), got {self.min_calls}")
        _require(self.cooldown_s >= 0, "cooldown_s", f"must not be negative, got {self.cooldown_s}")


@dataclass(frozen=True)
class FallbackPolicy:
    targets: tuple[Target, ...] = ()
    """Ordered alternatives; strings such as ``"openai:gpt-4o-mini"`` are parsed."""
    on: frozenset[str] = frozenset({"rate_limit", "server_error", "timeout", "connection", "breaker_open"})
    """Failure categories (see ``Failure.category``) that may fall back."""
    max_fallbacks: int = 2
    after_retry_after_s: float = 5.0
    """Fall back at once, rather than wait, when the provider asks for a longer pause."""

    def __post_init__(self) -> None:
        targets: list[Target] = []
        for target in self.targets:
            if isinstance(target, str):
                try:
                    target = Target.parse(target)
                except ValueError as exc:
                    raise _Invalid("targets", str(exc)) from None
            targets.append(target)
        object.__setattr__(self, "targets", tuple(targets))
        object.__setattr__(self, "on", frozenset(self.on))
        unknown = sorted(set(self.on) - CATEGORIES)
        _require(not unknown, "on", f"unknown failure categories {unknown}; known: {sorted(CATEGORIES)}")
        _require(self.max_fallbacks >= 0, "max_fallbacks", f"must not be negative, got {self.max_fallbacks}")
        _require(self.after_retry_after_s >= 0, "after_retry_after_s",
                 f"must not be negative, got {self.after_retry_after_s}")

    def falls_back_on(self, category: FailureCategory) -> bool:
        return category in self.on


@dataclass(frozen=True)
class RateLimitPolicy:
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None

    def __post_init__(self) -> None:
        for name in ("requests_per_minute", "tokens_per_minute"):
            value = getattr(self, name)
            _require(value is None or value >= 1, name, f"must be at least 1 (or unset), got {value}")

    @property
    def limited(self) -> bool:
        return self.requests_per_minute is not None or self.tokens_per_minute is not None


@dataclass(frozen=True)
class Policy:
    """Everything that governs one call on one route."""

    retry: RetryPolicy = RetryPolicy()
    timeout_s: float = 60.0
    """Per attempt."""
    deadline_s: float | None = 300.0
    """Per call, from its first attempt, backoffs included."""
    breaker: BreakerPolicy = BreakerPolicy()
    fallback: FallbackPolicy = FallbackPolicy()
    rate_limit: RateLimitPolicy = RateLimitPolicy()
    """Per route; the per-provider limits live in :attr:`PolicySet.rate_limits`."""
    max_total_attempts: int | None = None

    def __post_init__(self) -> None:
        _require(self.timeout_s > 0, "timeout_s", f"must be positive, got {self.timeout_s}")
        _require(self.deadline_s is None or self.deadline_s > 0, "deadline_s",
                 f"must be positive (or unset), got {self.deadline_s}")
        _require(self.max_total_attempts is None or self.max_total_attempts >= 1, "max_total_attempts",
                 f"must be at least 1 (or unset), got {self.max_total_attempts}")

    @property
    def total_attempts(self) -> int:
        """Attempts one call may make across its whole fallback chain (never per target)."""
        if self.max_total_attempts is not None:
            return self.max_total_attempts
        return self.retry.max_attempts + self.fallback.max_fallbacks


@dataclass(frozen=True)
class BudgetLimits:
    usd: float | None = None
    tokens: int | None = None
    calls: int | None = None

    def __post_init__(self) -> None:
        for name in ("usd", "tokens", "calls"):
            value = getattr(self, name)
            _require(value is None or value >= 0, name, f"must not be negative, got {value}")


@dataclass(frozen=True)
class RunawayGuard:
    max_calls_per_run: int | None = 500
    max_identical_calls: int | None = 5

    def __post_init__(self) -> None:
        for name in ("max_calls_per_run", "max_identical_calls"):
            value = getattr(self, name)
            _require(value is None or value >= 1, name, f"must be at least 1 (or unset), got {value}")


_DEFAULT_POLICY = Policy()
_NO_RATE_LIMIT = RateLimitPolicy()


@dataclass(frozen=True)
class PolicySet:
    """All policies of one deployment: per route, per provider, per budget scope."""

    routes: Mapping[str, Policy] = field(default_factory=dict)
    budgets: Mapping[tuple[str, str], BudgetLimits] = field(default_factory=dict)
    """Keyed by (scope, id); id ``"*"`` is the default of its scope."""
    runaway: RunawayGuard = RunawayGuard()
    rate_limits: Mapping[str, RateLimitPolicy] = field(default_factory=dict)
    """Keyed by provider; ``"*"`` applies to providers without their own entry."""

    def policy_for(self, route: str) -> Policy:
        """The most specific policy: exact route, ``"provider:*"``, ``"*"``, then defaults."""
        policy = self.routes.get(route)
        if policy is not None:
            return policy
        prefix, sep, _ = route.partition(":")
        if sep:
            policy = self.routes.get(f"{prefix}:*")
            if policy is not None:
                return policy
        return self.routes.get("*", _DEFAULT_POLICY)

    def rate_limit_for(self, provider: str) -> RateLimitPolicy:
        return self.rate_limits.get(provider) or self.rate_limits.get("*") or _NO_RATE_LIMIT

    def budgets_for(
        self, *, run_id: str | None, agent_id: str | None, tenant: str | None
    ) -> list[tuple[BudgetScope, str, BudgetLimits]]:
        """The budgets a call is charged to, as ``(scope, id, limits)``.

        A ``"*"`` budget is a per-id default, not a shared pool: with
        ``budgets.run."*".usd = 1``, every run may spend $1. Scopes whose id is unknown
        (``None``) are skipped.
        """
        found: list[tuple[BudgetScope, str, BudgetLimits]] = []
        for scope, scope_id in zip(_SCOPES, (run_id, agent_id, tenant), strict=True):
            if scope_id is None:
                continue
            limits = self.budgets.get((scope, scope_id)) or self.budgets.get((scope, "*"))
            if limits is not None:
                found.append((scope, scope_id, limits))
        return found

    @classmethod
    def default(cls) -> PolicySet:
        return cls()

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any], *, source: str | None = None, ignore: Collection[str] = ()
    ) -> PolicySet:
        """Parse the configuration schema in this module's docstring.

        ``ignore`` names top-level sections owned by other parts of tether (they are
        skipped, not refused). ``source`` (a file name) prefixes error messages.
        """
        try:
            return _parse(data, ignore)
        except PolicyConfigError as exc:
            if source is None:
                raise
            raise PolicyConfigError(exc.path, exc.problem, source=source) from None


def load_policies(
    path: str | Path | None = None, *, cwd: Path | None = None, ignore: Collection[str] = ()
) -> PolicySet:
    """Load the policies from ``path``; else ``tether.toml`` in ``cwd``; else
    ``[tool.tether]`` in ``cwd``'s ``pyproject.toml``; else the defaults.

    An explicit ``pyproject.toml`` is read from its ``[tool.tether]`` table too.
    """
    file = config_file(path, cwd=cwd)
    if file is None:
        return PolicySet.default()
    try:
        data = tether_table(file)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyConfigError("", f"not valid TOML: {exc}", source=str(file)) from None
    except ValueError:
        raise PolicyConfigError("tool.tether", "must be a table", source=str(file)) from None
    return PolicySet.from_mapping(data, source=str(file), ignore=ignore)


# -- parsing ---------------------------------------------------------------------------

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key)


def _join(path: str, key: str) -> str:
    return f"{path}.{_key(key)}" if path else _key(key)


def _table(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise PolicyConfigError(path, f"must be a table, got {_type_name(value)}")
    for key in value:
        if not isinstance(key, str):
            raise PolicyConfigError(path, f"keys must be strings, got {key!r}")
    return value


def _type_name(value: Any) -> str:
    if value is None:
        return "nothing"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "an array", dict: "a table"}.get(type(value), type(value).__name__)


def _unknown(path: str, key: str, known: Collection[str]) -> PolicyConfigError:
    near = difflib.get_close_matches(key, list(known), n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else f"; known keys: {', '.join(sorted(known))}"
    return PolicyConfigError(_join(path, key), f"unknown key{hint}")


def _int(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PolicyConfigError(path, f"expected an integer, got {_type_name(value)}")
    return value


def _float(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PolicyConfigError(path, f"expected a number, got {_type_name(value)}")
    return float(value)


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise PolicyConfigError(path, f"expected true or false, got {_type_name(value)}")
    return value


def _optional(convert: Any) -> Any:
    def parse(value: Any, path: str) -> Any:
        if value is False:
            return None
        try:
            return convert(value, path)
        except PolicyConfigError as exc:
            raise PolicyConfigError(path, f"{exc.problem}, or false for none") from None
    return parse


def _statuses(value: Any, path: str) -> frozenset[int]:
    if not isinstance(value, list):
        raise PolicyConfigError(path, f"expected an array of HTTP statuses, got {_type_name(value)}")
    return frozenset(_int(item, f"{path}[{i}]") for i, item in enumerate(value))


def _categories(value: Any, path: str) -> frozenset[str]:
    if not isinstance(value, list):
        raise PolicyConfigError(path, f"expected an array of failure categories, got {_type_name(value)}")
    found: set[str] = set()
    for i, item in enumerate(value):
        if item not in CATEGORIES:
            raise PolicyConfigError(f"{path}[{i}]", f"unknown failure category {item!r}; known: "
                                    f"{', '.join(sorted(CATEGORIES))}")
        found.add(item)
    return frozenset(found)


def _targets(value: Any, path: str) -> tuple[Target, ...]:
    if not isinstance(value, list):
        raise PolicyConfigError(path, "expected an array of 'provider:model' strings, "
                                f"got {_type_name(value)}")
    targets: list[Target] = []
    for i, item in enumerate(value):
        where = f"{path}[{i}]"
        if not isinstance(item, str):
            raise PolicyConfigError(where, f"expected a 'provider:model' string, got {_type_name(item)}")
        try:
            target = Target.parse(item)
        except ValueError as exc:
            raise PolicyConfigError(where, str(exc)) from None
        if target.provider == "tool" or target.model == "*":
            raise PolicyConfigError(where, f"a fallback target is one model, not {item!r}")
        targets.append(target)
    return tuple(targets)


_Convert = Any
_SECTIONS: dict[str, tuple[type[Any], dict[str, _Convert]]] = {
    "retry": (RetryPolicy, {
        "max_attempts": _int, "base_delay_s": _float, "max_delay_s": _float, "retry_statuses": _statuses,
        "retry_timeouts": _bool, "retry_connection_errors": _bool, "honour_retry_after": _bool,
        "max_retry_after_s": _float,
    }),
    "breaker": (BreakerPolicy, {
        "enabled": _bool, "failure_streak": _int, "failure_rate": _float, "min_calls": _int,
        "window": _int, "cooldown_s": _float,
    }),
    "fallback": (FallbackPolicy, {
        "targets": _targets, "on": _categories, "max_fallbacks": _int, "after_retry_after_s": _float,
    }),
    "rate_limit": (RateLimitPolicy, {
        "requests_per_minute": _optional(_int), "tokens_per_minute": _optional(_int),
    }),
}
_ROUTE_SCALARS: dict[str, _Convert] = {
    "timeout_s": _float, "deadline_s": _optional(_float), "max_total_attempts": _optional(_int),
}
_BUDGET_FIELDS: dict[str, _Convert] = {"usd": _float, "tokens": _int, "calls": _int}
_RUNAWAY_FIELDS: dict[str, _Convert] = {
    "max_calls_per_run": _optional(_int), "max_identical_calls": _optional(_int),
}
_TOP_LEVEL = ("routes", "rate_limits", "budgets", "runaway")

# A parsed layer: {key: (value, path)} for scalars, {section: {key: (value, path)}}.
_Layer = dict[str, Any]


def _parse(data: Mapping[str, Any], ignore: Collection[str]) -> PolicySet:
    data = _table(data, "")
    for key in data:
        if key not in _TOP_LEVEL and key not in ignore:
            raise _unknown("", key, _TOP_LEVEL)
    return PolicySet(
        routes=_parse_routes(data.get("routes", {})),
        budgets=_parse_budgets(data.get("budgets", {})),
        runaway=_build(RunawayGuard, _fields(data.get("runaway", {}), "runaway", _RUNAWAY_FIELDS), "runaway"),
        rate_limits={
            provider: _build(RateLimitPolicy, _fields(raw, path, _SECTIONS["rate_limit"][1]), path)
            for provider, raw, path in _entries(data.get("rate_limits", {}), "rate_limits")
        },
    )


def _entries(value: Any, path: str) -> Iterator[tuple[str, Any, str]]:
    for key, raw in _table(value, path).items():
        yield key, raw, _join(path, key)


def _fields(raw: Any, path: str, spec: Mapping[str, _Convert]) -> dict[str, tuple[Any, str]]:
    values: dict[str, tuple[Any, str]] = {}
    for key, value in _table(raw, path).items():
        if key not in spec:
            raise _unknown(path, key, spec)
        where = _join(path, key)
        values[key] = (spec[key](value, where), where)
    return values


def _build(cls: type[Any], values: Mapping[str, tuple[Any, str]], path: str) -> Any:
    try:
        return cls(**{key: value for key, (value, _) in values.items()})
    except _Invalid as exc:
        if exc.field in values:
            raise PolicyConfigError(values[exc.field][1], exc.problem) from None
        raise PolicyConfigError(_join(path, exc.field), f"{exc.problem} (the default)") from None


def _check_route_key(route: str, path: str) -> None:
    if route == "*":
        return
    prefix, sep, rest = route.partition(":")
    if not sep or not prefix or not rest or prefix == "*":
        raise PolicyConfigError(
            path, "a route is '*', 'provider:model', 'provider:*', 'tool:name' or 'tool:*'")
    if "*" in rest and rest != "*":
        raise PolicyConfigError(path, "only a whole '*' model is a wildcard ('provider:*')")


def _parse_layer(raw: Any, path: str) -> _Layer:
    layer: _Layer = {}
    for key, value in _table(raw, path).items():
        where = _join(path, key)
        if key in _SECTIONS:
            layer[key] = _fields(value, where, _SECTIONS[key][1])
        elif key in _ROUTE_SCALARS:
            layer[key] = (_ROUTE_SCALARS[key](value, where), where)
        else:
            raise _unknown(path, key, [*_ROUTE_SCALARS, *_SECTIONS])
    return layer


def _parse_routes(raw: Any) -> dict[str, Policy]:
    layers: dict[str, tuple[_Layer, str]] = {}
    for route, value, path in _entries(raw, "routes"):
        _check_route_key(route, path)
        layers[route] = (_parse_layer(value, path), path)

    def chain(route: str) -> list[str]:
        if route == "*":
            return ["*"]
        prefix, _, rest = route.partition(":")
        return ["*", f"{prefix}:*"] if rest == "*" else ["*", f"{prefix}:*", route]

    # general before specific, so a bad value is reported where it was written
    order = sorted(layers, key=lambda r: len(chain(r)))
    policies: dict[str, Policy] = {}
    for route in order:
        path = layers[route][1]
        merged: _Layer = {}
        for name in chain(route):
            if name not in layers:
                continue
            for key, value in layers[name][0].items():
                if key in _SECTIONS:
                    merged[key] = {**merged.get(key, {}), **value}
                else:
                    merged[key] = value
        sections = {name: _build(_SECTIONS[name][0], merged.get(name, {}), _join(path, name))
                    for name in _SECTIONS}
        scalars = {key: merged[key] for key in _ROUTE_SCALARS if key in merged}
        try:
            policies[route] = Policy(
                retry=sections["retry"], breaker=sections["breaker"], fallback=sections["fallback"],
                rate_limit=sections["rate_limit"], **{key: value for key, (value, _) in scalars.items()},
            )
        except _Invalid as exc:
            where = scalars[exc.field][1] if exc.field in scalars else _join(path, exc.field)
            raise PolicyConfigError(where, exc.problem) from None
    return policies


def _parse_budgets(raw: Any) -> dict[tuple[str, str], BudgetLimits]:
    budgets: dict[tuple[str, str], BudgetLimits] = {}
    for scope, ids, scope_path in _entries(raw, "budgets"):
        if scope not in _SCOPES:
            raise _unknown("budgets", scope, _SCOPES)
        for scope_id, value, path in _entries(ids, scope_path):
            budgets[(scope, scope_id)] = _build(BudgetLimits, _fields(value, path, _BUDGET_FIELDS), path)
    return budgets

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
    # idempotent = true            # tools only: may run again (retries, resume); unset: the decorator's word
    tool_timeout_s = false         # tools only: per attempt; false = none

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

    [routes."*".cache]             # the response cache: exact request-hash hits across runs
    enabled = false                # opt in per route
    ttl_s = 3600.0                 # how long an answer is served (at most 7 days)
    sampling = false               # also cache calls that sample (temperature > 0, top_p...)

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

TOML has no null, so ``false`` switches an optional limit off. The pydantic models below
are the schema (:class:`PolicyFile` is its top; ``tether schemas export`` writes it as JSON
Schema with the rest of ``tether.toml``). An unknown key, a wrong type or a bad value raises
:class:`PolicyConfigError` naming the exact place, e.g.
``routes."openai:*".retry.max_atempts: unknown key (did you mean 'max_attempts'?)``.
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    StrictInt,
    ValidationError,
    WithJsonSchema,
    WrapValidator,
    model_validator,
)
from pydantic import dataclasses as pydantic_dataclasses
from pydantic.config import JsonDict
from pydantic_core import PydanticCustomError

from tether._configfile import Loc, config_file, describe, problems, tether_table

from ._failures import FailureCategory

__all__ = [
    "BreakerPolicy",
    "BudgetLimits",
    "BudgetScope",
    "CachePolicy",
    "FallbackPolicy",
    "Policy",
    "PolicyConfigError",
    "PolicyFile",
    "PolicySet",
    "RateLimitPolicy",
    "RetryPolicy",
    "RunawayGuard",
    "Target",
    "load_policies",
    "read_table",
]

BudgetScope = Literal["run", "agent", "tenant"]
CATEGORIES: frozenset[str] = frozenset(
    {"rate_limit", "server_error", "client_error", "timeout", "connection", "malformed", "breaker_open",
     "tool_error", "cancelled"}
)
_SCOPES: tuple[BudgetScope, ...] = ("run", "agent", "tenant")


class PolicyConfigError(ValueError):
    """A configuration that tether refuses, with the path to the offending key.

    ``path`` and ``problem`` are the first problem found; ``problems`` lists them all, and the
    message has one line per problem (``file: path: problem``)."""

    def __init__(self, path: str, problem: str, *, source: str | None = None,
                 more: Collection[tuple[str, str]] = ()) -> None:
        self.path = path
        self.problem = problem
        self.source = source
        self.problems = [(path, problem), *more]
        lines = [f"{where}: {what}" if where else what for where, what in self.problems]
        super().__init__("\n".join(f"{source}: {line}" if source else line for line in lines))

    @classmethod
    def of(cls, exc: ValidationError, data: Any, *, root: Any, source: str | None = None, prefix: Loc = (),
           origin: Callable[[Loc], Loc | None] | None = None) -> PolicyConfigError:
        """The error for pydantic's ``exc`` raised validating ``data`` (at ``prefix`` in the file)."""
        (path, problem), *more = problems(exc, data, root=root, prefix=prefix, origin=origin)
        return cls(path, problem, source=source, more=more)


# -- the value types of the file: TOML has no null, false means none --------------------


def _false_is_none(value: Any, handler: Any) -> Any:
    if value is False:
        return None
    try:
        return handler(value)
    except ValidationError as exc:
        raise PydanticCustomError("optional_limit", "{problem}, or false for none",
                                  {"problem": describe(exc.errors(include_url=False)[0])}) from None


_Count = Annotated[StrictInt, Field(ge=1)]
_Seconds = Annotated[float, Strict(), Field(gt=0)]
_NonNegative = Annotated[float, Strict(), Field(ge=0)]
_NonNegativeInt = Annotated[StrictInt, Field(ge=0)]
_OptionalCount = Annotated[_Count | None, WrapValidator(_false_is_none, json_schema_input_type=_Count | Literal[False])]
_OptionalSeconds = Annotated[_Seconds | None,
                             WrapValidator(_false_is_none, json_schema_input_type=_Seconds | Literal[False])]


def _status(value: int) -> int:
    if not 100 <= value <= 599:
        raise ValueError(f"HTTP statuses lie in 100..599, got {value}")
    return value


def _category(value: str) -> str:
    if value not in CATEGORIES:
        raise ValueError(f"unknown failure category {value!r}; known: {', '.join(sorted(CATEGORIES))}")
    return value


def _share(value: float) -> float:
    if not 0 < value <= 1:
        raise ValueError(f"must be in (0, 1], got {value}")
    return value


_Share = Annotated[float, Strict(), AfterValidator(_share),
                   WithJsonSchema({"type": "number", "exclusiveMinimum": 0, "maximum": 1})]
_Status = Annotated[StrictInt, AfterValidator(_status), WithJsonSchema({"type": "integer", "minimum": 100,
                                                                       "maximum": 599})]
_Category = Annotated[str, Strict(), AfterValidator(_category), WithJsonSchema({"enum": sorted(CATEGORIES)})]

_T = TypeVar("_T")
_MODEL = ConfigDict(extra="forbid", use_attribute_docstrings=True)


def _explained(cls: type[_T]) -> type[_T]:
    """Bad values given in code raise :class:`PolicyConfigError` naming the field, as in a file."""
    init = cls.__init__
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.update(zip(names, args, strict=False))
        try:
            init(self, **kwargs)
        except ValidationError as exc:
            raise PolicyConfigError.of(exc, kwargs, root=cls) from None

    cls.__init__ = __init__  # type: ignore[method-assign]
    return cls


# -- the policy types --------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where an LLM call goes: a provider and a model."""

    provider: str
    model: str

    def __post_init__(self) -> None:
        if not self.provider or ":" in self.provider:
            raise ValueError(f"provider must be a non-empty name without ':', got {self.provider!r}")
        if not self.model:
            raise ValueError("model must not be empty")

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


def _target(value: Any) -> Any:
    return Target.parse(value) if isinstance(value, str) else value


def _one_model(target: Target) -> Target:
    if target.provider == "tool" or target.model == "*":
        raise ValueError(f"a fallback target is one model, not {target.route!r}")
    return target


_FallbackTarget = Annotated[Target, BeforeValidator(_target), AfterValidator(_one_model),
                            WithJsonSchema({"type": "string", "pattern": "^[^:*]+:.+$",
                                            "description": "'provider:model'"})]


@_explained
@pydantic_dataclasses.dataclass(frozen=True, config=_MODEL)
class RetryPolicy:
    max_attempts: _Count = 3
    """Attempts on one target, the first included."""
    base_delay_s: _NonNegative = 0.25
    """Backoff: full jitter, uniform(0, min(max_delay_s, base_delay_s * 2**(n-1)))."""
    max_delay_s: _NonNegative = 20.0
    retry_statuses: frozenset[_Status] = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
    retry_timeouts: StrictBool = True
    retry_connection_errors: StrictBool = True
    honour_retry_after: StrictBool = True
    """Retry-After and the providers' rate-limit reset headers."""
    max_retry_after_s: _NonNegative = 60.0
    """Longer hints are capped to this."""


@_explained
@pydantic_dataclasses.dataclass(frozen=True, config=_MODEL)
class BreakerPolicy:
    """One circuit breaker per route, shared by all workers."""

    enabled: StrictBool = True
    failure_streak: _Count = 5
    """Opens after this many failures in a row..."""
    failure_rate: _Share = 0.5
    """...or this share of failures..."""
    min_calls: _Count = 10
    """...once this many calls are in the window."""
    window: _Count = 20
    """Calls the failure rate is measured over."""
    cooldown_s: _NonNegative = 30.0
    """Open this long, then one probe call half-opens it."""

    @model_validator(mode="after")
    def _min_calls_fit_the_window(self) -> Self:
        if self.min_calls > self.window:
            raise PydanticCustomError("min_calls_above_window", "must not exceed window ({window}), got {min_calls}",
                                      {"field": "min_calls", "window": self.window, "min_calls": self.min_calls})
        return self


@_explained
@pydantic_dataclasses.dataclass(frozen=True, config=_MODEL)
class FallbackPolicy:
    targets: tuple[_FallbackTarget, ...] = ()
    """Ordered alternatives; strings such as ``"openai:gpt-4o-mini"`` are parsed."""
    on: frozenset[_Category] = frozenset({"rate_limit", "server_error", "timeout", "connection", "breaker_open"})
    """Failure categories (see ``Failure.category``) that may fall back."""
    max_fallbacks: _NonNegativeInt = 2
    after_retry_after_s: _NonNegative = 5.0
    """Fall back at once, rather than wait, when the provider asks for a longer pause."""

    def falls_back_on(self, category: FailureCategory) -> bool:
        return category in self.on


@_explained
@pydantic_dataclasses.dataclass(frozen=True, config=_MODEL)
class RateLimitPolicy:
    requests_per_minute: _OptionalCount = None
    tokens_per_minute: _OptionalCount = None

    @property
    def limited(self) -> bool:
        return self.requests_per_minute is not None or self.tokens_per_minute is not None


@_explained
@pydantic_dataclasses.dataclass(frozen=True, config=_MODEL)
class CachePolicy:
    """The response cache of a route (docs/resume.md): off unless enabled."""

    enabled: bool = False
    ttl_s: _Seconds = 3600.0
    """How long a cached answer is served (the cache keeps nothing longer than 7 days)."""
    sampling: bool = False
    """Also cache calls that sample; by default only those that set ``temperature`` 0 or no sampling
    parameter at all (``temperature``, ``top_p``, ``top_k``), and never those that ask for several
    choices (``n`` > 1)."""


@_explained
@pydantic_dataclasses.dataclass(frozen=True, config=_MODEL)
class Policy:
    """Everything that governs one call on one route."""

    retry: RetryPolicy = RetryPolicy()
    timeout_s: _Seconds = 60.0
    """Per attempt."""
    deadline_s: _OptionalSeconds = 300.0
    """Per call, from its first attempt, backoffs included; false: none."""
    breaker: BreakerPolicy = BreakerPolicy()
    fallback: FallbackPolicy = FallbackPolicy()
    rate_limit: RateLimitPolicy = RateLimitPolicy()
    """Per route; the per-provider limits live in :attr:`PolicySet.rate_limits`."""
    cache: CachePolicy = CachePolicy()
    """The response cache (opt-in)."""
    max_total_attempts: _OptionalCount = None
    """Attempts of one call across its fallback chain; unset: retry.max_attempts + fallback.max_fallbacks."""
    idempotent: StrictBool | None = None
    """Tools only: the tool may run again (retried, and re-run by a resumed run that died inside it);
    unset: what ``@tether.tool(idempotent=...)`` says."""
    tool_timeout_s: _OptionalSeconds = None
    """Tools only: per attempt (``@tether.tool(timeout_s=...)`` wins); false: none."""

    @property
    def total_attempts(self) -> int:
        """Attempts one call may make across its whole fallback chain (never per target)."""
        if self.max_total_attempts is not None:
            return self.max_total_attempts
        return self.retry.max_attempts + self.fallback.max_fallbacks


@_explained
@pydantic_dataclasses.dataclass(frozen=True, config=_MODEL)
class BudgetLimits:
    """Any of usd, tokens, calls; a missing one is no limit."""

    usd: _NonNegative | None = None
    tokens: _NonNegativeInt | None = None
    calls: _NonNegativeInt | None = None


@_explained
@pydantic_dataclasses.dataclass(frozen=True, config=_MODEL)
class RunawayGuard:
    max_calls_per_run: _OptionalCount = 500
    """Calls one run may make; false: no limit."""
    max_identical_calls: _OptionalCount = 5
    """Times one run may make the very same call; false: no limit."""


_DEFAULT_POLICY = Policy()
_NO_RATE_LIMIT = RateLimitPolicy()
_DEFAULT_RUNAWAY = RunawayGuard()


@dataclass(frozen=True)
class PolicySet:
    """All policies of one deployment: per route, per provider, per budget scope."""

    routes: Mapping[str, Policy] = field(default_factory=dict)
    budgets: Mapping[tuple[str, str], BudgetLimits] = field(default_factory=dict)
    """Keyed by (scope, id); id ``"*"`` is the default of its scope."""
    runaway: RunawayGuard = _DEFAULT_RUNAWAY
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
        if isinstance(data, Mapping):
            data = {key: value for key, value in data.items() if key not in ignore}
        return PolicyFile.parse(data, source=source).policy_set()


# -- the file ----------------------------------------------------------------------------


def _check_route(route: str) -> str:
    if route == "*":
        return route
    prefix, sep, rest = route.partition(":")
    if not sep or not prefix or not rest or prefix == "*":
        raise ValueError("a route is '*', 'provider:model', 'provider:*', 'tool:name' or 'tool:*'")
    if "*" in rest and rest != "*":
        raise ValueError("only a whole '*' model is a wildcard ('provider:*')")
    return route


_Route = Annotated[str, AfterValidator(_check_route)]
_ROUTE_NAMES: JsonDict = {"propertyNames": {"pattern": r"^(\*|[^:*]+:(\*|[^*]+))$"}}  # _check_route, for editors
_SECTIONS = ("retry", "breaker", "fallback", "rate_limit", "cache")


def _chain(route: str) -> list[str]:
    """The routes ``route`` inherits from, general first, itself last."""
    if route == "*":
        return ["*"]
    prefix, _, rest = route.partition(":")
    return ["*", f"{prefix}:*"] if rest == "*" else ["*", f"{prefix}:*", route]


def _inherit(routes: Mapping[str, Any]) -> dict[str, Any]:
    """Each route's table with what it inherits filled in, key by key (sections one level down)."""
    merged: dict[str, Any] = {}
    for route, table in routes.items():
        if not isinstance(table, Mapping):
            merged[route] = table
            continue
        out: dict[str, Any] = {}
        for name in _chain(route):
            layer = routes.get(name)
            if not isinstance(layer, Mapping):
                continue
            for key, value in layer.items():
                if key in _SECTIONS and isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
                    out[key] = {**out[key], **value}
                else:
                    out[key] = value
        merged[route] = out
    return merged


def _written_in(table: Any, keys: Loc) -> bool:
    for key in keys:
        if not isinstance(table, Mapping) or key not in table:
            return False
        table = table[key]
    return True


def _origin(data: Any) -> Callable[[Loc], Loc | None]:
    """Where a value of an inherited route was written: the most specific route that sets it."""
    routes = data.get("routes") if isinstance(data, Mapping) else None

    def origin(loc: Loc) -> Loc | None:
        if not isinstance(routes, Mapping) or len(loc) < 3 or loc[0] != "routes" or not isinstance(loc[1], str):
            return loc
        rest = loc[2:]
        for name in reversed(_chain(loc[1])):
            if name in routes and _written_in(routes[name], rest):
                return ("routes", name, *rest)
        return None

    return origin


class Budgets(BaseModel):
    """Per scope, per id; ``"*"`` is each id's default. A specific id's table replaces it whole."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    run: dict[str, BudgetLimits] = {}
    agent: dict[str, BudgetLimits] = {}
    tenant: dict[str, BudgetLimits] = {}


class PolicyFile(BaseModel):
    """The policy sections of ``tether.toml``: what :class:`PolicySet` is read from."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    routes: dict[_Route, Policy] = Field(default={}, json_schema_extra=_ROUTE_NAMES)
    """Per route: '*', 'provider:*', 'provider:model', 'tool:*', 'tool:name'; each inherits key by key
    from the more general ones."""
    rate_limits: dict[str, RateLimitPolicy] = {}
    """Per provider, shared by all workers; '*' for any provider."""
    budgets: Budgets = Budgets()
    runaway: RunawayGuard = RunawayGuard()
    """The runaway guard: how many calls one run may make."""

    @model_validator(mode="before")
    @classmethod
    def _inherit_routes(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and isinstance(data.get("routes"), Mapping):
            return {**data, "routes": _inherit(data["routes"])}
        return data

    @classmethod
    def parse(cls, data: Any, *, source: str | None = None) -> Self:
        """``data`` validated, or :class:`PolicyConfigError` naming every bad key where it was written."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise PolicyConfigError.of(exc, data, root=cls, source=source, origin=_origin(data)) from None

    def policy_set(self) -> PolicySet:
        budgets: dict[tuple[str, str], BudgetLimits] = {
            (scope, scope_id): limits for scope in _SCOPES for scope_id, limits in getattr(self.budgets, scope).items()}
        return PolicySet(routes=dict(self.routes), budgets=budgets, runaway=self.runaway,
                         rate_limits=dict(self.rate_limits))


def read_table(path: str | Path | None, cwd: Path | None, *,
               missing: bool = False) -> tuple[str | None, dict[str, Any]]:
    """The file's name and its tether table (``(None, {})`` when there is no file).

    Raises :class:`PolicyConfigError` for a file that cannot be read (``FileNotFoundError``
    itself with ``missing``), is not TOML, or has a ``[tool.tether]`` that is no table."""
    file = config_file(path, cwd=cwd)
    if file is None:
        return None, {}
    try:
        return str(file), tether_table(file)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyConfigError("", f"not valid TOML: {exc}", source=str(file)) from None
    except OSError as exc:
        if missing and isinstance(exc, FileNotFoundError):
            raise
        raise PolicyConfigError("", f"cannot read: {exc}", source=str(file)) from None
    except ValueError:
        raise PolicyConfigError("tool.tether", "must be a table", source=str(file)) from None


def load_policies(
    path: str | Path | None = None, *, cwd: Path | None = None, ignore: Collection[str] = ()
) -> PolicySet:
    """Load the policies from ``path``; else ``tether.toml`` in ``cwd``; else
    ``[tool.tether]`` in ``cwd``'s ``pyproject.toml``; else the defaults.

    An explicit ``pyproject.toml`` is read from its ``[tool.tether]`` table too.
    """
    source, data = read_table(path, cwd, missing=True)
    if source is None:
        return PolicySet.default()
    return PolicySet.from_mapping(data, source=source, ignore=ignore)
